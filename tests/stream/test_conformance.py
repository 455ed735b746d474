"""Our BIOSCAN5M over converted shards gives the official loader's outputs, record for record.

The official package (bioscan-dataset 1.3.0) runs in its own environment, .venv-official, made by
scripts/install_official.sh (`make test` does that), since it needs torchvision.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from bioscan5m_hf import BIOSCAN5M

from .conformance_cases import cases, encode, key_of

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = Path(os.environ.get("OFFICIAL_VENV", ROOT / ".venv-official")) / "bin" / "python"


@pytest.fixture(scope="module")
def official(release):
    if not OFFICIAL.exists():
        pytest.skip(f"the official loader's environment {OFFICIAL.parent.parent} is not installed "
                    "(scripts/install_official.sh could not install bioscan-dataset and torchvision)")
    result = subprocess.run([str(OFFICIAL), str(ROOT / "tests" / "stream" / "official_dump.py"), str(release)],
                            capture_output=True, text=True, cwd=ROOT / "tests" / "stream", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", list(cases()))
def test_same_outputs_as_the_official_loader(official, converted_zips, name):
    kwargs = cases()[name]
    expected = official[name]
    for repo in ("parquet", "webdataset"):
        root = converted_zips.repos["parquet"].parent if repo == "parquet" else converted_zips.repos[repo]
        ds = BIOSCAN5M(root, **kwargs)
        rows = {}
        for sample in ds:
            rows[key_of(sample, kwargs)] = encode(sample)
        assert len(ds) == expected["len"], repo
        assert rows.keys() == expected["rows"].keys(), repo
        for pid, row in rows.items():
            assert row == expected["rows"][pid], (repo, pid)

"""Our BIOSCAN5M over converted shards gives the official loader's outputs: map-style record for
record and index for index (``ds[i]`` for every ``i``, the ``metadata`` DataFrame), streamed as the
same records; for every split and metasplit, option set and idiom of the official README.

The official package (bioscan-dataset 1.3.0) runs in its own environment, .venv-official, made by
scripts/install_official.sh (`make test` does that), since it needs torchvision.
"""

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bioscan5m_hf import BIOSCAN5M, StreamingBIOSCAN5M

from .conformance_cases import METADATA_CASES, cases, encode, key_of

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = Path(os.environ.get("OFFICIAL_VENV", ROOT / ".venv-official")) / "bin" / "python"


@pytest.fixture(scope="module")
def official(release, tmp_path_factory):
    if not OFFICIAL.exists():
        pytest.skip(f"the official loader's environment {OFFICIAL.parent.parent} is not installed "
                    "(scripts/install_official.sh could not install bioscan-dataset and torchvision)")
    metadata = tmp_path_factory.mktemp("official-metadata")
    result = subprocess.run([str(OFFICIAL), str(ROOT / "tests" / "stream" / "official_dump.py"), str(release),
                             str(metadata)], capture_output=True, text=True, cwd=ROOT / "tests" / "stream",
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), metadata


def roots(converted):
    """The OUT folder (both repos: images from the tars), and each repo on its own."""
    return {"out": converted.repos["parquet"].parent, "parquet": converted.repos["parquet"],
            "webdataset": converted.repos["webdataset"]}


@pytest.mark.parametrize("name", list(cases()))
def test_map_style_equals_the_official_loader_index_for_index(official, converted_zips, name):
    kwargs = cases()[name]
    expected = official[0][name]
    for where, root in roots(converted_zips).items():
        ds = BIOSCAN5M(root, **kwargs)
        assert len(ds) == expected["len"], where
        for i in range(len(ds)):
            sample = ds[i]
            key = key_of(sample, kwargs, i)
            assert key == expected["order"][i], (where, i)
            assert encode(sample) == expected["rows"][key], (where, i)
        if len(ds):
            assert encode(ds[-1]) == encode(ds[len(ds) - 1])
        with pytest.raises(IndexError):
            ds[len(ds)]


@pytest.mark.parametrize("name", list(cases()))
def test_streaming_gives_the_official_records(official, converted_zips, name):
    kwargs = cases()[name]
    expected = official[0][name]
    for where in ("out", "webdataset"):
        ds = StreamingBIOSCAN5M(roots(converted_zips)[where], **kwargs)
        samples = list(ds)
        assert len(ds) == expected["len"] == len(samples), where
        if "processid" in str(kwargs.get("modality")):
            assert {key_of(s, kwargs): encode(s) for s in samples} == expected["rows"], where
        else:  # no key: the same multiset of samples
            assert sorted(json.dumps(encode(s)) for s in samples) == sorted(
                json.dumps(v) for v in expected["rows"].values()), where


@pytest.mark.parametrize("name", METADATA_CASES)
def test_metadata_dataframe_equals_the_official_one(official, converted_zips, name):
    theirs = pd.read_parquet(official[1] / f"{name}.parquet")
    for where, root in roots(converted_zips).items():
        ours = BIOSCAN5M(root, **cases()[name]).metadata
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True, obj=f"metadata of {where}")

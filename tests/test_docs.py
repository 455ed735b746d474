"""Every Python snippet of README.md and of the repo cards runs, extracted from the text itself: in a
folder holding a converted sample as ``out`` and the embedded default as ``shards``, with a loopback
Hub holding the sample as ``your-org/BIOSCAN-5M-hf`` and ``your-org/BIOSCAN-5M-hf-wds`` (the names the
README uses), the cards as ``push`` wrote them there."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from .hub.hub_client import python_blocks, run
from .servers.hubserver import HubServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def outcomes(converted_zips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    shutil.copytree(converted_zips.repos["parquet"].parent, folder / "out")
    (folder / "shards").symlink_to(ROOT / "shards")
    home = tmp_path_factory.mktemp("docs-client")
    with HubServer(tmp_path_factory.mktemp("docs-hub")) as hub:
        run(hub, home, "push", out=str(folder / "out"), namespace="your-org")
        docs = {"README.md": (ROOT / "README.md").read_text()}
        return run(hub, home, "snippets", folder=str(folder), docs=docs,
                   cards=["your-org/BIOSCAN-5M-hf", "your-org/BIOSCAN-5M-hf-wds"])["results"]


def test_every_snippet_runs(outcomes):
    failed = [f"{r['where']}:\n{r['error']}" for r in outcomes if r["outcome"] == "failed"]
    assert not failed, "\n\n".join(failed)
    readme = python_blocks((ROOT / "README.md").read_text())
    assert sum(r["where"].startswith("README.md") for r in outcomes) == len(readme) >= 8
    assert sum(" card, " in r["where"] for r in outcomes) >= 4  # both cards' blocks ran too


def test_only_blocks_of_libraries_not_installed_are_skipped(outcomes):
    skipped = [r for r in outcomes if r["outcome"].startswith("skipped")]
    assert all("nvidia" in r["outcome"] for r in skipped), skipped
    if importlib.util.find_spec("nvidia.dali") is not None:  # make test installs it (scripts/install_dali.sh)
        assert not skipped

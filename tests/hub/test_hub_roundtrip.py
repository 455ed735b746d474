"""The whole round trip through the Hub API with the real clients: ``push`` both repos, then
``datasets.load_dataset`` by repo id, ``BIOSCAN5M`` and ``make_loader`` over ``hf://`` with faults
injected, and a push killed half way then rerun. The Hub is :class:`HubServer` on 127.0.0.1; the
clients run in their own processes with ``HF_ENDPOINT`` pointing at it (:mod:`hub_client`)."""

import json
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bioscan5m_hf import BIOSCAN5M, schema

from ..conftest import stream_loader
from ..servers.hubserver import HubServer
from .hub_client import client_env, run

CLIENT = Path(__file__).with_name("hub_client.py")


@pytest.fixture(scope="module")
def out(converted_zips, tmp_path_factory):
    copy = tmp_path_factory.mktemp("roundtrip") / "out"
    shutil.copytree(converted_zips.repos["parquet"].parent, copy)
    return copy


@pytest.fixture(scope="module")
def hub(out, tmp_path_factory):
    """The loopback Hub with both repos pushed to it by ``bioscan5m-hf push``'s code."""
    home = tmp_path_factory.mktemp("client")
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        commits = run(server, home, "push", out=str(out), namespace="my-org")["commits"]
        assert commits and all(c.startswith("my-org/BIOSCAN-5M-hf") for c in commits)
        yield server


@pytest.fixture
def home(tmp_path):
    return tmp_path


def local_keys(out, repo, config, split):
    """The processids in the converted shards of ``config/split``, read straight from the files."""
    manifest = json.loads((out / repo / schema.MANIFEST).read_text())
    keys = []
    for shard in manifest["configs"][config][split]["shards"]:
        path = out / repo / shard["path"]
        if repo == schema.PARQUET_REPO:
            keys += pq.read_table(path, columns=["processid"]).column("processid").to_pylist()
        else:
            with tarfile.open(path) as tar:
                keys += [m.name.split(".")[0] for m in tar if m.name.endswith(".json")]
    return sorted(keys)


@pytest.mark.parametrize("repo_id, repo, config", [
    ("my-org/BIOSCAN-5M-hf", schema.PARQUET_REPO, "cropped_256"),
    ("my-org/BIOSCAN-5M-hf", schema.PARQUET_REPO, "metadata"),
    ("my-org/BIOSCAN-5M-hf-wds", schema.WDS_REPO, "original_256"),
])
def test_load_dataset_by_repo_id_streams_every_record(hub, out, home, repo_id, repo, config):
    got = run(hub, home, "load_dataset", repo_id=repo_id, config=config, split="val")
    assert sorted(got["keys"]) == sorted(local_keys(out, repo, config, "val"))
    if repo == schema.PARQUET_REPO and config != "metadata":
        assert "image" in got["features"] and "dna_barcode" in got["features"]


def test_bioscan5m_over_hf_reads_records_by_index_through_faults(hub, out, home):
    manifest = json.loads((out / schema.PARQUET_REPO / schema.MANIFEST).read_text())
    for k, shard in enumerate(manifest["configs"]["cropped_256"]["val"]["shards"]):
        hub.traffic.faults[f"my-org/BIOSCAN-5M-hf/{shard['path']}"] += [["503"], [("drop", 300)], ["429"]][k % 3]
    hub.traffic.faults["my-org/BIOSCAN-5M-hf/index/cropped_256.parquet"] += [("drop", 100)]
    got = run(hub, home, "bioscan", root="hf://datasets/my-org/BIOSCAN-5M-hf", split="val")["records"]
    want = BIOSCAN5M(out / schema.PARQUET_REPO, split="val", modality=("image", "dna"), target_type="species")
    assert got == [[list(image.size), dna, target] for image, dna, target in (want[i] for i in range(len(want)))]
    assert not any(hub.traffic.faults.values())  # every fault was met, and got through


def test_make_loader_over_hf_gives_the_local_batches_through_faults(hub, out, home):
    manifest = json.loads((out / schema.WDS_REPO / schema.MANIFEST).read_text())
    for shard in manifest["configs"]["cropped_256"]["train"]["shards"][:3]:
        hub.traffic.faults[f"my-org/BIOSCAN-5M-hf-wds/{shard['path']}"] += [("drop", 2000), "503"]
    got = run(hub, home, "loader", root="hf://datasets/my-org/BIOSCAN-5M-hf-wds", split="train")["processids"]
    here = stream_loader(out / schema.WDS_REPO, "train", batch_size=4, num_workers=2, image_size=32, shuffle=True,
                       seed=1)
    assert got == [p for b in here for p in b["processid"]]
    assert not any(hub.traffic.faults.values())


def test_a_push_killed_half_way_then_rerun_sends_only_what_is_missing(out, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns(".bioscan5m-push"))
    with HubServer(tmp_path / "hub") as hub:
        arrived = hub.hold_commit(3)
        proc = subprocess.Popen([sys.executable, str(CLIENT), "push", json.dumps(
            {"out": str(folder), "namespace": "my-org"})], env=client_env(hub, tmp_path),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert arrived.wait(120), "the third commit never came"
            proc.kill()  # as a preempted job is
            proc.wait(30)
        finally:
            hub.release()
        before = {repo_id: set(hub.files(repo_id)) for repo_id in hub.repos}
        assert sum(map(len, before.values())) > 0
        committed, lfs = len(hub.committed), len(hub.lfs_uploads)
        run(hub, tmp_path, "push", out=str(folder), namespace="my-org")
        for repo_id, repo in (("my-org/BIOSCAN-5M-hf", schema.PARQUET_REPO),
                              ("my-org/BIOSCAN-5M-hf-wds", schema.WDS_REPO)):
            files = {p.relative_to(folder / repo).as_posix() for p in (folder / repo).rglob("*") if p.is_file()}
            resent = Counter(p for r, p in hub.committed[committed:] if r == repo_id)
            assert set(resent) == files - before.get(repo_id, set())  # only what the Hub lacked
            assert all(n == 1 for n in resent.values())
            assert set(hub.files(repo_id)) == files
        # No LFS object the Hub already stored was uploaded again.
        assert not set(hub.lfs_uploads[lfs:]) & set(hub.lfs_uploads[:lfs])

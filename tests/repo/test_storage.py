"""Streaming converted repos from a URL: a loopback server counts what is read and injects faults."""

import json
import time
from collections import Counter

import numpy as np
import pytest

from bioscan5m_hf import StreamingBIOSCAN5M, schema
from bioscan5m_hf.errors import ShardError
from bioscan5m_hf.options import Storage
from bioscan5m_hf.repo.storage import RetryPolicy, ShardCache, redact
from bioscan5m_hf.stream.loader import Mode

from ..conftest import small_conversion, stream_loader
from ..servers.fileserver import RepoServer

FAST = RetryPolicy(tries=6, base=0.01, cap=0.05, timeout=1.0)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A conversion with many small shards per split."""
    return small_conversion(tmp_path_factory.mktemp("remote"), 400, 5, 8)


@pytest.fixture
def server(out):
    with RepoServer(out) as s:
        yield s


def manifest(out, repo):
    return json.loads((out / repo / schema.MANIFEST).read_text())


def pids(ds):
    return [r[0] for r in ds]


def local_pids(out, split, repo=schema.WDS_REPO):
    return sorted(pids(StreamingBIOSCAN5M(out / repo, split, modality="processid", target_type=[])))


@pytest.mark.parametrize("repo", [schema.WDS_REPO, schema.PARQUET_REPO])
def test_first_batch_reads_at_most_one_shard_per_worker(out, server, repo):
    loader = stream_loader(f"{server.url}/{repo}", "pretrain", batch_size=3, num_workers=2, image_size=32, shuffle=True,
                           prefetch_factor=1, storage=Storage(retry=FAST))
    next(iter(loader))
    arrived = time.perf_counter()
    before = {p for t, p in server.log if t < arrived}
    touched = [p for p in before if p.endswith((".tar", ".parquet"))]
    assert 1 <= len(touched) <= 2, touched  # at most one shard per worker
    assert before - set(touched) <= {f"{repo}/{schema.MANIFEST}"}  # and the manifest: nothing else


def test_streaming_5_percent_reads_at_most_10_percent(out, server):
    repo = schema.WDS_REPO
    ds = StreamingBIOSCAN5M(f"{server.url}/{repo}", "pretrain", modality=("image", "dna"), storage=Storage(retry=FAST))
    want = len(ds) // 20
    it = iter(ds)
    for _ in range(want):
        next(it)
    total = manifest(out, repo)["configs"]["cropped_256"]["pretrain"]["num_bytes"]
    assert server.shard_bytes() <= 0.10 * total, (server.shard_bytes(), total)


@pytest.mark.parametrize("num_workers, thread_workers", [(0, False), (2, False), (2, True)])
def test_every_transient_fault_still_gives_every_record_once(out, server, num_workers, thread_workers):
    repo = schema.WDS_REPO
    shards = [s["path"] for s in manifest(out, repo)["configs"]["cropped_256"]["train"]["shards"]]
    shards += [s["path"] for s in manifest(out, repo)["configs"]["cropped_256"]["val"]["shards"]]
    faults = [[("drop", 700)], ["503", "503", "429"], [("stall", 2.5)], ["ignore-range"], [("drop", 5000), "503"]]
    for path, actions in zip(shards, faults * 3):
        server.faults[f"{repo}/{path}"] = list(actions)
    server.faults[f"{repo}/{schema.MANIFEST}"] = ["503"]
    loader = stream_loader(f"{server.url}/{repo}", "train+val", batch_size=5, num_workers=num_workers, image_size=32,
                           mode=Mode("workers", thread_workers), storage=Storage(retry=FAST, verify=True))
    got = [p for b in loader for p in b["processid"]]
    assert Counter(got) == Counter(local_pids(out, "train+val"))
    assert not any(server.faults.values())  # every fault was served


def test_corrupted_shard_is_detected_and_named(out, server, tmp_path):
    repo = schema.WDS_REPO
    rel = manifest(out, repo)["configs"]["cropped_256"]["val"]["shards"][0]["path"]
    server.corrupt[f"{repo}/{rel}"] = 600  # inside the first image: the tar still parses
    with pytest.raises(ShardError, match=rf"{server.url}/{repo}/{rel}: sha256 .* does not match"):
        list(StreamingBIOSCAN5M(f"{server.url}/{repo}", "val", storage=Storage(retry=FAST, verify=True)))
    with pytest.raises(ShardError, match=rf"{rel}: sha256"):
        list(StreamingBIOSCAN5M(f"{server.url}/{repo}", "val", storage=Storage(retry=FAST,
                                                                               cache_dir=tmp_path / "cache")))
    assert not list((tmp_path / "cache").glob("*.shard"))  # nothing unverified kept


def test_missing_shard_fails_fast_naming_the_url(out, server):
    repo = schema.WDS_REPO
    rel = manifest(out, repo)["configs"]["cropped_256"]["val"]["shards"][0]["path"]
    server.folder = out.parent / "nowhere"  # every file is 404 from now on ...
    ds = None
    server.folder = out
    ds = StreamingBIOSCAN5M(f"{server.url}/{repo}", "val", storage=Storage(retry=RetryPolicy(tries=6, base=0.5)))
    server.folder = out.parent / "nowhere"
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=rf"{server.url}/{repo}/{rel}: not found \(404\)"):
        list(ds)
    assert time.perf_counter() - start < 0.5  # no retries of a permanent fault
    assert server.requests[f"{repo}/{rel}"] == 1


def test_cache_serves_the_second_epoch_and_keeps_its_limit(out, server, tmp_path):
    repo = schema.PARQUET_REPO
    url = f"{server.url}/{repo}"
    ds = StreamingBIOSCAN5M(url, "train", modality="dna", storage=Storage(retry=FAST, cache_dir=tmp_path / "c1"))
    first = pids(ds)
    assert server.shard_requests() > 0
    server.reset_counts()
    assert sorted(pids(ds)) == sorted(first)  # epoch 2
    assert server.shard_requests() == 0
    shards = manifest(out, repo)["configs"]["metadata"]["pretrain"]["shards"]
    limit = 3 * max(s["num_bytes"] for s in shards)
    small = StreamingBIOSCAN5M(url, "pretrain", modality="dna", storage=Storage(retry=FAST, cache_dir=tmp_path / "c2",
                                                                                cache_limit=limit))
    cache = ShardCache(tmp_path / "c2", limit)
    for k, _ in enumerate(small):
        if k % 5 == 0:
            assert cache.size() <= limit
    assert 0 < cache.size() <= limit and len(cache.files()) <= 3


def test_cache_is_shared_by_workers_and_jobs(out, server, tmp_path):
    url = f"{server.url}/{schema.WDS_REPO}"
    kw = dict(batch_size=4, num_workers=2, image_size=32, storage=Storage(retry=FAST, cache_dir=str(tmp_path / "c")))
    a = [p for b in stream_loader(url, "train", **kw) for p in b["processid"]]
    requests = server.shard_requests()
    b = [p for b in stream_loader(url, "train", **kw) for p in b["processid"]]  # another job, same folder
    assert sorted(a) == sorted(b) == local_pids(out, "train")
    assert server.shard_requests() == requests
    assert not list((tmp_path / "c").glob(".*tmp*"))


def test_credentials_never_appear_in_errors(server):
    url = server.url.replace("http://", "http://user:s3cret-token@") + "/nothing-here"
    with pytest.raises(FileNotFoundError) as e:
        StreamingBIOSCAN5M(url, "val")
    assert "s3cret" not in str(e.value)
    assert redact("https://u:p@host:8080/a/b?token=abc") == "https://host:8080/a/b"


def test_remote_verify(out, server):
    from bioscan5m_hf.repo.verify import verify

    assert verify(f"{server.url}/{schema.WDS_REPO}").ok
    rel = manifest(out, schema.WDS_REPO)["configs"]["cropped_256"]["val"]["shards"][0]["path"]
    server.corrupt[f"{schema.WDS_REPO}/{rel}"] = 600
    assert any("does not match" in p for p in verify(f"{server.url}/{schema.WDS_REPO}").problems)


def test_datasets_load_dataset_streams_the_same_records(out, server):
    import datasets

    for repo, builder in ((schema.PARQUET_REPO, "parquet"), (schema.WDS_REPO, "webdataset")):
        shards = manifest(out, repo)["configs"]["cropped_256"]["val"]["shards"]
        urls = [f"{server.url}/{repo}/{s['path']}" for s in shards]
        ds = datasets.load_dataset(builder, data_files={"val": urls}, split="val", streaming=True)
        keys = sorted(r["__key__"] if builder == "webdataset" else r["processid"] for r in ds)
        assert keys == local_pids(out, "val")


def test_readahead_fetches_the_next_shard_in_the_background(out, server, tmp_path):
    url = f"{server.url}/{schema.WDS_REPO}"
    ds = StreamingBIOSCAN5M(url, "pretrain", modality="dna", storage=Storage(retry=FAST, cache_dir=tmp_path / "c",
                                                                             readahead=1))
    it = iter(ds)
    for _ in range(6):  # past half of the first 8-record shard
        next(it)
    deadline = time.time() + 10
    while time.time() < deadline and len(ShardCache(tmp_path / "c").files()) < 2:
        time.sleep(0.05)
    assert len(ShardCache(tmp_path / "c").files()) == 2  # the shard being read, and the next one


def test_an_unreachable_root_says_so_naming_the_url(tmp_path):
    from bioscan5m_hf.errors import UnreachableError
    from bioscan5m_hf.repo.verify import verify

    url = "http://user:secret@127.0.0.1:9/nope"  # port 9 (discard): connection refused
    for attempt in (lambda: StreamingBIOSCAN5M(url, "val", storage=Storage(retry=FAST)),
                    lambda: verify(url, retry=FAST)):
        with pytest.raises(UnreachableError, match=r"http://127\.0\.0\.1:9/nope/manifest\.json: unreachable") as e:
            attempt()
        assert "no converted repo" not in str(e.value) and "secret" not in str(e.value)


@pytest.mark.parametrize("headers", [
    {"Retry-After": "2"},
    {"RateLimit": '"resolvers";r=0;t=2', "RateLimit-Policy": '"fixed window";"resolvers";q=5000;w=300'}])
def test_a_429_is_waited_out_as_its_headers_say(out, server, headers):
    """A throttled server says how long to wait (Retry-After, or the Hub's RateLimit header): the next
    request comes no sooner, where the backoff alone would have retried within a fraction of a second."""
    repo = schema.WDS_REPO
    rel = manifest(out, repo)["configs"]["cropped_256"]["val"]["shards"][0]["path"]
    key = f"{repo}/{rel}"
    server.faults[key] = [("429", headers)]
    ds = StreamingBIOSCAN5M(f"{server.url}/{repo}", "val", modality=("dna",),
                            storage=Storage(retry=RetryPolicy(tries=3, base=0.05)))
    assert Counter(r[1] for r in ds) and not server.faults[key]
    times = [t for t, k in server.log if k == key]
    assert len(times) >= 2 and times[1] - times[0] >= 1.9  # waited 2 s, not the 0.05 s backoff


@pytest.mark.parametrize("root", [schema.WDS_REPO, schema.PARQUET_REPO, ""])
def test_a_filtered_epoch_over_http_reads_its_records_not_the_shards(out, server, root, tmp_path, monkeypatch):
    """A filter keeping one order: its metadata comes from the metadata tables and indexes, and the
    record index locates each kept record's bytes (a tar's members, a Parquet shard's image value),
    so the image shards are read for about the kept records' own bytes, not whole."""
    import pyarrow.compute as pc

    from benchmarks.suite import own_bytes
    from bioscan5m_hf import Composition

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty default cache: the metadata is fetched here
    local = StreamingBIOSCAN5M(out, "pretrain", modality=("processid",), target_type="order",
                               target_format="text", output_format="tuple")
    orders = Counter(order for _, order in local)
    order = min((o for o in orders if o), key=lambda o: abs(orders[o] / sum(orders.values()) - 0.15))
    kept = {pid for pid, o in local if o == order}
    own = own_bytes(out, "pretrain", kept)  # members with their headers in a tar; the JPEG bytes in Parquet
    url = f"{server.url}/{root}".rstrip("/")
    server.reset_counts()
    ds = StreamingBIOSCAN5M(url, "pretrain", modality=("image", "processid"), target_type=[], output_format="dict",
                            composition=Composition(filter=pc.field("order") == order))
    got = {r["processid"]: r["image"] for r in ds}
    assert got.keys() == kept and len(kept) < 0.3 * sum(orders.values())
    images = {r["processid"]: r["image"] for r in StreamingBIOSCAN5M(out, "pretrain", modality=("image", "processid"),
                                                                     target_type=[], output_format="dict")}
    assert all(got[p].tobytes() == images[p].tobytes() for p in kept)  # the same pixels as a full read
    kind = "tar" if root == schema.WDS_REPO else "parquet"
    shards = sum(b for path, b in server.bytes.items() if path.endswith(f".{kind}") and "/cropped_256/" in path)
    assert own[kind] <= shards + 4 * len(kept) <= 1.3 * own[kind] + 4 * len(kept), (shards, own)


def test_a_stale_record_index_is_named_not_read_as_an_image(out):
    from bioscan5m_hf.repo.manifest import open_repos
    from bioscan5m_hf.repo.readers import parquet_images
    from bioscan5m_hf.repo.record_index import read_record_index

    repo = open_repos(out)["parquet"]
    index = read_record_index(repo, "cropped_256")
    first = next(s for s in repo.shards("cropped_256", schema.SPLITS))
    at = np.flatnonzero((index["shard"] == 0) & (index["row"] == 0))[0]
    good = parquet_images(first, index["offset"][[at]], index["size"][[at]])
    assert good[0][:2] == b"\xff\xd8"  # a JPEG's start
    with pytest.raises(ShardError, match=rf"{first.rel}: no image of \d+ bytes at byte"):
        parquet_images(first, index["offset"][[at]] + 7, index["size"][[at]])


@pytest.mark.parametrize("root", [schema.WDS_REPO, schema.PARQUET_REPO, ""])
def test_a_class_balanced_epoch_over_http_reads_the_records_it_draws(out, server, root, tmp_path, monkeypatch):
    """A drawn epoch (class-balanced, a tenth of the split) reads its labels from the release table and
    then only the records it drew, where the record index places them: not every row group or tar."""
    from benchmarks.suite import own_bytes
    from bioscan5m_hf import Composition

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty default cache: the metadata is fetched here
    total = manifest(out, schema.PARQUET_REPO)["configs"]["cropped_256"]["pretrain"]["num_records"]
    url = f"{server.url}/{root}".rstrip("/")
    server.reset_counts()
    ds = StreamingBIOSCAN5M(url, "pretrain", modality=("image", "processid"), target_type="order", output_format="dict",
                            composition=Composition(balance="order", samples_per_epoch=total // 10))
    drawn = [r["processid"] for r in ds]
    assert len(drawn) == total // 10
    own = own_bytes(out, "pretrain", set(drawn))
    kind = "tar" if root == schema.WDS_REPO else "parquet"
    shards = sum(b for path, b in server.bytes.items() if path.endswith(f".{kind}") and "/cropped_256/" in path)
    assert own[kind] <= shards + 4 * len(set(drawn)) <= 1.3 * own[kind] + 4 * len(set(drawn)), (shards, own)

"""``s3://`` roots against a real S3 implementation on 127.0.0.1 (moto's server, signing enforced),
read through s3fs with the credentials and endpoint passed in ``storage_options``."""

import time
from collections import Counter

import pytest

from bioscan5m_hf import BIOSCAN5M, StreamingBIOSCAN5M, schema
from bioscan5m_hf.errors import RemoteError, UnreachableError
from bioscan5m_hf.options import Storage
from bioscan5m_hf.repo.storage import RetryPolicy, ShardCache, Store
from bioscan5m_hf.repo.verify import verify
from bioscan5m_hf.stream.loader import Mode

from ..conftest import small_conversion, stream_loader
from ..servers.s3 import BUCKET, S3Server, free_port_refusing

pytest.importorskip("s3fs")
pytest.importorskip("moto")

FAST = RetryPolicy(tries=6, base=0.01, cap=0.05, timeout=5.0)
ROOT = f"s3://{BUCKET}/bioscan5m"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return small_conversion(tmp_path_factory.mktemp("s3"), 160, 11, 16)


@pytest.fixture(scope="module")
def s3(out):
    with S3Server() as server:
        fs = server.filesystem()
        for repo in (schema.PARQUET_REPO, schema.WDS_REPO):
            fs.put(str(out / repo), f"{ROOT}/{repo}", recursive=True)
        yield server


@pytest.fixture
def s3_clean(s3):
    yield s3
    s3.faults(0)


def local(out, split, repo=schema.WDS_REPO, **kw):
    return list(StreamingBIOSCAN5M(out / repo, split, modality="processid", target_type=[], **kw))


def test_store_reads_ranges_and_names_what_is_missing(s3_clean, out):
    store = Store(f"{ROOT}/{schema.WDS_REPO}", s3_clean.storage_options(), FAST)
    data = (out / schema.WDS_REPO / schema.MANIFEST).read_bytes()
    assert store.read_bytes(schema.MANIFEST) == data
    assert store.fetch(schema.MANIFEST, 10, 30) == data[10:30]
    assert store.exists(schema.MANIFEST) and not store.exists("nope.json")
    with pytest.raises(FileNotFoundError, match=rf"{ROOT}/{schema.WDS_REPO}/nope.json: not found"):
        store.read_bytes("nope.json")


def test_wrong_credentials_are_refused_without_printing_them(s3_clean):
    options = s3_clean.storage_options(secret="not-the-secret")
    with pytest.raises(RemoteError, match=rf"{ROOT}/{schema.WDS_REPO}/manifest.json: access denied") as e:
        StreamingBIOSCAN5M(f"{ROOT}/{schema.WDS_REPO}", "val", storage=Storage(storage_options=options, retry=FAST))
    assert "not-the-secret" not in str(e.value) and s3_clean.key not in str(e.value)


@pytest.mark.parametrize("repo", [schema.WDS_REPO, schema.PARQUET_REPO])
def test_streaming_gives_the_local_records(s3_clean, out, repo):
    ds = StreamingBIOSCAN5M(f"{ROOT}/{repo}", "train+val", modality=("image", "dna"), target_type="species",
                            storage=Storage(storage_options=s3_clean.storage_options(), retry=FAST, verify=True))
    want = StreamingBIOSCAN5M(out / repo, "train+val", modality=("image", "dna"), target_type="species")
    got = list(ds)
    assert [(r[1], r[2]) for r in got] == [(r[1], r[2]) for r in want]
    assert [r[0].size for r in got] == [r[0].size for r in want]


@pytest.mark.parametrize("thread_workers", [False, True])
def test_make_loader_with_workers_gives_the_local_batches(s3_clean, out, thread_workers):
    kw = dict(batch_size=6, num_workers=2, image_size=32, shuffle=True, seed=3, mode=Mode("workers", thread_workers))
    remote = stream_loader(f"{ROOT}/{schema.WDS_REPO}", "pretrain", **kw,
                           storage=Storage(storage_options=s3_clean.storage_options(), retry=FAST))
    here = stream_loader(out / schema.WDS_REPO, "pretrain", **kw)
    for a, b in zip(remote, here, strict=True):
        assert a["processid"] == b["processid"]
        assert (a["image"] == b["image"]).all() and (a["dna"] == b["dna"]).all()


def test_map_style_reads_records_by_index(s3_clean, out):
    ds = BIOSCAN5M(f"{ROOT}/{schema.PARQUET_REPO}", split="val", modality=("image", "dna"),
                   storage=Storage(storage_options=s3_clean.storage_options(), retry=FAST))
    want = BIOSCAN5M(out / schema.PARQUET_REPO, split="val", modality=("image", "dna"))
    assert len(ds) == len(want)
    for i in (0, len(ds) - 1, len(ds) // 2):
        assert ds[i][1:] == want[i][1:]
        assert ds[i][0].tobytes() == want[i][0].tobytes()


def test_cache_serves_the_second_epoch_from_disk(s3_clean, out, tmp_path):
    ds = StreamingBIOSCAN5M(f"{ROOT}/{schema.WDS_REPO}", "train", modality="dna",
                            storage=Storage(retry=FAST, storage_options=s3_clean.storage_options(),
                                            cache_dir=tmp_path / "cache"))
    first = [r[0] for r in ds]
    assert len(ShardCache(tmp_path / "cache").files()) > 0
    before = s3_clean.faults(-1)  # S3 now fails every request: the second epoch must not need it
    assert [r[0] for r in ds] == first
    assert s3_clean.faults(0) == before


def test_transient_faults_are_retried_and_every_record_arrives_once(s3_clean, out):
    """503 SlowDown, as S3 answers when a prefix is overloaded: botocore's own retries, then ours."""
    ds = StreamingBIOSCAN5M(f"{ROOT}/{schema.WDS_REPO}", "train", modality="processid", target_type=[],
                            storage=Storage(storage_options=s3_clean.storage_options(), retry=FAST))
    s3_clean.faults(12)  # more than botocore retries by itself on one request
    got = list(ds)
    assert Counter(got) == Counter(local(out, "train"))


def test_a_bucket_that_keeps_failing_is_unreachable_naming_the_url(s3_clean):
    s3_clean.faults(-1)
    start = time.perf_counter()
    with pytest.raises(UnreachableError, match=rf"{ROOT}/{schema.WDS_REPO}/manifest.json: unreachable"):
        StreamingBIOSCAN5M(f"{ROOT}/{schema.WDS_REPO}", "val",
                           storage=Storage(storage_options=s3_clean.storage_options(),
                                           retry=RetryPolicy(tries=2, base=0.01, cap=0.01, timeout=2.0)))
    assert time.perf_counter() - start < 60


def test_an_endpoint_nobody_answers_is_unreachable(s3_clean):
    options = dict(s3_clean.storage_options(), endpoint_url=f"http://127.0.0.1:{free_port_refusing()}")
    with pytest.raises(UnreachableError, match=rf"{ROOT}/{schema.WDS_REPO}/manifest.json: unreachable"):
        verify(f"{ROOT}/{schema.WDS_REPO}", retry=RetryPolicy(tries=2, base=0.01, cap=0.01, timeout=2.0),
               storage_options=options)


def test_remote_verify_over_s3(s3_clean):
    report = verify(f"{ROOT}/{schema.WDS_REPO}", retry=FAST, storage_options=s3_clean.storage_options())
    assert report.ok, report.problems
    assert report.records > 0

"""The map-style BIOSCAN5M as training code uses it: samplers, workers, random access (locally and
over HTTP with faults), the per-record index, download=True, and the official module's names."""

import json
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from bioscan5m_hf import BIOSCAN5M, StreamingBIOSCAN5M, schema
from bioscan5m_hf.errors import ShardError
from bioscan5m_hf.options import Storage
from bioscan5m_hf.repo.storage import RetryPolicy
from bioscan5m_hf.repo.verify import verify

from ..servers.fileserver import RepoServer
from .conformance_cases import encode

FAST = RetryPolicy(tries=6, base=0.01, cap=0.05, timeout=2.0)


def as_list(batch):
    return batch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_with_shuffle_and_workers_gives_every_record_once(converted_zips, num_workers):
    ds = BIOSCAN5M(converted_zips.repos["parquet"].parent, "all", modality=("processid", "image"), target_type=[])
    loader = DataLoader(ds, batch_size=16, shuffle=True, num_workers=num_workers, collate_fn=as_list)
    got = [sample[0] for batch in loader for sample in batch]
    assert sorted(got) == sorted(ds[i][0] for i in range(len(ds))) and len(set(got)) == len(ds) == 240


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_distributed_sampler_splits_an_epoch_among_ranks(converted_zips, world_size):
    ds = BIOSCAN5M(converted_zips.repos["webdataset"], "pretrain", modality="processid", target_type=[])
    per_rank = []
    for rank in range(world_size):
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        per_rank.append([ds[i][0] for i in sampler])
    assert len({len(r) for r in per_rank}) == 1
    flat = [p for r in per_rank for p in r]
    assert set(flat) == {ds[i][0] for i in range(len(ds))}
    assert len(flat) - len(set(flat)) == (-len(ds)) % world_size  # only the sampler's own padding repeats


def test_subset_and_official_module_names(converted_zips, release):
    from bioscan5m_hf.bioscan5m import BIOSCAN5M as Official
    from bioscan5m_hf.bioscan5m import RGB_MEAN, RGB_STDEV, load_bioscan5m_metadata

    root = converted_zips.repos["parquet"].parent
    ds = Official(root, "val", modality=("processid", "dna"))
    sub = Subset(ds, [2, 0])
    assert [encode(s) for s in sub] == [encode(ds[2]), encode(ds[0])]
    assert torch.allclose(RGB_MEAN, torch.tensor(schema.RGB_MEAN)) and RGB_STDEV.shape == (3,)
    csv = release / schema.METADATA_CSV
    import pandas as pd

    for split in ("train", "all"):
        pd.testing.assert_frame_equal(load_bioscan5m_metadata(csv, split=split),
                                      BIOSCAN5M(root, split).metadata, check_exact=True)
    assert len(load_bioscan5m_metadata(root, split="val")) == len(ds)


def test_streaming_flag_and_its_keywords(converted_zips):
    root = converted_zips.repos["parquet"].parent
    stream = BIOSCAN5M(root, "train", streaming=True, shuffle=True, seed=1)
    assert isinstance(stream, StreamingBIOSCAN5M) and isinstance(stream, torch.utils.data.IterableDataset)
    assert not isinstance(BIOSCAN5M(root, "train"), torch.utils.data.IterableDataset)
    for keyword in ("shuffle", "rank", "world_size", "buffer_size", "on_error"):
        with pytest.raises(ValueError, match=f"{keyword}.*streaming=True"):
            BIOSCAN5M(root, "train", **{keyword: {"on_error": "skip"}.get(keyword, 1)})
    with pytest.raises(TypeError, match="colour"):
        BIOSCAN5M(root, "train", colour=1)


def test_one_record_is_one_read_of_its_own_bytes(converted_zips, monkeypatch):
    import os

    reads = []
    real = os.pread

    def spy(fd, n, offset):
        reads.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", spy)
    ds = BIOSCAN5M(converted_zips.repos["webdataset"], "pretrain", modality=("processid", "image"))
    for i in (5, 0, len(ds) - 1):
        size = len(ds.record(i)["image"])
        reads.clear()
        pid, image, _ = ds[i]
        assert image.format == "JPEG"
        assert reads == [512 + size], reads  # the member's header and bytes, nothing more


@pytest.fixture
def served(out):
    with RepoServer(out) as server:
        yield out, server


@pytest.mark.parametrize("repo", [schema.WDS_REPO, schema.PARQUET_REPO])
def test_random_access_over_http_with_faults_gives_the_local_records(served, repo):
    out, server = served
    kw = dict(modality=("processid", "image", "dna"), target_type=["genus", "species"])
    local = BIOSCAN5M(out / repo, "val", **kw)
    remote = BIOSCAN5M(f"{server.url}/{repo}", "val", **kw, storage=Storage(retry=FAST))
    manifest = json.loads((out / repo / schema.MANIFEST).read_text())
    for shard in manifest["configs"]["cropped_256"]["val"]["shards"]:
        server.faults[f"{repo}/{shard['path']}"] += ["503", ("drop", 300), "429"]
    assert len(remote) == len(local)
    for i in np.random.default_rng(0).permutation(len(local)).tolist():
        assert encode(remote[i]) == encode(local[i])


def test_an_index_that_disagrees_with_its_shard_names_shard_and_record(out):
    repo = out / schema.WDS_REPO
    path = repo / "index" / "cropped_256.parquet"
    table = pq.read_table(path)
    offsets = table.column("offset").to_numpy().copy()
    offsets[offsets >= 0] += 512  # every member one block off
    pq.write_table(table.set_column(2, "offset", pa.array(offsets)), path)
    ds = BIOSCAN5M(repo, "val")
    pid = ds.table.column("processid")[int(ds.rows[0])].as_py()
    with pytest.raises(ShardError, match=rf"bioscan5m-cropped_256-val-\d+\.tar: record {pid}"):
        ds[0]
    assert any("index/cropped_256.parquet" in p for p in verify(out).problems)


def test_a_repo_without_the_index_says_how_to_add_it(out):
    repo = out / schema.WDS_REPO
    manifest = json.loads((repo / schema.MANIFEST).read_text())
    del manifest["files"]["index/cropped_256.parquet"]
    (repo / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"no per-record index.*bioscan5m-hf convert .*streaming=True"):
        BIOSCAN5M(repo, "val")
    assert len(list(BIOSCAN5M(repo, "val", streaming=True))) > 0


def test_download_copies_only_what_the_split_and_modalities_need(served, tmp_path):
    out, server = served
    ds = BIOSCAN5M(server.url, "val", download=True, storage=Storage(cache_dir=tmp_path / "copy", retry=FAST))
    local = BIOSCAN5M(out, "val")
    assert [encode(ds[i]) for i in range(len(ds))] == [encode(local[i]) for i in range(len(local))]
    copied = {p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*") if p.is_file()}
    assert any("/cropped_256/val/" in p for p in copied)
    assert not any("/cropped_256/pretrain/" in p or "/cropped_256/train/" in p for p in copied)
    assert any(p.endswith(schema.RELEASE_TABLE) for p in copied)  # every record's metadata, in one file
    assert not any("/metadata/" in p for p in copied)  # so no shard of the metadata config
    before = server.shard_requests()
    dna = BIOSCAN5M(server.url, "train", modality="dna", download=True, storage=Storage(cache_dir=tmp_path / "copy",
                                                                                        retry=FAST))
    assert len(dna) and server.shard_requests() == before  # metadata already copied, no images needed
    shutil.rmtree(tmp_path / "copy")


# -- construction reads only what it returns (the metadata memory-mapped, only the split's batches) --


def test_construction_maps_the_splits_metadata_and_copies_nothing(converted_zips, tmp_path):
    repo = converted_zips.repos["parquet"]
    storage = Storage(cache_dir=tmp_path / "cache")
    BIOSCAN5M(repo, "train", modality=("dna",), storage=storage)  # the first one copies train's rows, once
    copies = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.arrow")}
    assert [p.name.split("-")[0] for p in copies] == ["train"]  # only the split's rows
    before = pa.total_allocated_bytes()
    ds = BIOSCAN5M(repo, "train", modality=("dna",), storage=storage)
    assert pa.total_allocated_bytes() - before < 1 << 16  # Arrow allocated nothing: the columns are mapped
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.arrow")} == copies  # not written again
    assert ds.table.num_rows == len(ds) == converted_zips.manifests["parquet"]["configs"]["metadata"]["train"][
        "num_records"]
    assert all(ds.table.column("split").to_pylist()[i] == "train" for i in range(len(ds)))
    assert len(pickle.dumps(ds)) < 200_000  # pickled without its table, which is mapped again where unpickled
    again = pickle.loads(pickle.dumps(ds))
    assert [encode(again[i]) for i in range(len(ds))] == [encode(ds[i]) for i in range(len(ds))]


def test_the_copy_follows_the_repo(out, tmp_path):
    """A repo converted again (another release table) gets a copy of its own, never the old one's rows."""
    repo = out / schema.PARQUET_REPO
    storage = Storage(cache_dir=tmp_path / "cache")
    want = [encode(r) for r in (lambda d: [d[i] for i in range(len(d))])(BIOSCAN5M(repo, "val", modality=("dna",),
                                                                                   storage=storage))]
    manifest = json.loads((repo / schema.MANIFEST).read_text())
    manifest["files"][schema.RELEASE_TABLE]["sha256"] = "0" * 64  # as a new conversion would
    (repo / schema.MANIFEST).write_text(json.dumps(manifest))
    ds = BIOSCAN5M(repo, "val", modality=("dna",), storage=storage)
    assert len(list((tmp_path / "cache").rglob("val-*.arrow"))) == 2
    assert [encode(ds[i]) for i in range(len(ds))] == want


def test_a_metasplit_is_in_csv_order_without_resorting_the_release(converted_zips):
    repo = converted_zips.repos["parquet"]
    seen = BIOSCAN5M(repo, "seen", modality=("processid",), target_type=[])
    csv = pq.read_table(repo / schema.CSV_ORDER).column("processid").to_pylist()
    splits = dict(zip(*[BIOSCAN5M(repo, "all", modality=("processid", "split"), target_type=[]).metadata[c].tolist()
                        for c in ("processid", "split")]))
    want = [p for p in csv if splits[p] in ("train", "val", "test")]
    assert [seen[i][0] for i in range(len(seen))] == want


def test_a_remote_root_fetches_only_its_splits_metadata_once(served, tmp_path):
    out, server = served
    url = f"{server.url}/{schema.PARQUET_REPO}"
    storage = Storage(cache_dir=tmp_path / "cache", retry=FAST)
    size = (out / schema.PARQUET_REPO / schema.RELEASE_TABLE).stat().st_size

    def metadata_bytes():
        return sum(n for p, n in server.bytes.items() if p.endswith(schema.RELEASE_TABLE))

    release = pq.ParquetFile(out / schema.PARQUET_REPO / schema.RELEASE_TABLE)
    first, count, _ = json.loads(release.schema_arrow.metadata[b"splits"])["val"]
    val = sum(release.metadata.row_group(g).total_byte_size for g in range(first, first + count))
    ds = BIOSCAN5M(url, "val", modality=("dna",), storage=storage)
    fetched = metadata_bytes()
    assert 0 < fetched <= min(size, (64 << 10) + val)  # the footer (pyarrow reads the last 64 KiB) and val's rows
    assert [encode(ds[i]) for i in range(len(ds))] == [
        encode(s) for s in (lambda d: [d[i] for i in range(len(d))])(BIOSCAN5M(out, "val", modality=("dna",)))]
    BIOSCAN5M(url, "val", modality=("dna",), storage=storage)
    assert metadata_bytes() == fetched  # from the cache the second time
    index = [p for p in server.requests if p.endswith("index/cropped_256.parquet")]
    images = BIOSCAN5M(url, "val", modality=("image",), storage=storage)
    asked = sum(n for p, n in server.requests.items() if p.endswith("index/cropped_256.parquet"))
    BIOSCAN5M(url, "val", modality=("image",), storage=storage)
    assert asked > 0 and not index and sum(
        n for p, n in server.requests.items() if p.endswith("index/cropped_256.parquet")) == asked  # fetched once
    assert images[0][0].size == BIOSCAN5M(out, "val", modality=("image",))[0][0].size


def test_a_repo_without_the_release_table_says_to_convert_again(out):
    repo = out / schema.PARQUET_REPO
    manifest = json.loads((repo / schema.MANIFEST).read_text())
    del manifest["files"][schema.RELEASE_TABLE]
    (repo / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=rf"{repo}.*no {schema.RELEASE_TABLE}.*convert` again"):
        BIOSCAN5M(repo, "val")


def test_values_have_the_official_types(converted_zips):
    """Index targets are numpy integers of the categorical codes' width (as the official loader's
    ``metadata.iloc[i]`` gives them), floats ``np.float64``; so a DataLoader batch has the official dtype."""
    from bioscan5m_hf.stream.outputs import code_dtype

    repo = converted_zips.repos["parquet"]
    ds = BIOSCAN5M(repo, "train", modality=("processid", "coord-lat", "species_index"),
                   target_type=["genus", "dna_bin"])
    vocabularies = ds.vocabularies
    pid, lat, species, (genus, dna_bin) = ds[0]
    assert type(lat) is np.float64 and type(species) is code_dtype(len(vocabularies["species"])).type
    assert type(genus) is code_dtype(len(vocabularies["genus"])).type
    assert type(dna_bin) is code_dtype(len(vocabularies["dna_bin"])).type
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[3][0].dtype == getattr(torch, str(code_dtype(len(vocabularies["genus"]))))

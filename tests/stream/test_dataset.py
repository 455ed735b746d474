import math
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from bioscan5m_hf import StreamingBIOSCAN5M, schema
from bioscan5m_hf.repo import readers as shards_module


def ids(root, **kw):
    kw.setdefault("modality", ("processid",))
    kw.setdefault("target_type", [])
    return StreamingBIOSCAN5M(root, **kw)


def csv_split_pids(manifest_source, converted, split):
    return {r["processid"] for r in StreamingBIOSCAN5M(converted.repos["parquet"].parent, split,
                                                       modality=("processid",), target_type=[], output_format="dict")}


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_exactly_once_equal_counts_across_ranks_and_workers(converted_zips, world_size, num_workers):
    root = converted_zips.repos["parquet"].parent
    everything = {p for (p, _) in ids(root, split="pretrain")}
    seen, batches = Counter(), []
    for rank in range(world_size):
        ds = ids(root, split="pretrain", shuffle=True, buffer_size=16, seed=5, rank=rank, world_size=world_size)
        loader = DataLoader(ds, batch_size=8, num_workers=num_workers, collate_fn=lambda b: b)
        got = [pid for batch in loader for (pid, _) in batch]
        assert len(got) == len(ds)
        batches.append(len(list(DataLoader(ds, batch_size=8, num_workers=num_workers, collate_fn=lambda b: b))))
        seen.update(got)
    assert set(seen) == everything
    padding = len(ds) * world_size - len(everything)
    assert sum(seen.values()) - len(everything) == padding < world_size
    assert len(set(batches)) == 1  # every rank the same number of batches


def test_drop_policy(converted_zips):
    root = converted_zips.repos["parquet"].parent
    total = len(ids(root, split="pretrain"))
    got = Counter(pid for r in range(3) for (pid, _) in ids(root, split="pretrain", rank=r, world_size=3, even="drop"))
    assert sum(got.values()) == total // 3 * 3 and max(got.values()) == 1


def test_orders_are_deterministic_and_change_with_the_epoch(converted_zips):
    root = converted_zips.repos["parquet"].parent
    a = [p for p, _ in ids(root, split="pretrain", shuffle=True, seed=1)]
    b = [p for p, _ in ids(root, split="pretrain", shuffle=True, seed=1)]
    assert a == b
    ds = ids(root, split="pretrain", shuffle=True, seed=1)
    first = [p for p, _ in ds]
    second = [p for p, _ in ds]  # a finished pass moves on to the next epoch
    ds.set_epoch(0)
    again = [p for p, _ in ds]
    assert first == a == again and second != first and sorted(second) == sorted(first)


@pytest.mark.parametrize("stop", [0, 3, 40, 150, "end"])
def test_exact_resume_when_iterating_directly(converted_zips, stop):
    root = converted_zips.repos["parquet"].parent
    kw = dict(split="pretrain", shuffle=True, seed=3, buffer_size=32)
    full = ids(root, **kw)
    epoch0 = [p for p, _ in full]
    epoch1 = [p for p, _ in full]
    ds = ids(root, **kw)
    it = iter(ds)
    n = len(epoch0) if stop == "end" else stop
    head = [next(it)[0] for _ in range(n)]
    if stop == "end":
        assert list(it) == []  # finishing the epoch moves the state to the next one
    state = ds.state_dict()
    resumed = ids(root, **kw)
    resumed.load_state_dict(state)
    rest = [p for p, _ in resumed]
    if stop == "end":
        assert state["epoch"] == 1 and state["yielded"] == 0
        assert rest == epoch1
    else:
        assert head + rest == epoch0


def test_state_from_another_configuration_is_refused(converted_zips):
    root = converted_zips.repos["parquet"].parent
    state = ids(root, split="pretrain", seed=1).state_dict()
    with pytest.raises(ValueError, match="differently configured"):
        ids(root, split="pretrain", seed=2).load_state_dict(state)
    # A checkpoint from before the shuffle order changed (no marker) would resume into another order.
    state = ids(root, split="pretrain", seed=1, shuffle=True).state_dict()
    del state["shuffle_order"]
    with pytest.raises(ValueError, match="shuffle_order"):
        ids(root, split="pretrain", seed=1, shuffle=True).load_state_dict(state)


def test_dna_only_never_reads_image_bytes(converted_zips, monkeypatch):
    calls = []
    real = shards_module.read_records

    def spy(shard, offsets, columns, image, sparse=None):
        calls.append((shard.path, image))
        return real(shard, offsets, columns, image, sparse)

    monkeypatch.setattr("bioscan5m_hf.stream.records.read_records", spy)
    for root in (converted_zips.repos["parquet"].parent, converted_zips.repos["webdataset"]):
        ds = StreamingBIOSCAN5M(root, split="train", modality=("dna",), target_type="order")
        records = list(ds)
        assert len(records) == ds.num_records and isinstance(records[0][0], str)
    assert calls and not any(image for _, image in calls)
    assert any("/metadata/" in path for path, _ in calls) and any(path.endswith(".tar") for path, _ in calls)


def test_tar_and_parquet_repos_give_the_same_outputs(converted_zips):
    def by_pid(root):
        ds = StreamingBIOSCAN5M(root, split="seen", modality=("processid", "image", "dna", "coord-lat"),
                       target_type=["genus", "species"], output_format="dict")
        out = {}
        for r in ds:
            r["image"] = np.asarray(r["image"]).tobytes()
            out[r["processid"]] = r
        return out

    a = by_pid(converted_zips.repos["parquet"])
    b = by_pid(converted_zips.repos["webdataset"])
    assert a.keys() == b.keys()
    for pid in a:
        for k in a[pid]:
            x, y = a[pid][k], b[pid][k]
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), (pid, k)


def test_outputs_formats_and_label_lookup(converted_zips):
    root = converted_zips.repos["parquet"].parent
    ds = StreamingBIOSCAN5M(root, split="validation", target_type=["order", "uri"],
                            modality=("image", "dna", "image_path"))
    image, dna, path, target = next(iter(ds))
    assert image.format == "JPEG" and isinstance(dna, str) and len(dna) <= 660
    assert path.startswith("val/") and path.endswith(".jpg")
    assert isinstance(target, tuple) and len(target) == 2
    assert ds.index2label(target[0], "order") == ds.vocabularies["order"][target[0]]
    assert ds.label2index(ds.index2label(target[1], "dna_bin"), "uri") == target[1]
    assert ds.index2label([-1, 0], "order").tolist() == ["", ds.vocabularies["order"][0]]
    assert ds.label2index(["", ds.vocabularies["order"][1]], "order").tolist() == [-1, 1]
    with pytest.raises(KeyError, match="not found"):
        ds.label2index("Nonexistentia", "order")
    text = StreamingBIOSCAN5M(root, split="pretrain", modality=(), target_type="species", target_format="text")
    assert all(isinstance(t, float) and math.isnan(t) for (t,) in text)  # pretrain has no species
    with pytest.raises(ValueError, match="Unfamiliar modality"):
        StreamingBIOSCAN5M(root, modality=("smell",))
    with pytest.raises(ValueError, match="invalid split name 'training'"):
        StreamingBIOSCAN5M(root, split="training")
    assert len(StreamingBIOSCAN5M(root, split="seen", modality="dna")) == sum(
        len(StreamingBIOSCAN5M(root, split=s, modality="dna")) for s in schema.SEEN_SPLITS)


def test_transforms_are_applied(converted_zips):
    root = converted_zips.repos["parquet"].parent
    ds = StreamingBIOSCAN5M(root, split="val", transform=lambda im: im.size, dna_transform=len,
                            target_transform=lambda t: int(t) + 1000)  # an official np.int8 would overflow
    size, length, target = next(iter(ds))
    assert isinstance(size, tuple) and isinstance(length, int) and target >= 999


def test_rank_and_world_size_default_from_the_environment(converted_zips, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = ids(converted_zips.repos["parquet"].parent, split="pretrain")
    assert (ds.rank, ds.world_size) == (1, 2)

"""Resuming on another topology (elastic), torchdata's StatefulDataLoader, and padding flags."""

from collections import Counter

import pytest
import torch

from bioscan5m_hf import StreamingBIOSCAN5M

from ..conftest import stream_loader

torchdata = pytest.importorskip("torchdata.stateful_dataloader")


def ids(root, **kw):
    kw.setdefault("modality", ("processid",))
    kw.setdefault("target_type", [])
    return StreamingBIOSCAN5M(root, split="pretrain", shuffle=True, seed=3, buffer_size=16, **kw)


def first_items(samples):
    return [s[0] for s in samples]


def split_pids(root):
    return sorted(p for p, _ in ids(root))


@pytest.mark.parametrize("before, after, batches", [((2, 2, 8), (3, 1, 5), 3), ((3, 1, 4), (2, 3, 7), 5),
                                                    ((1, 2, 6), (4, 2, 3), 7), ((2, 1, 5), (2, 2, 5), 2)])
def test_make_loader_resumes_on_another_topology(converted_zips, before, after, batches):
    """W x N workers with batch size B train some batches in lockstep; rank 0's state_dict resumes
    W' x N' with B': the epoch yields every record once (samples flagged as padding aside)."""
    root = converted_zips.repos["parquet"].parent
    (w1, n1, b1), (w2, n2, b2) = before, after
    kw = dict(modality=("dna",), target_type="order", seed=3, buffer_size=16, shuffle=True)
    first = [stream_loader(root, "pretrain", batch_size=b1, num_workers=n1, rank=r, world_size=w1, **kw)
             for r in range(w1)]
    seen = []
    for loader in first:
        it = iter(loader)
        for _ in range(batches):
            batch = next(it)
            seen += [p for p, pad in zip(batch["processid"], batch.get("padding", [False] * b1)) if not pad]
    state = first[0].state_dict()
    for r in range(w2):
        resumed = stream_loader(root, "pretrain", batch_size=b2, num_workers=n2, rank=r, world_size=w2, **kw)
        resumed.load_state_dict(state)
        counts = len(resumed)
        got = list(resumed)
        assert len(got) == counts
        for batch in got:
            pad = batch["padding"].tolist() if "padding" in batch else [False] * len(batch["processid"])
            seen += [p for p, x in zip(batch["processid"], pad) if not x]
        assert resumed.epoch == 1  # the epoch ended; the next one starts fresh
    assert sorted(seen) == split_pids(root)


def test_streaming_dataset_resumes_on_another_world_size(converted_zips):
    root = converted_zips.repos["parquet"].parent
    seen = []
    old = [ids(root, rank=r, world_size=2, output_format="dict") for r in range(2)]
    for ds in old:
        it = iter(ds)
        seen += [s["processid"] for s in (next(it) for _ in range(11)) if not s["padding"]]
    state = old[0].state_dict()
    for r in range(3):
        ds = ids(root, rank=r, world_size=3, output_format="dict")
        ds.load_state_dict(state)
        seen += [s["processid"] for s in ds if not s["padding"]]
    assert sorted(seen) == split_pids(root)


def test_padding_is_flagged_in_dict_outputs_and_batches(converted_zips):
    root = converted_zips.repos["parquet"].parent
    total = len(split_pids(root))
    world = 4 if total % 4 else 3
    flagged = sum(s["padding"] for r in range(world) for s in ids(root, rank=r, world_size=world,
                                                                     output_format="dict"))
    assert flagged == -total % world > 0
    batches = [b for r in range(world) for b in stream_loader(root, "pretrain", batch_size=8, num_workers=1,
                                                            modality=("image",), image_size=16, rank=r,
                                                            world_size=world)]
    assert sum(int(b["padding"].sum()) for b in batches) == -total % world
    assert all(b["padding"].dtype == torch.bool for b in batches)
    assert "padding" not in next(iter(ids(root, output_format="dict")))  # one process: nothing to flag


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_stateful_dataloader_resumes_exactly(converted_zips, num_workers):
    root = converted_zips.repos["parquet"].parent
    loader = torchdata.StatefulDataLoader(ids(root), batch_size=4, num_workers=num_workers, collate_fn=first_items)
    full = [b for b in loader]
    for stop in (1, 7):
        loader = torchdata.StatefulDataLoader(ids(root), batch_size=4, num_workers=num_workers, collate_fn=first_items)
        it = iter(loader)
        head = [next(it) for _ in range(stop)]
        state = loader.state_dict()
        resumed = torchdata.StatefulDataLoader(ids(root), batch_size=4, num_workers=num_workers, collate_fn=first_items)
        resumed.load_state_dict(state)
        rest = [b for b in resumed]
        assert head + rest == full, (num_workers, stop)
    assert Counter(p for b in full for p in b) == Counter(split_pids(root))


def test_plain_dataloader_is_unchanged(converted_zips):
    root = converted_zips.repos["parquet"].parent
    got = [p for b in torch.utils.data.DataLoader(ids(root), batch_size=4, num_workers=2, collate_fn=first_items)
           for p in b]
    assert sorted(got) == split_pids(root)

import pytest
import torch

from bioscan5m_hf.stream.columnar import ColumnarBatches

from ..conftest import assert_same_batches, interrupted, stream_loader


def pids(batches):
    return [p for b in batches for p in b["processid"]]


def test_batches_are_tensors(converted_zips):
    root = converted_zips.repos["parquet"].parent
    loader = stream_loader(root, "train", batch_size=8, num_workers=2, image_size=32, target_type=["order", "species"],
                         k=4, device="cpu")
    batches = list(loader)
    b = batches[0]
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (8, 3, 32, 32)
    assert b["dna"].dtype == torch.int64 and b["dna"].shape == (8, 660 // 4) and b["dna_mask"].shape == (8, 165)
    assert b["order"].dtype == torch.int64 and b["species"].shape == (8,)
    assert (b["dna"] >= 0).all() and (b["dna"] < 2 + 4 ** 4).all()
    assert len(batches) == len(loader)
    assert sorted(pids(batches)) == sorted(p for p, _ in __import__("bioscan5m_hf").StreamingBIOSCAN5M(
        root, "train", modality="processid", target_type=[]))


def test_normalized_images_and_dna_only(converted_zips):
    root = converted_zips.repos["parquet"].parent
    b = next(iter(stream_loader(root, "val", batch_size=4, num_workers=0, image_size=16, normalize=True, device="cpu")))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (4, 3, 16, 16)
    assert -10 < b["image"].mean() < 10
    b = next(iter(stream_loader(root, "val", batch_size=4, num_workers=0, image_size=16, normalize=True)))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (4, 3, 16, 16)  # also without a device
    d = next(iter(stream_loader(root, "pretrain", batch_size=64, num_workers=1, modality=("dna",), target_type="family",
                              k=6)))
    assert "image" not in d and d["dna"].shape == (64, 110) and (d["family"] >= -1).all()


def collect(loader, batches=None):
    out = []
    for b in loader:
        out.append(b["processid"])
        if batches is not None and len(out) == batches:
            break
    return out


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_exact_resume_through_workers(converted_zips, num_workers):
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=7, num_workers=num_workers, modality=("dna",), target_type="order", buffer_size=20,
              seed=4, persistent_workers=True, device="cpu")  # the device path moves one batch ahead
    straight = stream_loader(root, "pretrain", **kw)
    epochs = [collect(straight), collect(straight)]  # two epochs, persistent workers
    assert sorted(pids_flat := [p for b in epochs[0] for p in b]) == sorted(p for b in epochs[1] for p in b)
    assert epochs[0] != epochs[1] and len(set(pids_flat)) == len(pids_flat)
    n = len(epochs[0])
    for stop in (0, 1, 2, n // 2, n - 1, n):
        first = stream_loader(root, "pretrain", **kw)
        head = collect(first, stop) if stop else []
        state = first.state_dict()
        resumed = stream_loader(root, "pretrain", **kw)
        resumed.load_state_dict(state)
        rest = collect(resumed)
        if stop == n:  # taken at the very end of epoch 0: resumes with epoch 1
            assert head == epochs[0] and rest == epochs[1]
        else:
            assert head + rest == epochs[0], (num_workers, stop)
            assert collect(resumed) == epochs[1]  # and the next epoch follows


def test_set_epoch_and_refused_state(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=16, num_workers=2, modality=("dna",), target_type="order")
    a = stream_loader(root, "pretrain", **kw)
    a.set_epoch(3)
    b = stream_loader(root, "pretrain", **kw)
    b.set_epoch(3)
    assert collect(a) == collect(b)
    other = stream_loader(root, "pretrain", **{**kw, "seed": 1})
    with pytest.raises(ValueError, match="over other data.*seed"):
        other.load_state_dict(a.state_dict())


def test_ranks_get_disjoint_data_and_equal_batches(converted_zips):
    root = converted_zips.repos["parquet"].parent
    loaders = [stream_loader(root, "pretrain", batch_size=10, num_workers=2, modality=("dna",), target_type="order",
                           rank=r, world_size=3, even="drop") for r in range(3)]
    per_rank = [pids(list(loader)) for loader in loaders]
    assert len({len(loader) for loader in loaders}) == 1
    flat = [p for r in per_rank for p in r]
    assert len(flat) == len(set(flat))


def test_cuda_path_runs_where_a_gpu_is(converted_zips):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine; the device='cpu' path above runs the same code")
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, num_workers=2, image_size=32, seed=4)
    on_gpu, on_cpu = list(stream_loader(root, "train", device="cuda", **kw)), list(stream_loader(root, "train", **kw))
    assert on_gpu[0]["image"].is_cuda and on_gpu[0]["dna"].is_cuda and len(on_gpu) == len(on_cpu)
    for g, c in zip(on_gpu, on_cpu):  # the same batches, moved
        assert g.keys() == c.keys() and g["processid"] == c["processid"]
        assert all(torch.equal(g[k].cpu(), c[k]) for k in c if k != "processid")


def test_cuda_copy_overlaps_the_model_step(converted_zips):
    """The next batch's host-to-device copy runs on the side stream while the model computes."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from torch.profiler import ProfilerActivity, profile

    root = converted_zips.repos["parquet"].parent
    batches = iter(stream_loader(root, "pretrain", batch_size=64, num_workers=2, image_size=224, device="cuda"))
    w = torch.randn(2048, 2048, device="cuda")
    next(batches)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            next(batches)
            for _ in range(30):  # a dummy model step of a few ms
                w = torch.tanh(w @ w)
        torch.cuda.synchronize()
    gpu = [e for e in prof.events() if e.device_type.name == "CUDA"]
    if not gpu:
        pytest.skip("the profiler saw no CUDA activity (no CUPTI here)")
    copies = [e.time_range for e in gpu if "memcpy" in e.name.lower() and "htod" in e.name.lower()]
    kernels = [e.time_range for e in gpu if "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    assert copies and kernels
    assert any(c.start < k.end and k.start < c.end for c in copies for k in kernels), "no copy overlapped compute"


@pytest.mark.parametrize("num_workers, k, max_nucleotides, drop_last", [(0, 4, 660, False), (2, 4, 660, True),
                                                                      (0, 6, 100, False), (0, 5, 700, False)])
def test_dna_only_columnar_batches_equal_the_per_record_path(converted_zips, num_workers, k, max_nucleotides,
                                                             drop_last):
    """Also where every barcode is cut (100 nucleotides, 16 6-mers) or padded (700 nucleotides: 140 5-mers)."""
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=16, num_workers=num_workers, modality=("dna",), target_type=["order", "species"],
              seed=2, buffer_size=24, k=k, max_nucleotides=max_nucleotides, drop_last=drop_last)
    fast = stream_loader(root, "all", **kw)  # Parquet + DNA only: whole batches from Arrow columns
    slow = stream_loader(root, "all", on_error="skip", **kw)  # the per-record path
    assert isinstance(fast.loader.dataset, ColumnarBatches) and not isinstance(slow.loader.dataset, ColumnarBatches)
    for _ in range(2):  # two epochs
        a, b = list(fast), list(slow)
        assert len(a) == len(b) == len(fast)
        for x, y in zip(a, b):
            assert x["processid"] == y["processid"]
            for key in ("dna", "dna_mask", "order", "species"):
                assert torch.equal(x[key], y[key]), key
    resumed = stream_loader(root, "all", **kw)
    head = collect(resumed, 3)
    state = resumed.state_dict()
    again = stream_loader(root, "all", **kw)
    again.load_state_dict(state)
    assert head + collect(again) == [b["processid"] for b in stream_loader(root, "all", **kw)]


@pytest.mark.parametrize("how", [
    dict(num_workers=0),
    dict(num_workers=2, augment=True, persistent_workers=False),
    dict(num_workers=3, drop_last=True, batch_size=7),  # 80 records a worker: 3 left
    dict(num_workers=1, rank=1, world_size=2, modality=("image",)),
    dict(num_workers=2, reduce_repeated_barcodes=True, mask_dna=0.2, buffer_size=1),
])
def test_image_batches_from_columns_equal_the_per_record_path(converted_zips, how):
    """Parquet images (+ DNA): whole batches from Arrow columns, each batch's images decoded
    straight into it, are the per-record path's batches: keys, order, pixels, tokens, over two
    epochs and through a resume (with drop_last, augmented crops, ranks, a reduced split)."""
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, image_size=16, seed=5, buffer_size=30, target_type=["order", "species"],
              modality=("image", "dna")) | how
    fast = stream_loader(root, "all", **kw)
    slow = stream_loader(root, "all", on_error="skip", **kw)  # the per-record path
    assert isinstance(fast.loader.dataset, ColumnarBatches) and not isinstance(slow.loader.dataset, ColumnarBatches)
    for _ in range(2):  # two epochs
        assert_same_batches(list(fast), list(slow), at_least=3)
    resumed, _ = interrupted(lambda: stream_loader(root, "all", **kw), 3)
    assert_same_batches(resumed, list(stream_loader(root, "all", on_error="skip", **kw)), at_least=3)


def test_columnar_image_rows_held_stay_a_shuffle_buffers_worth(converted_zips, monkeypatch):
    """Rows read ahead of emission are held as converted columns, not whole row groups: at most the
    shuffle buffer plus one read's rows, never the epoch."""
    from bioscan5m_hf.stream import columnar

    most = []

    class Counting(columnar.HeldRows):
        def take(self, positions):
            most.append(len(self))
            return super().take(positions)

    monkeypatch.setattr(columnar, "HeldRows", Counting)
    root = converted_zips.repos["parquet"].parent
    loader = stream_loader(root, "all", batch_size=8, num_workers=0, image_size=16, buffer_size=30, seed=1)
    assert sum(len(b["processid"]) for b in loader) == loader.records.num_records > 200
    rows_per_read = max(s.num_records for s in loader.records.shards)  # a shard's one row group, here
    assert 30 <= max(most) <= 30 + 8 + rows_per_read

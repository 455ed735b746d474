"""worker_method="thread": the workers' streams as threads of the main process, the same batches."""

import threading

import pytest
import torch

from bioscan5m_hf import make_loader
from bioscan5m_hf.errors import ShardError
from bioscan5m_hf.stream.workers import ThreadWorkers, worker_identity

from ..conftest import assert_same_batches, interrupted


class Uneven(torch.utils.data.IterableDataset):
    """Worker w yields 5 + 3w items, so workers run out at different batches."""

    def __iter__(self):
        worker, num_workers = worker_identity()
        yield from ((worker, num_workers, i) for i in range(5 + 3 * worker))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("num_workers", [1, 3])
def test_thread_workers_keep_the_dataloader_order(num_workers, drop_last):
    """Round robin over the workers, an exhausted one dropped, each worker batching its own samples:
    what torch's DataLoader does with processes."""
    ds = Uneven()
    kw = dict(batch_size=2, collate_fn=list, drop_last=drop_last, num_workers=num_workers)
    processes = list(torch.utils.data.DataLoader(ds, multiprocessing_context="fork", **kw))
    threads = list(ThreadWorkers(ds, num_workers, batch_size=2, collate=list, drop_last=drop_last))
    assert threads == processes and len(threads) > num_workers


def test_thread_workers_stop_when_left_and_raise_what_a_worker_raised():
    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield 1

    it = iter(ThreadWorkers(Endless(), 2, batch_size=4, collate=list, prefetch=1))
    assert next(it) == [1, 1, 1, 1]
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("bioscan5m-worker")]

    class Failing(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield 1
            if worker_identity()[0] == 1:
                raise ShardError("shard-00001.parquet: row group 0 is damaged")

    with pytest.raises(ShardError, match="shard-00001.parquet"):
        list(ThreadWorkers(Failing(), 2, batch_size=1, collate=list))
    with pytest.raises(ValueError, match="num_workers >= 1"):
        ThreadWorkers(Failing(), 0)


CASES = {
    "image, decoded in the workers": dict(modality=("image", "dna"), num_workers=2),
    "image, decoded in threads, drop_last": dict(modality=("image", "dna"), decode="threads", num_workers=3,
                                                 drop_last=True),
    "augmented crops": dict(modality=("image",), augment=True, num_workers=2),
    "DNA-only, columnar": dict(modality=("dna",), num_workers=2, batch_size=32),
    "DNA-only from tars": dict(modality=("dna",), num_workers=2, tars=True),
    "rank 1 of 3, padded": dict(modality=("dna",), num_workers=2, rank=1, world_size=3),
    "no workers: one thread": dict(modality=("image", "dna"), decode="threads", num_workers=0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_thread_workers_give_the_process_batches(converted_zips, case):
    kw = dict(batch_size=8, image_size=16, seed=3, target_type=["order", "species"])
    kw.update(CASES[case])
    tars = kw.pop("tars", False)
    root = converted_zips.repos["webdataset"] if tars else converted_zips.repos["parquet"].parent
    processes = list(make_loader(root, "pretrain", **kw))
    threads = list(make_loader(root, "pretrain", worker_method="thread", **kw))
    assert_same_batches(processes, threads)


def test_thread_workers_resume_exactly_on_either_method_and_topology(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, image_size=16, decode="threads", seed=5)
    full = [b["processid"] for b in make_loader(root, "pretrain", num_workers=2, **kw)]
    # interrupted on threads, resumed on threads
    batches, state = interrupted(lambda: make_loader(root, "pretrain", num_workers=2, worker_method="thread", **kw),
                                 3)
    assert [b["processid"] for b in batches] == full
    # a thread loader's state resumes a process loader exactly, and an elastic one with other workers
    done = [p for b in full[:3] for p in b]
    for other in (dict(num_workers=2), dict(num_workers=3, worker_method="thread")):
        resumed = make_loader(root, "pretrain", **kw, **other)
        resumed.load_state_dict(state)
        rest = [b["processid"] for b in resumed]
        if other["num_workers"] == 2:
            assert rest == full[3:]
        rest = [p for b in rest for p in b]
        assert sorted(done + rest) == sorted(p for b in full for p in b) and not set(done) & set(rest)


def test_a_bad_image_is_named_through_thread_workers(converted_zips, monkeypatch):
    from bioscan5m_hf.stream import images

    def broken(data, size, out):
        raise OSError("broken data stream")

    monkeypatch.setattr(images, "decode_image_into", broken)
    root = converted_zips.repos["parquet"].parent
    with pytest.raises(ShardError, match=r"\.parquet: member [A-Z]+\d+-\d+\.jpg: image does not decode"):
        next(iter(make_loader(root, "pretrain", batch_size=4, image_size=16, num_workers=2, worker_method="thread")))
    assert not [t for t in threading.enumerate() if t.name.startswith("bioscan5m-worker")]


@pytest.mark.parametrize("how", [dict(num_workers=2, worker_method="thread"), dict(num_workers=0),
                                 dict(num_workers=2, worker_method="thread", on_error="skip")])
def test_batches_decoded_in_this_process_reuse_buffers_only_once_dropped(converted_zips, how):
    """Image batches decoded in the main process (thread workers, or none) go into buffers reused
    once nothing refers to them: a loop that drops each batch sees the same pixels as one keeping
    every batch (which gets fresh buffers)."""
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, image_size=16, seed=3, target_type="species", modality=("image", "dna"), **how)
    kept = list(make_loader(root, "pretrain", **kw))
    dropped = []
    for batch in make_loader(root, "pretrain", **kw):
        dropped.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        del batch
    assert_same_batches(kept, dropped, at_least=3)
    assert len({b["image"].untyped_storage().data_ptr() for b in kept}) == len(kept)

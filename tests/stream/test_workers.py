"""Thread workers (what make_loader chooses without images): the workers' streams as threads of the
main process, the same batches as worker processes."""

import threading

import pytest
import torch

from bioscan5m_hf.errors import ShardError
from bioscan5m_hf.stream.loader import Mode
from bioscan5m_hf.stream.workers import ThreadWorkers, worker_identity

from ..conftest import assert_same_batches, interrupted, stream_loader


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
    "image, decoded in the workers, drop_last": dict(modality=("image", "dna"), num_workers=3, drop_last=True),
    "augmented crops": dict(modality=("image",), augment=True, num_workers=2),
    "DNA-only, columnar": dict(modality=("dna",), num_workers=2, batch_size=32),
    "DNA-only from tars": dict(modality=("dna",), num_workers=2, tars=True),
    "rank 1 of 3, padded": dict(modality=("dna",), num_workers=2, rank=1, world_size=3),
}


def ways(kw: dict) -> tuple[Mode, Mode]:
    """(worker processes, thread workers) for a loader of these keywords."""
    decode = "workers" if "image" in kw.get("modality", ("image",)) else None
    return Mode(decode, False), Mode(decode, True)


@pytest.mark.parametrize("case", list(CASES))
def test_thread_workers_give_the_process_batches(converted_zips, case):
    kw = dict(batch_size=8, image_size=16, seed=3, target_type=["order", "species"])
    kw.update(CASES[case])
    tars = kw.pop("tars", False)
    root = converted_zips.repos["webdataset"] if tars else converted_zips.repos["parquet"].parent
    processes, threads = ways(kw)
    assert_same_batches(list(stream_loader(root, "pretrain", mode=processes, **kw)),
                        list(stream_loader(root, "pretrain", mode=threads, **kw)))


def test_make_loader_chooses_thread_workers_without_images(converted_zips):
    root = converted_zips.repos["parquet"].parent
    assert isinstance(stream_loader(root, "pretrain", modality=("dna",)).loader, ThreadWorkers)
    assert isinstance(stream_loader(root, "pretrain", modality=("dna",), num_workers=0).loader,
                      torch.utils.data.DataLoader)
    assert isinstance(stream_loader(root, "pretrain").loader, torch.utils.data.DataLoader)


def test_thread_workers_resume_exactly_on_either_way_and_topology(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, seed=5, modality=("dna",))
    processes, threads = ways(kw)
    full = [b["processid"] for b in stream_loader(root, "pretrain", num_workers=2, mode=processes, **kw)]
    # interrupted on threads, resumed on threads
    batches, state = interrupted(lambda: stream_loader(root, "pretrain", num_workers=2, mode=threads, **kw), 3)
    assert [b["processid"] for b in batches] == full
    # a thread loader's state resumes a process loader exactly, and an elastic one with other workers
    done = [p for b in full[:3] for p in b]
    for other in (dict(num_workers=2, mode=processes), dict(num_workers=3, mode=threads)):
        resumed = stream_loader(root, "pretrain", **kw, **other)
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
        next(iter(stream_loader(root, "pretrain", batch_size=4, image_size=16, num_workers=2,
                                mode=Mode("workers", True))))
    assert not [t for t in threading.enumerate() if t.name.startswith("bioscan5m-worker")]

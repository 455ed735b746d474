"""Who is iterating: a DataLoader worker process, or one of :class:`ThreadWorkers`' threads.

``make_loader`` runs its ``num_workers`` streams as threads of the main process instead of
DataLoader processes where that is faster: batches without images (:func:`~.loader.choose_mode`;
BENCHMARKS.md, ``loader``). Each thread plays the worker of the same id (its part of the epoch
comes from the same partition math) and the batches come out in the DataLoader's own order (round
robin over the workers, an exhausted one dropped from the round), so the batches are exactly those
of worker processes. What that saves: starting processes each epoch, and every batch crossing a
process boundary (shared-memory tensors, pickled lists). What it costs: the streams' Python shares
one interpreter lock, so it pays where the heavy work releases it (Arrow reads, numpy kernels).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

_local = threading.local()


def worker_identity() -> tuple[int, int]:
    """(this worker's id, the number of workers): of a DataLoader worker process or of a
    :class:`ThreadWorkers` thread; (0, 1) outside both."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        return info.id, info.num_workers
    return getattr(_local, "identity", (0, 1))


class _End:
    """What a thread puts last: the end of its stream, or the error that ended it."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


def batched(samples: Iterable, batch_size: int, collate: Callable[[list], Any], drop_last: bool) -> Iterator:
    """``collate`` over consecutive ``batch_size`` samples, as a DataLoader worker batches an
    iterable dataset (the last, shorter batch kept unless ``drop_last``)."""
    batch: list = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch and not drop_last:
        yield collate(batch)


class ThreadWorkers:
    """An iterable dataset's batches from ``num_workers`` threads, in DataLoader order.

    ``collate=None``: the dataset yields whole batches (``batch_size`` unused). Each thread keeps at
    most ``prefetch`` batches ahead; leaving the iteration early stops the threads."""

    def __init__(self, dataset: Iterable, num_workers: int, *, batch_size: int | None = None,
                 collate: Callable[[list], Any] | None = None, drop_last: bool = False, prefetch: int = 4,
                 pin_memory: bool = False):
        if num_workers < 1:
            raise ValueError(f"thread workers need num_workers >= 1, got {num_workers}")
        self.dataset, self.num_workers = dataset, num_workers
        self.batch_size, self.collate, self.drop_last = batch_size, collate, drop_last
        self.prefetch, self.pin_memory = max(1, prefetch), pin_memory and torch.cuda.is_available()

    def _stream(self, worker: int) -> Iterator:
        _local.identity = (worker, self.num_workers)
        items = iter(self.dataset)
        if self.collate is not None:
            items = batched(items, self.batch_size, self.collate, self.drop_last)
        for item in items:
            yield _pinned(item) if self.pin_memory else item

    def _run(self, worker: int, out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            for item in self._stream(worker):
                if not put(item):
                    return
            put(_End())
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_End(e))

    def __iter__(self) -> Iterator:
        stop = threading.Event()
        queues = [queue.Queue(self.prefetch) for _ in range(self.num_workers)]
        threads = [threading.Thread(target=self._run, args=(w, queues[w], stop), daemon=True,
                                    name=f"bioscan5m-worker-{w}") for w in range(self.num_workers)]
        for t in threads:
            t.start()
        try:
            active = list(range(self.num_workers))
            while active:
                for w in list(active):  # the DataLoader's round robin, skipping exhausted workers
                    item = queues[w].get()
                    if isinstance(item, _End):
                        if item.error is not None:
                            raise item.error
                        active.remove(w)
                        continue
                    yield item
        finally:
            stop.set()
            for t in threads:
                t.join()


def _pinned(batch):
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pinned(v) for k, v in batch.items()}
    return batch


__all__ = ["ThreadWorkers", "worker_identity", "batched"]

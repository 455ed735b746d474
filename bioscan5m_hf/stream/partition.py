"""Who reads which record, in which order: pure functions, no I/O.

An epoch over a split is one stream of records: the split's shards, in an order shuffled per epoch,
each read front to back. The stream is cut into equal contiguous blocks, one per rank (``even="pad"``
wraps around to the start to fill the last block, ``"drop"`` drops the remainder), and each rank's
block into nearly equal contiguous blocks, one per DataLoader worker. A worker reads its block
sequentially, starting at its first shard boundary (the partial shard at its head comes last), and
emits it through a shuffle buffer whose emission order is itself computed here, from the seed alone,
so that:

- every record is yielded exactly once per epoch across all ranks and workers (plus the padding);
- the same seed and epoch give the same order, and another epoch another order;
- resuming after ``k`` yielded samples needs only ``k``: the remaining order is ``emission[k:]``, and
  the reader restarts at ``min(emission[k:])`` (see :func:`resume_point`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..util import check_choice

EVEN_POLICIES = ("pad", "drop")


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order shards are read in this epoch."""
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([seed, epoch, 1]).permutation(num_shards)


def rank_block(total: int, rank: int, world_size: int, even: str = "pad") -> tuple[int, int]:
    """(start, count) of a rank's block of the epoch stream; the same count for every rank.

    With ``"pad"`` the blocks cover ``ceil(total / world_size) * world_size`` positions, taken modulo
    ``total`` (the first few records are repeated); with ``"drop"`` they cover
    ``floor(total / world_size) * world_size`` (the last few records are left out this epoch).

    >>> [rank_block(10, r, 3, "pad") for r in range(3)]
    [(0, 4), (4, 4), (8, 4)]
    >>> [rank_block(10, r, 3, "drop") for r in range(3)]
    [(0, 3), (3, 3), (6, 3)]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    check_choice(even, "even", EVEN_POLICIES)
    if total == 0:
        return 0, 0
    per = math.ceil(total / world_size) if even == "pad" else total // world_size
    return rank * per, per


def worker_block(count: int, worker: int, num_workers: int) -> tuple[int, int]:
    """(start, count) of a worker's part of a rank's block; counts differ by at most one.

    >>> [worker_block(10, w, 3) for w in range(3)]
    [(0, 4), (4, 3), (7, 3)]
    """
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not in [0, {num_workers})")
    base, extra = divmod(count, num_workers)
    start = worker * base + min(worker, extra)
    return start, base + (1 if worker < extra else 0)


def buffer_shuffle(n: int, buffer_size: int, seed: Sequence[int]) -> np.ndarray:
    """Emission order of a shuffle buffer over ``n`` sequential inputs.

    The buffer starts small and grows by one input per step up to ``buffer_size`` (so the first
    sample does not wait for a full buffer); each step emits a uniformly chosen input from it.
    Element ``t`` of the result is the input emitted at step ``t``; it is always among the first
    ``t + buffer_size`` inputs, so a reader never holds more than ``buffer_size`` records.
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    size = max(1, min(buffer_size, n))
    if size == 1:
        return np.arange(n, dtype=np.int64)
    u = np.random.default_rng(list(seed)).random(n)
    slots: list[int] = []
    nxt = 0
    out = np.empty(n, dtype=np.int64)
    for t in range(n):
        while nxt < n and len(slots) < min(size, t + 2):
            slots.append(nxt)
            nxt += 1
        j = int(u[t] * len(slots))
        out[t] = slots[j]
        slots[j] = slots[-1]
        slots.pop()
    return out


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker of one rank reads in one epoch.

    ``shards[i]`` and ``offsets[i]`` locate the ``i``-th record the worker reads (``offsets`` index the
    shard's selected records); ``emission[t]`` is the read position yielded at step ``t``.
    """

    shards: np.ndarray
    offsets: np.ndarray
    emission: np.ndarray

    def __len__(self) -> int:
        return len(self.emission)


def worker_plan(shard_sizes: Sequence[int], *, seed: int, epoch: int, shuffle: bool, rank: int = 0,
                world_size: int = 1, worker: int = 0, num_workers: int = 1, even: str = "pad",
                buffer_size: int = 1000) -> WorkerPlan:
    """Everything a worker needs to know about its part of an epoch (see the module docstring)."""
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    order = shard_order(len(sizes), seed=seed, epoch=epoch, shuffle=shuffle)
    total = int(sizes.sum())
    r_start, r_count = rank_block(total, rank, world_size, even)
    w_start, w_count = worker_block(r_count, worker, num_workers)
    positions = (r_start + w_start + np.arange(w_count, dtype=np.int64)) % max(total, 1)
    ends = np.cumsum(sizes[order])
    slot = np.searchsorted(ends, positions, side="right")
    shards = order[slot] if len(order) else np.zeros(0, dtype=np.int64)
    offsets = positions - (ends[slot] - sizes[shards]) if len(order) else positions
    # Start reading at the block's first shard boundary and read the partial head shard last, so a
    # worker's first samples come from the start of one shard (one shard fetched for the first batch).
    heads = np.flatnonzero(offsets == 0)
    if len(heads) and heads[0] > 0:
        shards, offsets = np.roll(shards, -heads[0]), np.roll(offsets, -heads[0])
    if shuffle and buffer_size > 1:
        emission = buffer_shuffle(w_count, buffer_size, (seed, epoch, rank, worker, 2))
    else:
        emission = np.arange(w_count, dtype=np.int64)
    return WorkerPlan(shards.astype(np.int64), offsets.astype(np.int64), emission)


def visits(plan: WorkerPlan, start: int = 0) -> list[tuple[int, int]]:
    """The read positions from ``start`` on, cut into visits: ``[a, b)`` runs in one shard with
    increasing offsets, each read in one pass.

    >>> visits(WorkerPlan(np.array([0, 0, 1, 1, 0]), np.array([0, 1, 0, 1, 2]), np.arange(5)), 1)
    [(1, 2), (2, 4), (4, 5)]
    """
    n = len(plan)
    breaks = np.flatnonzero((np.diff(plan.shards) != 0) | (np.diff(plan.offsets) <= 0)) + 1
    edges = [start, *[b for b in breaks.tolist() if b > start], n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if a < b]


def epoch_count(total: int, world_size: int, even: str = "pad") -> int:
    """Records yielded per rank per epoch."""
    return rank_block(total, 0, world_size, even)[1]


def resume_point(emission: np.ndarray, done: int) -> tuple[int, np.ndarray]:
    """Where to restart reading after ``done`` samples were yielded, and which reads to drop.

    Returns the first read position still needed and the positions at or after it that were already
    yielded (so the reader skips them instead of buffering them).
    """
    if done >= len(emission):
        return len(emission), np.zeros(0, dtype=np.int64)
    start = int(emission[done:].min())
    yielded = emission[:done]
    return start, np.sort(yielded[yielded >= start])


def loader_progress(worker_counts: Sequence[int], batch_size: int, batches: int,
                    drop_last: bool = False) -> tuple[list[int], int]:
    """Where each worker stands once a DataLoader yielded ``batches`` batches, and who is next.

    PyTorch's DataLoader asks its workers in turn (0, 1, ..., 0, 1, ...) and yields their batches in
    that order, passing over workers that have run out. This replays that: it returns the batches
    each worker had delivered, and the worker whose batch would come next (a resumed DataLoader
    starts its turns at worker 0, so the resumed workers are rotated to start with that one).
    """
    per_worker = [(c // batch_size) if drop_last else math.ceil(c / batch_size) for c in worker_counts]
    if batches > sum(per_worker):
        raise ValueError(f"{batches} batches is more than the epoch holds ({sum(per_worker)})")
    done = [0] * len(per_worker)
    last = -1
    left = batches
    while left > 0:
        for w, n in enumerate(per_worker):
            if left and done[w] < n:
                done[w] += 1
                last = w
                left -= 1
    return done, (last + 1) % max(1, len(per_worker))

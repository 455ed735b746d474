"""Who reads which record, in which order: pure functions, no I/O.

An epoch over a split is one stream of records: the split's shards, in an order shuffled per epoch,
each read front to back. What the epoch holds is its *universe*: by default every position of that
stream once; a filter keeps some, a sampler may take some several times (always in stream order, so
reads stay sequential). The universe does not depend on ranks or workers.

The universe is cut into equal contiguous blocks, one per rank (``even="pad"`` wraps around to the
start to fill the last block, ``"drop"`` drops the remainder), and each rank's block into nearly
equal contiguous blocks, one per DataLoader worker. A worker reads its block sequentially, starting
at its first shard boundary (the partial shard at its head comes last), and emits it through a
shuffle buffer whose emission order is itself computed here, from the seed alone, so that:

- every record is yielded exactly once per epoch across all ranks and workers (plus the padding,
  which each read position is flagged as);
- the same seed and epoch give the same order, and another epoch another order;
- resuming after ``k`` yielded samples needs only ``k``: the remaining order is ``emission[k:]``, and
  the reader restarts at ``min(emission[k:])`` (see :func:`resume_point`);
- resuming on another topology (elastic): an epoch may run in *phases*, each under its own world
  size and worker count. A :class:`Phase` records how far each worker got; the next phase cuts what
  is left of the universe (:func:`live_slots`) among its own ranks and workers by the same rules,
  so the epoch still yields every record once, and no shard is read again to find the place.
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
    """Emission order of a bounded shuffle over ``n`` sequential inputs.

    Element ``t`` of the result is the input emitted at step ``t``; it is always among the first
    ``t + buffer_size`` inputs, so a reader never holds more than ``buffer_size`` records. Input ``i``
    is emitted in the order of ``i + u * min(buffer_size, i + 2)`` (``u`` uniform in [0, 1), ties to
    the lower ``i``): every input whose window ends before ``i`` comes first, which gives the bound;
    the window grows from 2 so the first sample does not wait for a full buffer. The keys, in fixed
    point with the input in the low bits, are unique integers: one plain sort, the same on every
    machine. (A buffer simulated record by record took 6 s of a full-size worker's first batch;
    BENCHMARKS.md, dropin.)
    """
    size = max(1, min(buffer_size, n))
    if size == 1:
        return np.arange(n, dtype=np.int64)
    index_bits, key_bits = (n - 1).bit_length(), (n + size).bit_length()
    fraction = max(0, min(52 - key_bits, 62 - index_bits - key_bits))
    steps = np.arange(n, dtype=np.int64)
    keys = steps + np.random.default_rng(list(seed)).random(n) * np.minimum(size, steps + 2)
    fixed = np.floor(keys * float(1 << fraction)).astype(np.int64)
    fixed <<= index_bits
    fixed |= steps
    fixed.sort()
    return fixed & ((1 << index_bits) - 1)


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker of one rank reads in one epoch (or one phase of it).

    ``shards[i]`` and ``offsets[i]`` locate the ``i``-th record the worker reads (``offsets`` index the
    shard's selected records); ``emission[t]`` is the read position yielded at step ``t``;
    ``padding[i]`` says read ``i`` only repeats a record to even out the ranks (``even="pad"``).
    """

    shards: np.ndarray
    offsets: np.ndarray
    emission: np.ndarray
    padding: np.ndarray

    def __len__(self) -> int:
        return len(self.emission)


@dataclass(frozen=True)
class Phase:
    """A stretch of an epoch run by one topology: ``done[w]`` samples yielded by worker ``w`` of every
    rank (lockstep training: the same on each rank) before it stopped."""

    world_size: int
    num_workers: int
    done: tuple[int, ...]

    def __post_init__(self):
        if len(self.done) != self.num_workers:
            raise ValueError(f"a phase of {self.num_workers} workers needs {self.num_workers} counts, got {self.done}")


@dataclass(frozen=True)
class Layout:
    """An epoch's universe located in the shards: slot ``i`` is record ``offset[i]`` of shard ``shard[i]``."""

    shard: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return len(self.shard)


def epoch_layout(shard_sizes: Sequence[int], *, seed: int, epoch: int, shuffle: bool,
                 universe: np.ndarray | None = None) -> Layout:
    """The epoch's universe (stream positions, ascending; all of them once when None) in the shards."""
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    order = shard_order(len(sizes), seed=seed, epoch=epoch, shuffle=shuffle)
    total = int(sizes.sum())
    positions = np.arange(total, dtype=np.int64) if universe is None else np.asarray(universe, dtype=np.int64)
    if len(positions) == 0 or len(order) == 0:
        return Layout(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    ends = np.cumsum(sizes[order])
    slot = np.searchsorted(ends, positions, side="right")
    shards = order[slot]
    return Layout(shards.astype(np.int64), (positions - (ends[slot] - sizes[shards])).astype(np.int64))


def _emission(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int, worker: int, buffer_size: int,
              phase: int) -> np.ndarray:
    if not (shuffle and buffer_size > 1):
        return np.arange(n, dtype=np.int64)
    return buffer_shuffle(n, buffer_size, (seed, epoch, rank, worker, 2) + ((phase,) if phase else ()))


def _reads(layout: Layout, live: np.ndarray, rank: int, world_size: int, worker: int, num_workers: int,
           even: str) -> tuple[np.ndarray, np.ndarray]:
    """The slots a worker reads, in read order, and which of them are padding."""
    n = len(live)
    r_start, r_count = rank_block(n, rank, world_size, even)
    w_start, w_count = worker_block(r_count, worker, num_workers)
    index = r_start + w_start + np.arange(w_count, dtype=np.int64)
    padding = index >= n
    slots = live[index % max(n, 1)] if n else np.zeros(0, dtype=np.int64)
    # Start reading at the block's first visit boundary and read the partial head visit last, so a
    # worker's first samples come from the start of one shard (one shard fetched for the first batch).
    if len(slots):
        shards, offsets = layout.shard[slots], layout.offset[slots]
        breaks = np.flatnonzero((shards[1:] != shards[:-1]) | (offsets[1:] < offsets[:-1])) + 1
        first = int(index[0] % n)
        starts_visit = first == 0 or layout.shard[live[first - 1]] != shards[0] or \
            layout.offset[live[first - 1]] > offsets[0]
        if not starts_visit and len(breaks):
            slots, padding = np.roll(slots, -breaks[0]), np.roll(padding, -breaks[0])
    return slots, padding


def live_slots(layout: Layout, phases: Sequence[Phase], *, seed: int, epoch: int, shuffle: bool, even: str,
               buffer_size: int) -> np.ndarray:
    """The universe's slots not yet yielded after ``phases`` (ascending): what the next phase reads."""
    live = np.arange(len(layout), dtype=np.int64)
    for k, phase in enumerate(phases):
        yielded = []
        for rank in range(phase.world_size):
            for worker in range(phase.num_workers):
                slots, padding = _reads(layout, live, rank, phase.world_size, worker, phase.num_workers, even)
                emission = _emission(len(slots), seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, worker=worker,
                                     buffer_size=buffer_size, phase=k)
                if phase.done[worker] > len(slots):
                    raise ValueError(f"phase {k}: worker {worker} cannot have yielded {phase.done[worker]} of "
                                     f"{len(slots)} samples")
                taken = emission[: phase.done[worker]]
                yielded.append(slots[taken[~padding[taken]]])  # a padding read leaves its record to its owner
        live = live[~np.isin(live, np.concatenate(yielded))] if yielded else live
    return live


def worker_plan(shard_sizes: Sequence[int], *, seed: int, epoch: int, shuffle: bool, rank: int = 0,
                world_size: int = 1, worker: int = 0, num_workers: int = 1, even: str = "pad",
                buffer_size: int = 1000, universe: np.ndarray | None = None,
                phases: Sequence[Phase] = ()) -> WorkerPlan:
    """Everything a worker needs to know about its part of an epoch (see the module docstring):
    its part of what ``phases`` left of the ``universe``."""
    layout = epoch_layout(shard_sizes, seed=seed, epoch=epoch, shuffle=shuffle, universe=universe)
    live = live_slots(layout, phases, seed=seed, epoch=epoch, shuffle=shuffle, even=even, buffer_size=buffer_size)
    return plan_of(layout, live, seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, world_size=world_size,
                   worker=worker, num_workers=num_workers, even=even, buffer_size=buffer_size, phase=len(phases))


def plan_of(layout: Layout, live: np.ndarray, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
            worker: int, num_workers: int, even: str, buffer_size: int, phase: int = 0) -> WorkerPlan:
    """A worker's plan over the ``live`` slots of ``layout`` in phase number ``phase``."""
    slots, padding = _reads(layout, live, rank, world_size, worker, num_workers, even)
    emission = _emission(len(slots), seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, worker=worker,
                         buffer_size=buffer_size, phase=phase)
    return WorkerPlan(layout.shard[slots], layout.offset[slots], emission, padding)


def visits(plan: WorkerPlan, start: int = 0) -> list[tuple[int, int]]:
    """The read positions from ``start`` on, cut into visits: ``[a, b)`` runs in one shard with
    non-decreasing offsets (a sampled universe may repeat a record), each read in one pass.

    >>> visits(WorkerPlan(np.array([0, 0, 1, 1, 0]), np.array([0, 1, 0, 1, 2]), np.arange(5), np.zeros(5, bool)), 1)
    [(1, 2), (2, 4), (4, 5)]
    """
    n = len(plan)
    breaks = np.flatnonzero((np.diff(plan.shards) != 0) | (np.diff(plan.offsets) < 0)) + 1
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

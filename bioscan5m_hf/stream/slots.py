"""Image batches from DataLoader worker processes through shared memory reused batch after batch.

By default a worker's batch of decoded images (50 MB at batch 256 and 256 px) goes to the main
process in shared memory made fresh for that batch: the worker faults in every page as it writes,
the main process maps the memory and faults in every page again as it reads, and both unmap it
afterwards. On 2 cores that costs as much as decoding the images (BENCHMARKS.md).
:class:`ImageSlots` is a fixed set of batch-sized slots in one anonymous shared mapping, made by
the main process before the workers fork, so the workers inherit it: a worker writes a batch into
one of its own free slots and sends only a :class:`SlotRef` (two integers); the main process hands
out a tensor viewing that slot and frees the slot once nothing refers to that tensor any more
(or any view of it). Workers whose slots are all in use (a consumer keeping many batches) fall
back to fresh shared memory, so nothing waits and no batch is overwritten.

Slot states live in a small shared array: 0 free, ``HELD`` handed to the consumer, otherwise the
iteration (``generation``) in which a worker claimed it. A slot claimed in an earlier iteration and
never delivered (the consumer left that iteration early; the loader runs one iteration at a time)
is free again. Persistent workers may still finish batches of the iteration left after the next
one began: those slots count as that next iteration's until it ends (a few batches may then go
through fresh memory), and are free again in the one after.
"""

from __future__ import annotations

import mmap
import multiprocessing
import sys
from dataclasses import dataclass

import numpy as np
import torch

HELD = -1


@dataclass(frozen=True)
class SlotRef:
    """What a worker sends instead of its image batch: the slot and how many images it holds."""

    slot: int
    count: int


class ImageSlots:
    """``per_worker`` slots of ``batch_size x size x size x 3`` uint8 for each of ``num_workers``
    DataLoader worker processes. Made in the main process before the workers start (they must be
    forked, to inherit the mapping); :meth:`claim` runs in the workers, :meth:`take` and
    :meth:`new_generation` in the main process."""

    def __init__(self, num_workers: int, per_worker: int, batch_size: int, size: int):
        self.num_workers, self.per_worker = num_workers, per_worker
        self.shape = (batch_size, size, size, 3)
        self.slot_bytes = batch_size * size * size * 3
        self.slot_count = num_workers * per_worker
        self.memory = mmap.mmap(-1, self.slot_count * self.slot_bytes)  # anonymous, shared with forked children
        # [generation, fallbacks of worker 0, ..., of worker n - 1, state of slot 0, of slot 1, ...]
        self.state = multiprocessing.get_context("fork").Array("q", 1 + num_workers + self.slot_count, lock=False)
        self.state[0] = 1
        self._first_slot = 1 + num_workers
        self._held: dict[int, np.ndarray] = {}  # main process: slots handed out, by slot

    def __getstate__(self):
        raise TypeError("ImageSlots are shared with forked DataLoader workers only, not pickled")

    @property
    def fallbacks(self) -> int:
        """Batches sent in fresh shared memory because all of their worker's slots were in use."""
        return sum(self.state[1: 1 + self.num_workers])

    def _view(self, slot: int, count: int) -> np.ndarray:
        array = np.frombuffer(self.memory, np.uint8, count * self.slot_bytes // self.shape[0],
                              slot * self.slot_bytes)
        return array.reshape(count, *self.shape[1:])

    # -- worker processes ---------------------------------------------------------------------------

    def claim(self, worker: int, count: int) -> tuple[SlotRef, np.ndarray] | None:
        """A free slot of ``worker``'s for ``count`` images and the array to write them into, or
        None when all its slots are in use (send the batch in fresh memory then)."""
        generation = self.state[0]
        for slot in range(worker * self.per_worker, (worker + 1) * self.per_worker):
            state = self.state[self._first_slot + slot]
            if state == 0 or 0 < state < generation:
                self.state[self._first_slot + slot] = generation
                return SlotRef(slot, count), self._view(slot, count)
        self.state[1 + worker] += 1
        return None

    def release_claim(self, ref: SlotRef) -> None:
        """Give a claimed slot back unused (its batch failed in the worker)."""
        self.state[self._first_slot + ref.slot] = 0

    # -- the main process ---------------------------------------------------------------------------

    def new_generation(self) -> None:
        """A new iteration starts: slots claimed before it and never delivered are free again."""
        self.release_unused()
        self.state[0] += 1

    def take(self, ref: SlotRef) -> torch.Tensor:
        """The batch a worker wrote into ``ref``'s slot: ``count x 3 x size x size`` uint8 in
        channels-last memory format (as :func:`~bioscan5m_hf.stream.loader.stack_images` gives),
        viewing the slot, which stays held until no tensor refers to it."""
        self.release_unused()
        array = self._view(ref.slot, ref.count)
        self._held[ref.slot] = array
        self.state[self._first_slot + ref.slot] = HELD
        return torch.from_numpy(array).permute(0, 3, 1, 2)

    def release_unused(self) -> None:
        """Free every held slot no tensor (or view, or array made from one) refers to any more."""
        for slot in [s for s in self._held if sys.getrefcount(self._held[s]) <= 2]:  # the dict, the call
            del self._held[slot]
            self.state[self._first_slot + slot] = 0

    @property
    def held(self) -> int:
        """Slots handed out and still referred to (main process)."""
        self.release_unused()
        return len(self._held)


__all__ = ["ImageSlots", "SlotRef"]

"""Image batches from DataLoader worker processes through shared memory reused batch after batch.

By default a worker's batch of decoded images (50 MB at batch 256 and 256 px) goes to the main
process in shared memory made fresh for that batch: the worker faults in every page as it writes,
the main process maps the memory and faults in every page again as it reads, and both unmap it
afterwards. On few cores that costs as much as decoding the images (BENCHMARKS.md, history).
:class:`ImageSlots` is a fixed set of batch-sized slots in one anonymous shared mapping, made by
the main process before the workers fork, so the workers inherit it: a worker writes a batch into
one of its own free slots and sends only a :class:`SlotRef` (two integers); the main process hands
out a tensor viewing that slot and frees the slot once nothing refers to that tensor any more
(or any view of it). Workers whose slots are all in use (a consumer keeping many batches) fall
back to fresh shared memory, so nothing waits and no batch is overwritten.

The batch's other tensors (DNA token ids and masks, labels) go into the same slot, after the images
(:meth:`SlotMemory.pack`, sending :class:`InSlot` records instead): torch hands each tensor a worker
sends over in shared memory of its own, which the main process fetches through a socket
connection per tensor (with an authentication handshake), as costly on few cores as the tensors'
work itself. The main process hands out large ones as views of the slot and copies small ones
(labels, which consumers often keep, would otherwise keep a whole slot in use).

Slot states live in a small shared array: 0 free, ``HELD`` handed to the consumer, otherwise the
iteration (``generation``) in which a worker claimed it. A slot claimed in an earlier iteration and
never delivered (the consumer left that iteration early; the loader runs one iteration at a time)
is free again. Persistent workers may still finish batches of the iteration left after the next
one began: those slots count as that next iteration's until it ends (a few batches may then go
through fresh memory), and are free again in the one after.

:class:`CollateSlots` does the same for a plain DataLoader whose ``collate_fn`` is
:class:`~bioscan5m_hf.stream.collate.BatchCollate`, where no loader of ours runs in the main
process: a worker claims any free slot (under a lock, marking it with its process id) and sends a
:class:`SlotBatch`, which the main process unpickles as the batch of tensors viewing (or copied
from) the slot. A slot claimed by a worker process that has ended is free again.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import uuid
import weakref
from dataclasses import dataclass

import numpy as np
import torch

HELD = -1
#: Bytes from which a tensor sent in a slot is handed out as a view of the slot (smaller: a copy).
VIEW_FROM = 1 << 16
_ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def room_for(batch_size: int, values_per_record: int, tensors: int) -> int:
    """``extra_bytes`` for ``tensors`` tensors of 8-byte values after a slot's images,
    ``values_per_record`` values per record in all (int64 token ids, masks and labels)."""
    return batch_size * 8 * values_per_record + _ALIGN * tensors


@dataclass(frozen=True)
class SlotRef:
    """What a worker sends instead of its image batch: the slot and how many images it holds."""

    slot: int
    count: int


@dataclass(frozen=True)
class InSlot:
    """What a worker sends instead of one of a batch's other tensors, written into the batch's slot
    after the images: where (bytes from the slot's start), its dtype and its shape."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


class SlotMemory:
    """``slot_count`` slots of ``batch_size x size x size x 3`` uint8 (and ``extra_bytes`` after them
    for the batch's other tensors) in one anonymous shared mapping (reserved now, touched only as
    used), made by the main process before its workers fork, and a shared array of ``header``
    counters and one state per slot (0 free, ``HELD`` handed out by the main process, otherwise a
    claim; what a claim records is the subclass's). The main process hands out tensors viewing slots
    (:meth:`_hand_out`); a slot is free again as soon as nothing refers to its tensors."""

    def __init__(self, slot_count: int, batch_size: int, size: int, header: int, extra_bytes: int = 0):
        self.shape = (batch_size, size, size, 3)
        self.image_bytes = batch_size * size * size * 3
        self.slot_bytes = _aligned(self.image_bytes + extra_bytes)
        self.slot_count = slot_count
        self.memory = mmap.mmap(-1, slot_count * self.slot_bytes)  # anonymous, shared with forked children
        self.state = multiprocessing.get_context("fork").Array("q", header + slot_count, lock=False)
        self._first_slot = header
        self._held: dict[int, weakref.finalize] = {}  # main process: the last hand-out of each slot

    def __getstate__(self):
        raise TypeError("image slots are shared with forked DataLoader workers only, not pickled")

    def _slot_state(self, slot: int) -> int:
        return self.state[self._first_slot + slot]

    def _set_slot_state(self, slot: int, value: int) -> None:
        self.state[self._first_slot + slot] = value

    def _bytes(self, slot: int) -> np.ndarray:
        """All of ``slot``'s bytes, as a flat uint8 array viewing them."""
        return np.frombuffer(self.memory, np.uint8, self.slot_bytes, slot * self.slot_bytes)

    def _first_images(self, whole: np.ndarray, count: int) -> np.ndarray:
        """The ``count x size x size x 3`` images at the start of a slot's bytes."""
        return whole[: count * self.image_bytes // self.shape[0]].reshape(count, *self.shape[1:])

    def _view(self, slot: int, count: int) -> np.ndarray:
        return self._first_images(self._bytes(slot), count)

    def release_claim(self, ref: SlotRef) -> None:
        """Give a claimed slot back unused (its batch failed in the worker)."""
        self._set_slot_state(ref.slot, 0)

    def _hand_out(self, slot: int) -> np.ndarray:
        """Main process: the bytes of ``slot``, held until no array or tensor made from them is left:
        then it is free again at once (a finalizer of this array, which every such view refers to)."""
        whole = self._bytes(slot)
        self._set_slot_state(slot, HELD)
        self._held[slot] = weakref.finalize(whole, self._set_slot_state, slot, 0)
        return whole

    def _images(self, whole: np.ndarray, count: int) -> torch.Tensor:
        """The ``count`` images at the start of a slot's bytes: ``count x 3 x size x size`` uint8 in
        channels-last memory format (as :func:`~bioscan5m_hf.stream.images.stack_images` gives)."""
        return torch.from_numpy(self._first_images(whole, count)).permute(0, 3, 1, 2)

    @property
    def held(self) -> int:
        """Slots handed out and still referred to (main process)."""
        return sum(finalizer.alive for finalizer in self._held.values())

    def pack(self, batch: dict) -> dict:
        """Worker process: a batch whose ``image`` is a claimed slot's :class:`SlotRef`, its other
        tensors written into that slot after the images, each replaced by its :class:`InSlot` (in
        order; one that does not fit stays a tensor). Any other batch as it is."""
        ref = batch.get("image")
        if not isinstance(ref, SlotRef):
            return batch
        out, end, whole = dict(batch), self.image_bytes, self._bytes(ref.slot)
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                continue
            array = np.ascontiguousarray(value.numpy())
            start = _aligned(end)
            if start + array.nbytes > self.slot_bytes:
                continue
            whole[start: start + array.nbytes] = array.reshape(-1).view(np.uint8)
            out[key], end = InSlot(start, array.dtype.str, array.shape), start + array.nbytes
        return out

    def take(self, batch: dict) -> dict:
        """Main process: the batch a worker sent (:meth:`pack`), its :class:`SlotRef` and :class:`InSlot` values
        replaced by tensors: the images and tensors of ``VIEW_FROM`` bytes or more view the slot,
        which stays held while any of them is referred to; smaller ones are copies."""
        ref = batch["image"]
        whole = self._hand_out(ref.slot)
        out = {}
        for key, value in batch.items():
            if isinstance(value, SlotRef):
                value = self._images(whole, value.count)
            elif isinstance(value, InSlot):
                dtype = np.dtype(value.dtype)
                nbytes = dtype.itemsize * int(np.prod(value.shape, dtype=np.int64))
                array = whole[value.offset: value.offset + nbytes].view(dtype).reshape(value.shape)
                value = torch.from_numpy(array if nbytes >= VIEW_FROM else array.copy())
            out[key] = value
        return out


class ImageSlots(SlotMemory):
    """``per_worker`` slots for each of ``num_workers`` DataLoader worker processes of make_loader,
    each with ``extra_bytes`` after its images for the batch's other tensors. Made in the main
    process before the workers start (they must be forked, to inherit the mapping); :meth:`claim`
    and :meth:`pack` run in the workers, :meth:`take` and :meth:`new_generation` in the main
    process."""

    def __init__(self, num_workers: int, per_worker: int, batch_size: int, size: int, extra_bytes: int = 0):
        # header: [generation, fallbacks of worker 0, ..., of worker n - 1]
        super().__init__(num_workers * per_worker, batch_size, size, header=1 + num_workers, extra_bytes=extra_bytes)
        self.num_workers, self.per_worker = num_workers, per_worker
        self.state[0] = 1

    @property
    def fallbacks(self) -> int:
        """Batches sent in fresh shared memory because all of their worker's slots were in use."""
        return sum(self.state[1: 1 + self.num_workers])

    # -- worker processes ---------------------------------------------------------------------------

    def claim(self, worker: int, count: int) -> tuple[SlotRef, np.ndarray] | None:
        """A free slot of ``worker``'s for ``count`` images and the array to write them into, or
        None when all its slots are in use (send the batch in fresh memory then)."""
        generation = self.state[0]
        for slot in range(worker * self.per_worker, (worker + 1) * self.per_worker):
            state = self._slot_state(slot)
            if state == 0 or 0 < state < generation:
                self._set_slot_state(slot, generation)
                return SlotRef(slot, count), self._view(slot, count)
        self.state[1 + worker] += 1
        return None

    # -- the main process ---------------------------------------------------------------------------

    def new_generation(self) -> None:
        """A new iteration starts: slots claimed before it and never delivered are free again."""
        self.state[0] += 1


#: CollateSlots of this process by key, for unpickling a SlotBatch (forked workers inherit a copy).
_COLLATE_SLOTS: weakref.WeakValueDictionary[str, CollateSlots] = weakref.WeakValueDictionary()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now has that id: not ours to free
        return True
    return True


class SlotBatch(dict):
    """What a :class:`~bioscan5m_hf.stream.collate.BatchCollate` worker sends: its batch packed into
    a slot (:meth:`SlotMemory.pack`). Unpickled in the process that made its :class:`CollateSlots`
    (the DataLoader's main process), it becomes the plain batch of tensors viewing (or copied
    from) the slot."""

    def __init__(self, key: str, batch: dict):
        super().__init__(batch)
        self.key = key

    def __reduce__(self):
        return _take_collate_batch, (self.key, dict(self))


def _take_collate_batch(key: str, batch: dict) -> dict:
    slots = _COLLATE_SLOTS.get(key)
    if slots is None or slots.owner != os.getpid():
        raise RuntimeError("a BatchCollate batch in shared slots can be unpickled only by the process that "
                           "made the BatchCollate (its DataLoader's main process), while it exists")
    return slots.take(batch)


class CollateSlots(SlotMemory):
    """``slot_count`` slots for the forked worker processes of any DataLoader whose ``collate_fn``
    holds them: a worker claims any free slot, marking it with its process id, under a lock. A slot
    claimed by a process that has ended (its batch was never delivered: the iterator was left
    early) is free again. Made in the main process (the :attr:`owner`), before the workers fork."""

    def __init__(self, slot_count: int, batch_size: int, size: int, extra_bytes: int = 0):
        super().__init__(slot_count, batch_size, size, header=1, extra_bytes=extra_bytes)  # header: [fallbacks]
        self.owner = os.getpid()
        self.key = uuid.uuid4().hex
        self._lock = multiprocessing.get_context("fork").Lock()
        _COLLATE_SLOTS[self.key] = self

    @property
    def fallbacks(self) -> int:
        """Batches sent in fresh shared memory because no slot was free (or they were larger)."""
        return self.state[0]

    def claim(self, worker: int, count: int) -> tuple[SlotRef, np.ndarray] | None:
        """A free slot for ``count`` images (any worker's: ``worker`` is not needed) and the array to
        write them into, or None when none is free or the batch is larger than a slot."""
        pid = os.getpid()
        with self._lock:
            if count <= self.shape[0]:
                for slot in range(self.slot_count):
                    state = self._slot_state(slot)
                    if state == 0 or (state > 0 and state != pid and not _process_alive(state)):
                        self._set_slot_state(slot, pid)
                        return SlotRef(slot, count), self._view(slot, count)
            self.state[0] += 1
        return None

    def pack(self, batch: dict) -> dict:
        """Worker process: the batch packed into its slot (:meth:`SlotMemory.pack`), as the
        :class:`SlotBatch` that unpickles as its tensors in the main process."""
        packed = super().pack(batch)
        return SlotBatch(self.key, packed) if isinstance(packed.get("image"), SlotRef) else packed


__all__ = ["ImageSlots", "CollateSlots", "SlotRef", "InSlot", "SlotBatch", "SlotMemory", "VIEW_FROM", "room_for"]

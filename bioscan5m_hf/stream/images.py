"""Where a batch's images are decoded on the CPU, and into which memory.

:class:`WorkerImages` decodes in the worker that makes the batch, straight into the batch's memory:
one of that worker process's shared slots (:mod:`.slots`) when one is free, else fresh memory
(shared when in a DataLoader worker, as ``default_collate`` makes it); in the main process, a
:class:`BatchBuffers` buffer. Memory is reused only under explicit ownership: a finalizer per batch
handed out, which runs once no tensor or view of the batch is left. The pixels are those of
:func:`~bioscan5m_hf.transforms.decode_image` (the centre crop) or of
:func:`~bioscan5m_hf.transforms.decode_crop` (an augmented crop), the same functions.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..transforms import crop_params, decode_crop, decode_image, decode_image_into, sample_rng
from .outputs import IMAGE_ERRORS, image_error
from .slots import CollateSlots, ImageSlots, SlotRef


def new_batch(count: int, height: int, width: int) -> torch.Tensor:
    """An empty ``count x height x width x 3`` uint8 batch: in shared memory when in a DataLoader
    worker process (as ``default_collate`` does), so it is not copied again to reach the main
    process."""
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(count * height * width * 3)
        return torch.empty(0, dtype=torch.uint8).set_(storage).view(count, height, width, 3)
    return torch.empty((count, height, width, 3), dtype=torch.uint8)


class BatchBuffers:
    """Batch memory of this process (no workers), reused once nothing refers to a batch: fresh memory
    per batch would cost its page faults again (about as much as decoding the batch; BENCHMARKS.md,
    history). Ownership is explicit: each batch is handed out as a new array over a free buffer, with
    a finalizer of that array, which every tensor and view made from it refers to; the buffer is free
    again once the finalizer runs. A consumer keeping batches just gets new buffers. Thread-safe."""

    KEEP = 4

    def __init__(self):
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __getstate__(self):  # a copy elsewhere starts with none
        return {}

    def __setstate__(self, state):
        self.__init__()

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        """A ``shape`` uint8 array over a buffer no batch handed out refers to any more."""
        nbytes = int(np.prod(shape))
        with self._lock:
            k = next((k for k, b in enumerate(self._free) if b.nbytes == nbytes), None)
            buffer = self._free.pop(k) if k is not None else None
        if buffer is None:
            buffer = np.empty(nbytes, dtype=np.uint8)
        array = np.ndarray(shape, dtype=np.uint8, buffer=buffer)
        weakref.finalize(array, self._release, buffer)
        return array

    def _release(self, buffer: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self.KEEP:
                self._free.append(buffer)


def stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 images -> one ``B x 3 x H x W`` tensor in channels-last memory format (plain copies,
    no transposition) in :func:`new_batch` memory."""
    h, w, _ = images[0].shape
    out = new_batch(len(images), h, w)
    view = out.numpy()  # the same memory
    for i, image in enumerate(images):
        view[i] = image
    return out.permute(0, 3, 1, 2)


class WorkerImages:
    """``decode="workers"``: a worker's image batches, written where the main process reads them
    without another copy. In a worker process with ``slots``, into a free slot of the worker's own,
    sending on only the slot's :class:`~bioscan5m_hf.stream.slots.SlotRef` (when all its slots are
    in use, into :func:`new_batch` shared memory), and with :meth:`pack` the batch's other tensors
    after them; in the main process (no workers, or thread workers) into a :class:`BatchBuffers` buffer.

    :meth:`decode` writes each of a batch's images straight into that memory (through the
    decoding thread's reused buffer: no array per image); :meth:`stack` copies images decoded one
    by one."""

    def __init__(self, image_size: int, augment: bool = False, seed: int = 0,
                 slots: ImageSlots | CollateSlots | None = None):
        self.image_size, self.augment, self.seed, self.slots = image_size, augment, seed, slots
        self.buffers = BatchBuffers()

    def __getstate__(self):  # a copy in another process has no slots to write into: fresh memory there
        return {**self.__dict__, "slots": None}

    def write(self, count: int, fill: Callable[[np.ndarray], None]) -> torch.Tensor | SlotRef:
        """A batch of ``count`` images that ``fill(out)`` writes into ``out`` (``count x S x S x 3``):
        the slot's reference, or the ``count x 3 x S x S`` channels-last tensor."""
        info = torch.utils.data.get_worker_info()
        claimed = self.slots.claim(info.id, count) if self.slots is not None and info is not None else None
        if claimed is None:
            size = self.image_size
            out = (new_batch(count, size, size) if info is not None  # a worker process: shared memory
                   else torch.from_numpy(self.buffers.get((count, size, size, 3))))
            fill(out.numpy())
            return out.permute(0, 3, 1, 2)
        ref, view = claimed
        try:
            fill(view)
        except BaseException:
            self.slots.release_claim(ref)
            raise
        return ref

    def pack(self, batch: dict) -> dict:
        """A worker's finished batch: with its images in a slot, its other tensors go into that slot
        too (:meth:`~bioscan5m_hf.stream.slots.SlotMemory.pack`)."""
        return self.slots.pack(batch) if self.slots is not None else batch

    def stack(self, images: list[np.ndarray]) -> torch.Tensor | SlotRef:
        """Images already decoded (``S x S x 3`` each) as one batch."""
        def fill(out: np.ndarray) -> None:
            for i, image in enumerate(images):
                out[i] = image

        return self.write(len(images), fill)

    def crop_params(self, data: bytes, processid: str, epoch: int) -> np.ndarray:
        """The record's crop (:func:`~bioscan5m_hf.transforms.crop_params`): with ``augment`` drawn
        from the seed, the epoch and the record, otherwise the whole image."""
        rng = sample_rng(self.seed, epoch, processid) if self.augment else None
        return crop_params(data, self.image_size, self.augment, rng)

    def decode_one(self, data: bytes, processid: str, epoch: int, shard: str) -> np.ndarray:
        """One record's image as ``S x S x 3`` uint8 (the centre crop, or the augmented crop); an
        image that does not decode raises :class:`~.outputs.DamagedImage` naming ``shard``."""
        try:
            if self.augment:
                return decode_crop(data, self.crop_params(data, processid, epoch), self.image_size)
            return decode_image(data, self.image_size, channels_last=True)
        except IMAGE_ERRORS as e:
            raise image_error(shard, processid, e) from None

    def decode(self, jpegs: Sequence[bytes], processids: Sequence[str], epoch: int,
               shard_of: Callable[[int], str]) -> torch.Tensor | SlotRef:
        """A batch's JPEGs decoded into one batch: the centre crop, or with ``augment`` the random
        resized crop drawn from the seed, the epoch and the record. An image that does not decode
        raises :class:`~bioscan5m_hf.errors.ShardError` naming ``shard_of(i)`` and the member."""
        size = self.image_size

        def fill(out: np.ndarray) -> None:
            for i, data in enumerate(jpegs):
                try:
                    if self.augment:
                        out[i] = decode_crop(data, self.crop_params(data, processids[i], epoch), size)
                    else:
                        decode_image_into(data, size, out[i])
                except IMAGE_ERRORS as e:
                    raise image_error(shard_of(i), processids[i], e) from None

        return self.write(len(jpegs), fill)


__all__ = ["WorkerImages", "new_batch", "stack_images"]

"""Where a batch's images are decoded, and into which memory.

- :class:`WorkerImages` (``decode="workers"``): in the worker that made the batch, straight into
  the batch's memory: one of that worker process's shared slots (:mod:`.slots`) when one is free,
  else fresh memory (shared when in a DataLoader worker, as ``default_collate`` makes it).
- :class:`ThreadDecoder` (``decode="threads"``): in the main process, by a pool of threads, from
  the JPEG bytes the workers ship.

Either way the pixels are those of :func:`~bioscan5m_hf.transforms.decode_image` (the centre crop)
or of :func:`~bioscan5m_hf.transforms.decode_crop` (an augmented crop), the same functions.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ShardError
from ..transforms import crop_params, decode_crop, decode_image_into, sample_rng
from .records import IMAGE_ERRORS, image_error
from .slots import CollateSlots, ImageSlots, SlotRef


def new_batch(count: int, height: int, width: int) -> torch.Tensor:
    """An empty ``count x height x width x 3`` uint8 batch: in shared memory when in a DataLoader
    worker process (as ``default_collate`` does), so it is not copied again to reach the main
    process."""
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(count * height * width * 3)
        return torch.empty(0, dtype=torch.uint8).set_(storage).view(count, height, width, 3)
    return torch.empty((count, height, width, 3), dtype=torch.uint8)


class SpareBuffers:
    """uint8 batch buffers of this process, reused once no batch handed out refers to them (their
    only references are ours): a fresh 50 MB buffer per batch would cost its page faults again, as
    much as decoding the batch on 2 cores. A consumer keeping batches gets fresh buffers. Safe to
    share among threads."""

    KEEP = 4

    def __init__(self):
        self._arrays: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __getstate__(self):  # a copy elsewhere starts with none
        return {}

    def __setstate__(self, state):
        self.__init__()

    def get(self, shape: tuple[int, ...]) -> torch.Tensor:
        with self._lock:
            for array in self._arrays:
                if array.shape == shape and sys.getrefcount(array) <= 3:  # the list, `array`, the call's argument
                    return torch.from_numpy(array)
            array = np.empty(shape, dtype=np.uint8)
            if len(self._arrays) < self.KEEP:
                self._arrays.append(array)
            return torch.from_numpy(array)


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
    after them; in the main process (thread workers, or none) into a :class:`SpareBuffers` buffer.

    :meth:`decode` writes each of a batch's images straight into that memory (through the
    decoding thread's reused buffer: no array per image); :meth:`stack` copies images decoded one
    by one."""

    def __init__(self, image_size: int, augment: bool = False, seed: int = 0,
                 slots: ImageSlots | CollateSlots | None = None):
        self.image_size, self.augment, self.seed, self.slots = image_size, augment, seed, slots
        self.spare = SpareBuffers()

    def __getstate__(self):  # a copy in another process has no slots to write into: fresh memory there
        return {**self.__dict__, "slots": None}

    def write(self, count: int, fill: Callable[[np.ndarray], None]) -> torch.Tensor | SlotRef:
        """A batch of ``count`` images that ``fill(out)`` writes into ``out`` (``count x S x S x 3``):
        the slot's reference, or the ``count x 3 x S x S`` channels-last tensor."""
        info = torch.utils.data.get_worker_info()
        claimed = self.slots.claim(info.id, count) if self.slots is not None and info is not None else None
        if claimed is None:
            size = self.image_size
            out = new_batch(count, size, size) if info is not None else self.spare.get((count, size, size, 3))
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


class ThreadDecoder:
    """``decode="threads"``: a batch's JPEGs decoded in the main process by a pool of threads, straight
    into one preallocated batch tensor (pinned for CUDA), so no pixel crosses a process boundary: the
    workers ship ~8 KB of JPEG per image instead of 196 KB of pixels. libjpeg-turbo and the resize
    release the GIL, so the threads use every core. Pixels are exactly those of ``decode="workers"``
    (the same functions decode them)."""

    def __init__(self, image_size: int, threads: int | None = None, pin: bool = False):
        self.image_size, self.pin = image_size, pin
        self.threads = threads or os.cpu_count() or 1
        self._pool = None
        self.spare = SpareBuffers()

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}

    def _buffer(self, n: int) -> torch.Tensor:
        """An ``n x size x size x 3`` uint8 batch: pinned (torch caches those) or a spare buffer."""
        shape = (n, self.image_size, self.image_size, 3)
        if self.pin:
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        return self.spare.get(shape)

    def submit(self, jpeg: torch.Tensor, offsets: torch.Tensor, crop: torch.Tensor | None,
               processids: Sequence[str]) -> Callable[[], torch.Tensor]:
        """Start decoding a batch; the returned function waits for it and gives ``B x 3 x S x S``
        uint8 (channels-last). Batches submitted one after another are decoded in that order."""
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bioscan5m-decode")
        data, ends, size = jpeg.numpy(), offsets.tolist(), self.image_size
        params = crop.tolist() if crop is not None else None
        out = self._buffer(len(processids))
        view = out.numpy()

        def part(first: int, stop: int) -> None:  # a slice of the batch per task: little dispatch overhead
            for i in range(first, stop):
                blob = data[ends[i]: ends[i + 1]].tobytes()
                try:
                    if params is None:
                        decode_image_into(blob, size, view[i])
                    else:
                        view[i] = decode_crop(blob, params[i], size)
                except IMAGE_ERRORS as e:
                    raise ShardError(f"record {processids[i]}: image does not decode ({e})") from None

        n = len(processids)
        step = -(-n // (4 * self.threads))  # four slices per thread: even when images differ in cost
        futures = [self._pool.submit(part, a, min(n, a + step)) for a in range(0, n, step)]

        def result() -> torch.Tensor:
            for future in futures:
                future.result()
            return out.permute(0, 3, 1, 2)

        return result

    def __call__(self, jpeg: torch.Tensor, offsets: torch.Tensor, crop: torch.Tensor | None,
                 processids: Sequence[str]) -> torch.Tensor:
        return self.submit(jpeg, offsets, crop, processids)()


__all__ = ["WorkerImages", "ThreadDecoder", "new_batch", "stack_images"]

"""Decoding with NVIDIA DALI (``make_loader(..., decode="dali")``).

The workers ship JPEG bytes and crop boxes exactly as for ``decode="device"`` (:mod:`.device`); here
one DALI pipeline fed by ``fn.external_source`` decodes them (``fn.decoders.image``: ``"mixed"``,
nvJPEG with the GPU's hardware JPEG engines, for a CUDA device; ``"cpu"`` otherwise), then crops,
resizes (``fn.resize`` over the crop box as its region of interest, linear, antialiased) and flips
(``fn.flip``), per image, into the batch. The boxes are the device path's
(:func:`~bioscan5m_hf.stream.device.crop_boxes`), so the three decoders show the same part of each
image; pixel values differ by the decoder's IDCT and the resampler: the tests bound the
difference against the CPU workers. On CUDA the batch is returned on the loader's copy stream
without waiting for the host, so DALI decodes the next batch while the model runs on this one.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from ..errors import ShardError
from .device import crop_boxes
from .outputs import IMAGE_ERRORS

DALI_EXTRA = "pip install 'bioscan5m-hf[dali]' (NVIDIA DALI, Linux x86-64)"


def require_dali():
    """``nvidia.dali``, or an error naming the extra that provides it."""
    try:
        import nvidia.dali
        import nvidia.dali.fn  # noqa: F401
    except (ImportError, RuntimeError, OSError) as e:
        raise ImportError(f"decode='dali' needs NVIDIA DALI: {DALI_EXTRA} ({type(e).__name__}: {e})") from None
    return nvidia.dali


class DaliDecoder:
    """One DALI pipeline for a loader's batches (built at the first batch, in the process that
    decodes: never in a worker)."""

    def __init__(self, size: int, batch_size: int, device: torch.device):
        require_dali()
        self.size, self.batch_size, self.device = size, batch_size, device
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        cuda = self.device.type == "cuda"

        # prefetch_queue_depth=1: each batch is fed as it arrives (the loader keeps one batch ahead).
        # Threads: the CPU part of decoding (Huffman for what the hardware engines do not take).
        @pipeline_def(batch_size=self.batch_size, num_threads=max(1, min(4, os.cpu_count() or 1)),
                      device_id=(self.device.index or 0) if cuda else None, prefetch_queue_depth=1, seed=0)
        def pipeline():
            jpegs = fn.external_source(name="jpeg", dtype=types.UINT8, ndim=1)
            start = fn.external_source(name="start", dtype=types.FLOAT, ndim=1)
            end = fn.external_source(name="end", dtype=types.FLOAT, ndim=1)
            flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
            # As the CPU decoder (Pillow/libjpeg): no EXIF rotation, smooth chroma upsampling.
            images = fn.decoders.image(jpegs, device="mixed" if cuda else "cpu", output_type=types.RGB,
                                       adjust_orientation=False, jpeg_fancy_upsampling=True)
            images = fn.resize(images, size=[self.size, self.size], roi_start=start, roi_end=end,
                               interp_type=types.INTERP_LINEAR, antialias=True)
            return fn.flip(images, horizontal=flip)

        pipe = pipeline()
        pipe.build()
        return pipe

    def __call__(self, data: torch.Tensor, offsets: torch.Tensor, params: torch.Tensor,
                 processids: list[str]) -> torch.Tensor:
        """Packed JPEGs (:func:`~bioscan5m_hf.stream.device.pack`) and their crop parameters ->
        ``B x 3 x size x size`` uint8 on the device, channels-last, in batch order. An image that does
        not decode raises :class:`~bioscan5m_hf.errors.ShardError` naming it."""
        if self._pipe is None:
            self._pipe = self._build()
        raw, cut = data.cpu().numpy(), offsets.tolist()
        blobs = [raw[cut[i]: cut[i + 1]] for i in range(len(cut) - 1)]
        boxes = crop_boxes(params.tolist())  # (top, left, h, w, flip)
        start = [np.array([top, left], dtype=np.float32) for top, left, _, _, _ in boxes]  # HW, as the layout
        end = [np.array([top + h, left + w], dtype=np.float32) for top, left, h, w, _ in boxes]
        flip = [np.array(f, dtype=np.int32) for *_, f in boxes]
        cuda = self.device.type == "cuda"
        stream = torch.cuda.current_stream(self.device) if cuda else None
        try:
            (images,) = self._pipe.run(stream, jpeg=blobs, start=start, end=end, flip=flip)
        except RuntimeError as e:
            raise _damaged(blobs, processids, e) from None
        out = torch.empty((len(blobs), self.size, self.size, 3), dtype=torch.uint8, device=self.device)
        if cuda:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            feed_ndarray(images.as_tensor(), out, cuda_stream=stream)
        else:
            out.copy_(torch.from_numpy(images.as_array()))
        return out.permute(0, 3, 1, 2)  # NCHW with channels-last strides, as the other decoders


def _damaged(blobs: list[np.ndarray], processids: list[str], error: Exception) -> ShardError:
    """DALI fails a whole batch: name the first image Pillow cannot decode either (else DALI's error)."""
    from PIL import Image

    for pid, blob in zip(processids, blobs):
        try:
            with Image.open(io.BytesIO(blob.tobytes())) as im:
                im.load()
        except IMAGE_ERRORS as e:
            return ShardError(f"{pid}.jpg does not decode with DALI ({type(e).__name__}: {e})")
    return ShardError(f"DALI could not decode a batch of {len(blobs)} images ({processids[0]}, ...): {error}")

"""Decoding on the loader's device (``make_loader(..., decode="device")``).

The workers ship each batch's JPEG bytes undecoded (one byte tensor plus offsets: about 8 KB per
``cropped_256`` image instead of 196 KB of pixels) with each image's crop box and flip; the main
process decodes the whole batch with ``torchvision.io.decode_jpeg`` on the device (nvJPEG on CUDA,
batched; libjpeg on the CPU), crops, resizes (bilinear, antialiased) and flips there. The geometry
is the workers' (:func:`~bioscan5m_hf.transforms.crop_params`; the centre crop within half a source
pixel), so both paths show the same part of each image; pixel values differ slightly (another IDCT,
chroma upsampling and resampler): the tests bound the difference, BENCHMARKS.md reports it.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..errors import ShardError
from ..transforms import SHORTER_SIDE, centre_box

GPU_EXTRA = "pip install 'bioscan5m-hf[gpu]' (torchvision built for your torch)"


def require_torchvision():
    """``torchvision.io``, or an error naming the extra that provides it."""
    try:
        import torchvision.io
    except (ImportError, RuntimeError, OSError) as e:  # missing, or built for another torch
        raise ImportError(f"decode='device' needs torchvision: {GPU_EXTRA} ({type(e).__name__}: {e})") from None
    return torchvision.io


def has_torchvision() -> bool:
    """Whether :func:`require_torchvision` would succeed (``decode="auto"`` asks before choosing)."""
    try:
        require_torchvision()
    except ImportError:
        return False
    return True


def pack(blobs: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG byte strings -> (one uint8 tensor of all bytes, int64 offsets of length ``len(blobs) + 1``)."""
    offsets = torch.zeros(len(blobs) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor([len(b) for b in blobs], dtype=torch.int64).cumsum(0)
    data = torch.frombuffer(bytearray().join(blobs), dtype=torch.uint8)  # one copy (not a bytes, then a bytearray)
    return data, offsets


def decode_batch(data: torch.Tensor, offsets: torch.Tensor, params: torch.Tensor, size: int,
                 device: torch.device, processids: list[str] | None = None) -> torch.Tensor:
    """Packed JPEGs (see :func:`pack`) and their crop parameters (rows of
    :func:`~bioscan5m_hf.transforms.crop_params`) -> ``B x 3 x size x size`` uint8 on ``device``,
    channels-last, in batch order. An image that does not decode raises
    :class:`~bioscan5m_hf.errors.ShardError` naming its ``processid``."""
    io = require_torchvision()
    data, offsets, params = data.cpu(), offsets.tolist(), params.tolist()
    blobs = [data[offsets[i]: offsets[i + 1]] for i in range(len(params))]
    try:
        images = io.decode_jpeg(blobs, mode=io.ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = [_decode_one(io, blob, device, (processids or [])[i:i + 1]) for i, blob in enumerate(blobs)]
    out = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8, device=device,
                      memory_format=torch.channels_last)
    params = crop_boxes(params)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)  # same window size: one resize call
    for i, (_, _, h, w, _) in enumerate(params):
        groups[h, w].append(i)
    for (h, w), members in groups.items():
        crops = torch.stack([images[i][:, p[0]: p[0] + h, p[1]: p[1] + w] for i, p in
                             ((i, params[i]) for i in members)])
        if (h, w) != (size, size):
            crops = torch.nn.functional.interpolate(crops.float(), size=(size, size), mode="bilinear",
                                                    antialias=True, align_corners=False)
            crops = crops.round_().clamp_(0, 255).to(torch.uint8)
        flips = [k for k, i in enumerate(members) if params[i][4]]
        if flips:
            crops[flips] = crops[flips].flip(-1)
        out[members] = crops
    return out


def crop_boxes(params: list[list[int]]) -> list[list[int]]:
    """Rows of :func:`~bioscan5m_hf.transforms.crop_params` -> ``[top, left, height, width, flip]``
    boxes in the source image. The centre crop is one square window per image (the shorter side,
    centred): images of one shape then share a window size, so a batch of cropped_256 images is
    one resize call. It is within half a source pixel of decode_image's resize-then-crop grid."""
    return [[*centre_box(w, h), flip] if mode == SHORTER_SIDE else [top, left, h, w, flip]
            for top, left, h, w, flip, mode in params]


def _decode_one(io, blob: torch.Tensor, device: torch.device, processid: list[str]) -> torch.Tensor:
    try:
        return io.decode_jpeg(blob, mode=io.ImageReadMode.RGB, device=device)
    except RuntimeError as e:
        name = f"{processid[0]}.jpg" if processid else "an image"
        raise ShardError(f"{name} does not decode on {device} ({e})") from None

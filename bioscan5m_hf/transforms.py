"""Turning records into tensors: JPEG -> fixed-size uint8 image, barcode -> k-mer token ids."""

from __future__ import annotations

import io
import math
import threading
import zlib
from collections.abc import Sequence
from itertools import product

import numpy as np
from PIL import Image

from . import schema

try:  # optional: a faster libjpeg-turbo binding (pip install bioscan5m-hf[fast])
    import simplejpeg
except ImportError:  # pragma: no cover - Pillow does the same, slower
    simplejpeg = None

#: Special token ids of the BarcodeBERT vocabulary; k-mers over ACGT follow in lexicographic order.
MASK_ID = 0
UNK_ID = 1
FIRST_KMER_ID = 2
DEFAULT_MAX_NUCLEOTIDES = 660
#: simplejpeg's decode settings, Pillow's defaults: accurate DCT and fancy upsampling, RGB out.
SIMPLEJPEG_OPTIONS = dict(colorspace="RGB", fastdct=False, fastupsample=False)
#: Refuse images larger than this before decoding them (decompression bombs); the largest package,
#: original_full, is 1024 x 768 = 0.8 Mpx.
MAX_IMAGE_PIXELS = 64_000_000


def check_image_size(img: Image.Image) -> None:
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"image is {w} x {h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit")


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``size`` (the longer side rounded).

    >>> shorter_side_size(400, 300, 256)
    (256, 341)
    """
    scale = size / min(width, height)
    return max(size, round(height * scale)), max(size, round(width * scale))


def decode_image(data: bytes | Image.Image, size: int, channels_last: bool = False) -> np.ndarray:
    """JPEG bytes (or a lazily opened PIL image) -> ``3 x size x size`` uint8 (``size x size x 3``
    with ``channels_last``): shorter side resized to ``size``, then centre-cropped.

    JPEG's DCT scaling (Pillow's ``draft``) decodes large images straight at a reduced size when
    that still leaves both sides at least ``size``, which is exact up to the resize that follows and
    much faster for ``original_full``.
    """
    hwc = _decode_view(data, size)
    return np.ascontiguousarray(hwc) if channels_last else np.ascontiguousarray(hwc.transpose(2, 0, 1))


def decode_image_into(data: bytes | Image.Image, size: int, out: np.ndarray) -> None:
    """:func:`decode_image`'s channels-last pixels written into ``out`` (``size x size x 3`` uint8:
    an image's place in a batch).

    A JPEG that needs no resize (its shorter side already ``size``, as in the ``cropped_256``
    package) is decoded into a buffer this thread reuses image after image, which stays in the
    core's cache, and only its centre crop is copied into ``out``. Decoded in place in the batch, the
    whole image would be written to memory out of the caches, and with two processes decoding that
    costs about 3% more (BENCHMARKS.md). Any other image takes :func:`decode_image`'s way.
    """
    np.copyto(out, _decode_view(data, size, reuse=True))


#: The largest image decoded into a thread's reused buffer (4 MiB: 256 x 5,461 px); larger ones get
#: a buffer of their own.
REUSED_BUFFER_BYTES = 1 << 22
_reused = threading.local()


def _reused_buffer(nbytes: int) -> np.ndarray:
    """``nbytes`` of this thread's reused decode buffer (grown as needed, up to
    ``REUSED_BUFFER_BYTES``). What is decoded there is overwritten by the thread's next decode."""
    buffer = getattr(_reused, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _reused.buffer = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
    return buffer[:nbytes]


def _decode_view(data: bytes | Image.Image, size: int, reuse: bool = False) -> np.ndarray:
    """The ``size x size x 3`` crop, possibly a view into a larger decoded array (with ``reuse``,
    possibly one in this thread's reused buffer, to be copied before its next decode)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if simplejpeg is not None:
            return _decode_simplejpeg(bytes(data), size, reuse)
        img = Image.open(io.BytesIO(data))
    else:
        img = data
    check_image_size(img)
    img.draft("RGB", (size, size))
    img = img.convert("RGB")
    w, h = img.size
    new = shorter_side_size(w, h, size)[::-1]
    if new != (w, h):
        img = img.resize(new, Image.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img)


def _decode_simplejpeg(data: bytes, size: int, reuse: bool = False) -> np.ndarray:
    """The same as Pillow's path, with libjpeg-turbo through simplejpeg (optional, about 2x faster):
    accurate DCT and fancy upsampling as Pillow's defaults, DCT-scaled decoding when downsizing.
    With ``reuse``, an image that needs no resize is decoded into this thread's reused buffer."""
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # not a JPEG simplejpeg can read: let Pillow try, and name the problem
        return _decode_view(Image.open(io.BytesIO(data)), size)
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"image is {w} x {h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit")
    # Pillow's draft: the largest reduction of 1, 2, 4 or 8 leaving both sides >= size (simplejpeg
    # would also use libjpeg's other M/8 factors, which round differently).
    ratio = min(w // size, h // size)
    scale = next(s for s in (8, 4, 2, 1) if ratio >= s or s == 1)
    reused = reuse and min(h, w) == size and h * w * 3 <= REUSED_BUFFER_BYTES
    arr = simplejpeg.decode_jpeg(data, **SIMPLEJPEG_OPTIONS, min_height=-(-h // scale), min_width=-(-w // scale),
                                 buffer=_reused_buffer(h * w * 3) if reused else None)
    h, w = arr.shape[:2]
    new = shorter_side_size(w, h, size)[::-1]
    if new != (w, h):
        arr = np.asarray(Image.fromarray(arr).resize(new, Image.BILINEAR))
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return arr[top: top + size, left: left + size]


# --------------------------------------------------------------------------------------------------
# Crops: one geometry for the workers' decoder and the device decoder


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's header, without decoding it."""
    if simplejpeg is not None:
        try:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
            return w, h
        except ValueError:
            pass
    return Image.open(io.BytesIO(data)).size


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred square of side ``min(width, height)``.

    >>> centre_box(300, 200)
    (0, 50, 200, 200)
    """
    side = min(width, height)
    return (height - side) // 2, (width - side) // 2, side, side


def sample_rng(seed: int, epoch: int, processid: str, stream: int = 0) -> np.random.Generator:
    """The random numbers of one sample's augmentation: a function of the seed, the epoch and the
    record alone, so a resumed run (any workers, any order) draws the same crops (``stream`` tells
    independent uses apart: 0 crops, 1 DNA masking)."""
    return np.random.default_rng([seed, epoch, zlib.crc32(processid.encode("utf-8"))] + ([stream] if stream else []))


#: Targets of positions that are not predicted (PyTorch's ``cross_entropy`` default ``ignore_index``).
IGNORE_INDEX = -100


def mask_tokens(ids: np.ndarray, mask: np.ndarray, processids: Sequence[str], *, seed: int, epoch: int,
                ratio: float, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """BarcodeBERT-style masked-token pretraining inputs: of each sequence's real tokens (``mask`` 1),
    a ``ratio`` share (at least one) is chosen; a chosen token becomes ``MASK_ID`` (80%), a random
    k-mer (10%) or stays (10%). Returns the inputs and the labels (the original id where chosen,
    :data:`IGNORE_INDEX` elsewhere). Drawn per record from the seed and the epoch: a resumed run
    masks the same positions.

    >>> ids = np.array([[5, 6, 7, 8, 0]]); m = np.array([[1, 1, 1, 1, 0]])
    >>> x, y = mask_tokens(ids, m, ["A1"], seed=0, epoch=0, ratio=0.5, vocab_size=258)
    >>> int((y != IGNORE_INDEX).sum()), bool((y[0, 4] == IGNORE_INDEX))
    (2, True)
    """
    if not 0 < ratio < 1:
        raise ValueError(f"the DNA masking ratio must be in (0, 1), got {ratio}")
    inputs, labels = ids.copy(), np.full_like(ids, IGNORE_INDEX)
    for row, pid in enumerate(processids):
        real = np.flatnonzero(mask[row])
        if not len(real):
            continue
        rng = sample_rng(seed, epoch, pid, stream=1)
        chosen = np.sort(rng.choice(real, size=max(1, round(ratio * len(real))), replace=False))
        labels[row, chosen] = ids[row, chosen]
        action = rng.random(len(chosen))
        inputs[row, chosen[action < 0.8]] = MASK_ID
        swap = chosen[(action >= 0.8) & (action < 0.9)]
        inputs[row, swap] = rng.integers(FIRST_KMER_ID, vocab_size, size=len(swap))
    return inputs, labels


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering ``scale`` of the area with an aspect
    ratio in ``ratio`` (log-uniform), as torchvision's ``RandomResizedCrop``: ten tries, then the
    largest centred crop within ``ratio``.

    >>> box = random_resized_crop_box(400, 300, np.random.default_rng(0))
    >>> all(0 <= v for v in box) and box[0] + box[2] <= 300 and box[1] + box[3] <= 400
    True
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


#: The last of the crop parameters: how the box becomes ``size x size``.
SHORTER_SIDE, STRETCH = 0, 1


def crop_params(data: bytes, size: int, augment: bool, rng: np.random.Generator | None) -> np.ndarray:
    """``[top, left, height, width, flip, mode]`` for one image. Without ``augment``: the whole image,
    mode :data:`SHORTER_SIDE` (shorter side resized to ``size``, then the centre crop, as
    :func:`decode_image`). With ``augment``: a random resized crop, mode :data:`STRETCH` (the box
    resized to ``size x size``), and a horizontal flip with probability one half."""
    w, h = jpeg_size(data)
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"image is {w} x {h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit")
    if not augment:
        return np.array([0, 0, h, w, 0, SHORTER_SIDE], dtype=np.int64)
    box = random_resized_crop_box(w, h, rng)
    return np.array([*box, int(rng.random() < 0.5), STRETCH], dtype=np.int64)


def decode_crop(data: bytes, params: Sequence[int], size: int) -> np.ndarray:
    """JPEG bytes -> ``size x size x 3`` uint8 by :func:`crop_params`: the box (top, left, height,
    width) resized (bilinear, antialiased), flipped horizontally if asked. JPEG's DCT scaling decodes
    at the smallest scale that keeps the box at least ``size`` pixels on each side."""
    top, left, h, w, flip, mode = (int(v) for v in params)
    if mode == SHORTER_SIDE:
        hwc = decode_image(data, size, channels_last=True)
        return np.ascontiguousarray(hwc[:, ::-1]) if flip else hwc
    img = Image.open(io.BytesIO(data))
    check_image_size(img)
    full_w, full_h = img.size
    img.draft("RGB", (max(1, math.ceil(full_w * size / w)), max(1, math.ceil(full_h * size / h))))
    fx, fy = img.size[0] / full_w, img.size[1] / full_h
    box = (left * fx, top * fy, min(img.size[0], (left + w) * fx), min(img.size[1], (top + h) * fy))
    img = img.convert("RGB").resize((size, size), Image.BILINEAR, box=box)
    hwc = np.asarray(img)
    return np.ascontiguousarray(hwc[:, ::-1]) if flip else hwc


def normalize(images, mean: Sequence[float] = schema.RGB_MEAN, std: Sequence[float] = schema.RGB_STD):
    """uint8 ``B x 3 x H x W`` tensor -> float32, scaled to [0, 1] and normalised with the dataset's
    RGB mean and std (do it on the GPU, after the 4x smaller uint8 copy)."""
    import torch

    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean_t).div_(std_t)


class KmerTokenizer:
    """Vectorised BarcodeBERT tokenizer: non-overlapping k-mers of a barcode padded with ``N``.

    Sequences are truncated or right-padded with ``N`` to ``max_len`` nucleotides, cut into
    ``max_len // k`` k-mers; a k-mer of A/C/G/T only gets its lexicographic id (from
    ``FIRST_KMER_ID``), any other (N, IUPAC codes, gaps) is ``UNK_ID``. The attention mask is 1 for
    the ``len(seq) // k`` k-mers of real sequence.

    >>> tok = KmerTokenizer(k=2, max_len=6)
    >>> ids, mask = tok(["ACGTA", "AN"])
    >>> ids.tolist(), mask.tolist()
    ([[3, 13, 1], [1, 1, 1]], [[1, 1, 0], [1, 0, 0]])
    """

    def __init__(self, k: int = 4, max_len: int = DEFAULT_MAX_NUCLEOTIDES):
        if k < 1 or max_len < k:
            raise ValueError(f"need 1 <= k <= max_len, got k={k}, max_len={max_len}")
        self.k, self.max_len = k, max_len
        self.num_tokens = max_len // k
        self.lut = np.full(256, -1, dtype=np.int32)
        for code, base in enumerate("ACGT"):
            self.lut[ord(base)] = self.lut[ord(base.lower())] = code
        self.lut8 = np.where(self.lut < 0, 255, self.lut).astype(np.uint8)
        if k % 2 == 0:  # two bases at a time: code of a little-endian byte pair, 4 ** k if either is not ACGT
            pair = np.arange(1 << 16)
            low, high = self.lut[pair & 0xFF], self.lut[pair >> 8]
            self.lut16 = np.where((low < 0) | (high < 0), 4 ** k, low * 4 + high).astype(np.int32)

    @property
    def vocab_size(self) -> int:
        return FIRST_KMER_ID + 4 ** self.k

    def vocabulary(self) -> list[str]:
        return ["<MASK>", "<UNK>"] + ["".join(p) for p in product("ACGT", repeat=self.k)]

    def encode_matrix(self, padded: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask from an ``n x (max_len // k * k)`` uint8 matrix of N-padded bases and
        the sequences' true lengths."""
        n = len(padded)
        mask = (np.arange(self.num_tokens) < (np.minimum(lengths, self.max_len) // self.k)[:, None]).astype(np.int64)
        if self.k % 2 == 0:  # a k-mer is k/2 byte pairs, looked up at once; any non-ACGT pair pushes it >= 4**k
            pairs = self.lut16[np.ascontiguousarray(padded).view("<u2")].reshape(n, self.num_tokens, self.k // 2)
            raw = pairs[:, :, 0].copy()
            for j in range(1, self.k // 2):
                raw *= 16
                raw += pairs[:, :, j]
            ids = np.where(raw < 4 ** self.k, raw + FIRST_KMER_ID, UNK_ID).astype(np.int64)
            return ids, mask
        codes = self.lut8[padded].reshape(n, self.num_tokens, self.k)  # 0-3, or 255 for anything else
        ids = np.zeros((n, self.num_tokens), dtype=np.int64)
        for j in range(self.k):  # base-4 number of the k-mer (wrong where a code is 255: see below)
            ids <<= 2
            ids += codes[:, :, j]
        ids += FIRST_KMER_ID
        ids[codes.max(axis=-1) > 3] = UNK_ID
        return ids, mask

    def pad(self, sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`encode_matrix` reads: the sequences cut or ``N``-padded to whole k-mers as an
        ``n x (max_len // k * k)`` uint8 matrix (a non-ASCII character becomes ``?``), and their lengths."""
        n = len(sequences)
        width = self.num_tokens * self.k
        # One padded text, one array: no per-sequence numpy work.
        text = "".join(seq[:width].ljust(width, "N") for seq in sequences).encode("ascii", "replace")
        lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=n)
        return np.frombuffer(text, dtype=np.uint8).reshape(n, width), lengths

    def __call__(self, sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_matrix(*self.pad(sequences))

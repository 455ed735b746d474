"""What a re-upload costs on the Hub: files cut into content-defined chunks with the parameters of
Xet, the Hub's storage, and the share of a new version's bytes in chunks the old version lacks.

Xet cuts each file with a gear hash (``h = (h << 1) + GEAR[byte]``, 64-bit) where the top 16 bits
of ``h`` are zero, with chunks of 8 KiB at least, 128 KiB at most, 64 KiB on average; a chunk the
store holds is not uploaded again. ``hf_xet`` exposes no chunker of its own (``hash_files`` gives
only a file's hash), so this is that algorithm with a gear table of our own (seeded): the
boundaries differ from Xet's, their statistics do not. The hash over the last 64 bytes is computed
for every position at once by doubling the window six times (numpy, no per-byte loop).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

TARGET = 64 << 10
MIN_CHUNK = TARGET // 8
MAX_CHUNK = TARGET * 2
MASK = np.uint64(0xFFFF << 48)  # 16 bits: one position in 64 KiB matches
GEAR = np.random.default_rng(20_251_207).integers(0, 2**64, 256, dtype=np.uint64)
BLOCK = 16 << 20


def gear_hashes(data: np.ndarray) -> np.ndarray:
    """``h[i]``: the gear hash after byte ``i`` (over bytes ``i - 63 .. i``; older bytes are shifted out)."""
    h = GEAR[data]
    for step in (1, 2, 4, 8, 16, 32):
        older = np.zeros_like(h)
        older[step:] = h[:-step]
        h += older << np.uint64(step)
    return h


def candidates(data: bytes) -> np.ndarray:
    """Positions whose gear hash matches the mask (a chunk may end right after them)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    found = []
    for start in range(0, len(raw), BLOCK):
        lead = min(start, 63)  # the bytes before the block that its first hashes need
        h = gear_hashes(raw[start - lead: start + BLOCK])[lead:]
        found.append(np.flatnonzero((h & MASK) == 0) + start)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def chunk_ends(data: bytes) -> list[int]:
    """Where each chunk of ``data`` ends: at the first match at least ``MIN_CHUNK`` into it, else at
    ``MAX_CHUNK``, else at the end of the file.

    >>> ends = chunk_ends(np.random.default_rng(0).bytes(1 << 20))
    >>> ends[-1] == 1 << 20 and all(MIN_CHUNK <= b - a <= MAX_CHUNK for a, b in zip([0] + ends, ends[:-1]))
    True
    """
    ends, start, n = [], 0, len(data)
    matches = candidates(data)
    while start < n:
        k = int(np.searchsorted(matches, start + MIN_CHUNK - 1, side="left"))
        end = int(matches[k]) + 1 if k < len(matches) else n
        end = min(end, start + MAX_CHUNK, n)
        ends.append(end)
        start = end
    return ends


def chunks(data: bytes) -> dict[bytes, int]:
    """``{chunk hash: size}`` of a file's chunks."""
    out, start = {}, 0
    for end in chunk_ends(data):
        out[hashlib.blake2b(data[start:end], digest_size=16).digest()] = end - start
        start = end
    return out


def store(files: Iterable[Path]) -> dict[bytes, int]:
    """The chunks a store holds after uploading ``files``."""
    held: dict[bytes, int] = {}
    for path in files:
        held.update(chunks(Path(path).read_bytes()))
    return held


def new_share(old: Iterable[Path], new: Iterable[Path]) -> tuple[float, int, int, dict[Path, int]]:
    """The share of ``new``'s bytes in chunks a store holding ``old`` lacks (each new chunk counted
    once, for the first file of ``new`` that has it), with those bytes, ``new``'s total, and those
    bytes by file."""
    held = store(old)
    total, fresh, by_file = 0, {}, {}
    for path in new:
        data = Path(path).read_bytes()
        total += len(data)
        mine = {h: size for h, size in chunks(data).items() if h not in held and h not in fresh}
        fresh.update(mine)
        by_file[Path(path)] = sum(mine.values())
    added = sum(fresh.values())
    return added / max(1, total), added, total, by_file

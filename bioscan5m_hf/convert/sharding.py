"""Which record goes into which shard: pure functions, no I/O.

A split's records are put in a fixed pseudo-random order (a keyed hash of ``processid``, so the order
depends neither on the CSV's row order nor on the machine). A shard is a range of that hash: the
split's key space is halved until each half holds at least ``MIN_SHARD_RECORDS`` records per shard
for ``min_shards`` shards, and any range over the size limits is halved again. So a shard's records
depend on the records alone, never on how many there are: withdrawing or adding a record changes
only the shard its key falls in, and a re-published release re-uses every other shard byte for byte
(cheap on the Hub's content-addressed storage; BENCHMARKS.md, ``republish``). Any shard is a random
sample of its split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Default upper bound on a shard's size: Hub-friendly (100 MB to 1 GB at full scale) and many shards
#: per large split for parallel reading.
DEFAULT_SHARD_BYTES = 256 << 20
#: Shards a split gets at least, where it has ``MIN_SHARD_RECORDS`` records per shard to give: so
#: readers that parallelise by shard (``datasets`` streaming with DataLoader workers,
#: ``split_dataset_by_node``, webdataset) use up to this many workers x ranks on the small splits too.
DEFAULT_MIN_SHARDS = 16
MIN_SHARD_RECORDS = 64


def order_keys(processids: Sequence[str], seed: int) -> np.ndarray:
    """A 64-bit sort key per record: blake2b of ``processid`` keyed by ``seed``."""
    key = str(seed).encode()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8, key=key).digest(), "big") for p in processids),
        dtype=np.uint64, count=len(processids),
    )


def base_depth(num_records: int, min_shards: int = 1) -> int:
    """Halvings of the key space that give ``min_shards`` shards where ``MIN_SHARD_RECORDS`` records
    each allow (a power of two, not above that count).

    >>> base_depth(14_757, 16), base_depth(300, 16), base_depth(50, 16)
    (4, 2, 0)
    """
    return max(1, min(min_shards, num_records // MIN_SHARD_RECORDS)).bit_length() - 1


def shard_count(num_records: int, num_bytes: int, shard_bytes: int = DEFAULT_SHARD_BYTES,
                shard_records: int | None = None, min_shards: int = 1) -> int:
    """The shards :func:`key_ranges` makes of ``num_records`` records of equal size spread evenly over
    the key space (``convert --plan``'s estimate at full scale: real keys vary a little, so a few
    ranges near a limit may be halved once more): the key space halved from :func:`base_depth` on
    until a range is within ``shard_bytes`` and ``shard_records``.

    >>> shard_count(10, 1000, shard_bytes=300)
    4
    >>> shard_count(10, 1000, shard_bytes=10_000, shard_records=3)
    4
    >>> shard_count(14_757, 115_000_000, min_shards=16), shard_count(300, 2_400_000, min_shards=16)
    (16, 4)
    >>> shard_count(0, 0)
    0
    """
    if num_records <= 0:
        return 0
    if shard_bytes <= 0:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    if shard_records is not None and shard_records <= 0:
        raise ValueError(f"shard_records must be positive, got {shard_records}")
    count = 1 << base_depth(num_records, min_shards)
    while count < num_records and (num_bytes > count * shard_bytes or (
            shard_records is not None and num_records > count * shard_records)):
        count *= 2
    return min(count, num_records)


@dataclass(frozen=True)
class Shard:
    """One planned shard: the metadata rows it holds, in order."""

    config: str
    split: str
    index: int
    rows: np.ndarray
    num_bytes: int

    def __len__(self) -> int:
        return len(self.rows)


def key_ranges(keys: np.ndarray, record_bytes: np.ndarray, shard_bytes: int = DEFAULT_SHARD_BYTES,
               shard_records: int | None = None, min_shards: int = 1) -> list[tuple[int, int]]:
    """``[start, end)`` runs of ``keys`` (sorted ascending, uint64) that make the shards: the key
    ranges of :func:`base_depth`'s halvings, each halved again while it is over ``shard_bytes``
    (the sum of its ``record_bytes``) or ``shard_records`` and holds more than one record. Empty
    ranges make no shard. A range's records depend only on the keys inside it.

    >>> keys = np.sort(np.random.default_rng(0).integers(0, 2**64, 1000, dtype=np.uint64))
    >>> runs = key_ranges(keys, np.full(1000, 10), shard_bytes=3000)
    >>> len(runs), runs[0][0], runs[-1][1], max(b - a for a, b in runs) <= 300
    (4, 0, 1000, True)
    """
    if shard_bytes <= 0:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    if shard_records is not None and shard_records <= 0:
        raise ValueError(f"shard_records must be positive, got {shard_records}")
    n = len(keys)
    if n == 0:
        return []
    cumulative = np.concatenate([[0], np.cumsum(record_bytes, dtype=np.int64)])
    runs: list[tuple[int, int]] = []

    def visit(lo: int, depth: int, start: int, end: int) -> None:
        count = end - start
        if count == 0:
            return
        too_big = cumulative[end] - cumulative[start] > shard_bytes or (
            shard_records is not None and count > shard_records)
        if not too_big or count == 1 or depth == 64:
            runs.append((start, end))
            return
        half = 1 << (63 - depth)  # the upper half of this range starts at lo + half
        middle = start + int(np.searchsorted(keys[start:end], np.uint64(lo + half)))
        visit(lo, depth + 1, start, middle)
        visit(lo + half, depth + 1, middle, end)

    depth = base_depth(n, min_shards)
    width = 1 << (64 - depth)
    edges = np.searchsorted(keys, np.array([k * width for k in range(1, 1 << depth)], dtype=np.uint64))
    bounds = [0, *edges.tolist(), n]
    for k in range(1 << depth):
        visit(k * width, depth, bounds[k], bounds[k + 1])
    return runs


def plan_split(config: str, split: str, rows: np.ndarray, keys: np.ndarray, record_bytes: np.ndarray,
               shard_bytes: int = DEFAULT_SHARD_BYTES, shard_records: int | None = None,
               min_shards: int = 1) -> list[Shard]:
    """Cut a split's records (``rows``, in the order of their ``keys``: :func:`order_keys`, sorted)
    into the shards of :func:`key_ranges`. ``record_bytes[i]`` is the estimated size of record
    ``rows[i]`` in the output."""
    runs = key_ranges(keys, record_bytes, shard_bytes, shard_records, min_shards)
    return [Shard(config, split, i, rows[a:b], int(np.sum(record_bytes[a:b]))) for i, (a, b) in enumerate(runs)]


#: Files a shard leaves in its folder, per format: the WebDataset tar has its DALI index beside it.
FILES_PER_SHARD = {"parquet": 1, "webdataset": 2}


def full_scale_folders(package: str, package_bytes: int, shard_bytes: int = DEFAULT_SHARD_BYTES,
                       shard_records: int | None = None, min_shards: int = DEFAULT_MIN_SHARDS) -> dict[str, int]:
    """Shards per split folder of ``package`` at full scale (records per split as published, bytes in
    proportion), the layout ``<config>/<split>/`` that :func:`schema.shard_relpath` gives.

    >>> folders = full_scale_folders("original_full", 200_000_000_000)
    >>> folders["pretrain"], folders["val"]
    (1024, 16)
    """
    from .. import schema

    return {split: shard_count(n, package_bytes * n // schema.TOTAL_RECORDS, shard_bytes, shard_records, min_shards)
            for split, n in schema.SPLIT_RECORDS.items()}

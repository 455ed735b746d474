"""Which record goes into which shard: pure functions, no I/O.

A split's records are put in a fixed pseudo-random order (a keyed hash of ``processid``, so the order
depends neither on the CSV's row order nor on the machine), then cut into shards of balanced record
counts, as many as the shard size limits ask for. Any shard is thus a random sample of its split.
"""

from __future__ import annotations

import hashlib
import math
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


def shuffled_order(processids: Sequence[str], seed: int) -> np.ndarray:
    """Positions of ``processids`` in their seeded shuffled order (ties, if ever, by position)."""
    return np.argsort(order_keys(processids, seed), kind="stable")


def shard_count(num_records: int, num_bytes: int, shard_bytes: int = DEFAULT_SHARD_BYTES,
                shard_records: int | None = None, min_shards: int = 1) -> int:
    """How many shards a split needs so that none exceeds ``shard_bytes`` nor ``shard_records``, and
    at least ``min_shards`` where that leaves ``MIN_SHARD_RECORDS`` records in each.

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
    count = max(1, math.ceil(num_bytes / shard_bytes))
    if shard_records is not None:
        if shard_records <= 0:
            raise ValueError(f"shard_records must be positive, got {shard_records}")
        count = max(count, math.ceil(num_records / shard_records))
    count = max(count, min(min_shards, num_records // MIN_SHARD_RECORDS))
    return min(count, num_records)


def shard_bounds(num_records: int, num_shards: int) -> list[tuple[int, int]]:
    """Split ``range(num_records)`` into ``num_shards`` contiguous parts whose sizes differ by at most 1.

    >>> shard_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    if num_shards <= 0:
        return []
    # Larger parts first, as in ``numpy.array_split``.
    base, extra = divmod(num_records, num_shards)
    sizes = [base + (1 if i < extra else 0) for i in range(num_shards)]
    edges = [0, *np.cumsum(sizes).tolist()]
    return [(edges[i], edges[i + 1]) for i in range(num_shards)]


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


def plan_split(config: str, split: str, rows: np.ndarray, record_bytes: np.ndarray,
               shard_bytes: int = DEFAULT_SHARD_BYTES, shard_records: int | None = None,
               min_shards: int = 1) -> list[Shard]:
    """Cut a split's records (``rows``, already in shuffled order) into balanced shards.

    ``record_bytes[i]`` is the estimated size of record ``rows[i]`` in the output.
    """
    total = int(np.sum(record_bytes))
    bounds = shard_bounds(len(rows), shard_count(len(rows), total, shard_bytes, shard_records, min_shards))
    return [Shard(config, split, i, rows[a:b], int(np.sum(record_bytes[a:b]))) for i, (a, b) in enumerate(bounds)]


#: Files a shard leaves in its folder, per format: the WebDataset tar has its DALI index beside it.
FILES_PER_SHARD = {"parquet": 1, "webdataset": 2}


def full_scale_folders(package: str, package_bytes: int, shard_bytes: int = DEFAULT_SHARD_BYTES,
                       shard_records: int | None = None, min_shards: int = DEFAULT_MIN_SHARDS) -> dict[str, int]:
    """Shards per split folder of ``package`` at full scale (records per split as published, bytes in
    proportion), the layout ``<config>/<split>/`` that :func:`schema.shard_relpath` gives.

    >>> folders = full_scale_folders("original_full", 200_000_000_000)
    >>> folders["pretrain"], folders["val"]
    (677, 16)
    """
    from .. import schema

    return {split: shard_count(n, package_bytes * n // schema.TOTAL_RECORDS, shard_bytes, shard_records, min_shards)
            for split, n in schema.SPLIT_RECORDS.items()}

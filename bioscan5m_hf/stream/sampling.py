"""What an epoch holds besides "every record once": metadata filters, class-balanced sampling and
weighted mixtures of splits.

A **filter** keeps the records whose metadata pass it, evaluated on the metadata columns of each
shard (no image byte of a record left out is read; a shard where nothing passes is never opened
again). It is a ``pyarrow.compute`` expression, e.g.::

    import pyarrow.compute as pc
    (pc.field("order") == "Diptera") & pc.field("species").is_valid()
    (pc.field("coord-lat") >= 40) & (pc.field("coord-lat") <= 60) & pc.field("dna_bin").is_valid()

or a function ``table -> boolean mask`` over a :class:`pyarrow.Table` of every metadata column.

**Sampling** draws ``samples_per_epoch`` records per epoch with replacement, with weights:

- ``balance=rank, temperature=T``: a record of class ``c`` (of that rank; records missing it are
  left out) weighs ``n_c ** (T - 1)``, so class ``c`` gets a share ``n_c ** T / sum(n ** T)``: ``T=1``
  the natural frequencies, ``T=0`` uniform over classes;
- ``split_weights={split: p}``: each split gets share ``p`` (normalised), uniform within it (within
  each split class-balanced when ``balance`` is given too);
- ``source_weights=[p, ...]`` with several roots (converted repos, e.g. BIOSCAN-5M and another
  release): each root's share, likewise.

The draw is a multinomial from the seed and the epoch alone, turned into stream positions in
ascending order (a record drawn ``k`` times is read once and yielded ``k`` times), so it does not
depend on ranks or workers: resume, elastic resume and the shuffle buffer work as for a plain epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from . import partition

if TYPE_CHECKING:
    from ..options import Composition
    from .records import RecordStream


def filter_columns(keep) -> list[str]:
    """The metadata columns a filter is evaluated on (all of them: a table of metadata is small)."""
    if not (isinstance(keep, pc.Expression) or callable(keep)):
        raise TypeError(f"filter must be a pyarrow.compute.Expression or a function of a pyarrow.Table, "
                        f"not {type(keep).__name__}")
    return list(schema.COLUMN_NAMES)


def evaluate(keep: pc.Expression | Callable[[pa.Table], object], table: pa.Table) -> np.ndarray:
    """The boolean mask of ``table``'s rows that pass ``keep`` (null counts as not passing)."""
    if isinstance(keep, pc.Expression):
        rows = table.append_column("__row__", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        try:
            kept = rows.filter(keep).column("__row__").to_numpy()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"filter {keep}: cannot be evaluated on the metadata columns ({e})") from None
        mask = np.zeros(table.num_rows, dtype=bool)
        mask[kept] = True
        return mask
    mask = keep(table)
    mask = mask.to_numpy(zero_copy_only=False) if hasattr(mask, "to_numpy") else np.asarray(mask)
    if mask.shape != (table.num_rows,):
        raise ValueError(f"filter function returned {mask.shape} values for {table.num_rows} rows")
    return np.asarray(np.nan_to_num(mask.astype(float), nan=0.0), dtype=bool)


@dataclass(frozen=True)
class Sampling:
    """Weighted sampling with replacement of ``samples_per_epoch`` records per epoch."""

    samples_per_epoch: int
    balance: str | None = None
    temperature: float = 1.0
    split_weights: tuple[tuple[str, float], ...] = ()
    source_weights: tuple[float, ...] = ()

    @staticmethod
    def make(composition: Composition) -> Sampling | None:
        """The draw a :class:`~bioscan5m_hf.options.Composition` asks for (None: every record once)."""
        balance, temperature = composition.balance, composition.temperature
        split_weights, source_weights = composition.split_weights, composition.source_weights
        samples_per_epoch = composition.samples_per_epoch
        if split_weights and source_weights:
            raise ValueError("split_weights and source_weights do not combine; mix splits or roots, not both")
        if source_weights is not None:
            if any(w < 0 for w in source_weights) or not sum(source_weights) > 0:
                raise ValueError(f"source_weights must be non-negative with a positive sum, got {source_weights}")
            split_weights = {}
        if balance is None and not split_weights and source_weights is None:
            if samples_per_epoch is not None:
                raise ValueError("samples_per_epoch needs balance= or split_weights= (what to draw with)")
            return None
        if balance is not None:
            balance = schema.resolve_targets(balance)[0]
        if not 0 <= temperature <= 1:
            raise ValueError(f"temperature must be in [0, 1] (1: natural frequencies, 0: uniform), got {temperature}")
        weights = tuple((schema.explode_split(s)[0], float(p)) for s, p in (split_weights or {}).items())
        if any(p < 0 for _, p in weights) or (weights and not sum(p for _, p in weights) > 0):
            raise ValueError(f"split_weights must be non-negative with a positive sum, got {split_weights}")
        if samples_per_epoch is not None and samples_per_epoch <= 0:
            raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        return Sampling(samples_per_epoch or 0, balance, float(temperature), weights,
                        tuple(float(w) for w in source_weights or ()))

    def describe(self) -> dict:
        return {"samples_per_epoch": self.samples_per_epoch, "balance": self.balance,
                "temperature": self.temperature, "split_weights": [list(w) for w in self.split_weights],
                "source_weights": list(self.source_weights)}

    def weights(self, records: RecordStream) -> list[np.ndarray]:
        """Per shard, the (unnormalised) weight of each kept record."""
        if self.source_weights:  # a mixture of roots: each root's share
            shard_split = list(records.shard_source)
            share = dict(enumerate(self.source_weights))
        else:
            shard_split = [s.split for s in records.shards]
            share = dict(self.split_weights)
        counts = records.shard_sizes
        labels = None
        if self.balance is not None:
            labels = [records.metadata_of(k, [self.balance]).column(self.balance).to_pylist()
                      if n else [] for k, n in enumerate(counts)]
        groups = sorted(set(shard_split)) if share else [None]
        missing = [s for s in share if s not in shard_split and not self.source_weights]
        if missing:
            raise ValueError(f"split_weights names {missing}, which the stream's splits "
                             f"{sorted(set(shard_split))} do not hold")
        out = [np.zeros(n, dtype=np.float64) for n in counts]
        for group in groups:
            members = [k for k, s in enumerate(shard_split) if group is None or s == group]
            if labels is None:
                for k in members:
                    out[k][:] = 1.0
            else:
                classes: dict = {}
                for k in members:
                    for label in labels[k]:
                        if label is not None:
                            classes[label] = classes.get(label, 0) + 1
                for k in members:
                    out[k][:] = [0.0 if label is None else classes[label] ** (self.temperature - 1.0)
                                 for label in labels[k]]
            total = sum(out[k].sum() for k in members)
            scale = (share.get(group, 0.0) if group is not None else 1.0) / total if total > 0 else 0.0
            for k in members:
                out[k] *= scale
        if not sum(w.sum() for w in out) > 0:
            raise ValueError(f"nothing to draw from: no record of the stream has a {self.balance!r} label"
                             if self.balance else "nothing to draw from: every split weight is 0")
        return out

    def universe(self, weights: list[np.ndarray], shard_sizes: Sequence[int], *, seed: int, epoch: int,
                 shuffle: bool) -> np.ndarray:
        """This epoch's draw as ascending stream positions (repeated as often as drawn)."""
        flat = np.concatenate(weights) if weights else np.zeros(0)
        n = self.samples_per_epoch or len(flat)
        counts = np.random.default_rng([seed, epoch, 3]).multinomial(n, flat / flat.sum())
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        order = partition.shard_order(len(sizes), seed=seed, epoch=epoch, shuffle=shuffle)
        start = np.zeros(len(sizes), dtype=np.int64)
        start[order] = np.cumsum(sizes[order]) - sizes[order]  # where each shard begins in the stream
        firsts = np.cumsum(sizes) - sizes  # where each shard begins in `flat`
        shard_of = np.repeat(np.arange(len(sizes)), sizes)
        positions = start[shard_of] + (np.arange(len(flat)) - firsts[shard_of])
        return np.sort(np.repeat(positions, counts))

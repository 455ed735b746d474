"""Whole batches straight from Parquet columns, for ``make_loader``: no Python object per record
(beyond its JPEG bytes and ``processid``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .. import schema
from ..repo.readers import arrow_indices
from ..transforms import KmerTokenizer
from . import partition
from .records import RecordStream, SharedPosition
from .workers import worker_identity


class HeldRows:
    """The rows a worker has read and not yet emitted, converted a piece at a time (``convert``:
    table -> one array per column) into column arrays indexed by slot: what the per-record path's
    pending records are, without a Python object per record. Pieces go in by read position, batches
    come out by read position and their slots are reused, so memory follows the rows held (a shuffle
    buffer's worth), not the row groups they were read with. For images.

    >>> held = HeldRows(4, lambda table: {"x": table.column("x").to_numpy()})
    >>> held.put(np.array([0, 1, 2]), pa.table({"x": [10, 11, 12]}))
    >>> held.take(np.array([2, 0]))["x"].tolist(), len(held)
    ([12, 10], 1)
    """

    def __init__(self, positions: int, convert: Callable[[pa.Table], dict[str, np.ndarray]]):
        self.convert = convert
        self.slot_of = np.full(positions, -1, dtype=np.int64)
        self.columns: dict[str, np.ndarray] = {}
        self.free = np.zeros(0, dtype=np.int64)
        self.capacity = 0

    def __len__(self) -> int:
        return self.capacity - len(self.free)

    def _grow(self, rows: int) -> None:
        old, self.capacity = self.capacity, max(2 * self.capacity, self.capacity + rows, 1024)
        for name, column in self.columns.items():
            bigger = np.empty((self.capacity, *column.shape[1:]), dtype=column.dtype)
            bigger[:old] = column
            self.columns[name] = bigger
        self.free = np.concatenate([self.free, np.arange(old, self.capacity)])

    def put(self, positions: np.ndarray, table: pa.Table) -> None:
        """Hold the rows of ``table``, read at ``positions``."""
        k = len(positions)
        if len(self.free) < k:
            self._grow(k)
        cut = len(self.free) - k
        slots, self.free = self.free[cut:], self.free[:cut]
        for name, value in self.convert(table).items():
            column = self.columns.get(name)
            if column is None:
                column = self.columns[name] = np.empty((self.capacity, *value.shape[1:]), dtype=value.dtype)
            column[slots] = value
        self.slot_of[positions] = slots

    def take(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The rows read at ``positions``, in that order, no longer held."""
        slots = self.slot_of[positions]
        out = {name: column[slots] for name, column in self.columns.items()}
        for column in self.columns.values():
            if column.dtype == object:  # let go of the JPEG bytes with the batch
                column[slots] = None
        self.free = np.concatenate([self.free, slots])
        return out


class HeldTables:
    """The pieces a worker has read, kept as Arrow tables (metadata: a few large visits), each batch
    gathered from them with ``take`` (no copy but the batch's rows) and converted then (``convert``).
    A piece is dropped once none of its rows is still to come (``emission``: read positions in
    emission order; ``step``: how many were emitted before). For metadata, where converting whole
    visits up front would copy every row once more.

    >>> held = HeldTables(np.array([1, 0, 2]), 0, lambda table: {"x": table.column("x").to_pylist()})
    >>> held.put(np.array([0, 1]), pa.table({"x": [10, 11]}))
    >>> held.take(np.array([1]))["x"], len(held.pieces)
    ([11], 1)
    """

    def __init__(self, emission: np.ndarray, step: int, convert: Callable[[pa.Table], dict]):
        self.later = np.minimum.accumulate(emission[::-1])[::-1]  # by step: the first read position to come
        self.step, self.convert = step, convert
        self.pieces: list[tuple[np.ndarray, pa.Table]] = []

    def put(self, positions: np.ndarray, table: pa.Table) -> None:
        self.pieces.append((positions, table))

    def take(self, need: np.ndarray) -> dict:
        firsts = np.array([positions[0] for positions, _ in self.pieces])
        which = np.searchsorted(firsts, need, side="right") - 1
        parts, order = [], []
        for c in np.unique(which):
            picked = np.flatnonzero(which == c)
            positions, table = self.pieces[c]
            parts.append(table.take(arrow_indices(np.searchsorted(positions, need[picked]))))
            order.append(picked)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        inverse = np.empty(len(need), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(need))
        self.step += len(need)
        if self.step < len(self.later):
            self.pieces = [p for p in self.pieces if p[0][-1] >= self.later[self.step]]
        return self.convert(table.take(arrow_indices(inverse)))


def padded_barcodes(barcodes: pa.ChunkedArray, tokenizer: KmerTokenizer,
                    max_nucleotides: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Barcodes (cut to ``max_nucleotides``) as :meth:`KmerTokenizer.pad` gives them: the ``N``-padded
    uint8 matrix and the lengths, with Arrow kernels where the barcodes are ASCII (as they are)."""
    width = tokenizer.num_tokens * tokenizer.k
    barcodes = barcodes.combine_chunks()
    ends = np.frombuffer(barcodes.buffers()[1], np.int32)[barcodes.offset: barcodes.offset + len(barcodes) + 1]
    chars = (np.frombuffer(barcodes.buffers()[2], np.uint8, count=ends[-1] - ends[0], offset=ends[0])
             if ends[-1] > ends[0] else np.zeros(0, np.uint8))
    if barcodes.null_count or chars.max(initial=0) >= 128:
        if max_nucleotides is not None:
            barcodes = pc.utf8_slice_codeunits(barcodes, 0, max_nucleotides)
        return tokenizer.pad(barcodes.to_pylist())
    sizes = np.diff(ends)  # ASCII: a byte is a base
    lengths = np.minimum(sizes, max_nucleotides) if max_nucleotides is not None else sizes
    # cut to whole k-mers (width <= max_nucleotides), bytewise: 12x faster than by characters
    cut = (pc.binary_slice(barcodes.view(pa.binary()), 0, width).view(pa.string())
           if sizes.max(initial=0) > width else barcodes)
    padded = pc.utf8_rpad(cut, width, padding="N")
    offsets, data = np.frombuffer(padded.buffers()[1], np.int32), padded.buffers()[2]
    matrix = np.frombuffer(data, np.uint8, count=len(padded) * width, offset=offsets[padded.offset])
    return matrix.reshape(len(padded), width), lengths.astype(np.int64)


def objects(values: list) -> np.ndarray:
    """A list as a 1-d object array (numpy would make a 2-d array of equal-length sequences)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class ColumnarBatches(torch.utils.data.IterableDataset):
    """Whole batches straight from Parquet columns: ``processid``, DNA token ids, label indices and
    images, with no Python object per record but its JPEG bytes.

    Yields, per DataLoader worker, exactly the batches the per-record path would (same partition,
    same shuffle-buffer emission order, same resume points: the :class:`RecordStream` decides all of
    it; the same :class:`~.loader.BatchAssembler` makes the batch), but reads pieces of visits as
    Arrow tables and converts rows a column at a time (barcodes padded with Arrow kernels and
    tokenised as one matrix, each distinct label looked up once). Metadata alone: whole visits held
    as tables, a batch gathered and converted at a time (:class:`HeldTables`). With images: a row
    group per read, converted at once and held until emitted (:class:`HeldRows`), so memory stays a
    shuffle buffer's worth.
    """

    def __init__(self, records: RecordStream, assemble, batch_size: int, position: SharedPosition, *,
                 drop_last: bool = False):
        super().__init__()
        self.records, self.assemble, self.batch_size, self.position = records, assemble, batch_size, position
        self.drop_last = drop_last
        self.image = assemble.images is not None
        self.tokenizer = assemble.tokenizer

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_identity()
        epoch, worker, done, phases = self.position.read(worker)
        plan = self.records.worker_plan(epoch, worker, num_workers, phases)
        n = len(plan)
        stop = n - n % self.batch_size if self.drop_last else n
        if done >= stop:
            return
        start, already = partition.resume_point(plan.emission, done)
        runs = partition.visits(plan, start)
        if not self.image and runs:
            # Metadata: the first visit is read in two pieces, so the first batch waits for a few
            # batches' rows, not a whole shard; later visits whole (a read per piece costs more there).
            a, b = runs[0]
            head = min(b, a + 4 * self.batch_size)
            runs = [(a, head), *([(head, b)] if head < b else []), *runs[1:]]
        # Images: a row group per read (at most 100 images), so memory stays a shuffle buffer's worth.
        pieces = self.records.visit_tables(plan, runs, groups_per_read=1 if self.image else None)
        wanted = np.ones(n, dtype=bool)
        wanted[already] = False  # read again after a resume, but yielded before it
        held = HeldRows(n, self._values) if self.image else HeldTables(plan.emission, done, self._values)
        read_to = start
        for t in range(done, stop, self.batch_size):
            need = plan.emission[t: t + self.batch_size]
            while read_to <= need.max():
                a, read_to, table = next(pieces)
                keep = np.flatnonzero(wanted[a: read_to])
                if len(keep):
                    held.put(a + keep, table if len(keep) == read_to - a else table.take(arrow_indices(keep)))
            columns = held.take(need)
            if self.records.world_size > 1:
                columns["padding"] = plan.padding[need]
            yield self.assemble(columns, epoch, functools.partial(self._shard_of, plan, need))

    def _shard_of(self, plan: partition.WorkerPlan, need: np.ndarray, i: int) -> str:
        """The shard of the ``i``-th record of a batch (read positions ``need``), for errors."""
        return self.records.shards[int(plan.shards[need[i]])].path

    def _values(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Rows (a piece's, or a batch's) as one array per column, as :class:`~.loader.BatchAssembler`
        takes them."""
        values = {"processid": objects(table.column("processid").to_pylist())}
        if self.tokenizer is not None:
            values["dna_matrix"], values["dna_length"] = padded_barcodes(table.column("dna_barcode"), self.tokenizer,
                                                                         self.records.max_nucleotides)
        for t in self.assemble.target_type:
            values[t] = self.records.labels.indices(t, table.column(t))
        if self.image:
            values["jpeg"] = objects(pc.struct_field(table.column(schema.IMAGE_COLUMN), "bytes").to_pylist())
        return values

"""DNA-only batches straight from Parquet columns, for ``make_loader``: no Python object per record."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..repo.readers import arrow_indices
from ..transforms import KmerTokenizer
from . import partition
from .records import RecordStream, SharedPosition
from .workers import worker_identity


class ColumnarBatches(torch.utils.data.IterableDataset):
    """DNA-only batches straight from Parquet columns: no Python object per record.

    Yields, per DataLoader worker, exactly the batches the per-record path would (same partition,
    same shuffle-buffer emission order, same resume points: the :class:`RecordStream` decides all of
    it), but reads whole visits as Arrow tables, gathers each batch with ``take``, pads the barcodes
    with Arrow kernels and tokenises the whole matrix at once.
    """

    def __init__(self, records: RecordStream, target_type: Sequence[str], batch_size: int,
                 tokenizer: KmerTokenizer, position: SharedPosition, dna_masking=None):
        super().__init__()
        self.records, self.batch_size, self.tokenizer, self.position = records, batch_size, tokenizer, position
        self.dna_masking = dna_masking
        # Label -> index per rank, as plain dicts: building Arrow arrays from Python lists here would
        # import pandas (pyarrow's converters do), a sixth of a second before the first batch.
        self.indices = {t: {label: i for i, label in enumerate(records.vocabularies[t])} for t in target_type}

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_identity()
        epoch, worker, done, phases = self.position.read(worker)
        plan = self.records.worker_plan(epoch, worker, num_workers, phases)
        n = len(plan)
        if done >= n:
            return
        start, _ = partition.resume_point(plan.emission, done)
        # The first visit is read in two pieces, so the first batch waits for a few batches' rows, not a
        # whole shard; later visits whole (a read per piece costs more than it saves there).
        runs = partition.visits(plan, start)
        if runs:
            a, b = runs[0]
            head = min(b, a + 4 * self.batch_size)
            runs = [(a, head), *([(head, b)] if head < b else []), *runs[1:]]
        visits = iter(runs)
        chunks: list[tuple[int, int, pa.Table]] = []  # contiguous read positions [a, b) and their rows
        read_to = start
        for t in range(done, n, self.batch_size):
            need = plan.emission[t: t + self.batch_size]
            while read_to <= need.max():
                a, b = next(visits)
                chunks.append((a, b, self.records.visit_table(plan, a, b)))
                read_to = b
            batch = self._batch(self._gather(chunks, need))
            if self.dna_masking is not None:
                batch.update(self.dna_masking(batch["dna"].numpy(), batch["dna_mask"].numpy(), batch["processid"],
                                              epoch))
            if self.records.world_size > 1:
                batch["padding"] = torch.from_numpy(plan.padding[need])
            yield batch
            rest = plan.emission[t + self.batch_size:]
            keep_from = rest.min() if len(rest) else n
            chunks = [c for c in chunks if c[1] > keep_from]

    @staticmethod
    def _gather(chunks, need: np.ndarray) -> pa.Table:
        firsts = np.array([a for a, _, _ in chunks])
        which = np.searchsorted(firsts, need, side="right") - 1
        parts, order = [], []
        for c in np.unique(which):
            picked = np.flatnonzero(which == c)
            a, _, table = chunks[c]
            parts.append(table.take(arrow_indices(need[picked] - a)))
            order.append(picked)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        inverse = np.empty(len(need), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(need))
        return table.take(arrow_indices(inverse))

    def _batch(self, table: pa.Table) -> dict:
        tok, limit = self.tokenizer, self.records.max_nucleotides
        width = tok.num_tokens * tok.k
        barcodes = table.column("dna_barcode").combine_chunks()
        ends = np.frombuffer(barcodes.buffers()[1], np.int32)[barcodes.offset: barcodes.offset + len(barcodes) + 1]
        chars = (np.frombuffer(barcodes.buffers()[2], np.uint8, count=ends[-1] - ends[0], offset=ends[0])
                 if ends[-1] > ends[0] else np.zeros(0, np.uint8))
        if barcodes.null_count == 0 and chars.max(initial=0) < 128:  # ASCII, as barcodes are: a byte is a base
            sizes = np.diff(ends)
            lengths = np.minimum(sizes, limit) if limit is not None else sizes
            # cut to whole k-mers (width <= max_nucleotides), bytewise: 12x faster than by characters
            cut = (pc.binary_slice(barcodes.view(pa.binary()), 0, width).view(pa.string())
                   if sizes.max(initial=0) > width else barcodes)
            padded = pc.utf8_rpad(cut, width, padding="N")
            offsets, data = np.frombuffer(padded.buffers()[1], np.int32), padded.buffers()[2]
            first = offsets[padded.offset]
            matrix = np.frombuffer(data, np.uint8, count=len(padded) * width, offset=first).reshape(len(padded), width)
            ids, mask = tok.encode_matrix(matrix, lengths)
        else:
            if limit is not None:
                barcodes = pc.utf8_slice_codeunits(barcodes, 0, limit)
            ids, mask = tok(barcodes.to_pylist())
        batch = {"processid": table.column("processid").to_pylist(), "dna": torch.from_numpy(ids),
                 "dna_mask": torch.from_numpy(mask)}
        for t, index in self.indices.items():
            batch[t] = torch.from_numpy(label_indices(table.column(t), index))
        return batch


def label_indices(column: pa.ChunkedArray, index: dict[str, int]) -> np.ndarray:
    """int64 vocabulary indices of a label column (-1 for missing or unknown labels), looking up
    each distinct label once (the column dictionary-encoded by Arrow).

    >>> label_indices(pa.chunked_array([["b", None, "a", "b", "z"]]), {"a": 0, "b": 1}).tolist()
    [1, -1, 0, 1, -1]
    """
    encoded = pc.dictionary_encode(column.combine_chunks())
    lookup = np.array([index.get(label, -1) for label in encoded.dictionary.to_pylist()] + [-1], dtype=np.int64)
    codes, n = encoded.indices, len(encoded.indices)
    values = np.frombuffer(codes.buffers()[1], dtype=np.dtype(codes.type.to_pandas_dtype()))[codes.offset:
                                                                                              codes.offset + n]
    if codes.null_count:  # a null's slot holds no code: point it at the -1 at the end of `lookup`
        bits = np.unpackbits(np.frombuffer(codes.buffers()[0], np.uint8), bitorder="little")
        values = np.where(bits[codes.offset: codes.offset + n].astype(bool), values, len(lookup) - 1)
    return lookup[values]

"""``collate_fn`` for the plain ``datasets`` route: a batch of the Parquet repo's rows, as
``IterableDataset.batch(n)`` yields them (a dict of columns), becomes make_loader's batch, decoded
in the DataLoader worker that collates it.

A batch at a time, not a row at a time: ``datasets`` formats a batch's Arrow table once instead of
once per row, and the JPEGs are decoded straight into the batch's tensor instead of into one array
per image stacked afterwards. In a forked worker process that tensor is one of a few batch buffers
shared with the main process and reused once the main process no longer refers to the batch
(:class:`~bioscan5m_hf.stream.slots.CollateSlots`, which also carry the batch's DNA ids and
labels), as make_loader's workers do, instead of shared memory made fresh for every batch and
tensor (as ``default_collate`` does), whose page faults cost a large share of a worker's time on
few cores (BENCHMARKS.md, history)::

    ds = load_dataset(repo, "cropped_256", split="train", streaming=True,
                      columns=["processid", "image", "dna_barcode", "species"])
    ds = ds.cast_column("image", Image(decode=False))
    loader = DataLoader(ds.batch(256), batch_size=None, num_workers=8, collate_fn=BatchCollate(256))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .. import schema
from ..errors import ShardError
from ..transforms import KmerTokenizer
from .images import WorkerImages
from .outputs import Labels
from .slots import CollateSlots, room_for

#: The metadata column of the DNA barcode, tokenised into ``dna`` and ``dna_mask``.
DNA_COLUMN = "dna_barcode"


class BatchCollate:
    """A dict of columns (``processid``, ``image``, ``dna_barcode``, label columns, ...) -> make_loader's
    batch: ``image`` the ``B x 3 x S x S`` uint8 centre crops (channels-last memory, the pixels of
    :func:`~bioscan5m_hf.transforms.decode_image`), ``dna``/``dna_mask`` the k-mer ids and mask of
    ``tokenizer``, each column of ``vocabularies`` (e.g. the repo manifest's ``vocabularies``) an
    int64 index tensor (``-1``: missing or not in the vocabulary), any other column as given.

    ``image`` values are JPEG bytes or ``{"bytes": ..., "path": ...}`` (``Image(decode=False)``). An
    image that does not decode raises :class:`~bioscan5m_hf.errors.ShardError` naming its record.

    Image batches of up to ``batch_size`` go through ``slots`` buffers shared with forked worker
    processes, with the batch's DNA ids, mask and label indices after the images (reserved now,
    ``batch_size x image_size^2 x 3`` bytes each and the room for those, touched only when used;
    about prefetch_factor + 1 per worker are in use at a time), so make the collate before the
    DataLoader starts its workers, and iterate it in the process that made it. When none is free
    (a consumer keeping batches, more workers), or with ``slots=0``, or in spawned workers, a batch
    goes through fresh shared memory as with ``default_collate``: nothing waits, nothing is
    overwritten while referred to.
    """

    def __init__(self, image_size: int = 256, tokenizer: KmerTokenizer | None = None,
                 vocabularies: Mapping[str, Sequence[str]] | None = None, *, batch_size: int = 256,
                 slots: int = 32):
        if slots < 0 or batch_size < 1:
            raise ValueError(f"need slots >= 0 and batch_size >= 1, got slots={slots}, batch_size={batch_size}")
        self.tokenizer = tokenizer or KmerTokenizer()
        self.labels = Labels({column: list(labels) for column, labels in (vocabularies or {}).items()})
        # after the images: DNA token ids and mask, one int64 label per record and column
        ranks = len(self.labels.vocabularies)
        room = room_for(batch_size, 2 * self.tokenizer.num_tokens + ranks, ranks + 2)
        self.slots = CollateSlots(slots, batch_size, image_size, extra_bytes=room) if slots else None
        self.images = WorkerImages(image_size, slots=self.slots)

    def __getstate__(self):  # a copy in a spawned process has no slots to write into: fresh memory there
        return {**self.__dict__, "slots": None}

    def __call__(self, batch: Mapping[str, Sequence]) -> dict:
        out: dict = {}
        for column, values in batch.items():
            if column == schema.IMAGE_COLUMN:
                out[column] = self._images(values, batch.get("processid"))
            elif column == DNA_COLUMN:
                ids, mask = self.tokenizer(list(values))
                out["dna"], out["dna_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
            elif column in self.labels.vocabularies:
                out[column] = torch.tensor([self.labels.index(column, v) for v in values], dtype=torch.int64)
            else:
                out[column] = values
        return self.images.pack(out)

    def _images(self, values: Sequence, processids: Sequence[str] | None) -> torch.Tensor:
        jpegs = [v["bytes"] if isinstance(v, Mapping) else v for v in values]
        names = list(processids) if processids is not None else [f"row {i} of the batch" for i in range(len(jpegs))]

        def source(i: int) -> str:
            path = values[i].get("path") if isinstance(values[i], Mapping) else None
            return path or "a datasets batch"

        for i, data in enumerate(jpegs):
            if data is None:
                raise ShardError(f"{source(i)}: record {names[i]} has no image bytes")
        return self.images.decode(jpegs, names, 0, source)


__all__ = ["BatchCollate"]

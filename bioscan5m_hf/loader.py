"""``make_loader``: batches of tensors for GPU training, straight from the shards, checkpointable.

Workers read and shuffle undecoded records, then decode images (resize + centre-crop to uint8) and
collate: images ``B x 3 x S x S`` uint8 (channels-last memory format), barcodes as k-mer token ids with an attention mask, and one
int64 label tensor per requested rank. With ``device="cuda"`` batches come from pinned memory with
non-blocking copies on a side stream, one batch ahead, so the copy overlaps the model's compute.

The loader's ``state_dict`` is ``(epoch, batches yielded)``: from it and the pure partition math
(:func:`partition.loader_progress`) each worker's exact resume point follows, and the
workers learn it (and the epoch, also with persistent workers) through a small shared array.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from . import partition, schema
from .dataset import BIOSCAN5M, DNA_MODALITIES
from .shards import row_group_starts
from .transforms import KmerTokenizer, decode_image, normalize


class SharedPosition:
    """Epoch, worker rotation and per-worker resume points: written by the main process at the start
    of each epoch, read by the workers when they start iterating (persistent workers included)."""

    def __init__(self, num_workers: int):
        self.num_workers = max(1, num_workers)
        self.array = multiprocessing.get_context("fork").Array("q", 2 + self.num_workers, lock=False)

    def write(self, epoch: int, rotation: int, done: Sequence[int]) -> None:
        self.array[0], self.array[1] = epoch, rotation
        for w, d in enumerate(done):
            self.array[2 + w] = d

    def read(self, worker: int) -> tuple[int, int, int]:
        """(epoch, the logical worker this DataLoader worker plays, samples it already yielded)."""
        logical = (worker + int(self.array[1])) % self.num_workers
        return int(self.array[0]), logical, int(self.array[2 + logical])


class ImageTransform:
    """The loader's image transform: JPEG bytes (or a PIL image) -> ``size x size x 3`` uint8 array."""

    takes_bytes = True  # BIOSCAN5M hands it the undecoded bytes

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image) -> np.ndarray:
        return decode_image(image, self.size, channels_last=True)  # batched as channels-last


def _stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 images -> one ``B x 3 x H x W`` tensor in channels-last memory format (plain copies,
    no transposition), written straight into shared memory when in a DataLoader worker (as
    ``default_collate`` does), so the batch is not copied again to reach the main process."""
    h, w, c = images[0].shape
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(len(images) * h * w * c)
        out = torch.empty(0, dtype=torch.uint8).set_(storage).view(len(images), h, w, c)
    else:
        out = torch.empty((len(images), h, w, c), dtype=torch.uint8)
    view = out.numpy()  # the same memory
    for i, image in enumerate(images):
        view[i] = image
    return out.permute(0, 3, 1, 2)


class Collate:
    """List of dict samples -> dict of tensors (runs in the workers)."""

    def __init__(self, modality: Sequence[str], target_type: Sequence[str], tokenizer: KmerTokenizer | None):
        self.modality = list(modality)
        self.target_type = list(target_type)
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        batch: dict = {"processid": [s["processid"] for s in samples]}
        for m in self.modality:
            if m == "image":
                batch["image"] = _stack_images([s["image"] for s in samples])
            elif m in DNA_MODALITIES:
                ids, mask = self.tokenizer([s[m] for s in samples])
                batch["dna"] = torch.from_numpy(ids)
                batch["dna_mask"] = torch.from_numpy(mask)
            elif m != "processid":
                values = [s[m] for s in samples]
                batch[m] = torch.tensor(values) if all(isinstance(v, (int, float)) for v in values) else values
        for t in self.target_type:
            batch[t] = torch.tensor([s[f"{t}_index"] for s in samples], dtype=torch.int64)
        return batch


def _as_is(batch):
    return batch


class ColumnarBatches(torch.utils.data.IterableDataset):
    """DNA-only batches straight from Parquet columns: no Python object per record.

    Yields, per DataLoader worker, exactly the batches the per-record path would (same partition,
    same shuffle-buffer emission order, same resume points: :class:`BIOSCAN5M` decides all of it),
    but reads row groups as Arrow, gathers each batch with ``take``, pads the barcodes with Arrow
    kernels and tokenises the whole matrix at once.
    """

    def __init__(self, dataset: BIOSCAN5M, batch_size: int, tokenizer: KmerTokenizer):
        super().__init__()
        self.dataset, self.batch_size, self.tokenizer = dataset, batch_size, tokenizer
        self.value_sets = {t: pa.array(dataset.vocabularies[t], pa.string()) for t in dataset.target_type}

    def __iter__(self) -> Iterator[dict]:
        ds = self.dataset
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, worker, done = ds._position(worker, num_workers)
        plan = ds.plan(worker, num_workers, epoch)
        n = len(plan)
        if done >= n:
            return
        start, _ = partition.resume_point(plan.emission, done)
        visits = iter(partition.visits(plan, start))
        chunks: list[tuple[int, int, pa.Table]] = []  # contiguous read positions [a, b) and their rows
        read_to = start
        for t in range(done, n, self.batch_size):
            need = plan.emission[t: t + self.batch_size]
            while read_to <= need.max():
                a, b = next(visits)
                chunks.append((a, b, self._read_visit(plan, a, b)))
                read_to = b
            yield self._batch(self._gather(chunks, need))
            rest = plan.emission[t + self.batch_size:]
            keep_from = rest.min() if len(rest) else n
            chunks = [c for c in chunks if c[1] > keep_from]

    def _read_visit(self, plan, a: int, b: int) -> pa.Table:
        ds = self.dataset
        shard = ds.shard_list[int(plan.shards[a])]
        offsets = plan.offsets[a:b]
        if ds.selection is not None:
            offsets = ds.selection[int(plan.shards[a])][offsets]
        f = pq.ParquetFile(shard.path if not shard.store.remote else shard.open())
        starts = row_group_starts(f)
        groups = np.unique(np.searchsorted(starts, offsets, side="right") - 1)
        table = f.read_row_groups(groups.tolist(), columns=ds.columns)
        return table.take(pa.array(offsets - starts[groups[0]]))

    @staticmethod
    def _gather(chunks, need: np.ndarray) -> pa.Table:
        firsts = np.array([a for a, _, _ in chunks])
        which = np.searchsorted(firsts, need, side="right") - 1
        parts, order = [], []
        for c in np.unique(which):
            picked = np.flatnonzero(which == c)
            a, _, table = chunks[c]
            parts.append(table.take(pa.array(need[picked] - a)))
            order.append(picked)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        inverse = np.empty(len(need), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(need))
        return table.take(pa.array(inverse))

    def _batch(self, table: pa.Table) -> dict:
        tok = self.tokenizer
        width = tok.num_tokens * tok.k
        barcodes = table.column("dna_barcode").combine_chunks()
        if self.dataset.max_nucleotides is not None:
            barcodes = pc.utf8_slice_codeunits(barcodes, 0, self.dataset.max_nucleotides)
        lengths = pc.utf8_length(barcodes).to_numpy(zero_copy_only=False)
        padded = pc.utf8_rpad(pc.utf8_slice_codeunits(barcodes, 0, width), width, padding="N")
        offsets, data = np.frombuffer(padded.buffers()[1], np.int32), padded.buffers()[2]
        first, last = offsets[padded.offset], offsets[padded.offset + len(padded)]
        if last - first == len(padded) * width:  # ASCII, as barcodes are
            matrix = np.frombuffer(data, np.uint8, count=last - first, offset=first).reshape(len(padded), width)
            ids, mask = tok.encode_matrix(matrix, lengths)
        else:
            ids, mask = tok(barcodes.to_pylist())
        batch = {"processid": table.column("processid").to_pylist(), "dna": torch.from_numpy(ids),
                 "dna_mask": torch.from_numpy(mask)}
        for t, values in self.value_sets.items():
            index = pc.fill_null(pc.index_in(table.column(t), value_set=values), -1)
            batch[t] = torch.from_numpy(index.to_numpy(zero_copy_only=False).astype(np.int64))
        return batch


class Loader:
    """An iterable of batches over epochs, with ``set_epoch``, ``state_dict`` and ``load_state_dict``."""

    def __init__(self, dataset: BIOSCAN5M, *, batch_size: int, num_workers: int, collate: Collate,
                 device: str | torch.device | None, normalize_images: bool, drop_last: bool,
                 prefetch_factor: int | None, persistent_workers: bool, pin_memory: bool | None,
                 source: ColumnarBatches | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.normalize_images = normalize_images
        if pin_memory is None:
            pin_memory = self.device is not None and self.device.type == "cuda"
        self._shared = SharedPosition(num_workers)
        dataset._shared = self._shared
        common = dict(num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor if num_workers else None,
                      persistent_workers=persistent_workers and num_workers > 0,
                      multiprocessing_context="fork" if num_workers else None)
        if source is not None:  # the source yields whole batches already
            if drop_last:
                raise ValueError("drop_last is not supported for DNA-only batches from Parquet")
            self.loader = DataLoader(source, batch_size=None, collate_fn=_as_is, **common)
        else:
            self.loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, drop_last=drop_last,
                                     **common)
        self.epoch = dataset.epoch
        self.batches = 0

    # -- epochs and checkpoints -------------------------------------------------------------------

    def _worker_counts(self) -> list[int]:
        return self.dataset.worker_counts(self.num_workers)

    def __len__(self) -> int:
        counts = self._worker_counts()
        return sum((c // self.batch_size) if self.drop_last else -(-c // self.batch_size) for c in counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batches = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "batch_size": self.batch_size,
                "num_workers": self.num_workers, "drop_last": self.drop_last,
                "dataset": self.dataset._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        mine = {"batch_size": self.batch_size, "num_workers": self.num_workers, "drop_last": self.drop_last,
                "dataset": self.dataset._fingerprint()}
        differ = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differ:
            raise ValueError(f"state_dict was taken from a differently configured loader: {differ}")
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])

    # -- iteration ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        counts = self._worker_counts()
        if self.batches >= len(self):  # a checkpoint taken right at the end of an epoch
            self.epoch, self.batches = self.epoch + 1, 0
        per_worker, rotation = partition.loader_progress(counts, self.batch_size, self.batches, self.drop_last)
        self._shared.write(self.epoch, rotation, [min(c, b * self.batch_size) for c, b in zip(counts, per_worker)])
        for batch in self._to_device(iter(self.loader)):
            self.batches += 1
            yield batch
        self.epoch, self.batches = self.epoch + 1, 0

    def _move(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if k == "image" and self.normalize_images:
                    v = normalize(v)
            out[k] = v
        return out

    def _to_device(self, batches: Iterator[dict]) -> Iterator[dict]:
        """Move each batch to the device one batch ahead of the consumer: on CUDA the copy runs on a
        side stream while the model computes on the current one. The same code runs on the CPU,
        where the streams are no-ops (so tests exercise it on machines without a GPU)."""
        if self.device is None:
            yield from batches
            return
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        ahead = None
        for batch in batches:
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                moved = self._move(batch)
            if ahead is not None:
                yield ahead
            if cuda:
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(stream)
                for v in moved.values():
                    if isinstance(v, torch.Tensor):
                        v.record_stream(current)
            ahead = moved
        if ahead is not None:
            yield ahead


def make_loader(root, split: str = "train", *, batch_size: int = 256, num_workers: int = 2, image_size: int = 256,
                modality: Sequence[str] = ("image", "dna"), target_type: str | Sequence[str] = "species",
                k: int = 4, max_nucleotides: int = 660, device: str | torch.device | None = None,
                normalize: bool = False, shuffle: bool = True, drop_last: bool = False, prefetch_factor: int = 4,
                persistent_workers: bool = True, pin_memory: bool | None = None, **dataset_kwargs) -> Loader:
    """A DataLoader of tensor batches over a converted BIOSCAN-5M repo, for training.

    Parameters
    ----------
    root, split
        As for :class:`BIOSCAN5M`; any other :class:`BIOSCAN5M` keyword (``seed``, ``buffer_size``,
        ``rank``, ``world_size``, ``even``, ``image_package``, ``reduce_repeated_barcodes``) is passed on.
    batch_size, num_workers
        Samples per batch; worker processes (each reads its own part of the shards).
    image_size : int
        Images come as uint8 ``B x 3 x image_size x image_size`` (shorter side resized, centre crop).
    modality : sequence of str
        ``"image"`` and/or ``"dna"``, plus any metadata column. Without ``"image"`` no image bytes are read.
    target_type : str or sequence of str
        Ranks (or ``"dna_bin"``) returned as int64 tensors under their own name; ``-1`` is missing.
    k, max_nucleotides
        k-mer size and padded length of the DNA token ids (``batch["dna"]``, ``batch["dna_mask"]``).
    device : str or torch.device, optional
        Move batches there (``"cuda"``: pinned memory, non-blocking copies overlapped with compute).
    normalize : bool
        Return float images normalised with the dataset's RGB mean/std (after the move to ``device``).
    shuffle, drop_last, prefetch_factor, persistent_workers, pin_memory
        As for :class:`torch.utils.data.DataLoader` (shuffle: seeded shard order + buffer).
    """
    modality = list(modality)
    targets = [target_type] if isinstance(target_type, str) else list(target_type)
    wants_dna = any(m in DNA_MODALITIES for m in modality)
    dataset = BIOSCAN5M(
        root, split, modality=["processid", *[m for m in modality if m != "processid"]], target_type=targets,
        output_format="dict", max_nucleotides=max_nucleotides,
        transform=ImageTransform(image_size) if "image" in modality else None, shuffle=shuffle, **dataset_kwargs)
    dataset._lean = True
    tokenizer = KmerTokenizer(k, max_nucleotides) if wants_dna else None
    collate = Collate(modality, dataset.target_type, tokenizer)
    columnar = (set(modality) <= {"dna", "processid"} and wants_dna and dataset.repo.fmt == "parquet"
                and dataset.on_error == "raise")
    if columnar:  # DNA-only from Parquet: whole batches from Arrow columns (same batches, faster)
        source = ColumnarBatches(dataset, batch_size, tokenizer)
        return Loader(dataset, batch_size=batch_size, num_workers=num_workers, collate=None, device=device,
                      normalize_images=normalize, drop_last=drop_last, prefetch_factor=prefetch_factor,
                      persistent_workers=persistent_workers, pin_memory=pin_memory, source=source)
    return Loader(dataset, batch_size=batch_size, num_workers=num_workers, collate=collate, device=device,
                  normalize_images=normalize, drop_last=drop_last, prefetch_factor=prefetch_factor,
                  persistent_workers=persistent_workers, pin_memory=pin_memory)


__all__ = ["make_loader", "Loader", "schema"]

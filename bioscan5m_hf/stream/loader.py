"""``make_loader``: batches of tensors for GPU training, straight from the shards, checkpointable.

Workers read and shuffle undecoded records, then decode images (resize + centre-crop to uint8) and
collate: images ``B x 3 x S x S`` uint8 (channels-last memory format), barcodes as k-mer token ids
with an attention mask, and one int64 label tensor per requested rank. From Parquet (images and/or
DNA) whole batches come straight from the Arrow columns (:mod:`.columnar`), a batch's JPEGs decoded
straight into the batch's memory (:mod:`.images`); otherwise record by record (tar shards,
``on_error="skip"``, other metadata modalities), with the same batches. With ``device="cuda"``
batches come from pinned memory with non-blocking copies on a side stream, one batch ahead, so the
copy overlaps the model's compute.

The loader's ``state_dict`` is ``(epoch, batches yielded)``: from it and the pure partition math
(:func:`partition.loader_progress`) each worker's exact resume point follows, and the
workers learn it (and the epoch, also with persistent workers) through a small shared array.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import schema
from ..transforms import KmerTokenizer, decode_crop, decode_image, mask_tokens, normalize
from ..util import check_choice
from . import device as on_device
from . import partition
from .columnar import ColumnarBatches
from .images import ThreadDecoder, WorkerImages
from .outputs import missing_as_nan
from .records import RecordStream, SharedPosition, WorkerSamples
from .slots import ImageSlots, SlotRef, room_for
from .workers import ThreadWorkers

DECODERS = ("workers", "threads", "device")
WORKER_METHODS = ("process", "thread")


class LoaderSample:
    """A raw record of ``epoch`` -> what :class:`Collate` reads (runs in the workers): the barcode,
    metadata values, label indices and the image, either decoded to a ``size x size x 3`` uint8
    array (``decode="workers"``) or as its JPEG bytes and crop parameters (``decode="device"``).
    With ``augment`` the crop is a random resized crop with a random flip, drawn from the seed, the
    epoch and the record (:func:`~bioscan5m_hf.transforms.sample_rng`); otherwise the centre crop."""

    def __init__(self, records: RecordStream, modalities: Sequence[schema.Modality], target_type: Sequence[str],
                 images: WorkerImages | None, decode: str = "workers"):
        self.records, self.modalities, self.target_type = records, list(modalities), list(target_type)
        self.images, self.decode = images, decode  # images: the size and crops (and, collated, the memory)

    def _image(self, data: bytes, processid: str, epoch: int, out: dict) -> None:
        size, augment = self.images.image_size, self.images.augment
        if self.decode == "workers" and not augment:  # the exact centre crop of decode_image
            out["image"] = decode_image(data, size, channels_last=True)
            return
        if self.decode == "threads" and not augment:  # decoded in the main process, as above
            out["jpeg"] = data
            return
        params = self.images.crop_params(data, processid, epoch)
        if self.decode in ("device", "threads"):
            out["jpeg"], out["crop"] = data, params
        else:
            out["image"] = decode_crop(data, params, size)

    def __call__(self, record: dict, epoch: int = 0) -> dict:
        out = {"processid": record["processid"], "epoch": epoch}
        if self.records.world_size > 1:
            out["padding"] = record["__padding__"]
        for m in self.modalities:
            if m.kind == "image":
                self._image(record["image"], record["processid"], epoch, out)
            elif m.kind == "dna":
                out["dna"] = self.records.dna(record)
            elif m.kind == "label_index":
                out[m.name] = self.records.labels.index(m.columns[0], record[m.columns[0]])
            elif m.name != "processid":
                out[m.name] = missing_as_nan(record[m.name])
        for t in self.target_type:
            out[f"{t}_index"] = self.records.labels.index(t, record[t])
        return out


class DnaMasking:
    """``dna_masked`` (inputs) and ``dna_labels`` (targets, -100 where not predicted) of a batch's
    token ids, BarcodeBERT-style (:func:`~bioscan5m_hf.transforms.mask_tokens`), seeded per record
    and epoch so a resumed run masks the same positions."""

    def __init__(self, ratio: float, seed: int, vocab_size: int):
        if not 0 < ratio < 1:
            raise ValueError(f"mask_dna must be a ratio in (0, 1), got {ratio}")
        self.ratio, self.seed, self.vocab_size = ratio, seed, vocab_size

    def __call__(self, ids: np.ndarray, mask: np.ndarray, processids: Sequence[str], epoch: int) -> dict:
        inputs, labels = mask_tokens(ids, mask, processids, seed=self.seed, epoch=epoch, ratio=self.ratio,
                                     vocab_size=self.vocab_size)
        return {"dna_masked": torch.from_numpy(inputs), "dna_labels": torch.from_numpy(labels)}


class Collate:
    """List of dict samples -> dict of tensors (runs in the workers); images decoded one by one go
    into one batch through ``images`` (into a shared slot where there is one), which an image
    modality needs."""

    def __init__(self, modalities: Sequence[schema.Modality], target_type: Sequence[str],
                 tokenizer: KmerTokenizer | None, dna_masking: DnaMasking | None = None,
                 images: WorkerImages | None = None):
        self.modalities = list(modalities)
        self.target_type = list(target_type)
        self.tokenizer = tokenizer
        self.dna_masking = dna_masking
        self.images = images

    def __call__(self, samples: list[dict]) -> dict:
        batch: dict = {"processid": [s["processid"] for s in samples]}
        if "padding" in samples[0]:  # distributed: which samples only repeat others to even out the ranks
            batch["padding"] = torch.tensor([s["padding"] for s in samples], dtype=torch.bool)
        for m in self.modalities:
            if m.kind == "image" and "jpeg" in samples[0]:  # decoded in the main process (device or threads)
                batch["jpeg"], batch["jpeg_offsets"] = on_device.pack([s["jpeg"] for s in samples])
                if "crop" in samples[0]:
                    batch["crop"] = torch.from_numpy(np.stack([s["crop"] for s in samples]))
            elif m.kind == "image":
                batch["image"] = self.images.stack([s["image"] for s in samples])
            elif m.kind == "dna":
                ids, mask = self.tokenizer([s["dna"] for s in samples])
                batch["dna"] = torch.from_numpy(ids)
                batch["dna_mask"] = torch.from_numpy(mask)
                if self.dna_masking is not None:
                    batch.update(self.dna_masking(ids, mask, batch["processid"], samples[0]["epoch"]))
            elif m.name != "processid":
                values = [s[m.name] for s in samples]
                batch[m.name] = torch.tensor(values) if all(isinstance(v, (int, float)) for v in values) else values
        for t in self.target_type:
            batch[t] = torch.tensor([s[f"{t}_index"] for s in samples], dtype=torch.int64)
        return self.images.pack(batch) if self.images is not None else batch


def _as_is(batch):
    return batch


class Loader:
    """An iterable of batches over epochs, with ``set_epoch``, ``state_dict`` and ``load_state_dict``.

    ``records`` is the stream the batches come from (its ``vocabularies``, ``skipped``, ``len()``);
    ``dataset`` what the DataLoader iterates: per-record samples collated by ``collate``, or (with
    ``collate=None``) a source that yields whole batches."""

    def __init__(self, records: RecordStream, dataset: torch.utils.data.IterableDataset, position: SharedPosition,
                 *, batch_size: int, num_workers: int, collate: Collate | None, target_type: Sequence[str],
                 device: str | torch.device | None, normalize_images: bool, drop_last: bool,
                 prefetch_factor: int | None, persistent_workers: bool, pin_memory: bool,
                 image_size: int = 256, thread_decoder: ThreadDecoder | None = None, worker_method: str = "process",
                 slots: ImageSlots | None = None):
        self.records = records
        self.slots = slots
        self.image_size = image_size
        self.thread_decoder = thread_decoder
        self.target_type = list(target_type)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.normalize_images = normalize_images
        self.position = position
        common = dict(num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor if num_workers else None,
                      persistent_workers=persistent_workers and num_workers > 0,
                      multiprocessing_context="fork" if num_workers else None)
        if worker_method == "thread":  # the same streams and order, as threads of this process
            self.loader = ThreadWorkers(dataset, max(1, num_workers), batch_size=batch_size, collate=collate,
                                        drop_last=drop_last, prefetch=prefetch_factor or 2, pin_memory=pin_memory)
        elif collate is None:
            self.loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, **common)
        else:
            self.loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, drop_last=drop_last,
                                     **common)
        self.epoch = 0
        self.batches = 0
        self.phases: list[partition.Phase] = []  # earlier phases of this epoch (elastic resume)
        self._live: weakref.ref | None = None  # the iteration under way

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return self.records.vocabularies

    # -- epochs and checkpoints -------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches of this epoch (of its current phase, after an elastic resume)."""
        counts = self.records.worker_counts(self.num_workers, self.epoch, self.phases)
        return sum((c // self.batch_size) if self.drop_last else -(-c // self.batch_size) for c in counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batches, self.phases = int(epoch), 0, []

    def _topology(self) -> dict:
        return {"world_size": self.records.world_size, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "drop_last": self.drop_last}

    def state_dict(self) -> dict:
        """Where training stands: the epoch, the batches yielded in its current phase, its earlier
        phases, the topology and what the data is. Rank 0's is enough for every rank."""
        return {"epoch": self.epoch, "batches": self.batches,
                "phases": [[p.world_size, p.num_workers, list(p.done)] for p in self.phases],
                **self._topology(), "dataset": self.records.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from a :meth:`state_dict`, on this topology or another one (world size, workers,
        batch size): the rest of the epoch yields every record not yet yielded, once."""
        data = state.get("dataset", {})
        differ = {k: (data.get(k), v) for k, v in self.records.fingerprint().items() if data.get(k) != v}
        if differ:
            raise ValueError(f"state_dict was taken from a loader over other data: {differ}")
        epoch, batches = int(state["epoch"]), int(state["batches"])
        phases = [partition.Phase(w, n, tuple(d)) for w, n, d in state.get("phases", [])]
        old = {k: state.get(k, data.get(k)) for k in self._topology()}
        if old == self._topology():
            self.epoch, self.batches, self.phases = epoch, batches, phases
            return
        # Elastic: what the old topology yielded in its phase becomes a phase of its own.
        left = self.records.live_count(epoch, phases)
        count = partition.epoch_count(left, old["world_size"], self.records.even)
        counts = [partition.worker_block(count, w, old["num_workers"])[1] for w in range(old["num_workers"])]
        per_worker, _ = partition.loader_progress(counts, old["batch_size"], batches, old["drop_last"])
        done = tuple(min(c, b * old["batch_size"]) for c, b in zip(counts, per_worker))
        self.epoch, self.batches = epoch, 0
        self.phases = phases + ([partition.Phase(old["world_size"], old["num_workers"], done)] if any(done) else [])

    # -- iteration ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        """This epoch's batches (the rest of it, after a resume). One iteration at a time: starting
        another ends the one before (its workers stop, as when it is left early), as a DataLoader
        with persistent workers also requires; they would share the counters and slots."""
        previous = self._live() if self._live is not None else None
        if previous is not None:
            previous.close()
        batches = self._epoch()
        self._live = weakref.ref(batches)
        return batches

    def _epoch(self) -> Iterator[dict]:
        if self.batches >= len(self):  # a checkpoint taken right at the end of an epoch
            self.epoch, self.batches, self.phases = self.epoch + 1, 0, []
        counts = self.records.worker_counts(self.num_workers, self.epoch, self.phases)
        per_worker, rotation = partition.loader_progress(counts, self.batch_size, self.batches, self.drop_last)
        self.position.write(self.epoch, rotation, [min(c, b * self.batch_size) for c, b in zip(counts, per_worker)],
                            self.phases)
        if self.slots is not None:
            self.slots.new_generation()
        batches = iter(self.loader) if self.slots is None else self._from_slots(iter(self.loader))
        for batch in self._to_device(batches):
            self.batches += 1
            yield batch
            del batch  # not held while the next batch is awaited (a slot is free once the consumer lets go)
        self.epoch, self.batches, self.phases = self.epoch + 1, 0, []

    def _from_slots(self, batches: Iterator[dict]) -> Iterator[dict]:
        """Batches a worker wrote into shared slots (images, DNA, labels), as tensors viewing them or
        copied from them (:mod:`.slots`). A slot is free again as soon as nothing refers to its batch,
        so the workers keep writing into the few slots already in memory."""
        for batch in batches:
            if isinstance(batch.get("image"), SlotRef):
                batch = self.slots.take(batch)
            yield batch
            del batch

    def _decoded_ahead(self, batches: Iterator[dict]) -> Iterator[dict]:
        """``decode="threads"``: each batch's JPEGs go to the decoding threads as soon as the batch
        arrives, one batch ahead of the consumer, so the threads decode while the training step runs
        (and while the previous batch's last images finish)."""
        def submit(batch: dict) -> Callable[[], dict]:
            batch = dict(batch)
            jpeg, offsets, crop = batch.pop("jpeg"), batch.pop("jpeg_offsets"), batch.pop("crop", None)
            image = self.thread_decoder.submit(jpeg, offsets, crop, batch["processid"])

            def done() -> dict:
                batch["image"] = image()
                return batch

            return done

        pending = None
        for batch in batches:
            ahead = submit(batch) if "jpeg" in batch else (lambda b=batch: b)
            if pending is not None:
                yield pending()
            pending = ahead
        if pending is not None:
            yield pending()

    def _move(self, batch: dict) -> dict:
        out = {}
        if "jpeg" in batch:  # decode="device": decode, crop and resize here
            batch = dict(batch)
            jpeg, offsets, crop = batch.pop("jpeg"), batch.pop("jpeg_offsets"), batch.pop("crop", None)
            image = on_device.decode_batch(jpeg, offsets, crop, self.image_size, self.device or torch.device("cpu"),
                                           batch["processid"])
            batch["image"] = normalize(image) if self.normalize_images else image
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True) if self.device is not None else v
                if k == "image" and self.normalize_images and v.dtype == torch.uint8:
                    v = normalize(v)
            out[k] = v
        return out

    def _to_device(self, batches: Iterator[dict]) -> Iterator[dict]:
        """Move each batch to the device one batch ahead of the consumer: on CUDA the copy runs on a
        side stream while the model computes on the current one. The same code runs on the CPU,
        where the streams are no-ops (so tests exercise it on machines without a GPU)."""
        if self.thread_decoder is not None:
            batches = self._decoded_ahead(batches)
        if self.device is None:
            for batch in batches:
                yield self._move(batch) if "jpeg" in batch or self.normalize_images else batch
                del batch
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


def _slot_extra_bytes(batch_size: int, tokenizer: KmerTokenizer | None, masking: DnaMasking | None,
                      modalities: Sequence[schema.Modality], targets: Sequence[str]) -> int:
    """Room after a batch's images in its slot for its other tensors (:meth:`SlotMemory.pack`): int64
    token ids and mask (and masked inputs and their labels), 8 bytes per record for each label,
    number and target, and for the padding flags."""
    tokens = 0 if tokenizer is None else (4 if masking is not None else 2) * tokenizer.num_tokens
    values = sum(m.kind not in ("image", "dna") and m.name != "processid" for m in modalities) + len(targets) + 1
    return room_for(batch_size, tokens + values, values + 4)


def make_loader(root, split: str = "train", *, batch_size: int = 256, num_workers: int = 2, image_size: int = 256,
                modality: Sequence[str] = ("image", "dna"), target_type: str | Sequence[str] = "species",
                k: int = 4, max_nucleotides: int = 660, device: str | torch.device | None = None,
                normalize: bool = False, shuffle: bool = True, drop_last: bool = False, prefetch_factor: int = 4,
                persistent_workers: bool = True, pin_memory: bool | None = None, decode: str = "workers",
                augment: bool = False, mask_dna: float | None = None, decode_threads: int | None = None,
                worker_method: str = "process", **stream_kwargs) -> Loader:
    """A DataLoader of tensor batches over a converted BIOSCAN-5M repo, for training.

    Parameters
    ----------
    root, split
        As for :class:`~bioscan5m_hf.BIOSCAN5M`; its streaming keywords (``seed``, ``buffer_size``,
        ``rank``, ``world_size``, ``even``, ``image_package``, ``reduce_repeated_barcodes``,
        ``on_error``, ``cache_dir``, ``storage_options``, ...) are passed on.
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
    worker_method : {"process", "thread"}
        How the ``num_workers`` workers run: as DataLoader worker processes, or as threads of this
        process (no process start-up, no batch crossing a process boundary; the streams' Python
        shares one interpreter lock). Exactly the same batches in the same order, and the same
        ``state_dict``. On 2 cores ``"thread"`` is 2-2.5x faster DNA-only and level with
        processes for images (BENCHMARKS.md). With many workers on many cores the streams' Python,
        serialised by the lock, may become the limit there: keep processes then.
    decode : {"workers", "threads", "device"}
        Where images are decoded: in the workers, straight into the batch (pixels cross into the
        main process through shared-memory slots reused batch after batch with worker processes and
        no pinning, :mod:`.slots`); in the main process by ``decode_threads`` threads (default: one
        per core) from the JPEG bytes the workers ship, straight into the batch (same pixels as
        ``"workers"``; no pixel crosses a process boundary); or on ``device`` (``torchvision.io``;
        nvJPEG on CUDA; needs the ``gpu`` extra). Same keys, shapes, dtypes and record order.
    augment : bool
        Training crops: a random resized crop (scale 0.08-1, ratio 3/4-4/3) and a random horizontal
        flip per sample, drawn from ``seed``, the epoch and the record, so a resumed run reproduces
        them; on the device with ``decode="device"``, in the workers otherwise. Default: centre crop.
    mask_dna : float, optional
        DNA pretraining batches: this share of each barcode's k-mer tokens is masked BarcodeBERT-style
        (80% ``<MASK>``, 10% a random k-mer, 10% unchanged): ``batch["dna_masked"]`` are the inputs,
        ``batch["dna_labels"]`` the original ids where masked and -100 elsewhere (``batch["dna"]``
        stays unmasked). Seeded per record and epoch: a resumed run masks the same positions.
    filter, balance, temperature, split_weights, samples_per_epoch
        What an epoch holds (see :class:`~bioscan5m_hf.StreamingBIOSCAN5M`).
    """
    check_choice(decode, "decode", DECODERS)
    check_choice(worker_method, "worker_method", WORKER_METHODS)
    if decode == "device" and "image" in modality:
        on_device.require_torchvision()
    modalities = [schema.resolve_modality(m) for m in dict.fromkeys(["processid", *modality])]
    targets = schema.resolve_targets(target_type)
    kinds = {m.kind for m in modalities}
    records = RecordStream(root, schema.explode_split(split), columns={c for m in modalities for c in m.columns} |
                           set(targets), image="image" in kinds, max_nucleotides=max_nucleotides, shuffle=shuffle,
                           **stream_kwargs)
    tokenizer = KmerTokenizer(k, max_nucleotides) if "dna" in kinds else None
    if mask_dna is not None and tokenizer is None:
        raise ValueError("mask_dna needs the 'dna' modality")
    masking = DnaMasking(mask_dna, records.seed, tokenizer.vocab_size) if mask_dna is not None else None
    position = SharedPosition(num_workers)
    cuda = device is not None and torch.device(device).type == "cuda"
    pin_memory = cuda if pin_memory is None else pin_memory
    threads = ThreadDecoder(image_size, decode_threads, pin=cuda) if decode == "threads" else None
    common = dict(batch_size=batch_size, num_workers=num_workers, target_type=targets, device=device,
                  normalize_images=normalize, drop_last=drop_last, prefetch_factor=prefetch_factor,
                  persistent_workers=persistent_workers, pin_memory=pin_memory, image_size=image_size,
                  thread_decoder=threads, worker_method=worker_method)
    slots = None
    if "image" in kinds and decode == "workers" and worker_method == "process" and num_workers > 0 and not pin_memory:
        # Per worker: up to prefetch_factor batches on their way (one being written), one just received,
        # one the consumer still holds, one moved ahead to the device: no fallback in a plain training loop.
        slots = ImageSlots(num_workers, (prefetch_factor or 2) + 3, batch_size, image_size,
                           extra_bytes=_slot_extra_bytes(batch_size, tokenizer, masking, modalities, targets))
    images = WorkerImages(image_size, augment, records.seed, slots) if "image" in kinds else None
    if {m.name for m in modalities} <= {"image", "dna", "processid"} and kinds & {"image", "dna"} \
            and records.formats == {"parquet"} and records.on_error == "raise":
        # Parquet, images and/or DNA: whole batches from Arrow columns, images decoded a batch at a time
        source = ColumnarBatches(records, targets, batch_size, tokenizer, position, masking, drop_last=drop_last,
                                 decode=decode if "image" in kinds else None, images=images)
        return Loader(records, source, position, collate=None, slots=slots, **common)
    samples = WorkerSamples(records, LoaderSample(records, modalities, targets, images, decode), position)
    return Loader(records, samples, position, collate=Collate(modalities, targets, tokenizer, masking, images),
                  slots=slots, **common)


__all__ = ["make_loader", "Loader"]

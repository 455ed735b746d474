"""``make_loader``: batches of tensors for GPU training, straight from the shards, checkpointable.

*What* records an epoch holds is the dataset's (:class:`~bioscan5m_hf.StreamingBIOSCAN5M`: split,
modalities, targets, shuffling, ranks, composition, storage); *how* they are delivered is the
loader's: DataLoader's own keywords plus image size, device, augmentation and DNA tokenisation.
How the batches are made is chosen once, for the user (:func:`choose_mode`).

Workers read and shuffle undecoded records, then decode images (resize + centre-crop to uint8) and
make batches: images ``B x 3 x S x S`` uint8 (channels-last memory format), barcodes as k-mer token
ids with an attention mask, and one int64 label tensor per target. One :class:`BatchAssembler`
makes every batch, fed either from Parquet columns a batch at a time (:mod:`.columnar`: images
and/or DNA) or record by record (tar shards, ``on_error="skip"``, other metadata modalities), with
the same batches. With ``device="cuda"`` batches come from pinned memory with non-blocking copies
on a side stream, one batch ahead, so the copy overlaps the model's compute.

The loader's ``state_dict`` is ``(epoch, batches yielded)``: from it and the pure partition math
(:func:`partition.loader_progress`) each worker's exact resume point follows, and the
workers learn it (and the epoch, also with persistent workers) through a small shared array.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import schema
from ..options import Composition, Storage, keyword_names
from ..transforms import KmerTokenizer, mask_tokens, normalize
from ..util import check_choice
from . import device as on_device
from . import partition
from .columnar import ColumnarBatches
from .dali import DaliDecoder
from .images import WorkerImages
from .outputs import IMAGE_ERRORS, image_error, missing_as_nan
from .records import RecordStream, SharedPosition, WorkerSamples
from .slots import ImageSlots, SlotRef, room_for
from .streaming import StreamingBIOSCAN5M
from .workers import ThreadWorkers

DECODE = ("auto", "workers", "device", "dali")


@dataclass(frozen=True)
class Mode:
    """How a loader makes its batches: where images are decoded (``"workers"``: on the CPU in the
    worker processes; ``"device"``: on the loader's device by torchvision; ``"dali"``: by a DALI
    pipeline in this process, on the loader's device; None: no image) and whether the workers
    run as threads of this process instead of DataLoader processes (same batches, same order)."""

    decode: str | None
    thread_workers: bool


def choose_mode(image: bool, decode: str, device: torch.device | None, num_workers: int,
                device_decoder: Callable[[], bool] = lambda: on_device.has_torchvision()) -> Mode:
    """The mode the benchmarks show fastest for this job (BENCHMARKS.md, ``loader`` and ``gpu``):

    - no image: thread workers (DNA-only batches come 2.5-3x faster from threads than from worker
      processes: they cross no process boundary, and the work is Arrow and numpy, which release
      the interpreter lock);
    - images on the CPU: decoding in worker processes, into shared batch memory reused batch after
      batch (the fastest CPU way in the ``loader`` area: threads lose there);
    - images for a CUDA device: the device's decoder (nvJPEG through torchvision; 2-7.6x the CPU
      workers in the ``gpu`` area), where torchvision is installed, else the CPU workers.

    ``decode`` other than ``"auto"`` forces the decoder (``"dali"`` only so: no GPU run has measured
    it yet). No measurement so far shows a core count at which these choices flip, so the cores do
    not enter (yet).

    >>> choose_mode(False, "auto", None, 2)
    Mode(decode=None, thread_workers=True)
    >>> choose_mode(True, "auto", torch.device("cuda"), 8, device_decoder=lambda: True)
    Mode(decode='device', thread_workers=False)
    >>> choose_mode(True, "auto", torch.device("cuda"), 8, device_decoder=lambda: False)
    Mode(decode='workers', thread_workers=False)
    >>> choose_mode(True, "dali", None, 8)
    Mode(decode='dali', thread_workers=False)
    """
    check_choice(decode, "decode", DECODE)
    if not image:
        return Mode(None, num_workers > 0)
    if decode == "auto":
        decode = "device" if device is not None and device.type == "cuda" and device_decoder() else "workers"
    return Mode(decode, False)


class LoaderSample:
    """A raw record of ``epoch`` -> the values :class:`Collate` gathers (runs in the workers): the
    barcode, metadata values, label indices and the image, decoded to a ``size x size x 3`` uint8
    array (``decode="workers"``, so a damaged image is this record's, skipped under
    ``on_error="skip"``) or as its JPEG bytes (``"device"``, ``"dali"``)."""

    def __init__(self, records: RecordStream, modalities: Sequence[schema.Modality], target_type: Sequence[str],
                 images: WorkerImages | None, decode: str | None):
        self.records, self.modalities, self.target_type = records, list(modalities), list(target_type)
        self.images, self.decode = images, decode

    def __call__(self, record: dict, epoch: int = 0) -> dict:
        out = {"processid": record["processid"], "epoch": epoch}
        if self.records.world_size > 1:
            out["padding"] = record["__padding__"]
        labels = self.records.labels
        for m in self.modalities:
            if m.kind == "image" and self.decode == "workers":
                out["image"] = self.images.decode_one(record["image"], record["processid"], epoch, record["__shard__"])
            elif m.kind == "image":
                out["jpeg"], out["shard"] = record["image"], record["__shard__"]
            elif m.kind == "dna":
                out["dna"] = self.records.dna(record)
            elif m.kind == "label_index":
                out[m.name] = labels.index(m.columns[0], record[m.columns[0]])
            elif m.name != "processid":
                out[m.name] = missing_as_nan(record[m.name])
        for t in self.target_type:
            out[t] = labels.index(t, record[t])
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


class BatchAssembler:
    """A batch's columns -> the batch of tensors (runs in the workers), whichever source read them:
    :class:`Collate` (record by record) or :class:`~.columnar.ColumnarBatches` (Arrow columns).

    Columns: ``processid``; ``padding`` (distributed); ``image`` (images decoded one by one) or
    ``jpeg`` (JPEG bytes: decoded here straight into the batch's memory with ``decode="workers"``,
    shipped packed with their crop boxes for ``"device"`` and ``"dali"``); ``dna`` (barcodes) or
    ``dna_matrix`` and ``dna_length`` (barcodes already padded); one int64 index array per target;
    other metadata values by name. A batch's tensors go into a shared slot with its images where
    ``images`` has one."""

    def __init__(self, modalities: Sequence[schema.Modality], target_type: Sequence[str],
                 tokenizer: KmerTokenizer | None, dna_masking: DnaMasking | None = None,
                 images: WorkerImages | None = None, decode: str | None = None):
        self.target_type = list(target_type)
        self.values = [m.name for m in modalities if m.kind not in ("image", "dna") and m.name != "processid"]
        self.tokenizer, self.dna_masking, self.images, self.decode = tokenizer, dna_masking, images, decode

    def __call__(self, columns: dict, epoch: int, shard_of: Callable[[int], str]) -> dict:
        batch: dict = {"processid": list(columns["processid"])}
        if "padding" in columns:  # distributed: which samples only repeat others to even out the ranks
            batch["padding"] = torch.as_tensor(np.asarray(columns["padding"], dtype=bool))
        if "image" in columns:
            batch["image"] = self.images.stack(columns["image"])
        elif "jpeg" in columns:
            batch.update(self._jpegs(list(columns["jpeg"]), batch["processid"], epoch, shard_of))
        if self.tokenizer is not None:
            if "dna_matrix" in columns:
                ids, mask = self.tokenizer.encode_matrix(columns["dna_matrix"], columns["dna_length"])
            else:
                ids, mask = self.tokenizer(columns["dna"])
            batch["dna"], batch["dna_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
            if self.dna_masking is not None:
                batch.update(self.dna_masking(ids, mask, batch["processid"], epoch))
        for name in self.values:
            values = columns[name]
            batch[name] = torch.tensor(values) if all(isinstance(v, (int, float)) for v in values) else values
        for t in self.target_type:
            batch[t] = torch.as_tensor(np.asarray(columns[t], dtype=np.int64))
        return self.images.pack(batch) if self.images is not None else batch

    def _jpegs(self, jpegs: list[bytes], processids: list[str], epoch: int, shard_of: Callable[[int], str]) -> dict:
        if self.decode == "workers":
            return {"image": self.images.decode(jpegs, processids, epoch, shard_of)}
        jpeg, offsets = on_device.pack(jpegs)
        params = []
        for i, (data, pid) in enumerate(zip(jpegs, processids)):
            try:
                params.append(self.images.crop_params(data, pid, epoch))
            except IMAGE_ERRORS as e:
                raise image_error(shard_of(i), pid, e) from None
        return {"jpeg": jpeg, "jpeg_offsets": offsets, "crop": torch.from_numpy(np.stack(params))}


class Collate:
    """List of :class:`LoaderSample` values -> their columns -> :class:`BatchAssembler`'s batch."""

    def __init__(self, assemble: BatchAssembler):
        self.assemble = assemble

    def __call__(self, samples: list[dict]) -> dict:
        columns = {key: [s[key] for s in samples] for key in samples[0] if key != "epoch"}
        shards = columns.pop("shard", None)
        return self.assemble(columns, samples[0]["epoch"], lambda i: shards[i])


def _as_is(batch):
    return batch


class Loader:
    """An iterable of batches over epochs, with ``set_epoch``, ``state_dict`` and ``load_state_dict``.

    ``dataset`` is what the batches hold (:attr:`dataset`: its ``skipped``, ``vocabularies``);
    ``source`` what the DataLoader (or the thread workers) iterates: per-record samples collated by
    ``collate``, or (with ``collate=None``) a source that yields whole batches; ``decode_jpegs``
    turns the JPEG bytes the workers ship (``decode="device"`` or ``"dali"``) into the image batch."""

    def __init__(self, dataset: StreamingBIOSCAN5M, source: torch.utils.data.IterableDataset,
                 position: SharedPosition, *, batch_size: int, num_workers: int, collate: Collate | None,
                 device: torch.device | None, normalize_images: bool, drop_last: bool, prefetch_factor: int | None,
                 persistent_workers: bool, pin_memory: bool, thread_workers: bool, slots: ImageSlots | None,
                 decode_jpegs: Callable[..., torch.Tensor] | None):
        self.dataset = dataset
        self.records = dataset.records
        self.slots = slots
        self.decode_jpegs = decode_jpegs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.device = device
        self.normalize_images = normalize_images
        self.position = position
        if thread_workers:  # the same streams and order, as threads of this process
            self.loader = ThreadWorkers(source, num_workers, batch_size=batch_size, collate=collate,
                                        drop_last=drop_last, prefetch=prefetch_factor or 2, pin_memory=pin_memory)
        else:
            batching = (dict(batch_size=None, collate_fn=_as_is) if collate is None else
                        dict(batch_size=batch_size, collate_fn=collate, drop_last=drop_last))
            self.loader = DataLoader(source, num_workers=num_workers, pin_memory=pin_memory,
                                     prefetch_factor=prefetch_factor if num_workers else None,
                                     persistent_workers=persistent_workers and num_workers > 0,
                                     multiprocessing_context="fork" if num_workers else None, **batching)
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

    def _move(self, batch: dict) -> dict:
        out = {}
        if "jpeg" in batch:  # decode="device" or "dali": decode, crop and resize here
            batch = dict(batch)
            jpeg, offsets, crop = batch.pop("jpeg"), batch.pop("jpeg_offsets"), batch.pop("crop")
            image = self.decode_jpegs(jpeg, offsets, crop, processids=batch["processid"])
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


def _dataset(data, split: str | None) -> StreamingBIOSCAN5M:
    """The dataset a loader delivers: ``data`` itself, or the streaming dataset of a root (shuffled)."""
    if not isinstance(data, StreamingBIOSCAN5M):
        if isinstance(data, torch.utils.data.Dataset):
            raise TypeError(f"make_loader takes a StreamingBIOSCAN5M or a root, not a {type(data).__name__} (a "
                            "map-style BIOSCAN5M goes to a torch DataLoader; BIOSCAN5M(..., streaming=True) "
                            "gives the streaming one)")
        return StreamingBIOSCAN5M(data, split or "train", shuffle=True)
    if split is not None:
        raise TypeError(f"make_loader: split={split!r} is for a root; the dataset given has its own "
                        f"({data.split!r})")
    transforms = ("transform", "dna_transform", "target_transform")
    unused = [name for name in transforms if getattr(data.outputs, name) is not None]
    if unused or data.target_format != "index":
        what = ", ".join(unused) or "target_format='text'"
        raise ValueError(f"make_loader makes tensors itself (decoded images, token ids, index targets): a dataset "
                         f"with {what} would have it ignored; build the dataset without")
    if data.max_nucleotides is None and any(m.kind == "dna" for m in data.outputs.modalities):
        raise ValueError("make_loader pads barcodes to max_nucleotides; the dataset has max_nucleotides=None")
    return data


def _check_device(device) -> torch.device | None:
    """``device`` as a torch device, refused now if this torch cannot reach it (not at the first batch)."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"make_loader(device={str(device)!r}): CUDA is not available to this torch "
                           f"({torch.__version__}, CUDA {torch.version.cuda or 'none'}); install a CUDA build of "
                           "torch, or leave device out for batches on the CPU")
    return device


def make_loader(data, split: str | None = None, *, batch_size: int = 256, num_workers: int = 2,
                drop_last: bool = False, prefetch_factor: int = 4, persistent_workers: bool = True,
                pin_memory: bool | None = None, device: str | torch.device | None = None, image_size: int = 256,
                normalize: bool = False, augment: bool = False, k: int = 4, mask_dna: float | None = None,
                decode: str = "auto") -> Loader:
    """A DataLoader of tensor batches over a converted BIOSCAN-5M repo, for training.

    Parameters
    ----------
    data : StreamingBIOSCAN5M or str
        What the batches hold: a :class:`~bioscan5m_hf.StreamingBIOSCAN5M` (its split, modalities,
        targets, shuffling, ranks, composition, storage), or a root, meaning
        ``StreamingBIOSCAN5M(root, split, shuffle=True)``.
    split : str, optional
        With a root: the split (default ``"train"``).
    batch_size, num_workers, drop_last, prefetch_factor, persistent_workers, pin_memory
        As for :class:`torch.utils.data.DataLoader` (``pin_memory`` defaults to ``device`` being CUDA).
    device : str or torch.device, optional
        Move batches there (``"cuda"``: pinned memory, non-blocking copies overlapped with compute).
        A device this torch cannot reach fails here, naming it.
    image_size : int
        Images come as uint8 ``B x 3 x image_size x image_size`` (shorter side resized, centre crop).
    normalize : bool
        Return float images normalised with the dataset's RGB mean/std (after the move to ``device``).
    augment : bool
        Training crops: a random resized crop (scale 0.08-1, ratio 3/4-4/3) and a random horizontal
        flip per sample, drawn from the dataset's ``seed``, the epoch and the record, so a resumed
        run reproduces them. Default: centre crop.
    k : int
        k-mer size of the DNA token ids (``batch["dna"]``, ``batch["dna_mask"]``, padded to the
        dataset's ``max_nucleotides``).
    mask_dna : float, optional
        DNA pretraining batches: this share of each barcode's k-mer tokens is masked BarcodeBERT-style
        (80% ``<MASK>``, 10% a random k-mer, 10% unchanged): ``batch["dna_masked"]`` are the inputs,
        ``batch["dna_labels"]`` the original ids where masked and -100 elsewhere (``batch["dna"]``
        stays unmasked). Seeded per record and epoch: a resumed run masks the same positions.
    decode : {"auto", "workers", "device", "dali"}
        Where images are decoded; ``"auto"`` picks what the benchmarks show fastest for the job
        (:func:`choose_mode`): on the CPU in the worker processes, or with ``device="cuda"`` on the
        GPU (nvJPEG through torchvision, the ``gpu`` extra) where torchvision is installed.
        ``"device"`` forces the device's decoder; ``"dali"`` decodes with an NVIDIA DALI pipeline
        (the ``dali`` extra; nvJPEG and the hardware JPEG engines with CUDA, DALI's CPU decoder
        without). Without its library, each names its extra. The same keys, shapes, dtypes, record
        order and resume points every way.

    Batches are dicts: ``processid`` (list), ``image``, ``dna`` and ``dna_mask``, each target
    (int64; ``-1`` where missing), other metadata modalities by name, and ``padding`` (bool) with
    several ranks.
    """
    dataset = _dataset(data, split)
    device = _check_device(device)
    records = dataset.records
    modalities = [schema.resolve_modality("processid"), *(m for m in dataset.outputs.modalities
                                                           if m.name != "processid")]
    targets = list(dataset.target_type)
    kinds = {m.kind for m in modalities}
    mode = choose_mode("image" in kinds, decode, device, num_workers)
    decode_jpegs = None
    if mode.decode == "device":
        on_device.require_torchvision()
        decode_jpegs = functools.partial(on_device.decode_batch, size=image_size,
                                         device=device or torch.device("cpu"))
    elif mode.decode == "dali":
        decode_jpegs = DaliDecoder(image_size, batch_size, device or torch.device("cpu"))
    tokenizer = KmerTokenizer(k, dataset.max_nucleotides) if "dna" in kinds else None
    if mask_dna is not None and tokenizer is None:
        raise ValueError("mask_dna needs the 'dna' modality")
    masking = DnaMasking(mask_dna, records.seed, tokenizer.vocab_size) if mask_dna is not None else None
    position = SharedPosition(num_workers)
    cuda = device is not None and device.type == "cuda"
    pin_memory = cuda if pin_memory is None else pin_memory
    slots = None
    if mode.decode == "workers" and not mode.thread_workers and num_workers > 0 and not pin_memory:
        # Per worker: up to prefetch_factor batches on their way (one being written), one just received,
        # one the consumer still holds, one moved ahead to the device: no fallback in a plain training loop.
        slots = ImageSlots(num_workers, (prefetch_factor or 2) + 3, batch_size, image_size,
                           extra_bytes=_slot_extra_bytes(batch_size, tokenizer, masking, modalities, targets))
    images = WorkerImages(image_size, augment, records.seed, slots) if mode.decode is not None else None
    assemble = BatchAssembler(modalities, targets, tokenizer, masking, images, mode.decode)
    common = dict(batch_size=batch_size, num_workers=num_workers, device=device, normalize_images=normalize,
                  drop_last=drop_last, prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                  pin_memory=pin_memory, thread_workers=mode.thread_workers, slots=slots, decode_jpegs=decode_jpegs)
    if {m.name for m in modalities} <= {"image", "dna", "processid"} and kinds & {"image", "dna"} \
            and records.formats == {"parquet"} and records.on_error == "raise":
        # Parquet, images and/or DNA: whole batches from Arrow columns, images decoded a batch at a time
        source = ColumnarBatches(records, assemble, batch_size, position, drop_last=drop_last)
        return Loader(dataset, source, position, collate=None, **common)
    samples = WorkerSamples(records, LoaderSample(records, modalities, targets, images, mode.decode), position)
    return Loader(dataset, samples, position, collate=Collate(assemble), **common)


#: Keywords ``make_loader`` took before the dataset carried them (see :func:`_moved_keywords`).
DATASET_KEYWORDS = frozenset(keyword_names(StreamingBIOSCAN5M.__init__)) - {"root", "split"}
#: Keywords whose mode ``make_loader`` now chooses itself (:func:`choose_mode`).
CHOSEN_KEYWORDS = frozenset({"worker_method", "decode_threads"})


def _moved_keywords(fn: Callable) -> Callable:
    """``make_loader``'s keywords of earlier releases keep working with a ``DeprecationWarning``: the
    dataset's (``modality``, ``seed``, ``cache_dir``, ``filter``, ...) build the dataset of a root,
    and ``worker_method``, ``decode_threads`` and ``decode="threads"`` are left to :func:`choose_mode`."""
    option_fields = {f.name: option for option in (Storage, Composition) for f in fields(option)}

    @functools.wraps(fn)
    def wrapper(data, split=None, **kwargs):
        chosen = {k: kwargs.pop(k) for k in list(kwargs) if k in CHOSEN_KEYWORDS}
        if kwargs.get("decode") == "threads":
            chosen["decode"] = kwargs.pop("decode")
        if chosen:
            warnings.warn(f"make_loader({', '.join(f'{k}={v!r}' for k, v in chosen.items())}) is deprecated and has "
                          "no effect: make_loader chooses how batches are made (decode='auto')",
                          DeprecationWarning, stacklevel=2)
        moved = {k: kwargs.pop(k) for k in list(kwargs) if k in DATASET_KEYWORDS or k in option_fields}
        if moved:
            if isinstance(data, StreamingBIOSCAN5M):
                raise TypeError(f"make_loader() got {', '.join(moved)} with a dataset: give them to the dataset")
            given = ", ".join(f"{k}=..." for k in moved)
            warnings.warn(f"make_loader(root, split, {given}) is deprecated: pass "
                          f"make_loader(StreamingBIOSCAN5M(root, split, shuffle=True, {given}), ...)",
                          DeprecationWarning, stacklevel=2)
            dataset_kw = {"shuffle": True, **{k: v for k, v in moved.items() if k not in option_fields}}
            for option in (Storage, Composition):
                mine = {k: v for k, v in moved.items() if option_fields.get(k) is option}
                if mine:
                    dataset_kw[option.keyword] = option(**mine)
            data, split = StreamingBIOSCAN5M(data, split or "train", **dataset_kw), None
        return fn(data, split, **kwargs)

    return wrapper


make_loader = _moved_keywords(make_loader)

__all__ = ["make_loader", "Loader", "choose_mode"]

"""``StreamingBIOSCAN5M`` (``BIOSCAN5M(..., streaming=True)``): the official API, streamed from shards.

Same constructor, same outputs record for record (modalities, index and text targets, tuple and
dict formats, metasplits, ``reduce_repeated_barcodes``, ``max_nucleotides``), as a PyTorch
``IterableDataset`` that reads shards sequentially instead of opening one file per sample, and adds
what distributed training needs: seeded shuffling (shard order + a buffer of undecoded records),
``set_epoch``, ranks and workers that each read a disjoint, equally sized part of every epoch, and
``state_dict`` / ``load_state_dict`` for exact mid-epoch resume. The math of who reads what is in
:mod:`.partition`, the record stream (which records, in which order, from where) in
:mod:`.records`; this module turns records into the official outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import IterableDataset

from .. import schema
from ..options import Composition, Storage, moved_into
from . import partition
from .outputs import OfficialAPI
from .records import SKIPPED, RecordStream
from .workers import worker_identity


class StreamingBIOSCAN5M(OfficialAPI, IterableDataset):
    r"""BIOSCAN-5M from converted shards, streamed: ``BIOSCAN5M(..., streaming=True)`` returns one.

    Parameters
    ----------
    root : str
        The ``OUT`` folder of ``bioscan5m-hf convert``, or either repo folder inside it, local or a
        URL: ``hf://datasets/ORG/NAME[@rev]``, ``https://...`` (any static file server), ``s3://``,
        ``gs://`` (where s3fs / gcsfs are installed). Remote shards are streamed, never fully
        downloaded unless cached.
    split : str, default="train"
        A split (``"pretrain"``, ``"train"``, ``"val"``, ``"test"``, ``"key_unseen"``, ``"val_unseen"``,
        ``"test_unseen"``, ``"other_heldout"``), a metasplit (``"all"``, ``"seen"``, ``"unseen"``),
        the alias ``"validation"``, or a ``+``-joined list such as ``"pretrain+train"``.
    modality : str or Iterable[str], default=("image", "dna")
        ``"image"``, ``"dna"`` (aliases ``"dna_barcode"``, ``"barcode"``), or any metadata column
        (e.g. ``"coord-lat"``), or ``"<target>_index"``, ``"image_path"`` as in the official loader.
        Without ``"image"``, no image bytes are read at all.
    image_package : str, default="cropped_256"
        ``"cropped_256"``, ``"original_256"``, ``"cropped"`` or ``"original_full"`` (as converted).
    reduce_repeated_barcodes : bool, default=False
        Keep one record per barcode (after truncation, trailing ``N`` stripped), chosen as the
        official loader does over the whole release.
    max_nucleotides : int or None, default=660
        Truncate barcodes to this many nucleotides; ``None`` keeps them whole.
    target_type : str or Iterable[str], default="species"
        Ranks ``"phylum"`` ... ``"species"``, or ``"dna_bin"`` (alias ``"uri"``); a list gives tuples.
    target_format : {"index", "text"}, default="index"
        Indices are the official category codes (sorted labels of the whole release); missing is ``-1``.
    output_format : {"tuple", "dict"}, default="tuple"
    transform, dna_transform, target_transform : callable, optional
        Applied to the PIL image, the barcode string and the target, as in the official loader.
    download : bool, default=False
        Accepted for compatibility; nothing needs downloading, shards are streamed.
    shuffle : bool, default=False
        Shuffle the shard order per epoch and mix records through a buffer of ``buffer_size``
        undecoded records. Without it, records come in the converted (already random) order.
    seed : int, default=0
    buffer_size : int, optional
        Records in the shuffle buffer; by default 1000, or fewer when the split's shards are smaller,
        so that the first sample never waits for more than one shard per worker.
    rank, world_size : int, optional
        This process's part of the data; default from ``torch.distributed`` or the ``RANK`` and
        ``WORLD_SIZE`` environment variables.
    on_error : {"raise", "skip"}, default="raise"
        A damaged shard (truncated, corrupted, a sample missing a member or with an unexpected one,
        an image that does not decode) raises :class:`ShardError` naming the shard and the member.
        ``"skip"`` skips the damaged records instead, warns naming the shard, and counts them in
        :attr:`skipped` (``{shard: count}``); the epoch is then shorter than ``len()``. Only damaged
        data is skipped: an exception of a transform of yours reaches you unchanged.
    storage : Storage, optional
        How ``root`` is read: a remote root's cache, credentials, retries, read-ahead, checksums
        (:class:`~bioscan5m_hf.Storage`).
    composition : Composition, optional
        What an epoch holds besides every record once: a metadata filter, class-balanced or
        weighted draws, a mixture of roots (:class:`~bioscan5m_hf.Composition`); with a list of
        roots as ``root``, label indices follow the sorted union of their vocabularies.
    even : {"pad", "drop"}, default="pad"
        When records do not divide evenly among ranks: ``"pad"`` repeats the first few records of
        the epoch so every rank yields ``ceil(N / world_size)``; ``"drop"`` leaves the last few out so
        every rank yields ``floor(N / world_size)``. Either way every rank yields the same count, so
        DDP never waits on a rank with fewer batches.
    """

    @moved_into(Storage, Composition)
    def __init__(self, root, split: str = "train", modality: str | Iterable[str] = ("image", "dna"),
                 image_package: str = schema.DEFAULT_PACKAGE, reduce_repeated_barcodes: bool = False,
                 max_nucleotides: int | None = 660, target_type: str | Iterable[str] = "species",
                 target_format: str = "index", output_format: str = "tuple", transform: Callable | None = None,
                 dna_transform: Callable | None = None, target_transform: Callable | None = None,
                 download: bool = False, *, shuffle: bool = False, seed: int = 0, buffer_size: int | None = None,
                 rank: int | None = None, world_size: int | None = None, even: str = "pad",
                 on_error: str = "raise", storage: Storage | None = None,
                 composition: Composition | None = None) -> None:
        super().__init__()
        self.configure(root, split, modality, image_package, reduce_repeated_barcodes, max_nucleotides, target_type,
                       target_format, output_format, transform, dna_transform, target_transform)
        self.records = RecordStream(
            root, schema.explode_split(split), columns=self.outputs.columns, image=self.outputs.image,
            image_package=image_package, reduce_repeated_barcodes=reduce_repeated_barcodes,
            max_nucleotides=max_nucleotides, shuffle=shuffle, seed=seed, buffer_size=buffer_size, rank=rank,
            world_size=world_size, even=even, on_error=on_error, storage=storage, composition=composition)
        self.outputs.labels = self.records.labels
        self.outputs.mark_padding = self.records.world_size > 1
        self.epoch = 0
        self.yielded = 0  # samples of this epoch (phase) already yielded by this process
        self.phases: list[partition.Phase] = []  # earlier phases of this epoch (elastic resume)
        self._worker_resume: dict[tuple[int, int], int] = {}  # set in a worker by StatefulDataLoader

    @property
    def skipped(self) -> dict[str, int]:
        """Records skipped as damaged under ``on_error="skip"``: ``{shard: count}``."""
        return self.records.skipped

    @property
    def num_records(self) -> int:
        """Records of the split (or metasplit) over all ranks."""
        return self.records.num_records

    @property
    def rank(self) -> int:
        return self.records.rank

    @property
    def world_size(self) -> int:
        return self.records.world_size

    # ---------------------------------------------------------------------------------------------
    # Epochs, ranks, workers, resume

    def __len__(self) -> int:
        """Records this rank yields per epoch (all records when ``world_size`` is 1)."""
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)
        self.yielded = 0
        self.phases = []

    def state_dict(self) -> dict:
        """Where iteration stands: the epoch, the samples yielded in it, its earlier phases, the topology
        and what the data is. Iterated directly, rank 0's is enough for every rank. Inside a
        DataLoader worker (``torchdata``'s ``StatefulDataLoader`` asks each worker) it is that
        worker's, and ``load_state_dict`` there resumes that worker exactly."""
        worker, num_workers = worker_identity()
        in_worker = torch.utils.data.get_worker_info() is not None
        return {"epoch": self.epoch, "yielded": self.yielded,
                "phases": [[p.world_size, p.num_workers, list(p.done)] for p in self.phases],
                "worker": [worker, num_workers] if in_worker else None,
                **self.records.topology(), **self.records.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields exactly what would have followed,
        on this topology or another world size (elastic: every record not yet yielded comes once)."""
        mine = self.records.fingerprint()
        differ = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differ:
            raise ValueError(f"state_dict was taken from a differently configured dataset: {differ}")
        self.epoch = int(state["epoch"])
        phases = [partition.Phase(w, n, tuple(d)) for w, n, d in state.get("phases", [])]
        if state.get("worker") is not None:  # a DataLoader worker's own state
            worker, num_workers = state["worker"]
            self.phases, self.yielded = phases, 0
            self._worker_resume = {(worker, num_workers): int(state["yielded"])}
            return
        if state.get("world_size", self.world_size) == self.world_size or not int(state["yielded"]):
            self.phases, self.yielded = phases, int(state["yielded"])
            return
        self.phases = phases + [partition.Phase(int(state["world_size"]), 1, (int(state["yielded"]),))]
        self.yielded = 0

    def __iter__(self) -> Iterator:
        worker, num_workers = worker_identity()
        epoch = self.epoch
        if torch.utils.data.get_worker_info() is not None:  # a worker starts where its own state says
            self.yielded = self._worker_resume.pop((worker, num_workers), 0)
        done = self.yielded
        for out in self.records.samples(self.outputs, epoch, worker, num_workers, done, self.phases):
            self.yielded += 1
            if out is not SKIPPED:
                yield out
        self.epoch, self.yielded, self.phases = epoch + 1, 0, []

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, modality={self.modality!r}, "
                f"records={self.records.num_records}, shards={len(self.records.shards)}, "
                f"rank={self.rank}/{self.world_size})")

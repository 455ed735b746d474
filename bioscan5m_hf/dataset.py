"""``BIOSCAN5M``: the official ``bioscan_dataset.BIOSCAN5M`` API, streaming from converted shards.

Same constructor, same outputs record for record (modalities, index and text targets, tuple and
dict formats, metasplits, ``reduce_repeated_barcodes``, ``max_nucleotides``), as a PyTorch
``IterableDataset`` that reads shards sequentially instead of opening one file per sample, and adds
what distributed training needs: seeded shuffling (shard order + a buffer of undecoded records),
``set_epoch``, ranks and workers that each read a disjoint, equally sized part of every epoch, and
``state_dict`` / ``load_state_dict`` for exact mid-epoch resume. The math of who reads what is in
:mod:`bioscan5m_hf.partition`; the I/O in :mod:`bioscan5m_hf.shards`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from . import partition, schema
from .shards import Repo, ShardError, ShardInfo, open_image, open_repos, read_column, read_records
from .storage import RetryPolicy
from .transforms import check_image_size

DNA_MODALITIES = ("dna", "dna_barcode", "barcode")
DEFAULT_BUFFER = 1000


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class BIOSCAN5M(IterableDataset):
    r"""BIOSCAN-5M from converted shards, as a streaming drop-in for ``bioscan_dataset.BIOSCAN5M``.

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
        :attr:`skipped` (``{shard: count}``); the epoch is then shorter than ``len()``.
    cache_dir, cache_limit : optional
        For a remote ``root``: keep verified shards in this folder, at most ``cache_limit`` bytes
        (least recently used evicted), so later epochs read from disk. Safe to share between
        workers and jobs.
    storage_options : dict, optional
        Passed to fsspec for remote roots (credentials, endpoints).
    verify : bool, default=False
        Check streamed (uncached) shards against the manifest's sha256 when read to the end; cached
        shards are always checked.
    readahead : int, default=1
        With a cache: shards fetched ahead in the background per worker (one request at a time
        each, besides the shard being read).
    retry : RetryPolicy, optional
        Retries of transient network faults (tries, backoff, the stall timeout).
    even : {"pad", "drop"}, default="pad"
        When records do not divide evenly among ranks: ``"pad"`` repeats the first few records of
        the epoch so every rank yields ``ceil(N / world_size)``; ``"drop"`` leaves the last few out so
        every rank yields ``floor(N / world_size)``. Either way every rank yields the same count, so
        DDP never waits on a rank with fewer batches.
    """

    def __init__(self, root, split: str = "train", modality: str | Iterable[str] = ("image", "dna"),
                 image_package: str = schema.DEFAULT_PACKAGE, reduce_repeated_barcodes: bool = False,
                 max_nucleotides: int | None = 660, target_type: str | Iterable[str] = "species",
                 target_format: str = "index", output_format: str = "tuple", transform: Callable | None = None,
                 dna_transform: Callable | None = None, target_transform: Callable | None = None,
                 download: bool = False, *, shuffle: bool = False, seed: int = 0, buffer_size: int | None = None,
                 rank: int | None = None, world_size: int | None = None, even: str = "pad",
                 on_error: str = "raise", cache_dir: str | None = None, cache_limit: int | None = None,
                 storage_options: dict | None = None, verify: bool = False,
                 retry: RetryPolicy | None = None, readahead: int = 1) -> None:
        super().__init__()
        self.root = root
        self.split = schema.SPLIT_ALIASES.get(split, split)
        self.splits = schema.explode_split(split)
        self.modality = [modality] if isinstance(modality, str) else list(modality)
        targets = [target_type] if isinstance(target_type, str) else list(target_type)
        self.target_type = [schema.TARGET_ALIASES.get(t, t) for t in targets]
        for t in self.target_type:
            if t not in schema.LABEL_COLUMNS:
                raise ValueError(f"unknown target_type {t!r}; choose from {', '.join(schema.LABEL_COLUMNS)}")
        if target_format not in ("index", "text"):
            raise ValueError(f"Unknown target_format: {target_format!r}")
        self.target_format = target_format
        self.output_format = "dict" if output_format == "dictionary" else output_format
        if self.output_format not in ("tuple", "dict"):
            raise ValueError(f"Unknown output_format: {output_format!r}")
        if not self.target_type and target_transform is not None:
            raise RuntimeError("target_transform is specified but target_type is empty")
        self.image_package = image_package
        self.reduce_repeated_barcodes = reduce_repeated_barcodes
        self.max_nucleotides = max_nucleotides
        self.transform, self.dna_transform, self.target_transform = transform, dna_transform, target_transform
        self.shuffle, self.seed, self.buffer_size = shuffle, seed, buffer_size
        default_rank, default_world = _default_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.even = even
        partition.rank_block(0, self.rank, self.world_size, even)  # validates rank and policy
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: dict[str, int] = {}

        self.repos = open_repos(root, storage_options=storage_options, cache_dir=cache_dir, cache_limit=cache_limit,
                                verify=verify, retry=retry)
        self.with_image = "image" in self.modality
        self.repo, self.config = self._choose_source()
        self.shard_list: list[ShardInfo] = self.repo.shards(self.config, self.splits)
        if not self.shard_list:
            raise ValueError(f"{self.repo.root}: config {self.config!r} has no records for split {split!r}")
        self.vocabularies: dict[str, list[str]] = self.repo.manifest["vocabularies"]
        self._label_index: dict[str, dict[str, int]] = {}
        self.columns = self._columns()
        self.selection: list[np.ndarray] | None = self._reduce() if reduce_repeated_barcodes else None
        self.shard_sizes = ([len(s) for s in self.selection] if self.selection is not None
                            else [s.num_records for s in self.shard_list])
        self.num_records = int(sum(self.shard_sizes))
        if self.buffer_size is None:
            self.buffer_size = max(1, min(DEFAULT_BUFFER, min(self.shard_sizes)))
        self.epoch = 0
        self._yielded = 0
        self._shared = None  # set by make_loader: epoch and per-worker resume points shared with workers
        self.readahead = readahead
        self._lean = False  # make_loader: dict samples with just what its collate reads
        self._executor = None
        self._executor_pid = None

    # ---------------------------------------------------------------------------------------------
    # Set-up

    def _choose_source(self) -> tuple[Repo, str]:
        order = [self.repos[f] for f in ("parquet", "webdataset") if f in self.repos]
        config = self.image_package if self.with_image else schema.METADATA_CONFIG
        for repo in order:
            if config in repo.configs:
                return repo, config
        if not self.with_image:  # a tar repo: read the metadata members of an image config
            for repo in order:
                for name in repo.configs:
                    if all(s in repo.configs[name] for s in self.splits):
                        return repo, name
        have = {r.name: list(r.configs) for r in order}
        raise ValueError(f"{self.root}: no config {config!r} converted (have {have})")

    def _columns(self) -> list[str]:
        known = set(schema.COLUMN_NAMES)
        cols = {"processid"}
        for m in self.modality:
            if m in DNA_MODALITIES:
                cols.add("dna_barcode")
            elif m == "image":
                pass
            elif m == "image_path":
                cols.update(("split", "chunk"))
            elif m.endswith("_index") and m[: -len("_index")] in schema.LABEL_COLUMNS:
                cols.add(m[: -len("_index")])
            elif m in known:
                cols.add(m)
            else:
                raise ValueError(f"Unfamiliar modality: {m!r}")
        cols.update(self.target_type)
        return [c for c in schema.COLUMN_NAMES if c in cols]

    def _reduce(self) -> list[np.ndarray]:
        """Per shard, the row offsets the official ``reduce_repeated_barcodes`` keeps."""
        keep = repeated_barcode_keep_set(self.repos, self.max_nucleotides)
        return [np.array([i for i, pid in enumerate(read_column(s, "processid")) if pid in keep], dtype=np.int64)
                for s in self.shard_list]

    # ---------------------------------------------------------------------------------------------
    # Epochs, ranks, workers, resume

    def __len__(self) -> int:
        """Records this rank yields per epoch (all records when ``world_size`` is 1)."""
        return partition.epoch_count(self.num_records, self.world_size, self.even)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)
        self._yielded = 0

    def worker_counts(self, num_workers: int) -> list[int]:
        """Samples each of ``num_workers`` DataLoader workers yields per epoch on this rank."""
        count = len(self)
        return [partition.worker_block(count, w, max(1, num_workers))[1] for w in range(max(1, num_workers))]

    def plan(self, worker: int = 0, num_workers: int = 1, epoch: int | None = None) -> partition.WorkerPlan:
        return partition.worker_plan(
            self.shard_sizes, seed=self.seed, epoch=self.epoch if epoch is None else epoch, shuffle=self.shuffle,
            rank=self.rank, world_size=self.world_size, worker=worker, num_workers=num_workers, even=self.even,
            buffer_size=self.buffer_size)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_executor"] = state["_executor_pid"] = None
        return state

    def _fingerprint(self) -> dict:
        return {"split": list(self.splits), "config": self.config, "num_records": self.num_records,
                "seed": self.seed, "shuffle": self.shuffle, "buffer_size": self.buffer_size,
                "rank": self.rank, "world_size": self.world_size, "even": self.even}

    def state_dict(self) -> dict:
        """Where iteration stands: the epoch and the samples yielded in it (iterating directly)."""
        return {"epoch": self.epoch, "yielded": self._yielded, **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields exactly what would have followed."""
        mine = self._fingerprint()
        differ = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differ:
            raise ValueError(f"state_dict was taken from a differently configured dataset: {differ}")
        self.epoch, self._yielded = int(state["epoch"]), int(state["yielded"])

    def _position(self, worker: int, num_workers: int) -> tuple[int, int, int]:
        """(epoch, logical worker, samples already yielded) for a starting iteration."""
        if self._shared is not None:
            return self._shared.read(worker)
        if num_workers > 1:
            return self.epoch, worker, 0
        return self.epoch, worker, self._yielded

    # ---------------------------------------------------------------------------------------------
    # Iteration

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, worker, done = self._position(worker, num_workers)
        plan = self.plan(worker, num_workers, epoch)
        in_main = info is None and self._shared is None
        for record in self._records(plan, done):
            out = self._safe_output(record) if record is not None else _SKIP
            if in_main:
                self._yielded += 1
            if out is not _SKIP:
                yield out
        if in_main:
            self.epoch, self._yielded = epoch + 1, 0

    def _records(self, plan: partition.WorkerPlan, done: int) -> Iterator[dict | None]:
        """Raw records of ``plan`` in emission order, from the ``done``-th on, with bounded buffering
        (None for a record lost to a damaged shard under ``on_error="skip"``)."""
        start, already = partition.resume_point(plan.emission, done)
        reads = self._read(plan, start, set(already.tolist()))
        pending: dict[int, dict] = {}
        for t in range(done, len(plan)):
            need = int(plan.emission[t])
            while need not in pending:
                position, record = next(reads)
                pending[position] = record
            yield pending.pop(need)

    def _read(self, plan: partition.WorkerPlan, start: int, skip: set[int]) -> Iterator[tuple[int, dict]]:
        """(read position, raw record) from ``start`` on, one visit per run of the same shard.

        With a shard cache, the next ``readahead`` shards are fetched in the background once half of
        the current visit is read, so a worker rarely waits for the network."""
        visits = partition.visits(plan, start)
        for k, (i, j) in enumerate(visits):
            shard = int(plan.shards[i])
            positions = [p for p in range(i, j) if p not in skip]
            offsets = plan.offsets[positions]
            if self.selection is not None:
                offsets = self.selection[shard][offsets]
            info = self.shard_list[shard]
            upcoming = [self.shard_list[int(plan.shards[a])] for a, _ in visits[k + 1: k + 1 + self.readahead]]
            records = read_records(info, np.asarray(offsets, dtype=np.int64), self.columns, self.with_image)
            got = 0
            where = info.path
            try:
                for position, record in zip(positions, records):
                    record["__shard__"] = where
                    yield position, record
                    got += 1
                    if got == len(positions) // 2 + 1:
                        self._prefetch(upcoming)
            except ShardError as e:
                if self.on_error == "raise":
                    raise
                self._skip(info.path, len(positions) - got, str(e))
                for position in positions[got:]:
                    yield position, None

    def _prefetch(self, shards: list[ShardInfo]) -> None:
        """Fetch shards into the cache in the background (remote repos with a cache only)."""
        store = self.repo.store
        if not shards or not store.remote or store.cache is None:
            return
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bioscan5m-readahead")
            self._executor_pid = os.getpid()
        for shard in shards:
            self._executor.submit(_warm, shard)

    def _skip(self, shard: str, count: int, why: str) -> None:
        self.skipped[shard] = self.skipped.get(shard, 0) + count
        warnings.warn(f"skipped {count} record(s) of {shard}: {why}", RuntimeWarning, stacklevel=3)

    def _safe_output(self, record: dict):
        try:
            return self._output(record)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            if "image" not in record:  # not damage: a bug or a bad argument
                raise
            where = f"{record['__shard__']}: member {record['processid']}.{schema.IMAGE_EXTENSION}"
            if self.on_error == "raise":
                raise ShardError(f"{where}: image does not decode ({e})") from None
            self._skip(record["__shard__"], 1, f"member {record['processid']}.jpg does not decode ({e})")
            return _SKIP

    # ---------------------------------------------------------------------------------------------
    # Outputs, as the official loader makes them

    def _index(self, column: str, label: str | None) -> int:
        if label is None:
            return -1
        table = self._label_index.get(column)
        if table is None:
            table = self._label_index[column] = {v: i for i, v in enumerate(self.vocabularies[column])}
        return table[label]

    def _dna(self, record: dict) -> str:
        dna = record["dna_barcode"]
        return dna if self.max_nucleotides is None else dna[: self.max_nucleotides]

    def _output(self, record: dict) -> Any:
        if self._lean:
            return self._lean_output(record)
        values = []
        for m in self.modality:
            if m == "image":
                x = open_image(record["image"])
                check_image_size(x)
                if self.transform is not None:
                    x = self.transform(x)
            elif m in DNA_MODALITIES:
                x = self._dna(record)
                if self.dna_transform is not None:
                    x = self.dna_transform(x)
            elif m == "image_path":
                chunk = record["chunk"]
                x = "/".join([record["split"], *([chunk] if chunk else []), f"{record['processid']}.jpg"])
            elif m.endswith("_index") and m[: -len("_index")] in schema.LABEL_COLUMNS:
                x = self._index(m[: -len("_index")], record[m[: -len("_index")]])
            else:
                x = _missing_as_nan(record[m])
            values.append((m, x))
        target = []
        for t in self.target_type:
            label = record[t]
            target.append(self._index(t, label) if self.target_format == "index" else _missing_as_nan(label))
            if self.output_format == "dict":
                values.append((t, _missing_as_nan(label)))
                values.append((f"{t}_index", self._index(t, label)))
        if target:
            target = tuple(target) if len(target) > 1 else target[0]
            if self.target_transform is not None:
                target = self.target_transform(target)
        else:
            target = None
        values.append(("target", target))
        return tuple(v for _, v in values) if self.output_format == "tuple" else dict(values)

    def _lean_output(self, record: dict) -> dict:
        """What ``make_loader``'s collate needs, without the official output's extra keys."""
        out = {"processid": record["processid"]}
        for m in self.modality:
            if m == "image":
                if getattr(self.transform, "takes_bytes", False):  # make_loader's decoder: no PIL detour
                    out["image"] = self.transform(record["image"])
                else:
                    image = open_image(record["image"])
                    check_image_size(image)
                    out["image"] = self.transform(image) if self.transform is not None else image
            elif m in DNA_MODALITIES:
                out[m] = self._dna(record)
            elif m != "processid":
                out[m] = _missing_as_nan(record[m])
        for t in self.target_type:
            out[f"{t}_index"] = self._index(t, record[t])
        return out

    # ---------------------------------------------------------------------------------------------
    # Label look-up, as in the official loader

    def _column(self, column: str | None) -> str:
        if column is not None:
            return schema.TARGET_ALIASES.get(column, column)
        if len(self.target_type) == 1:
            return self.target_type[0]
        raise ValueError("column must be specified if there isn't a single target_type")

    def index2label(self, index, column: str | None = None):
        """Text label(s) of target index(es); negative indices (missing) map to ``""``."""
        labels = self.vocabularies[self._column(column)]
        if not hasattr(index, "__len__"):
            return "" if index < 0 else labels[index]
        index = np.asarray(index)
        return np.array(["" if i < 0 else labels[i] for i in index.tolist()], dtype=object)

    def label2index(self, label, column: str | None = None):
        """Index(es) of text label(s); ``""`` (missing) maps to ``-1``."""
        column = self._column(column)
        single = isinstance(label, str)
        out = []
        for lab in [label] if single else label:
            try:
                out.append(-1 if lab == "" else self._index(column, lab))
            except KeyError:
                raise KeyError(f"Label {lab!r} not found in metadata column {column!r}") from None
        return out[0] if single else np.asarray(out)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, modality={self.modality!r}, "
                f"records={self.num_records}, shards={len(self.shard_list)}, rank={self.rank}/{self.world_size})")


_SKIP = object()


def _warm(shard: ShardInfo) -> None:
    """Bring a shard into the cache; a failure here is left for the real read to report."""
    try:
        shard.store.cache.get(shard.store, shard.rel, shard.num_bytes, shard.sha256)
    except Exception:  # noqa: BLE001
        pass


def _missing_as_nan(value):
    return math.nan if value is None else value


def repeated_barcode_keep_set(repos: dict[str, Repo], max_nucleotides: int | None) -> set[str]:
    """The ``processid``s the official ``reduce_repeated_barcodes=True`` keeps, over the whole release.

    Official semantics: truncate barcodes to ``max_nucleotides``, shuffle the rows of the whole CSV
    with ``DataFrame.sample(frac=1, random_state=0)`` (numpy ``RandomState(0).permutation``), keep
    the first row of each barcode with trailing ``N`` stripped.
    """
    repo = repos.get("parquet") if "parquet" in repos and schema.METADATA_CONFIG in repos["parquet"].configs else None
    repo = repo or next(iter(repos.values()))
    config = schema.METADATA_CONFIG if schema.METADATA_CONFIG in repo.configs else next(iter(repo.configs))
    barcode: dict[str, str] = {}
    for shard in repo.shards(config, schema.SPLITS):
        for r in read_records(shard, np.arange(shard.num_records), ["processid", "dna_barcode"], image=False):
            barcode[r["processid"]] = r["dna_barcode"]
    order = repo.read_table(schema.CSV_ORDER, ["processid"]).column("processid").to_pylist()
    missing = len(order) - len(barcode)
    if missing:
        raise ValueError(f"{repo.root}: reduce_repeated_barcodes needs every record's barcode, but config "
                         f"{config!r} lacks {missing} of {len(order)}")
    stripped = [(barcode[p] if max_nucleotides is None else barcode[p][:max_nucleotides]).rstrip("N") for p in order]
    seen: set[str] = set()
    keep: set[str] = set()
    for row in np.random.RandomState(0).permutation(len(order)).tolist():
        if stripped[row] not in seen:
            seen.add(stripped[row])
            keep.add(order[row])
    return keep

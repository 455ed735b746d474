"""The record stream: which records of a converted repo, in which order, from where, and where to
resume. Both the official-API dataset (:class:`~bioscan5m_hf.stream.dataset.BIOSCAN5M`) and
``make_loader`` are built on it; neither looks inside the other.

A :class:`RecordStream` knows the split's shards (from the manifest), the records kept
(``reduce_repeated_barcodes``), the epoch's order and each worker's part of it
(:mod:`.partition`, pure), and reads raw records (metadata values and undecoded JPEG bytes) in that
order with bounded buffering. What a record becomes (a PIL image and a label, or tensors) is the
caller's function, applied through :meth:`RecordStream.samples`, which also turns a record lost to a
damaged shard into :data:`SKIPPED` under ``on_error="skip"``.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .. import schema
from ..errors import ShardError
from ..options import Composition, Storage
from ..repo import record_index
from ..repo.manifest import Repo, ShardInfo, open_repos
from ..repo.readers import SparseRows, arrow_indices, parquet_rows, read_column, read_records, read_table
from ..util import check_choice
from . import partition, sampling
from .metadata import open_release, reduced_rows
from .outputs import DamagedImage, Labels
from .workers import worker_identity

DEFAULT_BUFFER = 1000
#: What :meth:`RecordStream.samples` yields for a record lost to damage under ``on_error="skip"``.
SKIPPED = object()


def merged_vocabularies(vocabularies: Sequence[dict[str, list[str]]]) -> dict[str, list[str]]:
    """One repo's label vocabularies, or for a mixture of repos whose vocabularies differ, the sorted
    union per rank (so an index means the same label whichever repo a record comes from)."""
    first = vocabularies[0]
    if all(v == first for v in vocabularies[1:]):
        return first
    ranks = dict.fromkeys(r for v in vocabularies for r in v)
    return {r: sorted(set().union(*(v.get(r, []) for v in vocabularies))) for r in ranks}


def default_rank_world() -> tuple[int, int]:
    """This process's (rank, world size): ``torch.distributed`` if initialised, else ``RANK`` and
    ``WORLD_SIZE`` from the environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass(frozen=True)
class Located:
    """Some rows of one shard found through the per-record index: ``rows`` (ascending offsets in
    the shard), where their JPEG bytes are in a Parquet file (``offsets``, ``sizes``; None where the
    index does not place them) and their rows of the release table (``release_rows``, so their
    metadata is read from its mapped copy, never copied up front)."""

    rows: np.ndarray
    offsets: np.ndarray | None
    sizes: np.ndarray | None
    release_rows: np.ndarray


def kept_rows(repos: dict[str, Repo], repo: Repo, config: str, splits: Sequence[str], keep,
              storage: Storage) -> dict[str, Located] | None:
    """The records of ``config`` in ``repo`` (for ``splits``) whose metadata pass ``keep`` (None:
    every record), by shard path, found without reading ``repo``'s shards: the splits' rows of the
    release table (:func:`~.metadata.open_release`: read once into the cache), matched to shard
    rows through the per-record index (CSV row -> shard, row, and where the image's bytes are).
    None where the index or the release table is missing (repos converted before them): the caller
    then reads the shards' metadata."""
    files = {f: r.manifest.get("files", {}) for f, r in repos.items()}
    if config == schema.METADATA_CONFIG or record_index.index_relpath(config) not in files[repo.fmt] \
            or not any(schema.RELEASE_TABLE in f for f in files.values()):
        return None  # the stream's own shards are then metadata alone: read as they are
    folder = storage.local_folder() if repo.store.remote else None
    release = open_release(repos, splits, storage)
    passed = (np.flatnonzero(sampling.evaluate(keep, release.table)) if keep is not None
              else np.arange(release.table.num_rows))
    kept = release.csv_row[passed]
    index = record_index.read_record_index(repo, config, folder)
    shard, row = index["shard"][kept], index["row"][kept]
    offset, size = (index["offset"][kept], index["size"][kept]) if "offset" in index else (None, None)
    names = [s.rel for s in repo.shards(config, schema.SPLITS)]
    out = {}
    order = np.lexsort((row, shard))  # the kept records by shard, then row: one sort, not one scan a shard
    order = order[shard[order] >= 0]
    for mine in np.split(order, np.flatnonzero(np.diff(shard[order])) + 1) if len(order) else []:
        placed = offset is not None and bool((offset[mine] >= 0).all())
        out[names[int(shard[mine[0]])]] = Located(row[mine].astype(np.int64), offset[mine] if placed else None,
                                                  size[mine] if placed else None, passed[mine])
    return out


class RecordStream:
    """The records of ``splits`` in one config of a converted repo, as an epoch-ordered stream.

    Parameters are those of :class:`~bioscan5m_hf.stream.dataset.BIOSCAN5M` that decide which
    records are read, in which order and how: ``columns`` are the metadata columns each record
    carries (``processid`` always), ``image`` whether it carries its JPEG bytes.
    """

    def __init__(self, root, splits: Sequence[str], *, columns: Iterable[str], image: bool,
                 image_package: str = schema.DEFAULT_PACKAGE, reduce_repeated_barcodes: bool = False,
                 max_nucleotides: int | None = 660, shuffle: bool = False, seed: int = 0,
                 buffer_size: int | None = None, rank: int | None = None, world_size: int | None = None,
                 even: str = "pad", on_error: str = "raise", storage: Storage | None = None,
                 composition: Composition | None = None) -> None:
        self.root = root
        self.splits = tuple(splits)
        self.image = image
        wanted = {"processid", *columns}
        self.columns = [c for c in schema.COLUMN_NAMES if c in wanted]
        self.max_nucleotides = max_nucleotides
        self.shuffle, self.seed = shuffle, seed
        default_rank, default_world = default_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.even = even
        partition.rank_block(0, self.rank, self.world_size, even)  # validates rank and policy
        self.on_error = check_choice(on_error, "on_error", ("raise", "skip"))
        storage, composition = storage or Storage(), composition or Composition()
        self.readahead = storage.readahead
        self.skipped: dict[str, int] = {}

        # One root, or several converted repos read as one stream (a mixture; see source_weights).
        roots = list(root) if isinstance(root, (list, tuple)) else [root]
        if not roots:
            raise ValueError("root: no repo given")
        self.sources: list[tuple[dict[str, Repo], Repo, str]] = []
        self.shards: list[ShardInfo] = []
        self.shard_source: list[int] = []  # which root each shard comes from
        for k, one in enumerate(roots):
            repos = open_repos(one, storage)
            repo, config = self._choose_source(repos, one, image_package)
            shards = repo.shards(config, self.splits)
            if not shards:
                raise ValueError(f"{repo.root}: config {config!r} has no records for split {'+'.join(self.splits)!r}")
            self.sources.append((repos, repo, config))
            self.shards += shards
            self.shard_source += [k] * len(shards)
        self.repos, self.repo, self.config = self.sources[0]
        self.labels = Labels(merged_vocabularies([repo.manifest["vocabularies"] for _, repo, _ in self.sources]))
        self.selection: list[np.ndarray] | None = self._reduce(storage) if reduce_repeated_barcodes else None
        self.filter = composition.filter
        if composition.source_weights is not None and len(composition.source_weights) != len(roots):
            raise ValueError(f"source_weights has {len(composition.source_weights)} weights for {len(roots)} roots")
        self.sampling = sampling.Sampling.make(composition)
        # A filter or a drawn epoch reads some records of each shard: where they are (and their
        # metadata, in the release table), so remote Parquet shards are read only at those bytes.
        self.storage = storage
        self.located: dict[str, tuple[int, Located]] = {}
        self._releases: dict[int, pa.Table] = {}  # each source's mapped release rows, opened per process
        if self.filter is not None or self.sampling is not None:
            self.selection = self._filter(self.filter, storage)
        self.shard_sizes = ([len(s) for s in self.selection] if self.selection is not None
                            else [s.num_records for s in self.shards])
        self.num_records = int(sum(self.shard_sizes))
        self.weights = self.sampling.weights(self) if self.sampling is not None else None
        self.epoch_size = self.sampling.samples_per_epoch if self.sampling is not None else self.num_records
        self.buffer_size = (buffer_size if buffer_size is not None
                            else max(1, min(DEFAULT_BUFFER, min([n for n in self.shard_sizes if n] or [1]))))
        self._executor = None
        self._executor_pid = None
        self._live_cache = None
        self._live_lock = threading.Lock()  # thread workers share this stream: one computes, the others wait

    # -- set-up ----------------------------------------------------------------------------------------

    @property
    def formats(self) -> set[str]:
        """The formats the stream's shards are in (``{"parquet"}`` lets DNA-only batches skip records)."""
        return {repo.fmt for _, repo, _ in self.sources}

    def _choose_source(self, repos: dict[str, Repo], root, image_package: str) -> tuple[Repo, str]:
        order = [repos[f] for f in ("parquet", "webdataset") if f in repos]
        config = image_package if self.image else schema.METADATA_CONFIG
        for repo in order:
            if config in repo.configs:
                return repo, config
        if not self.image:  # a tar repo: read the metadata members of an image config
            for repo in order:
                for name in repo.configs:
                    if all(s in repo.configs[name] for s in self.splits):
                        return repo, name
        have = {r.name: list(r.configs) for r in order}
        raise ValueError(f"{root}: no config {config!r} converted (have {have})")

    def _reduce(self, storage: Storage) -> list[np.ndarray]:
        """Per shard, the row offsets the official ``reduce_repeated_barcodes`` keeps (over its own
        release, for each root of a mixture)."""
        keep = []
        for repos, _, _ in self.sources:
            release = open_release(repos, schema.SPLITS, storage)
            rows = reduced_rows(release.table.column("dna_barcode"), self.max_nucleotides, release.csv_row)
            table_row = np.empty(len(release.csv_row), dtype=np.int64)
            table_row[release.csv_row] = np.arange(len(release.csv_row))
            keep.append(set(release.table.column("processid").take(pa.array(table_row[rows])).to_pylist()))
        return [np.array([i for i, pid in enumerate(read_column(s, "processid")) if pid in keep[k]], dtype=np.int64)
                for s, k in zip(self.shards, self.shard_source)]

    def _filter(self, keep, storage: Storage) -> list[np.ndarray] | None:
        """Per shard, the row offsets (of those already selected) whose metadata pass ``keep`` (None:
        every one; only located). The metadata is read once, from the release table, mapped to shard
        rows by the record index (:func:`kept_rows`), else from the shards' own metadata columns, so
        no image byte of a record left out is read either way."""
        by_index = [kept_rows(repos, repo, config, self.splits, keep, storage) for repos, repo, config in self.sources]
        if all(k is not None for k in by_index):
            out = []
            for k, (shard, source) in enumerate(zip(self.shards, self.shard_source)):
                found = by_index[source].get(shard.rel, Located(*(np.zeros(0, dtype=np.int64),) * 4))
                self.located[shard.rel] = (source, found)
                out.append(np.intersect1d(self.selection[k], found.rows) if self.selection is not None else found.rows)
            return out if keep is not None else self.selection
        if keep is None:
            return self.selection
        out = []
        for k in range(len(self.shards)):
            rows = self.selection[k] if self.selection is not None else None
            if rows is not None and len(rows) == 0:
                out.append(rows)
                continue
            kept = np.flatnonzero(sampling.evaluate(keep, self.metadata_of(k, sampling.filter_columns(keep))))
            out.append(rows[kept] if rows is not None else kept.astype(np.int64))
        return out

    def metadata_of(self, shard: int, columns: Sequence[str]) -> pa.Table:
        """Metadata ``columns`` of the records of shard ``shard`` that the stream keeps, in order: from
        the release table where the records were located, else read from the shard."""
        rows = self.selection[shard] if self.selection is not None else None
        release = self._located_rows(self.shards[shard], rows if rows is not None else
                                     np.arange(self.shards[shard].num_records))
        if release is not None:
            return release[0].take(arrow_indices(release[1])).select(list(columns))
        table = read_table(self.shards[shard], list(columns))
        return table.take(arrow_indices(rows)) if rows is not None else table

    def _located_rows(self, shard: ShardInfo, offsets: np.ndarray) -> tuple[pa.Table, np.ndarray, np.ndarray] | None:
        """(release table, its rows, positions in the shard's located rows) of rows ``offsets`` of
        ``shard``, where all of them were located; else None."""
        known = self.located.get(shard.rel)
        if known is None or not len(offsets) or not len(known[1].rows):
            return None
        source, found = known
        at = np.minimum(np.searchsorted(found.rows, offsets), len(found.rows) - 1)
        if not bool((found.rows[at] == offsets).all()):
            return None
        if source not in self._releases:
            repos = self.sources[source][0]
            self._releases[source] = open_release(repos, self.splits, self.storage).table
        return self._releases[source], found.release_rows[at], at

    def universe(self, epoch: int) -> np.ndarray | None:
        """The epoch's records as stream positions (None: every record once); see :mod:`.sampling`."""
        if self.sampling is None:
            return None
        return self.sampling.universe(self.weights, self.shard_sizes, seed=self.seed, epoch=epoch,
                                      shuffle=self.shuffle)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_executor"] = state["_executor_pid"] = state["_live_cache"] = None
        state["_releases"] = {}  # mapped: opened again where unpickled
        del state["_live_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _live_lock=threading.Lock())

    # -- sizes, order, resume ----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Records this rank yields per epoch (all records when ``world_size`` is 1)."""
        return partition.epoch_count(self.epoch_size, self.world_size, self.even)

    def _live(self, epoch: int, phases: Sequence[partition.Phase]) -> tuple[partition.Layout, np.ndarray]:
        """The epoch's layout and what ``phases`` left of it (the last one computed is kept)."""
        key = (epoch, tuple(phases))
        with self._live_lock:
            if self._live_cache is None or self._live_cache[0] != key:
                layout = partition.epoch_layout(self.shard_sizes, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                                universe=self.universe(epoch))
                live = partition.live_slots(layout, phases, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                            even=self.even, buffer_size=self.buffer_size)
                self._live_cache = (key, layout, live)
            return self._live_cache[1], self._live_cache[2]

    def live_count(self, epoch: int, phases: Sequence[partition.Phase] = ()) -> int:
        """Records of the epoch not yet yielded after ``phases`` (over all ranks)."""
        return len(self._live(epoch, phases)[1]) if phases else self.epoch_size

    def phase_count(self, epoch: int, phases: Sequence[partition.Phase] = ()) -> int:
        """Records this rank yields in the phase after ``phases`` (``len(self)`` without them)."""
        if not phases:
            return len(self)
        return partition.epoch_count(len(self._live(epoch, phases)[1]), self.world_size, self.even)

    def worker_counts(self, num_workers: int, epoch: int = 0, phases: Sequence[partition.Phase] = ()) -> list[int]:
        """Samples each of ``num_workers`` DataLoader workers yields on this rank in the epoch, or in
        the phase of it after ``phases``."""
        n, count = max(1, num_workers), self.phase_count(epoch, phases)
        return [partition.worker_block(count, w, n)[1] for w in range(n)]

    def worker_plan(self, epoch: int, worker: int = 0, num_workers: int = 1,
                    phases: Sequence[partition.Phase] = ()) -> partition.WorkerPlan:
        layout, live = self._live(epoch, phases)
        return partition.plan_of(layout, live, seed=self.seed, epoch=epoch, shuffle=self.shuffle, rank=self.rank,
                                 world_size=self.world_size, worker=worker, num_workers=num_workers, even=self.even,
                                 buffer_size=self.buffer_size, phase=len(phases))

    def fingerprint(self) -> dict:
        """What a checkpoint of this stream is only valid for (any topology: see :meth:`topology`)."""
        return {"split": list(self.splits), "config": self.config, "num_records": self.num_records,
                "seed": self.seed, "shuffle": self.shuffle, "buffer_size": self.buffer_size, "even": self.even,
                "sampling": self.sampling.describe() if self.sampling is not None else None,
                # Checkpoints taken before the windowed sort (a simulated buffer's order) lack this key,
                # so they are refused rather than resumed into another order.
                **({"shuffle_order": "windowed-sort"} if self.shuffle and self.buffer_size > 1 else {})}

    def topology(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size}

    # -- reading ---------------------------------------------------------------------------------------

    def samples(self, fn: Callable[[dict], Any], epoch: int, worker: int, num_workers: int,
                done: int = 0, phases: Sequence[partition.Phase] = ()) -> Iterator[Any]:
        """``fn(record)`` for each record a worker yields in ``epoch`` (in the phase after ``phases``),
        from its ``done``-th on; a record repeated only to even out the ranks has ``__padding__`` set.

        A record lost to damage (an unreadable shard, an image ``fn``'s decode step refuses with
        :class:`~.outputs.DamagedImage`) raises :class:`ShardError` naming the shard and member, or
        under ``on_error="skip"`` comes out as :data:`SKIPPED` (so callers can still count
        positions) and is counted in :attr:`skipped`. Anything else ``fn`` raises (a user's
        transform) reaches the caller unchanged."""
        for record in self.records(self.worker_plan(epoch, worker, num_workers, phases), done):
            if record is None:
                yield SKIPPED
                continue
            try:
                out = fn(record)
            except DamagedImage as e:
                if self.on_error == "raise":
                    raise
                self.skip(e.shard, 1, f"member {e.member} does not decode ({e.cause})")
                out = SKIPPED
            yield out

    def records(self, plan: partition.WorkerPlan, done: int) -> Iterator[dict | None]:
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
            record = pending.pop(need)
            if record is not None:
                record["__padding__"] = bool(plan.padding[need])
            yield record

    def _read(self, plan: partition.WorkerPlan, start: int, skip: set[int]) -> Iterator[tuple[int, dict]]:
        """(read position, raw record) from ``start`` on, one visit per run of the same shard.

        With a shard cache, the next ``readahead`` shards are fetched in the background once half of
        the current visit is read, so a worker rarely waits for the network."""
        visits = partition.visits(plan, start)
        for k, (i, j) in enumerate(visits):
            positions = [p for p in range(i, j) if p not in skip]
            info, offsets = self.visit_rows(plan, i, positions)
            upcoming = [self.shards[int(plan.shards[a])] for a, _ in visits[k + 1: k + 1 + self.readahead]]
            got, where = 0, info.path
            unique, copies = np.unique(offsets, return_counts=True)  # a record drawn twice is read once
            try:
                for record, n in zip(read_records(info, unique, self.columns, self.image,
                                                  self.images_of(info, unique)), copies.tolist()):
                    record["__shard__"] = where
                    for c in range(n):
                        yield positions[got], record if c == 0 else dict(record)
                        got += 1
                    if got >= len(positions) // 2 + 1 > got - n:
                        self._prefetch(upcoming)
            except ShardError as e:
                if self.on_error == "raise":
                    raise
                self.skip(where, len(positions) - got, str(e))
                for position in positions[got:]:
                    yield position, None

    def visit_rows(self, plan: partition.WorkerPlan, start: int, positions) -> tuple[ShardInfo, np.ndarray]:
        """The shard of the visit starting at read position ``start`` and the row offsets in it of
        ``positions`` (read positions of that visit)."""
        shard = int(plan.shards[start])
        offsets = plan.offsets[positions]
        if self.selection is not None:
            offsets = self.selection[shard][offsets]
        return self.shards[shard], np.asarray(offsets, dtype=np.int64)

    def visit_tables(self, plan: partition.WorkerPlan, runs: Sequence[tuple[int, int]],
                     groups_per_read: int | None = None) -> Iterator[tuple[int, int, pa.Table]]:
        """The columns (and the JPEG bytes, if ``image``) of ``runs`` (read positions ``[a, b)``, each
        within one visit of a Parquet shard) as ``(a, b, table)`` pieces in read order, a read per
        ``groups_per_read`` row groups (None: a whole run): the columnar path's counterpart of
        :meth:`records`. With a shard cache, the next ``readahead`` runs' shards are fetched in the
        background as a run starts."""
        columns = [*self.columns, *([schema.IMAGE_COLUMN] if self.image else [])]
        for k, (a, b) in enumerate(runs):
            info, offsets = self.visit_rows(plan, a, np.arange(a, b))
            self._prefetch([self.shards[int(plan.shards[x])] for x, _ in runs[k + 1: k + 1 + self.readahead]])
            for table in parquet_rows(info, offsets, columns, groups_per_read=groups_per_read or len(offsets),
                                      sparse=self.images_of(info, offsets)):
                yield a, a + table.num_rows, table
                a += table.num_rows

    def images_of(self, shard: ShardInfo, offsets: np.ndarray) -> SparseRows | None:
        """Where the images of rows ``offsets`` of a remote Parquet shard are in its file, and their
        metadata, for a sparse read (:meth:`_filter` located them; None: read row groups)."""
        if not self.image or shard.fmt != "parquet" or not shard.store.remote:
            return None
        located = self._located_rows(shard, offsets)
        found = self.located[shard.rel][1] if located is not None else None
        if found is None or found.offsets is None:
            return None
        table, rows, at = located
        return SparseRows(found.offsets[at], found.sizes[at], table.take(arrow_indices(rows)))

    def _prefetch(self, shards: list[ShardInfo]) -> None:
        """Fetch shards into the cache in the background (remote repos with a cache only)."""
        shards = [s for s in shards if s.store.remote and s.store.cache is not None]
        if not shards:
            return
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bioscan5m-readahead")
            self._executor_pid = os.getpid()
        for shard in shards:
            self._executor.submit(_warm, shard)

    def skip(self, shard: str, count: int, why: str) -> None:
        """Count ``count`` records of ``shard`` as skipped, with a warning saying why."""
        self.skipped[shard] = self.skipped.get(shard, 0) + count
        warnings.warn(f"skipped {count} record(s) of {shard}: {why}", RuntimeWarning, stacklevel=3)

    # -- values ------------------------------------------------------------------------------------------

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return self.labels.vocabularies

    def dna(self, record: dict) -> str:
        """The record's barcode, truncated to ``max_nucleotides``."""
        dna = record["dna_barcode"]
        return dna if self.max_nucleotides is None else dna[: self.max_nucleotides]


class SharedPosition:
    """Epoch, worker rotation, per-worker resume points and the epoch's earlier phases (elastic
    resume): written by the main process at the start of each epoch, read by the DataLoader workers
    when they start iterating (persistent workers too)."""

    PHASE_BYTES = 1 << 16

    def __init__(self, num_workers: int):
        self.num_workers = max(1, num_workers)
        context = multiprocessing.get_context("fork")
        self.array = context.Array("q", 2 + self.num_workers, lock=False)
        self.phases = context.Array("c", self.PHASE_BYTES, lock=False)

    def write(self, epoch: int, rotation: int, done: Sequence[int], phases: Sequence[partition.Phase] = ()) -> None:
        self.array[0], self.array[1] = epoch, rotation
        for w, d in enumerate(done):
            self.array[2 + w] = d
        encoded = json.dumps([[p.world_size, p.num_workers, list(p.done)] for p in phases]).encode()
        if len(encoded) >= self.PHASE_BYTES:
            raise ValueError(f"{len(phases)} elastic phases in one epoch is more than a loader can carry")
        self.phases[: len(encoded) + 1] = encoded + b"\0"

    def read(self, worker: int) -> tuple[int, int, int, tuple[partition.Phase, ...]]:
        """(epoch, the logical worker this DataLoader worker plays, samples it already yielded, the
        epoch's earlier phases)."""
        logical = (worker + int(self.array[1])) % self.num_workers
        raw = bytes(self.phases[:]).split(b"\0", 1)[0]
        phases = tuple(partition.Phase(w, n, tuple(d)) for w, n, d in json.loads(raw or b"[]"))
        return int(self.array[0]), logical, int(self.array[2 + logical]), phases


class WorkerSamples(torch.utils.data.IterableDataset):
    """``fn(record, epoch=epoch)`` over a :class:`RecordStream` for DataLoader workers, each starting
    where a :class:`SharedPosition` says (the loader's exact resume)."""

    def __init__(self, records: RecordStream, fn: Callable[[dict], Any], position: SharedPosition):
        super().__init__()
        self.records, self.fn, self.position = records, fn, position

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = worker_identity()
        epoch, worker, done, phases = self.position.read(worker)
        fn = functools.partial(self.fn, epoch=epoch)
        for sample in self.records.samples(fn, epoch, worker, num_workers, done, phases):
            if sample is not SKIPPED:
                yield sample


def _warm(shard: ShardInfo) -> None:
    """Bring a shard into the cache; a failure here is left for the real read to report."""
    try:
        shard.store.cache.get(shard.store, shard.rel, shard.num_bytes, shard.sha256)
    except Exception:  # noqa: BLE001
        pass

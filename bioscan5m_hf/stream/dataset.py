"""``BIOSCAN5M``: the official ``bioscan_dataset.BIOSCAN5M``, map-style, over converted repos.

Same constructor, same ``ds[i]`` for every ``i`` (the index order is the official one: CSV order
within the split or metasplit, after ``reduce_repeated_barcodes``), ``len``, ``metadata`` (the
official DataFrame, built lazily), ``index2label``, ``label2index``; so ``Subset``,
``DataLoader(shuffle=True, num_workers=N)`` and ``DistributedSampler`` work as with the official
class. ``ds[i]`` reads only that record's bytes through the repo's per-record index
(:mod:`~bioscan5m_hf.repo.record_index`): one read in a tar (one ranged request over HTTP), or one
Parquet row group, kept per worker for its neighbours. ``BIOSCAN5M(..., streaming=True)`` returns the
streaming dataset instead (:class:`~bioscan5m_hf.stream.streaming.StreamingBIOSCAN5M`).
"""

from __future__ import annotations

import inspect
import os
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch.utils.data import Dataset

from .. import schema
from ..errors import ShardError
from ..options import Composition, Storage, keyword_names, moved_into
from ..repo.manifest import Repo, ShardInfo, open_repos
from ..repo.readers import row_group_starts
from ..repo.record_index import INDEX_DIR, index_relpath, read_record_index
from ..repo.storage import copy_verified, redact
from ..util import write_atomic
from .metadata import OFFICIAL_COLUMNS, metadata_frame, open_release, reduced_rows, release_in_csv_order, release_repo
from .outputs import Labels, OfficialAPI
from .streaming import StreamingBIOSCAN5M


class BIOSCAN5M(OfficialAPI, Dataset):
    r"""BIOSCAN-5M from converted shards: a drop-in for ``bioscan_dataset.BIOSCAN5M``.

    The parameters are the official ones (see :class:`StreamingBIOSCAN5M` for each), plus:

    root : str
        The ``OUT`` folder of ``bioscan5m-hf convert`` or a repo folder, local or a URL
        (``hf://datasets/ORG/NAME``, ``https://...``, ``s3://...``).
    download : bool, default=False
        For a remote ``root``: copy into ``storage.cache_dir`` (default ``~/.cache/bioscan5m-hf``) only
        what this split and these modalities need (the metadata table, the indexes, and the split's
        image shards only with the ``"image"`` modality), then read the copy. A local root needs nothing.
    streaming : bool, default=False
        Return the streaming dataset (:class:`StreamingBIOSCAN5M`: shuffling, ranks, exact resume,
        compositions), as ``datasets.load_dataset(..., streaming=True)`` does; its keywords apply then.
    storage : Storage, optional
        How ``root`` is read (:class:`~bioscan5m_hf.Storage`).
    """

    def __new__(cls, *args, **kwargs):
        if kwargs.pop("streaming", False):
            return StreamingBIOSCAN5M(*args, **kwargs)
        streaming_only = sorted(set(kwargs) & STREAMING_ONLY)
        if streaming_only:
            raise ValueError(f"{', '.join(streaming_only)}: only for the streaming dataset; pass streaming=True "
                             "(a map-style dataset is shuffled and split by its DataLoader's sampler)")
        return super().__new__(cls)

    @moved_into(Storage)
    def __init__(self, root, split: str = "train", modality: str | Iterable[str] = ("image", "dna"),
                 image_package: str = schema.DEFAULT_PACKAGE, reduce_repeated_barcodes: bool = False,
                 max_nucleotides: int | None = 660, target_type: str | Iterable[str] = "species",
                 target_format: str = "index", output_format: str = "tuple", transform: Callable | None = None,
                 dna_transform: Callable | None = None, target_transform: Callable | None = None,
                 download: bool = False, *, streaming: bool = False, storage: Storage | None = None) -> None:
        super().__init__()
        self.configure(root, split, modality, image_package, reduce_repeated_barcodes, max_nucleotides, target_type,
                       target_format, output_format, transform, dna_transform, target_transform)
        self.splits = schema.explode_split(split)
        storage = storage or Storage()
        repos = open_repos(root, storage)
        if download and any(r.store.remote for r in repos.values()):
            repos = open_repos(download_needed(repos, self.splits, image_package if self.outputs.image else None,
                                               storage.cache_dir), Storage(retry=storage.retry))
        self.repos, self.storage = repos, storage
        self.outputs.labels = _labels(repos)
        # The splits' metadata, memory-mapped (nothing is copied per process; forked workers and the
        # ranks of a node share the pages); the whole release only where reduce_repeated_barcodes
        # needs it (the official reduction draws over every record).
        self.whole_release = reduce_repeated_barcodes or set(self.splits) == set(schema.SPLITS)
        release = open_release(repos, schema.SPLITS if self.whole_release else self.splits, storage)
        self.table, self.csv_row = release.table, release.csv_row
        if reduce_repeated_barcodes:
            keep = np.zeros(self.table.num_rows, dtype=bool)  # by CSV row: the table holds every record
            keep[reduced_rows(self.table.column("dna_barcode"), max_nucleotides, self.csv_row)] = True
            mine = pc.is_in(self.table.column("split"), value_set=pa.array(list(self.splits))).to_numpy(
                zero_copy_only=False)
            rows = np.flatnonzero(mine & keep[self.csv_row])
        else:
            rows = np.arange(self.table.num_rows)
        # The index order is the CSV order (within one split the table already is in it).
        self.rows = rows[np.argsort(self.csv_row[rows], kind="stable")]
        self.record_columns = [c for c in self.table.column_names if c in self.outputs.columns]
        self._chunk_starts = np.cumsum([0] + [len(c) for c in self.table.column(0).chunks])
        self._chunks = self._record_chunks()
        self.images = ShardImages(repos, image_package, storage.local_folder()) if self.outputs.image else None
        self._metadata = None

    @property
    def metadata(self):
        """The official ``metadata`` DataFrame (built on first use, from every record as the official
        loader builds it; reads no image bytes)."""
        if self._metadata is None:
            table = release_in_csv_order(self.repos, OFFICIAL_COLUMNS, self.max_nucleotides)
            self._metadata = metadata_frame(table, self.split, self.reduce_repeated_barcodes)
        return self._metadata

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> dict:
        """The raw record at ``index``: its metadata values and, with the image modality, JPEG bytes."""
        n = len(self.rows)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} records")
        row = int(self.rows[index])
        chunk = int(self._chunk_starts.searchsorted(row, side="right")) - 1
        local = row - int(self._chunk_starts[chunk])
        record = {name: chunks[chunk][local].as_py() for name, chunks in self._chunks}
        if self.images is not None:
            csv_row = int(self.csv_row[row])  # the per-record index is by CSV row
            record["image"] = self.images.read(csv_row, record["processid"])
            record["__shard__"] = self.images.where(csv_row)  # named if the image does not decode
        return record

    def __getitem__(self, index: int) -> Any:
        return self.outputs(self.record(index))

    def _record_chunks(self) -> list[tuple[str, list[pa.Array]]]:
        # Looked up once: by name and chunk on every ds[i] it was a third of the time (BENCHMARKS.md, dropin).
        return [(name, self.table.column(name).chunks) for name in self.record_columns]

    def __getstate__(self):
        # Memory-mapped: opened again where unpickled (a spawned worker), never copied into the pickle.
        return {**self.__dict__, "table": None, "_chunks": None, "_metadata": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        splits = schema.SPLITS if self.whole_release else self.splits
        self.table = open_release(self.repos, splits, self.storage).table
        self._chunks = self._record_chunks()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, modality={self.modality!r}, "
                f"records={len(self)})")


#: What ``inspect.signature`` and ``help`` show for the class: its constructor's (``__new__`` only dispatches).
BIOSCAN5M.__signature__ = inspect.signature(BIOSCAN5M.__init__).replace(
    parameters=list(inspect.signature(BIOSCAN5M.__init__).parameters.values())[1:])
#: Keywords of the streaming dataset alone (the map-style one is shuffled and split by samplers).
STREAMING_ONLY = ((set(keyword_names(StreamingBIOSCAN5M.__init__)) - set(keyword_names(BIOSCAN5M.__init__)))
                  | {f.name for f in fields(Composition)})


def _labels(repos: dict[str, Repo]) -> Labels:
    return Labels(next(iter(repos.values())).manifest["vocabularies"])


def image_repo(repos: dict[str, Repo], package: str) -> Repo:
    """The repo to read ``package``'s images from: the tars if converted (one read per record)."""
    order = [repos[f] for f in ("webdataset", "parquet") if f in repos]
    repo = next((r for r in order if package in r.configs), None)
    if repo is None:
        raise ValueError(f"no config {package!r} converted (have { {r.name: list(r.configs) for r in order} })")
    return repo


class ShardImages:
    """One record's JPEG bytes by its CSV row, through the per-record index: a tar is read at the
    member's offset (its header checked against the record), a Parquet shard one row group at a
    time (the last few kept, per process). An index that disagrees with its shard raises
    :class:`ShardError` naming the shard and the record."""

    KEEP_ROW_GROUPS = 4

    def __init__(self, repos: dict[str, Repo], package: str, folder: Path | None = None):
        repo = self.repo = image_repo(repos, package)
        self.package = package
        self.shards: list[ShardInfo] = repo.shards(package, schema.SPLITS)
        self.index = read_record_index(repo, package, folder)  # a remote repo's, fetched once into folder
        self._files: dict = {}  # open files per process (__getstate__ leaves them behind)
        self._groups: dict[tuple[int, int], dict] = {}

    def where(self, row: int) -> str:
        shard = int(self.index["shard"][row])
        return self.shards[shard].path if shard >= 0 else f"{self.repo.root}/{index_relpath(self.package)}"

    def read(self, row: int, processid: str) -> bytes:
        shard = int(self.index["shard"][row])
        if shard < 0:
            raise ShardError(f"{self.repo.root}: {self.package} has no image of record {processid} "
                             "(skipped at conversion: see the manifest's 'skipped')")
        info = self.shards[shard]
        if self.repo.fmt == "webdataset":
            return self._read_tar(info, int(self.index["offset"][row]), int(self.index["size"][row]), processid)
        return self._read_parquet(info, shard, int(self.index["row"][row]), processid)

    def _read_tar(self, info: ShardInfo, offset: int, size: int, processid: str) -> bytes:
        start = offset - tarfile.BLOCKSIZE
        if start < 0 or offset + size > info.num_bytes:
            raise ShardError(f"{info.path}: record {processid}: the index points outside the shard")
        if info.store.remote:
            data = info.store.fetch(info.rel, start, offset + size)  # remote faults name the URL themselves
        else:  # one pread on a descriptor kept open per shard (pread has no position to share)
            fd = self._files.get(info.rel)
            if fd is None:
                fd = self._files[info.rel] = os.open(info.path, os.O_RDONLY)
            data = os.pread(fd, tarfile.BLOCKSIZE + size, start)
        expected = f"{processid}.{schema.IMAGE_EXTENSION}".encode()
        header = data[: tarfile.BLOCKSIZE]
        name = header[:100].split(b"\0", 1)[0]
        try:
            stored = int(header[124:136].strip(b"\0 ") or b"-1", 8)
        except ValueError:
            stored = -1
        if name != expected or stored != size or len(data) != tarfile.BLOCKSIZE + size:
            found = name[:64].decode(errors="replace")
            raise ShardError(f"{info.path}: record {processid}: the index points at {found!r} ({stored} bytes), "
                             f"not {expected.decode()!r} ({size} bytes)")
        return data[tarfile.BLOCKSIZE:]

    def _read_parquet(self, info: ShardInfo, shard: int, row: int, processid: str) -> bytes:
        opened = self._files.get((os.getpid(), shard))  # a file object's position must not cross a fork
        if opened is None:
            try:
                pf = pq.ParquetFile(info.path if not info.store.remote else info.open())
            except (OSError, ValueError) as e:
                raise ShardError(f"{info.path}: not a readable Parquet shard ({e})") from None
            opened = self._files[os.getpid(), shard] = (pf, row_group_starts(pf))
        pf, starts = opened
        group = int(np.searchsorted(starts, row, side="right") - 1)
        if not 0 <= group < pf.num_row_groups:
            raise ShardError(f"{info.path}: record {processid}: the index points at row {row}, past the shard")
        cached = self._groups.get((shard, group))
        if cached is None:
            try:
                table = pf.read_row_group(group, columns=["processid", schema.IMAGE_COLUMN])
            except (OSError, ValueError) as e:
                raise ShardError(f"{info.path}: row group {group} is damaged ({e})") from None
            cached = {"processid": table.column("processid").to_pylist(),
                      "image": table.column(schema.IMAGE_COLUMN).combine_chunks().field("bytes")}
            if len(self._groups) >= self.KEEP_ROW_GROUPS:
                self._groups.pop(next(iter(self._groups)))
            self._groups[shard, group] = cached
        k = row - int(starts[group])
        if cached["processid"][k] != processid:
            raise ShardError(f"{info.path}: record {processid}: the index points at {cached['processid'][k]!r}")
        return cached["image"][k].as_py()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_groups"] = {}, {}  # file handles and caches are per process
        return state


def download_needed(repos: dict[str, Repo], splits, package: str | None, cache_dir=None) -> Path:
    """Copy from remote repos into a local folder only the files a dataset of ``splits`` needs (with
    ``package``'s image shards of those splits when given); returns the folder, reusable later."""
    base = Storage(cache_dir=cache_dir).local_folder()
    first = next(iter(repos.values()))
    target = base / redact(str(first.store.root)).split("://", 1)[-1].replace("/", "_").replace(":", "_")
    release = release_repo(repos)  # every record's metadata, in one file
    images = image_repo(repos, package) if package else None
    for repo in repos.values():
        folder = target / repo.name if len(repos) > 1 else target
        files = repo.manifest.get("files", {})
        small = [schema.MANIFEST, schema.CSV_ORDER, *(p for p in files if p.startswith(f"{INDEX_DIR}/")
                                                       and p != schema.RELEASE_TABLE)]
        for rel in small:
            if not (folder / rel).is_file():
                write_atomic(folder / rel, repo.store.read_bytes(rel))
        if repo is release and not (folder / schema.RELEASE_TABLE).is_file():
            info = files[schema.RELEASE_TABLE]
            copy_verified(repo.store, schema.RELEASE_TABLE, info["num_bytes"], info["sha256"],
                          folder / schema.RELEASE_TABLE)
        if repo is images:
            for shard in repo.shards(package, splits):
                if not (folder / shard.rel).is_file():
                    copy_verified(repo.store, shard.rel, shard.num_bytes, shard.sha256, folder / shard.rel)
    return target

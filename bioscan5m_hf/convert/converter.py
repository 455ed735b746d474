"""Convert an official release into two Hub-ready repos: Parquet (``BIOSCAN-5M``) and WebDataset
(``BIOSCAN-5M-wds``), each with a manifest and a dataset card.

The work is: validate the CSV into a memory-mapped Arrow table, locate every image, plan the shards
(:mod:`.sharding`), write the shards in parallel (:mod:`.writers`), then write the
manifests and cards. Each shard is a pure function of the release and the options, so the output is
byte-identical for any number of workers.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from .. import __version__, schema
from ..errors import ReleaseError
from ..repo import record_index
from ..repo.dali import dali_index_path
from ..repo.manifest import Repo
from ..repo.storage import Store
from ..transforms import MAX_IMAGE_PIXELS, simplejpeg
from ..util import atomic_path, check_choice, file_digest, imap_ordered, progress
from . import card, sharding, stats, writers
from .journal import Journal, read_json, remove_temporary, write_json
from .release import (
    ImageReader,
    ImageRef,
    find_metadata_csv,
    load_metadata,
    missing_message,
    open_image_source,
    open_metadata,
    take_rows,
    vocabularies,
)

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert and how; everything here but ``workers`` and ``show_progress`` shapes the output."""

    packages: tuple[str, ...] = (schema.DEFAULT_PACKAGE,)
    splits: tuple[str, ...] = schema.SPLITS
    formats: tuple[str, ...] = schema.FORMATS
    shard_bytes: int = sharding.DEFAULT_SHARD_BYTES
    shard_records: int | None = None
    min_shards: int = sharding.DEFAULT_MIN_SHARDS
    seed: int = 0
    allow_missing: bool = False
    image_source: str = "auto"
    workers: int = field(default=1, compare=False)
    show_progress: bool = field(default=True, compare=False)

    def __post_init__(self):
        for p in self.packages:
            check_choice(p, "image package", schema.PACKAGES)
        for s in self.splits:
            check_choice(s, "split", schema.SPLITS)
        for f in self.formats:
            check_choice(f, "format", schema.FORMATS)
        check_choice(self.image_source, "image_source", ("auto", "folders", "zips"))

    def recorded(self) -> dict:
        """The options that decide the output, as recorded in the manifests."""
        keep = ("packages", "splits", "formats", "shard_bytes", "shard_records", "min_shards", "seed", "allow_missing")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keep}


@dataclass
class ShardTask:
    """Everything a worker needs to write one shard in each requested format."""

    shard: sharding.Shard
    formats: tuple[str, ...]
    repos: dict[str, str]
    metadata_ipc: str
    refs: list[ImageRef] | None = None
    archives: tuple[str, ...] = ()
    journal: Journal | None = None

    def done_paths(self) -> dict[str, Path]:
        """Per format, the journal record written once that format's shard is complete."""
        s = self.shard
        return {fmt: self.journal.done_record(fmt, s.config, s.split, s.index) for fmt in self.formats}

    def finished(self) -> list[dict] | None:
        """The manifest entries of an earlier run that completed this task, if it did and its files are
        still there, whole."""
        return Journal.finished(self.done_paths(), self.repos)


# --------------------------------------------------------------------------------------------------
# Worker side

_tables: dict[str, pa.Table] = {}
_readers: dict[tuple[str, ...], ImageReader] = {}


def write_shard(task: ShardTask) -> list[dict]:
    """Write one shard (runs in a worker); returns its manifest entries, one per format."""
    table = _tables.get(task.metadata_ipc)
    if table is None:
        table = _tables[task.metadata_ipc] = open_metadata(task.metadata_ipc)
    rows = take_rows(table, task.shard.rows)
    images = None
    if task.refs is not None:
        reader = _readers.get(task.archives)
        if reader is None:
            reader = _readers[task.archives] = ImageReader(task.archives)
        pids = rows.column("processid").to_pylist()
        images = [check_jpeg(reader.read(ref, pid), pid, _describe(ref, task.archives))
                  for ref, pid in zip(task.refs, pids)]
    entries = []
    s = task.shard
    table = writers.parquet_table(rows, images)  # the Parquet shard's table, and what a tar's Arrow bytes count
    for fmt in task.formats:
        rel = schema.shard_relpath(fmt, s.config, s.split, s.index)
        path = Path(task.repos[fmt]) / rel
        if fmt == "parquet":
            arrow_bytes = writers.write_parquet(path, table, images is not None)
        else:
            writers.write_tar(path, rows.to_pylist(), images)
            arrow_bytes = writers.tar_arrow_bytes(table, rel)
        entry = {"format": fmt, "config": s.config, "split": s.split, "path": rel, "num_records": len(s),
                 "num_bytes": path.stat().st_size, "arrow_bytes": arrow_bytes, "sha256": file_digest(path)}
        if task.journal is not None:
            task.journal.record_done(task.done_paths()[fmt], entry)
        entries.append(entry)
    return entries


def _describe(ref: ImageRef, archives: tuple[str, ...]) -> str:
    return ref if isinstance(ref, str) else archives[ref.archive]


def check_jpeg(data: bytes, processid: str, where: str) -> bytes:
    """The image must be a JPEG of sane size (read from its header only; it is never re-encoded)."""
    if simplejpeg is not None and data[:3] == b"\xff\xd8\xff":
        try:  # the fast header reader (microseconds); Pillow below names any problem
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
            if w * h <= MAX_IMAGE_PIXELS:
                return data
        except ValueError:
            pass
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ReleaseError(f"{where}: image of {processid} is unreadable ({e})") from None
    if fmt != "JPEG":
        raise ReleaseError(f"{where}: image of {processid} is {fmt}, not JPEG")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ReleaseError(f"{where}: image of {processid} is {size[0]} x {size[1]} pixels, over the "
                           f"{MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb?)")
    return data


# --------------------------------------------------------------------------------------------------
# Planning (main process)


def split_rows(table: pa.Table, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rows of each split in the split's seeded shuffled order, with their order keys (ascending)."""
    codes = pc.index_in(table.column("split"), value_set=pa.array(schema.SPLITS)).to_numpy(zero_copy_only=False)
    out = {}
    for code, split in enumerate(schema.SPLITS):
        rows = np.flatnonzero(codes == code)
        keys = sharding.order_keys(take_rows(table.select(["processid"]), rows).column("processid").to_pylist(), seed)
        order = np.argsort(keys, kind="stable")
        out[split] = rows[order], keys[order]
    return out


def locate_images(table: pa.Table, package: str, split: str, rows: np.ndarray, source) -> tuple[
        np.ndarray, list[ImageRef], np.ndarray, list[str]]:
    """Find each record's image; returns kept rows, their refs and sizes, and the missing processids."""
    picked = take_rows(table.select(["processid", "chunk"]), rows)
    pids, chunks = picked.column("processid").to_pylist(), picked.column("chunk").to_pylist()
    kept, refs, sizes, missing = [], [], [], []
    for row, pid, chunk in zip(rows.tolist(), pids, chunks):
        found = source.locate(schema.image_relpath(package, split, chunk, pid))
        if found is None:
            missing.append(pid)
            continue
        kept.append(row)
        refs.append(found[0])
        sizes.append(found[1])
    return np.array(kept, dtype=np.int64), refs, np.array(sizes, dtype=np.int64), missing


def plan_tasks(table: pa.Table, release: Path, repos: dict[str, Path], ipc: Path,
               options: ConvertOptions) -> tuple[list[ShardTask], dict[str, dict[str, list[str]]]]:
    """All shard tasks of the conversion, in a fixed order, and the records skipped per package."""
    ordered = split_rows(table, options.seed)
    meta_bytes = max(1, table.nbytes // max(1, table.num_rows))
    tasks: list[ShardTask] = []
    skipped: dict[str, dict[str, list[str]]] = {}
    for package in options.packages:
        source = open_image_source(release, package, options.image_source)
        for split in options.splits:
            all_rows, all_keys = ordered[split]
            rows, refs, sizes, missing = locate_images(table, package, split, all_rows, source)
            if missing:
                if not options.allow_missing:
                    raise ReleaseError(missing_message(package, source, missing, len(all_rows)))
                skipped.setdefault(package, {})[split] = sorted(missing)
            keys = all_keys[np.isin(all_rows, rows)] if missing else all_keys
            start = 0  # shards are consecutive runs of `rows`
            for shard in sharding.plan_split(package, split, rows, keys, sizes + meta_bytes, options.shard_bytes,
                                             options.shard_records, options.min_shards):
                tasks.append(ShardTask(shard, options.formats, {f: str(repos[f]) for f in options.formats},
                                       str(ipc), refs[start:start + len(shard)], source.archives))
                start += len(shard)
    if "parquet" in options.formats:
        for split in schema.SPLITS:  # the metadata config always holds every split
            rows, keys = ordered[split]
            for shard in sharding.plan_split(schema.METADATA_CONFIG, split, rows, keys, np.full(len(rows), meta_bytes),
                                             options.shard_bytes, options.shard_records, options.min_shards):
                tasks.append(ShardTask(shard, ("parquet",), {"parquet": str(repos["parquet"])}, str(ipc)))
    return tasks, skipped


# --------------------------------------------------------------------------------------------------
# Manifests


def build_manifest(fmt: str, entries: list[dict], options: dict, source: dict,
                   vocab: dict[str, list[str]], skipped: dict, files: dict, statistics: dict) -> dict:
    configs: dict[str, dict[str, dict]] = {}
    for e in entries:
        if e["format"] != fmt:
            continue
        split = configs.setdefault(e["config"], {}).setdefault(e["split"], {"num_records": 0, "num_bytes": 0,
                                                                           "arrow_bytes": 0, "shards": []})
        split["num_records"] += e["num_records"]
        split["num_bytes"] += e["num_bytes"]
        split["arrow_bytes"] += e["arrow_bytes"]
        split["shards"].append({k: e[k] for k in ("path", "num_records", "num_bytes", "arrow_bytes", "sha256")})
    # Configs and splits in canonical order.
    order = [*schema.PACKAGES, schema.METADATA_CONFIG]
    configs = {c: {s: configs[c][s] for s in schema.SPLITS if s in configs[c]}
               for c in sorted(configs, key=order.index)}
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": fmt,
        "repo": schema.FORMAT_REPOS[fmt],
        "converter": {"name": "bioscan5m-hf", "version": __version__},
        "options": options,
        "source": source,
        "configs": configs,
        "files": files,
        "statistics": statistics,
        "skipped": {p: {s: skipped[p][s] for s in schema.SPLITS if s in skipped[p]} for p in sorted(skipped)},
        "vocabularies": vocab,
    }


def _already_complete(repos: dict[str, Path], state: dict) -> dict[str, dict] | None:
    """The manifests of a finished conversion with these options and this source, if all its files are there."""
    manifests = {}
    for fmt, repo in repos.items():
        manifest = read_json(repo / schema.MANIFEST)
        if manifest is None or manifest.get("options") != state["options"] \
                or manifest.get("source", {}).get("md5") != state["source_md5"]:
            return None
        files = [(s["path"], s["num_bytes"]) for c in manifest["configs"].values() for v in c.values()
                 for s in v["shards"]] + [(name, f["num_bytes"]) for name, f in manifest["files"].items()]
        if not all((repo / p).is_file() and (repo / p).stat().st_size == n for p, n in files):
            return None
        manifests[fmt] = manifest
    return manifests


def _remove_strays(repo: Path, manifest: dict) -> None:
    """Delete shards of ours that an earlier conversion left and this one did not write."""
    keep = {s["path"] for splits in manifest["configs"].values() for sp in splits.values() for s in sp["shards"]}
    keep |= set(manifest["files"])  # the tars' DALI indexes among them
    suffix = schema.FORMAT_SUFFIX[manifest["format"]]
    for path in [*repo.glob(f"*/*/bioscan5m-*.{suffix}"), *repo.glob("*/*/bioscan5m-*.idx"),
                 *repo.glob(f"{record_index.INDEX_DIR}/*.parquet")]:
        if path.relative_to(repo).as_posix() not in keep:
            path.unlink()


# --------------------------------------------------------------------------------------------------
# Entry point


@dataclass
class ConvertResult:
    repos: dict[str, Path]
    manifests: dict[str, dict]
    num_records: int

    def split_records(self, fmt: str, config: str) -> dict[str, int]:
        return {s: v["num_records"] for s, v in self.manifests[fmt]["configs"].get(config, {}).items()}


def convert(release: str | os.PathLike, out: str | os.PathLike, options: ConvertOptions = ConvertOptions(),
            *, overwrite: bool = False, num_tasks: int = 1, task_index: int = 0) -> ConvertResult | None:
    """Convert the release at ``release`` into ``out/BIOSCAN-5M`` and ``out/BIOSCAN-5M-wds``.

    Parameters
    ----------
    release : path
        Folder holding the metadata CSV and, per image package, the extracted images or the zips.
    out : path
        Output folder; one repo folder per format is written inside it.
    options : ConvertOptions
        Packages, splits, formats, shard sizes, seed, worker count.
    overwrite : bool
        Replace an existing conversion made with other options (otherwise refused).
    num_tasks, task_index : int
        Write only part ``task_index`` of ``num_tasks`` disjoint, deterministic parts of the shards
        (a SLURM job array or an indexed Kubernetes Job, all writing to one shared ``out``); then
        :func:`finalize` writes the manifests and cards. Returns None for such a part.
    """
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is not in [0, {num_tasks})")
    release, out = Path(release), Path(out)
    # With no image package there are no tars to write: the Parquet repo's metadata config is all.
    formats = [f for f in options.formats if options.packages or f == "parquet"]
    if not formats:
        raise ValueError("nothing to convert: no image package, and the metadata table is Parquet only")
    repos = {fmt: out / schema.FORMAT_REPOS[fmt] for fmt in formats}
    csv_path = find_metadata_csv(release)
    md5 = file_digest(csv_path, "md5")
    journal = Journal(out)
    state = {"options": options.recorded(), "source_md5": md5, "formats": formats}
    if not overwrite and not journal.in_progress():
        done = _already_complete(repos, state)
        if done is not None:
            return ConvertResult(repos, done, next(iter(done.values()))["source"]["num_records"])
    journal.prepare(repos, state, overwrite, shared=num_tasks > 1)
    ipc = journal.metadata
    table = open_metadata(ipc) if ipc.is_file() else load_metadata(csv_path, ipc)
    tasks, skipped = plan_tasks(table, release, repos, ipc, options)
    for task in tasks:
        task.journal = journal
    journal.record_tasks([list(t.done_paths().values()) for t in tasks], skipped)
    mine = [t for k, t in enumerate(tasks) if k % num_tasks == task_index]
    # Shards finished by an interrupted run of the same conversion are kept (each file was renamed
    # into place whole, then its record written); everything else is (re)written.
    todo = [t for t in mine if t.finished() is None]
    bar = progress(total=sum(len(t.shard) for t in todo), desc="convert", unit="rec",
                   disable=not options.show_progress)
    for task, _ in zip(todo, imap_ordered(write_shard, todo, options.workers)):
        bar.update(len(task.shard))
    bar.close()
    del table
    if num_tasks > 1:
        return None
    return finalize(out)


def finalize(out: str | os.PathLike) -> ConvertResult:
    """Check that every planned shard is written, then write the manifests, side files and cards.

    ``convert`` calls it itself; run it after all parts of a ``--num-tasks`` conversion finished.
    """
    out = Path(out)
    journal = Journal(out)
    state = journal.state() or {}
    repos = {fmt: out / schema.FORMAT_REPOS[fmt] for fmt in state.get("formats", ())}
    entries, skipped = journal.collect(repos)
    for repo in repos.values():  # temporary files of parts killed mid-write
        remove_temporary(repo)
    table = open_metadata(journal.metadata)
    source = {"metadata_csv": schema.METADATA_CSV_NAME, "md5": state["source_md5"], "num_records": table.num_rows}
    vocab = vocabularies(table)
    statistics = stats.compute(table)
    manifests = {}
    for fmt, repo in repos.items():
        order = repo / schema.CSV_ORDER
        writers.write_csv_order(order, table.column("processid"))
        release = repo / schema.RELEASE_TABLE
        writers.write_release_table(release, table)
        charts = stats.write_charts(statistics, repo)
        indexes = [dali_index_path(repo / e["path"]) for e in entries if e["format"] == "webdataset"
                   and fmt == "webdataset"]
        files = {p.relative_to(repo).as_posix(): {"num_bytes": p.stat().st_size, "sha256": file_digest(p)}
                 for p in (order, release, *charts, *sorted(indexes))}
        manifest = build_manifest(fmt, entries, state["options"], source, vocab, skipped, files,
                                  statistics)
        for config in manifest["configs"]:  # per-record random access (repo/record_index.py)
            index = repo / record_index.index_relpath(config)
            with atomic_path(index) as tmp:
                record_index.write_record_index(record_index.build_record_index(
                    Repo(Store(str(repo)), manifest), config, table.column("processid")), tmp)
            manifest["files"][index.relative_to(repo).as_posix()] = {"num_bytes": index.stat().st_size,
                                                                   "sha256": file_digest(index)}
        _remove_strays(repo, manifest)
        write_json(repo / schema.MANIFEST, manifest)
        card.write_card(repo, manifest)
        manifests[fmt] = manifest
    del table
    journal.close()
    return ConvertResult(repos, manifests, source["num_records"])


def task_from_environment(env=None) -> tuple[int | None, int | None]:
    """(number of tasks, this task's index) from a SLURM job array or an indexed Kubernetes Job."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        count = env.get("SLURM_ARRAY_TASK_COUNT")
        return (int(count) if count else None), int(env["SLURM_ARRAY_TASK_ID"]) - first
    if "JOB_COMPLETION_INDEX" in env:  # the Job's completions count is not in the environment
        return None, int(env["JOB_COMPLETION_INDEX"])
    return None, None


def plan_conversion(release: str | os.PathLike, options: ConvertOptions = ConvertOptions()) -> list[dict]:
    """The shard plan (per format, config and split: shards, records, expected bytes), writing nothing."""
    import tempfile

    release = Path(release)
    formats = [f for f in options.formats if options.packages or f == "parquet"]
    with tempfile.TemporaryDirectory(prefix="bioscan5m-plan-") as tmp:
        ipc = Path(tmp) / "metadata.arrow"
        table = load_metadata(find_metadata_csv(release), ipc)
        repos = {fmt: Path(tmp) / schema.FORMAT_REPOS[fmt] for fmt in formats}
        tasks, skipped = plan_tasks(table, release, repos, ipc, options)
        rows: dict[tuple, dict] = {}
        for task in tasks:
            for fmt in task.formats:
                s = task.shard
                row = rows.setdefault((fmt, s.config, s.split), {"format": fmt, "config": s.config, "split": s.split,
                                                                 "shards": 0, "records": 0, "bytes": 0})
                row["shards"] += 1
                row["records"] += len(s)
                row["bytes"] += s.num_bytes
        del table
    return list(rows.values())

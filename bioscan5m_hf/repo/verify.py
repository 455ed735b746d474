"""``bioscan5m-hf verify``: check converted repos against their manifests, and each other.

Checks, per repo: every listed file present with its size and sha256; no unlisted shard; each
shard's record count; every record in the split its folder names; every ``processid`` once per
config; and, when both repos are there, that Parquet and tar hold the same records. ``decode=True``
also decodes every image and checks every record's values against the schema.
"""

from __future__ import annotations

import math
import os
import tarfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .. import schema
from ..errors import ShardError
from ..options import Storage
from ..transforms import MAX_IMAGE_PIXELS
from ..util import file_digest
from . import record_index
from .dali import dali_index_path, index_of_tar
from .manifest import Repo, ShardInfo, open_repos
from .readers import open_image, read_records
from .storage import RangeFile


@dataclass
class Report:
    """Problems found, each naming its file (and record where there is one)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings that are not problems (what the viewer shows)
    files: int = 0
    records: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")


def _check_value(name: str, value) -> str | None:
    col = schema.COLUMNS_BY_NAME[name]
    if value is None:
        return None if col.nullable else "missing, but the column is required"
    if pa.types.is_string(col.type):
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if pa.types.is_integer(col.type):
        return None if isinstance(value, int) and not isinstance(value, bool) else f"{value!r} is not an integer"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"{value!r} is not a finite number"
    return None


def check_record(record: dict, split: str) -> list[str]:
    """Schema problems of one record read back from a shard."""
    problems = [f"{name}: {p}" for name in schema.COLUMN_NAMES if (p := _check_value(name, record.get(name)))]
    extra = set(record) - set(schema.COLUMN_NAMES) - {"image"}
    if extra:
        problems.append(f"unexpected fields {sorted(extra)}")
    if record.get("split") != split:
        problems.append(f"split is {record.get('split')!r} but the shard is in {split!r}")
    pid = record.get("processid")
    if isinstance(pid, str):
        if not schema.PROCESSID_PATTERN.match(pid):
            problems.append(f"processid {pid!r} is not a valid key")
        elif record.get("chunk") != schema.chunk_for(pid, split):
            problems.append(f"chunk {record.get('chunk')!r} does not match the chunk rule")
    return problems


def _decode(data: bytes) -> str | None:
    from PIL import Image


    try:
        img = open_image(data)
        if img.format != "JPEG":
            return f"image is {img.format}, not JPEG"
        if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
            return f"image is {img.size[0]} x {img.size[1]} pixels, over the limit"
        img.load()
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError) as e:
        return f"image does not decode ({e})"
    return None


def verify_repo(repo: Repo, report: Report, decode: bool = False) -> dict[tuple[str, str], set[str]]:
    """Check one repo; returns its processids per (config, split) for the cross-repo check."""
    listed: set[str] = set()
    for name, info in repo.manifest.get("files", {}).items():
        _check_file(repo, name, info["num_bytes"], info["sha256"], report)
        listed.add(name)
    keys: dict[tuple[str, str], set[str]] = {}
    for config, splits in repo.configs.items():
        seen: dict[str, str] = {}
        for split, info in splits.items():
            shards = repo.shards(config, [split])
            total = 0
            keys[config, split] = set()
            for shard, entry in zip(shards, info["shards"]):
                rel = entry["path"]
                listed.add(rel)
                where = f"{repo.name}/{rel}"
                total += shard.num_records
                if not _check_file(repo, rel, shard.num_bytes, shard.sha256, report):
                    continue
                count = _check_records(shard, where, config, split, seen, keys[config, split], report, decode)
                if count is not None and count != shard.num_records:
                    report.add(where, f"holds {count} records, the manifest says {shard.num_records}")
                if repo.fmt == "webdataset":
                    _check_dali_index(repo, shard, report)
            if total != info["num_records"]:
                report.add(f"{repo.name}/{schema.MANIFEST}", f"{config}/{split}: shards add up to {total} records, "
                                                              f"the split says {info['num_records']}")
    _check_record_indexes(repo, report)
    if not repo.store.remote:  # a plain file server cannot list its files
        root = repo.store.local_path("")
        suffix = schema.FORMAT_SUFFIX[repo.fmt]
        for path in sorted([*root.glob(f"*/*/*.{suffix}"), *root.glob("*/*/*.idx")]):
            rel = path.relative_to(root).as_posix()
            if rel not in listed:
                report.add(f"{repo.name}/{rel}", "not listed in the manifest")
    return keys


def _check_record_indexes(repo: Repo, report: Report) -> None:
    """Each config's per-record index is listed and equals the one rebuilt from the shards."""
    try:
        csv_pids = repo.read_table(schema.CSV_ORDER, ["processid"]).column("processid")
    except (OSError, ValueError) as e:
        report.add(f"{repo.name}/{schema.CSV_ORDER}", f"unreadable ({e})")
        return
    for config in repo.configs:
        rel = record_index.index_relpath(config)
        where = f"{repo.name}/{rel}"
        if rel not in repo.manifest.get("files", {}):
            report.add(where, f"no per-record index for {config!r} (convert again to add it)")
            continue
        try:
            expected = record_index.build_record_index(repo, config, csv_pids)
            actual = record_index.read_record_index(repo, config)
        except (OSError, ValueError, ShardError) as e:
            report.add(where, f"cannot be checked ({e})")
            continue
        for name in expected.column_names:
            want, got = expected.column(name).to_numpy(), actual.get(name)
            if got is None or len(got) != len(want) or (got != want).any():
                row = int(np.flatnonzero(got != want)[0]) if got is not None and len(got) == len(want) else 0
                report.add(where, f"column {name!r} disagrees with the shards (first at CSV row {row})")
                break


def _check_dali_index(repo: Repo, shard: ShardInfo, report: Report) -> None:
    """The tar's DALI index is listed in the manifest and matches the tar's members."""
    rel = dali_index_path(shard.rel).as_posix()
    where = f"{repo.name}/{rel}"
    if rel not in repo.manifest.get("files", {}):
        report.add(where, "the tar's DALI index is not listed in the manifest")
        return
    try:
        with shard.open() as f, tarfile.open(fileobj=f, mode="r:") as tar:
            expected = index_of_tar(tar)
        actual = repo.store.read_bytes(rel).decode("utf-8")
    except (OSError, tarfile.TarError, UnicodeDecodeError, ShardError) as e:
        report.add(where, f"cannot be checked against {shard.rel} ({e})")
        return
    if actual != expected:
        report.add(where, f"does not match the members of {shard.rel} (offsets or sizes differ)")


def _check_file(repo: Repo, rel: str, size: int, sha256: str, report: Report) -> bool:
    where = f"{repo.name}/{rel}"
    report.files += 1
    if repo.store.remote:
        try:
            source = RangeFile(repo.store, rel, size, sha256)
            while source.read(1 << 22):
                pass
        except FileNotFoundError:
            report.add(where, "missing")
            return False
        except (ShardError, OSError) as e:
            report.add(where, str(e))
            return False
        return True
    path = repo.store.local_path(rel)
    if not path.is_file():
        report.add(where, "missing")
        return False
    actual = path.stat().st_size
    if actual != size:
        report.add(where, f"is {actual} bytes, the manifest says {size} (truncated or replaced)")
        return False
    digest = file_digest(path)
    if digest != sha256:
        report.add(where, f"sha256 {digest} does not match the manifest's {sha256}")
        return False
    return True


def _check_records(shard: ShardInfo, where: str, config: str, split: str, seen: dict[str, str], keys: set[str],
                   report: Report, decode: bool) -> int | None:
    image = decode and config != schema.METADATA_CONFIG
    columns = list(schema.COLUMN_NAMES) if decode or shard.fmt == "webdataset" else ["processid", "split"]
    count = 0
    try:
        for record in read_records(shard, None, columns, image):
            count += 1
            pid = record["processid"]
            report.records += 1
            if pid in seen:
                report.add(where, f"record {pid} is also in {seen[pid]} (duplicate)")
            seen[pid] = where
            keys.add(pid)
            problems = check_record(record, split) if decode else (
                [] if record.get("split") == split else [f"split is {record.get('split')!r}, not {split!r}"])
            if image:
                bad = _decode(record["image"])
                if bad:
                    problems.append(bad)
            for p in problems:
                report.add(where, f"record {pid}: {p}")
    except (ShardError, OSError, ValueError) as e:
        report.add(where, f"unreadable after {count} records ({e})")
        return None
    return count


def verify(root: str | os.PathLike, decode: bool = False, retry=None, storage_options: dict | None = None) -> Report:
    """Verify the repos under ``root`` (the ``OUT`` of convert, or one repo folder, or a URL; ``retry``
    is the :class:`~bioscan5m_hf.repo.storage.RetryPolicy` and ``storage_options`` the fsspec options,
    e.g. credentials, for a URL)."""
    report = Report()
    repos = open_repos(root, Storage(storage_options=storage_options, retry=retry))
    keys = {fmt: verify_repo(repo, report, decode) for fmt, repo in repos.items()}
    if len(keys) == 2:
        parquet, tars = keys["parquet"], keys["webdataset"]
        for config, split in sorted(set(parquet) | set(tars)):
            if config == schema.METADATA_CONFIG:
                continue
            a, b = parquet.get((config, split)), tars.get((config, split))
            if a is None or b is None:
                missing_in = schema.WDS_REPO if b is None else schema.PARQUET_REPO
                report.add(f"{config}/{split}", f"converted in one repo but not in {missing_in}")
            elif a != b:
                only_p, only_t = sorted(a - b)[:5], sorted(b - a)[:5]
                report.add(f"{config}/{split}", f"Parquet and tar hold different records (only in Parquet: {only_p}, "
                                                f"only in tar: {only_t})")
    return report


def format_report(report: Report) -> str:
    head = (f"{'OK' if report.ok else 'FAILED'}: {report.files} files, {report.records} records checked, "
            f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}")
    return "\n".join([head, *("  " + p for p in report.problems), *("  note: " + n for n in report.notes)])



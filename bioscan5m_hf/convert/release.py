"""Read an official BIOSCAN-5M release in place: the metadata CSV and the images, from folders or zips.

The CSV is streamed in batches with pyarrow and validated as it goes; the typed table is written to
an Arrow IPC file and memory-mapped, so 5.15M rows never become Python objects nor sit on the heap
all at once. Images are located per record (a file in the extracted folders, or a member of one of
the official zips found anywhere under the release) and read by offset, never extracted.
"""

from __future__ import annotations

import csv
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from .. import schema
from ..errors import ReleaseError
from ..util import atomic_path

#: Cells read as missing, as pandas does by default (the official loader reads the CSV with pandas).
CSV_NULL_VALUES = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                   "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
CSV_BLOCK_BYTES = 16 << 20
MAX_FIELD_CHARS = 1 << 16


def find_metadata_csv(root: str | os.PathLike) -> Path:
    """The metadata CSV of a release: at its official path, else by its official name anywhere below."""
    root = Path(root)
    if root.is_file():
        return root
    official = root / schema.METADATA_CSV
    if official.is_file():
        return official
    for dirpath, _, filenames in _walk_release(root):
        if schema.METADATA_CSV_NAME in filenames:
            return Path(dirpath) / schema.METADATA_CSV_NAME
    raise ReleaseError(f"{root}: no metadata CSV ({schema.METADATA_CSV} or {schema.METADATA_CSV_NAME} below it)")


def _walk_release(root: Path):
    """os.walk that does not descend into the (millions of files of) extracted image folders."""
    images = (root / schema.IMAGES_DIR).resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d).resolve() != images)
        yield dirpath, dirnames, sorted(filenames)


# --------------------------------------------------------------------------------------------------
# Metadata


def _fail(path: Path, row: int, column: str, message: str) -> ReleaseError:
    return ReleaseError(f"{path}: row {row}, column {column!r}: {message}")


def _first_true(mask: pa.Array | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask, dtype=bool))[0])


def check_header(path: Path, names: Sequence[str]) -> None:
    """Every official column present, none unknown, none twice."""
    missing = [c for c in schema.COLUMN_NAMES if c not in names]
    unknown = [c for c in names if c not in schema.COLUMNS_BY_NAME]
    doubled = sorted({c for c in names if list(names).count(c) > 1})
    problems = []
    if missing:
        problems.append(f"missing columns {', '.join(map(repr, missing))}")
    if unknown:
        problems.append(f"unknown columns {', '.join(map(repr, unknown))}")
    if doubled:
        problems.append(f"repeated columns {', '.join(map(repr, doubled))}")
    if problems:
        raise ReleaseError(f"{path}: header: {'; '.join(problems)}")


def _parse_number(raw: pa.Array, col: schema.Column, path: Path, first_row: int) -> pa.Array:
    """Parse a string column into the column's numeric type, naming the first bad cell."""
    try:
        values = pc.cast(raw, pa.float64())
    except pa.ArrowInvalid:
        for k, v in enumerate(raw.to_pylist()):
            try:
                if v is not None:
                    float(v)
            except ValueError:
                raise _fail(path, first_row + k, col.name, f"cannot parse {v!r} as a number") from None
        raise
    finite = pc.fill_null(pc.is_finite(values), True)
    if not pc.all(finite).as_py():
        k = _first_true(pc.invert(finite))
        raise _fail(path, first_row + k, col.name, f"{raw[k].as_py()!r} is not a finite number")
    if pa.types.is_floating(col.type):
        return values
    whole = pc.fill_null(pc.equal(pc.floor(values), values), True)
    info = np.iinfo(col.type.to_pandas_dtype())
    in_range = pc.fill_null(pc.and_(pc.greater_equal(values, float(info.min)),
                                    pc.less_equal(values, float(info.max))), True)
    ok = pc.and_(whole, in_range)
    if not pc.all(ok).as_py():
        k = _first_true(pc.invert(ok))
        raise _fail(path, first_row + k, col.name, f"{raw[k].as_py()!r} is not an integer in [{info.min}, {info.max}]")
    return pc.cast(values, col.type)


def typed_batch(raw: pa.RecordBatch, path: Path, first_row: int) -> pa.RecordBatch:
    """Validate one batch of string cells and convert it to :func:`schema.arrow_schema`.

    ``first_row`` is the 1-based data row number of the batch's first row (the header is row 0).
    """
    arrays = []
    for col in schema.COLUMNS:
        values = raw.column(col.name)
        if not col.nullable and values.null_count:
            k = _first_true(values.is_null())
            raise _fail(path, first_row + k, col.name, "value is missing but the column is required")
        if pa.types.is_string(col.type):
            too_long = pc.fill_null(pc.greater(pc.utf8_length(values), MAX_FIELD_CHARS), False)
            if pc.any(too_long).as_py():
                k = _first_true(too_long)
                raise _fail(path, first_row + k, col.name, f"value is longer than {MAX_FIELD_CHARS} characters")
            arrays.append(values)
        else:
            arrays.append(_parse_number(values, col, path, first_row))
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema())
    _check_keys_and_splits(batch, path, first_row)
    return batch


def _check_keys_and_splits(batch: pa.RecordBatch, path: Path, first_row: int) -> None:
    pids = batch.column("processid")
    good = pc.match_substring_regex(pids, schema.PROCESSID_PATTERN.pattern)
    if not pc.all(good).as_py():
        k = _first_true(pc.invert(good))
        raise _fail(path, first_row + k, "processid",
                    f"{pids[k].as_py()!r} is not a valid key (letters, digits, '-' and '_' only, at most 64, "
                    "not starting with '__', which datasets and the Hub viewer skip as hidden)")
    splits = batch.column("split")
    known = pc.is_in(splits, value_set=pa.array(schema.SPLITS))
    if not pc.all(known).as_py():
        k = _first_true(pc.invert(known))
        raise _fail(path, first_row + k, "split",
                    f"unknown split {splits[k].as_py()!r}; expected one of {', '.join(schema.SPLITS)}")
    chunks = batch.column("chunk").to_pylist()
    for k, (pid, split) in enumerate(zip(pids.to_pylist(), splits.to_pylist())):
        expected = schema.chunk_for(pid, split)
        if chunks[k] != expected:
            rule = (f"the first {schema.CHUNK_DIGITS[split]} hex digits of md5(processid), {expected!r}"
                    if expected else "empty (this split has no chunk folders)")
            raise _fail(path, first_row + k, "chunk", f"{chunks[k]!r} does not match the chunk rule: expected {rule}")


def iter_metadata(path: str | os.PathLike, block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """Stream the metadata CSV as validated, typed record batches (official column order)."""
    path = Path(path)
    read_options = pcsv.ReadOptions(block_size=block_bytes, use_threads=True)
    parse_options = pcsv.ParseOptions(newlines_in_values=True)
    try:
        with open(path, "rb") as f:
            header = f.readline().decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ReleaseError(f"{path}: header is not UTF-8 text") from None
    names = next(csv.reader([header])) if header else []
    check_header(path, names)
    convert_options = pcsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        null_values=list(CSV_NULL_VALUES), strings_can_be_null=True, quoted_strings_can_be_null=True,
    )
    row = 1
    try:
        reader = pcsv.open_csv(path, read_options=read_options, parse_options=parse_options,
                               convert_options=convert_options)
        for raw in reader:
            yield typed_batch(raw, path, row)
            row += raw.num_rows
    except pa.ArrowInvalid as e:
        # pyarrow's own message says what is wrong (bad UTF-8, wrong field count) and where in the file.
        raise ReleaseError(f"{path}: after data row {row - 1}: {e}") from None


def load_metadata(csv_path: str | os.PathLike, ipc_path: str | os.PathLike,
                  block_bytes: int = CSV_BLOCK_BYTES) -> pa.Table:
    """Validate the whole CSV into an Arrow IPC file and return it memory-mapped.

    Also checks what needs every row at once: ``processid`` must be unique.
    """
    csv_path, ipc_path = Path(csv_path), Path(ipc_path)
    ipc_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ipc_path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, schema.arrow_schema()) as writer:  # parallel tasks may write it too
        for batch in iter_metadata(csv_path, block_bytes):
            writer.write_batch(batch)
    table = open_metadata(ipc_path)
    check_unique(table.column("processid"), csv_path)
    return table


def open_metadata(ipc_path: str | os.PathLike) -> pa.Table:
    """The memory-mapped metadata table written by :func:`load_metadata`."""
    return pa.ipc.open_file(pa.memory_map(str(ipc_path), "r")).read_all()


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` chunk by chunk: a plain ``take`` concatenates each whole column first,
    which overflows 32-bit string offsets once a column (5.15M barcodes) passes 2 GB."""
    rows = np.asarray(rows, dtype=np.int64)
    batches = table.to_batches()
    starts = np.cumsum([0] + [b.num_rows for b in batches])
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    chunk = np.searchsorted(starts, ordered, side="right") - 1
    parts = []
    for c in np.unique(chunk):
        local = ordered[chunk == c] - starts[c]
        parts.append(batches[int(c)].take(pa.array(local)))
    picked = pa.Table.from_batches(parts, schema=table.schema).combine_chunks() if parts else table.slice(0, 0)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return picked.take(pa.array(inverse))


def check_unique(pids: pa.ChunkedArray, path: Path) -> None:
    if len(pc.unique(pids)) == len(pids):
        return
    counts = pc.value_counts(pids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    rows = np.flatnonzero(pc.equal(pids, dup).to_numpy(zero_copy_only=False)) + 1
    raise _fail(path, int(rows[1]), "processid",
                f"duplicate processid {dup!r} (rows {', '.join(map(str, rows[:5]))})")


def vocabularies(table: pa.Table) -> dict[str, list[str]]:
    """Sorted distinct labels per label column over the whole table (the official category codes)."""
    out = {}
    for name in schema.LABEL_COLUMNS:
        values = pc.unique(table.column(name)).drop_null()
        out[name] = values.take(pc.sort_indices(values)).to_pylist()
    return out


# --------------------------------------------------------------------------------------------------
# Images


class ZipMember(NamedTuple):
    """Where one image lies inside an official zip."""

    archive: int
    offset: int
    compressed: int
    size: int
    method: int
    crc: int


#: A located image: a file path (extracted folders) or a zip member.
ImageRef = str | ZipMember


@dataclass
class ImageSource:
    """The images of one package: extracted folders under ``root``, or members of ``archives``."""

    package: str
    kind: str  # "folders" or "zips"
    root: Path
    archives: tuple[str, ...] = ()
    members: dict[str, ZipMember] | None = None

    def locate(self, relpath: str) -> tuple[ImageRef, int] | None:
        """The image at ``relpath`` (official relative path) and its size, or None if absent."""
        if self.kind == "folders":
            path = self.root / relpath
            try:
                return str(path), path.stat().st_size
            except FileNotFoundError:
                return None
        member = self.members.get(relpath)
        return None if member is None else (member, member.size)

    def describe(self) -> str:
        if self.kind == "folders":
            return f"folder {self.root / schema.IMAGES_DIR / self.package}"
        return f"zips {', '.join(Path(a).name for a in self.archives)}"


def find_zips(root: Path) -> dict[str, list[Path]]:
    """Official zips by package, found by name anywhere under ``root`` (sorted, so order is stable)."""
    found: dict[str, list[Path]] = {}
    for dirpath, _, filenames in _walk_release(root):
        for name in filenames:
            package = schema.package_of_zip(name)
            if package:
                found.setdefault(package, []).append(Path(dirpath) / name)
    return found


def open_image_source(root: str | os.PathLike, package: str, prefer: str = "auto") -> ImageSource:
    """Find a package's images: ``prefer`` is "folders", "zips" or "auto" (folders when present)."""
    root = Path(root)
    folder = root / schema.IMAGES_DIR / package
    if prefer in ("auto", "folders") and folder.is_dir():
        return ImageSource(package, "folders", root)
    zips = find_zips(root).get(package, []) if prefer in ("auto", "zips") else []
    if not zips:
        names = schema.ZIP_PATTERNS[package].pattern
        wanted = {"folders": f"folder {folder}", "zips": f"zips matching {names}"}
        what = wanted[prefer] if prefer in wanted else f"folder {folder} or zips matching {names}"
        raise ReleaseError(f"{root}: no images for package {package!r}: expected {what}")
    members: dict[str, ZipMember] = {}
    prefix = f"{schema.IMAGES_DIR}/{package}/"
    for k, path in enumerate(zips):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    check_zip_member(path, info)
                    if info.filename.startswith(prefix) and not info.is_dir():
                        members.setdefault(info.filename, ZipMember(
                            k, info.header_offset, info.compress_size, info.file_size, info.compress_type,
                            info.CRC))
        except zipfile.BadZipFile as e:
            raise ReleaseError(f"{path}: not a readable zip file ({e})") from None
    return ImageSource(package, "zips", root, tuple(str(p) for p in zips), members)


def check_zip_member(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse members that could point outside the release if anything ever extracted them:
    absolute paths, ``..`` parts, backslashes, symbolic links."""
    name = info.filename
    parts = name.split("/")
    mode = info.external_attr >> 16
    if name.startswith("/") or "\\" in name or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise ReleaseError(f"{path}: member {name!r} has an unsafe path (absolute or with '..')")
    if stat.S_ISLNK(mode):
        raise ReleaseError(f"{path}: member {name!r} is a symbolic link")


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes of fields, name and extra lengths


class ImageReader:
    """Reads located images; keeps zip files open between reads (one reader per worker process)."""

    def __init__(self, archives: Sequence[str] = ()):
        self.archives = tuple(archives)
        self._files: dict[int, object] = {}

    def read(self, ref: ImageRef, name: str = "") -> bytes:
        if isinstance(ref, str):
            with open(ref, "rb") as f:
                return f.read()
        return self._read_member(ref, name)

    def _read_member(self, m: ZipMember, name: str) -> bytes:
        archive = self.archives[m.archive]
        f = self._files.get(m.archive)
        if f is None:
            f = self._files[m.archive] = open(archive, "rb")
        f.seek(m.offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise ReleaseError(f"{archive}: member {name}: no local file header at offset {m.offset}")
        f.seek(m.offset + _LOCAL_HEADER.size + name_len + extra_len)
        data = f.read(m.compressed)
        if m.method == zipfile.ZIP_DEFLATED:
            data = zlib.decompressobj(-15).decompress(data)
        elif m.method != zipfile.ZIP_STORED:
            raise ReleaseError(f"{archive}: member {name}: unsupported compression method {m.method}")
        if len(data) != m.size or zlib.crc32(data) != m.crc:
            raise ReleaseError(f"{archive}: member {name} is corrupt (size or CRC does not match the zip directory)")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def missing_message(package: str, source: ImageSource, missing: Sequence[str], total: int) -> str:
    shown = ", ".join(sorted(missing)[:5])
    return (f"{len(missing)} of {total} records have no {package!r} image in {source.describe()}; "
            f"first missing: {shown} (pass --allow-missing to skip them and list them in the manifest)")

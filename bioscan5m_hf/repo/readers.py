"""Records from Parquet or tar shards, undecoded.

Readers yield plain dicts (metadata values, and the image's JPEG bytes when asked for) for given row
offsets of a shard, reading only what they need: Parquet reads just the requested columns and the row
groups holding the rows; a tar is scanned sequentially, reading only the wanted members' data.
Nothing read from a shard is ever unpickled or executed.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import schema
from ..errors import ShardError
from .manifest import ShardInfo


def arrow_indices(positions: np.ndarray) -> pa.Array:
    """Row positions as an Arrow int64 array over the same memory (no conversion: pyarrow's
    converters import pandas on first use, a sixth of a second in each fresh worker)."""
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(positions), [None, pa.py_buffer(positions)])


def numpy_view(array: pa.Array) -> np.ndarray:
    """A primitive Arrow array without nulls as numpy, over the same memory (``to_numpy`` imports
    pandas on first use)."""
    if array.null_count or not pa.types.is_primitive(array.type) or pa.types.is_boolean(array.type):
        return array.to_numpy(zero_copy_only=False)
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset: array.offset + len(array)]


@dataclass(frozen=True)
class SparseRows:
    """A few rows of a Parquet shard read without their row groups: where each row's JPEG bytes are
    in the file (``offsets``, ``sizes``: the record index's) and the rows' metadata, already read."""

    offsets: np.ndarray
    sizes: np.ndarray
    metadata: pa.Table

    def take(self, at: np.ndarray) -> SparseRows:
        return SparseRows(self.offsets[at], self.sizes[at], self.metadata.take(arrow_indices(at)))


def row_group_starts(f: pq.ParquetFile) -> np.ndarray:
    """First row of each row group, and the row count at the end."""
    return np.cumsum([0] + [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)])


def parquet_rows(shard: ShardInfo, offsets: np.ndarray | None, columns: Sequence[str],
                 groups_per_read: int = 1, sparse: SparseRows | None = None) -> Iterator[pa.Table]:
    """Rows ``offsets`` (ascending; None: all) of a Parquet shard with the given columns, as one table
    per ``groups_per_read`` row groups read (memory stays bounded by that). The one place Parquet
    shards are read: damage raises :class:`ShardError` naming the shard and the row group(s).

    ``sparse``: the rows' metadata and where their JPEG bytes are (:class:`SparseRows`): only those
    bytes are fetched (:func:`parquet_images`), as one table, not the row groups around them
    (BENCHMARKS.md, ``filter``)."""
    if sparse is not None and offsets is not None:
        jpegs = parquet_images(shard, sparse.offsets, sparse.sizes)
        paths = [f"{p}.{schema.IMAGE_EXTENSION}" for p in sparse.metadata.column("processid").to_pylist()]
        struct = pa.StructArray.from_arrays([pa.array(jpegs, pa.binary()), pa.array(paths, pa.string())],
                                            fields=list(schema.IMAGE_STRUCT))
        table = sparse.metadata.append_column(schema.IMAGE_COLUMN, struct)
        yield table.select(list(columns))
        return
    try:
        # A local shard is read in this thread: Arrow's pre-buffering hands each read to its I/O
        # pool and waits (a few % of a worker thread's time; BENCHMARKS.md, history). Remote reads
        # keep it: it coalesces a row group's column chunks into few ranged requests.
        f = (pq.ParquetFile(shard.open(), pre_buffer=True) if shard.store.remote
             else pq.ParquetFile(shard.path, pre_buffer=False))
    except (ValueError, pa.ArrowException) as e:
        raise ShardError(f"{shard.path}: not a readable Parquet shard ({e})") from None
    if offsets is None:
        offsets = np.arange(f.metadata.num_rows)
    if len(offsets) == 0:
        return
    starts = row_group_starts(f)
    groups = np.searchsorted(starts, offsets, side="right") - 1
    wanted = np.unique(groups)
    for k in range(0, len(wanted), groups_per_read):
        read = wanted[k: k + groups_per_read]
        try:
            # One row group's few column chunks: Arrow's thread pool would cost more than it saves
            # (3.8 vs 8.9 us per record for 100-row image groups).
            table = f.read_row_groups(read.tolist(), columns=list(columns), use_threads=len(read) > 1)
        except (OSError, ValueError, pa.ArrowException) as e:
            rows = f"rows {starts[read[0]]}-{starts[read[-1] + 1] - 1}"
            which = f"row group {read[0]}" if len(read) == 1 else f"row groups {read[0]}-{read[-1]}"
            raise ShardError(f"{shard.path}: {which} ({rows}) is damaged ({e})") from None
        # offsets ascend, so the rows in `read` are one run of them (a group between read[0] and
        # read[-1] that is not in `read` has no offsets)
        lo, hi = np.searchsorted(groups, read[0], side="left"), np.searchsorted(groups, read[-1], side="right")
        base = np.cumsum([0, *(starts[read + 1] - starts[read])[:-1]])  # where each group starts in `table`
        local = offsets[lo:hi] - starts[groups[lo:hi]] + base[np.searchsorted(read, groups[lo:hi])]
        whole = len(local) == table.num_rows and local[0] == 0 and local[-1] == table.num_rows - 1
        yield table if whole else table.take(arrow_indices(local))  # (offsets ascend: all rows means in order)


def read_parquet(shard: ShardInfo, offsets: np.ndarray | None, columns: Sequence[str],
                 image: bool, sparse: SparseRows | None = None) -> Iterator[dict]:
    """Rows ``offsets`` (ascending; None: all) of a Parquet shard: the metadata ``columns`` and, if
    ``image``, the JPEG bytes under ``"image"`` (``sparse``: see :func:`parquet_rows`)."""
    wanted = list(columns) + ([schema.IMAGE_COLUMN] if image else [])
    for table in parquet_rows(shard, offsets, wanted, sparse=sparse if image else None):
        cols = {name: table.column(name).to_pylist() for name in columns}
        images = table.column(schema.IMAGE_COLUMN).combine_chunks().field("bytes").to_pylist() if image else None
        for k in range(table.num_rows):
            record = {name: cols[name][k] for name in columns}
            if image:
                record["image"] = images[k]
            yield record


#: Read a tar's samples through its DALI index (instead of scanning it) when fewer than this share
#: of its samples are wanted, or, locally, when no image is: no byte of a sample left out is read.
SPARSE_SHARE = 0.25


def read_tar(shard: ShardInfo, offsets: np.ndarray | None, columns: Sequence[str], image: bool) -> Iterator[dict]:
    """Samples ``offsets`` (ascending; None: all) of a WebDataset tar shard, scanning it once, or, for
    a few samples (remotely: any selection), or metadata alone, reading just their members at the
    places the shard's DALI index gives (:func:`read_tar_indexed`).

    Every member must be a regular file named ``<processid>.jpg`` or ``<processid>.json``, a sample's
    members must be adjacent, and each sample must have both; anything else is an error naming the
    shard and the member (a ``.pickle`` or ``.pth`` member is never loaded, only refused).
    """
    if offsets is not None and len(offsets) == 0:
        return
    wanted_share = 1.0 if offsets is None else len(offsets) / max(1, shard.num_records)
    direct = not shard.store.verify and (shard.store.cache is None or not shard.store.remote)
    if shard.index_rel is not None and direct and (wanted_share < SPARSE_SHARE or (shard.store.remote and
                                                   wanted_share < 1) or (not image and not shard.store.remote)):
        yield from read_tar_indexed(shard, np.arange(shard.num_records) if offsets is None else offsets,
                                    columns, image)
        return
    wanted = None if offsets is None else set(offsets.tolist())
    last = None if offsets is None else int(offsets[-1])
    source = shard.open()
    try:
        tar = tarfile.open(fileobj=source, mode="r:")
    except tarfile.TarError as e:
        source.close()
        raise ShardError(f"{shard.path}: not a readable tar shard ({e})") from None
    with source, tar:
        index, key, sample, done = -1, None, {}, set()
        for member in _members(tar, shard):
            stem, _, ext = member.name.partition(".")
            if ext not in MEMBER_EXTENSIONS or "/" in member.name:
                raise ShardError(f"{shard.path}: member {member.name}: unexpected member (a sample is "
                                 f"<processid>.jpg + <processid>.json)")
            if stem != key:
                if key is not None and (wanted is None or index in wanted):
                    yield _tar_record(sample, columns, image, shard, key)
                if stem in done:
                    raise ShardError(f"{shard.path}: member {member.name}: sample {stem!r} appears twice")
                done.add(stem)
                index, key, sample = index + 1, stem, {}
                if last is not None and index > last:
                    return
            if ext in sample:
                raise ShardError(f"{shard.path}: member {member.name}: sample {stem!r} has it twice")
            if wanted is None or index in wanted:
                if ext == schema.METADATA_EXTENSION or image:
                    sample[ext] = _read_member(tar, member, shard)
                else:
                    sample[ext] = b""
            else:
                sample[ext] = b""
        if key is not None and (wanted is None or index in wanted):
            yield _tar_record(sample, columns, image, shard, key)


def dali_samples(shard: ShardInfo) -> list[list[tuple[str, int, int, str]]]:
    """The shard's DALI index: per sample, its members as (extension, data offset, size, name)."""
    key = (shard.store.root, shard.index_rel)
    cached = _INDEXES.get(key)
    if cached is not None:
        return cached
    where = f"{shard.path} (index {shard.index_rel})"
    try:
        lines = shard.store.read_bytes(shard.index_rel).decode("utf-8").splitlines()
        version, count = lines[0].split()
        samples = []
        for line in lines[1:]:
            fields = line.split()
            if len(fields) % 4:
                raise ValueError(f"a line of {len(fields)} fields")
            samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                            for i in range(0, len(fields), 4)])
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        raise ShardError(f"{where}: not a readable DALI index ({e})") from None
    if version != "v1.2" or int(count) != len(samples) or len(samples) != shard.num_records:
        raise ShardError(f"{where}: lists {len(samples)} samples, the manifest {shard.num_records}")
    if len(_INDEXES) > 64:
        _INDEXES.clear()
    _INDEXES[key] = samples
    return samples


_INDEXES: dict[tuple[str, str], list] = {}


#: Reading a remote tar through its index, neighbouring samples are fetched in one ranged request
#: (up to COALESCE_MAX bytes) while the bytes between them stay within COALESCE_WASTE of the samples'
#: own: fewer requests, and never more than that share of bytes no record needs (a filter keeping
#: one record in ten reads about its records' bytes, not the whole tar; BENCHMARKS.md, ``filter``).
COALESCE_WASTE = 0.25
COALESCE_MAX = 8 << 20


def coalesced(ranges: Sequence[tuple[int, ...]]) -> list[tuple[int, int]]:
    """``[first, last]`` runs of ``ranges`` (ascending ``(start, end, ...)`` byte ranges) each fetched
    with one request: neighbours join while the bytes between them stay within COALESCE_WASTE of
    their own, up to COALESCE_MAX bytes a request.

    >>> coalesced([(0, 100), (110, 200), (1000, 1100)])
    [(0, 1), (2, 2)]
    """
    out, k = [], 0
    while k < len(ranges):
        first = last = k
        payload, gaps = ranges[k][1] - ranges[k][0], 0
        while last + 1 < len(ranges) and ranges[last + 1][1] - ranges[first][0] <= COALESCE_MAX:
            gap = ranges[last + 1][0] - ranges[last][1]
            size = ranges[last + 1][1] - ranges[last + 1][0]
            if gaps + gap > COALESCE_WASTE * (payload + size):
                break
            payload, gaps, last = payload + size, gaps + gap, last + 1
        out.append((first, last))
        k = last + 1
    return out


def parquet_images(shard: ShardInfo, offsets: np.ndarray, sizes: np.ndarray) -> list[bytes]:
    """The JPEG bytes the record index places at ``offsets`` of a Parquet shard (plain, uncompressed
    values), fetched by ranges (:func:`coalesced`); each is checked against the 4-byte length stored
    before it, so a stale index is an error naming the shard, never wrong bytes."""
    ranges = [(int(o) - 4, int(o) + int(n)) for o, n in zip(offsets, sizes)]
    out = []
    for first, last in coalesced(ranges):
        base = ranges[first][0]
        data = shard.store.fetch(shard.rel, base, ranges[last][1])
        for start, end in ranges[first: last + 1]:
            piece = data[start - base: end - base]
            if len(piece) != end - start or int.from_bytes(piece[:4], "little") != end - start - 4:
                raise ShardError(f"{shard.path}: no image of {end - start - 4} bytes at byte {start + 4}, where the "
                                 "record index says (index/ out of date: verify the repo)")
            out.append(piece[4:])
    return out


def _sample_ranges(shard: ShardInfo, samples, offsets: list[int], image: bool) -> list[tuple[int, int, dict]]:
    """Per wanted sample: the byte range to read (a header before each member) and its members."""
    out = []
    for o in offsets:
        members = {ext: (offset, size, name) for ext, offset, size, name in samples[o]}
        if schema.METADATA_EXTENSION not in members:
            raise ShardError(f"{shard.path}: sample {o} has no .{schema.METADATA_EXTENSION} member in its index")
        wanted = {e: members[e] for e in (schema.IMAGE_EXTENSION, schema.METADATA_EXTENSION)
                  if e in members and (image or e == schema.METADATA_EXTENSION)}
        start = min(m[0] for m in wanted.values()) - tarfile.BLOCKSIZE
        end = max(m[0] + m[1] for m in wanted.values())
        if start < 0 or end > shard.num_bytes or any(m[1] > MAX_MEMBER_BYTES for m in wanted.values()):
            raise ShardError(f"{shard.path}: sample {o}: its index points outside the shard or past the member limit")
        out.append((start, end, wanted))
    return out


def read_tar_indexed(shard: ShardInfo, offsets: np.ndarray, columns: Sequence[str], image: bool) -> Iterator[dict]:
    """Samples ``offsets`` of a tar read where its DALI index says they are: locally one read per
    sample (its ``.json`` alone without the image), remotely ranged requests over neighbouring
    samples; each member's tar header is checked against the index (name and size), so a stale or
    wrong index is an error naming the shard and the member."""
    ranges = _sample_ranges(shard, dali_samples(shard), offsets.tolist(), image)
    fd = None if shard.store.remote else os.open(shard.store.local_path(shard.rel), os.O_RDONLY)
    try:  # remotely, neighbours coalesced into one request; locally one read per sample
        for first, last in coalesced(ranges) if fd is None else [(k, k) for k in range(len(ranges))]:
            base, stop = ranges[first][0], ranges[last][1]
            data = shard.store.fetch(shard.rel, base, stop) if fd is None else os.pread(fd, stop - base, base)
            for _, _, wanted in ranges[first: last + 1]:
                yield _indexed_record(shard, data, base, wanted, columns, image)
    finally:
        if fd is not None:
            os.close(fd)


def _indexed_record(shard: ShardInfo, data: bytes, base: int, wanted: dict, columns: Sequence[str],
                    image: bool) -> dict:
    sample, key = {schema.IMAGE_EXTENSION: b""}, None
    for ext, (offset, size, name) in wanted.items():
        header = data[offset - tarfile.BLOCKSIZE - base: offset - base]
        stored_name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        try:
            stored_size = int(header[124:136].strip(b"\0 ") or b"-1", 8)
        except ValueError:
            stored_size = -1
        if stored_name != name or stored_size != size or len(data) < offset + size - base:
            raise ShardError(f"{shard.path}: member {name}: not where the shard's index ({shard.index_rel}) says "
                             f"(found {stored_name!r}, {stored_size} bytes)")
        sample[ext] = data[offset - base: offset - base + size]
        key = name.split(".", 1)[0]
    return _tar_record(sample, columns, image, shard, key)


MEMBER_EXTENSIONS = (schema.IMAGE_EXTENSION, schema.METADATA_EXTENSION)
#: Largest member read into memory (the largest real JPEG is ~1 MB; JSON a few KB).
MAX_MEMBER_BYTES = 64 << 20


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, shard: ShardInfo) -> bytes:
    if member.size > MAX_MEMBER_BYTES:
        raise ShardError(f"{shard.path}: member {member.name}: {member.size} bytes, over the {MAX_MEMBER_BYTES} limit")
    try:
        data = tar.extractfile(member).read()
    except (OSError, tarfile.TarError) as e:
        raise ShardError(f"{shard.path}: member {member.name}: damaged ({e})") from None
    if len(data) != member.size:
        raise ShardError(f"{shard.path}: member {member.name}: truncated ({len(data)} of {member.size} bytes)")
    return data


def _members(tar: tarfile.TarFile, shard: ShardInfo) -> Iterator[tarfile.TarInfo]:
    try:
        while (member := tar.next()) is not None:
            tar.members.clear()  # TarFile keeps every member it read: memory would grow with the shard
            if not member.isfile():
                raise ShardError(f"{shard.path}: member {member.name}: not a regular file")
            yield member
    except tarfile.TarError as e:
        raise ShardError(f"{shard.path}: damaged tar ({e})") from None


def _tar_record(sample: dict, columns: Sequence[str], image: bool, shard: ShardInfo, key: str) -> dict:
    if schema.METADATA_EXTENSION not in sample:
        raise ShardError(f"{shard.path}: sample {key!r} has no .{schema.METADATA_EXTENSION} member")
    if schema.IMAGE_EXTENSION not in sample:
        raise ShardError(f"{shard.path}: sample {key!r} has no .{schema.IMAGE_EXTENSION} member")
    try:
        meta = json.loads(sample[schema.METADATA_EXTENSION])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ShardError(f"{shard.path}: member {key}.{schema.METADATA_EXTENSION}: invalid JSON ({e})") from None
    record = {name: meta.get(name) for name in columns}
    if image:
        record["image"] = sample[schema.IMAGE_EXTENSION]
    return record


def read_records(shard: ShardInfo, offsets: np.ndarray | None, columns: Sequence[str],
                 image: bool, sparse: SparseRows | None = None) -> Iterator[dict]:
    if shard.fmt == "parquet":
        yield from read_parquet(shard, offsets, columns, image, sparse)
    else:
        yield from read_tar(shard, offsets, columns, image)


def read_table(shard: ShardInfo, columns: Sequence[str]) -> pa.Table:
    """Metadata ``columns`` of a whole shard as one Arrow table, in shard order (no image bytes)."""
    fields = pa.schema([schema.arrow_schema().field(c) for c in columns])
    if shard.fmt == "parquet":
        tables = list(parquet_rows(shard, None, columns, groups_per_read=1 << 30))
        return pa.concat_tables(tables) if tables else fields.empty_table()
    return pa.Table.from_pylist(list(read_records(shard, None, columns, image=False)), schema=fields)


def read_column(shard: ShardInfo, column: str) -> list:
    """One metadata column of a whole shard, in shard order."""
    return [r[column] for r in read_records(shard, None, [column], image=False)]


def open_image(data: bytes):
    """A PIL image from JPEG bytes (lazy, like ``PIL.Image.open`` on a file)."""
    from PIL import Image

    return Image.open(io.BytesIO(data))

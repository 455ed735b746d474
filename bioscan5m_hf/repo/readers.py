"""Records from Parquet or tar shards, undecoded.

Readers yield plain dicts (metadata values, and the image's JPEG bytes when asked for) for given row
offsets of a shard, reading only what they need: Parquet reads just the requested columns and the row
groups holding the rows; a tar is scanned sequentially, reading only the wanted members' data.
Nothing read from a shard is ever unpickled or executed.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import schema
from ..errors import ShardError
from .manifest import ShardInfo


def row_group_starts(f: pq.ParquetFile) -> np.ndarray:
    """First row of each row group, and the row count at the end."""
    return np.cumsum([0] + [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)])


def parquet_rows(shard: ShardInfo, offsets: np.ndarray | None, columns: Sequence[str],
                 groups_per_read: int = 1) -> Iterator[pa.Table]:
    """Rows ``offsets`` (ascending; None: all) of a Parquet shard with the given columns, as one table
    per ``groups_per_read`` row groups read (memory stays bounded by that). The one place Parquet
    shards are read: damage raises :class:`ShardError` naming the shard and the row group(s)."""
    try:
        f = pq.ParquetFile(shard.path if not shard.store.remote else shard.open())
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
            table = f.read_row_groups(read.tolist(), columns=list(columns))
        except (OSError, ValueError, pa.ArrowException) as e:
            rows = f"rows {starts[read[0]]}-{starts[read[-1] + 1] - 1}"
            which = f"row group {read[0]}" if len(read) == 1 else f"row groups {read[0]}-{read[-1]}"
            raise ShardError(f"{shard.path}: {which} ({rows}) is damaged ({e})") from None
        picked = (groups >= read[0]) & (groups <= read[-1]) & np.isin(groups, read)
        base = np.cumsum([0, *(starts[read + 1] - starts[read])[:-1]])  # where each group starts in `table`
        local = offsets[picked] - starts[groups[picked]] + base[np.searchsorted(read, groups[picked])]
        whole = len(local) == table.num_rows and local[0] == 0 and local[-1] == table.num_rows - 1
        yield table if whole else table.take(pa.array(local))  # (offsets ascend: all rows means in order)


def read_parquet(shard: ShardInfo, offsets: np.ndarray | None, columns: Sequence[str],
                 image: bool) -> Iterator[dict]:
    """Rows ``offsets`` (ascending; None: all) of a Parquet shard: the metadata ``columns`` and, if
    ``image``, the JPEG bytes under ``"image"``."""
    wanted = list(columns) + ([schema.IMAGE_COLUMN] if image else [])
    for table in parquet_rows(shard, offsets, wanted):
        cols = {name: table.column(name).to_pylist() for name in columns}
        images = table.column(schema.IMAGE_COLUMN).combine_chunks().field("bytes").to_pylist() if image else None
        for k in range(table.num_rows):
            record = {name: cols[name][k] for name in columns}
            if image:
                record["image"] = images[k]
            yield record


def read_tar(shard: ShardInfo, offsets: np.ndarray | None, columns: Sequence[str], image: bool) -> Iterator[dict]:
    """Samples ``offsets`` (ascending; None: all) of a WebDataset tar shard, scanning it once.

    Every member must be a regular file named ``<processid>.jpg`` or ``<processid>.json``, a sample's
    members must be adjacent, and each sample must have both; anything else is an error naming the
    shard and the member (a ``.pickle`` or ``.pth`` member is never loaded, only refused).
    """
    if offsets is not None and len(offsets) == 0:
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
                 image: bool) -> Iterator[dict]:
    reader = read_parquet if shard.fmt == "parquet" else read_tar
    yield from reader(shard, offsets, columns, image)


def read_table(shard: ShardInfo, columns: Sequence[str]) -> pa.Table:
    """Metadata ``columns`` of a whole shard as one Arrow table, in shard order (no image bytes)."""
    if shard.fmt == "parquet":
        tables = list(parquet_rows(shard, None, columns, groups_per_read=1 << 30))
        fields = pa.schema([schema.arrow_schema().field(c) for c in columns])
        return pa.concat_tables(tables) if tables else fields.empty_table()
    fields = pa.schema([schema.arrow_schema().field(c) for c in columns])
    return pa.Table.from_pylist(list(read_records(shard, None, columns, image=False)), schema=fields)


def read_column(shard: ShardInfo, column: str) -> list:
    """One metadata column of a whole shard, in shard order."""
    return [r[column] for r in read_records(shard, None, [column], image=False)]


def open_image(data: bytes):
    """A PIL image from JPEG bytes (lazy, like ``PIL.Image.open`` on a file)."""
    from PIL import Image

    return Image.open(io.BytesIO(data))

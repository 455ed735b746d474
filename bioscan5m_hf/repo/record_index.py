"""Per-record random access: where each record of a config lives, one row per CSV row.

``index/<config>.parquet`` in each repo has one row per row of the metadata CSV (the order of
:data:`schema.CSV_ORDER`): ``shard`` (position in the config's shard list, splits in canonical
order, ``-1`` where the config lacks the record), ``row`` (the record's position in its shard) and,
for image configs, ``offset`` and ``size`` of its JPEG bytes in the shard file: in a tar, its
member's (the same numbers as the tar's DALI index); in a Parquet shard, its value in the image
column, whose bytes are stored plain and uncompressed (each value after its 4-byte length), so a
reader fetches one image with one ranged read in either repo (``-1`` where a Parquet shard stores
them otherwise, as repos converted before did). ``convert`` writes it, the manifest lists it with its sha256,
``verify`` rebuilds it from the shards and compares, and the map-style ``BIOSCAN5M`` reads one
record's bytes with it: one read in a tar, one row group of a Parquet shard.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema
from ..errors import ShardError
from .dali import dali_index_path
from .manifest import Repo
from .readers import parquet_rows
from .storage import copy_verified

INDEX_DIR = "index"


def index_relpath(config: str) -> str:
    return f"{INDEX_DIR}/{config}.parquet"


def _tar_members(repo: Repo, rel: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(processids, JPEG data offsets, JPEG sizes) of a tar, from its DALI index."""
    text = repo.store.read_bytes(dali_index_path(rel).as_posix()).decode("utf-8")
    pids, offsets, sizes = [], [], []
    for line in text.splitlines()[1:]:
        fields = line.split(" ")
        for i in range(0, len(fields), 4):
            if fields[i] == schema.IMAGE_EXTENSION:
                pids.append(fields[i + 3].rsplit(".", 1)[0])
                offsets.append(int(fields[i + 1]))
                sizes.append(int(fields[i + 2]))
    return pids, np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64)


def build_record_index(repo: Repo, config: str, csv_processids: pa.ChunkedArray | pa.Array) -> pa.Table:
    """The record index of ``config`` from its shards (their ``processid`` columns or DALI indexes)."""
    n = len(csv_processids)
    shard_col = np.full(n, -1, dtype=np.int32)
    row_col = np.full(n, -1, dtype=np.int32)
    offset_col = np.full(n, -1, dtype=np.int64)
    size_col = np.full(n, -1, dtype=np.int32)
    pids, shard_of, row_of, offsets, sizes = [], [], [], [], []
    for k, shard in enumerate(repo.shards(config, schema.SPLITS)):
        if repo.fmt == "parquet":
            got = pa.concat_tables(parquet_rows(shard, None, ["processid"])).column("processid").to_pylist()
            if config != schema.METADATA_CONFIG:
                off, size = parquet_image_offsets(repo, shard.rel)
                offsets.append(off)
                sizes.append(size)
        else:
            got, off, size = _tar_members(repo, shard.rel)
            offsets.append(off)
            sizes.append(size)
        pids += got
        shard_of.append(np.full(len(got), k, dtype=np.int32))
        row_of.append(np.arange(len(got), dtype=np.int32))
    if pids:
        where = pc.index_in(pa.array(pids, pa.string()), value_set=pa.array(csv_processids, pa.string()))
        if where.null_count:
            bad = pids[pc.index(pc.is_null(where), True).as_py()]
            raise ShardError(f"{repo.root}: {config}: record {bad!r} is in a shard but not in the metadata CSV")
        rows = where.to_numpy(zero_copy_only=False).astype(np.int64)
        shard_col[rows] = np.concatenate(shard_of)
        row_col[rows] = np.concatenate(row_of)
        if offsets:
            offset_col[rows] = np.concatenate(offsets)
            size_col[rows] = np.concatenate(sizes)
    columns = {"shard": shard_col, "row": row_col}
    if config != schema.METADATA_CONFIG:
        columns.update(offset=offset_col, size=size_col)
    return pa.table(columns)


def parquet_image_offsets(repo: Repo, rel: str) -> tuple[np.ndarray, np.ndarray]:
    """Where each image's bytes (in shard order) start in the Parquet file ``rel``, and their sizes:
    found after its 4-byte length in the image column's chunks, in order; the file is read once and
    its images decoded from that copy (-1 for all where a row group stores them otherwise:
    compressed or dictionary-encoded)."""
    data = repo.store.read_bytes(rel)
    try:
        f = pq.ParquetFile(io.BytesIO(data))
        images = f.read(columns=[schema.IMAGE_COLUMN]).column(schema.IMAGE_COLUMN).combine_chunks().field(
            "bytes").to_pylist()
    except (ValueError, pa.ArrowException) as e:
        raise ShardError(f"{repo.root}/{rel}: not a readable Parquet shard ({e})") from None
    meta = f.metadata
    column = next(i for i in range(meta.num_columns)
                  if meta.row_group(0).column(i).path_in_schema == f"{schema.IMAGE_COLUMN}.bytes")
    none = np.full(len(images), -1, dtype=np.int64)
    out, k = none.copy(), 0
    for g in range(meta.num_row_groups):
        chunk = meta.row_group(g).column(column)
        if chunk.compression != "UNCOMPRESSED" or chunk.dictionary_page_offset is not None:
            return none, none
        pos, end = chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size
        for _ in range(meta.row_group(g).num_rows):
            image = images[k]
            found = data.find(len(image).to_bytes(4, "little") + image[:64], pos, end)
            if found < 0 or data[found + 4: found + 4 + len(image)] != image:
                return none, none
            out[k] = found + 4
            pos, k = found + 4 + len(image), k + 1
    return out, np.array([len(b) for b in images], dtype=np.int64)


def write_record_index(table: pa.Table, path) -> None:
    pq.write_table(table, str(path), compression="zstd", row_group_size=1 << 20, write_page_index=True)


def read_record_index(repo: Repo, config: str, folder: Path | None = None) -> dict[str, np.ndarray]:
    """The record index of ``config`` as numpy arrays (from a remote repo, fetched once into
    ``folder`` and read from there); a clear error for repos converted before it existed."""
    rel = index_relpath(config)
    info = repo.manifest.get("files", {}).get(rel)
    if info is None:
        raise FileNotFoundError(
            f"{repo.root}: no per-record index for {config!r} (converted before random access existed); "
            "convert the release again (bioscan5m-hf convert RELEASE OUT --overwrite), or use streaming=True")
    if not repo.store.remote:
        source = repo.store.local_path(rel)
    elif folder is None:
        source = io.BytesIO(repo.store.read_bytes(rel))
    else:
        source = Path(folder) / f"index-{info['sha256'][:24]}.parquet"
        if not source.is_file():
            copy_verified(repo.store, rel, info["num_bytes"], info["sha256"], source)
    table = pq.read_table(source)
    return {name: table.column(name).to_numpy() for name in table.column_names}

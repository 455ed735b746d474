"""Write one shard: a Parquet file or a WebDataset tar, byte-identical for the same records.

Files are written under a temporary name in the target folder and renamed only when complete, so a
reader never sees a half-written shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import schema
from ..repo.dali import dali_index, dali_index_path
from ..util import atomic_path, write_atomic
from .release import take_rows

#: Parquet row groups end after a record whose cut hash (:func:`cut_points`) says so, once they hold
#: their minimum: one record in IMAGE_ROW_GROUP_MEAN past IMAGE_ROW_GROUP_MIN for image tables (about
#: 128 rows), one in METADATA_ROW_GROUP_MEAN past METADATA_ROW_GROUP_MIN for the metadata table. So a
#: group's records depend on the records, not on their count, and an edit changes only the groups it
#: touches (BENCHMARKS.md, ``republish``); the minimum keeps groups as large as readers that batch by
#: row group want (``datasets`` streams a file in batches of its first group's rows: 22-row groups
#: made the card's route 0.68 of make_loader, BENCHMARKS.md, ``loader``). Bounds cut a group where no
#: record did: image tables at IMAGE_ROW_GROUP_ROWS or IMAGE_ROW_GROUP_BYTES of image bytes (~64 rows
#: of 1 MB ``original_full`` images), the metadata table at ROW_GROUP_BYTES, under the 100 MB of
#: ``datasets``' writer (``datasets.config.MAX_ROW_GROUP_SIZE``) and far below what the viewer may
#: read to serve one page of rows (:mod:`bioscan5m_hf.hub.rules`).
IMAGE_ROW_GROUP_MIN = 64
IMAGE_ROW_GROUP_MEAN = 64
IMAGE_ROW_GROUP_ROWS = 256
IMAGE_ROW_GROUP_BYTES = 64 << 20
METADATA_ROW_GROUP_MIN = 1 << 13
METADATA_ROW_GROUP_MEAN = 1 << 15
ROW_GROUP_BYTES = 96 << 20
#: Data pages cut by content (Arrow's content-defined chunking), with ``datasets``' own parameters
#: (``datasets.config.DEFAULT_CDC_OPTIONS``, written since datasets 4.1): an edit changes the pages
#: around it, not every page after it.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}
PARQUET_COMPRESSION = "zstd"


# --------------------------------------------------------------------------------------------------
# `datasets` features, derived from the schema


def _value_dtype(t: pa.DataType) -> str:
    return {pa.string(): "string", pa.float64(): "float64", pa.int64(): "int64", pa.uint8(): "uint8"}[t]


def hf_features(with_image: bool) -> dict:
    """``datasets.Features.to_dict()`` of a Parquet table (image column first when present)."""
    features = {schema.IMAGE_COLUMN: {"_type": "Image"}} if with_image else {}
    for col in schema.COLUMNS:
        features[col.name] = {"dtype": _value_dtype(col.type), "_type": "Value"}
    return features


def hf_features_yaml(fmt: str, with_image: bool) -> list[dict]:
    """Features as the dataset card's ``dataset_info`` YAML lists them."""
    meta = [{"name": c.name, "dtype": _value_dtype(c.type)} for c in schema.COLUMNS]
    if fmt == "webdataset":
        return [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
                {"name": schema.IMAGE_EXTENSION, "dtype": "image"},
                {"name": schema.METADATA_EXTENSION, "struct": meta}]
    return ([{"name": schema.IMAGE_COLUMN, "dtype": "image"}] if with_image else []) + meta


def parquet_schema(with_image: bool) -> pa.Schema:
    fields = [pa.field(schema.IMAGE_COLUMN, schema.IMAGE_STRUCT)] if with_image else []
    fields += list(schema.arrow_schema())
    info = {"info": {"features": hf_features(with_image)}}
    return pa.schema(fields, metadata={b"huggingface": json.dumps(info).encode()})


# --------------------------------------------------------------------------------------------------
# Parquet


def parquet_table(metadata: pa.Table, images: Sequence[bytes] | None) -> pa.Table:
    """The shard's table: the image struct (original bytes, path ``<processid>.jpg``) + metadata."""
    with_image = images is not None
    columns = []
    if with_image:
        paths = [f"{p}.{schema.IMAGE_EXTENSION}" for p in metadata.column("processid").to_pylist()]
        columns.append(pa.StructArray.from_arrays(
            [pa.array(images, pa.binary()), pa.array(paths, pa.string())], fields=list(schema.IMAGE_STRUCT)))
    columns += [metadata.column(c).combine_chunks() for c in schema.COLUMN_NAMES]
    return pa.Table.from_arrays(columns, schema=parquet_schema(with_image))


def cut_points(processids: Sequence[str], mean: int) -> np.ndarray:
    """Whether a row group may end after each record: one record in ``mean`` on average, by a hash of
    its ``processid`` alone (another hash than the shard order's, so the two are independent)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8, person=b"row-group").digest(),
                                       "big") % mean == 0 for p in processids), dtype=bool, count=len(processids))


def row_groups(table: pa.Table, with_image: bool) -> list[int]:
    """Rows in each row group, in order: ended at the records :func:`cut_points` picks past the
    minimum, or at the bounds (see :data:`IMAGE_ROW_GROUP_MEAN`).

    >>> t = parquet_table(pa.table({c: pa.array([f"P{i}" if c == "processid" else None for i in range(5)],
    ...                                         schema.arrow_schema().field(c).type)
    ...                             for c in schema.COLUMN_NAMES}), [b"x" * (20 << 20)] * 5)
    >>> row_groups(t, True)  # 64 MB of images at most
    [3, 2]
    """
    n = table.num_rows
    cuts = cut_points(table.column("processid").to_pylist(), IMAGE_ROW_GROUP_MEAN if with_image else
                      METADATA_ROW_GROUP_MEAN)
    if with_image:
        sizes = pc.binary_length(table.column(schema.IMAGE_COLUMN).combine_chunks().field("bytes")).to_numpy(
            zero_copy_only=False)
        min_rows, max_rows, max_bytes = IMAGE_ROW_GROUP_MIN, IMAGE_ROW_GROUP_ROWS, IMAGE_ROW_GROUP_BYTES
    else:
        sizes = np.full(n, max(1, table.nbytes // max(1, n)))
        min_rows, max_rows, max_bytes = METADATA_ROW_GROUP_MIN, n, ROW_GROUP_BYTES
    groups, rows, nbytes = [], 0, 0
    for size, cut in zip(sizes.tolist(), cuts.tolist()):
        if rows and (rows == max_rows or nbytes + size > max_bytes):
            groups.append(rows)
            rows, nbytes = 0, 0
        rows += 1
        nbytes += int(size)
        if cut and rows >= min_rows:
            groups.append(rows)
            rows, nbytes = 0, 0
    return groups + [rows] if rows or not groups else groups


def write_parquet(path: str | os.PathLike, table: pa.Table, with_image: bool, groups: Sequence[int] | None = None
                  ) -> int:
    """Write ``table`` with fixed settings: row groups as :func:`row_groups` cuts them (or of
    ``groups`` rows), data pages
    cut by content (:data:`CDC_OPTIONS`), page index, statistics of the columns filters use;
    label-like columns as dictionaries, zstd; image bytes stored as they are (plain, uncompressed, as
    ``datasets`` writes image columns: JPEG does not compress, and identical images are identical
    bytes in every file and in the tars). Returns :func:`arrow_bytes` of the file."""
    unique = ("processid", "sampleid", "dna_barcode")  # a value per record: no dictionary, no statistics
    dictionary = [c.name for c in schema.COLUMNS if pa.types.is_string(c.type) and c.name not in unique]
    # Statistics where a filter can use them (labels, numbers): min/max of barcodes and ids, per row
    # group and per page, were most of each file's footer, rewritten whole by any edit.
    statistics = [c for c in table.column_names if c not in unique and c != schema.IMAGE_COLUMN]
    compression = {c.name: PARQUET_COMPRESSION for c in schema.COLUMNS}
    encoding = {}
    if with_image:
        for leaf in (f"{schema.IMAGE_COLUMN}.{f.name}" for f in schema.IMAGE_STRUCT):
            compression[leaf] = "none" if leaf.endswith(".bytes") else PARQUET_COMPRESSION
        encoding[f"{schema.IMAGE_COLUMN}.bytes"] = "PLAIN"
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(str(tmp), table.schema, compression=compression, use_dictionary=dictionary,
                              column_encoding=encoding or None, write_statistics=statistics, write_page_index=True,
                              store_schema=True, use_content_defined_chunking=CDC_OPTIONS) as writer:
            writer.add_key_value_metadata({"content_defined_chunking": json.dumps(CDC_OPTIONS)})
            start = 0
            for rows in groups if groups is not None else row_groups(table, with_image):
                writer.write_table(table.slice(start, rows), row_group_size=max(1, rows))
                start += rows
        return arrow_bytes(tmp)


def arrow_bytes(path: str | os.PathLike) -> int:
    """The Arrow bytes ``datasets`` records for a Parquet shard (its ``num_bytes`` in ``dataset_info``):
    the sum of ``nbytes`` of the batches its Parquet builder reads: a fragment's batches of the first
    row group's rows, as it scans them (each batch's buffers are counted, so the cut must be its)."""
    # In this thread, from the path: a scan on Arrow's pools through a Python file object could leave
    # a thread behind at exit ("terminate called without an active exception" in a convert task).
    fragment = ds.ParquetFileFormat().make_fragment(os.fspath(path), filesystem=pafs.LocalFileSystem())
    if not fragment.row_groups:
        return 0
    batches = fragment.to_batches(batch_size=max(1, fragment.row_groups[0].num_rows), batch_readahead=0,
                                  fragment_readahead=0, use_threads=False)
    return sum(b.nbytes for b in batches)


def tar_arrow_bytes(table: pa.Table, relpath: str) -> int:
    """The Arrow bytes ``datasets``' WebDataset builder records for a tar of ``table``'s records
    (:func:`parquet_table`): the same image struct and metadata values, plus ``__key__`` and
    ``__url__``, counting ``__url__`` as the shard's path in the repo (``datasets`` stores the path it
    read the tar from there, which no card can know: add ``len(path) - len(relpath)`` per record)."""
    n = table.num_rows
    keys = pc.sum(pc.binary_length(table.column("processid"))).as_py() or 0
    return table.nbytes + 2 * 4 * (n + 1) + keys + n * len(relpath.encode())


def write_csv_order(path: str | os.PathLike, processids: pa.ChunkedArray) -> None:
    """The ``processid`` column in the CSV's row order (see :data:`schema.CSV_ORDER`)."""
    table = pa.table({"processid": processids})
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp), compression=PARQUET_COMPRESSION, row_group_size=1 << 20, store_schema=True,
                       write_page_index=True)


#: Rows taken at a time when grouping the release by split (each block's strings stay under 2 GB).
TAKE_ROWS = 1 << 17


def write_release_table(path: str | os.PathLike, table: pa.Table) -> None:
    """Every record's metadata as :data:`schema.RELEASE_TABLE` says: ``table`` (in CSV order) with
    each record's ``csv_row``, the splits' rows together (in :data:`schema.SPLITS` order, CSV order
    within each), written as the metadata config is (:func:`write_parquet`: compressed, row groups
    cut by the records, pages by content) with no row group across two splits; the schema metadata
    ``splits`` maps each split to ``[first row group, row groups, rows]``."""
    split = table.column("split").to_numpy(zero_copy_only=False)
    columns = [c for c in schema.COLUMN_NAMES if c in table.column_names]
    parts, groups, layout = [], [], {}
    for s in schema.SPLITS:
        mine = np.flatnonzero(split == s)
        # Taken a block at a time: one take of a split's barcodes would pass 32-bit string offsets.
        blocks = [take_rows(table.select(columns), mine[a: a + TAKE_ROWS]) for a in range(0, len(mine), TAKE_ROWS)]
        part = (pa.concat_tables(blocks) if blocks else table.select(columns).slice(0, 0)).append_column(
            "csv_row", pa.chunked_array([pa.array(mine[a: a + TAKE_ROWS], pa.int64())
                                         for a in range(0, len(mine), TAKE_ROWS)], pa.int64()))
        cuts = row_groups(part, with_image=False) if len(mine) else []
        layout[s] = [len(groups), len(cuts), len(mine)]
        parts.append(part)
        groups += cuts
    fields = [table.schema.field(c) for c in columns] + [pa.field("csv_row", pa.int64(), nullable=False)]
    out = pa.concat_tables([p.cast(pa.schema(fields)) for p in parts]).replace_schema_metadata(
        {"splits": json.dumps(layout)})
    write_parquet(path, out, with_image=False, groups=groups)


# --------------------------------------------------------------------------------------------------
# WebDataset tar


def record_json(record: dict) -> bytes:
    """A record's ``.json`` member: every metadata column, in schema order, null when missing."""
    ordered = {name: _json_value(record[name]) for name in schema.COLUMN_NAMES}
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"non-finite number {v!r} cannot be written to JSON")
    return v


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header ``tarfile`` writes for our members (regular file, mode 0644, owner
    0, mtime 0), built directly: ``tarfile`` spends ~80 us per header in Python."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= 8 ** 11:
        raise ValueError(f"tar member {name[:40]!r}... does not fit a USTAR header ({len(raw)} bytes, {size} bytes)")
    head = b"".join((raw.ljust(100, b"\0"), b"0000644\0", b"0000000\0", b"0000000\0", b"%011o\0" % size,
                     b"00000000000\0", b" " * 8, b"0", b"\0" * 100, b"ustar\x0000")).ljust(512, b"\0")
    return head[:148] + b"%06o\0" % sum(head) + head[155:]


def write_tar(path: str | os.PathLike, records: Sequence[dict], images: Sequence[bytes]) -> None:
    """Write ``<processid>.jpg`` and ``<processid>.json`` for each record, in order, and the tar's
    DALI index next to it (:func:`dali_index_path`; written first, so a tar never lacks its index).

    Byte for byte what ``tarfile`` writes in USTAR format with our fixed member attributes
    (:func:`ustar_header`, checked against ``tarfile`` by a test), only faster."""
    samples = [[(f"{r['processid']}.{schema.IMAGE_EXTENSION}", image),
                (f"{r['processid']}.{schema.METADATA_EXTENSION}", record_json(r))]
               for r, image in zip(records, images, strict=True)]
    write_atomic(dali_index_path(path), dali_index([[(n, len(d)) for n, d in s] for s in samples]))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                for name, data in sample:
                    header = ustar_header(name, len(data))
                    pad = -len(data) % tarfile.BLOCKSIZE
                    f.write(header)
                    f.write(data)
                    f.write(b"\0" * pad)
                    tar.offset += tarfile.BLOCKSIZE + len(data) + pad

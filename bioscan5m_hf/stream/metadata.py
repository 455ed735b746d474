"""The release's metadata as the official loader sees it: every record in CSV order, the records a
split keeps (``reduce_repeated_barcodes``), and the official ``metadata`` DataFrame.

Read from a converted repo without touching image bytes. :func:`open_release` memory-maps the
splits' rows of :data:`schema.RELEASE_TABLE` (a remote root fetches those record batches once into
its cache); repos converted before that file existed fall back to :func:`release_table`, which reads
the Parquet repo's ``metadata`` config (or the tars' JSON members) and puts it back in CSV order
with ``csv-order.parquet``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..options import Storage
from ..repo.manifest import Repo
from ..repo.readers import parquet_rows, read_records
from ..repo.storage import redact
from ..util import atomic_path

#: The official loader's metadata columns (its ``USECOLS``), in CSV order, and their pandas dtypes.
OFFICIAL_COLUMNS = ("processid", "phylum", "class", "order", "family", "subfamily", "genus", "species", "dna_bin",
                    "dna_barcode", "country", "province_state", "coord-lat", "coord-lon", "image_measurement_value",
                    "area_fraction", "scale_factor", "split", "chunk")
OFFICIAL_DTYPES = {"processid": str, "phylum": "category", "class": "category", "order": "category",
                   "family": "category", "subfamily": "category", "genus": "category", "species": "category",
                   "dna_bin": "category", "dna_barcode": str, "country": "category", "province_state": "category",
                   "coord-lat": float, "coord-lon": float, "image_measurement_value": float, "area_fraction": float,
                   "scale_factor": float, "split": str, "chunk": str}


def metadata_repo(repos: dict[str, Repo]) -> tuple[Repo, str]:
    """Where to read every record's metadata: the Parquet metadata config, else any full config."""
    parquet = repos.get("parquet")
    if parquet is not None and schema.METADATA_CONFIG in parquet.configs:
        return parquet, schema.METADATA_CONFIG
    repo = next(iter(repos.values()))
    return repo, next(iter(repo.configs))


@dataclass
class ReleaseRows:
    """Some splits' records: ``table`` holds their metadata (memory-mapped where the repo has
    :data:`schema.RELEASE_TABLE`), the rows of each split together, in CSV order within it;
    ``csv_row`` the CSV row of each table row."""

    table: pa.Table
    csv_row: np.ndarray

    def in_csv_order(self, columns: Sequence[str]) -> pa.Table:
        """``columns`` of these records in CSV order: a copy, a column at a time (:func:`csv_ordered`)."""
        order = np.argsort(self.csv_row, kind="stable")
        place = np.empty(len(order), dtype=np.int64)
        place[order] = np.arange(len(order))  # where each table row goes
        return pa.table({c: csv_ordered(list(self.table.column(c).chunks), place, self.table.schema.field(c).type)
                         for c in columns})


def release_repo(repos: dict[str, Repo]) -> Repo | None:
    """The repo that holds :data:`schema.RELEASE_TABLE` (the Parquet one first), if any does."""
    return next((r for r in (repos.get("parquet"), repos.get("webdataset"))
                 if r is not None and schema.RELEASE_TABLE in r.manifest.get("files", {})), None)


def open_release(repos: dict[str, Repo], splits: Sequence[str], storage: Storage | None = None) -> ReleaseRows:
    """The records of ``splits``, read as little as possible: :data:`schema.RELEASE_TABLE` memory-mapped
    (nothing is read until used, and processes share the pages), only those splits' record batches;
    from a remote root, those batches fetched once into ``storage.cache_dir`` (default
    ``~/.cache/bioscan5m-hf``) and mapped from there."""
    splits = [s for s in schema.SPLITS if s in set(splits)]
    repo = release_repo(repos)
    if repo is None:  # converted before RELEASE_TABLE existed: read everything, as the official loader does
        table = release_table(repos, list(schema.COLUMN_NAMES))
        rows = np.flatnonzero(pc.is_in(table.column("split"), value_set=pa.array(splits, pa.large_string()))
                              .to_numpy(zero_copy_only=False))
        # (release_table's strings have 64-bit offsets, so a plain take cannot overflow them)
        return ReleaseRows(table.take(pa.array(rows)) if len(rows) < table.num_rows else table, rows)
    path = (repo.store.local_path(schema.RELEASE_TABLE) if not repo.store.remote
            else _cached_splits(repo, splits, storage or Storage()))
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    layout = json.loads(reader.schema.metadata[b"splits"])
    batches = [reader.get_batch(i) for s in splits for i in range(layout[s][0], layout[s][0] + layout[s][1])]
    table = pa.Table.from_batches(batches, schema=reader.schema)
    csv_row = table.column("csv_row")
    csv_row = csv_row.chunk(0).to_numpy() if csv_row.num_chunks == 1 else csv_row.to_numpy()
    return ReleaseRows(table.drop_columns(["csv_row"]), csv_row)


def _cached_splits(repo: Repo, splits: Sequence[str], storage: Storage) -> Path:
    """A local file of :data:`schema.RELEASE_TABLE`'s record batches of ``splits``, fetched from a remote
    repo once (ranged reads of those batches and the file's footer) and kept in the cache folder."""
    info = repo.manifest["files"][schema.RELEASE_TABLE]
    key = hashlib.sha256(f"{info['sha256']} {'+'.join(splits)}".encode()).hexdigest()[:24]
    path = storage.local_folder() / f"metadata-{key}.arrow"
    if path.is_file():
        return path
    with repo.store.open(schema.RELEASE_TABLE, info["num_bytes"]) as remote:
        reader = pa.ipc.open_file(remote)
        layout = json.loads(reader.schema.metadata[b"splits"])
        mine, first = {}, 0
        for s in splits:
            mine[s] = [first, layout[s][1], layout[s][2]]
            first += layout[s][1]
        local_schema = reader.schema.with_metadata({b"splits": json.dumps(mine).encode(),
                                                    b"source": redact(repo.store.url(schema.RELEASE_TABLE)).encode()})
        with atomic_path(path) as tmp, pa.ipc.new_file(str(tmp), local_schema) as writer:
            for s in splits:
                for i in range(layout[s][0], layout[s][0] + layout[s][1]):
                    writer.write_batch(reader.get_batch(i))
    return path


def release_in_csv_order(repos: dict[str, Repo], columns: Sequence[str], storage: Storage | None = None) -> pa.Table:
    """``columns`` of every record of the release in the metadata CSV's row order."""
    if release_repo(repos) is None:
        return release_table(repos, columns)
    return open_release(repos, schema.SPLITS, storage).in_csv_order(columns)


def release_table(repos: dict[str, Repo], columns: Sequence[str], max_nucleotides: int | None = None) -> pa.Table:
    """``columns`` of every record of the release, in the metadata CSV's row order, strings with
    64-bit offsets (the release's barcodes pass 2 GB), barcodes truncated to ``max_nucleotides``.

    Memory: each shard's part is narrowed as it is read, and the reordering copies one column at a
    time, chunk by chunk (:func:`csv_ordered`), so the peak is about the table and one chunk."""
    repo, config = metadata_repo(repos)
    wanted = list(dict.fromkeys(["processid", *columns]))
    fields = pa.schema([schema.arrow_schema().field(c) for c in wanted])
    large = pa.schema([f.with_type(pa.large_string()) if pa.types.is_string(f.type) else f for f in fields])
    parts = []
    for shard in repo.shards(config, schema.SPLITS):
        if shard.fmt == "parquet":
            tables = list(parquet_rows(shard, None, wanted))
        else:
            tables = [pa.Table.from_pylist(list(read_records(shard, None, wanted, image=False)), schema=fields)]
        for part in tables:
            part = part.cast(large)
            if max_nucleotides is not None and "dna_barcode" in wanted:
                barcode = pc.utf8_slice_codeunits(part.column("dna_barcode"), 0, max_nucleotides)
                part = part.set_column(part.schema.get_field_index("dna_barcode"), "dna_barcode", barcode)
            parts.append(part)
    table = pa.concat_tables(parts) if parts else large.empty_table()
    del parts
    order = repo.read_table(schema.CSV_ORDER, ["processid"]).column("processid")
    where = pc.index_in(order.cast(pa.large_string()), value_set=table.column("processid"))
    if where.null_count or table.num_rows != len(order):
        raise ValueError(f"{repo.root}: config {config!r} holds {table.num_rows} of the release's {len(order)} "
                         "records; the metadata needs them all")
    where = where.to_numpy(zero_copy_only=False).astype(np.int64)  # table row of each CSV row
    csv_row = np.empty(len(where), dtype=np.int64)
    csv_row[where] = np.arange(len(where))  # the CSV row of each table row
    out = {}
    for name in columns:
        chunks, kind = table.column(name).chunks, table.schema.field(name).type
        table = table.drop_columns([name])  # the chunks list holds the only references now
        out[name] = csv_ordered(chunks, csv_row, kind)
    return pa.table(out)


def csv_ordered(chunks: list[pa.Array], csv_row: np.ndarray, kind: pa.DataType) -> pa.ChunkedArray:
    """The values of ``chunks`` (in table order; the list is emptied) put in CSV order, with about
    one copy of the data alive at a time: each chunk is cut into pieces by destination block of
    :data:`TAKE_BLOCK` CSV rows and released, then each block is assembled from its pieces. (A plain
    ``take`` first concatenates every chunk: twice the column, and more than 32-bit string offsets
    can hold for the release's barcodes.)"""
    block_of = csv_row // TAKE_BLOCK
    pieces: dict[int, list[tuple[np.ndarray, pa.Array]]] = {}
    start = 0
    while chunks:
        chunk = chunks.pop(0)  # released once cut
        rows = np.arange(start, start + len(chunk))
        start += len(chunk)
        for b in np.unique(block_of[rows]).tolist():
            mine = rows[block_of[rows] == b]
            pieces.setdefault(b, []).append((csv_row[mine], chunk.take(pa.array(mine - rows[0]))))
        del chunk
    blocks = []
    for b in sorted(pieces):
        rows = np.concatenate([r for r, _ in pieces[b]])
        values = pa.concat_arrays([v for _, v in pieces.pop(b)])
        blocks.append(values.take(pa.array(np.argsort(rows, kind="stable"))))
    return pa.chunked_array(blocks, type=kind)


#: CSV rows gathered per output chunk when putting the release in CSV order.
TAKE_BLOCK = 1 << 18


def reduced_rows(barcodes: pa.ChunkedArray, max_nucleotides: int | None,
                 csv_row: np.ndarray | None = None) -> np.ndarray:
    """CSV rows ``reduce_repeated_barcodes=True`` keeps, ascending: after truncation to
    ``max_nucleotides``, the rows of the whole CSV are shuffled with ``random_state=0`` (numpy's
    ``RandomState(0).permutation``, as pandas' ``sample(frac=1)``), and the first row of each
    barcode with trailing ``N`` stripped is kept. ``barcodes`` are every record's, in CSV order, or
    in any order with ``csv_row`` the CSV row of each."""
    if max_nucleotides is not None:
        barcodes = pc.utf8_slice_codeunits(barcodes, 0, max_nucleotides)
    stripped = pc.utf8_rtrim(barcodes, characters="N")
    ids = pc.index_in(stripped, value_set=pc.unique(stripped)).to_numpy(zero_copy_only=False)  # one id per barcode
    del stripped
    if csv_row is not None:
        by_csv = np.empty_like(ids)
        by_csv[csv_row] = ids
        ids = by_csv
    perm = np.random.RandomState(0).permutation(len(ids))
    _, first = np.unique(ids[perm], return_index=True)  # the first row of each barcode in shuffled order
    return np.sort(perm[first])


def metadata_frame(table: pa.Table, split: str, max_nucleotides: int | None, reduce_repeated_barcodes: bool):
    """The official ``metadata`` DataFrame from the release's :data:`OFFICIAL_COLUMNS` in CSV order
    (its index is the CSV row): the same dtypes (labels as categories over the whole release), the
    same truncation, reduction and split filter, ``<rank>_index`` codes and ``image_path``. Strings
    share the table's memory."""
    import os

    df = table.select(list(OFFICIAL_COLUMNS)).to_pandas().astype(OFFICIAL_DTYPES)
    if max_nucleotides is not None:
        df["dna_barcode"] = df["dna_barcode"].str[:max_nucleotides]
    if reduce_repeated_barcodes:
        shuffled = df.sample(frac=1, random_state=0)
        stripped = shuffled["dna_barcode"].str.rstrip("N")
        df = shuffled.loc[~stripped.duplicated()].sort_index()
    if split is not None and split != "all":
        df = df.loc[df["split"].isin(schema.explode_split(split))]
    for column in schema.LABEL_COLUMNS:
        df[column + "_index"] = df[column].cat.codes
    chunk = df["chunk"].astype(str) + os.path.sep
    chunk = chunk.where(df["chunk"].notna(), "")
    df["image_path"] = df["split"] + os.path.sep + chunk + df["processid"] + ".jpg"
    return df

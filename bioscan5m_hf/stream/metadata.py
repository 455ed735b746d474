"""The release's metadata as the official loader sees it: every record in CSV order, the records a
split keeps (``reduce_repeated_barcodes``), and the official ``metadata`` DataFrame.

Read from a converted repo without touching image bytes. Each repo holds every record's metadata
once, compressed (:data:`schema.RELEASE_TABLE`); :func:`open_release` copies the row groups of the
splits it needs into uncompressed Arrow files of the cache folder, once, and memory-maps them from
there, as ``datasets`` keeps its Arrow cache: the repo stays small under edits (BENCHMARKS.md,
``republish``) and every later construction maps (``dropin``).
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
import pyarrow.parquet as pq

from .. import schema
from ..options import Storage
from ..repo.manifest import Repo
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
#: Bumped when the local copy's layout changes, so an older copy is not mapped as if it were this one.
LOCAL_LAYOUT = 1


@dataclass
class ReleaseRows:
    """Some splits' records: ``table`` holds their metadata (memory-mapped), the rows of each split
    together; ``csv_row`` the CSV row of each table row."""

    table: pa.Table
    csv_row: np.ndarray

    def in_csv_order(self, columns: Sequence[str]) -> pa.Table:
        """``columns`` of these records in CSV order: a copy, a column at a time (:func:`csv_ordered`)."""
        order = np.argsort(self.csv_row, kind="stable")
        place = np.empty(len(order), dtype=np.int64)
        place[order] = np.arange(len(order))  # where each table row goes
        return pa.table({c: csv_ordered(list(self.table.column(c).chunks), place, self.table.schema.field(c).type)
                         for c in columns})


def release_repo(repos: dict[str, Repo]) -> Repo:
    """The repo whose :data:`schema.RELEASE_TABLE` is read (the Parquet one first)."""
    for repo in (repos.get("parquet"), repos.get("webdataset")):
        if repo is not None and schema.RELEASE_TABLE in repo.manifest.get("files", {}):
            return repo
    roots = ", ".join(str(r.root) for r in repos.values())
    raise FileNotFoundError(f"{roots}: no {schema.RELEASE_TABLE} (every record's metadata) in the manifest: "
                            "converted by an earlier bioscan5m-hf; run `bioscan5m-hf convert` again")


def open_release(repos: dict[str, Repo], splits: Sequence[str], storage: Storage | None = None) -> ReleaseRows:
    """The records of ``splits``: each split's rows of :data:`schema.RELEASE_TABLE`, copied once
    into an uncompressed Arrow file of ``storage``'s cache folder and memory-mapped from it (nothing
    is read until used, and processes share the pages)."""
    storage = storage or Storage()
    repo = release_repo(repos)
    tables = [pa.ipc.open_file(pa.memory_map(str(local_split(repo, s, storage)), "r")).read_all()
              for s in schema.SPLITS if s in set(splits)]
    table = pa.concat_tables(tables) if tables else release_schema().empty_table()
    csv_row = table.column("csv_row")
    csv_row = np.concatenate([c.to_numpy() for c in csv_row.chunks]) if csv_row.num_chunks else np.zeros(0, np.int64)
    return ReleaseRows(table.drop_columns(["csv_row"]), csv_row)


def release_schema() -> pa.Schema:
    """The columns of :data:`schema.RELEASE_TABLE`: every metadata column, then ``csv_row``."""
    return pa.schema(list(schema.arrow_schema()) + [pa.field("csv_row", pa.int64(), nullable=False)])


def local_split(repo: Repo, split: str, storage: Storage) -> Path:
    """The cache's uncompressed copy of ``split``'s rows of ``repo``'s release table, written on
    first use (a record batch per row group, so no batch's strings pass 2 GB). Named by the file's
    digest: a converted-again repo gets a copy of its own."""
    info = repo.manifest["files"][schema.RELEASE_TABLE]
    key = hashlib.sha256(f"{info['sha256']} {split} {LOCAL_LAYOUT}".encode()).hexdigest()[:24]
    path = storage.local_folder() / "release" / f"{split}-{key}.arrow"
    if path.is_file():
        return path
    with repo.store.open(schema.RELEASE_TABLE, info["num_bytes"]) as source:
        parquet = pq.ParquetFile(source)
        first, count, _ = json.loads(parquet.schema_arrow.metadata[b"splits"])[split]
        with atomic_path(path) as tmp, pa.ipc.new_file(str(tmp), release_schema()) as writer:
            for group in range(first, first + count):
                part = parquet.read_row_group(group).cast(release_schema())
                for batch in part.to_batches():
                    writer.write_batch(batch)
    return path


def release_in_csv_order(repos: dict[str, Repo], columns: Sequence[str], storage: Storage | None = None) -> pa.Table:
    """``columns`` of every record of the release in the metadata CSV's row order."""
    return open_release(repos, schema.SPLITS, storage).in_csv_order(columns)


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

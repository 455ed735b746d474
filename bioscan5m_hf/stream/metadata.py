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


def release_in_csv_order(repos: dict[str, Repo], columns: Sequence[str], max_nucleotides: int | None = None
                         ) -> pa.Table:
    """``columns`` of every record of the release in the metadata CSV's row order, barcodes cut to
    ``max_nucleotides`` as they are read.

    Read from :data:`schema.RELEASE_TABLE` a row group at a time, not from the mapped copies: every
    page of those would count in the process's memory beside the copy made here (the official
    ``metadata`` at full size was 1.5x the official loader's that way, BENCHMARKS.md ``mapstyle``).
    Each row group's values are cut into pieces by destination block of :data:`TAKE_BLOCK` CSV rows
    and released, then each block is assembled from its pieces: about one copy of the data is alive
    at a time (a plain ``take`` first concatenates a column: twice the column, and more than 32-bit
    string offsets can hold for the release's barcodes)."""
    repo = release_repo(repos)
    fields = [release_schema().field(c) for c in columns]
    pieces: dict[str, dict[int, list[tuple[np.ndarray, pa.Array]]]] = {c: {} for c in columns}
    with repo.store.open(schema.RELEASE_TABLE, repo.manifest["files"][schema.RELEASE_TABLE]["num_bytes"]) as source:
        parquet = pq.ParquetFile(source)
        for group in range(parquet.num_row_groups):
            part = parquet.read_row_group(group, columns=[*columns, "csv_row"])
            csv_row = part.column("csv_row").to_numpy()
            block_of = csv_row // TAKE_BLOCK
            by_block = np.argsort(block_of, kind="stable")
            blocks, starts = np.unique(block_of[by_block], return_index=True)
            ends = [*starts[1:].tolist(), len(by_block)]
            for field in fields:
                values = part.column(field.name).combine_chunks().cast(field.type)
                if field.name == "dna_barcode" and max_nucleotides is not None:
                    values = pc.utf8_slice_codeunits(values, 0, max_nucleotides)
                for b, start, end in zip(blocks.tolist(), starts.tolist(), ends):
                    rows = by_block[start:end]
                    pieces[field.name].setdefault(b, []).append((csv_row[rows], values.take(pa.array(rows))))
            del part
    out = {}
    for field in fields:
        assembled = []
        for b in sorted(pieces[field.name]):
            parts = pieces[field.name].pop(b)
            rows = np.concatenate([r for r, _ in parts])
            values = pa.concat_arrays([v for _, v in parts])
            del parts
            assembled.append(values.take(pa.array(np.argsort(rows, kind="stable"))))
        out[field.name] = pa.chunked_array(assembled, type=field.type)
    return pa.table(out)


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


def metadata_frame(table: pa.Table, split: str, reduce_repeated_barcodes: bool):
    """The official ``metadata`` DataFrame from the release's :data:`OFFICIAL_COLUMNS` in CSV order
    (its index is the CSV row), barcodes already cut to ``max_nucleotides`` (by whoever read them: a
    cut in pandas is one more copy of the column, 3.4 GB at full size): the same dtypes (labels as
    categories over the whole release), the same reduction and split filter, ``<rank>_index`` codes
    and ``image_path``. Strings share the table's memory."""
    import os

    df = table.select(list(OFFICIAL_COLUMNS)).to_pandas().astype(OFFICIAL_DTYPES)
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

"""The public names of ``bioscan_dataset.bioscan5m``, so ``from bioscan5m_hf.bioscan5m import ...``
works wherever ``from bioscan_dataset.bioscan5m import ...`` did (only the import changes)."""

from __future__ import annotations

import os

from . import schema
from .stream.dataset import BIOSCAN5M
from .stream.metadata import OFFICIAL_COLUMNS as USECOLS_TUPLE
from .stream.metadata import OFFICIAL_DTYPES, metadata_frame
from .stream.streaming import StreamingBIOSCAN5M

__all__ = ["BIOSCAN5M", "StreamingBIOSCAN5M", "load_bioscan5m_metadata", "load_metadata", "RGB_MEAN", "RGB_STDEV",
           "COLUMN_DTYPES", "USECOLS", "VALID_SPLITS", "VALID_METASPLITS", "SEEN_SPLITS", "UNSEEN_SPLITS",
           "SPLIT_ALIASES", "explode_metasplit", "get_image_path"]


def _rgb(values):
    import torch

    return torch.tensor(values)


RGB_MEAN = _rgb(schema.RGB_MEAN)
RGB_STDEV = _rgb(schema.RGB_STD)

#: The pandas dtypes of every CSV column, as the official loader reads them.
COLUMN_DTYPES = {**OFFICIAL_DTYPES, "sampleid": str, "taxon": "category", "inferred_ranks": "uint8",
                 "index_bioscan_1M_insect": "Int64"}
USECOLS = list(USECOLS_TUPLE)
VALID_SPLITS = list(schema.SPLITS)
SPLIT_ALIASES = dict(schema.SPLIT_ALIASES)
VALID_METASPLITS = ["all", "seen", "unseen"]
SEEN_SPLITS = ["train", "val", "test"]
UNSEEN_SPLITS = ["key_unseen", "val_unseen", "test_unseen"]


def explode_metasplit(metasplit: str, verify: bool = False) -> set[str]:
    """The splits a split, metasplit or ``+``-joined list names (unknown names are refused)."""
    return set(schema.explode_split(metasplit))


def get_image_path(row) -> str:
    """``<split>/[<chunk>/]<processid>.jpg`` of a metadata row, as the official loader builds it."""
    import pandas

    chunk = row["chunk"]
    has_chunk = pandas.notna(chunk) and chunk
    return row["split"] + os.path.sep + (str(chunk) + os.path.sep if has_chunk else "") + row["processid"] + ".jpg"


def load_bioscan5m_metadata(metadata_path, max_nucleotides: int | None = 660, reduce_repeated_barcodes: bool = False,
                            split: str | None = None, **kwargs):
    """The official metadata DataFrame from the release's CSV (``metadata_path``), or from a
    converted repo or ``OUT`` folder (local or URL) without reading any image."""
    import pyarrow as pa

    path = str(metadata_path)
    if path.endswith(".csv"):
        import pandas

        table = pa.Table.from_pandas(pandas.read_csv(path, usecols=USECOLS, dtype=str, keep_default_na=True,
                                                     **kwargs).astype({c: object for c in USECOLS}),
                                     preserve_index=False)
        table = table.cast(pa.schema([schema.arrow_schema().field(c) for c in table.column_names]))
        if max_nucleotides is not None:
            import pyarrow.compute as pc

            barcodes = pc.utf8_slice_codeunits(table.column("dna_barcode"), 0, max_nucleotides)
            table = table.set_column(table.schema.get_field_index("dna_barcode"), "dna_barcode", barcodes)
    else:
        from .repo.manifest import open_repos
        from .stream.metadata import release_in_csv_order

        table = release_in_csv_order(open_repos(path), USECOLS, max_nucleotides)
    return metadata_frame(table, split, reduce_repeated_barcodes)


load_metadata = load_bioscan5m_metadata

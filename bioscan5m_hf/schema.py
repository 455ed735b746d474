"""The single source of truth for BIOSCAN-5M's columns, splits, image packages and file names.

Every other module asks this one: which columns exist and in which order, their Arrow types and
whether they may be missing, which splits and metasplits there are, which image packages, how the
official release names its files and zips, how images are chunked into folders, and how our own
repos name their shards.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from .util import check_choice

# --------------------------------------------------------------------------------------------------
# Metadata columns


@dataclass(frozen=True)
class Column:
    """One metadata column of the official CSV."""

    name: str
    type: pa.DataType
    nullable: bool
    description: str


COLUMNS: tuple[Column, ...] = (
    Column("processid", pa.string(), False, "BOLD process ID; unique record key, also the image file name"),
    Column("sampleid", pa.string(), False, "ID of the specimen sample"),
    Column("taxon", pa.string(), True, "name of the most specific rank the record is labelled at"),
    Column("phylum", pa.string(), True, "taxonomic phylum"),
    Column("class", pa.string(), True, "taxonomic class"),
    Column("order", pa.string(), True, "taxonomic order"),
    Column("family", pa.string(), True, "taxonomic family"),
    Column("subfamily", pa.string(), True, "taxonomic subfamily (may be a placeholder such as 'unassigned Sciaridae')"),
    Column("genus", pa.string(), True, "taxonomic genus"),
    Column("species", pa.string(), True,
           "taxonomic species (placeholder names in the unseen and other_heldout splits)"),
    Column("dna_bin", pa.string(), True, "BOLD Barcode Index Number, e.g. BOLD:ACW1968"),
    Column("dna_barcode", pa.string(), False, "COI DNA barcode nucleotides (may exceed 660 nt, may end in N padding)"),
    Column("country", pa.string(), True, "country of collection"),
    Column("province_state", pa.string(), True, "province or state of collection"),
    Column("coord-lat", pa.float64(), True, "latitude of collection site (WGS84)"),
    Column("coord-lon", pa.float64(), True, "longitude of collection site (WGS84)"),
    Column("image_measurement_value", pa.float64(), True, "pixels occupied by the organism"),
    Column("area_fraction", pa.float64(), True, "fraction of the original image the crop covers"),
    Column("scale_factor", pa.float64(), True, "ratio of the cropped image to the cropped-and-resized image"),
    Column("inferred_ranks", pa.uint8(), False, "number of ranks whose label was inferred"),
    Column("split", pa.string(), False, "official data partition"),
    Column("index_bioscan_1M_insect", pa.int64(), True, "row index of the same record in BIOSCAN-1M, if any"),
    Column("chunk", pa.string(), True, "image sub-folder (md5 prefix of processid); empty for unchunked splits"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMNS_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

#: Columns whose distinct values form label vocabularies (targets of the official loader).
LABEL_COLUMNS: tuple[str, ...] = ("phylum", "class", "order", "family", "subfamily", "genus", "species", "dna_bin")
#: The taxonomic ranks, most general first.
RANKS: tuple[str, ...] = LABEL_COLUMNS[:-1]
#: Aliases the official loader accepts for target types and modalities.
TARGET_ALIASES: dict[str, str] = {"uri": "dna_bin"}
DNA_ALIASES: dict[str, str] = {"dna": "dna_barcode", "barcode": "dna_barcode"}


@dataclass(frozen=True)
class Modality:
    """A requested modality, resolved once: what kind of value it is and which metadata columns it
    reads (none for the image, whose bytes are read separately)."""

    name: str
    kind: str  # "image", "dna", "image_path", "label_index" or "column"
    columns: tuple[str, ...]


def resolve_targets(target_type: str | Sequence[str]) -> list[str]:
    """The label columns of ``target_type`` (a rank, ``"dna_bin"`` or its alias ``"uri"``, or a list)."""
    targets = [target_type] if isinstance(target_type, str) else list(target_type)
    out = [TARGET_ALIASES.get(t, t) for t in targets]
    for t in out:
        check_choice(t, "target_type", LABEL_COLUMNS)
    return out


def resolve_modality(name: str) -> Modality:
    """What a modality of the official loader means: ``"image"``, ``"dna"`` (aliases
    ``"dna_barcode"``, ``"barcode"``), ``"image_path"``, ``"<rank>_index"`` or a metadata column.

    >>> resolve_modality("barcode")
    Modality(name='barcode', kind='dna', columns=('dna_barcode',))
    >>> resolve_modality("genus_index").columns
    ('genus',)
    """
    if name == IMAGE_COLUMN:
        return Modality(name, "image", ())
    if DNA_ALIASES.get(name, name) == "dna_barcode":
        return Modality(name, "dna", ("dna_barcode",))
    if name == "image_path":
        return Modality(name, "image_path", ("split", "chunk", "processid"))
    if name.endswith("_index") and name[: -len("_index")] in LABEL_COLUMNS:
        return Modality(name, "label_index", (name[: -len("_index")],))
    if name in COLUMN_NAMES:
        return Modality(name, "column", (name,))
    raise ValueError(f"Unfamiliar modality: {name!r}")

#: The image column of our Parquet repos and the image member of our tars.
IMAGE_COLUMN = "image"
IMAGE_EXTENSION = "jpg"
METADATA_EXTENSION = "json"


def arrow_schema() -> pa.Schema:
    """Arrow schema of the metadata table, in the official column order."""
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in COLUMNS])


#: Arrow type of the `datasets` Image feature as stored in Parquet.
IMAGE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

# --------------------------------------------------------------------------------------------------
# Splits

SPLITS: tuple[str, ...] = (
    "pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout",
)
SEEN_SPLITS: tuple[str, ...] = ("train", "val", "test")
UNSEEN_SPLITS: tuple[str, ...] = ("key_unseen", "val_unseen", "test_unseen")
METASPLITS: dict[str, tuple[str, ...]] = {"all": SPLITS, "seen": SEEN_SPLITS, "unseen": UNSEEN_SPLITS}
SPLIT_ALIASES: dict[str, str] = {"validation": "val"}

#: Records per split in the official release (BIOSCAN-5M paper, Table 3).
SPLIT_RECORDS: dict[str, int] = {
    "pretrain": 4_677_756, "train": 289_203, "val": 14_757, "test": 39_373,
    "key_unseen": 36_465, "val_unseen": 8_819, "test_unseen": 7_887, "other_heldout": 76_590,
}
TOTAL_RECORDS = sum(SPLIT_RECORDS.values())  # 5,150,850
#: Approximate bytes of each image package in the official release (its zips), where published.
PACKAGE_BYTES: dict[str, int] = {"original_full": 200_000_000_000, "cropped": 80_000_000_000,
                                 "cropped_256": 39_000_000_000}


def explode_split(split: str | None) -> tuple[str, ...]:
    """Resolve a split, metasplit, alias or ``+``-joined list into canonical splits, in official order.

    >>> explode_split("pretrain+train")
    ('pretrain', 'train')
    >>> explode_split("validation")
    ('val',)
    """
    if split is None:
        split = "all"
    wanted: set[str] = set()
    for part in (p.strip() for p in split.split("+")):
        part = SPLIT_ALIASES.get(part, part)
        if part in METASPLITS:
            wanted.update(METASPLITS[part])
        elif part in SPLITS:
            wanted.add(part)
        else:
            valid = ", ".join(repr(s) for s in (*METASPLITS, *SPLITS))
            raise ValueError(f"invalid split name {part!r} in {split!r}; valid names are {valid}")
    return tuple(s for s in SPLITS if s in wanted)


# --------------------------------------------------------------------------------------------------
# Image folders: bioscan5m/images/<package>/<split>/<chunk>/<processid>.jpg

PACKAGES: tuple[str, ...] = ("cropped_256", "original_256", "cropped", "original_full")
DEFAULT_PACKAGE = "cropped_256"
#: Repo config holding the metadata table alone (no images).
METADATA_CONFIG = "metadata"

#: Characters of md5(processid) naming the chunk folder; splits not listed have no chunk folder.
CHUNK_DIGITS: dict[str, int] = {"pretrain": 2, "train": 1, "other_heldout": 1}

#: Dataset RGB statistics (from the official loader), for normalising images in [0, 1].
RGB_MEAN: tuple[float, float, float] = (0.76281859, 0.76503749, 0.76373138)
RGB_STD: tuple[float, float, float] = (0.14205404, 0.15642502, 0.17309470)


def chunk_for(processid: str, split: str) -> str | None:
    """The chunk folder of a record under the official rule, or None for unchunked splits."""
    digits = CHUNK_DIGITS.get(split, 0)
    if not digits:
        return None
    return hashlib.md5(processid.encode("utf-8")).hexdigest()[:digits]


def image_relpath(package: str, split: str, chunk: str | None, processid: str) -> str:
    """Path of an image relative to the release root, as in the official folders and zips."""
    parts = [IMAGES_DIR, package, split]
    if chunk:
        parts.append(chunk)
    parts.append(f"{processid}.{IMAGE_EXTENSION}")
    return "/".join(parts)


# --------------------------------------------------------------------------------------------------
# Official release file names

METADATA_CSV = "bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv"
METADATA_CSV_NAME = METADATA_CSV.rsplit("/", 1)[1]
IMAGES_DIR = "bioscan5m/images"

#: Official zip names per package (regexes on the file name; members start at bioscan5m/images/).
ZIP_PATTERNS: dict[str, re.Pattern[str]] = {
    "original_full": re.compile(r"^BIOSCAN_5M_original_full\.0[1-5]\.zip$"),
    "cropped": re.compile(r"^BIOSCAN_5M_cropped\.0[1-2]\.zip$"),
    "original_256": re.compile(r"^BIOSCAN_5M_original_256(_pretrain(\.0[12])?|_train|_eval)?\.zip$"),
    "cropped_256": re.compile(r"^BIOSCAN_5M_cropped_256(_pretrain(\.0[12])?|_train|_eval)?\.zip$"),
}

#: Which splits each part of a per-split `*_256` zip holds.
ZIP_PART_SPLITS: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain",),
    "train": ("train",),
    "eval": ("val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout"),
}


def package_of_zip(name: str) -> str | None:
    """The image package an official zip file name belongs to, or None."""
    for package, pattern in ZIP_PATTERNS.items():
        if pattern.match(name):
            return package
    return None


# --------------------------------------------------------------------------------------------------
# Our output repos

PARQUET_REPO = "BIOSCAN-5M"
WDS_REPO = "BIOSCAN-5M-wds"
#: The Hub repos' default name (the WebDataset one adds ``-wds``): not the folders' own, since
#: ``bioscan-ml/BIOSCAN-5M`` on the Hub is the official release's zip repository.
HUB_NAME = "BIOSCAN-5M-hf"
MANIFEST = "manifest.json"
#: ``processid`` of every record in the official CSV's row order (the official loader's row order,
#: which ``reduce_repeated_barcodes`` depends on); shards hold records in a shuffled order.
CSV_ORDER = "csv-order.parquet"
#: Every record's metadata in one compressed Parquet file, the map-style ``BIOSCAN5M``'s source (it
#: maps an uncompressed copy kept in its cache folder) and the filters': the rows of each split
#: together, in CSV order within it, a ``csv_row`` column, the split's row groups in the schema's
#: metadata (a remote split reads only its own).
RELEASE_TABLE = "index/release.parquet"
CARD = "README.md"
FORMATS: tuple[str, ...] = ("parquet", "webdataset")
FORMAT_REPOS: dict[str, str] = {"parquet": PARQUET_REPO, "webdataset": WDS_REPO}
FORMAT_SUFFIX: dict[str, str] = {"parquet": "parquet", "webdataset": "tar"}


def shard_relpath(fmt: str, config: str, split: str, index: int) -> str:
    """Path of a shard inside its repo: ``<config>/<split>/bioscan5m-<config>-<split>-NNNNNN.<ext>``."""
    return f"{config}/{split}/bioscan5m-{config}-{split}-{index:06d}.{FORMAT_SUFFIX[fmt]}"


#: What a shard path in a manifest may look like: nothing absolute, no "..", no URL or "pipe:".
SHARD_PATH_PATTERN = re.compile(r"^(?!\.)[\w.\-]+/(?!\.)[\w.\-]+/bioscan5m-[\w.\-]+-\d{6}\.(parquet|tar)$",
                                re.ASCII)

#: Keys must be usable as tar member stems: webdataset splits a member name at its first dot, a USTAR
#: name field holds 100 bytes, and `datasets` (so the Hub's viewer) silently skips tar members whose
#: name starts with "." or "__" (datasets/utils/file_utils.py, ArchiveIterable). Written for RE2
#: (Arrow's regex engine), which has no look-ahead.
PROCESSID_PATTERN = re.compile(r"^(?:[A-Za-z0-9\-][A-Za-z0-9_\-]{0,63}|_[A-Za-z0-9\-][A-Za-z0-9_\-]{0,62}|_)$")

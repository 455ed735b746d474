"""A synthetic BIOSCAN-5M release in the exact official layout, deterministic for a seed.

``write_sample(out, records=N)`` writes what a user has after downloading the real release:

- ``bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv`` with the 23 official columns,
  official order and formatting (empty cells for missing values, ``index_bioscan_1M_insect`` as
  ``150502.0``, chunk strings with leading zeros);
- ``bioscan5m/images/<package>/<split>/<chunk>/<processid>.jpg`` for each requested package, and
- the same images in the official zips (``BIOSCAN_5M_cropped_256_train.zip``, ...).

The content is made to be learnable and to exercise every edge of the real data: splits in the real
proportions, pretrain labelled only down to order or family, placeholder species names in the unseen
and heldout splits, missing values in every nullable column, barcodes of 300 to 1,000+ nt derived
from one prototype per species (1-2 % substitutions), trailing ``N`` runs, IUPAC codes and exact
duplicates, and images whose colour and shape depend on order, family, genus and species.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .. import schema
from ..util import check_choice, imap_ordered, progress

#: Default size of a sample release (the embedded default in ``shards/`` is made with it).
DEFAULT_RECORDS = 400
DEFAULT_SEED = 0
JPEG_QUALITY = 85
#: Fixed timestamp for zip members, so zips are byte-identical across runs.
ZIP_DATE = (2024, 6, 13, 0, 0, 0)
#: Rows generated per batch; bounds memory for multi-million-row samples.
BATCH_RECORDS = 50_000
MIN_RECORDS_PER_SPLIT = 4

NUCLEOTIDES = np.frombuffer(b"ACGT", dtype=np.uint8)
IUPAC = np.frombuffer(b"RYKMSWN", dtype=np.uint8)
PROTOTYPE_LENGTH = 1100

# Real names to make the sample read like the data; extended with made-up names where it needs more.
ORDERS: tuple[tuple[str, str, float], ...] = (
    # (class, order, weight)
    ("Insecta", "Diptera", 0.58), ("Insecta", "Hymenoptera", 0.14), ("Insecta", "Hemiptera", 0.08),
    ("Insecta", "Lepidoptera", 0.05), ("Insecta", "Coleoptera", 0.05), ("Insecta", "Psocodea", 0.03),
    ("Insecta", "Thysanoptera", 0.015), ("Insecta", "Trichoptera", 0.01), ("Arachnida", "Araneae", 0.01),
    ("Arachnida", "Trombidiformes", 0.01), ("Collembola", "Entomobryomorpha", 0.008),
    ("Malacostraca", "Isopoda", 0.002),
)
FAMILIES: dict[str, tuple[str, ...]] = {
    "Diptera": ("Cecidomyiidae", "Sciaridae", "Phoridae", "Chironomidae", "Ceratopogonidae", "Psychodidae"),
    "Hymenoptera": ("Platygastridae", "Diapriidae", "Braconidae", "Ichneumonidae"),
    "Hemiptera": ("Cicadellidae", "Aphididae", "Psyllidae"),
    "Lepidoptera": ("Gelechiidae", "Tortricidae", "Noctuidae"),
    "Coleoptera": ("Staphylinidae", "Ptiliidae", "Curculionidae"),
    "Psocodea": ("Ectopsocidae", "Lachesillidae"),
    "Thysanoptera": ("Thripidae",),
    "Trichoptera": ("Hydroptilidae",),
    "Araneae": ("Linyphiidae", "Theridiidae"),
    "Trombidiformes": ("Erythraeidae",),
    "Entomobryomorpha": ("Entomobryidae",),
    "Isopoda": ("Armadillidiidae",),
}
GENUS_STEMS = ("Megaselia", "Bradysia", "Corynoptera", "Lestremia", "Forcipomyia", "Psychoda", "Trichopria",
               "Telenomus", "Apanteles", "Empoasca", "Aphis", "Cacopsylla", "Athetea", "Acrotrichis",
               "Ectopsocus", "Frankliniella", "Hydroptila", "Erigone", "Entomobrya", "Armadillidium")
EPITHETS = ("nigra", "minor", "ontarioensis", "costaricensis", "pallida", "rufa", "agilis", "borealis",
            "longicornis", "brevis", "sylvatica", "maculata", "fusca", "tenuis", "aurea", "vittata")
SYLLABLES = ("ar", "bo", "ce", "di", "el", "fa", "gi", "ho", "in", "ju", "ka", "lo", "mu", "ne", "or",
             "pi", "qu", "ra", "si", "tu", "va", "xe", "zo")
COUNTRIES: tuple[tuple[str, float, float, tuple[str, ...], float], ...] = (
    # (country, lat, lon, provinces, weight)
    ("Canada", 49.0, -95.0, ("Ontario", "British Columbia", "Quebec", "Alberta", "Nova Scotia"), 0.42),
    ("Costa Rica", 10.0, -84.0, ("Guanacaste", "Alajuela", "Puntarenas"), 0.28),
    ("South Africa", -29.0, 25.0, ("Western Cape", "Gauteng"), 0.08),
    ("Thailand", 15.0, 101.0, ("Chiang Mai", "Nan"), 0.06),
    ("Pakistan", 30.0, 70.0, ("Punjab", "Sindh"), 0.05),
    ("Australia", -25.0, 134.0, ("Queensland", "Tasmania"), 0.04),
    ("Kenya", 0.5, 37.9, ("Nairobi",), 0.03),
    ("Côte d'Ivoire", 7.5, -5.5, ("Lagunes",), 0.02),
    ("Finland", 64.0, 26.0, ("Lapland",), 0.02),
)


# --------------------------------------------------------------------------------------------------
# Pure planning of the sample's content


def split_counts(records: int) -> dict[str, int]:
    """Records per split in the real proportions, with at least a few in every split.

    >>> sum(split_counts(1000).values())
    1000
    """
    n_splits = len(schema.SPLITS)
    if records < n_splits:
        raise ValueError(f"a sample needs at least {n_splits} records (one per split), got {records}")
    floor = min(MIN_RECORDS_PER_SPLIT, records // n_splits)
    spare = records - floor * n_splits
    total = schema.TOTAL_RECORDS
    exact = {s: spare * schema.SPLIT_RECORDS[s] / total for s in schema.SPLITS}
    counts = {s: floor + math.floor(exact[s]) for s in schema.SPLITS}
    # Largest remainders get the records rounding left over.
    left = records - sum(counts.values())
    for s in sorted(schema.SPLITS, key=lambda s: (exact[s] - math.floor(exact[s]), -schema.SPLITS.index(s)),
                    reverse=True)[:left]:
        counts[s] += 1
    return counts


def _latin_name(rng: np.random.Generator, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES, size=syllables)).capitalize()


@dataclass(frozen=True)
class Species:
    """One species of the synthetic taxonomy; ``group`` says which splits draw it."""

    class_: str
    order: str
    family: str
    subfamily: str | None
    genus: str
    species: str
    dna_bin: str
    group: str  # "seen", "unseen" or "heldout"
    order_index: int
    family_index: int
    genus_index: int


def make_taxonomy(rng: np.random.Generator, records: int) -> list[Species]:
    """A taxonomy scaled to the sample: a handful of species for tiny samples, thousands for millions."""
    n_species = int(np.clip(round(math.sqrt(records) * 0.9), 12, 20_000))
    weights = np.array([w for *_, w in ORDERS])
    order_of = rng.choice(len(ORDERS), size=n_species, p=weights / weights.sum())
    order_of[: len(ORDERS)] = np.arange(len(ORDERS))[: n_species]  # every order present
    groups = rng.choice(["seen", "unseen", "heldout"], size=n_species, p=[0.6, 0.15, 0.25])
    groups[:3] = ["seen", "unseen", "heldout"]
    taxa: list[Species] = []
    genera: dict[tuple[str, int], str] = {}
    bins: set[str] = set()
    for i in range(n_species):
        class_, order, _ = ORDERS[order_of[i]]
        fams = FAMILIES[order]
        family_index = int(rng.integers(0, len(fams) + 1))
        family = fams[family_index] if family_index < len(fams) else _latin_name(rng, 3) + "idae"
        genus_slot = int(rng.integers(0, 4))
        key = (family, genus_slot)
        if key not in genera:
            stem = GENUS_STEMS[int(rng.integers(0, len(GENUS_STEMS)))]
            genera[key] = stem if genus_slot == 0 else stem[:4] + _latin_name(rng, 2).lower()
        genus = genera[key]
        if groups[i] == "seen":
            species = f"{genus} {EPITHETS[i % len(EPITHETS)]}{i // len(EPITHETS) + 1 if i >= len(EPITHETS) else ''}"
        elif groups[i] == "unseen":  # placeholder species, real genus
            species = f"{genus} sp. BIOUG{int(rng.integers(10_000, 99_999))}"
        else:  # placeholder species and a non-scientific genus
            genus = f"{family}_gen{genus_slot + 1}"
            species = f"{genus} Malaise{int(rng.integers(1_000, 9_999))}"
        draw = rng.random()
        subfamily = None if draw < 0.45 else (f"unassigned {family}" if draw < 0.6 else family[:-4] + "inae")
        while True:
            letters = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, size=2))
            dna_bin = f"BOLD:A{letters}{int(rng.integers(0, 10_000)):04d}"
            if dna_bin not in bins:
                bins.add(dna_bin)
                break
        taxa.append(Species(class_, order, family, subfamily, genus, species, dna_bin, str(groups[i]),
                            int(order_of[i]), family_index, genus_slot))
    return taxa


@dataclass
class SamplePlan:
    """Per-record choices for the whole sample, as arrays (cheap even for 5.15M records)."""

    seed: int
    taxa: list[Species]
    split: np.ndarray  # index into schema.SPLITS
    species: np.ndarray  # index into taxa
    haplotype: np.ndarray  # which barcode variant of the species
    depth: np.ndarray  # number of taxonomic ranks labelled (0..7)
    trailing_n: np.ndarray  # N padding appended to the barcode

    def __len__(self) -> int:
        return len(self.split)


def plan_sample(records: int, seed: int) -> SamplePlan:
    """Decide every record's split, species, barcode variant and label depth."""
    rng = np.random.default_rng([seed, 1])
    taxa = make_taxonomy(rng, records)
    counts = split_counts(records)
    split = np.repeat(np.arange(len(schema.SPLITS), dtype=np.int8), [counts[s] for s in schema.SPLITS])
    rng.shuffle(split)

    groups = np.array([t.group for t in taxa])
    species = np.empty(records, dtype=np.int32)
    pools = {
        "seen": np.flatnonzero(groups == "seen"),
        "unseen": np.flatnonzero(groups == "unseen"),
        "heldout": np.flatnonzero(groups == "heldout"),
        "pretrain": np.arange(len(taxa)),
    }
    split_group = {"pretrain": "pretrain", "train": "seen", "val": "seen", "test": "seen",
                   "key_unseen": "unseen", "val_unseen": "unseen", "test_unseen": "unseen",
                   "other_heldout": "heldout"}
    for code, name in enumerate(schema.SPLITS):
        rows = np.flatnonzero(split == code)
        pool = pools[split_group[name]]
        zipf = 1.0 / np.arange(1, len(pool) + 1) ** 0.7
        species[rows] = rng.choice(pool, size=len(rows), p=zipf / zipf.sum())
    # About half of the records share their exact barcode with another record of their species.
    per_species = np.bincount(species, minlength=len(taxa))
    variants = np.maximum(1, np.ceil(per_species * 0.5)).astype(np.int64)
    haplotype = (rng.random(records) * variants[species]).astype(np.int32)

    depth = np.full(records, 7, dtype=np.int8)
    pretrain = split == schema.SPLITS.index("pretrain")
    depth[pretrain] = np.where(rng.random(int(pretrain.sum())) < 0.2, 3, 4)  # to order or family
    rare = rng.random(records)
    depth[pretrain & (rare < 0.004)] = 2  # class only
    depth[np.flatnonzero(pretrain)[:1]] = 0  # one record with no label at all
    trailing_n = np.where(rng.random(records) < 0.08, rng.integers(1, 40, size=records), 0).astype(np.int16)
    return SamplePlan(seed, taxa, split, species, haplotype, depth, trailing_n)


def _barcode_prototypes(seed: int, n_species: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 2])
    return NUCLEOTIDES[rng.integers(0, 4, size=(n_species, PROTOTYPE_LENGTH))]


def haplotype_barcode(prototypes: np.ndarray, seed: int, species: int, haplotype: int) -> str:
    """One barcode variant of a species: 1-2 % substitutions, realistic length, rare IUPAC codes."""
    rng = np.random.default_rng([seed, 3, species, haplotype])
    seq = prototypes[species].copy()
    rate = rng.uniform(0.01, 0.02)
    hits = rng.random(PROTOTYPE_LENGTH) < rate
    seq[hits] = NUCLEOTIDES[rng.integers(0, 4, size=int(hits.sum()))]
    draw = rng.random()
    if draw < 0.08:
        length = int(rng.integers(300, 640))
    elif draw < 0.15:
        length = int(rng.integers(700, PROTOTYPE_LENGTH + 1))
    else:
        length = 658
    if rng.random() < 0.06:
        where = rng.integers(0, length, size=int(rng.integers(1, 4)))
        seq[where] = IUPAC[rng.integers(0, len(IUPAC), size=len(where))]
    return seq[:length].tobytes().decode("ascii")


# --------------------------------------------------------------------------------------------------
# Metadata rows


def _processid(i: int, prefixes: Sequence[str]) -> str:
    prefix = prefixes[i % len(prefixes)]
    return f"{prefix}{1000 + i // len(prefixes)}-{13 + (i * 7) % 11}"


def _sampleid(i: int) -> str:
    plate, well = divmod(i, 95)
    return f"BIOUG{plate:05d}-{'ABCDEFGH'[well // 12]}{well % 12 + 1:02d}"


def _float(x: float, digits: int) -> str:
    return repr(round(float(x), digits))


def metadata_rows(plan: SamplePlan, start: int, stop: int, prefixes: Sequence[str],
                  prototypes: np.ndarray) -> list[tuple]:
    """CSV rows (official column order, '' for missing) for records ``start:stop``."""
    rng = np.random.default_rng([plan.seed, 4, start])
    n = stop - start
    u = rng.random((n, 8))
    country_w = np.array([c[-1] for c in COUNTRIES])
    country_i = rng.choice(len(COUNTRIES), size=n, p=country_w / country_w.sum())
    jitter = rng.normal(0, 2.0, size=(n, 2))
    measure = rng.integers(2_000, 400_000, size=n)
    area = rng.uniform(0.01, 0.5, size=n)
    scale = rng.uniform(1.0, 3.5, size=n)
    inferred = rng.choice([0, 0, 0, 0, 1, 2, 3], size=n)
    bioscan1m = np.where(rng.random(n) < 0.2, rng.integers(0, 1_128_313, size=n), -1)
    barcodes = functools.lru_cache(maxsize=1 << 16)(
        lambda species, haplotype: haplotype_barcode(prototypes, plan.seed, species, haplotype))
    rows = []
    for j in range(n):
        i = start + j
        pid = _processid(i, prefixes)
        split = schema.SPLITS[plan.split[i]]
        t = plan.taxa[plan.species[i]]
        depth = int(plan.depth[i])
        ranks = ["Arthropoda", t.class_, t.order, t.family, t.subfamily, t.genus, t.species]
        ranks = [r if k < depth else None for k, r in enumerate(ranks)]
        taxon = next((r for r in reversed(ranks) if r and not r.startswith("unassigned")), None)
        barcode = barcodes(int(plan.species[i]), int(plan.haplotype[i]))
        barcode += "N" * int(plan.trailing_n[i])
        country, lat, lon, provinces, _ = COUNTRIES[country_i[j]]
        missing = u[j]
        rows.append((
            pid,
            _sampleid(i),
            taxon or "",
            *(r or "" for r in ranks),
            "" if missing[0] < 0.003 else t.dna_bin,
            barcode,
            "" if missing[1] < 0.01 else country,
            "" if missing[2] < 0.05 else provinces[int(missing[3] * len(provinces))],
            "" if missing[4] < 0.02 else _float(lat + jitter[j, 0], 4),
            "" if missing[4] < 0.02 else _float(lon + jitter[j, 1], 4),
            "" if missing[5] < 0.01 else f"{float(measure[j])!r}",
            "" if missing[6] < 0.01 else _float(area[j], 6),
            "" if missing[7] < 0.01 else _float(scale[j], 6),
            str(int(inferred[j])),
            split,
            "" if bioscan1m[j] < 0 else f"{float(bioscan1m[j])!r}",
            schema.chunk_for(pid, split) or "",
        ))
    return rows


def _ensure_every_nullable_column_has_a_gap(rows: list[tuple]) -> list[tuple]:
    """Blank one value in each nullable column that happens to have none missing (tiny samples)."""
    rows = [list(r) for r in rows]
    names = schema.COLUMN_NAMES
    for k, col in enumerate(schema.COLUMNS):
        if not col.nullable or any(r[k] == "" for r in rows):
            continue
        # Prefer a record whose label depth already leaves lower ranks empty, so labels stay consistent.
        for r in rows:
            if r[k] != "" and (col.name not in schema.LABEL_COLUMNS or col.name == "dna_bin"):
                r[k] = ""
                break
            if r[k] != "" and col.name in schema.RANKS:
                # Blank this rank and every lower one, and fix up taxon.
                for low in schema.RANKS[schema.RANKS.index(col.name):]:
                    r[names.index(low)] = ""
                labelled = [r[names.index(x)] for x in schema.RANKS if r[names.index(x)]]
                r[names.index("taxon")] = labelled[-1] if labelled else ""
                break
    return [tuple(r) for r in rows]


# --------------------------------------------------------------------------------------------------
# Images


def _colour(t: Species, rng: np.random.Generator) -> tuple[int, int, int]:
    hue = (t.order_index * 0.083 + t.family_index * 0.021) % 1.0
    rgb = np.array([math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)])
    base = 70 + 60 * rgb + (t.genus_index - 1.5) * 12 + rng.normal(0, 6, size=3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def image_size_for(package: str, aspect: float, shorter: int | None) -> tuple[int, int]:
    """(width, height) of a package's image; ``shorter`` overrides the shorter side (small samples)."""
    if package == "original_full":
        size = shorter or 768
        return round(size * 4 / 3), size
    if package == "original_256":
        size = shorter or 256
        return round(size * 4 / 3), size
    if package == "cropped_256":
        size = shorter or 256
        return round(size * aspect), size
    size = shorter or 320  # "cropped": the crop at original resolution
    return round(size * aspect), size


def render_jpeg(package: str, t: Species, species_id: int, record_seed: Sequence[int],
                shorter: int | None, grain: float = 0.0) -> bytes:
    """The record's image for one package: an 'insect' whose colour and shape carry its taxonomy.
    ``grain`` > 0 adds sensor-like noise of that standard deviation and saves at camera quality (95,
    full chroma), so the JPEG is as large as a real photograph (~1 MB at 1024 x 768 for 16)."""
    rng = np.random.default_rng(list(record_seed))
    aspect = 1.25 + 0.5 * ((species_id * 0.618) % 1.0)
    width, height = image_size_for(package, aspect, shorter)
    cropped = package.startswith("cropped")
    # Background near the dataset mean (0.76 grey), a soft vertical gradient.
    top = 205 + int(rng.integers(-6, 7))
    grad = np.linspace(top, top - 22, height, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(grad, (height, width, 3)).astype(np.uint8)
    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    fill = 0.8 if cropped else 0.3
    cx = width / 2 + rng.normal(0, width * 0.03)
    cy = height / 2 + rng.normal(0, height * 0.03)
    body_w = width * fill * (0.75 + 0.2 * rng.random())
    body_h = body_w / (1.6 + (t.family_index % 3) * 0.7)
    colour = _colour(t, rng)
    legs = 2 + (t.genus_index % 3)
    for k in range(legs):
        x = cx - body_w * 0.3 + k * body_w * 0.6 / max(1, legs - 1)
        for sign in (-1, 1):
            draw.line([(x, cy), (x + sign * body_w * 0.08, cy + sign * body_h * 0.9)], fill=colour,
                      width=max(1, int(height / 90)))
    draw.ellipse([cx - body_w / 2, cy - body_h / 2, cx + body_w / 2, cy + body_h / 2], fill=colour)
    head = body_h * 0.45
    draw.ellipse([cx + body_w / 2 - head * 0.6, cy - head / 2, cx + body_w / 2 + head * 0.6, cy + head / 2],
                 fill=tuple(max(0, c - 40) for c in colour))
    stripes = species_id % 4
    for k in range(stripes):
        x = cx - body_w * 0.25 + k * body_w * 0.15
        draw.line([(x, cy - body_h * 0.45), (x, cy + body_h * 0.45)], fill=(235, 225, 200),
                  width=max(1, int(height / 60)))
    buf = io.BytesIO()
    if grain > 0:
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, grain, (height, width, 3)).astype(np.float32)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=95,
                                                                             subsampling=0)
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _render_batch(args) -> list[tuple[str, list[bytes]]]:
    packages, shorter, grain, seed, items = args
    out = []
    for i, t, species_id in items:
        out.append((i, [render_jpeg(p, t, species_id, (seed, 5, i), shorter, grain) for p in packages]))
    return out


def zip_name_for(package: str, split: str, chunk: str | None, processid: str) -> str:
    """Which official zip a record's image goes to in a sample release."""
    if package in ("cropped_256", "original_256"):
        if split == "pretrain":
            part = "01" if int(chunk, 16) < 128 else "02"
            return f"BIOSCAN_5M_{package}_pretrain.{part}.zip"
        return f"BIOSCAN_5M_{package}_{'train' if split == 'train' else 'eval'}.zip"
    parts = 2 if package == "cropped" else 5
    digest = int(schema.chunk_for(processid, "pretrain"), 16)
    return f"BIOSCAN_5M_{package}.{digest % parts + 1:02d}.zip"


# --------------------------------------------------------------------------------------------------
# Writing


@dataclass
class SampleInfo:
    root: Path
    records: int
    split_counts: dict[str, int]
    packages: tuple[str, ...]
    zips: list[Path]
    images: int


def _prefixes(seed: int, records: int) -> list[str]:
    rng = np.random.default_rng([seed, 6])
    n = max(8, records // 400)
    seen: dict[str, None] = {}
    while len(seen) < n:
        letters = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, size=int(rng.integers(4, 6))))
        seen.setdefault(letters)
    return list(seen)


def write_sample(out: str | os.PathLike, records: int = DEFAULT_RECORDS, seed: int = DEFAULT_SEED,
                 packages: Sequence[str] = (schema.DEFAULT_PACKAGE,), *, images: bool = True,
                 layout: Sequence[str] = ("folders", "zips"), image_size: int | None = None,
                 grain: float = 0.0, workers: int = 1, show_progress: bool = True) -> SampleInfo:
    """Write a synthetic release to ``out``.

    Parameters
    ----------
    out : path
        Release root; ``bioscan5m/`` and the zips are written inside it.
    records : int
        Number of records (at least 8, one per split).
    seed : int
        Everything written is a function of ``records``, ``seed`` and the image options.
    packages : sequence of str
        Image packages to write (see :data:`schema.PACKAGES`).
    images : bool
        False writes the metadata CSV alone (fast enough for the full 5,150,850 rows).
    layout : sequence of {"folders", "zips"}
        Write the extracted image folders, the official zips, or both.
    image_size : int, optional
        Override the shorter image side of every package (small images for large samples).
    grain : float
        Sensor-like noise, so JPEGs are as large as real photographs (16: ~1 MB ``original_full``).
    workers : int
        Processes rendering images.
    """
    root = Path(out)
    for p in packages:
        check_choice(p, "image package", schema.PACKAGES)
    for item in layout:
        check_choice(item, "layout", ("folders", "zips"))
    plan = plan_sample(records, seed)
    prefixes = _prefixes(seed, records)
    prototypes = _barcode_prototypes(seed, len(plan.taxa))

    root.mkdir(parents=True, exist_ok=True)
    zips: list[Path] = []
    n_images = 0
    if images and packages:
        zips, n_images = _write_images(root, plan, prefixes, tuple(packages), layout, image_size, grain, workers,
                                       show_progress)
    # The CSV last, in one rename: a release with its CSV is whole, so an interrupted run is written
    # again rather than taken up with images missing.
    csv_path = root / schema.METADATA_CSV
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(schema.COLUMN_NAMES)
        bar = progress(total=records, desc="sample metadata", unit="rec", disable=not show_progress)
        for start in range(0, records, BATCH_RECORDS):
            stop = min(records, start + BATCH_RECORDS)
            rows = metadata_rows(plan, start, stop, prefixes, prototypes)
            if start == 0:
                rows = _ensure_every_nullable_column_has_a_gap(rows)
            writer.writerows(rows)
            bar.update(stop - start)
        bar.close()
    os.replace(tmp, csv_path)

    counts = {s: int((plan.split == k).sum()) for k, s in enumerate(schema.SPLITS)}
    return SampleInfo(root, records, counts, tuple(packages) if images else (), zips, n_images)


def _image_jobs(plan: SamplePlan, packages, shorter, grain, batch: int = 256) -> Iterator[tuple]:
    for start in range(0, len(plan), batch):
        items = [(i, plan.taxa[plan.species[i]], int(plan.species[i]))
                 for i in range(start, min(len(plan), start + batch))]
        yield packages, shorter, grain, plan.seed, items


def _write_images(root: Path, plan: SamplePlan, prefixes, packages, layout, shorter, grain, workers,
                  show_progress):
    open_zips: dict[str, zipfile.ZipFile] = {}
    made_dirs: set[Path] = set()
    n = 0
    bar = progress(total=len(plan), desc="sample images", unit="rec", disable=not show_progress)
    try:
        for batch in imap_ordered(_render_batch, _image_jobs(plan, packages, shorter, grain), workers):
            for i, jpegs in batch:
                pid = _processid(i, prefixes)
                split = schema.SPLITS[plan.split[i]]
                chunk = schema.chunk_for(pid, split)
                for package, data in zip(packages, jpegs):
                    rel = schema.image_relpath(package, split, chunk, pid)
                    if "folders" in layout:
                        path = root / rel
                        if path.parent not in made_dirs:
                            path.parent.mkdir(parents=True, exist_ok=True)
                            made_dirs.add(path.parent)
                        path.write_bytes(data)
                    if "zips" in layout:
                        name = zip_name_for(package, split, chunk, pid)
                        if name not in open_zips:
                            open_zips[name] = zipfile.ZipFile(root / (name + ".tmp"), "w", zipfile.ZIP_STORED)
                        info = zipfile.ZipInfo(rel, date_time=ZIP_DATE)
                        info.external_attr = 0o644 << 16
                        open_zips[name].writestr(info, data)
                    n += 1
            bar.update(len(batch))
    finally:
        bar.close()
        for zf in open_zips.values():
            zf.close()
    paths = []
    for name in sorted(open_zips):
        os.replace(root / (name + ".tmp"), root / name)
        paths.append(root / name)
    return paths, n

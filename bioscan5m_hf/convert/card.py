"""Render a repo's ``README.md`` dataset card: Hub YAML (configs, features, split sizes) + the body of
``dataset_card.md`` with this conversion's tables filled in."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml

from .. import schema
from ..util import write_atomic
from . import writers
from .stats import CHART_DIR, CHARTS

TEMPLATE = "dataset_card.md"
#: Hub task ids (huggingface.js, packages/tasks/src/pipelines.ts): the image ones, since
#: "zero-shot-classification" and "feature-extraction" are text tasks there.
TASK_CATEGORIES = ["image-classification", "zero-shot-image-classification", "image-feature-extraction"]
TAGS = ["biology", "biodiversity", "insects", "dna", "dna-barcoding", "taxonomy", "multimodal", "bioscan"]


def size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return name
    return "10M<n<100M"


def card_yaml(manifest: dict) -> dict:
    """The card's YAML header: what the Hub indexes and what ``datasets`` loads without a script."""
    fmt = manifest["format"]
    suffix = schema.FORMAT_SUFFIX[fmt]
    configs, infos = [], []
    for k, (config, splits) in enumerate(manifest["configs"].items()):
        entry = {"config_name": config,
                 "data_files": [{"split": s, "path": f"{config}/{s}/*.{suffix}"} for s in splits]}
        if k == 0:
            entry["default"] = True
        configs.append(entry)
        with_image = config != schema.METADATA_CONFIG
        infos.append({
            "config_name": config,
            "features": writers.hf_features_yaml(fmt, with_image),
            # As `datasets` records them: Arrow bytes per split (and in all), the files' bytes to download.
            "splits": [{"name": s, "num_bytes": v["arrow_bytes"], "num_examples": v["num_records"]}
                       for s, v in splits.items()],
            "download_size": sum(v["num_bytes"] for v in splits.values()),
            "dataset_size": sum(v["arrow_bytes"] for v in splits.values()),
        })
    return {
        "pretty_name": "BIOSCAN-5M" if fmt == "parquet" else "BIOSCAN-5M (WebDataset)",
        "license": "cc-by-3.0",
        "language": ["en"],
        "task_categories": TASK_CATEGORIES,
        "tags": TAGS,
        "size_categories": [size_category(manifest["source"]["num_records"])],
        "configs": configs,
        "dataset_info": infos,
    }


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _load_examples(manifest: dict, repo_id: str) -> str:
    config = next(iter(manifest["configs"]))
    min_shards = manifest.get("options", {}).get("min_shards", 1)
    if manifest["format"] == "parquet":
        return f"""```python
from datasets import load_dataset

# Stream, no full download (any config: {", ".join(f"`{c}`" for c in manifest["configs"])}):
ds = load_dataset("{repo_id}", "{config}", split="train", streaming=True)
record = next(iter(ds))  # {{'image': <PIL.Image>, 'processid': ..., 'dna_barcode': ..., 'species': ...}}

# Or download and memory-map a split:
val = load_dataset("{repo_id}", "{config}", split="val")

# Read only the columns you use (the others are skipped in every row group), and keep the images as
# JPEG bytes to decode in your DataLoader workers:
from datasets import Image
fast = load_dataset("{repo_id}", "{config}", split="train", streaming=True,
                    columns=["processid", "image", "dna_barcode", "species"])
fast = fast.cast_column("image", Image(decode=False))  # {{'image': {{'bytes': ..., 'path': ...}}, ...}}

# Training batches: rows a batch at a time, each batch's JPEGs decoded in a DataLoader worker straight
# into one uint8 tensor (resized, centre-cropped), barcodes as 4-mer ids, labels as indices of the
# vocabularies in this repo's manifest.json (BatchCollate comes with the bioscan5m-hf package):
from bioscan5m_hf import BatchCollate
from torch.utils.data import DataLoader
batches = DataLoader(fast.batch(256), batch_size=None, num_workers=8, collate_fn=BatchCollate(image_size=256))
batch = next(iter(batches))  # {{'image': uint8 B x 3 x 256 x 256, 'dna': ..., 'dna_mask': ..., 'species': ...}}

# DNA and labels only: the `metadata` config has no image column.
dna = load_dataset("{repo_id}", "metadata", split="pretrain", streaming=True,
                   columns=["processid", "dna_barcode", "species"])

# Every split has {min_shards} or more shards where records allow (64 records each at least), so streaming
# uses that many DataLoader workers, and ranks (each rank reads its own shards):
import os
from datasets.distributed import split_dataset_by_node
rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
part = split_dataset_by_node(fast, rank=rank, world_size=world_size)
loader = DataLoader(part.batch(64), batch_size=None, num_workers=8, collate_fn=BatchCollate(image_size=224))
```

SQL and DataFrame engines read the same files where they are, a row group and column at a time
(`pip install duckdb polars`; the files through `huggingface_hub`, with your token where the repo is
private; for a local clone, glob its folder and leave `filesystem` out):

```python
import duckdb
import polars as pl
import pyarrow.dataset as pads
from huggingface_hub import HfFileSystem

fs = HfFileSystem()


def table(files):
    return pads.dataset(fs.glob(f"datasets/{repo_id}/{{files}}"), filesystem=fs)


metadata = table("metadata/*/*.parquet")  # no image bytes
# Records per split, and how many carry a label at each rank
per_split = duckdb.sql('''
    SELECT split, count(*) AS records, count("order") AS "order", count(family) AS family,
           count(genus) AS genus, count(species) AS species
    FROM metadata GROUP BY split ORDER BY split''').fetchall()
# The JPEG bytes of the val records of one order, joined by processid
val_metadata, val_images = table("metadata/val/*.parquet"), table("{config}/val/*.parquet")
diptera = duckdb.sql('''
    SELECT m.processid, m.species, i.image.bytes AS jpeg
    FROM val_metadata AS m JOIN val_images AS i USING (processid)
    WHERE m."order" = 'Diptera'
''').fetchall()
# Polars, lazily: records per order
per_order = pl.scan_pyarrow_dataset(metadata).group_by("order").len().sort("len", descending=True).collect()
```"""
    return f"""```python
from datasets import load_dataset

ds = load_dataset("{repo_id}", "{config}", split="train", streaming=True)
record = next(iter(ds))  # {{'__key__': processid, 'jpg': <PIL.Image>, 'json': {{...metadata...}}}}
```

The shards are plain WebDataset tars (`<processid>.jpg`, `<processid>.json`), readable by the
`webdataset` library straight from the Hub:

```python
import webdataset as wds
from huggingface_hub import HfFileSystem
fs = HfFileSystem()
urls = [fs.url(p) for p in fs.glob("datasets/{repo_id}/{config}/train/*.tar")]
ds = wds.WebDataset(urls, shardshuffle=100).decode("pil")  # {{'jpg': PIL image, 'json': metadata}}
```

For training, the bioscan5m-hf package streams them with exact epochs and resume across ranks and
workers, keeping the shards it has read in a local cache:

```python
from bioscan5m_hf import Storage, StreamingBIOSCAN5M, make_loader
train = StreamingBIOSCAN5M("hf://datasets/{repo_id}", "train", shuffle=True,
                           storage=Storage(cache_dir="bioscan-cache"))
loader = make_loader(train, batch_size=256, num_workers=8)
```"""


#: The dataset viewer converts a repo that is not Parquet only up to this many bytes per split (its
#: ``partial-`` conversion; ``parquetAndInfo.maxDatasetSizeBytes`` in the viewer's ``chart/env/prod.yaml``).
VIEWER_CONVERT_BYTES = 5_000_000_000


def _viewer_note(manifest: dict, namespace: str, other: str) -> str:
    if manifest["format"] == "parquet":
        return ("The dataset viewer reads these Parquet files in place, so every config and split can be browsed "
                "and searched in full, images included.")
    large = [f"`{config}/{split}`" for config, splits in manifest["configs"].items()
             for split, v in splits.items() if v["num_bytes"] > VIEWER_CONVERT_BYTES]
    where = (f"In this copy that applies to {', '.join(large)}." if large else
             "Every split of this copy is under that size, so all are shown in full.")
    return (f"The dataset viewer converts WebDataset tars to Parquet only up to 5 GB per split (a `partial-` "
            f"conversion): larger splits show only their first records there. {where} To browse every record, "
            f"use the Parquet repo [`{namespace}/{other}`](https://huggingface.co/datasets/{namespace}/{other}), "
            f"which the viewer reads in place.")


def render(manifest: dict, template: str | None = None, namespace: str = "bioscan-ml",
           name: str = schema.HUB_NAME) -> str:
    """The full ``README.md`` of a converted repo, published as ``namespace/name`` (Parquet) and
    ``namespace/name-wds`` (WebDataset)."""
    if template is None:
        template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    fmt = manifest["format"]
    repo_id = f"{namespace}/{name}" if fmt == "parquet" else f"{namespace}/{name}-wds"
    other = f"{name}-wds" if fmt == "parquet" else name
    other_text = (f"the same records as WebDataset tars are in [`{namespace}/{other}`](https://huggingface.co/datasets/"
                  f"{namespace}/{other})." if fmt == "parquet" else
                  f"the same records as Parquet tables are in [`{namespace}/{other}`](https://huggingface.co/datasets/"
                  f"{namespace}/{other}).")
    total = manifest["source"]["num_records"]
    this_copy = (f"This copy holds {total:,} records (metadata CSV md5 `{manifest['source']['md5']}`)."
                 if total != schema.TOTAL_RECORDS else "")
    splits_rows = []
    for config, splits in manifest["configs"].items():
        for split, v in splits.items():
            splits_rows.append([f"`{config}`", f"`{split}`", f"{v['num_records']:,}", len(v["shards"]),
                                f"{v['num_bytes'] / 1e6:,.1f} MB"])
    config_rows = []
    for config in manifest["configs"]:
        if config == schema.METADATA_CONFIG:
            config_rows.append([f"`{config}`", "all metadata columns, no images (DNA-only work)"])
        else:
            config_rows.append([f"`{config}`", f"images of the official `{config}` package + all metadata"])
    fields = [[f"`{c.name}`", str(c.type), "yes" if c.nullable else "no", c.description] for c in schema.COLUMNS]
    if fmt == "parquet":
        fields.insert(0, [f"`{schema.IMAGE_COLUMN}`", "Image", "no", "the original JPEG bytes (never re-encoded)"])
    else:
        fields = [["`.jpg`", "Image", "no", "the original JPEG bytes (never re-encoded)"],
                  ["`.json`", "struct", "no", "all metadata columns below, every key in every record"]] + fields
    statistics = manifest.get("statistics")
    if statistics:
        stats_table = _table(["rank", "distinct labels", "labelled records", "fraction labelled"],
                             [[f"`{r}`", f"{v['distinct']:,}", f"{v['labelled']:,}", f"{v['fraction']:.1%}"]
                              for r, v in statistics["ranks"].items()])
    else:
        stats_table = "(not recorded by this conversion)"
    charts = "\n".join(f"![{title}]({CHART_DIR}/{key}.png)" for key, title in CHARTS.items()
                       if f"{CHART_DIR}/{key}.png" in manifest.get("files", {}))
    values = {
        "viewer_note": _viewer_note(manifest, namespace, other),
        "statistics_table": stats_table,
        "charts": charts,
        "pretty_name": card_yaml(manifest)["pretty_name"],
        "format_name": "Parquet tables" if fmt == "parquet" else "WebDataset tar shards",
        "converter": f"version {manifest['converter']['version']}",
        "other_repo": other_text,
        "this_copy": this_copy,
        "load_examples": _load_examples(manifest, repo_id),
        "configs_table": _table(["config", "content"], config_rows),
        "splits_table": _table(["config", "split", "records", "shards", "size"], splits_rows),
        "fields_table": _table(["field", "type", "nullable", "description"], fields),
    }
    body = re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), template)
    header = yaml.safe_dump(card_yaml(manifest), sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{header}---\n\n{body}"


def write_card(repo: Path, manifest: dict) -> None:
    path = Path(repo) / schema.CARD
    write_atomic(path, render(manifest))

"""``bioscan5m-hf verify --hub``: the rules of the Hub and its dataset viewer, checked locally.

Each problem names the rule it breaks, so a maintainer knows what to fix before pushing:

- ``card``: README.md's YAML parses with ``huggingface_hub.DatasetCard``; its ``configs`` list every
  converted config and split, and its ``dataset_info`` features equal the real schema;
- ``names``: config and split names the Hub accepts;
- ``parquet``: row groups under 100 MB uncompressed, a page index written, the image column tagged
  as a ``datasets`` Image in the schema metadata;
- ``files``: under 10,000 files per folder and 100,000 per repo; no file over the Hub's size limit;
- ``tar``: members named ``<key>.<ext>`` with a dot-free key, a sample's members adjacent, so the
  viewer and ``datasets`` group them into samples.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from .. import schema
from ..convert import writers
from ..repo.manifest import Repo, open_repos
from ..repo.verify import Report


@dataclass(frozen=True)
class HubLimits:
    row_group_bytes: int = 100 << 20
    files_per_folder: int = 10_000
    files_per_repo: int = 100_000
    file_bytes: int = 50 << 30


SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")


def _features_match(repo: Repo, report: Report, data: dict) -> None:
    infos = {i["config_name"]: i for i in data.get("dataset_info", [])}
    configs = {c["config_name"]: c for c in data.get("configs", [])}
    for config, splits in repo.configs.items():
        where = f"{repo.name}/{schema.CARD}"
        if config not in configs:
            report.add(where, f"[card] config {config!r} is not in the card's configs")
            continue
        listed = {d["split"] for d in configs[config].get("data_files", [])}
        if listed != set(splits):
            report.add(where, f"[card] config {config!r} lists splits {sorted(listed)}, the data has {sorted(splits)}")
        expected = writers.hf_features_yaml(repo.fmt, config != schema.METADATA_CONFIG)
        info = infos.get(config)
        if info is None or info.get("features") != expected:
            report.add(where, f"[card] dataset_info features of {config!r} differ from the data's schema")
        elif {s["name"]: s["num_examples"] for s in info.get("splits", [])} != \
                {s: v["num_records"] for s, v in splits.items()}:
            report.add(where, f"[card] dataset_info split sizes of {config!r} differ from the manifest")


def _check_card(repo: Repo, report: Report) -> None:
    from huggingface_hub import DatasetCard

    path = repo.store.local_path(schema.CARD)
    where = f"{repo.name}/{schema.CARD}"
    try:
        data = DatasetCard.load(path).data.to_dict()
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        report.add(where, f"[card] does not parse as a dataset card ({type(e).__name__}: {e})")
        return
    _features_match(repo, report, data)


def _check_parquet(path: Path, where: str, image: bool, limits: HubLimits, report: Report) -> None:
    f = pq.ParquetFile(path)
    meta = f.metadata
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if group.total_byte_size > limits.row_group_bytes:
            report.add(where, f"[parquet] row group {g} is {group.total_byte_size:,} bytes uncompressed, over "
                              f"the viewer's {limits.row_group_bytes:,}")
            break
        if not group.column(0).has_offset_index:
            report.add(where, f"[parquet] row group {g} has no page index")
            break
    if image:
        hf = json.loads((f.schema_arrow.metadata or {}).get(b"huggingface", b"{}"))
        feature = hf.get("info", {}).get("features", {}).get(schema.IMAGE_COLUMN, {})
        if feature.get("_type") != "Image":
            report.add(where, "[parquet] the image column is not tagged as a datasets Image")


def _check_tar(path: Path, where: str, report: Report) -> None:
    seen, key = set(), None
    with tarfile.open(path) as tar:
        for member in tar:
            name = member.name
            base = name.rsplit("/", 1)[-1]
            stem, dot, ext = base.partition(".")
            if not dot or "." in ext or not stem:
                report.add(where, f"[tar] member {name!r} is not <key>.<ext> with a dot-free key")
                return
            if stem != key:
                if stem in seen:
                    report.add(where, f"[tar] the members of sample {stem!r} are not adjacent")
                    return
                seen.add(stem)
                key = stem


def verify_hub(root: str | os.PathLike, limits: HubLimits = HubLimits(), namespace: str = "bioscan-ml",
               name: str = schema.PARQUET_REPO) -> Report:
    """Check the repos under ``root`` against the Hub's and the viewer's rules."""
    report = Report()
    for fmt, repo in open_repos(root).items():
        if repo.store.remote:
            raise ValueError("verify --hub checks a local output of convert")
        folder = repo.store.local_path("")
        _check_card(repo, report)
        for config, splits in repo.configs.items():
            if not CONFIG_NAME.match(config):
                report.add(f"{repo.name}/{config}", f"[names] config name {config!r} is not valid on the Hub")
            for split in splits:
                if not SPLIT_NAME.match(split):
                    report.add(f"{repo.name}/{config}/{split}", f"[names] split name {split!r} is not valid")
        files = [p for p in folder.rglob("*") if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")]
        report.files += len(files)
        if len(files) > limits.files_per_repo:
            report.add(repo.name, f"[files] {len(files):,} files, over the Hub's {limits.files_per_repo:,} per repo")
        per_folder: dict[Path, int] = {}
        for p in files:
            per_folder[p.parent] = per_folder.get(p.parent, 0) + 1
            if p.stat().st_size > limits.file_bytes:
                report.add(f"{repo.name}/{p.relative_to(folder).as_posix()}",
                           f"[files] {p.stat().st_size:,} bytes, over the Hub's {limits.file_bytes:,} per file")
        for d, n in sorted(per_folder.items()):
            if n > limits.files_per_folder:
                report.add(f"{repo.name}/{d.relative_to(folder).as_posix()}",
                           f"[files] {n:,} files in one folder, over the Hub's {limits.files_per_folder:,}")
        for config, splits in repo.configs.items():
            for info in splits.values():
                for s in info["shards"]:
                    where = f"{repo.name}/{s['path']}"
                    path = folder / s["path"]
                    if not path.is_file():
                        continue  # plain verify reports missing files
                    if fmt == "parquet":
                        _check_parquet(path, where, config != schema.METADATA_CONFIG, limits, report)
                    else:
                        _check_tar(path, where, report)
    return report


"""``bioscan5m-hf verify --hub``: the rules of the Hub and its dataset viewer, checked locally.

Each problem names the rule it breaks, so a maintainer knows what to fix before pushing:

- ``card``: README.md's YAML parses with ``huggingface_hub.DatasetCard``; its ``configs`` list every
  converted config and split, and its ``dataset_info`` features equal the real schema;
- ``names``: config and split names the Hub accepts, and no more configs, splits or columns than
  the viewer processes;
- ``parquet``: the bytes the viewer may read to serve one page of rows within its limit, a page
  index written, the image column tagged as a ``datasets`` Image in the schema metadata;
- ``writer``: the settings ``datasets`` writes Parquet with today (:class:`WriterDefaults` names
  the source of each): content-defined chunking of data pages, a page index, row groups and shards
  within its sizes;
- ``files``: entries per folder, files per repo and bytes per file within the Hub's limits;
- ``tar``: members named ``<key>.<ext>`` with a dot-free key that ``datasets`` does not skip as
  hidden, a sample's members adjacent, so the viewer and ``datasets`` group them into samples.

The limits are the viewer's and the Hub's current ones (:class:`HubLimits` names the source of
each); the report also says what the viewer will show of each repo (:func:`viewer_notes`).
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
from ..convert import card, writers
from ..repo.manifest import Repo, open_repos
from ..repo.verify import Report


@dataclass(frozen=True)
class HubLimits:
    """The Hub's and its dataset viewer's limits, as of the sources named.

    Viewer: the public ``huggingface/dataset-viewer`` repository (checked at f62009e, 2026-08).
    Hub: "Repository limitations and recommendations" (huggingface.co/docs/hub/repositories-recommendations).
    """

    #: Bytes one request for a page of rows may read from a Parquet file: ``rowsIndex.maxArrowDataInMemory``
    #: in ``chart/env/prod.yaml`` (300_000_000), which ``services/rows`` passes as ``max_scan_size`` to
    #: ``libviewer``, whose ``LimitedAsyncReader`` (``libs/libviewer/src/parquet.rs``) fails a read of
    #: more bytes ("Scan size limit exceeded"). It reads per row group: the pages covering the rows
    #: with a page index, the whole column chunks without one. (The older 100 MB per-row-group check
    #: was removed with the old indexer, #3269.)
    page_scan_bytes: int = 300_000_000
    #: Rows per page: ``MAX_NUM_ROWS_PER_PAGE`` in ``libs/libcommon/src/libcommon/constants.py``.
    rows_per_page: int = 100
    #: A split the viewer converts only in part (``partial-`` folders) when its data is not Parquet:
    #: ``parquetAndInfo.maxDatasetSizeBytes`` in ``chart/env/prod.yaml``.
    convert_bytes: int = card.VIEWER_CONVERT_BYTES
    #: ``CONFIG_NAMES_MAX_NUMBER``, ``SPLIT_NAMES_MAX_NUMBER``, ``FIRST_ROWS_COLUMNS_MAX_NUMBER`` in
    #: ``services/worker/src/worker/config.py``.
    configs: int = 4_000
    splits: int = 30
    columns: int = 1_000
    #: Hub: entries per folder, files per repo, bytes per file (20 GB recommended, 50 GB the maximum),
    #: files per commit (recommended; :data:`bioscan5m_hf.hub.push.COMMIT_FILES` keeps to it).
    files_per_folder: int = 10_000
    files_per_repo: int = 100_000
    file_bytes: int = 20_000_000_000
    files_per_commit: int = 100


@dataclass(frozen=True)
class WriterDefaults:
    """How ``datasets`` writes Parquet for the Hub (its ``push_to_hub`` and ``to_parquet``), as of the
    sources named (``datasets`` 4.1 and later; read in 5.2), which the viewer tags "optimized-parquet"."""

    #: ``datasets.config.DEFAULT_CDC_OPTIONS``, passed by ``datasets.arrow_writer.ParquetWriter`` as
    #: pyarrow's ``use_content_defined_chunking`` and recorded in the file's key-value metadata
    #: ``content_defined_chunking``: data pages cut by content, so an edit changes only nearby pages.
    cdc_options: tuple = (("max_chunk_size", 1024 * 1024), ("min_chunk_size", 256 * 1024), ("norm_level", 0))
    # (A page index, ``datasets.arrow_writer.ParquetWriter(write_page_index=True)``, is the viewer's
    # rule too: :func:`_check_parquet` checks it as such.)
    #: ``datasets.config.MAX_ROW_GROUP_SIZE`` ("100MB", uncompressed).
    row_group_bytes: int = 100_000_000
    #: ``datasets.config.MAX_SHARD_SIZE`` ("500MB" of Arrow data per file).
    shard_bytes: int = 500_000_000


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


def page_scan_bytes(meta: pq.FileMetaData, group: int) -> int:
    """The most bytes the viewer's reader may fetch from row group ``group`` to serve one page: its
    column chunks' compressed bytes (a bound, reached without a page index)."""
    rg = meta.row_group(group)
    return sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))


def _check_parquet(path: Path, where: str, image: bool, limits: HubLimits, report: Report,
                   arrow_bytes: int = 0, writer: WriterDefaults = WriterDefaults()) -> tuple[int, int]:
    """Check one Parquet shard; returns the most bytes a page of it may make the viewer read, and its
    largest row group's uncompressed bytes."""
    f = pq.ParquetFile(path)
    meta = f.metadata
    cdc = json.loads((meta.metadata or {}).get(b"content_defined_chunking", b"null"))
    if not isinstance(cdc, dict) or tuple(sorted(cdc.items())) != writer.cdc_options:
        report.add(where, f"[writer] data pages are not content-defined chunked as datasets writes them "
                          f"({dict(writer.cdc_options)}, datasets.config.DEFAULT_CDC_OPTIONS); found {cdc}")
    largest = max((meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)), default=0)
    if largest > writer.row_group_bytes:
        report.add(where, f"[writer] a row group of {largest:,} bytes uncompressed, over datasets' "
                          f"{writer.row_group_bytes:,} (datasets.config.MAX_ROW_GROUP_SIZE)")
    if arrow_bytes > writer.shard_bytes:
        report.add(where, f"[writer] {arrow_bytes:,} bytes of Arrow data, over datasets' {writer.shard_bytes:,} "
                          "per file (datasets.config.MAX_SHARD_SIZE)")
    if meta.num_columns > limits.columns:
        report.add(where, f"[parquet] {meta.num_columns} columns, over the viewer's {limits.columns}")
    scans = [page_scan_bytes(meta, g) for g in range(meta.num_row_groups)]
    for g, scan in enumerate(scans):
        if scan > limits.page_scan_bytes:
            report.add(where, f"[parquet] row group {g} is {scan:,} bytes on disk, over the {limits.page_scan_bytes:,} "
                              f"the viewer reads at most to serve one page of rows (libviewer scan size limit)")
            break
        if not meta.row_group(g).column(0).has_offset_index:
            report.add(where, f"[parquet] row group {g} has no page index (the viewer then reads whole row groups)")
            break
    if image:
        hf = json.loads((f.schema_arrow.metadata or {}).get(b"huggingface", b"{}"))
        feature = hf.get("info", {}).get("features", {}).get(schema.IMAGE_COLUMN, {})
        if feature.get("_type") != "Image":
            report.add(where, "[parquet] the image column is not tagged as a datasets Image")
    return max(scans, default=0), largest


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
            if base.startswith(("__", ".")):  # datasets' ArchiveIterable skips these as hidden files
                report.add(where, f"[tar] member {name!r} starts with '__' or '.': datasets and the viewer skip it")
                return
            if stem != key:
                if stem in seen:
                    report.add(where, f"[tar] the members of sample {stem!r} are not adjacent")
                    return
                seen.add(stem)
                key = stem


def _check_names(repo: Repo, limits: HubLimits, report: Report) -> None:
    if len(repo.configs) > limits.configs:
        report.add(repo.name, f"[names] {len(repo.configs):,} configs, over the viewer's {limits.configs:,}")
    for config, splits in repo.configs.items():
        if not CONFIG_NAME.match(config):
            report.add(f"{repo.name}/{config}", f"[names] config name {config!r} is not valid on the Hub")
        if len(splits) > limits.splits:
            report.add(f"{repo.name}/{config}", f"[names] {len(splits)} splits, over the viewer's {limits.splits}")
        for split in splits:
            if not SPLIT_NAME.match(split):
                report.add(f"{repo.name}/{config}/{split}", f"[names] split name {split!r} is not valid")


def folder_entries(folder: Path) -> tuple[list[Path], dict[Path, int]]:
    """The repo's files (its hidden work folders aside) and the entries (files and folders) of each folder."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")]
    entries: dict[Path, set[str]] = {}
    for p in files:
        child = p
        while child != folder:
            entries.setdefault(child.parent, set()).add(child.name)
            child = child.parent
    return files, {d: len(names) for d, names in entries.items()}


def _check_files(repo: Repo, folder: Path, limits: HubLimits, report: Report) -> tuple[int, int, int]:
    files, entries = folder_entries(folder)
    report.files += len(files)
    if len(files) > limits.files_per_repo:
        report.add(repo.name, f"[files] {len(files):,} files, over the Hub's {limits.files_per_repo:,} per repo")
    largest = 0
    for p in files:
        size = p.stat().st_size
        largest = max(largest, size)
        if size > limits.file_bytes:
            report.add(f"{repo.name}/{p.relative_to(folder).as_posix()}",
                       f"[files] {size:,} bytes, over the Hub's {limits.file_bytes:,} per file")
    for d, n in sorted(entries.items()):
        if n > limits.files_per_folder:
            report.add(f"{repo.name}/{d.relative_to(folder).as_posix()}",
                       f"[files] {n:,} entries in one folder, over the Hub's {limits.files_per_folder:,}")
    return len(files), max(entries.values(), default=0), largest


def viewer_notes(repo: Repo, limits: HubLimits, counts: tuple[int, int, int], scan: int) -> list[str]:
    """What the Hub and its viewer will make of ``repo``, against each current limit."""
    files, per_folder, largest = counts
    columns = len(schema.COLUMNS) + 1 if repo.fmt == "parquet" else 4  # image + metadata | key, url, jpg, json
    notes = [f"{repo.name}: {len(repo.configs)} configs (viewer: at most {limits.configs:,}), "
             f"{max(map(len, repo.configs.values()), default=0)} splits per config at most ({limits.splits}), "
             f"{columns} columns ({limits.columns:,}); {files:,} files ({limits.files_per_repo:,} per repo), "
             f"{per_folder:,} entries in the fullest folder ({limits.files_per_folder:,}), largest file "
             f"{largest / 1e9:,.2f} GB ({limits.file_bytes / 1e9:,.0f} GB); commits of at most "
             f"{limits.files_per_commit} files"]
    if repo.fmt == "parquet":
        notes.append(f"{repo.name}: the viewer reads these Parquet files in place, every split in full; one page "
                     f"of {limits.rows_per_page} rows reads at most {scan / 1e6:,.1f} MB "
                     f"({limits.page_scan_bytes / 1e6:,.0f} MB allowed)")
    else:
        partial = [f"{config}/{split} ({info['num_bytes'] / 1e9:,.1f} GB)" for config, splits in repo.configs.items()
                   for split, info in splits.items() if info["num_bytes"] > limits.convert_bytes]
        notes.append(f"{repo.name}: the viewer converts tars to Parquet up to {limits.convert_bytes / 1e9:,.0f} GB "
                     f"per split; " + (f"shown in part (partial-): {', '.join(partial)}; browse the Parquet repo "
                                       f"for every row" if partial else "every split is shown in full"))
    return notes


def verify_hub(root: str | os.PathLike, limits: HubLimits = HubLimits(), namespace: str = "bioscan-ml",
               name: str = schema.HUB_NAME) -> Report:
    """Check the repos under ``root`` against the Hub's and the viewer's rules; the report's notes
    say what the viewer will show of each repo."""
    report = Report()
    for fmt, repo in open_repos(root).items():
        if repo.store.remote:
            raise ValueError("verify --hub checks a local output of convert")
        folder = repo.store.local_path("")
        _check_card(repo, report)
        _check_names(repo, limits, report)
        counts = _check_files(repo, folder, limits, report)
        scan, row_group, shard = 0, 0, 0
        for config, splits in repo.configs.items():
            for info in splits.values():
                for s in info["shards"]:
                    where = f"{repo.name}/{s['path']}"
                    path = folder / s["path"]
                    if not path.is_file():
                        continue  # plain verify reports missing files
                    if fmt == "parquet":
                        arrow = s.get("arrow_bytes", 0)
                        page, group = _check_parquet(path, where, config != schema.METADATA_CONFIG, limits, report,
                                                     arrow)
                        scan, row_group, shard = max(scan, page), max(row_group, group), max(shard, arrow)
                    else:
                        _check_tar(path, where, report)
        report.notes += viewer_notes(repo, limits, counts, scan)
        if fmt == "parquet":
            report.notes.append(writer_note(repo, row_group, shard))
    return report


def writer_note(repo: Repo, row_group: int, shard: int, writer: WriterDefaults = WriterDefaults()) -> str:
    """The Parquet files against ``datasets``' writer defaults, each with its source."""
    return (f"{repo.name}: written as datasets writes Parquet for the Hub: content-defined chunking "
            f"{dict(writer.cdc_options)} (datasets.config.DEFAULT_CDC_OPTIONS), page index "
            f"(datasets.arrow_writer.ParquetWriter), largest row group {row_group / 1e6:,.1f} MB uncompressed "
            f"(<= {writer.row_group_bytes / 1e6:,.0f} MB, datasets.config.MAX_ROW_GROUP_SIZE), largest shard "
            f"{shard / 1e6:,.1f} MB of Arrow data (<= {writer.shard_bytes / 1e6:,.0f} MB, "
            f"datasets.config.MAX_SHARD_SIZE)")

"""``bioscan5m-hf demo``: sample -> convert -> load every config with ``datasets`` -> train -> summary.

Also the recipe of the embedded default in ``shards/``: the default sample converted with
:func:`embedded_options`, which ``scripts/make_shards.py`` writes and a test regenerates.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .. import schema
from ..convert import ConvertOptions, ConvertResult, convert
from .sample import DEFAULT_RECORDS, DEFAULT_SEED, write_sample

#: Records per shard of the embedded default: small, so its larger splits still have several shards.
EMBEDDED_SHARD_RECORDS = 64
#: Where the embedded default lives in a checkout of this repository.
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "shards"


def embedded_options(workers: int = 1, show_progress: bool = False) -> ConvertOptions:
    return ConvertOptions(packages=(schema.DEFAULT_PACKAGE,), shard_records=EMBEDDED_SHARD_RECORDS,
                          workers=workers, show_progress=show_progress)


def make_embedded(release: str | os.PathLike, out: str | os.PathLike, workers: int = 1,
                  show_progress: bool = False) -> ConvertResult:
    """Write the default sample to ``release`` and convert it to ``out`` as the embedded default."""
    write_sample(release, DEFAULT_RECORDS, DEFAULT_SEED, (schema.DEFAULT_PACKAGE,), workers=workers,
                 show_progress=show_progress)
    return convert(release, out, embedded_options(workers, show_progress), overwrite=True)


def _shard_digests(repo: Path) -> dict[str, str]:
    manifest = json.loads((repo / schema.MANIFEST).read_text(encoding="utf-8"))
    return {s["path"]: s["sha256"] for c in manifest["configs"].values() for v in c.values() for s in v["shards"]}


def same_as_embedded(out: Path) -> bool | None:
    """Whether ``out`` holds the same shards as the committed ``shards/`` (None when there is none)."""
    if not (EMBEDDED_DIR / schema.PARQUET_REPO / schema.MANIFEST).is_file():
        return None
    return all(_shard_digests(out / name) == _shard_digests(EMBEDDED_DIR / name)
               for name in (schema.PARQUET_REPO, schema.WDS_REPO))


def _count_streaming(repo: Path, config: str, split: str) -> tuple[int, float]:
    import datasets

    ds = datasets.load_dataset(str(repo), config, split=split, streaming=True)
    start = time.perf_counter()
    n = 0
    for record in ds:
        image = record.get(schema.IMAGE_COLUMN, record.get(schema.IMAGE_EXTENSION))
        if image is not None:
            image.load()  # really decode the JPEG
        n += 1
    return n, time.perf_counter() - start


def run_demo(workdir: str | os.PathLike = "bioscan5m-demo", show_progress: bool = True, echo=print) -> dict:
    """Run the whole pipeline on the embedded default in ``workdir`` and print what it did."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    workdir = Path(workdir)
    release, out = workdir / "release", workdir / "out"
    cache = workdir / "hf-cache"
    started = time.perf_counter()
    echo(f"1. sample: {DEFAULT_RECORDS} synthetic records in the official layout -> {release}")
    t = time.perf_counter()
    result = make_embedded(release, out, workers=min(2, os.cpu_count() or 1), show_progress=show_progress)
    echo(f"2. convert: Parquet -> {result.repos['parquet']}, WebDataset -> {result.repos['webdataset']} "
         f"({time.perf_counter() - t:.1f} s with the sample)")
    same = same_as_embedded(out)
    if same is not None:
        echo(f"   byte-identical to the committed shards/: {'yes' if same else 'NO'}")

    echo("3. load every config with datasets.load_dataset (non-streaming, then streaming):")
    echo(f"   {'repo':<15} {'config':<12} {'split':<14} {'records':>8} {'streamed':>8} {'rec/s':>8}")
    summary: dict = {"same_as_embedded": same, "configs": {}}
    for fmt in schema.FORMATS:
        repo = result.repos[fmt]
        for config, splits in result.manifests[fmt]["configs"].items():
            loaded = datasets.load_dataset(str(repo), config, cache_dir=str(cache))
            for split, info in splits.items():
                n_stream, seconds = _count_streaming(repo, config, split)
                rows = loaded[split].num_rows
                ok = rows == n_stream == info["num_records"]
                summary["configs"][(fmt, config, split)] = (rows, n_stream, ok)
                echo(f"   {repo.name:<15} {config:<12} {split:<14} {rows:>8} {n_stream:>8} "
                     f"{n_stream / max(seconds, 1e-9):>8.0f}{'' if ok else '  MISMATCH'}")
            if config == schema.DEFAULT_PACKAGE and fmt == "parquet":
                echo("   a few train records (Parquet, cropped_256):")
                for record in loaded["train"].select(range(3)):
                    echo(f"     {record['processid']:<14} {record['order'] or '-':<12} "
                         f"{record['species'] or '-':<26} {record['dna_barcode'][:24]}... "
                         f"{record['image'].size[0]}x{record['image'].size[1]} JPEG")
    loaded_ok = all(v[2] for v in summary["configs"].values())
    echo(f"   every config and split loaded with the expected counts: {'yes' if loaded_ok else 'NO'}")

    echo("4. train a small image + DNA model on the stream for up to a minute "
         "(make_loader, 2 workers; pretrain -> order, evaluated on seen):")
    from .train import build_parser, run

    args = build_parser().parse_args([str(out), "--epochs", "10", "--seconds", "45", "--workers", "2"])
    history = run(args, echo=lambda line: echo("   " + line))
    first, last = history[0]["eval_accuracy"], max(h["eval_accuracy"] for h in history)
    rose = last > first
    echo(f"   eval accuracy rose from {first:.2f} to {last:.2f}: {'yes' if rose else 'NO'}")
    summary["training"] = history
    ok = loaded_ok and rose
    echo(f"{'done' if ok else 'FAILED'} ({time.perf_counter() - started:.1f} s in all)")
    summary["ok"] = ok
    return summary

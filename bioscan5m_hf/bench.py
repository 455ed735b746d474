"""The benchmark suite: every figure as a ratio against a reference measured in the same run.

    bioscan5m-hf bench WORKDIR            (or: python scripts/bench.py WORKDIR)

Builds its data with the sample generator in WORKDIR (kept between runs), measures, and writes the
table into BENCHMARKS.md between its ``bench`` markers, with the machine, the command and the date.
These machines are shared and noisy: each figure is the median of several repetitions, and only
ratios measured side by side are compared with the targets.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import schema

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT / ".venv-official" / "bin" / "python"
CLI = [sys.executable, "-m", "bioscan5m_hf"]

# The official loader, run in .venv-official with our decode, tokenizer and an equivalent collate.
OFFICIAL_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from torch.utils.data import DataLoader
from bioscan_dataset import BIOSCAN5M
from bioscan5m_hf.transforms import KmerTokenizer, decode_image
BIOSCAN5M._check_integrity = lambda self, verbose=1: True
root, split, mode, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = KmerTokenizer(4, 660)

def collate(samples):
    out = {}
    if mode == "image":  # the same channels-last uint8 batch as make_loader's
        out["image"] = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2)
    ids, mask = tok([s[-2] for s in samples])
    out["dna"], out["dna_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
    out["species"] = torch.tensor([int(s[-1]) for s in samples], dtype=torch.int64)
    return out

modality = ("image", "dna") if mode == "image" else ("dna",)
start = time.perf_counter()
ds = BIOSCAN5M(root, split=split, modality=modality, target_type="species",
               transform=(lambda im: decode_image(im, 256, channels_last=True)) if mode == "image" else None)
loader = DataLoader(ds, batch_size=batch_size, num_workers=2, collate_fn=collate, shuffle=True)
n = sum(len(b["dna"]) for b in loader)
print(json.dumps({"samples": n, "seconds": time.perf_counter() - start}))
"""


# --------------------------------------------------------------------------------------------------
# Measuring


def _tree(pid: int) -> list[int]:
    pids, k = [pid], 0
    while k < len(pids):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pids[k]:
                            pids.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        k += 1
    return pids


def _pss(pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) in bytes: shared pages count once across a process tree."""
    pss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, anon


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; wall seconds and the peak memory (PSS, and its anonymous part) of its tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = peak_anon = 0
    while proc.poll() is None:
        memory = [_pss(p) for p in _tree(proc.pid)]
        peak = max(peak, sum(m[0] for m in memory))
        peak_anon = max(peak_anon, sum(m[1] for m in memory))
        time.sleep(0.1)
    output = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - start, "peak": peak, "anon": peak_anon, "output": output}


def _decode_worker(args) -> tuple[int, float]:
    import pyarrow.parquet as pq

    from .transforms import decode_image

    import io

    from PIL import Image

    folder, lo, hi, decoder = args
    images = []
    for p in sorted(Path(folder).glob("*.parquet")):
        images += pq.read_table(p, columns=["image"]).column("image").combine_chunks().field("bytes").to_pylist()
    images = images[lo:hi]
    start = time.perf_counter()
    for data in images:  # decode + resize/crop, nothing else
        decode_image(Image.open(io.BytesIO(data)) if decoder == "pillow" else data, 256, channels_last=True)
    return len(images), time.perf_counter() - start


def raw_decode_rate(split_dir: Path, total: int, decoder: str = "pillow") -> float:
    """Samples/s of 2 processes decoding JPEG bytes already in memory (their decode time only), with
    Pillow or with the loader's own decoder (simplejpeg when installed)."""
    half = total // 2
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_decode_worker, [(str(split_dir), 0, half, decoder), (str(split_dir), half, total, decoder)])
    return sum(n for n, _ in results) / max(s for _, s in results)


def loader_rate(root: Path, split: str, image: bool, batch_size: int) -> float:
    from .loader import make_loader

    start = time.perf_counter()
    loader = make_loader(root, split, batch_size=batch_size, num_workers=2, image_size=256,
                         modality=("image", "dna") if image else ("dna",), target_type="species",
                         persistent_workers=False)
    n = sum(len(b["processid"]) for b in loader)
    return n / (time.perf_counter() - start)


def official_rate(release: Path, split: str, image: bool, batch_size: int) -> float | None:
    if not OFFICIAL.exists():
        return None
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([str(OFFICIAL), "-c", OFFICIAL_SCRIPT, str(release), split, "image" if image else "dna",
                        str(batch_size)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"official loader failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["samples"] / out["seconds"]


def first_batch_seconds(root: Path, split: str) -> float:
    from .loader import make_loader

    start = time.perf_counter()
    next(iter(make_loader(root, split, batch_size=256, num_workers=2, image_size=256, persistent_workers=False)))
    return time.perf_counter() - start


def loader_peak_memory(root: Path, split: str) -> int:
    """Peak PSS of a process tree streaming one epoch of ``split`` (image + DNA, 2 workers)."""
    code = (f"from bioscan5m_hf import make_loader\n"
            f"sum(1 for _ in make_loader({str(root)!r}, {split!r}, batch_size=128, num_workers=2, image_size=128,"
            f" persistent_workers=False))")
    return run_measured([sys.executable, "-c", code])["peak"]


# --------------------------------------------------------------------------------------------------
# The suite


@dataclass
class Figure:
    name: str
    value: str
    reference: str
    ratio: str
    target: str
    met: bool | None


def _sample(path: Path, records: int, *extra: str) -> Path:
    if not (path / schema.METADATA_CSV).exists():
        subprocess.run(CLI + ["sample", str(path), "--records", str(records), "--workers", "2", "--quiet", *extra],
                       check=True)
    return path


def _convert(release: Path, out: Path, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    return run_measured(CLI + ["convert", str(release), str(out), "--workers", "2", "--quiet", *extra])


def median_of(repeats: int, fn) -> float:
    return statistics.median(fn() for _ in range(repeats))


def suite(workdir: Path, repeats: int = 3, loader_records: int = 30_000, convert_records: int = 100_000,
          metadata_records: int = schema.TOTAL_RECORDS, echo=print) -> list[Figure]:
    w = Path(workdir)
    w.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []

    # 1-3. Feeding: make_loader vs the raw decode limit and vs the official loader; DNA-only.
    echo("loader figures ...")
    rel = _sample(w / "loader-release", loader_records, "--layout", "folders")
    out = w / "loader-out"
    if not (out / schema.PARQUET_REPO / schema.MANIFEST).exists():
        _convert(rel, out, "--formats", "parquet")
    total = json.loads((out / schema.PARQUET_REPO / schema.MANIFEST).read_text())["configs"]["cropped_256"][
        "pretrain"]["num_records"]
    for p in [*out.rglob("*.parquet"), *(rel / "bioscan5m").rglob("*.jpg")]:
        p.read_bytes()  # warm the page cache for everyone
    rows = {k: [] for k in ("raw", "raw_loader_decoder", "ours", "official", "ours_dna", "official_dna")}
    for _ in range(repeats):  # interleaved, so the machine's mood hits every figure alike
        rows["raw"].append(raw_decode_rate(out / schema.PARQUET_REPO / "cropped_256" / "pretrain", total))
        rows["raw_loader_decoder"].append(
            raw_decode_rate(out / schema.PARQUET_REPO / "cropped_256" / "pretrain", total, "loader"))
        rows["ours"].append(loader_rate(out, "pretrain", True, 256))
        rows["official"].append(official_rate(rel, "pretrain", True, 256))
        rows["ours_dna"].append(loader_rate(out, "pretrain", False, 1024))
        rows["official_dna"].append(official_rate(rel, "pretrain", False, 1024))
    med = {k: statistics.median(v) for k, v in rows.items() if v and None not in v}
    figures.append(Figure("image+DNA+label samples/s, make_loader, 2 workers, batch 256",
                          f"{med['ours']:,.0f}/s", f"raw decode limit (Pillow) {med['raw']:,.0f}/s",
                          f"{med['ours'] / med['raw']:.2f}", ">= 0.90", med["ours"] / med["raw"] >= 0.9))
    from .transforms import simplejpeg

    if simplejpeg is not None:
        figures.append(Figure("same, vs the raw limit of its own decoder (simplejpeg)", f"{med['ours']:,.0f}/s",
                              f"raw decode limit (simplejpeg) {med['raw_loader_decoder']:,.0f}/s",
                              f"{med['ours'] / med['raw_loader_decoder']:.2f}", "-", None))
    if "official" in med:
        figures.append(Figure("same, vs the official loader", f"{med['ours']:,.0f}/s",
                              f"official {med['official']:,.0f}/s", f"{med['ours'] / med['official']:.2f}x",
                              ">= 1.6x", med["ours"] / med["official"] >= 1.6))
        figures.append(Figure("DNA-only records/s (token ids + labels, batch 1024)", f"{med['ours_dna']:,.0f}/s",
                              f"official {med['official_dna']:,.0f}/s",
                              f"{med['ours_dna'] / med['official_dna']:.1f}x", ">= 20x",
                              med["ours_dna"] / med["official_dna"] >= 20))

    # 4. Conversion of a release from zips vs unzip of the same zips.
    echo("conversion figures ...")
    big = _sample(w / f"convert-{convert_records}", convert_records, "--image-size", "64", "--layout", "zips")
    zips = sorted(big.glob("*.zip"))

    def unzip() -> float:
        target = w / "unzipped"
        shutil.rmtree(target, ignore_errors=True)
        start = time.perf_counter()
        for z in zips:
            subprocess.run(["unzip", "-q", "-o", str(z), "-d", str(target)], check=True)
        return time.perf_counter() - start

    unzip_s = median_of(2, unzip)
    shutil.rmtree(w / "unzipped", ignore_errors=True)
    convert_s = median_of(2, lambda: _convert(big, w / "convert-out", "--image-source", "zips")["seconds"])
    figures.append(Figure(f"conversion of {convert_records:,} records from zips, both formats, 2 workers",
                          f"{convert_s:.1f} s", f"unzip {unzip_s:.1f} s", f"{convert_s / unzip_s:.2f}x",
                          "<= 2x", convert_s / unzip_s <= 2))

    # 5. Metadata-only conversion of the full row count.
    meta = _sample(w / f"metadata-{metadata_records}", metadata_records, "--no-images")
    run = _convert(meta, w / "metadata-out", "--packages", "none")
    figures.append(Figure(f"metadata-only conversion of {metadata_records:,} rows", f"{run['seconds']:.0f} s",
                          "-", f"peak {run['peak'] / 2**30:.2f} GiB (heap {run['anon'] / 2**30:.2f} GiB)",
                          "peak <= 8 GB", run["peak"] <= 8e9))

    # 6. Time to the first batch from a local repo whose pretrain split has >= 1,024 shards.
    echo("first batch and scaling ...")
    many = w / "many-shards"
    pretrain = total
    if not (many / schema.PARQUET_REPO / schema.MANIFEST).exists():
        _convert(rel, many, "--shard-records", str(max(1, pretrain // 1040)))
    shards = len(json.loads((many / schema.WDS_REPO / schema.MANIFEST).read_text())["configs"]["cropped_256"][
        "pretrain"]["shards"])
    first = median_of(repeats, lambda: first_batch_seconds(many / schema.WDS_REPO, "pretrain"))
    figures.append(Figure(f"time to first batch, local repo, {shards:,}-shard pretrain split", f"{first:.2f} s",
                          "-", "-", "<= 2 s", first <= 2))

    # 7. Scaling: conversion time at 10k vs 100k records; loader memory at 1x vs 10x records.
    small = _sample(w / f"convert-{convert_records // 10}", convert_records // 10, "--image-size", "64",
                    "--layout", "zips")
    small_s = median_of(2, lambda: _convert(small, w / "convert-out", "--image-source", "zips")["seconds"])
    figures.append(Figure(f"conversion time, {convert_records // 10:,} -> {convert_records:,} records",
                          f"{small_s:.1f} s -> {convert_s:.1f} s", "10x records",
                          f"{convert_s / small_s:.1f}x time", "linear (<= 10x)", convert_s / small_s <= 11))
    _convert(small, w / "scale-small", "--image-source", "zips", "--formats", "webdataset")
    _convert(big, w / "scale-big", "--image-source", "zips", "--formats", "webdataset")
    m_small = loader_peak_memory(w / "scale-small", "pretrain")
    m_big = loader_peak_memory(w / "scale-big", "pretrain")
    figures.append(Figure("loader peak memory, 1x -> 10x records", f"{m_small / 2**20:,.0f} -> {m_big / 2**20:,.0f} MiB",
                          "-", f"{m_big / m_small:.2f}x", "flat", m_big / m_small <= 1.5))
    for path in ("convert-out", "scale-small", "scale-big", "metadata-out"):
        shutil.rmtree(w / path, ignore_errors=True)
    return figures


def table(figures: list[Figure]) -> str:
    lines = ["| figure | measured | reference (same run) | ratio | target | met |", "|---|---:|---:|---:|---:|:---:|"]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.name} | {f.value} | {f.reference} | {f.ratio} | {f.target} | {met} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def write_benchmarks(figures: list[Figure], command: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    section = (f"<!-- bench:start -->\nMachine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Command:\n\n"
               f"```bash\n{command}\n```\n\n{table(figures)}\n<!-- bench:end -->")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "<!-- bench:start -->" in text:
        head, rest = text.split("<!-- bench:start -->", 1)
        text = head + section + rest.split("<!-- bench:end -->", 1)[1]
    else:
        text = text.rstrip() + "\n\n## The suite\n\n" + section + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="bioscan5m-hf bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-records", type=int, default=30_000)
    parser.add_argument("--convert-records", type=int, default=100_000)
    parser.add_argument("--metadata-records", type=int, default=schema.TOTAL_RECORDS)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    figures = suite(args.workdir, args.repeats, args.loader_records, args.convert_records, args.metadata_records)
    print(table(figures))
    if not args.no_write:
        write_benchmarks(figures, "bioscan5m-hf bench " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0

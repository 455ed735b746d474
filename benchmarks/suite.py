"""The benchmark suite: every figure as a ratio against a reference measured in the same run.

    python -m benchmarks WORKDIR [--only loader,remote] [--output BENCHMARKS.md] [--official-python PY]

(``make bench`` from a clone.) It lives beside the package, not in it: a user's install carries none
of it.

Builds its data with the sample generator in WORKDIR (kept between runs), measures the chosen areas
(all by default: see ``AREAS``), and writes one table per area into the output file between that
area's markers, with the machine, the command and the date. These machines are shared and noisy:
each figure is the median of several repetitions, and only ratios measured side by side are
compared with the targets.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bioscan5m_hf import schema
from bioscan5m_hf.util import process_tree

CLI = [sys.executable, "-m", "bioscan5m_hf"]
#: The clone this suite runs from (its package and its tests' loopback servers).
REPO = Path(__file__).resolve().parents[1]
#: Where the official loader's interpreter is looked for unless --official-python says otherwise.
DEFAULT_OFFICIAL_PYTHON = ".venv-official/bin/python"

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
        memory = [_pss(p) for p in process_tree(proc.pid)]
        peak = max(peak, sum(m[0] for m in memory))
        peak_anon = max(peak_anon, sum(m[1] for m in memory))
        time.sleep(0.1)
    output = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - start, "peak": peak, "anon": peak_anon, "output": output}


def split_images(split_dir: Path) -> list[bytes]:
    """The JPEG bytes of a converted Parquet split's folder, in shard order."""
    import pyarrow.parquet as pq

    images: list[bytes] = []
    for p in sorted(Path(split_dir).glob("*.parquet")):
        images += pq.read_table(p, columns=["image"]).column("image").combine_chunks().field("bytes").to_pylist()
    return images


def _decode_worker(args) -> tuple[int, float]:
    import io

    import numpy as np
    from PIL import Image

    from bioscan5m_hf.transforms import SIMPLEJPEG_OPTIONS, decode_image, decode_image_into, simplejpeg

    folder, lo, hi, decoder = args
    images = split_images(folder)[lo:hi]
    if decoder == "bare":  # simplejpeg's decode alone: each whole image into one reused buffer
        sizes = [simplejpeg.decode_jpeg_header(data)[:2] for data in images]
        buffer = np.zeros(max(h * w for h, w in sizes) * 3, dtype=np.uint8)
        start = time.perf_counter()
        for data, (h, w) in zip(images, sizes):
            simplejpeg.decode_jpeg(data, **SIMPLEJPEG_OPTIONS, buffer=buffer[: h * w * 3])  # the loader's settings
        return len(images), time.perf_counter() - start
    if decoder == "batch":  # every image into its place in a batch of 256, as the loader delivers them
        batch = np.zeros((256, 256, 256, 3), dtype=np.uint8)  # touched now: no page faults timed
        start = time.perf_counter()
        for i, data in enumerate(images):
            decode_image_into(data, 256, batch[i % 256])
        return len(images), time.perf_counter() - start
    start = time.perf_counter()
    for data in images:  # decode + resize/crop, nothing else
        decode_image(Image.open(io.BytesIO(data)) if decoder == "pillow" else data, 256, channels_last=True)
    return len(images), time.perf_counter() - start


def raw_decode_rate(split_dir: Path, total: int, decoder: str = "pillow") -> float:
    """Samples/s of 2 processes decoding JPEG bytes already in memory (their decode time only), with
    Pillow or with the loader's own decoder (simplejpeg when installed); with ``"batch"`` the
    loader's decoder writing each image into its place in a 50 MB batch (memory out of the caches,
    where the raw limit's throwaway arrays reuse the same cached memory image after image); with
    ``"bare"`` simplejpeg's decode alone, at full size into one reused buffer (no header parse, array
    or crop): the most any loader with this decoder could reach, for images that need no resize."""
    half = total // 2
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_decode_worker, [(str(split_dir), 0, half, decoder), (str(split_dir), half, total, decoder)])
    return sum(n for n, _ in results) / max(s for _, s in results)


def loader_with(dataset, mode=None, **how):
    """``make_loader(dataset, **how)``, or with ``mode`` (a ``loader.Mode``) the way given instead of
    the one ``choose_mode`` picks: how the ways ``choose_mode`` leaves out are measured beside it."""
    from unittest import mock

    from bioscan5m_hf.stream import loader as loader_module

    if mode is None:
        return loader_module.make_loader(dataset, **how)
    with mock.patch.object(loader_module, "choose_mode", lambda *args, **kwargs: mode):
        return loader_module.make_loader(dataset, **how)


def loader_rate(root: Path, split: str, image: bool, batch_size: int, later: bool = False, mode=None) -> float:
    """Samples/s of one epoch of a make_loader with its defaults (2 workers; ``mode``: another way
    than the one it chooses): of a fresh loader (construction, worker start and first touch of its
    batch memory included), or with ``later`` of its second epoch, as most of a training run's
    epochs are. Its workers (persistent, as by default) are shut down after the clock stops, as a
    training run's are after its last epoch."""
    import gc

    from bioscan5m_hf import StreamingBIOSCAN5M

    start = time.perf_counter()
    dataset = StreamingBIOSCAN5M(root, split, modality=("image", "dna") if image else ("dna",), shuffle=True)
    loader = loader_with(dataset, mode, batch_size=batch_size, num_workers=2, image_size=256)
    if later:
        sum(1 for _ in loader)
        start = time.perf_counter()
    n = sum(len(b["processid"]) for b in loader)
    rate = n / (time.perf_counter() - start)
    del loader
    gc.collect()  # its workers end now, not inside the next figure's time
    return rate


def datasets_route_rate(repo: Path, config: str, split: str, batch_size: int) -> float:
    """Samples/s of the plain ``datasets`` route the repo card shows: ``load_dataset(<the converted
    Parquet repo>, config, streaming=True, columns=...)``, its rows a batch at a time
    (``IterableDataset.batch``) in a 2-worker DataLoader, collated in its workers by
    :class:`~bioscan5m_hf.stream.collate.BatchCollate` (make_loader's decode, tokenizer and labels)."""
    import datasets
    import torch

    from bioscan5m_hf.stream.collate import BatchCollate

    start = time.perf_counter()
    ds = datasets.load_dataset(str(repo), config, split=split, streaming=True,  # as the repo's card shows
                               columns=["processid", "image", "dna_barcode", "species"])
    ds = ds.cast_column("image", datasets.Image(decode=False))
    manifest = json.loads((repo / schema.MANIFEST).read_text())
    collate = BatchCollate(256, vocabularies={"species": manifest["vocabularies"]["species"]})
    loader = torch.utils.data.DataLoader(ds.batch(batch_size), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork", collate_fn=collate)
    n = sum(len(b["processid"]) for b in loader)
    return n / (time.perf_counter() - start)


def official_rate(python: Path | None, release: Path, split: str, image: bool, batch_size: int) -> float | None:
    """Samples/s of the official loader run by ``python`` (None: not installed) with our decode,
    tokenizer and an equivalent collate, so the output tensors are the same."""
    if python is None:
        return None
    env = dict(os.environ, PYTHONPATH=str(REPO))  # where this bioscan5m_hf is importable from
    r = subprocess.run([str(python), "-c", OFFICIAL_SCRIPT, str(release), split, "image" if image else "dna",
                        str(batch_size)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"official loader failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["samples"] / out["seconds"]


def first_batch_seconds(root: Path, split: str) -> float:
    from bioscan5m_hf import make_loader

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


@dataclass
class Settings:
    """What the areas measure on: the folder their data lives in and the sizes of that data."""

    workdir: Path
    repeats: int = 3
    loader_records: int = 30_000
    convert_records: int = 100_000
    metadata_records: int = schema.TOTAL_RECORDS
    remote_records: int = 6_000
    official_python: Path | None = None
    gpu_records: int = 24_000
    gpu_workers: tuple[int, ...] = (2, 8, 15)
    dna_records: int = 520_000  # a metadata-only release whose pretrain split has ~472k records
    peers_records: int = 6_000
    peers_python: Path | None = None  # the environment of scripts/install_peers.sh


def _loader_repo(st: Settings) -> tuple[Path, Path, int]:
    """The loader areas' release and its Parquet conversion, and the pretrain split's size."""
    rel = _sample(st.workdir / "loader-release", st.loader_records, "--layout", "folders")
    out = st.workdir / "loader-out"
    if not (out / schema.PARQUET_REPO / schema.MANIFEST).exists():
        _convert(rel, out, "--formats", "parquet")
    manifest = json.loads((out / schema.PARQUET_REPO / schema.MANIFEST).read_text())
    return rel, out, manifest["configs"]["cropped_256"]["pretrain"]["num_records"]


def _dna_repo(st: Settings) -> tuple[Path, Path, int]:
    """A metadata-only release of realistic size and its conversion, and its pretrain split's size."""
    rel = _sample(st.workdir / "dna-release", st.dna_records, "--no-images")
    out = st.workdir / "dna-out"
    if not (out / schema.PARQUET_REPO / schema.MANIFEST).exists():
        _convert(rel, out, "--packages", "none")
    manifest = json.loads((out / schema.PARQUET_REPO / schema.MANIFEST).read_text())
    return rel, out, manifest["configs"]["metadata"]["pretrain"]["num_records"]


def loader_area(st: Settings) -> list[Figure]:
    """Feeding: make_loader (decode in workers, or in threads of the main process) vs the raw decode
    limit and vs the official loader; DNA-only on a split of realistic size (start-up included)."""
    from bioscan5m_hf.transforms import simplejpeg

    rel, out, total = _loader_repo(st)
    dna_rel, dna_out, dna_total = _dna_repo(st)
    for p in [*out.rglob("*.parquet"), *(rel / "bioscan5m").rglob("*.jpg"), *dna_out.rglob("*.parquet")]:
        p.read_bytes()  # warm the page cache for everyone
    split_dir = out / schema.PARQUET_REPO / "cropped_256" / "pretrain"
    from bioscan5m_hf.stream.loader import Mode

    rows = {k: [] for k in ("raw", "raw_loader_decoder", "bare", "into_batch", "ours", "ours_thread_workers",
                            "ours_later", "datasets", "official", "ours_dna", "ours_dna_processes", "official_dna")}
    for _ in range(st.repeats):  # interleaved, so the machine's mood hits every figure alike
        rows["raw"].append(raw_decode_rate(split_dir, total))
        rows["raw_loader_decoder"].append(raw_decode_rate(split_dir, total, "loader"))
        rows["into_batch"].append(raw_decode_rate(split_dir, total, "batch"))
        if simplejpeg is not None:
            rows["bare"].append(raw_decode_rate(split_dir, total, "bare"))
        rows["ours"].append(loader_rate(out, "pretrain", True, 256))
        rows["ours_later"].append(loader_rate(out, "pretrain", True, 256, later=True))
        rows["ours_thread_workers"].append(loader_rate(out, "pretrain", True, 256, mode=Mode("workers", True)))
        rows["datasets"].append(datasets_route_rate(out / schema.PARQUET_REPO, "cropped_256", "pretrain", 256))
        rows["official"].append(official_rate(st.official_python, rel, "pretrain", True, 256))
        rows["ours_dna"].append(loader_rate(dna_out, "pretrain", False, 1024))
        rows["ours_dna_processes"].append(loader_rate(dna_out, "pretrain", False, 1024, mode=Mode(None, False)))
        rows["official_dna"].append(official_rate(st.official_python, dna_rel, "pretrain", False, 1024))
    med = {k: statistics.median(v) for k, v in rows.items() if v and None not in v}
    limit = "raw_loader_decoder" if "raw_loader_decoder" in med else "raw"
    raw = f"raw decode limit (its decoder) {med[limit]:,.0f}/s"
    best = "ours"
    figures = [
        Figure("image+DNA+label samples/s of a fresh loader's epoch, make_loader's defaults (decode='auto': "
               "decoding in worker processes), 2 workers, batch 256",
               f"{med[best]:,.0f}/s", raw, f"{med[best] / med[limit]:.2f}", ">= 0.90", med[best] / med[limit] >= 0.9),
        Figure("same, the workers as threads of the main process (the way choose_mode leaves out for images): "
               "the defaults' share", f"{med['ours']:,.0f}/s", f"thread workers {med['ours_thread_workers']:,.0f}/s",
               f"{med['ours'] / med['ours_thread_workers']:.2f}x", ">= 0.97x (noise)",
               med["ours"] / med["ours_thread_workers"] >= 0.97),
        Figure("same, the defaults, a later epoch (persistent workers: no start-up, batch memory already "
               "touched)", f"{med['ours_later']:,.0f}/s", raw, f"{med['ours_later'] / med[limit]:.2f}", "-",
               None),
        *([Figure("simplejpeg's decode alone, 2 processes, each whole image into one reused buffer (no header parse, "
                  "array or crop): the most any loader with this decoder could reach", f"{med['bare']:,.0f}/s", raw,
                  f"{med['bare'] / med[limit]:.2f}", "-", None)] if "bare" in med else []),
        Figure("2 processes decoding into batch memory, no loader: the same decode, each image written to its place "
               "in a batch (what any loader delivering batches pays over the raw limit)", f"{med['into_batch']:,.0f}/s",
               raw, f"{med['into_batch'] / med[limit]:.2f}", "-", None),
        Figure("make_loader's defaults vs the Pillow raw limit", f"{med[best]:,.0f}/s",
               f"raw decode limit (Pillow) {med['raw']:,.0f}/s", f"{med[best] / med['raw']:.2f}", "-", None),
        Figure("datasets route as the card shows (load_dataset(repo, 'cropped_256', streaming=True, columns=...)"
               ".batch(256), DataLoader with 2 workers, BatchCollate: the same decode in its workers) vs make_loader's "
               "defaults", f"{med['datasets']:,.0f}/s",
               f"make_loader {med['ours']:,.0f}/s", f"{med['datasets'] / med['ours']:.2f}", ">= 0.8",
               med["datasets"] / med["ours"] >= 0.8)]
    if "official" in med:
        figures.append(Figure("make_loader's defaults vs the official loader", f"{med[best]:,.0f}/s",
                              f"official {med['official']:,.0f}/s", f"{med[best] / med['official']:.2f}x",
                              ">= 1.6x", med[best] / med["official"] >= 1.6))
        for key, how in (("ours_dna", "make_loader's defaults (thread workers)"),
                         ("ours_dna_processes", "worker processes (the way choose_mode leaves out without images)")):
            figures.append(Figure(f"DNA-only records/s on a {dna_total:,}-record split (token ids + labels, batch "
                                  f"1024, start-up included), {how}", f"{med[key]:,.0f}/s",
                                  f"official {med['official_dna']:,.0f}/s",
                                  f"{med[key] / med['official_dna']:.1f}x", ">= 20x" if key == "ours_dna" else "-",
                                  med[key] / med["official_dna"] >= 20 if key == "ours_dna" else None))
        figures.append(Figure("DNA-only: make_loader's defaults vs the best way measured", f"{med['ours_dna']:,.0f}/s",
                              f"worker processes {med['ours_dna_processes']:,.0f}/s",
                              f"{med['ours_dna'] / max(med['ours_dna'], med['ours_dna_processes']):.2f}", ">= 0.9",
                              med["ours_dna"] >= 0.9 * med["ours_dna_processes"]))
    return figures


def convert_area(st: Settings) -> list[Figure]:
    """Conversion of a release from zips vs unzip of the same zips, and its scaling with records."""
    w, n = st.workdir, st.convert_records
    big = _sample(w / f"convert-{n}", n, "--image-size", "64", "--layout", "zips")
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
    small = _sample(w / f"convert-{n // 10}", n // 10, "--image-size", "64", "--layout", "zips")
    small_s = median_of(2, lambda: _convert(small, w / "convert-out", "--image-source", "zips")["seconds"])
    shutil.rmtree(w / "convert-out", ignore_errors=True)
    return [Figure(f"conversion of {n:,} records from zips, both formats, 2 workers", f"{convert_s:.1f} s",
                   f"unzip {unzip_s:.1f} s", f"{convert_s / unzip_s:.2f}x", "<= 2x", convert_s / unzip_s <= 2),
            Figure(f"conversion time, {n // 10:,} -> {n:,} records", f"{small_s:.1f} s -> {convert_s:.1f} s",
                   "10x records", f"{convert_s / small_s:.1f}x time", "linear (<= 10x)", convert_s / small_s <= 11)]


def metadata_area(st: Settings) -> list[Figure]:
    """Metadata-only conversion of the full row count, and its memory against a tenth of the rows."""
    figures, runs = [], {}
    for count in (st.metadata_records // 10, st.metadata_records):
        meta = _sample(st.workdir / f"metadata-{count}", count, "--no-images")
        runs[count] = _convert(meta, st.workdir / "metadata-out", "--packages", "none")
        shutil.rmtree(st.workdir / "metadata-out", ignore_errors=True)
    small, full = (runs[c] for c in sorted(runs))
    figures.append(Figure(f"metadata-only conversion of {st.metadata_records:,} rows", f"{full['seconds']:.0f} s",
                          "-", f"peak {full['peak'] / 2**30:.2f} GiB (heap {full['anon'] / 2**30:.2f} GiB)",
                          "peak <= 8 GB", full["peak"] <= 8e9))
    figures.append(Figure("metadata-only conversion heap, 1/10 -> all rows",
                          f"{small['anon'] / 2**30:.2f} -> {full['anon'] / 2**30:.2f} GiB", "10x rows",
                          f"{full['anon'] / small['anon']:.1f}x", "-", None))
    return figures


def first_batch_area(st: Settings) -> list[Figure]:
    """Time to the first batch from a local repo whose pretrain split has >= 1,024 shards."""
    rel, _, total = _loader_repo(st)
    many = st.workdir / "many-shards"
    if not (many / schema.PARQUET_REPO / schema.MANIFEST).exists():
        _convert(rel, many, "--shard-records", str(max(1, total // 1040)))
    shards = len(json.loads((many / schema.WDS_REPO / schema.MANIFEST).read_text())["configs"]["cropped_256"][
        "pretrain"]["shards"])
    first = median_of(st.repeats, lambda: first_batch_seconds(many / schema.WDS_REPO, "pretrain"))
    return [Figure(f"time to first batch, local repo, {shards:,}-shard pretrain split", f"{first:.2f} s",
                   "-", "-", "<= 2 s", first <= 2)]


def memory_area(st: Settings) -> list[Figure]:
    """Loader peak memory with 1x and 10x records (it must not grow with the split)."""
    w, n = st.workdir, st.convert_records
    small = _sample(w / f"convert-{n // 10}", n // 10, "--image-size", "64", "--layout", "zips")
    big = _sample(w / f"convert-{n}", n, "--image-size", "64", "--layout", "zips")
    _convert(small, w / "scale-small", "--image-source", "zips", "--formats", "webdataset")
    _convert(big, w / "scale-big", "--image-source", "zips", "--formats", "webdataset")
    m_small = loader_peak_memory(w / "scale-small", "pretrain")
    m_big = loader_peak_memory(w / "scale-big", "pretrain")
    for path in ("scale-small", "scale-big"):
        shutil.rmtree(w / path, ignore_errors=True)
    return [Figure("loader peak memory, 1x -> 10x records", f"{m_small / 2**20:,.0f} -> {m_big / 2**20:,.0f} MiB",
                   "-", f"{m_big / m_small:.2f}x", "flat", m_big / m_small <= 1.5)]


def _remote_epoch(root, cache_dir=None) -> tuple[float, float]:
    """(seconds to the first batch, samples/s over the epoch) of make_loader on pretrain."""
    from bioscan5m_hf import Storage, StreamingBIOSCAN5M, make_loader

    start = time.perf_counter()
    dataset = StreamingBIOSCAN5M(root, "pretrain", shuffle=True, storage=Storage(cache_dir=cache_dir))
    loader = make_loader(dataset, batch_size=64, num_workers=2, image_size=224, persistent_workers=False)
    first, n = None, 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        n += len(batch["processid"])
    return first, n / (time.perf_counter() - start)


def remote_area(st: Settings) -> list[Figure]:
    """Streaming over HTTP (a loopback server with Range support) vs the same shards on local disk,
    without and with a shard cache, for both repos."""
    import tempfile

    from tests.servers.fileserver import RepoServer

    rel = _sample(st.workdir / "remote-release", st.remote_records, "--layout", "zips")
    out = st.workdir / "remote-out"
    if not (out / schema.WDS_REPO / schema.MANIFEST).exists():
        _convert(rel, out, "--shard-records", "500")
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with RepoServer(out) as server:
        for _ in range(st.repeats):
            for repo in (schema.WDS_REPO, schema.PARQUET_REPO):
                url = f"{server.url}/{repo}"
                rows.setdefault((repo, "local disk"), []).append(_remote_epoch(out / repo))
                rows.setdefault((repo, "HTTP, streamed"), []).append(_remote_epoch(url))
                with tempfile.TemporaryDirectory() as cache:
                    rows.setdefault((repo, "HTTP + cache, epoch 1"), []).append(_remote_epoch(url, cache_dir=cache))
                    before = server.shard_requests()
                    rows.setdefault((repo, "HTTP + cache, epoch 2"), []).append(_remote_epoch(url, cache_dir=cache))
                    if server.shard_requests() != before:
                        raise RuntimeError("epoch 2 with a cache made shard requests")
    figures = []
    for (repo, source), values in rows.items():
        if source == "local disk":
            continue
        first = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        local = statistics.median(v[1] for v in rows[repo, "local disk"])
        target, met = (">= 0.90", rate / local >= 0.9) if source.endswith("HTTP, streamed") else ("-", None)
        figures.append(Figure(f"{repo}, {source}: samples/s (first batch {first:.2f} s)", f"{rate:,.0f}/s",
                              f"local disk {local:,.0f}/s", f"{rate / local:.2f}", target, met))
    return figures


def peers_area(st: Settings) -> list[Figure]:
    """make_loader against the loaders a user could pick instead (:mod:`.peers`): the same records,
    decode, tokenizer, collate, batch size and workers; samples/s, first batch and peak memory, each
    the median of interleaved rounds, each run in its own process. Image + DNA + label on a 6,000-record
    sample; DNA-only (no image) on the metadata-only release of the loader area."""
    from . import peers

    rel = _sample(st.workdir / "peers-release", st.peers_records, "--layout", "zips")
    out = st.workdir / "peers-out"
    if not (out / schema.WDS_REPO / schema.MANIFEST).exists():
        _convert(rel, out)
    _, dna_out, dna_total = _dna_repo(st)
    python = str(st.peers_python or sys.executable)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    prepared = run_measured([python, "-m", "benchmarks.peers", "prepare", str(out),
                             str(st.workdir / "peers-formats"), str(dna_out)], env)
    data = json.loads([line for line in prepared["output"].splitlines() if line.startswith("{")][-1])
    names = data.pop("available")
    for p in [*out.rglob("*"), *dna_out.rglob("*.parquet"), *(st.workdir / "peers-formats").rglob("*")]:
        if p.is_file():
            p.read_bytes()  # warm the page cache for everyone
    rows: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(st.repeats):
        for name in names:
            measured = run_measured([python, "-m", "benchmarks.peers", name, json.dumps(data)], env)
            result = json.loads([line for line in measured["output"].splitlines() if line.startswith("{")][-1])
            rows[name].append({**result, "peak": measured["peak"]})
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "first_batch", "peak", "samples")}
           for n, rs in rows.items()}
    rate = {n: m["samples"] / m["seconds"] for n, m in med.items()}
    figures = []
    for label, group, ours in (("image+DNA+label", [n for n in names if not n.endswith("-dna")], "make_loader"),
                               (f"DNA-only ({dna_total:,} records)", [n for n in names if n.endswith("-dna")],
                                "make_loader-dna")):
        mine = (ours,)
        others = [n for n in group if n not in mine]
        for name in group:
            mine_row, m = name in mine, med[name]
            figures.append(Figure(
                f"{label}, {name}: samples/s (first batch {m['first_batch']:.2f} s, peak {m['peak'] / 2**30:.2f} GiB)",
                f"{rate[name]:,.0f}/s", f"{ours} {rate[ours]:,.0f}/s", f"{rate[ours] / rate[name]:.2f}x",
                "-" if mine_row else "> 1x", None if mine_row else rate[ours] > rate[name]))
        if others:
            best = max(others, key=lambda n: rate[n])
            figures.append(Figure(f"{label}: make_loader's defaults ({ours}) vs the best peer ({best})",
                                  f"{rate[ours]:,.0f}/s", f"{best} {rate[best]:,.0f}/s",
                                  f"{rate[ours] / rate[best]:.2f}x", ">= 1.5x", rate[ours] / rate[best] >= 1.5))
            figures.append(Figure(f"{label}: time to the first batch, {ours} vs {best}",
                                  f"{med[ours]['first_batch']:.2f} s", f"{med[best]['first_batch']:.2f} s",
                                  f"{med[ours]['first_batch'] / med[best]['first_batch']:.2f}", "<= 1",
                                  med[ours]["first_batch"] <= med[best]["first_batch"]))
    missing = [n for n in (*peers.PEERS, *peers.DNA_PEERS) if n not in names]
    if missing:
        figures.append(Figure(f"not measured (library not installed: scripts/install_peers.sh): {', '.join(missing)}",
                              "-", "-", "-", "-", None))
    return figures


@contextlib.contextmanager
def _counted_from_scratch(server):
    """What follows is counted by ``server`` alone, with an empty default cache folder (the home
    folder's: indexes and metadata are fetched again) and no DALI index kept in memory."""
    import tempfile

    from bioscan5m_hf.repo import readers

    home = os.environ.get("HOME")
    with tempfile.TemporaryDirectory() as fresh:
        os.environ["HOME"] = fresh
        readers._INDEXES.clear()
        server.reset_counts()
        try:
            yield
        finally:
            if home is not None:
                os.environ["HOME"] = home


def _filter_epoch(root: str, keep, server) -> tuple[int, int, int]:
    """(samples, bytes of image-config shards, other bytes) one image + DNA epoch of pretrain reads
    from the loopback ``server``, with a fresh cache folder (nothing read before counts)."""
    from bioscan5m_hf import Composition, StreamingBIOSCAN5M, make_loader

    with _counted_from_scratch(server):
        loader = make_loader(StreamingBIOSCAN5M(root, "pretrain", shuffle=True, composition=Composition(filter=keep)),
                             batch_size=64, num_workers=0, image_size=64)
        n = sum(len(batch["processid"]) for batch in loader)
    shards = sum(b for path, b in server.bytes.items() if "/cropped_256/" in path and
                 path.endswith((".tar", ".parquet")))
    return n, shards, sum(server.bytes.values()) - shards


def own_bytes(out: Path, split: str, processids: set[str]) -> dict[str, int]:
    """The records' own bytes, from the tars' DALI indexes: in a tar their JPEG and JSON members with
    their headers, in a Parquet shard their JPEG bytes (their metadata is read beside)."""
    own = {"tar": 0, "parquet": 0}
    for idx in (out / schema.WDS_REPO / "cropped_256" / split).glob("*.idx"):
        for line in idx.read_text().splitlines()[1:]:
            f = line.split(" ")
            if f[3].split(".")[0] in processids:
                own["tar"] += sum(512 + int(f[i + 2]) for i in range(0, len(f), 4))
                own["parquet"] += sum(int(f[i + 2]) for i in range(0, len(f), 4) if f[i] == "jpg")
    return own


def filter_area(st: Settings) -> list[Figure]:
    """A metadata filter keeping one order (the one nearest 16% of pretrain, spread over every shard)
    over HTTP (the loopback server counts every byte it sends), for the WebDataset repo, the Parquet
    repo and the OUT folder as root: the image shards' bytes read against the kept records' own
    bytes (their JPEG and JSON members), the metadata and indexes read beside them, and the epoch
    without the filter."""
    import pyarrow.compute as pc

    from bioscan5m_hf.stream.streaming import StreamingBIOSCAN5M
    from tests.servers.fileserver import RepoServer

    rel = _sample(st.workdir / "remote-release", st.remote_records, "--layout", "zips")
    out = st.workdir / "remote-out"
    if not (out / schema.WDS_REPO / schema.MANIFEST).exists():
        _convert(rel, out, "--shard-records", "500")
    orders: dict[str, list[str]] = {}
    for pid, order in StreamingBIOSCAN5M(out, "pretrain", modality=("processid",), target_type="order",
                                         target_format="text", output_format="tuple"):
        orders.setdefault(order, []).append(pid)
    total = sum(map(len, orders.values()))
    order = min((o for o in orders if isinstance(o, str)), key=lambda o: abs(len(orders[o]) / total - 0.16))
    keep = pc.field("order") == order
    kept_pids = set(orders[order])
    own = own_bytes(out, "pretrain", kept_pids)
    figures = []
    with RepoServer(out) as server:
        for name, root in ((schema.WDS_REPO, f"{server.url}/{schema.WDS_REPO}"),
                           (schema.PARQUET_REPO, f"{server.url}/{schema.PARQUET_REPO}"), ("OUT folder", server.url)):
            n_all, all_shards, all_other = _filter_epoch(root, None, server)
            n_kept, shards, other = _filter_epoch(root, keep, server)
            mine = own["tar" if name == schema.WDS_REPO else "parquet"]
            ratio = shards / mine
            figures.append(Figure(
                f"{name} over HTTP: image shard bytes read by an epoch filtered to order == {order!r} "
                f"({n_kept} of {n_all} records, {n_kept / n_all:.0%}; metadata and indexes read beside: "
                f"{other / 1e6:.2f} MB; unfiltered epoch {all_shards / 1e6:.1f} MB of shards)",
                f"{shards / 1e6:.2f} MB", f"kept records' own bytes {mine / 1e6:.2f} MB", f"{ratio:.2f}x",
                "<= 1.3x", ratio <= 1.3))
    return figures


def _pil_crop(image):
    """The map-style benchmark's image transform: make_loader's resize and centre crop, of the PIL
    image ``BIOSCAN5M`` gives a transform (decoded already, so that damage is named before a user's
    code runs)."""
    from bioscan5m_hf.transforms import decode_image

    return decode_image(image, 256, channels_last=True)


def _map_collate(samples):
    """(image HWC uint8, barcode, species index) samples -> make_loader's batch tensors, with its
    collate's image stacking (straight into shared memory in a worker)."""
    import torch

    from bioscan5m_hf.stream.images import stack_images
    from bioscan5m_hf.transforms import KmerTokenizer

    ids, mask = KmerTokenizer(4, 660)([s[1] for s in samples])
    return {"image": stack_images([s[0] for s in samples]),
            "dna": torch.from_numpy(ids), "dna_mask": torch.from_numpy(mask),
            "species": torch.tensor([int(s[2]) for s in samples], dtype=torch.int64)}


def _map_rate(root: Path, split: str) -> float:
    from torch.utils.data import DataLoader

    from bioscan5m_hf.stream.dataset import BIOSCAN5M

    start = time.perf_counter()
    ds = BIOSCAN5M(root, split, transform=_pil_crop)
    n = sum(len(b["dna"]) for b in DataLoader(ds, batch_size=256, shuffle=True, num_workers=2,
                                              collate_fn=_map_collate))
    return n / (time.perf_counter() - start)


def _latencies(ds, picks) -> tuple[float, float]:
    times = []
    for i in picks:
        start = time.perf_counter()
        ds[i]
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3


def mapstyle_area(st: Settings) -> list[Figure]:
    """The map-style BIOSCAN5M: a shuffled DataLoader vs make_loader on the same repo, ds[i] latency
    locally and over HTTP, and the memory of ``metadata`` for the full row count vs the official
    loader's."""
    import numpy as np

    from bioscan5m_hf.stream.dataset import BIOSCAN5M
    from tests.servers.fileserver import RepoServer

    rel, _, _ = _loader_repo(st)
    out = st.workdir / "mapstyle-out"
    if not (out / schema.WDS_REPO / schema.MANIFEST).exists():
        _convert(rel, out, "--formats", "webdataset")
    repo = out / schema.WDS_REPO
    for p in repo.rglob("*.tar"):
        p.read_bytes()
    rates = {"map": [], "loader": []}
    for _ in range(st.repeats):
        rates["map"].append(_map_rate(repo, "pretrain"))
        rates["loader"].append(loader_rate(repo, "pretrain", True, 256))
    ours, loader = statistics.median(rates["map"]), statistics.median(rates["loader"])
    figures = [Figure("map-style DataLoader(batch 256, shuffle=True, 2 workers), image+DNA+label "
                      "(ds[i] decodes with Pillow)", f"{ours:,.0f}/s",
                      f"make_loader {loader:,.0f}/s", f"{ours / loader:.2f}", ">= 0.8", ours / loader >= 0.8)]
    ds = BIOSCAN5M(repo, "pretrain")
    picks = np.random.default_rng(0).integers(0, len(ds), 500).tolist()
    local = _latencies(ds, picks)
    with RepoServer(out) as server:
        remote = _latencies(BIOSCAN5M(f"{server.url}/{schema.WDS_REPO}", "pretrain"), picks[:200])
    figures.append(Figure("ds[i] latency (image + DNA + label), p50 / p99", f"local {local[0]:.2f} / {local[1]:.2f} ms",
                          f"HTTP (loopback) {remote[0]:.2f} / {remote[1]:.2f} ms", "-", "-", None))
    meta = _sample(st.workdir / f"metadata-{st.metadata_records}", st.metadata_records, "--no-images")
    converted = st.workdir / "mapstyle-metadata-out"
    if not (converted / schema.PARQUET_REPO / schema.MANIFEST).exists():
        _convert(meta, converted, "--packages", "none")
    code = (f"from bioscan5m_hf import BIOSCAN5M\n"
            f"ds = BIOSCAN5M({str(converted)!r}, 'all', modality='dna')\nprint(len(ds.metadata))")
    ours = run_measured([sys.executable, "-c", code])
    if st.official_python is not None:
        csv = meta / schema.METADATA_CSV
        official = run_measured([str(st.official_python), "-c",
                                 "from bioscan_dataset.bioscan5m import load_bioscan5m_metadata, USECOLS\n"
                                 f"print(len(load_bioscan5m_metadata({str(csv)!r}, split='all', usecols=USECOLS)))"])
        figures.append(Figure(f"BIOSCAN5M(..., 'all').metadata of {st.metadata_records:,} rows, peak memory",
                              f"{ours['peak'] / 2**30:.2f} GiB ({ours['seconds']:.0f} s)",
                              f"official {official['peak'] / 2**30:.2f} GiB ({official['seconds']:.0f} s)",
                              f"{ours['peak'] / official['peak']:.2f}", "<= 1.0", ours["peak"] <= official["peak"]))
    return figures


def _gpu_epoch(root: Path, package: str, workers: int, decode: str) -> dict:
    """One epoch of make_loader on CUDA (image + DNA + label, batch 256, 224 px), synchronised per
    batch as a training loop would be: images/s over the whole epoch (start-up included, as a
    training epoch sees it), the first batch's time, batch latency, GPU memory."""
    import torch

    from bioscan5m_hf import StreamingBIOSCAN5M, make_loader

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    free_before = torch.cuda.mem_get_info()[0]
    dataset = StreamingBIOSCAN5M(root, "pretrain", image_package=package, shuffle=True)
    loader = make_loader(dataset, batch_size=256, num_workers=workers, image_size=224, device="cuda",
                         persistent_workers=False, prefetch_factor=4, decode=decode)
    times, n, lowest_free = [], 0, free_before
    start = last = time.perf_counter()
    for batch in loader:
        torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last)
        last = now
        n += batch["image"].shape[0]
        lowest_free = min(lowest_free, torch.cuda.mem_get_info()[0])
    lat = sorted(times[1:]) or [0.0]
    return {"rate": n / (time.perf_counter() - start), "p50": lat[len(lat) // 2] * 1e3,
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, "first": times[0],
            "torch_peak": torch.cuda.max_memory_allocated(), "device_used": free_before - lowest_free}


def gpu_area(st: Settings) -> list[Figure]:
    """Images/s into a CUDA training loop: the GPU decoders (decode="dali": DALI's nvJPEG pipeline;
    decode="device": torchvision's) against the CPU path (decode="workers", worker processes), on
    cropped_256-like and original_full-like (1024 x 768) images, with 2, 8 and 15 workers. DALI's
    rows are left out, saying so, where it is not installed."""
    import importlib.util

    import torch

    name = torch.cuda.get_device_name()
    decoders = ["device"] + (["dali"] if importlib.util.find_spec("nvidia.dali") else [])
    figures = []
    if "dali" not in decoders:
        figures.append(Figure(f"{name}: decode='dali'", "DALI not installed", "-", "-", "-", None))
    full_records = max(min(1000, st.gpu_records), st.gpu_records // 3)
    for package, records in (("cropped_256", st.gpu_records), ("original_full", full_records)):
        rel = _sample(st.workdir / f"gpu-{package}-release", records, "--packages", package, "--layout", "folders",
                      "--workers", str(min(16, os.cpu_count() or 2)))
        out = st.workdir / f"gpu-{package}-out"
        if not (out / schema.WDS_REPO / schema.MANIFEST).exists():
            subprocess.run(CLI + ["convert", str(rel), str(out), "--packages", package, "--formats", "webdataset",
                                  "--workers", str(min(16, os.cpu_count() or 2)), "--quiet", "--overwrite"], check=True)
        for p in (out / schema.WDS_REPO).rglob("*.tar"):
            p.read_bytes()  # warm the page cache
        for workers in st.gpu_workers:
            r = {d: _gpu_epoch(out / schema.WDS_REPO, package, workers, decode=d) for d in ["workers", *decoders]}
            cpu = r["workers"]
            for decode in decoders:
                dev = r[decode]
                target, met = "-", None
                if package == "cropped_256":
                    target, met = ">= 15,000/s", dev["rate"] >= 15_000
                elif package == "original_full":
                    target, met = ">= 2x", dev["rate"] >= 2 * cpu["rate"]
                figures.append(Figure(
                    f"{name}: {package}-like, {records:,} records, {workers} workers, decode={decode} (first batch "
                    f"{dev['first']:.1f} s, p50/p99 batch {dev['p50']:.0f}/{dev['p99']:.0f} ms, GPU memory torch "
                    f"{dev['torch_peak'] / 2**20:,.0f} MiB, device {dev['device_used'] / 2**20:,.0f} MiB)",
                    f"{dev['rate']:,.0f} img/s",
                    f"decode=workers {cpu['rate']:,.0f} img/s (first batch {cpu['first']:.1f} s, "
                    f"p50/p99 {cpu['p50']:.0f}/{cpu['p99']:.0f} ms)", f"{dev['rate'] / cpu['rate']:.2f}x", target, met))
    return figures


# The drop-in at full size: one process per figure, each printing one JSON line.
DROPIN_SCRIPT = r"""
import json, sys, time
kind, root, split, picks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind == "official":  # imported before the clock starts, as a training script has them
    from bioscan_dataset import BIOSCAN5M
    BIOSCAN5M._check_integrity = lambda self, verbose=1: True
else:
    from bioscan5m_hf import BIOSCAN5M, StreamingBIOSCAN5M, make_loader
start = time.perf_counter()
if kind in ("official", "ours"):
    ds = BIOSCAN5M(root, split=split, modality=("dna",))
elif kind == "streaming":
    ds = StreamingBIOSCAN5M(root, split, modality=("dna",))
    first = next(iter(ds))
    print(json.dumps({"construct": time.perf_counter() - start, "records": len(ds)}))
    sys.exit()
else:  # make_loader's defaults, DNA-only: seconds to the first batch, records/s over the epoch
    loader = make_loader(StreamingBIOSCAN5M(root, split, modality=("dna",), shuffle=True), batch_size=1024)
    n, first = 0, None
    for batch in loader:
        first = first or time.perf_counter() - start
        n += len(batch["processid"])
    print(json.dumps({"first": first, "rate": n / (time.perf_counter() - start), "records": n}))
    sys.exit()
construct = time.perf_counter() - start
if not picks:
    print(json.dumps({"construct": construct, "records": len(ds)}))
    sys.exit()
import numpy as np
index = np.random.default_rng(0).integers(0, len(ds), picks)
t = time.perf_counter()
for i in index.tolist():
    ds[i]
rate = picks / (time.perf_counter() - t)
print(json.dumps({"construct": construct, "rate": rate, "records": len(ds)}))
"""

# 8 forked DataLoader workers through a whole epoch of ds[i] (``workers`` 0: this process alone).
SHARED_SCRIPT = r"""
import json, sys, torch
from bioscan5m_hf import BIOSCAN5M
ds = BIOSCAN5M(sys.argv[1], split=sys.argv[2], modality=("dna",))
workers = int(sys.argv[3])
loader = torch.utils.data.DataLoader(ds, batch_size=1024, shuffle=True, num_workers=workers, collate_fn=len,
                                     multiprocessing_context="fork" if workers else None)
print(json.dumps({"records": sum(loader)}))
"""


def _read_through(path: Path, block: int = 16 << 20) -> None:
    """Read a file once, a block at a time (into the page cache, not into this process)."""
    with open(path, "rb") as f:
        while f.read(block):
            pass


def dropin_area(st: Settings) -> list[Figure]:
    """The map-style drop-in on a release of the full row count, DNA only (no image: what each
    construction reads is the metadata): construction time and peak memory and ``ds[i]`` against
    the official loader, for pretrain and for ``all`` (the first construction on a machine, which
    copies the metadata into the cache, apart); the streaming dataset's first record;
    make_loader's defaults; and the memory of 8 forked workers through a whole epoch of ``ds[i]``
    against one process (their pages shared)."""
    meta = _sample(st.workdir / f"metadata-{st.metadata_records}", st.metadata_records, "--no-images")
    out = st.workdir / "dropin-out"
    if not (out / schema.PARQUET_REPO / schema.MANIFEST).exists():
        _convert(meta, out, "--packages", "none", "--formats", "parquet")
    repo = str(out / schema.PARQUET_REPO)
    for p in (out / schema.PARQUET_REPO).rglob("*"):
        if p.is_file():
            _read_through(p)  # warm the page cache, as for the official loader's CSV below
    _read_through(meta / schema.METADATA_CSV)

    cache = st.workdir / "dropin-cache"  # where BIOSCAN5M keeps its mapped copy of the metadata
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(cache))

    def measured(python, *args) -> dict:
        r = run_measured([str(python), "-c", DROPIN_SCRIPT, *map(str, args)], env)
        return {**json.loads(r["output"].strip().splitlines()[-1]), "peak": r["peak"], "anon": r["anon"]}

    figures = []
    shutil.rmtree(cache, ignore_errors=True)
    for split in ("pretrain", "all"):
        # The first construction copies the splits' rows of the release table into the cache (once;
        # 'all' adds the splits pretrain's did not copy); then construction alone (its memory is the
        # process's own: mapped pages are the page cache's, shared by every process), then ds[i].
        first = measured(sys.executable, "ours", repo, split, 0)
        for copy in cache.rglob("*.arrow"):  # in the page cache, as the official loader's CSV is
            _read_through(copy)
        ours = {**measured(sys.executable, "ours", repo, split, 200_000), **measured(sys.executable, "ours", repo,
                                                                                   split, 0)}
        gib = ours["anon"] / 2**30
        if st.official_python is None:
            figures.append(Figure(f"BIOSCAN5M({split!r}, DNA), {ours['records']:,} records: construction",
                                  f"{ours['construct']:.1f} s, peak {gib:.2f} GiB", "official not installed", "-",
                                  "-", None))
            continue
        official = measured(st.official_python, "official", meta, split, 50_000)
        speed, memory = official["construct"] / ours["construct"], ours["anon"] / official["anon"]
        whose = "the other splits'" if split == "all" else "the split's"
        figures += [
            Figure(f"BIOSCAN5M({split!r}, DNA): the first construction on a machine (copies "
                   f"{whose} rows of {schema.RELEASE_TABLE} into "
                   f"the cache, peak {first['anon'] / 2**30:.2f} GiB)", f"{first['construct']:.1f} s",
                   f"official {official['construct']:.1f} s (every construction)",
                   f"{official['construct'] / first['construct']:.1f}x", ">= 1x",
                   first["construct"] <= official["construct"]),
            Figure(f"BIOSCAN5M({split!r}, DNA), {ours['records']:,} records: construction time",
                   f"{ours['construct']:.1f} s", f"official {official['construct']:.1f} s", f"{speed:.0f}x",
                   ">= 20x", speed >= 20),
            Figure("same: peak memory of the process (its own; with the mapped pages it touched "
                   f"{ours['peak'] / 2**30:.2f} GiB)", f"{gib:.2f} GiB",
                   f"official {official['anon'] / 2**30:.2f} GiB", f"{memory:.2f}", "<= 0.10", memory <= 0.10),
            Figure("same: ds[i] at random indices", f"{ours['rate']:,.0f}/s", f"official {official['rate']:,.0f}/s",
                   f"{ours['rate'] / official['rate']:.1f}x", ">= 5x", ours["rate"] >= 5 * official["rate"])]
        if split == "pretrain":
            official_rate = official["rate"]
    for p in (out / schema.PARQUET_REPO / schema.METADATA_CONFIG / "pretrain").glob("*.parquet"):
        _read_through(p)  # again: the official loader's 14 GB may have pushed them out of the page cache
    streaming = measured(sys.executable, "streaming", repo, "pretrain", 0)
    figures.append(Figure("StreamingBIOSCAN5M('pretrain', DNA): construction and first record",
                          f"{streaming['construct']:.2f} s", "-", "-", "-", None))
    loader = measured(sys.executable, "make_loader", repo, "pretrain", 0)
    figures.append(Figure("make_loader's defaults, DNA-only pretrain (batch 1024): time to the first batch",
                          f"{loader['first']:.2f} s", "-", "-", "<= 1 s", loader["first"] <= 1))
    if st.official_python is not None:
        figures.append(Figure("same: records/s over the epoch (start-up included)", f"{loader['rate']:,.0f}/s",
                              f"official ds[i] {official_rate:,.0f}/s", f"{loader['rate'] / official_rate:.1f}x",
                              ">= 20x", loader["rate"] >= 20 * official_rate))
    shared = {n: run_measured([sys.executable, "-c", SHARED_SCRIPT, repo, "pretrain", str(n)], env)["peak"]
              for n in (0, 8)}
    figures.append(Figure("a whole epoch of ds[i] (pretrain, DNA) in 8 forked DataLoader workers: peak PSS of "
                          "all processes", f"{shared[8] / 2**30:.2f} GiB",
                          f"one process {shared[0] / 2**30:.2f} GiB", f"{shared[8] / shared[0]:.2f}x", "<= 1.5x",
                          shared[8] <= 1.5 * shared[0]))
    return figures


#: The Hub's published rate limits (https://huggingface.co/docs/hub/rate-limits, 5-minute windows):
#: requests to "resolvers" (every URL with /resolve/, i.e. each ranged read of a file) per window.
HUB_RESOLVER_LIMITS = {"anonymous": 3_000, "free user": 5_000}
#: The rate a fast training job consumes images at, for the projection (one rank, cropped_256).
PROJECTED_IMAGES_PER_SECOND = 10_000


def _requests_epoch(kind: str, root: str, server) -> tuple[int, int, int]:
    """(records, requests, bytes) one epoch of pretrain (images) makes ``server`` serve."""
    from bioscan5m_hf import StreamingBIOSCAN5M, make_loader

    with _counted_from_scratch(server):
        if kind == "make_loader":
            n = sum(len(b["processid"]) for b in make_loader(StreamingBIOSCAN5M(root, "pretrain", shuffle=True),
                                                             batch_size=64, num_workers=2, image_size=64))
        elif kind == "StreamingBIOSCAN5M":
            n = sum(1 for _ in StreamingBIOSCAN5M(root, "pretrain", modality=("image", "dna"), output_format="dict"))
        else:  # datasets streaming of the repo's files by URL
            import datasets

            builder = "parquet" if root.endswith(schema.PARQUET_REPO) else "webdataset"
            manifest = json.loads((server.folder / root.rsplit("/", 1)[1] / schema.MANIFEST).read_text())
            files = [f"{root}/{s['path']}" for s in manifest["configs"]["cropped_256"]["pretrain"]["shards"]]
            n = sum(1 for _ in datasets.load_dataset(builder, data_files={"train": files}, split="train",
                                                     streaming=True))
    return n, sum(server.requests.values()), sum(server.bytes.values())


def requests_area(st: Settings) -> list[Figure]:
    """HTTP requests and bytes of one pretrain epoch (cropped_256 images) over a loopback server, for
    make_loader, the streaming dataset and datasets' streaming of both repos; then the requests per
    5-minute window of one rank reading the full release at a fast job's pace, against the Hub's
    resolver limit. At full size a shard is hundreds of MB, read in ranged requests of
    ``storage.CHUNK_BYTES`` by this package (the sample's shards are smaller than one request, so its
    bytes per request are the shard's) and of the measured size by datasets (its HTTP block size),
    plus the requests each shard costs besides (its footer, index; measured here)."""
    from bioscan5m_hf.convert.sharding import full_scale_folders
    from bioscan5m_hf.repo.storage import CHUNK_BYTES
    from tests.servers.fileserver import RepoServer

    rel = _sample(st.workdir / "remote-release", st.remote_records, "--layout", "zips")
    out = st.workdir / "remote-out"
    if not (out / schema.WDS_REPO / schema.MANIFEST).exists():
        _convert(rel, out, "--shard-records", "500")
    limit = HUB_RESOLVER_LIMITS["free user"]
    figures = []
    with RepoServer(out) as server:
        for repo in (schema.PARQUET_REPO, schema.WDS_REPO):
            shards = json.loads((out / repo / schema.MANIFEST).read_text())["configs"]["cropped_256"]["pretrain"]
            for kind in ("make_loader", "StreamingBIOSCAN5M", "datasets"):
                n, requests, nbytes = _requests_epoch(kind, f"{server.url}/{repo}", server)
                per_record = nbytes / n
                count = len(shards["shards"])
                if kind == "datasets":
                    request_bytes, besides = nbytes / requests, 0.0
                else:
                    reads = sum(-(-s["num_bytes"] // CHUNK_BYTES) for s in shards["shards"])
                    request_bytes, besides = CHUNK_BYTES, max(0, requests - reads) / count
                full_shards = full_scale_folders("cropped_256", int(per_record * schema.TOTAL_RECORDS))["pretrain"]
                rate = PROJECTED_IMAGES_PER_SECOND * per_record  # bytes/s
                seconds_per_shard = schema.SPLIT_RECORDS["pretrain"] / full_shards / PROJECTED_IMAGES_PER_SECOND
                window = (rate / request_bytes + besides / seconds_per_shard) * 300
                figures.append(Figure(
                    f"{repo}, {kind}: a pretrain epoch over HTTP here: {requests:,} requests for {n:,} records, "
                    f"{nbytes / 1e6:,.1f} MB ({per_record / 1e3:.1f} kB a record, {requests / count:.1f} requests a "
                    f"shard); full size at {PROJECTED_IMAGES_PER_SECOND:,} images/s on one rank: requests of "
                    f"{request_bytes / 2**20:.1f} MiB, {full_shards:,} shards", f"{window:,.0f} / 5 min",
                    f"Hub resolver limit {limit:,} / 5 min (free user; anonymous "
                    f"{HUB_RESOLVER_LIMITS['anonymous']:,})", f"{window / limit:.2f}", "<= 1", window <= limit))
    return figures


def edited_release(base: Path, out: Path, edit: str, share: int = 200) -> Path:
    """``base`` with one pretrain record in ``share`` withdrawn (``edit="withdraw"``) or given another
    family (``"relabel"``), the records picked by sorted processid; images are shared (linked)."""
    import csv

    csv_path = base / schema.METADATA_CSV
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    split, pid, family = (header.index(c) for c in ("split", "processid", "family"))
    pretrain = sorted(r[pid] for r in body if r[split] == "pretrain")
    picked = set(pretrain[::share])
    families = sorted({r[family] for r in body if r[family]})
    if edit == "withdraw":
        body = [r for r in body if r[pid] not in picked]
    else:
        for r in body:
            if r[pid] in picked:  # the next family of the vocabulary (or one where there was none)
                r[family] = families[(families.index(r[family]) + 1) % len(families)] if r[family] else families[0]
    if not (out / schema.METADATA_CSV).exists():
        shutil.rmtree(out, ignore_errors=True)
        (out / schema.METADATA_CSV).parent.mkdir(parents=True)
        for entry in (base / schema.METADATA_CSV.split("/")[0]).iterdir():
            if entry.name != "metadata":
                (out / schema.METADATA_CSV.split("/")[0] / entry.name).symlink_to(entry.resolve())
        with open(out / schema.METADATA_CSV, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *body])
    return out


def republish_area(st: Settings) -> list[Figure]:
    """What re-publishing an edited release costs on the Hub: the share of the new version's bytes
    in content-defined chunks (Xet's parameters, :mod:`benchmarks.chunks`) that the old version
    lacks, per repo, after withdrawing 0.5% of pretrain's records, adding them back, and changing
    their family."""
    from . import chunks

    base = _sample(st.workdir / "republish-release", st.remote_records, "--layout", "folders")
    releases = {"base": base, **{e: edited_release(base, st.workdir / f"republish-{e}-release", e)
                                 for e in ("withdraw", "relabel")}}
    outs = {}
    for name, release in releases.items():
        outs[name] = st.workdir / f"republish-{name}-out"
        if not (outs[name] / schema.WDS_REPO / schema.MANIFEST).exists():
            _convert(release, outs[name], "--packages", "cropped_256")
    edits = {"withdraw 0.5% of pretrain": ("base", "withdraw"), "add 0.5% to pretrain": ("withdraw", "base"),
             "change the family of 0.5% of pretrain": ("base", "relabel")}
    figures = []
    for label, (old, new) in edits.items():
        for repo in (schema.PARQUET_REPO, schema.WDS_REPO):
            files = {v: sorted(p for p in (outs[v] / repo).rglob("*") if p.is_file()) for v in (old, new)}
            share, added, total, by_file = chunks.new_share(files[old], files[new])
            kinds: dict[str, int] = {}
            for path, n in by_file.items():
                rel = path.relative_to(outs[new] / repo).as_posix()
                kind = ("image shards" if rel.startswith("cropped_256/") else "metadata config"
                        if rel.startswith(f"{schema.METADATA_CONFIG}/") else "release table"
                        if rel == schema.RELEASE_TABLE else "the rest")
                kinds[kind] = kinds.get(kind, 0) + n
            parts = ", ".join(f"{k} {n / 1e6:.2f}" for k, n in kinds.items() if n)
            figures.append(Figure(f"{repo}, {st.remote_records:,}-record sample: {label}, new bytes in 64 KiB "
                                  f"content-defined chunks (MB: {parts})",
                                  f"{share:.3f} ({added / 1e6:.2f} of {total / 1e6:.1f} MB)",
                                  "the version before", f"{share:.3f}", "<= 0.10", share <= 0.10))
    return figures


#: The areas of the suite, in the order they run and appear in BENCHMARKS.md.
AREAS = {"loader": loader_area, "convert": convert_area, "metadata": metadata_area,
         "first-batch": first_batch_area, "memory": memory_area, "remote": remote_area, "mapstyle": mapstyle_area,
         "filter": filter_area, "peers": peers_area, "dropin": dropin_area, "republish": republish_area,
         "requests": requests_area,
         "gpu": gpu_area}
#: What runs without --only: every area but "gpu", which needs a CUDA device (scripts/gpu_check.sh).
DEFAULT_AREAS = tuple(a for a in AREAS if a != "gpu")


def suite(st: Settings, areas=DEFAULT_AREAS, echo=print) -> Iterator[tuple[str, list[Figure]]]:
    """(area, figures) for each area, as soon as it is measured."""
    st.workdir.mkdir(parents=True, exist_ok=True)
    for area in areas:
        echo(f"{area} ...")
        yield area, AREAS[area](st)


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


def write_benchmarks(area: str, figures: list[Figure], command: str, path: Path) -> None:
    """Put ``area``'s table into ``path`` between its markers (replacing the last run's), or append it
    in a new section; the rest of the file (the history in prose) is left as it is."""
    start, end = f"<!-- bench:{area}:start -->", f"<!-- bench:{area}:end -->"
    section = (f"{start}\nMachine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Command:\n\n"
               f"```bash\n{command}\n```\n\n{table(figures)}\n{end}")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {area}\n\n" + section + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="folder for the generated data (kept between runs)")
    parser.add_argument("--only", default=",".join(DEFAULT_AREAS),
                        help=f"comma-separated areas to measure (default {', '.join(DEFAULT_AREAS)}; also: gpu)")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"),
                        help="file whose area sections are rewritten (default ./BENCHMARKS.md)")
    parser.add_argument("--no-write", action="store_true", help="print the tables, write no file")
    parser.add_argument("--official-python", type=Path, default=None,
                        help=f"interpreter with bioscan-dataset installed (default {DEFAULT_OFFICIAL_PYTHON} if "
                             "present); without one the official-loader figures are left out")
    parser.add_argument("--peers-python", type=Path, default=None,
                        help="interpreter of the peers area (default: the official loader's, where "
                             "scripts/install_peers.sh installs LitData, MosaicML Streaming, webdataset, datasets)")
    parser.add_argument("--peers-records", type=int, default=6_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-records", type=int, default=30_000)
    parser.add_argument("--convert-records", type=int, default=100_000)
    parser.add_argument("--metadata-records", type=int, default=schema.TOTAL_RECORDS)
    parser.add_argument("--remote-records", type=int, default=6_000)
    parser.add_argument("--dna-records", type=int, default=520_000,
                        help="records of the metadata-only release the DNA-only figure reads (pretrain ~91%%)")
    parser.add_argument("--gpu-records", type=int, default=24_000,
                        help="cropped_256-like records of the gpu area (original_full-like: a third)")
    parser.add_argument("--gpu-workers", default="2,8,15", help="worker counts of the gpu area")
    args = parser.parse_args(argv)
    areas = [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        parser.error(f"unknown area(s) {', '.join(unknown)}; choose from {', '.join(AREAS)}")
    official = args.official_python
    if official is None and Path(DEFAULT_OFFICIAL_PYTHON).exists():
        official = Path(DEFAULT_OFFICIAL_PYTHON)
    peers_python = args.peers_python or official
    st = Settings(args.workdir, args.repeats, args.loader_records, args.convert_records, args.metadata_records,
                  args.remote_records, official, args.gpu_records,
                  tuple(int(w) for w in args.gpu_workers.split(",") if w.strip()), args.dna_records,
                  args.peers_records, peers_python)
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    for area, figures in suite(st, areas):  # each area written as soon as it is measured
        print(f"\n{area}:\n{table(figures)}")
        if not args.no_write:
            write_benchmarks(area, figures, command, args.output)
    return 0

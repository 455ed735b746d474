"""Feeding speed, measured side by side in one run: make_loader vs the raw decode limit vs the official
loader, and DNA-only records/s vs the official loader.

    .venv/bin/python scripts/bench_loader.py /tmp/bench-loader [--records 30000] [--repeats 3]

Builds its data with the sample generator (cropped_256 JPEGs at their real size: shorter side 256),
converts it, and for each of --repeats rounds measures, on the pretrain split:

- raw decode limit: the same JPEG bytes, already in memory, decoded and resized/centre-cropped to
  uint8 by Pillow in 2 processes (no I/O, no batching);
- make_loader: image + DNA + label batches of 256 as tensors, 2 workers, from the Parquet shards;
- official: bioscan_dataset.BIOSCAN5M in a 2-worker DataLoader over the unzipped release, with the
  same image decode, DNA tokenizer and collate, so the output tensors are the same (run in
  .venv-official, see scripts/install_official.sh);
- DNA-only: token ids + labels, batch 1024, make_loader vs the official loader.

Prints medians and the ratios; these machines are shared and noisy, so only same-run ratios count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT / ".venv-official" / "bin" / "python"

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
    if mode == "image":
        out["image"] = torch.from_numpy(np.stack([s[0] for s in samples]))
    ids, mask = tok([s[-2] for s in samples])
    out["dna"], out["dna_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
    out["species"] = torch.tensor([int(s[-1]) for s in samples], dtype=torch.int64)
    return out

modality = ("image", "dna") if mode == "image" else ("dna",)
start = time.perf_counter()
ds = BIOSCAN5M(root, split=split, modality=modality, target_type="species",
               transform=(lambda im: decode_image(im, 256)) if mode == "image" else None)
loader = DataLoader(ds, batch_size=batch_size, num_workers=2, collate_fn=collate, shuffle=True)
n = sum(len(b["dna"]) for b in loader)
print(json.dumps({"samples": n, "seconds": time.perf_counter() - start}))
"""


def _decode_worker(args):
    from bioscan5m_hf.transforms import decode_image

    path, lo, hi = args
    import pyarrow.parquet as pq

    images = []
    for p in sorted(Path(path).glob("*.parquet")):
        images += pq.read_table(p, columns=["image"]).column("image").combine_chunks().field("bytes").to_pylist()
    images = images[lo:hi]
    start = time.perf_counter()
    for data in images:
        decode_image(data, 256)
    return len(images), time.perf_counter() - start


def raw_decode(split_dir: Path, total: int) -> float:
    """Samples/s of 2 processes decoding the split's JPEG bytes from memory (their decode time only)."""
    half = total // 2
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_decode_worker, [(str(split_dir), 0, half), (str(split_dir), half, total)])
    return sum(n for n, _ in results) / max(s for _, s in results)


def ours(root: Path, split: str, image: bool, batch_size: int) -> float:
    from bioscan5m_hf import make_loader

    start = time.perf_counter()
    loader = make_loader(root, split, batch_size=batch_size, num_workers=2, image_size=256,
                         modality=("image", "dna") if image else ("dna",), target_type="species",
                         persistent_workers=False)
    n = sum(len(b["processid"]) for b in loader)
    return n / (time.perf_counter() - start)


def official(release: Path, split: str, image: bool, batch_size: int) -> float | None:
    if not OFFICIAL.exists():
        return None
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([str(OFFICIAL), "-c", OFFICIAL_SCRIPT, str(release), split, "image" if image else "dna",
                        str(batch_size)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"official loader failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["samples"] / out["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", default="pretrain")
    args = parser.parse_args()
    from bioscan5m_hf.convert import ConvertOptions, convert
    from bioscan5m_hf.sample import write_sample

    release, out = args.workdir / "release", args.workdir / "out"
    if not (release / "bioscan5m").exists():
        write_sample(release, args.records, 0, ("cropped_256",), layout=("folders",), workers=2, show_progress=False)
    if not (out / "BIOSCAN-5M" / "manifest.json").exists():
        convert(release, out, ConvertOptions(formats=("parquet",), workers=2, show_progress=False), overwrite=True)
    manifest = json.loads((out / "BIOSCAN-5M" / "manifest.json").read_text())
    total = manifest["configs"]["cropped_256"][args.split]["num_records"]
    split_dir = out / "BIOSCAN-5M" / "cropped_256" / args.split
    for p in (out / "BIOSCAN-5M").rglob("*.parquet"):  # warm the page cache for everyone
        p.read_bytes()
    for p in (release / "bioscan5m").rglob("*.jpg"):
        p.read_bytes()

    figures: dict[str, list[float]] = {k: [] for k in ("raw", "ours", "official", "ours_dna", "official_dna")}
    for rep in range(args.repeats):
        figures["raw"].append(raw_decode(split_dir, total))
        figures["ours"].append(ours(out, args.split, True, 256))
        figures["official"].append(official(release, args.split, True, 256))
        figures["ours_dna"].append(ours(out, args.split, False, 1024))
        figures["official_dna"].append(official(release, args.split, False, 1024))
        print(f"round {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in figures.items() if v[-1]),
              flush=True)
    med = {k: statistics.median(v) for k, v in figures.items() if all(x is not None for x in v)}
    print(f"\n{total:,} {args.split} records, cropped_256 JPEGs (shorter side 256) -> uint8 3x256x256, "
          f"2 workers, median of {args.repeats}:\n")
    print("| figure | samples/s | ratio |")
    print("|---|---:|---:|")
    print(f"| raw decode limit (Pillow, 2 processes, bytes in memory) | {med['raw']:,.0f} | 1.00 |")
    print(f"| make_loader, image + DNA + label, batch 256 | {med['ours']:,.0f} | "
          f"{med['ours'] / med['raw']:.2f} of raw |")
    if "official" in med:
        print(f"| official BIOSCAN5M, 2-worker DataLoader, same tensors | {med['official']:,.0f} | "
              f"make_loader is {med['ours'] / med['official']:.2f}x |")
    print(f"| make_loader, DNA-only (token ids + labels), batch 1024 | {med['ours_dna']:,.0f} | |")
    if "official_dna" in med:
        print(f"| official BIOSCAN5M, DNA-only, same tensors | {med['official_dna']:,.0f} | "
              f"make_loader is {med['ours_dna'] / med['official_dna']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

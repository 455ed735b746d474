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
import statistics
import sys
from pathlib import Path

from bioscan5m_hf.bench import loader_rate as ours  # noqa: E402
from bioscan5m_hf.bench import official_rate as official  # noqa: E402
from bioscan5m_hf.bench import raw_decode_rate as raw_decode  # noqa: E402


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

"""Conversion at scale: wall time and peak memory of `bioscan5m-hf sample` and `convert`.

    .venv/bin/python scripts/bench_convert.py /tmp/bench [--records 100000] [--metadata-records 5150850]

Builds its data with the sample generator: a release of --records records with small images (from
the official zips), and metadata-only releases of --metadata-records rows and a tenth of that (to
show that peak memory does not grow with the number of records beyond the metadata columns). Prints
a Markdown table for BENCHMARKS.md. Memory is the proportional set size (PSS) summed over the whole
process tree (the main process and its workers), sampled every 0.1 s: pages shared by several
processes (the memory-mapped metadata table) count once. Its anonymous part is the heap, excluding
file pages the kernel can drop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bioscan5m_hf.bench import CLI, run_measured as measure  # noqa: E402


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--metadata-records", type=int, default=5_150_850)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    w = args.workdir
    rows = []

    def run(label: str, cmd: list[str], data: Path | None = None, records: int | None = None):
        r = measure(cmd)
        gb = f"{size(data) / 1e9:.2f} GB" if data else ""
        rate = f"{records / r['seconds']:,.0f} rec/s" if records else ""
        rows.append((label, f"{r['seconds']:.1f} s", rate, f"{r['tree'] / 2**30:.2f} GiB",
                     f"{r['anon'] / 2**30:.2f} GiB", gb))
        print(f"{label}: {r['seconds']:.1f} s, peak PSS {r['tree'] / 2**30:.2f} GiB, "
              f"anonymous {r['anon'] / 2**30:.2f} GiB {gb}", flush=True)

    n, m = args.records, args.metadata_records
    jobs = str(args.workers)
    rel = w / f"release-{n}"
    if not (rel / "bioscan5m").exists():
        run(f"sample {n:,} records, {args.image_size}px cropped_256 images (folders + zips)",
            CLI + ["sample", str(rel), "--records", str(n), "--image-size", str(args.image_size), "--workers", jobs,
                   "--quiet"], rel, n)
    run(f"convert {n:,} records from zips, Parquet + WebDataset, {jobs} workers",
        CLI + ["convert", str(rel), str(w / f"out-{n}"), "--image-source", "zips", "--workers", jobs, "--quiet",
               "--overwrite"], w / f"out-{n}", n)
    for count in (m // 10, m):
        meta = w / f"metadata-{count}"
        if not (meta / "bioscan5m").exists():
            run(f"sample {count:,} rows, metadata only", CLI + ["sample", str(meta), "--records", str(count),
                                                               "--no-images", "--quiet"], meta, count)
        run(f"convert {count:,} rows, metadata only, {jobs} workers",
            CLI + ["convert", str(meta), str(w / f"out-meta-{count}"), "--packages", "none", "--workers", jobs,
                   "--quiet", "--overwrite"], w / f"out-meta-{count}", count)

    print("\n| step | wall time | throughput | peak memory (PSS, all processes) | of it anonymous (heap) | output size |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

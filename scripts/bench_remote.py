"""Streaming from a URL vs reading the same shards from local disk, side by side in one run.

    .venv/bin/python scripts/bench_remote.py /tmp/bench-remote [--records 6000] [--repeats 3]

Serves a converted sample over HTTP on 127.0.0.1 (tests/repo_server.py: a plain static file server
with Range support) and measures make_loader (image + DNA + label, 2 workers, batch 64) on the
pretrain split of the WebDataset and Parquet repos: time to the first batch and samples/s for a full
epoch, from local disk, streamed over HTTP, and over HTTP with a shard cache (first and second
epoch). Medians of --repeats rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bioscan5m_hf import make_loader, schema  # noqa: E402
from bioscan5m_hf.convert import ConvertOptions, convert  # noqa: E402
from bioscan5m_hf.sample import write_sample  # noqa: E402
from tests.repo_server import RepoServer  # noqa: E402


def epoch(root, **kw) -> tuple[float, float]:
    """(seconds to the first batch, samples/s over the epoch)."""
    start = time.perf_counter()
    loader = make_loader(root, "pretrain", batch_size=64, num_workers=2, image_size=224, persistent_workers=False,
                         **kw)
    first, n = None, 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        n += len(batch["processid"])
    return first, n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    release, out = args.workdir / "release", args.workdir / "out"
    if not (out / schema.WDS_REPO / schema.MANIFEST).exists():
        write_sample(release, args.records, 0, ("cropped_256",), layout=("zips",), workers=2, show_progress=False)
        convert(release, out, ConvertOptions(shard_records=500, workers=2, show_progress=False), overwrite=True)
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with RepoServer(out) as server:
        for _ in range(args.repeats):
            for repo in (schema.WDS_REPO, schema.PARQUET_REPO):
                print(f"round {_ + 1}: {repo}", flush=True)
                rows.setdefault((repo, "local disk"), []).append(epoch(out / repo))
                rows.setdefault((repo, "HTTP, streamed"), []).append(epoch(f"{server.url}/{repo}"))
                with tempfile.TemporaryDirectory() as cache:
                    url = f"{server.url}/{repo}"
                    rows.setdefault((repo, "HTTP + cache, epoch 1"), []).append(epoch(url, cache_dir=cache))
                    before = server.shard_requests()
                    rows.setdefault((repo, "HTTP + cache, epoch 2"), []).append(epoch(url, cache_dir=cache))
                    assert server.shard_requests() == before, "epoch 2 should come from the cache"
    print(f"\n| repo | source | time to first batch | samples/s | vs local disk |")
    print("|---|---|---:|---:|---:|")
    for (repo, source), values in rows.items():
        first = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        local = statistics.median(v[1] for v in rows[repo, "local disk"])
        print(f"| {repo} | {source} | {first:.2f} s | {rate:,.0f} | {rate / local:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

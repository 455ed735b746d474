"""The benchmark suite beside the package (``benchmarks/``): its bookkeeping and the ways it measures."""

import sys

from benchmarks.suite import Figure, run_measured, table, write_benchmarks
from bioscan5m_hf import schema


def test_run_measured_reports_time_and_memory():
    r = run_measured([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(0.5)"])
    assert r["seconds"] >= 0.5 and r["peak"] > 40_000_000 and r["anon"] > 40_000_000


def test_benchmarks_section_is_replaced_in_place(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n")
    figures = [Figure("speed", "10/s", "raw 20/s", "0.50", ">= 0.90", False),
               Figure("first batch", "1.0 s", "-", "-", "<= 2 s", True)]
    write_benchmarks("loader", figures, "bioscan5m-hf bench /tmp/w", path)
    write_benchmarks("loader", figures[1:], "bioscan5m-hf bench /tmp/w --repeats 5", path)
    write_benchmarks("remote", figures[:1], "bioscan5m-hf bench /tmp/w --only remote", path)
    text = path.read_text()
    assert text.count("<!-- bench:loader:start -->") == 1 and "intro" in text
    loader = text.split("<!-- bench:loader:start -->")[1].split("<!-- bench:loader:end -->")[0]
    assert "--repeats 5" in loader and "| speed |" not in loader
    assert "## remote" in text and text.index("## loader") < text.index("## remote")
    assert "| first batch | 1.0 s | - | - | <= 2 s | yes |" in table(figures)
    assert "**no**" in table(figures)


def test_only_names_known_areas(capsys):
    import pytest

    from benchmarks.suite import main

    with pytest.raises(SystemExit):
        main(["/tmp/never-made", "--only", "loader,warp-speed"])
    assert "warp-speed" in capsys.readouterr().err


def test_gpu_area_measures_every_way_and_tabulates_it(tmp_path, monkeypatch):
    """The gpu area's data, calls and table, with a stand-in for the CUDA epochs (run on a GPU by
    scripts/gpu_check.sh): decode in workers, on the device and with DALI, per worker count; without
    DALI its rows are left out, saying so."""
    import importlib.util

    import torch

    from benchmarks import suite as bench

    calls = []

    def epoch(root, package, workers, decode):
        calls.append((package, workers, decode))
        rate = {"workers": 1000.0, "device": 4000.0, "dali": 16000.0}[decode]
        return {"rate": rate, "p50": 10.0, "p99": 20.0, "first": 0.5, "torch_peak": 2**20, "device_used": 2**21}

    monkeypatch.setattr(bench, "_gpu_epoch", epoch)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")
    real_find_spec = importlib.util.find_spec
    for dali in (True, False):
        calls.clear()
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, dali=dali: (object() if dali else None) if name == "nvidia.dali"
                            else real_find_spec(name, *a))
        figures = bench.gpu_area(bench.Settings(tmp_path, gpu_records=200, gpu_workers=(2,)))
        decoders = ("device", "dali") if dali else ("device",)
        assert calls == [(p, 2, d) for p in ("cropped_256", "original_full") for d in ("workers", *decoders)]
        assert all(f.name.startswith("Stand-in GPU: ") for f in figures)
        rows = {(f.name.split(",")[0].split(": ")[1], f.name.split("decode=")[1].split(" ")[0]): f
                for f in figures if "workers, decode=" in f.name}
        assert len(rows) == 2 * len(decoders)
        assert rows["cropped_256-like", "device"].ratio == "4.00x" and rows["cropped_256-like", "device"].met is False
        assert rows["original_full-like", "device"].met is True  # 4x the workers
        if dali:
            assert rows["cropped_256-like", "dali"].met is True  # 16,000 img/s: over the 15,000 target
        else:
            assert any("DALI not installed" in f.value for f in figures)


def test_every_raw_decode_way_decodes_every_image(converted_zips):
    """The loader area's raw limits (Pillow, the loader's decoder, into a batch, simplejpeg alone when
    installed) each decode all of a split's images."""
    from benchmarks.suite import _decode_worker, split_images
    from bioscan5m_hf.transforms import simplejpeg

    split = converted_zips.repos["parquet"] / "cropped_256" / "pretrain"
    total = len(split_images(split))
    assert total > 0
    for way in ["pillow", "loader", "batch"] + (["bare"] if simplejpeg is not None else []):
        count, seconds = _decode_worker((str(split), 0, total, way))
        assert count == total and seconds > 0, way


def test_loader_rate_ends_its_workers(converted_zips):
    """The loader area's make_loader figures: an epoch of a loader with its defaults (persistent
    workers), fresh or a later one, whose workers have ended before the next figure's clock starts."""
    import multiprocessing

    from benchmarks.suite import loader_rate
    from bioscan5m_hf.stream.loader import Mode

    root = converted_zips.repos["parquet"]
    for later, mode in ((False, None), (True, None), (False, Mode("workers", True))):
        assert loader_rate(root, "pretrain", True, 8, later=later, mode=mode) > 0
        assert multiprocessing.active_children() == [], later


def test_dropin_area_measures_every_figure_on_a_small_release(tmp_path):
    """The full-size area's code path on 3,000 rows, without the official loader: construction for
    pretrain and all, the streaming dataset, make_loader's first batch, 8 workers' shared memory."""
    from benchmarks import suite

    figures = suite.dropin_area(suite.Settings(tmp_path, metadata_records=3000))
    names = " | ".join(f.name for f in figures)
    for part in ("BIOSCAN5M('pretrain', DNA)", "BIOSCAN5M('all', DNA)", "StreamingBIOSCAN5M('pretrain', DNA)",
                 "time to the first batch", "8 forked DataLoader workers"):
        assert part in names, part


def test_content_defined_chunks_resync_after_an_edit():
    """The re-upload measure (Xet's chunking parameters): chunks within the bounds, and an insertion
    or a deletion costs the chunks around it, not every chunk after it."""
    import numpy as np

    from benchmarks import chunks

    data = np.random.default_rng(0).bytes(4 << 20)
    ends = chunks.chunk_ends(data)
    sizes = np.diff([0, *ends])
    assert ends[-1] == len(data) and sizes[:-1].min() >= chunks.MIN_CHUNK and sizes.max() <= chunks.MAX_CHUNK
    assert 40_000 < sizes.mean() < 90_000  # 64 KiB on average
    before = chunks.chunks(data)
    for edited in (data[:1_000_000] + b"inserted" * 50 + data[1_000_000:], data[:2_000_000] + data[2_010_000:]):
        after = chunks.chunks(edited)
        assert sum(s for h, s in after.items() if h not in before) <= 4 * chunks.MAX_CHUNK
    assert sum(s for h, s in chunks.chunks(b"x" + data).items() if h not in before) < len(data) // 10


def test_republish_area_edits_the_release_and_measures_each_repo(tmp_path):
    """The republish area on a small sample: the edited releases hold what the edits say, and a
    withdrawal or relabelling re-uses most of each repo (the fixed-count sharding it replaced rewrote
    0.68 of the Parquet repo on the issue's sample)."""
    import csv

    from benchmarks import suite as bench

    figures = bench.republish_area(bench.Settings(tmp_path, remote_records=1200))
    rows = {}
    for name in ("republish-release", "republish-withdraw-release", "republish-relabel-release"):
        with open(tmp_path / name / schema.METADATA_CSV, newline="", encoding="utf-8") as f:
            rows[name] = {r["processid"]: r for r in csv.DictReader(f)}
    base, withdrawn, relabelled = rows.values()
    pretrain = sorted(p for p, r in base.items() if r["split"] == "pretrain")
    assert base.keys() - withdrawn.keys() == set(pretrain[::200])
    assert {p for p in base if base[p]["family"] != relabelled[p]["family"]} == set(pretrain[::200])
    assert len(figures) == 6 and {f.name.split(",")[0] for f in figures} == {schema.PARQUET_REPO, schema.WDS_REPO}
    shares = [float(f.ratio) for f in figures]
    assert all(0 < s < 0.5 for s in shares), [(f.name, f.ratio) for f in figures]


def test_requests_area_counts_and_projects_each_way(tmp_path):
    """The request budget on a small sample: every way counted (make_loader, the streaming dataset,
    datasets' streaming, both repos), and this package's own ways within the Hub's resolver limit at
    full size (its requests of storage.CHUNK_BYTES)."""
    from benchmarks import suite as bench

    figures = bench.requests_area(bench.Settings(tmp_path, remote_records=600))
    assert len(figures) == 6
    ours = [f for f in figures if "datasets:" not in f.name]
    assert len(ours) == 4 and all(f.met for f in ours), [(f.name, f.value) for f in ours]
    assert all(" requests for " in f.name and f.value.endswith("/ 5 min") for f in figures)


def test_mapstyle_area_measures_every_figure_on_a_small_release(tmp_path):
    """The map-style area's code path on a small release (its DataLoader, latencies locally and over
    HTTP, the metadata's memory), without the official loader."""
    from benchmarks import suite

    figures = suite.mapstyle_area(suite.Settings(tmp_path, repeats=1, loader_records=600, metadata_records=3000))
    names = " | ".join(f.name for f in figures)
    assert "map-style DataLoader" in names and "ds[i] latency" in names
    assert all(f.value and not f.value.startswith("0/s") for f in figures)

import sys

from bioscan5m_hf.bench import Figure, run_measured, table, write_benchmarks


def test_run_measured_reports_time_and_memory():
    r = run_measured([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(0.5)"])
    assert r["seconds"] >= 0.5 and r["peak"] > 40_000_000 and r["anon"] > 40_000_000


def test_benchmarks_section_is_replaced_in_place(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n")
    figures = [Figure("speed", "10/s", "raw 20/s", "0.50", ">= 0.90", False),
               Figure("first batch", "1.0 s", "-", "-", "<= 2 s", True)]
    write_benchmarks(figures, "bioscan5m-hf bench /tmp/w", path)
    write_benchmarks(figures[1:], "bioscan5m-hf bench /tmp/w --repeats 5", path)
    text = path.read_text()
    assert text.count("<!-- bench:start -->") == 1 and "intro" in text
    assert "--repeats 5" in text and "| speed |" not in text
    assert "| first batch | 1.0 s | - | - | <= 2 s | yes |" in table(figures)
    assert "**no**" in table(figures)

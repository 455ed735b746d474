import sys

from bioscan5m_hf.tools.bench import Figure, run_measured, table, write_benchmarks


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

    from bioscan5m_hf.tools.bench import main

    with pytest.raises(SystemExit):
        main(["/tmp/never-made", "--only", "loader,warp-speed"])
    assert "warp-speed" in capsys.readouterr().err

import json
import subprocess
import sys

from bioscan5m_hf import schema
from bioscan5m_hf.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "bioscan5m_hf", *args], capture_output=True, text=True)


def test_sample_and_convert_commands(tmp_path):
    assert main(["sample", str(tmp_path / "rel"), "--records", "60", "--image-size", "32", "--quiet",
                 "--layout", "zips"]) == 0
    assert not (tmp_path / "rel" / "bioscan5m" / "images").exists()
    assert (tmp_path / "rel" / "BIOSCAN_5M_cropped_256_train.zip").is_file()
    assert main(["convert", str(tmp_path / "rel"), str(tmp_path / "out"), "--splits", "seen,key_unseen",
                 "--shard-records", "5", "--shard-bytes", "1MB", "--workers", "2", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "out" / schema.WDS_REPO / "manifest.json").read_text())
    assert list(manifest["configs"]["cropped_256"]) == ["train", "val", "test", "key_unseen"]
    assert manifest["options"]["shard_bytes"] == 1 << 20


def test_errors_are_clear_and_exit_2(tmp_path):
    result = run("convert", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert "bioscan5m-hf: error:" in result.stderr and "no metadata CSV" in result.stderr
    assert "Traceback" not in result.stderr
    bad = run("convert", str(tmp_path), str(tmp_path / "out"), "--packages", "cropped_512")
    assert bad.returncode == 2 and "unknown cropped_512" in bad.stderr


def test_metadata_only_sample(tmp_path):
    result = run("sample", str(tmp_path), "--records", "100", "--no-images", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "wrote 100 records" in result.stdout
    assert (tmp_path / schema.METADATA_CSV).is_file() and not list(tmp_path.glob("*.zip"))


def test_demo_runs_end_to_end(tmp_path):
    result = run("demo", str(tmp_path / "demo"), "--quiet")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "byte-identical to the committed shards/: yes" in out
    assert "every config and split loaded with the expected counts: yes" in out
    assert "eval accuracy rose from" in out and ": yes" in out.split("eval accuracy rose from")[1]
    assert out.rstrip().splitlines()[-1].startswith("done")
    for config in ("cropped_256", "metadata"):
        assert config in out
    assert "MISMATCH" not in out


def test_metadata_only_conversion(tmp_path):
    assert main(["sample", str(tmp_path / "rel"), "--records", "50", "--no-images", "--quiet"]) == 0
    assert main(["convert", str(tmp_path / "rel"), str(tmp_path / "out"), "--packages", "none", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "out" / schema.PARQUET_REPO / "manifest.json").read_text())
    assert list(manifest["configs"]) == ["metadata"]
    assert sum(v["num_records"] for v in manifest["configs"]["metadata"].values()) == 50
    assert not (tmp_path / "out" / schema.WDS_REPO).exists()

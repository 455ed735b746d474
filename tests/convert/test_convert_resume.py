"""Crash safety: kill -9 a conversion at many moments, rerun it, get the clean run's bytes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bioscan5m_hf import schema
from bioscan5m_hf.convert import WORK_DIR, ConvertOptions, convert
from bioscan5m_hf.errors import ReleaseError
from bioscan5m_hf.tools.sample import write_sample

ARGS = ["--packages", "cropped_256", "--shard-records", "8", "--workers", "2", "--quiet"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release-resume")
    write_sample(root, 1200, 11, ("cropped_256",), image_size=32, layout=("zips",), show_progress=False)
    return root


@pytest.fixture(scope="module")
def clean(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    convert(release, out, ConvertOptions(packages=("cropped_256",), shard_records=8, show_progress=False))
    return files(out)


def files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def command(release, out):
    return [sys.executable, "-m", "bioscan5m_hf", "convert", str(release), str(out), *ARGS]


def test_kill_9_at_many_points_then_rerun_is_byte_identical(release, clean, tmp_path):
    out = tmp_path / "out"
    done = out / WORK_DIR / "done"

    def finished() -> int:
        return len(list(done.rglob("*.json"))) if done.exists() else 0

    kills = 0
    for k in range(8):
        before = finished()
        proc = subprocess.Popen(command(release, out), start_new_session=True)
        if k == 0:
            time.sleep(0.4)  # while it starts and validates the metadata
        else:  # once it has written a few more shards: kills land in the middle of the work
            deadline = time.time() + 60
            while proc.poll() is None and finished() < before + k + 1 and time.time() < deadline:
                time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the converter and its workers, mid-whatever
            kills += 1
        proc.wait()
        # Whatever a killed run left, a shard under its final name is whole: the clean run's bytes.
        for repo in (schema.PARQUET_REPO, schema.WDS_REPO):
            for path in (out / repo).rglob("bioscan5m-*"):
                assert path.read_bytes() == clean[path.relative_to(out).as_posix()], path
    assert kills == 8
    result = subprocess.run(command(release, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert files(out) == clean
    assert not (out / WORK_DIR).exists()


def test_a_damaged_finished_shard_is_rewritten(release, clean, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(command(release, out), start_new_session=True)
    done = out / WORK_DIR / "done"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(done.rglob("*.json"))) < 10:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [json.loads(p.read_text()) for p in done.rglob("*.json")]
    assert finished, "the run was killed before it finished a shard"
    repo = schema.PARQUET_REPO if finished[0]["format"] == "parquet" else schema.WDS_REPO
    victim = out / repo / finished[0]["path"]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated after it was recorded as done
    assert subprocess.run(command(release, out), capture_output=True).returncode == 0
    assert files(out) == clean


def test_rerun_of_a_finished_conversion_changes_nothing(release, clean, tmp_path):
    out = tmp_path / "out"
    convert(release, out, ConvertOptions(packages=("cropped_256",), shard_records=8, show_progress=False))
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    convert(release, out, ConvertOptions(packages=("cropped_256",), shard_records=8, show_progress=False))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp


def test_unfinished_run_with_other_options_is_refused(release, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(command(release, out), start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / WORK_DIR / "done").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    other = ConvertOptions(packages=("cropped_256",), shard_records=9, show_progress=False)
    with pytest.raises(ReleaseError, match="unfinished conversion made with other options"):
        convert(release, out, other)
    convert(release, out, other, overwrite=True)
    assert not (out / WORK_DIR).exists()

"""Conversion as independent tasks (a SLURM job array, an indexed Kubernetes Job) + finalize."""

import subprocess
import sys

import pytest

from bioscan5m_hf.convert import ConvertOptions, convert, finalize, task_from_environment
from bioscan5m_hf.errors import ReleaseError

from .test_convert import all_files


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bioscan5m_hf", *args], capture_output=True, text=True)


def test_three_separate_tasks_plus_finalize_equal_a_single_run(release, converted_zips, tmp_path):
    out = tmp_path / "out"
    args = ["convert", str(release), str(out), "--packages", "cropped_256,original_256", "--shard-records", "40",
            "--image-source", "zips", "--quiet", "--num-tasks", "3"]
    procs = [subprocess.Popen([sys.executable, "-m", "bioscan5m_hf", *args, "--task-index", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:  # all three at once, sharing one output folder
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        assert "done; run `bioscan5m-hf finalize" in stdout
    assert not (out / "BIOSCAN-5M" / "manifest.json").exists()
    result = cli("finalize", str(out))
    assert result.returncode == 0, result.stderr
    assert all_files(out) == all_files(converted_zips.repos["parquet"].parent)


def test_finalize_refuses_while_a_task_is_missing(release, tmp_path):
    options = ConvertOptions(packages=("cropped_256",), shard_records=40, show_progress=False)
    assert convert(release, tmp_path, options, num_tasks=2, task_index=1) is None
    with pytest.raises(ReleaseError, match=r"planned shard\(s\) are not written yet"):
        finalize(tmp_path)
    convert(release, tmp_path, options, num_tasks=2, task_index=0)
    result = finalize(tmp_path)
    assert result.manifests["parquet"]["source"]["num_records"] == 240
    with pytest.raises(ReleaseError, match="no conversion in progress"):
        finalize(tmp_path)


def test_task_from_the_scheduler_environment():
    assert task_from_environment({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "8",
                                  "SLURM_ARRAY_TASK_MIN": "1"}) == (8, 3)
    assert task_from_environment({"JOB_COMPLETION_INDEX": "2"}) == (None, 2)
    assert task_from_environment({}) == (None, None)
    with pytest.raises(ValueError, match="task index 3"):
        convert("/nonexistent", "/tmp/x", num_tasks=3, task_index=3)


def test_plan_prints_the_shards_and_writes_nothing(release, converted_zips, tmp_path):
    result = cli("convert", str(release), str(tmp_path / "out"), "--shard-records", "40", "--plan")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["format", "config", "split", "shards", "records", "bytes", "files"]
    pretrain = converted_zips.manifests["webdataset"]["configs"]["cropped_256"]["pretrain"]
    shards = len(pretrain["shards"])
    expected = ["webdataset", "cropped_256", "pretrain", str(shards), f"{pretrain['num_records']:,}"]
    row = next(line.split() for line in lines if line.split()[:5] == expected)
    assert row[6] == str(2 * shards)  # each tar and its DALI index
    assert any(line.startswith("total") for line in lines)
    assert not (tmp_path / "out").exists()


def test_plan_projects_the_full_scale_folders_against_the_hub_limit(release, tmp_path):
    result = cli("convert", str(release), str(tmp_path / "out"), "--packages", "cropped_256,original_256", "--plan")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    projected = [line for line in lines if line.startswith("full scale")]
    assert "no published size" in projected[1]  # original_256
    assert "cropped_256/pretrain/" in projected[0] and "within the Hub's 10,000 entries per folder" in projected[0]
    # The largest package at full scale, at the default shard size, stays under the limit.
    from bioscan5m_hf.convert.sharding import FILES_PER_SHARD, full_scale_folders
    from bioscan5m_hf.hub.rules import HubLimits

    folders = full_scale_folders("original_full", 200_000_000_000)
    assert max(folders.values()) * FILES_PER_SHARD["webdataset"] < HubLimits().files_per_folder

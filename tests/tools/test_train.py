import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bioscan5m_hf.tools.train import build_parser, run
from bioscan5m_hf.util import process_tree

ROOT = Path(__file__).resolve().parents[2]
#: A torchrun job here takes seconds; one that takes this long is stuck.
TORCHRUN_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(sig: int, pids: list[int]) -> None:
    """``sig`` to each of ``pids`` that is still running."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``scripts/train.py args`` under torchrun with ``nproc`` ranks. A job still running after
    TORCHRUN_TIMEOUT fails the test with every rank's and loader worker's Python stacks (train.py
    prints them on SIGUSR1), each under its process id, and all of its processes are ended."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "scripts" / "train.py"), *args]
    run_id = len(list(cwd.glob("torchrun-*.err")))
    out_path, err_path = cwd / f"torchrun-{run_id}.out", cwd / f"torchrun-{run_id}.err"
    with open(out_path, "wb") as out, open(err_path, "ab") as err:  # append: the stacks' headers go between
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        try:
            proc.wait(timeout=TORCHRUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            stuck = process_tree(proc.pid)[1:]  # the ranks (each in a session of its own) and their workers
            for pid in stuck:
                try:
                    err.write(f"\n== process {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}\n".encode())
                    err.flush()
                    os.kill(pid, signal.SIGUSR1)
                except OSError:  # it ended meanwhile
                    continue
                time.sleep(0.5)
            send(signal.SIGKILL, [*process_tree(proc.pid), *stuck])  # and workers started meanwhile
            proc.wait()
            pytest.fail(f"torchrun still running after {TORCHRUN_TIMEOUT} s; stdout:\n{out_path.read_text()[-3000:]}\n"
                        f"stderr, with the stacks of its processes:\n{err_path.read_text()[-30000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out_path.read_text(), err_path.read_text())


def test_a_running_job_prints_its_stacks_on_sigusr1_and_goes_on(tmp_path):
    """SIGUSR1 makes the main process and its loader workers print where they are, to stderr, without
    stopping them."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), str(ROOT / "shards"), "--epochs", "1000",
           "--max-steps", "2", "--batch-size", "16", "--workers", "1", "--device", "cpu"]
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=tmp_path)
        workers = []
        try:
            assert proc.stdout.readline().startswith(b"epoch 0:")
            workers = process_tree(proc.pid)[1:]
            assert workers  # the training loader's persistent worker, at least
            send(signal.SIGUSR1, [proc.pid, *workers])  # (an evaluation worker may have finished)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                text = err_path.read_text()
                if "tools/train.py" in text and "_worker_loop" in text:
                    break
                time.sleep(0.2)
            assert "tools/train.py" in text, text[-3000:]  # the main process's stack
            assert "_worker_loop" in text, text[-3000:]  # a loader worker's
            assert proc.stdout.readline().startswith(b"epoch ")  # still training
            assert proc.poll() is None
        finally:
            send(signal.SIGKILL, [proc.pid, *workers])
            proc.wait()


def test_accuracy_rises_single_process(tmp_path):
    args = build_parser().parse_args([str(ROOT / "shards"), "--epochs", "5", "--workers", "1",
                                      "--metrics", str(tmp_path / "m.json")])
    history = run(args, echo=lambda *_: None)
    assert len(history) == 5
    assert history[-1]["eval_accuracy"] > history[0]["eval_accuracy"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert (tmp_path / "m.json").is_file()


def test_torchrun_two_ranks_disjoint_data_no_hang(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    result = torchrun(2, str(ROOT / "shards"), "--epochs", "2", "--max-steps", "3", "--batch-size", "16",
                      "--workers", "1", "--log-keys", str(keys), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1:" in result.stdout and "(2 ranks)" in result.stdout
    ranks = [[line.split()[2] for line in (keys / f"rank{r}.txt").read_text().splitlines()] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2 * 3 * 16  # equal steps on both ranks
    for epoch in range(2):  # within an epoch the ranks read disjoint records
        a = set(ranks[0][epoch * 48:(epoch + 1) * 48])
        b = set(ranks[1][epoch * 48:(epoch + 1) * 48])
        assert not a & b


def test_a_rank_killed_mid_epoch_and_a_restart_on_three_ranks_trains_on_the_split_once(tmp_path):
    """2 ranks train; rank 1 dies at step 5; the job restarts with 3 ranks (and other workers and batch
    size) from rank 0's checkpoint; over the epoch every record of the split is trained on exactly
    once, besides the samples flagged as padding."""
    import json

    import pyarrow.parquet as pq

    from bioscan5m_hf import schema

    keys, ckpt = tmp_path / "keys", tmp_path / "ckpt"
    keys.mkdir()
    common = [str(ROOT / "shards"), "--split", "pretrain", "--epochs", "1", "--device", "cpu", "--modality", "dna",
              "--log-keys", str(keys), "--checkpoint", str(ckpt)]
    first = torchrun(2, *common, "--batch-size", "8", "--workers", "1", "--exit-at-step", "5", "--exit-rank", "1",
                     cwd=tmp_path)
    assert first.returncode != 0  # the job died with its rank
    state = json.loads((ckpt / "loader.json").read_text())
    assert state["world_size"] == 2 and 0 < state["batches"] < 5
    before = [line.split() for r in range(2) for line in (keys / f"rank{r}.txt").read_text().splitlines()]
    trained = [(pid, pad) for _, step, pid, pad in before if int(step) <= state["batches"]]  # what the model saw
    for r in range(2):
        (keys / f"rank{r}.txt").unlink()
    second = torchrun(3, *common, "--batch-size", "5", "--workers", "2", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    trained += [(line.split()[2], line.split()[3]) for r in range(3)
                for line in (keys / f"rank{r}.txt").read_text().splitlines()]
    manifest = json.loads((ROOT / "shards" / schema.PARQUET_REPO / schema.MANIFEST).read_text())
    split = [p for s in manifest["configs"]["metadata"]["pretrain"]["shards"]
             for p in pq.read_table(ROOT / "shards" / schema.PARQUET_REPO / s["path"],
                                    columns=["processid"]).column("processid").to_pylist()]
    real = [pid for pid, pad in trained if pad == "0"]
    assert sorted(real) == sorted(split)  # every record once
    assert len(trained) - len(real) < 3  # padding: fewer than one per rank

import socket
import subprocess
import sys
from pathlib import Path

from bioscan5m_hf.tools.train import build_parser, run

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "scripts" / "train.py"),
           str(ROOT / "shards"), "--epochs", "2", "--max-steps", "3", "--batch-size", "16", "--workers", "1",
           "--log-keys", str(keys), "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1:" in result.stdout and "(2 ranks)" in result.stdout
    ranks = [(keys / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2 * 3 * 16  # equal steps on both ranks
    for epoch in range(2):  # within an epoch the ranks read disjoint records
        a = set(ranks[0][epoch * 48:(epoch + 1) * 48])
        b = set(ranks[1][epoch * 48:(epoch + 1) * 48])
        assert not a & b

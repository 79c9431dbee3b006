"""The one training loop under torchrun: 2 processes with half the batch each reach the weights of 1 process with the
whole batch, and only rank 0 writes checkpoints and results (gloo on the CPU, on this machine's loopback only)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minipeft.core import read_weights

SCRIPT = Path(__file__).resolve().parents[1] / "distributed" / "train_script.py"


def run(command, out: Path) -> None:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    result = subprocess.run([*command, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_with_half_batches_reach_the_single_process_weights(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    run([sys.executable], tmp_path / "one")
    run([str(torchrun), "--standalone", "--nproc_per_node=2"], tmp_path / "two")
    one, _ = read_weights(tmp_path / "one" / "weights.safetensors")
    two, _ = read_weights(tmp_path / "two" / "weights.safetensors")
    assert one.keys() == two.keys()
    moved = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert moved < 1e-5, f"the two runs differ by {moved}"
    # ...and the runs really trained (the weights are not equal because nothing moved).
    losses_one = json.loads((tmp_path / "one" / "history.json").read_text())
    losses_two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert losses_one[-1] < losses_one[0]
    assert losses_two == pytest.approx(losses_one, abs=1e-5)  # the logged loss is the mean over processes
    written = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert written == ["checkpoint.safetensors", "history.json", "rank0.txt", "rank1.txt", "weights.safetensors"]

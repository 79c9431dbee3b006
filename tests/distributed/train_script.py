"""Run by tests/unit/test_distributed.py, once alone and once under ``torchrun --nproc_per_node=2``.

Trains a small model with minipeft.core.train — the same call in both cases — and (on rank 0 only) writes the final
weights, the loss history and the checkpoint. Every rank writes a file naming itself, so the test can check who wrote
what.
"""

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from minipeft.core import TrainConfig, train
from minipeft.core.io import save_weights


def main(out: Path) -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=generator)
    y = (x[:, 0] - x[:, 2] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))  # no dropout: ranks need no shared RNG
    config = TrainConfig(steps=12, batch_size=8, lr=0.05, warmup_steps=2, device="cpu", progress=False, seed=3,
                         checkpoint=str(out / "checkpoint.safetensors"), checkpoint_every=4)
    history = train(model, TensorDataset(x, y), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), config)
    (out / f"rank{rank}.txt").write_text("ran")
    if rank == 0:
        save_weights(dict(model.state_dict()), out / "weights.safetensors")
        (out / "history.json").write_text(json.dumps(history.loss))
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

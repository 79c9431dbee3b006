"""Plain metrics used across chapters."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import default_collate

from ..core.train import move_to


@torch.no_grad()
def predict(model: torch.nn.Module, examples: Sequence, forward: Callable, batch_size: int = 64) -> torch.Tensor:
    """Run ``forward(model, batch) -> logits`` over ``examples`` in eval mode; return all logits (N, C) on CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(examples), batch_size):
        batch = move_to(default_collate(list(examples[start:start + batch_size])), device)
        outputs.append(forward(model, batch).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    """Fraction of rows whose arg-max equals the label."""
    labels = torch.as_tensor(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions but {labels.shape[0]} labels.")
    return (logits.argmax(-1) == labels).float().mean().item()

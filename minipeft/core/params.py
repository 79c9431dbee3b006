"""Freezing, unfreezing and counting parameters.

Parameter-efficient fine-tuning starts by freezing the whole pretrained model and then making a *few* tensors
trainable again. This file does the bookkeeping: ``freeze``, ``unfreeze`` by name pattern, a report of what is
trainable (a table, with a per-module breakdown), and optimiser parameter groups that keep weight decay off
biases and normalisation weights.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn


def freeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and return the model."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def unfreeze(model: nn.Module, pattern: str | Sequence[str] | None = None) -> list[str]:
    """Make parameters trainable whose qualified name matches ``pattern`` (regex search); all if ``None``.

    Returns the names that were unfrozen. Raises ``ValueError`` if a pattern matches no parameter.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
    names = [n for n, _ in model.named_parameters()]
    for p in patterns:
        if not any(re.search(p, n) for n in names):
            sample = ", ".join(names[:6])
            raise ValueError(f"no parameter name matches {p!r}; parameter names look like: {sample}, …")
    unfrozen = []
    for name, parameter in model.named_parameters():
        if not patterns or any(re.search(p, name) for p in patterns):
            parameter.requires_grad_(True)
            unfrozen.append(name)
    return unfrozen


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``[(name, parameter)]`` for every parameter with ``requires_grad=True``."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared tensors, e.g. tied embeddings, are counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class ParameterReport:
    """How many parameters a model has and how many of them train."""

    trainable: int
    total: int
    by_module: "OrderedDict[str, tuple[int, int]]" = field(default_factory=OrderedDict)  # name -> (trainable, total)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        rows = [("module", "trainable", "total", "%")]
        for name, (trainable, total) in self.by_module.items():
            rows.append((name, f"{trainable:,}", f"{total:,}", f"{100.0 * trainable / total:.4f}" if total else "-"))
        rows.append(("TOTAL", f"{self.trainable:,}", f"{self.total:,}", f"{self.percent:.4f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for i, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells))
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:  # pretty in notebooks
        body = ["| module | trainable | total | % |", "|---|---:|---:|---:|"]
        for name, (trainable, total) in self.by_module.items():
            body.append(f"| `{name}` | {trainable:,} | {total:,} | {100.0 * trainable / total if total else 0:.4f} |")
        body.append(f"| **total** | **{self.trainable:,}** | **{self.total:,}** | **{self.percent:.4f}** |")
        return "\n".join(body)


def parameter_report(model: nn.Module, depth: int = 1) -> ParameterReport:
    """Count trainable and total parameters, overall and per module at the given name depth.

    ``depth=1`` groups by the first name component (``model``, ``lm_head``); ``depth=3`` by e.g.
    ``model.layers.0``. Tied parameters are counted once, under the first name that holds them.
    """
    by_module: OrderedDict[str, list[int]] = OrderedDict()
    seen: set[int] = set()
    trainable = total = 0
    for name, parameter in model.named_parameters():  # named_parameters() already skips shared tensors
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        group = ".".join(name.split(".")[:depth]) if "." in name else name
        counts = by_module.setdefault(group, [0, 0])
        counts[1] += parameter.numel()
        total += parameter.numel()
        if parameter.requires_grad:
            counts[0] += parameter.numel()
            trainable += parameter.numel()
    return ParameterReport(trainable, total, OrderedDict((k, (v[0], v[1])) for k, v in by_module.items()))


_NO_DECAY = re.compile(r"(bias|norm|ln_|layernorm|LayerNorm|embeddings?\.position)", re.IGNORECASE)


def optimizer_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Optimiser groups for the *trainable* parameters: weight decay on matrices, none on biases and norms.

    Raises ``ValueError`` when nothing is trainable (usually: ``apply`` was not called, or everything is frozen).
    """
    groups = decay_groups(trainable_parameters(model), weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters; apply a method or unfreeze something first.")
    return groups


def decay_groups(named_parameters, weight_decay: float = 0.0, **options) -> list[dict]:
    """Split ``[(name, parameter)]`` into optimiser groups: weight decay on matrices, none on biases, norms and other
    vectors (decaying a norm's weight towards 0, or a bias, only hurts). ``options`` (e.g. ``lr=``) go into both
    groups; an empty group is left out."""
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        (no_decay if parameter.ndim < 2 or _NO_DECAY.search(name) else decay).append(parameter)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, **options})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **options})
    return groups

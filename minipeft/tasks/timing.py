"""Latency in turns: compare forward passes of several models on a busy machine, fairly.

A shared CPU has slow and fast stretches. Timing model A for a while and then model B measures the machine as much
as the models. Taking turns — A, B, A, B, ... — puts every model in every stretch, so their *ratio* stays fair even
when the absolute times drift. :mod:`minipeft.bench` times its train and inference steps this way
(:func:`minipeft.bench.median_ms`); the chapters use that same timer through :func:`latency_in_turns`, so the book
has one timer, not one per chapter.

The median of the timed rounds is reported: one slow round (another job, a page fault) moves a mean but not a
median.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..bench import BenchConfig, median_ms

__all__ = ["forward_latency", "latency_in_turns"]


def latency_in_turns(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     device: str | torch.device = "cpu") -> dict[str, float]:
    """Median seconds of each named call over ``repeats`` rounds in which the calls take turns.

    ``warmup`` untimed rounds come first (allocator, caches and lazy initialisation settle). On a GPU the timer
    synchronises around each call, so it measures the work and not its launch.

    Introduced in chapter 05 (GLoRA), where merged and unmerged encoders are timed against the base one; chapter 3
    times one model at a time with it.
    """
    if not calls:
        raise ValueError("nothing to time: pass at least one named call, e.g. {'base': lambda: model(**batch)}.")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int (timed rounds), got {repeats!r}.")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int (untimed rounds), got {warmup!r}.")
    milliseconds = median_ms(calls, BenchConfig(steps=repeats, warmup=warmup), torch.device(device))
    return {name: ms / 1000 for name, ms in milliseconds.items()}


def forward_latency(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor], repeats: int,
                    warmup: int = 1) -> dict[str, float]:
    """Median seconds of one forward pass ``model(**inputs)`` of each named model, without gradients, in turns.

    Introduced in chapter 03 (LoRA: base, unmerged, merged and unloaded SmolLM2) and used in chapter 05 (GLoRA).
    The models run as they are (the caller puts them in ``eval()`` mode: dropout changes the work).
    """
    device = next(iter(inputs.values())).device

    def forward_of(model):
        @torch.no_grad()
        def forward():
            model(**inputs)
        return forward

    return latency_in_turns({name: forward_of(model) for name, model in models.items()}, repeats, warmup, device)

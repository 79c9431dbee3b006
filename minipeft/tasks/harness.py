"""Apply a method → train → evaluate → undo: one run on a shared frozen encoder.

Chapters that compare methods (or one method at several sizes) on the intent task keep **one** frozen MiniLM and
put each method into it in turn. Every run is the same five steps:

1. ``torch.manual_seed(config.seed)``, then ``build()`` — the chapter's own code, which applies the method and puts
   a fresh head on the encoder, in whatever order the chapter chose (the order decides which random numbers
   initialise what, so it stays the caller's);
2. count what trains;
3. :func:`minipeft.core.train` on the training examples;
4. accuracy on each test set (and whatever else the chapter wants to read off the trained model);
5. ``handle.undo()`` — the encoder is the untouched pretrained one again — and ``model.eval()``, because training
   left it in train mode (dropout on) and the next run or measurement must not inherit that.

Introduced in chapter 02 (adapters); chapters 3, 5 and 6 run their sweeps with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..core.params import count_parameters
from ..core.train import History, TrainConfig, train
from ..evaluation import accuracy, predict
from .intents import classification_loss, logits_of

__all__ = ["MethodRun", "apply_train_evaluate"]


@dataclass
class MethodRun:
    """What one apply → train → evaluate → undo run measured (introduced in chapter 02, adapters)."""

    trainable: int  # parameters that trained: the method's tensors and the head
    accuracy: dict[str, float]  # test set name -> accuracy
    logits: dict[str, torch.Tensor]  # test set name -> (N, K) logits of the trained model
    history: History  # the training loss per step and the wall time
    handle_numel: int  # numbers in handle.state_dict(): what the method adds to a task's storage (head excluded)
    handle_bytes: int  # the same in bytes, at the stored dtypes
    extras: dict[str, Any] = field(default_factory=dict)  # whatever `inspect` returned

    @property
    def seconds(self) -> float:
        """Wall time of training (the evaluation is not included)."""
        return self.history.wall_time


def apply_train_evaluate(
    build: Callable[[], tuple[nn.Module, Any]],
    train_examples: Sequence,
    test_examples: dict[str, Sequence[dict]],
    config: TrainConfig,
    *,
    loss: Callable[[nn.Module, Any], torch.Tensor] = classification_loss,
    forward: Callable[[nn.Module, Any], torch.Tensor] = logits_of,
    groups: Callable[[nn.Module, Any], list[dict]] | None = None,
    inspect: Callable[[nn.Module, Any], dict] | None = None,
) -> MethodRun:
    """Run ``build`` → train → evaluate → ``undo`` once and return the :class:`MethodRun`.

    Args:
        build: called right after ``torch.manual_seed(config.seed)``; applies the method to the shared encoder and
            returns ``(model, handle)`` — the model that trains (typically a classifier with a fresh head around
            the encoder) and the method's handle (anything with ``state_dict()`` and ``undo()``).
        train_examples: what :func:`minipeft.core.train` iterates over.
        test_examples: ``{name: tokenised examples}``; each example carries its ``"label"``.
        config: the training configuration; its ``seed`` also seeds ``build``.
        loss, forward: ``(model, batch) -> loss`` and ``(model, batch) -> (B, K) logits``; by default the intent
            classifier's :func:`~minipeft.tasks.intents.classification_loss` and
            :func:`~minipeft.tasks.intents.logits_of`.
        groups: ``(model, handle) -> optimiser parameter groups``, for a method that trains some tensors at their
            own learning rate (ProPETL's masks); ``None``: every trainable tensor at ``config.lr``.
        inspect: ``(model, handle) -> dict``, called after evaluation and *before* ``undo`` — the last moment the
            trained method is still in the model (to export masks, keep a copy of the weights, ...).

    Introduced in chapter 02 (adapters).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a minipeft.core.TrainConfig, got {type(config).__name__}.")
    torch.manual_seed(config.seed)  # the method's and the head's initial weights: the same for every run
    model, handle = build()
    if not hasattr(handle, "undo"):
        raise TypeError(f"build() must return (model, handle) with a handle that has undo(); got a "
                        f"{type(handle).__name__} as the handle.")
    trainable = count_parameters(model, trainable_only=True)
    history = train(model, train_examples, loss, config, groups=groups(model, handle) if groups else None)
    logits = {name: predict(model, examples, forward) for name, examples in test_examples.items()}  # (N, K) each
    scores = {name: accuracy(logits[name], torch.stack([example["label"] for example in examples]))
              for name, examples in test_examples.items()}
    extras = inspect(model, handle) if inspect else {}
    state = handle.state_dict()
    handle.undo()  # the shared encoder is the pretrained one again
    model.eval()  # train() left the model (and with it the shared encoder) in train mode: dropout on
    return MethodRun(trainable=trainable, accuracy=scores, logits=logits, history=history,
                     handle_numel=sum(t.numel() for t in state.values()),
                     handle_bytes=sum(t.numel() * t.element_size() for t in state.values()), extras=extras)

"""One small training loop for every chapter.

A chapter brings a model (with its trainable parameters chosen), a dataset and a loss function
``loss_fn(model, batch) -> scalar tensor``; :func:`train` does the rest:

* seeds everything (``seed``) and picks the device (CUDA → MPS → CPU);
* builds AdamW over the *trainable* parameters (no weight decay on biases and norms) with linear warm-up and a
  linear or cosine decay;
* uses bf16 autocast on a GPU, clips the gradient norm, shows a tqdm progress bar;
* calls an ``evaluate(model) -> dict`` callback every ``eval_every`` steps and at the end;
* returns a :class:`History` (losses, learning rates, evaluations, wall time) that notebooks plot;
* writes checkpoints atomically and, with ``resume=True``, continues an interrupted run to the *same* final
  weights an uninterrupted run reaches.

Why the same result after a resume? Three things decide the future of a run: the weights and optimizer
moments (saved), the random number generators that drive dropout (saved), and the order of the data. The data
order is not saved but *recomputed*: epoch ``e`` visits the examples in ``randperm(n, seed=(seed, e))``, so
step ``s`` always sees the same batch, whichever process runs it.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import default_collate
from tqdm import tqdm

from .io import atomic_write
from .params import parameter_groups, trainable_parameters
from .scale import default_device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    """Everything that decides a training run (a chapter keeps one per scale)."""

    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "linear"  # "constant", "linear" or "cosine" decay after warm-up
    grad_clip: float | None = 1.0
    eval_every: int = 0  # 0: evaluate only at the end
    seed: int = 0
    device: str | None = None  # None: CUDA, then MPS, then CPU
    amp: bool | None = None  # None: bf16 autocast on CUDA only
    checkpoint: str | None = None  # path of a checkpoint file (.safetensors)
    checkpoint_every: int = 0  # 0: no periodic checkpoints
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be ≥ 1 (got steps={self.steps}, batch_size={self.batch_size}).")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}; choose 'constant', 'linear' or 'cosine'.")
        if (self.checkpoint_every or self.resume) and not self.checkpoint:
            raise ValueError("checkpoint_every / resume need checkpoint='path/to/run.safetensors'.")


@dataclass
class History:
    """What happened during training: one entry per step, plus the evaluations."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # each: {"step": s, metric: value, ...}
    wall_time: float = 0.0  # seconds spent in train(), summed over resumed runs

    def metric(self, name: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one evaluation metric, ready for ``plt.plot``."""
        pairs = [(e["step"], e[name]) for e in self.evals if name in e]
        if not pairs:
            known = sorted({k for e in self.evals for k in e if k != "step"})
            raise KeyError(f"no evaluation recorded {name!r}; recorded metrics: {known}")
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def final(self) -> dict:
        """The last evaluation (empty if there was none)."""
        return dict(self.evals[-1]) if self.evals else {}

    def smoothed_loss(self, window: int = 10) -> list[float]:
        """Running mean of the loss over ``window`` steps (for plots of noisy small-batch losses)."""
        values = np.asarray(self.loss, dtype=float)
        if len(values) == 0:
            return []
        kernel = np.ones(min(window, len(values))) / min(window, len(values))
        return np.convolve(values, kernel, mode="valid").tolist()


def move_to(batch: Any, device: torch.device) -> Any:
    """Move tensors inside nested dicts/lists/tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The example indices of training step ``step`` (0-based): a pure function of its arguments.

    Epoch ``e`` shuffles with ``randperm(n, generator seeded by (seed, e))`` and cuts it into
    ``ceil(n / batch_size)`` batches (the last one may be smaller).
    """
    batch_size = min(batch_size, n_examples)
    per_epoch = math.ceil(n_examples / batch_size)
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator)
    return order[position * batch_size : (position + 1) * batch_size]


def lr_multiplier(step: int, config: TrainConfig) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then constant / linear / cosine decay to 0."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    if config.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- checkpoints: one safetensors file (tensors) whose metadata holds the rest as JSON ----------------------


def _save_checkpoint(path, model, optimizer, step: int, history: History, config: TrainConfig) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, parameter in trainable_parameters(model):
        tensors[f"model.{name}"] = parameter.detach().to("cpu").contiguous()
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, slot in optimizer_state["state"].items():
        for key, value in slot.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    numpy_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(numpy_state[1].astype(np.int64))
    python_state = random.getstate()
    meta = {
        "step": step,
        "config": asdict(config),
        "history": asdict(history),
        "optimizer_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "rng_numpy": [numpy_state[0], int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        "rng_python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"minipeft_checkpoint": json.dumps(meta)}))


def _load_checkpoint(path, model, optimizer) -> tuple[int, History]:
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        meta = json.loads(handle.metadata()["minipeft_checkpoint"])
    params = dict(trainable_parameters(model))
    saved_names = {k[len("model.") :] for k in tensors if k.startswith("model.")}
    if saved_names != set(params):
        difference = sorted(saved_names ^ set(params))
        raise ValueError(
            f"checkpoint {path} does not fit this model: trainable parameter {difference[0]!r} is in one but not "
            "the other. Resume with the same model and method configuration, or delete the checkpoint."
        )
    with torch.no_grad():
        for name, parameter in params.items():
            parameter.copy_(tensors[f"model.{name}"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, slot = key.split(".", 2)
            state.setdefault(int(index), {})[slot] = value
    for index, scalars in meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    groups = meta["optimizer_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    kind, position, has_gauss, cached = meta["rng_numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    return meta["step"], History(**meta["history"])


def train(
    model: nn.Module,
    data: Sequence,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    config: TrainConfig,
    *,
    evaluate: Callable[[nn.Module], dict] | None = None,
    collate: Callable[[list], Any] = default_collate,
    groups: list[dict] | None = None,
) -> History:
    """Train the trainable parameters of ``model`` and return the :class:`History`.

    Args:
        model: any ``nn.Module``; only parameters with ``requires_grad=True`` are optimised.
        data: a map-style dataset (``len`` and ``data[i]``) of training examples.
        loss_fn: ``loss_fn(model, batch) -> scalar loss`` (the batch is already on the device).
        config: a :class:`TrainConfig`.
        evaluate: optional ``evaluate(model) -> {metric: float}``, run in ``eval()`` mode without gradients.
        collate: turns a list of examples into a batch (default: ``torch.utils.data.default_collate``).
        groups: optional optimiser parameter groups (``[{"params": [...], "lr": 3e-2}, ...]``) for methods whose
            parts need different learning rates (e.g. ProPETL's mask scores); a group without ``"lr"`` uses
            ``config.lr``. Every group follows the same warm-up and decay. Default: all trainable parameters,
            with weight decay on matrices only (:func:`minipeft.core.parameter_groups`).
    """
    if len(data) == 0:
        raise ValueError("the training set is empty.")
    device = torch.device(config.device) if config.device else default_device()
    model.to(device)
    use_amp = (device.type == "cuda") if config.amp is None else config.amp
    if groups is None:
        groups = parameter_groups(model, config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # each group's peak learning rate; the schedule scales all of them

    start_step, history = 0, History()
    if config.resume and config.checkpoint and Path(config.checkpoint).exists():
        start_step, history = _load_checkpoint(config.checkpoint, model, optimizer)
        if start_step >= config.steps:  # the run had already finished: nothing to do
            return history
    else:
        seed_everything(config.seed)

    def run_evaluation(step: int) -> None:
        if evaluate is None:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train(was_training)
        history.evals.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    started = time.perf_counter()
    model.train()
    trainable = [p for _, p in trainable_parameters(model)]
    bar = tqdm(range(start_step, config.steps), total=config.steps, initial=start_step, disable=not config.progress,
               desc="train", mininterval=1.0, leave=True)
    try:
        for step in bar:
            factor = lr_multiplier(step, config)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            indices = batch_indices(len(data), config.batch_size, config.seed, step)
            batch = move_to(collate([data[int(i)] for i in indices]), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}; lower the learning rate.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()

            done = step + 1
            history.steps.append(done)
            history.loss.append(float(loss.detach()))
            history.lr.append(config.lr * factor)  # the schedule of config.lr (other groups scale alike)
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}", refresh=False)
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                run_evaluation(done)
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                history.wall_time += time.perf_counter() - started
                started = time.perf_counter()
                _save_checkpoint(config.checkpoint, model, optimizer, done, history, config)
    finally:
        bar.close()
    run_evaluation(config.steps)
    history.wall_time += time.perf_counter() - started
    if config.checkpoint:
        _save_checkpoint(config.checkpoint, model, optimizer, config.steps, history, config)
    return history

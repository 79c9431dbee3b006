"""One training loop for every chapter.

A chapter brings a model (with its trainable parameters chosen), a dataset and a loss function
``loss_fn(model, batch) -> scalar tensor`` — or several :class:`Stream` s of data, each with its own loss, batch size
and parameters; :func:`train` does the rest:

* seeds everything (``seed``) and picks the device (CUDA → MPS → CPU);
* builds AdamW over the *trainable* parameters (no weight decay on biases and norms) with linear warm-up and a
  linear or cosine decay;
* uses bf16 autocast on a GPU, clips the gradient norm, shows a tqdm progress bar;
* calls an ``evaluate(model) -> dict`` callback every ``eval_every`` steps and at the end;
* returns a :class:`History` (losses, learning rates, evaluations, wall time) that notebooks plot, and leaves the
  model in the train/eval mode it was given in;
* writes checkpoints atomically and, with ``resume=True``, continues an interrupted run to the *same* final
  weights an uninterrupted run reaches — and refuses a checkpoint written under another configuration;
* learns several data streams at once (``mix="joint"``: one summed loss per step), in turn (``"alternate"``: each
  stream steps its own parameters, the others frozen meanwhile — LLaMA-Adapter V2's disjoint training) or one after
  the other (``"staged"``: LLaVA's stage 1 then stage 2);
* runs unchanged under ``torchrun --nproc_per_node=N``: each process takes its slice of every batch and the
  gradients are averaged over processes before the step, so N processes with batch/N each reach the weights one
  process reaches with the whole batch. Only rank 0 writes checkpoints and shows the progress bar.

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
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import default_collate
from tqdm import tqdm

from .io import atomic_write
from .params import decay_groups, optimizer_groups, trainable_parameters
from .scale import amp_dtype, default_device


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
    amp: bool | str | None = None  # None: bf16 autocast on CUDA only; "auto": where the hardware has bf16 (amp_dtype)
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
        if self.amp not in (None, True, False, "auto"):
            raise ValueError(f"amp={self.amp!r}; choose None (bf16 on CUDA only), True, False or 'auto'.")

    # Fields that do not change the weights a run reaches: a resumed run may change these, and no others.
    resume_may_change: ClassVar[tuple[str, ...]] = ("progress", "resume", "checkpoint", "checkpoint_every",
                                                    "eval_every", "device")


@dataclass
class History:
    """What happened during training: one entry per step, plus the evaluations."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # each: {"step": s, metric: value, ...}
    wall_time: float = 0.0  # seconds spent in train(), summed over resumed runs
    streams: dict[str, "History"] = field(default_factory=dict)  # several streams: each one's own losses and rates

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




@dataclass
class Stream:
    """One source of training batches: its data, its loss, its batch size and what it trains.

    Args:
        name: how the history calls it (``history.streams[name]``).
        data: a map-style dataset; ``loss_fn(model, batch) -> scalar`` on a collated batch.
        batch_size: default ``config.batch_size``.
        groups: the optimiser groups this stream steps (``[{"params": [...], "lr": ...}, ...]``); default: every
            trainable parameter at ``config.lr`` (weight decay on matrices only). With ``mix="alternate"`` only
            these tensors take part in the stream's backward pass.
        weight: the loss's weight in ``mix="joint"`` (the summed loss is :math:`\\sum_s w_s L_s`).
        steps: how many steps the stream trains with ``mix="staged"``.
        before: called with the model before each of the stream's batches (e.g. clear an image a previous stream
            set).
        collate: turns a list of examples into a batch.
    """

    name: str
    data: Sequence
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    batch_size: int | None = None
    groups: list[dict] | None = None
    weight: float = 1.0
    steps: int | None = None
    before: Callable[[nn.Module], None] | None = None
    collate: Callable[[list], Any] = default_collate

    def describe(self) -> dict:
        """What of the stream decides the result (checked on resume)."""
        rates = [float(g.get("lr", -1.0)) for g in self.groups] if self.groups else None
        return {"name": self.name, "examples": len(self.data), "batch_size": self.batch_size, "weight": self.weight,
                "steps": self.steps, "group_lrs": rates}


MIXES = ("joint", "alternate", "staged")


# --- distributed: plain torch.distributed, so the same loop runs in one process or under torchrun ------------------


def _world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` unless ``torch.distributed`` was initialised (e.g. by torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _average_gradients(parameters: list[nn.Parameter], world: int) -> None:
    """What DistributedDataParallel does after backward: every process ends with the mean of all processes' gradients.

    Written out rather than wrapping the model in ``DistributedDataParallel``: the loss functions receive the model
    itself (its hooks and attributes, e.g. a handle's image input, stay reachable), and a stream may freeze and
    unfreeze tensors between batches, which DDP's fixed set of gradient buckets does not allow.
    """
    if world == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:  # every process must join every all_reduce: send zeros for a missing gradient
            parameter.grad = torch.zeros_like(parameter)
        torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.SUM)
        parameter.grad /= world


def _mean_over_processes(value: torch.Tensor, world: int) -> float:
    value = value.detach().float().clone()
    if world > 1:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        value /= world
    return float(value)


# --- checkpoints: one safetensors file (tensors) whose metadata holds the rest as JSON ----------------------


def _history_from_dict(data: dict) -> History:
    streams = {name: _history_from_dict(h) for name, h in data.pop("streams", {}).items()}
    return History(**data, streams=streams)


def _save_checkpoint(path, model, optimizers: list, step: int, history: History, config: TrainConfig,
                     streams: list[dict]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad or any(parameter is p for o in optimizers for g in o.param_groups
                                          for p in g["params"]):
            tensors[f"model.{name}"] = parameter.detach().to("cpu").contiguous()
    scalars: dict[str, dict] = {}
    groups = []
    for k, optimizer in enumerate(optimizers):
        optimizer_state = optimizer.state_dict()
        groups.append(optimizer_state["param_groups"])
        for index, slot in optimizer_state["state"].items():
            for key, value in slot.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer{k}.{index}.{key}"] = value.detach().to("cpu").contiguous()
                else:
                    scalars.setdefault(f"{k}.{index}", {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    numpy_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(numpy_state[1].astype(np.int64))
    python_state = random.getstate()
    meta = {
        "step": step,
        "config": asdict(config),
        "streams": streams,
        "history": asdict(history),
        "optimizer_groups": groups,
        "optimizer_scalars": scalars,
        "rng_numpy": [numpy_state[0], int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        "rng_python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"minipeft_checkpoint": json.dumps(meta)}))


def _load_checkpoint(path, model, optimizers: list, config: TrainConfig, streams: list[dict]) -> tuple[int, History]:
    """Resume: refuse a checkpoint of another configuration, check every name and shape, then copy."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            meta = json.loads((handle.metadata() or {})["minipeft_checkpoint"])
    except Exception as error:  # a truncated file, another kind of file, corrupt JSON
        raise ValueError(f"cannot resume from {path}: it is not a readable minipeft checkpoint ({error}). Delete it "
                         "to start again.") from None
    saved, now = meta["config"], asdict(config)
    changed = [k for k in now if k not in TrainConfig.resume_may_change and saved.get(k) != now[k]]
    if changed:
        listed = "; ".join(f"{k}={saved.get(k)!r} in the checkpoint but {now[k]!r} now" for k in changed)
        raise ValueError(f"cannot resume from {path}: the run's configuration changed ({listed}). Resume with the "
                         "same configuration, or delete the checkpoint to start a new run.")
    if meta.get("streams") != streams:
        raise ValueError(f"cannot resume from {path}: the data streams changed ({meta.get('streams')} in the "
                         f"checkpoint, {streams} now). Resume with the same data, or delete the checkpoint.")
    params = dict(trainable_parameters(model))
    for optimizer in optimizers:  # a stream's tensors may be frozen between its batches; they are still saved
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                params.update({n: p for n, p in model.named_parameters() if p is parameter})
    saved_names = {k[len("model."):] for k in tensors if k.startswith("model.")}
    if saved_names != set(params):
        difference = sorted(saved_names ^ set(params))
        raise ValueError(
            f"checkpoint {path} does not fit this model: trainable parameter {difference[0]!r} is in one but not "
            "the other. Resume with the same model and method configuration, or delete the checkpoint."
        )
    for name, parameter in params.items():
        if tuple(tensors[f"model.{name}"].shape) != tuple(parameter.shape):
            raise ValueError(f"checkpoint {path} does not fit this model: {name!r} has shape "
                             f"{tuple(tensors[f'model.{name}'].shape)} there but {tuple(parameter.shape)} here.")
    with torch.no_grad():
        for name, parameter in params.items():
            parameter.copy_(tensors[f"model.{name}"])
    for k, optimizer in enumerate(optimizers):
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith(f"optimizer{k}."):
                _, index, slot = key.split(".", 2)
                state.setdefault(int(index), {})[slot] = value
        for key, scalars in meta["optimizer_scalars"].items():
            owner, index = key.split(".")
            if int(owner) == k:
                state.setdefault(int(index), {}).update(scalars)
        groups = meta["optimizer_groups"][k]
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
    return meta["step"], _history_from_dict(meta["history"])


# --- the loop ---------------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    data: Sequence | list[Stream],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    config: TrainConfig | None = None,
    *,
    evaluate: Callable[[nn.Module], dict] | None = None,
    collate: Callable[[list], Any] = default_collate,
    groups: list[dict] | None = None,
    mix: str = "joint",
    separate_optimizers: bool = True,
) -> History:
    """Train the trainable parameters of ``model`` and return the :class:`History`.

    Args:
        model: any ``nn.Module``; only parameters with ``requires_grad=True`` are optimised.
        data: a map-style dataset (``len`` and ``data[i]``) of training examples — or a list of :class:`Stream` s.
        loss_fn: ``loss_fn(model, batch) -> scalar loss`` (the batch is already on the device); one stream only.
        config: a :class:`TrainConfig`. ``steps`` counts steps of the whole loop (``mix="staged"``: the sum of the
            streams' ``steps``, which may be left out).
        evaluate: optional ``evaluate(model) -> {metric: float}``, run in ``eval()`` mode without gradients.
        collate: turns a list of examples into a batch (one stream; a :class:`Stream` has its own).
        groups: optional optimiser parameter groups (``[{"params": [...], "lr": 3e-2}, ...]``) for methods whose
            parts need different learning rates (e.g. ProPETL's mask scores); a group without ``"lr"`` uses
            ``config.lr``. Every group follows the same warm-up and decay. Default: all trainable parameters,
            with weight decay on matrices only (:func:`minipeft.core.optimizer_groups`).
        mix: how several streams share the steps — ``"joint"`` (every step, the weighted sum of one batch of each),
            ``"alternate"`` (every step, one batch of each stream in turn, each stepping its own groups) or
            ``"staged"`` (each stream for its ``steps``, one after the other; each stage has its own warm-up and
            decay).
        separate_optimizers: with ``"alternate"``, one AdamW per stream and the other streams' tensors frozen during
            a stream's batch (True: nothing of one stream's data reaches another's tensors, not even through
            AdamW's moments), or one AdamW over all streams' groups (False).

    Returns:
        the :class:`History`; with several streams ``history.streams[name]`` holds each stream's own losses.
    """
    if config is None:
        raise ValueError("train needs a TrainConfig (e.g. TrainConfig(steps=100, batch_size=8, lr=1e-3)).")
    single = not (isinstance(data, (list, tuple)) and data and all(isinstance(s, Stream) for s in data))
    if single:
        if loss_fn is None:
            raise ValueError("train(model, data, loss_fn, config): loss_fn is missing.")
        streams = [Stream("train", data, loss_fn, config.batch_size, groups, collate=collate)]
    else:
        if loss_fn is not None or groups is not None:
            raise ValueError("with a list of Streams, give each Stream its loss_fn and groups instead.")
        streams = list(data)
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}.")
    if mix not in MIXES:
        raise ValueError(f"mix={mix!r}; choose one of {MIXES}.")
    for stream in streams:
        if len(stream.data) == 0:
            raise ValueError(f"the training set {stream.name!r} is empty." if not single else
                             "the training set is empty.")
    if mix == "staged" and not single:
        missing = [s.name for s in streams if not s.steps]
        if missing:
            raise ValueError(f"mix='staged' needs steps= on every stream; {missing[0]!r} has none.")
        if sum(s.steps for s in streams) != config.steps:
            raise ValueError(f"the stages' steps add up to {sum(s.steps for s in streams)} but config.steps is "
                             f"{config.steps}; make them agree.")
    rank, world = _world()
    device = torch.device(config.device) if config.device else default_device()
    model.to(device)
    dtype = amp_dtype(device) if config.amp == "auto" else (
        torch.bfloat16 if (device.type == "cuda" if config.amp is None else config.amp) else None)

    # Each stream's optimiser groups, each group remembering its peak rate (the schedule scales it). Streams
    # without groups of their own train every trainable tensor; they share one set of groups.
    shared_optimizer = single or mix == "joint" or (mix == "alternate" and not separate_optimizers)
    default_groups = None
    for stream in streams:
        if stream.groups is None:
            default_groups = default_groups or optimizer_groups(model, config.weight_decay)
            # One optimiser: the same group objects (a tensor may sit in one group only); several: copies.
            stream.groups = default_groups if shared_optimizer else [dict(g) for g in default_groups]
        for group in stream.groups:
            group.setdefault("lr", config.lr)
            group["initial_lr"] = group["lr"]
    if shared_optimizer:
        merged = list({id(g): g for s in streams for g in s.groups}.values())  # each group once
        shared = torch.optim.AdamW(merged, lr=config.lr, weight_decay=config.weight_decay)
        optimizers = [shared]
        optimizer_of = {s.name: shared for s in streams}
    else:
        optimizers = [torch.optim.AdamW(s.groups, lr=config.lr, weight_decay=config.weight_decay) for s in streams]
        optimizer_of = {s.name: o for s, o in zip(streams, optimizers)}
    tensors_of = {s.name: [p for g in s.groups for p in g["params"]] for s in streams}
    every_tensor = list({id(p): p for s in streams for p in tensors_of[s.name]}.values())
    described = [s.describe() for s in streams]

    start_step, history = 0, History()
    if config.resume and config.checkpoint and Path(config.checkpoint).exists():
        start_step, history = _load_checkpoint(config.checkpoint, model, optimizers, config, described)
        if start_step >= config.steps:  # the run had already finished: nothing to do
            return history
    else:
        seed_everything(config.seed)
    if not single:
        for stream in streams:
            history.streams.setdefault(stream.name, History())

    def run_evaluation(step: int) -> None:
        if evaluate is None:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train(was_training)
        history.evals.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    def batch_of(stream: Stream, index: int, step: int):
        """This process's slice of stream ``index``'s batch at ``step`` (the whole batch in one process)."""
        seed = config.seed + index  # each stream shuffles independently
        indices = batch_indices(len(stream.data), stream.batch_size or config.batch_size, seed, step)
        indices = indices.tensor_split(world)[rank]  # (batch / world,): process `rank`'s share
        return move_to(stream.collate([stream.data[int(i)] for i in indices]), device)

    def loss_of(stream: Stream, index: int, step: int) -> torch.Tensor:
        if stream.before is not None:
            stream.before(model)
        batch = batch_of(stream, index, step)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = stream.loss_fn(model, batch)
        if not torch.isfinite(loss):
            where = "" if single else f"{stream.name} "
            raise FloatingPointError(f"{where}loss is {loss.item()} at step {step + 1}; lower the learning rate.")
        return loss

    def update(optimizer, loss: torch.Tensor, trained: list[nn.Parameter]) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(trained, world)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
        optimizer.step()

    def record(target: History, done: int, loss: torch.Tensor, stream: Stream) -> None:
        target.steps.append(done)
        target.loss.append(_mean_over_processes(loss, world))
        target.lr.append(stream.groups[0]["lr"])  # the rate the optimiser really used (the stream's first group)

    stage_starts = np.cumsum([0] + [s.steps or 0 for s in streams])
    started = time.perf_counter()
    was_training = model.training
    model.train()
    trainable = [p for _, p in trainable_parameters(model)]
    bar = tqdm(range(start_step, config.steps), total=config.steps, initial=start_step,
               disable=not config.progress or rank != 0, desc="train", mininterval=1.0, leave=True)
    try:
        for step in bar:
            if single or mix == "joint":
                factor = lr_multiplier(step, config)
                for group in optimizers[0].param_groups:
                    group["lr"] = group["initial_lr"] * factor
                losses = [loss_of(s, i, step) for i, s in enumerate(streams)]
                total = sum(s.weight * loss for s, loss in zip(streams, losses)) if not single else losses[0]
                update(optimizers[0], total, trainable if single else every_tensor)
                record(history, step + 1, total, streams[0])
                if not single:
                    for stream, loss in zip(streams, losses):
                        record(history.streams[stream.name], step + 1, loss, stream)
            else:
                if mix == "alternate":
                    turns = [(i, s, step, lr_multiplier(step, config)) for i, s in enumerate(streams)]
                else:  # staged: the stream whose stage this step is in, with the stage's own schedule
                    i = int(np.searchsorted(stage_starts, step, side="right")) - 1
                    local = step - int(stage_starts[i])
                    stage_config = TrainConfig(steps=streams[i].steps, warmup_steps=min(config.warmup_steps,
                                               streams[i].steps), schedule=config.schedule)
                    turns = [(i, streams[i], local, lr_multiplier(local, stage_config))]
                for i, stream, local_step, factor in turns:
                    optimizer = optimizer_of[stream.name]
                    trained = tensors_of[stream.name]
                    if separate_optimizers:  # only this stream's tensors take part in the graph
                        for parameter in every_tensor:
                            parameter.requires_grad_(False)
                        for parameter in trained:
                            parameter.requires_grad_(True)
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * factor
                    loss = loss_of(stream, i, local_step)
                    update(optimizer, loss, trained)
                    optimizer.zero_grad(set_to_none=True)  # no stale gradient may reach the next stream's step
                    record(history.streams[stream.name], step + 1, loss, stream)
                history.steps.append(step + 1)
                history.loss.append(sum(h.loss[-1] for h in history.streams.values()
                                        if h.steps and h.steps[-1] == step + 1))
                history.lr.append(stream.groups[0]["lr"])

            done = step + 1
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}", refresh=False)
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                run_evaluation(done)
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                history.wall_time += time.perf_counter() - started
                started = time.perf_counter()
                if rank == 0:
                    _save_checkpoint(config.checkpoint, model, optimizers, done, history, config, described)
    finally:
        bar.close()
        if not single and mix != "joint":
            for parameter in every_tensor:  # every stream's tensors trainable again, as they were given
                parameter.requires_grad_(True)
        model.train(was_training)
    run_evaluation(config.steps)
    history.wall_time += time.perf_counter() - started
    for stream_history in history.streams.values():
        stream_history.wall_time = history.wall_time
    if config.checkpoint and rank == 0:
        _save_checkpoint(config.checkpoint, model, optimizers, config.steps, history, config, described)
    return history

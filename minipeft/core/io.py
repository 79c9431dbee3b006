"""Save and load trainable weights with safetensors — never pickle.

A fine-tuned adapter is a few hundred kilobytes next to a frozen backbone of hundreds of megabytes, so we store
only the trainable tensors (or any state dict a method hands us). Two promises:

* **atomic writes** — the file is written to a temporary name and renamed, so an interrupted save never leaves
  a half-written file where a good one was;
* **all-or-nothing loads** — every name and shape is checked *before* any tensor is copied, and the first
  mismatch is named in the error, so loading an adapter into the wrong model changes nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .params import trainable_parameters


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(temporary_path)`` and then rename the result to ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` by qualified name (detached, contiguous, on the CPU)."""
    return {name: p.detach().to("cpu").contiguous() for name, p in trainable_parameters(model)}


def save_weights(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> Path:
    """Write ``tensors`` to a ``.safetensors`` file atomically; ``metadata`` (any JSON) is stored beside them."""
    if not tensors:
        raise ValueError("nothing to save: the state dict is empty (is anything trainable?).")
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"minipeft": json.dumps(metadata or {}, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=header))


def save_trainable(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save only the trainable parameters of ``model`` (see :func:`save_weights`)."""
    return save_weights(trainable_state_dict(model), path, metadata)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_weights`: ``(tensors, metadata)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            raw = (handle.metadata() or {}).get("minipeft", "{}")
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}); it may be truncated or not a "
                         "weights file — save it again with handle.save().") from None
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} has corrupt minipeft metadata ({error}); save it again with handle.save().") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} has minipeft metadata that is not a JSON object; save it again with handle.save().")
    return tensors, metadata


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Copy ``tensors`` into ``model``'s parameters/buffers of the same names, all or nothing.

    Args:
        strict: also require that every *trainable* parameter of the model is present in ``tensors``.

    Returns the names that were loaded. Raises ``ValueError`` naming the first unknown key, shape mismatch or
    (with ``strict``) missing trainable parameter; in that case the model is unchanged.
    """
    if not isinstance(tensors, dict):
        raise TypeError(f"expected a dict of tensors by name, got {type(tensors).__name__}.")
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    for key in sorted(tensors):
        value = tensors[key]
        if key not in state:
            raise ValueError(
                f"cannot load: the file has {key!r} but the model has no such parameter — was it saved from a "
                "different model or method configuration? Apply the same method with the same config first."
            )
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"cannot load: {key!r} is a {type(value).__name__}, not a tensor; nothing was loaded.")
        if value.is_floating_point() != state[key].is_floating_point():
            raise ValueError(f"cannot load: {key!r} has dtype {value.dtype} but the model's tensor is "
                             f"{state[key].dtype}; nothing was loaded.")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"cannot load: {key!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(state[key].shape)} in the model (different rank, width or model?)."
            )
    if strict:
        missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in tensors]
        if missing:
            raise ValueError(
                f"cannot load: the model's trainable parameter {missing[0]!r} is not in the file "
                f"({len(missing)} missing); pass strict=False to load a subset."
            )
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value.to(dtype=state[key].dtype, device=state[key].device))
    return sorted(tensors)


def load_trainable(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load a file written by :func:`save_trainable` into ``model`` (all or nothing); return its metadata."""
    tensors, metadata = read_weights(path)
    load_weights(model, tensors, strict=strict)
    return metadata

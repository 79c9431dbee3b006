"""HF peft's adapter folder format: export minipeft's LoRA to it, and import a peft LoRA folder.

Kept apart from :mod:`minipeft.peft.lora` so that the method file teaches the method, and this file the plumbing of
exchanging it with the library readers know. A peft LoRA folder holds ``adapter_config.json`` (peft's ``LoraConfig``
fields) and ``adapter_model.safetensors`` (keys ``base_model.model.<module path>.lora_A.weight`` …). Our parameter
names are peft's on-disk names behind that fixed prefix, so the conversion is a renaming plus the config.

Introduced in chapter 03 (LoRA), which exports its persona adapter and loads it with peft.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..core.contract import Handle
from ..core.io import atomic_write, load_weights, read_weights
from ..peft.lora import SUPPORTED_TYPES, LoraConfig, LoraLayer, apply

CONFIG_NAME = "adapter_config.json"  # peft's file names (peft/utils/constants.py)
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's on-disk keys: base_model.model.<module path>.lora_A.weight


def _lora_layers(model_or_handle) -> tuple[nn.Module, dict[str, LoraLayer]]:
    if isinstance(model_or_handle, Handle):
        if model_or_handle.method != "lora":
            raise ValueError(f"export_peft exports LoRA, but this handle holds {model_or_handle.method!r}.")
        model, layers = model_or_handle.model, dict(model_or_handle.wrappers)
    else:
        model = model_or_handle
        layers = {n: m for n, m in model.named_modules() if n and isinstance(m, LoraLayer)}
    if not layers:
        raise ValueError("there are no LoRA layers to export (apply(model, LoraConfig(...)) first; was it unloaded?).")
    return model, layers


def _peft_target_list(model: nn.Module, wrapped: set[str]) -> list[str]:
    """A ``target_modules`` list that selects exactly ``wrapped`` under peft's rule (name == entry or ends with
    ``"." + entry``) on the un-wrapped model: the short names (``["q_proj", "v_proj"]``) when they are enough,
    otherwise the full module paths."""
    original = [n for n, _ in model.named_modules() if n and not any(n.startswith(w + ".") for w in wrapped)]
    short = sorted({n.rsplit(".", 1)[-1] for n in wrapped})
    selected = {n for n in original if n.rsplit(".", 1)[-1] in short}
    return short if selected == wrapped else sorted(wrapped)


def export_peft(model_or_handle, directory: str | os.PathLike, base_model_name_or_path: str | None = None,
                task_type: str | None = "auto") -> Path:
    """Write the LoRA layers of a model as an HF peft adapter folder; return the folder.

    Writes ``adapter_config.json`` (peft's ``LoraConfig`` fields) and ``adapter_model.safetensors`` (keys
    ``base_model.model.<module path>.lora_A.weight`` …, metadata ``{"format": "pt"}``), each atomically. Load it with
    ``peft.PeftModel.from_pretrained(base_model, directory)`` or :func:`import_peft`.

    Args:
        model_or_handle: the ``Handle`` from :func:`apply`, or a model containing LoRA layers (all with the same
            ``r``, ``alpha`` and rsLoRA setting — peft's per-layer ``rank_pattern`` is not written).
        directory: the output folder (created if needed).
        base_model_name_or_path: recorded in the config (default: the model's ``name_or_path``, if any).
        task_type: peft's ``task_type``. ``"auto"``: ``"CAUSAL_LM"`` for a ``…ForCausalLM`` model, otherwise
            ``None`` (a plain ``PeftModel``). Any other value is written as given.
    """
    model, layers = _lora_layers(model_or_handle)
    settings = {(layer.r, layer.alpha, layer.use_rslora) for layer in layers.values()}
    if len(settings) != 1:
        raise ValueError(
            f"the LoRA layers use different (r, alpha, use_rslora) settings {sorted(settings)}; peft's single-config "
            "export needs one setting for all layers."
        )
    r, alpha, use_rslora = settings.pop()
    dropouts = {getattr(getattr(layer, "lora_dropout", None), "p", 0.0) for layer in layers.values()}
    init = model_or_handle.config.init if isinstance(model_or_handle, Handle) else "kaiming"
    if task_type == "auto":
        task_type = "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else None
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "name_or_path", None) or None

    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": max(dropouts),
        "target_modules": _peft_target_list(model, set(layers)),
        "exclude_modules": None,  # the exclusions are already resolved in target_modules
        "use_rslora": use_rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True if init == "kaiming" else "gaussian",
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }
    tensors = {}
    for name, layer in layers.items():
        for key in ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B"):
            tensor = layer.state_dict().get(key)
            if tensor is not None:  # our names are peft's on-disk names, behind peft's fixed prefix
                tensors[f"{PEFT_PREFIX}{name}.{key}"] = tensor.detach().to("cpu").contiguous()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return directory


# peft config fields whose non-default values change the model in ways this file does not reproduce.
_UNSUPPORTED = {
    "use_dora": "DoRA", "lora_bias": "a bias on lora_B", "fan_in_fan_out": "fan_in_fan_out (GPT-2 Conv1D)",
    "rank_pattern": "per-layer ranks (rank_pattern)", "alpha_pattern": "per-layer alphas (alpha_pattern)",
    "modules_to_save": "fully trained extra modules (modules_to_save)", "layers_to_transform": "layers_to_transform",
    "target_parameters": "target_parameters", "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices", "alora_invocation_tokens": "aLoRA", "use_qalora": "QA-LoRA",
}


def _peft_match(name: str, patterns) -> bool:
    """peft's rule: a string is a regex that must match the whole name; a list holds names or name suffixes."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def import_peft(model: nn.Module, directory: str | os.PathLike) -> Handle:
    """Apply LoRA to ``model`` as described by a peft adapter folder and load its weights; return the handle.

    Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (written by peft's ``save_pretrained`` or by
    :func:`export_peft`), wraps the modules peft would wrap (peft's matching rules), and loads the factors. Base
    weights saved alongside (peft saves a targeted embedding's table) are loaded into the base layer, as peft does.
    All names and shapes are checked first; on any mismatch the model is left as it was.

    Raises:
        ValueError: not a LoRA folder, a peft feature this file does not implement (DoRA, rank_pattern, …), target
            modules not in the model, or tensors that do not fit it (wrong base model, rank or width).
        FileNotFoundError: a missing file (only safetensors is read, never pickled ``.bin`` files).
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}; is this a peft adapter folder?")
    if not weights_path.exists():
        hint = " (only adapter_model.bin is there: load and re-save it with peft, safe_serialization=True)" if (
            directory / "adapter_model.bin").exists() else ""
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}{hint}.")
    saved = json.loads(config_path.read_text())
    if saved.get("peft_type") != "LORA":
        raise ValueError(f"{config_path} describes a {saved.get('peft_type')!r} adapter, not LoRA.")
    used = [what for key, what in _UNSUPPORTED.items() if saved.get(key)]
    if used or saved.get("bias", "none") != "none":
        raise ValueError(f"this adapter uses {', '.join(used) or 'trained biases'}, which minipeft's LoRA does not "
                         "implement; load it with peft instead.")
    targets = saved.get("target_modules")
    if not targets or targets == "all-linear":
        raise ValueError(f"target_modules={targets!r} in {config_path}: give the module names explicitly.")
    exclude = saved.get("exclude_modules") or []

    names = [n for n, _ in model.named_modules() if n and _peft_match(n, targets) and not _peft_match(n, exclude)]
    if not names:
        raise ValueError(f"none of target_modules={targets!r} is in this {type(model).__name__}; is it the base model "
                         "the adapter was trained on?")
    unsupported = [f"{n} ({type(model.get_submodule(n)).__name__})" for n in names
                   if not isinstance(model.get_submodule(n), SUPPORTED_TYPES)]
    if unsupported:
        raise ValueError(f"the adapter targets {unsupported[0]}, a layer type minipeft's LoRA does not wrap "
                         "(Linear, Embedding, Conv2d only).")

    config = LoraConfig(r=saved["r"], alpha=saved.get("lora_alpha", 8), dropout=saved.get("lora_dropout", 0.0),
                        target_modules=[re.escape(n) for n in names],  # exactly the modules peft would wrap
                        use_rslora=bool(saved.get("use_rslora", False)))
    tensors, _ = read_weights(weights_path)
    foreign = sorted(k for k in tensors if not k.startswith(PEFT_PREFIX))
    if foreign:
        raise ValueError(f"{weights_path} has the key {foreign[0]!r}, not a peft LoRA key (base_model.model.…).")
    state = {key[len(PEFT_PREFIX):]: value for key, value in tensors.items()}

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    handle = apply(model, config)
    try:
        missing = sorted(set(handle.state_dict()) - set(state))
        if missing:
            raise ValueError(f"cannot load: {weights_path} has no tensor for {missing[0]!r} ({len(missing)} missing); "
                             "was it saved from a different model?")
        load_weights(model, state, strict=False)  # checks every name and shape before copying anything
    except BaseException:
        handle.undo()  # put the original modules back and their requires_grad flags, as if nothing happened
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad[name])
        raise
    return handle

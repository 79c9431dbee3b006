"""The method contract: one config base, one handle, wrappers that declare their own tensors.

Every method of the book — LoRA, adapters, (IA)³, GLoRA, ProPETL, MEFT, prompt/prefix/P-tuning, LLaMA-Adapter and
the multimodal connectors — changes a frozen model in one or more of three ways:

1. it *wraps* modules: ``q_proj`` becomes ``LoraLinear(base_layer=q_proj)``;
2. it *attaches* new modules to the model (a prompt encoder, a visual projection) and *hooks* into its forward;
3. it *unlocks* a few of the model's own tensors (LLaMA-Adapter V2 trains every norm).

Whatever it did, the user gets back the same object, a :class:`Handle`, with the same verbs:

==========================  =====================================================================================
``named_parameters()``      the method's trainable tensors, by their qualified names in the model
``state_dict()``            the same tensors, detached — what a saved adapter holds
``load_state_dict(state)``  all or nothing: every name, type and shape is checked before anything is copied
``save(path)``              safetensors, with the method and its configuration in the file's metadata
``load(path)``              refuses a file saved with another method or configuration, naming both values
``merge()`` / ``unmerge()``   fold the update into the base weights and back; a method whose math does not allow
                            it raises :class:`CannotMergeError` before anything changes
``unload()``                merge, then put the plain base layers back: an ordinary model
``undo()``                  the model exactly as before ``apply`` (weights, modules, hooks, ``requires_grad``)
==========================  =====================================================================================

A *wrapper* is an ``nn.Module`` that keeps the module it replaces as ``base_layer`` and declares, as class or
instance attributes (the way HF peft's ``adapter_layer_names`` does):

* ``minipeft_method`` — the method's name (``"lora"``); it also marks the module as a wrapper;
* ``adapter_tensor_names`` — the attribute names that hold the method's tensors (``("lora_A", "lora_B")``); a
  parameter of the wrapper belongs to the method when a component of its name is one of these (and it is not
  under ``base_layer``);
* ``can_merge`` — whether ``merge()`` / ``unmerge()`` exist; when ``False``, ``merge_refusal`` says why, in a
  sentence a reader can act on.

A *config* is a dataclass derived from :class:`MethodConfig`; its ``method`` names the method, and the shared
validators below make the same mistake raise the same exception with the same kind of sentence in every method:
``ValueError`` for a bad value (including a value of the wrong kind in a config field), ``TypeError`` for passing
the wrong kind of object to ``apply`` (e.g. a ``LoraConfig`` to ``ia3.apply``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from .inject import find_modules, is_wrapper, replace_module
from .io import load_weights, read_weights, save_weights

FORMAT_VERSION = 1  # the layout of a saved adapter file's metadata (bump when it changes)


# ------------------------------------------------------------------------------------------------------------------
# Shared validators: one sentence shape per mistake, always ValueError
# ------------------------------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(name: str, value, *, allow_none: bool = False, allow_zero: bool = False, hint: str = "") -> None:
    """``value`` must be an integer ≥ 1 (≥ 0 with ``allow_zero``), or ``None`` with ``allow_none``."""
    if value is None and allow_none:
        return
    low = 0 if allow_zero else 1
    if not _is_int(value) or value < low:
        kind = "a non-negative integer" if allow_zero else "a positive integer"
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be {kind}{none}, got {value!r}{hint}.")


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = True, allow_none: bool = False,
                 hint: str = "") -> None:
    """``value`` must be a finite real number in the given interval (bounds optional)."""
    if value is None and allow_none:
        return
    inside = _is_number(value)
    if inside and low is not None:
        inside = value >= low if low_inclusive else value > low
    if inside and high is not None:
        inside = value <= high if high_inclusive else value < high
    if not inside:
        interval = ""
        if low is not None or high is not None:
            left = ("[" if low_inclusive else "(") + ("-inf" if low is None else f"{low:g}")
            right = ("inf" if high is None else f"{high:g}") + ("]" if high_inclusive else ")")
            interval = f" in {left}, {right}"
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a number{interval}{none}, got {value!r}{hint}.")


def check_probability(name: str, value) -> None:
    """A dropout-like probability in ``[0, 1)``."""
    check_number(name, value, low=0.0, high=1.0, high_inclusive=False)


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def check_target_names(name: str, value) -> None:
    """A ``target_modules`` / ``exclude`` field: ``None``, a name/regex, or a non-empty list of them."""
    if value is None:
        return
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(
            f"{name} must be a module name, a regex or a non-empty list of them, got {value!r} "
            "(e.g. ['q_proj', 'v_proj'] or r'.*layers\\.[01]\\..*proj')."
        )


def check_config(config, config_class: type, default: Callable[[], Any] | None = None):
    """The config an ``apply`` works with: ``default()`` for ``None``; ``TypeError`` for the wrong kind of object."""
    if config is None and default is not None:
        return default()
    if not isinstance(config, config_class):
        raise TypeError(f"config must be a {config_class.__name__}, got {type(config).__name__}; build one with "
                        f"{config_class.__name__}(...).")
    return config


def _jsonable(value):
    """A config value as JSON: tuples become lists, mappings keep their keys, other objects their repr."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


@dataclasses.dataclass
class MethodConfig:
    """The base of every method's config dataclass.

    A subclass sets the class attribute ``method`` and adds its fields. Fields named ``target_modules`` and
    ``exclude`` are validated here for every method alike. ``load_ignores`` lists fields that do not change the
    trained model's outputs (dropout, an initialisation), so a file saved under a different value still loads.
    """

    method: ClassVar[str] = "method"
    load_ignores: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for name in ("target_modules", "exclude"):
            if hasattr(self, name):
                check_target_names(name, getattr(self, name))

    def to_dict(self) -> dict:
        """The fields as JSON-safe values (what a saved file's metadata stores)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def differences(self, saved: dict) -> list[tuple[str, Any, Any]]:
        """``[(field, saved value, this config's value)]`` for every field that changes the result."""
        mine = self.to_dict()
        names = sorted((set(mine) | set(saved)) - set(self.load_ignores))
        return [(n, saved.get(n, "<absent>"), mine.get(n, "<absent>")) for n in names
                if saved.get(n, "<absent>") != mine.get(n, "<absent>")]


class CannotMergeError(NotImplementedError):
    """Raised by ``merge()`` / ``unload()`` for a method whose update is not a function of the weights alone."""


# ------------------------------------------------------------------------------------------------------------------
# Wrappers
# ------------------------------------------------------------------------------------------------------------------


def wrapper_tensor_names(wrapper: nn.Module) -> list[str]:
    """The names (relative to ``wrapper``) of the method's own parameters inside it, as the wrapper declares them."""
    declared = getattr(wrapper, "adapter_tensor_names", None)
    names = []
    for name, _ in wrapper.named_parameters():  # shared tensors appear once, under their first name
        if name.startswith("base_layer."):
            continue
        if declared is None or any(part in declared for part in name.split(".")):
            names.append(name)
    return names


def _can_merge(wrapper: nn.Module) -> bool:
    return bool(getattr(wrapper, "can_merge", callable(getattr(wrapper, "merge", None))))


# ------------------------------------------------------------------------------------------------------------------
# The handle
# ------------------------------------------------------------------------------------------------------------------


class Handle:
    """What every ``apply(model, config)`` returns: what the method changed in the model, and the shared verbs.

    A method builds it in three moves — :meth:`wrap` (modules), :meth:`attach` (new modules and forward hooks),
    :meth:`unlock` (the model's own tensors it trains) — and then :meth:`mark_trainable`. If anything fails on the
    way, ``apply`` calls :meth:`undo` and the model is as it was.
    """

    def __init__(self, model: nn.Module, config: MethodConfig | None = None, method: str | None = None):
        self.model = model
        self.config = config
        self.method = method or getattr(config, "method", "method")
        self.replaced: dict[str, nn.Module] = {}  # name -> the original module
        self.wrappers: dict[str, nn.Module] = {}  # name -> the wrapper now in the model
        self.attached: dict[str, nn.Module] = {}  # attribute of the model -> a module the method added
        self.hooks: list = []  # torch.utils.hooks.RemovableHandle of every hook the method registered
        self.unlocked: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}  # name -> (the model's tensor, its value)
        self.requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
        self.active = True

    # -- building --------------------------------------------------------------------------------------------------

    def wrap(self, found: list[tuple[str, nn.Module]], make_wrapper: Callable[[str, nn.Module], nn.Module]) -> None:
        """Replace each ``(name, module)`` with ``make_wrapper(name, module)``.

        Every wrapper is built before the model is touched, so an error while building one changes nothing.
        """
        wrapper_names = [n for n, m in self.model.named_modules() if n and is_wrapper(m)]
        for name, module in found:
            owner = next((w for w in wrapper_names if name == w or name.startswith(w + ".")), None)
            if is_wrapper(module) or owner is not None:
                owner_module = module if is_wrapper(module) else self.model.get_submodule(owner)
                raise ValueError(
                    f"module {name!r} is already wrapped by {owner_module.minipeft_method!r}; undo the first method "
                    "(handle.undo()) or unload it (handle.unload()) before applying another to the same module."
                )
        built = {name: make_wrapper(name, module) for name, module in found}
        for name, wrapper in built.items():
            self.replaced[name] = replace_module(self.model, name, wrapper)
            self.wrappers[name] = wrapper

    def attach(self, attribute: str, module: nn.Module | None = None, hooks: Sequence = ()) -> None:
        """Register ``module`` as ``model.<attribute>`` (so ``.to()``, ``.train()`` and ``.parameters()`` see it) and
        remember ``hooks`` (``RemovableHandle`` objects) so :meth:`undo` can remove them."""
        if module is not None:
            if hasattr(self.model, attribute):
                raise ValueError(f"the model already has an attribute {attribute!r} (a method applied twice?); "
                                 "undo the first one before applying another.")
            self.model.add_module(attribute, module)
            self.attached[attribute] = module
        self.hooks.extend(hooks)

    def unlock(self, names: Sequence[str]) -> None:
        """Let the method train these parameters of the model itself (their values are kept for :meth:`undo`)."""
        parameters = dict(self.model.named_parameters())
        for name in names:
            self.unlocked[name] = (parameters[name], parameters[name].detach().clone())

    def mark_trainable(self) -> None:
        """Freeze the whole model, then make exactly the method's tensors trainable."""
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for _, parameter in self.named_parameters():
            parameter.requires_grad_(True)

    # -- the method's tensors --------------------------------------------------------------------------------------

    def check_active(self) -> None:
        if not self.active:
            raise ValueError(f"this {self.method} handle was undone or unloaded; apply the method again.")

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``[(name in the model, parameter)]`` for every tensor the method trains, in the model's order."""
        self.check_active()
        own: set[int] = set()
        for wrapper in self.wrappers.values():
            tensors = dict(wrapper.named_parameters())
            own |= {id(tensors[name]) for name in wrapper_tensor_names(wrapper)}
        for module in self.attached.values():
            own |= {id(p) for p in module.parameters()}
        own |= {id(parameter) for parameter, _ in self.unlocked.values()}
        return [(n, p) for n, p in self.model.named_parameters() if id(p) in own]

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        """How many numbers the method trains (shared tensors counted once)."""
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The method's tensors, detached, by their names in the model."""
        return {n: p.detach() for n, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Load tensors saved by :meth:`state_dict`: names, types and shapes are all checked before any copy."""
        self.check_active()
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict takes a dict of tensors, got {type(state).__name__}.")
        expected = self.state_dict()
        unknown = sorted(set(state) - set(expected))
        missing = sorted(set(expected) - set(state))
        if unknown:
            raise ValueError(f"cannot load: {unknown[0]!r} is not part of this {self.method} configuration "
                             f"({len(unknown)} unknown); was it saved from a different model or config?")
        if missing:
            raise ValueError(f"cannot load: {missing[0]!r} is missing for this {self.method} configuration "
                             f"({len(missing)} missing); was it saved from a different model or config?")
        load_weights(self.model, state, strict=False)  # checks types and shapes of every entry, then copies

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to a ``.safetensors`` file with the method and its config in the metadata."""
        metadata = {"format": FORMAT_VERSION, "method": self.method,
                    "config": self.config.to_dict() if isinstance(self.config, MethodConfig) else None}
        return save_weights(self.state_dict(), path, metadata)

    def load(self, path: str | os.PathLike) -> dict:
        """Load a file written by :meth:`save` — refused, with both values named, if it was saved by another method
        or with a configuration that changes the result; all or nothing. Returns the file's metadata."""
        tensors, metadata = read_weights(path)
        saved_method = metadata.get("method")
        if saved_method is None:
            raise ValueError(f"{path} carries no method configuration (it was not written by Handle.save); load its "
                             "tensors with handle.load_state_dict(minipeft.core.read_weights(path)[0]) if you trust it.")
        if saved_method != self.method:
            raise ValueError(f"{path} holds a {saved_method!r} adapter, but this handle is {self.method!r}; apply "
                             f"{saved_method} to load it.")
        saved_config = metadata.get("config")
        if isinstance(self.config, MethodConfig) and isinstance(saved_config, dict):
            differences = self.config.differences(saved_config)
            if differences:
                listed = "; ".join(f"{n}={old!r} in the file but {new!r} here" for n, old, new in differences)
                raise ValueError(f"cannot load {path}: it was saved with another {self.method} configuration "
                                 f"({listed}). Apply the method with the file's configuration, then load.")
        self.load_state_dict(tensors)
        return metadata

    # -- merging ---------------------------------------------------------------------------------------------------

    def refuse_merge(self, wrappers: dict[str, nn.Module] | None = None) -> None:
        """Raise :class:`CannotMergeError` if any of these wrappers (default: all) cannot merge — before any change."""
        wrappers = self.wrappers if wrappers is None else wrappers
        if not wrappers and not self.attached:
            raise ValueError(f"this {self.method} handle no longer wraps anything (it was undone or unloaded).")
        for name, wrapper in wrappers.items():
            if not _can_merge(wrapper):
                reason = getattr(wrapper, "merge_refusal", "its update is not a function of the weights alone")
                raise CannotMergeError(f"{self.method} cannot be merged ({name!r}): {reason}. Use handle.undo() to "
                                       "get the base model back.")
        if self.attached and wrappers is self.wrappers:
            attribute = next(iter(self.attached))
            raise CannotMergeError(f"{self.method} cannot be merged: {attribute!r} adds inputs to the model, not a "
                                   "change of its weights. Use handle.undo() to get the base model back.")

    def merge(self, wrappers: dict[str, nn.Module] | None = None) -> nn.Module:
        """Fold every wrapper's update into its base weights; refuses a wrapper that is merged already."""
        self.check_active()
        wrappers = self.wrappers if wrappers is None else wrappers
        self.refuse_merge(wrappers)
        merged = [n for n, w in wrappers.items() if getattr(w, "merged", False)]
        if merged:
            raise ValueError(f"{merged[0]!r} is already merged; call unmerge() first (merging twice would add the "
                             "update twice).")
        for wrapper in wrappers.values():
            wrapper.merge()
        return self.model

    def unmerge(self, wrappers: dict[str, nn.Module] | None = None) -> nn.Module:
        """Take every wrapper's update out of its base weights again (refuses a wrapper that is not merged)."""
        self.check_active()
        wrappers = self.wrappers if wrappers is None else wrappers
        self.refuse_merge(wrappers)
        unmerged = [n for n, w in wrappers.items() if not getattr(w, "merged", False)]
        if unmerged:
            raise ValueError(f"{unmerged[0]!r} is not merged; there is nothing to unmerge.")
        self._unmerge_each(wrappers)
        return self.model

    def _unmerge_each(self, wrappers: dict[str, nn.Module]) -> None:
        # A wrapper that cannot be unmerged exactly (e.g. (IA)³ with a zero scale) says so before any layer changes,
        # so the model is never left half unmerged.
        for name, wrapper in wrappers.items():
            check = getattr(wrapper, "check_unmergeable", None)
            if check is not None:
                try:
                    check()
                except ValueError as error:
                    raise ValueError(f"{name!r}: {error}") from None
        for wrapper in wrappers.values():
            wrapper.unmerge()

    @property
    def merged(self) -> bool:
        """True when every wrapper is merged (a partly merged model is not 'merged')."""
        return bool(self.wrappers) and all(getattr(w, "merged", False) for w in self.wrappers.values())

    # -- taking it off ---------------------------------------------------------------------------------------------

    def unload(self) -> nn.Module:
        """Merge what is not merged yet and put the plain base layers back: an ordinary model, no extra modules."""
        self.check_active()
        self.refuse_merge()
        not_merged = {n: w for n, w in self.wrappers.items() if not getattr(w, "merged", False)}
        if not_merged:
            self.merge(not_merged)
        for name in reversed(list(self.wrappers)):
            replace_module(self.model, name, self.wrappers[name].base_layer)
        self._forget()
        return self.model

    def undo(self) -> nn.Module:
        """Put the model back exactly as it was before ``apply``: original modules (with their original weights, also
        after a partial merge), no attached module or hook, the unlocked tensors' values and every ``requires_grad``."""
        self.check_active()
        merged = {n: w for n, w in self.wrappers.items() if getattr(w, "merged", False)}
        if merged:
            self._unmerge_each(merged)
        for hook in self.hooks:
            hook.remove()
        for attribute in self.attached:
            delattr(self.model, attribute)
        for name in reversed(list(self.replaced)):  # the last wrapped first: wrappers may sit inside wrappers
            replace_module(self.model, name, self.replaced[name])
        with torch.no_grad():
            for parameter, value in self.unlocked.values():
                parameter.copy_(value)
        for name, parameter in self.model.named_parameters():
            if name in self.requires_grad_before:
                parameter.requires_grad_(self.requires_grad_before[name])
        self._forget()
        return self.model

    def _forget(self) -> None:
        self.replaced.clear()
        self.wrappers.clear()
        self.attached.clear()
        self.hooks.clear()
        self.unlocked.clear()
        self.active = False

    def __len__(self) -> int:
        return len(self.wrappers)

    def __iter__(self):
        return iter(self.wrappers.items())

    def __repr__(self) -> str:
        if not self.active:
            return f"<{type(self).__name__} {self.method}: undone>"
        return (f"<{type(self).__name__} {self.method}: {len(self.wrappers)} wrapped, {len(self.attached)} attached, "
                f"{self.num_parameters():,} trainable>")


def inject(model: nn.Module, make_wrapper: Callable[[str, nn.Module], nn.Module],
           target: str | Sequence[str] | None = None, types: type | tuple[type, ...] | None = None,
           exclude: str | Sequence[str] | None = None, method: str = "wrapper", config: MethodConfig | None = None,
           handle: Handle | None = None) -> Handle:
    """Find the targets (:func:`minipeft.core.find_modules`) and wrap them in place; return the handle (a new one,
    or ``handle`` with these wrappers added). Nothing changes if a target is missing or a wrapper fails to build."""
    found = find_modules(model, target=target, types=types, exclude=exclude)
    handle = Handle(model, config, method) if handle is None else handle
    handle.wrap(found, make_wrapper)
    return handle


def count_on_meta(build: Callable[[], nn.Module], apply: Callable[[nn.Module], Handle]) -> tuple[int, Handle]:
    """Build a model on the meta device (shapes, no memory), apply a method, and return ``(base size, handle)``.

    How the book counts a method's parameters at a paper's scale (LLaMA-65B takes a fraction of a second): the
    counts come from the real method on the real architecture, not from a formula.
    """
    with torch.device("meta"):
        model = build()
    base = sum(p.numel() for p in model.parameters())
    return base, apply(model)

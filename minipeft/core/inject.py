"""Find modules inside a model and replace or wrap them in place — and undo it.

Every weight-injecting method in this book (LoRA, adapters, (IA)³, GLoRA, …) does the same three things:

1. *find* the target modules, by a regular expression on their qualified name (``model.layers.0.self_attn.q_proj``)
   and/or by their type (``nn.Linear``);
2. *replace* each one with a wrapper that holds the original as ``base_layer``;
3. remember what it replaced, so the change can be *undone* exactly.

This file does those three things once, with the error messages a user needs: a target that matches nothing
lists the closest module names, and wrapping a module that is already wrapped is an error rather than a silent
double adaptation.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from torch import nn

# A wrapper class marks itself with this attribute, naming its method (e.g. "lora").
WRAPPER_ATTRIBUTE = "minipeft_method"


def check_target_names(field_name: str, value) -> None:
    """Validate a config's ``target_modules`` / ``exclude`` field: ``None``, a name/regex, or a non-empty list of them."""
    if value is None:
        return
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(
            f"{field_name} must be a module name, a regex or a non-empty list of them, got {value!r} "
            "(e.g. ['q_proj', 'v_proj'] or r'.*layers\\.[01]\\..*proj')."
        )


def is_wrapper(module: nn.Module) -> bool:
    """True when ``module`` is a minipeft wrapper (it carries a ``minipeft_method`` attribute)."""
    return getattr(module, WRAPPER_ATTRIBUTE, None) is not None


def _as_patterns(target: str | Sequence[str] | None) -> list[str]:
    if target is None:
        return []
    if isinstance(target, str):
        return [target]
    return list(target)


def _matches(name: str, pattern: str) -> bool:
    """A pattern matches a qualified name when it is the name's last component(s) or a full regex match.

    ``"q_proj"`` matches ``model.layers.3.self_attn.q_proj``; ``r"layers\\.(0|1)\\..*proj"`` is a regex.
    """
    if name == pattern or name.endswith("." + pattern):
        return True
    return re.fullmatch(pattern, name) is not None


def _close_matches(pattern: str, names: list[str], limit: int = 3) -> str:
    """Describe the module names closest to ``pattern`` for an error message."""
    last_components = sorted({n.rsplit(".", 1)[-1] for n in names if n})
    close_short = difflib.get_close_matches(pattern.rsplit(".", 1)[-1], last_components, n=limit, cutoff=0.5)
    close_full = difflib.get_close_matches(pattern, names, n=limit, cutoff=0.5)
    suggestions: list[str] = []
    for short in close_short:
        full_names = [n for n in names if n.endswith("." + short) or n == short]
        example = full_names[0]
        more = f" (and {len(full_names) - 1} more like it)" if len(full_names) > 1 else ""
        suggestions.append(f"{short!r} e.g. {example!r}{more}")
    for full in close_full:
        if not any(full.endswith(s) for s in close_short):
            suggestions.append(repr(full))
    if not suggestions:
        sample = ", ".join(repr(s) for s in last_components[:12])
        return f"the model's module names end in: {sample}"
    return "did you mean " + " or ".join(suggestions) + "?"


def find_modules(
    model: nn.Module,
    target: str | Sequence[str] | None = None,
    types: type | tuple[type, ...] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[tuple[str, nn.Module]]:
    """Return ``[(qualified_name, module), ...]`` for modules matching ``target`` and/or ``types``.

    Args:
        model: the model to search.
        target: a name, a name suffix (``"q_proj"``), a regex matched against the full qualified name, or a list
            of these. ``None`` means "any name" (then ``types`` must be given).
        types: keep only modules that are instances of these classes.
        exclude: names/regexes to leave out even if they match (e.g. ``"lm_head"``).

    Raises:
        ValueError: if a pattern in ``target`` matches no module (the message lists the closest names), or if
            nothing at all matches.
    """
    patterns = _as_patterns(target)
    excluded = _as_patterns(exclude)
    if not patterns and types is None:
        raise ValueError("find_modules needs a target (name or regex) or types=...; both were None.")
    named = [(n, m) for n, m in model.named_modules() if n]
    all_names = [n for n, _ in named]

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"target {pattern!r} is not a valid regular expression ({error}).") from None
        if not any(_matches(n, pattern) for n in all_names):
            raise ValueError(f"no module matches {pattern!r}; {_close_matches(pattern, all_names)}")

    found = []
    for name, module in named:
        if patterns and not any(_matches(name, p) for p in patterns):
            continue
        if types is not None and not isinstance(module, types):
            continue
        if any(_matches(name, p) for p in excluded):
            continue
        found.append((name, module))
    if not found:
        wanted = f"names {patterns}" if patterns else "any name"
        type_names = (
            ", ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,))) if types else "any type"
        )
        matching_names = [f"{n} ({type(m).__name__})" for n, m in named if patterns and any(_matches(n, p) for p in patterns)]
        hint = f" The modules with those names are: {', '.join(matching_names[:5])}." if matching_names else ""
        raise ValueError(f"no module of type {type_names} matches {wanted}.{hint}")
    return found


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return ``(parent_module, attribute_name)`` for the module called ``name``."""
    if "." in name:
        parent_name, child = name.rsplit(".", 1)
        return model.get_submodule(parent_name), child
    return model, name


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """Put ``new_module`` where the module ``name`` was and return the old module."""
    parent, child = get_submodule_parent(model, name)
    old = getattr(parent, child)
    setattr(parent, child, new_module)
    return old


@dataclass
class Injection:
    """The handle an ``apply(model, config)`` returns: what was wrapped, and the shared verbs.

    * ``merge()`` / ``unmerge()`` fold each wrapper's update into its base layer and back (a method whose math
      does not allow it raises a clear error);
    * ``state_dict()`` / ``load_state_dict()`` — the method's own tensors only, by qualified name;
    * ``unload()`` — merge, then put the plain base layers back: the result is an ordinary model;
    * ``undo()`` — put the original modules back and drop the method (unmerging first if needed).

    A wrapper is an ``nn.Module`` with ``minipeft_method`` set, the original module in ``base_layer``, and, if its
    method can merge, ``merge()`` / ``unmerge()`` methods, a ``merged`` flag and optionally ``check_unmergeable()``
    (raises ``ValueError`` when unmerging would not be exact).
    """

    model: nn.Module
    method: str
    config: object = None
    replaced: dict[str, nn.Module] = field(default_factory=dict)  # name -> original module
    wrappers: dict[str, nn.Module] = field(default_factory=dict)  # name -> wrapper now in the model
    requires_grad_before: dict[str, bool] = field(default_factory=dict)  # parameter name -> flag before inject

    def _each_wrapper(self, verb: str):
        if not self.wrappers:
            raise ValueError(f"this {self.method} handle no longer wraps anything (it was undone or unloaded).")
        for name, wrapper in self.wrappers.items():
            action = getattr(wrapper, verb, None)
            if action is None:
                raise NotImplementedError(
                    f"{self.method} cannot {verb} {name!r}: its update is not a function of the weights alone."
                )
            yield name, action

    def merge(self) -> nn.Module:
        """Fold every wrapper's update into its base weights (raises if any is already merged)."""
        merged = [n for n, w in self.wrappers.items() if getattr(w, "merged", False)]
        if merged:
            raise ValueError(f"{merged[0]!r} is already merged; call unmerge() first (merging twice would add the update twice).")
        for _, action in self._each_wrapper("merge"):
            action()
        return self.model

    def unmerge(self) -> nn.Module:
        """Subtract every wrapper's update from its base weights again (raises if not merged)."""
        unmerged = [n for n, w in self.wrappers.items() if not getattr(w, "merged", False)]
        if unmerged:
            raise ValueError(f"{unmerged[0]!r} is not merged; there is nothing to unmerge.")
        # A wrapper that cannot be unmerged exactly (e.g. (IA)³ with a zero scale) says so *before* any layer
        # changes, so the model is never left half unmerged.
        for name, wrapper in self.wrappers.items():
            check = getattr(wrapper, "check_unmergeable", None)
            if check is not None:
                try:
                    check()
                except ValueError as error:
                    raise ValueError(f"{name!r}: {error}") from None
        for _, action in self._each_wrapper("unmerge"):
            action()
        return self.model

    @property
    def merged(self) -> bool:
        return bool(self.wrappers) and all(getattr(w, "merged", False) for w in self.wrappers.values())

    def state_dict(self) -> dict:
        """The method's own tensors (not the frozen base layers), keyed by their qualified names in the model."""
        state = {}
        for name, wrapper in self.wrappers.items():
            for key, tensor in wrapper.state_dict().items():
                if not key.startswith("base_layer."):
                    state[f"{name}.{key}"] = tensor
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load tensors saved by :meth:`state_dict` — all names and shapes are checked before anything changes."""
        from .io import load_weights  # local import: io imports params, which must not import inject

        expected = set(self.state_dict())
        unknown = sorted(set(state) - expected)
        missing = sorted(expected - set(state))
        if unknown or missing:
            key = (unknown or missing)[0]
            what = "is not part of this" if unknown else "is missing for this"
            raise ValueError(f"cannot load: {key!r} {what} {self.method} configuration (wrong model or config?).")
        load_weights(self.model, state, strict=False)

    def unload(self) -> nn.Module:
        """Merge (if not merged) and replace each wrapper by its base layer: an ordinary model, no extra modules."""
        if not self.merged:
            self.merge()
        for name, wrapper in self.wrappers.items():
            replace_module(self.model, name, wrapper.base_layer)
        self.replaced.clear()
        self.wrappers.clear()
        return self.model

    def undo(self) -> nn.Module:
        """Put every original module back, with its original weights and ``requires_grad`` flags; return the model."""
        if self.merged:
            self.unmerge()
        for name, original in self.replaced.items():
            replace_module(self.model, name, original)
        for name, parameter in self.model.named_parameters():
            if name in self.requires_grad_before:
                parameter.requires_grad_(self.requires_grad_before[name])
        self.replaced.clear()
        self.wrappers.clear()
        return self.model

    def __len__(self) -> int:
        return len(self.wrappers)

    def __iter__(self):
        return iter(self.wrappers.items())


def inject(
    model: nn.Module,
    make_wrapper: Callable[[str, nn.Module], nn.Module],
    target: str | Sequence[str] | None = None,
    types: type | tuple[type, ...] | None = None,
    exclude: str | Sequence[str] | None = None,
    method: str = "wrapper",
    config: object = None,
) -> Injection:
    """Wrap every matching module in place: ``module -> make_wrapper(name, module)``.

    All targets are found and all wrappers built *before* the model is touched, so an error while building one
    leaves the model unchanged.

    Raises:
        ValueError: if a target matches nothing (see :func:`find_modules`), or if a matching module is already a
            minipeft wrapper or sits inside one (wrapping twice would silently stack two adaptations).
    """
    found = find_modules(model, target=target, types=types, exclude=exclude)
    wrapper_names = [n for n, m in model.named_modules() if n and is_wrapper(m)]
    for name, module in found:
        owner = next((w for w in wrapper_names if name == w or name.startswith(w + ".")), None)
        if is_wrapper(module) or owner is not None:
            owner_module = module if is_wrapper(module) else model.get_submodule(owner)
            raise ValueError(
                f"module {name!r} is already wrapped by {getattr(owner_module, WRAPPER_ATTRIBUTE)!r}; "
                "undo the first injection (handle.undo()) or merge it before adding another."
            )
    built = {name: make_wrapper(name, module) for name, module in found}
    injection = Injection(model=model, method=method, config=config,
                          requires_grad_before={n: p.requires_grad for n, p in model.named_parameters()})
    for name, wrapper in built.items():
        injection.replaced[name] = replace_module(model, name, wrapper)
        injection.wrappers[name] = wrapper
    return injection


def module_names(model: nn.Module, types: type | tuple[type, ...] | None = None) -> Iterable[str]:
    """Qualified names of all submodules (optionally only of some types): handy for choosing targets."""
    return [n for n, m in model.named_modules() if n and (types is None or isinstance(m, types))]

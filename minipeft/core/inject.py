"""Find modules inside a model and replace or wrap them in place — and undo it.

Every weight-injecting method in this book (LoRA, adapters, (IA)³, GLoRA, …) does the same three things:

1. *find* the target modules, by a regular expression on their qualified name (``model.layers.0.self_attn.q_proj``)
   and/or by their type (``nn.Linear``);
2. *replace* each one with a wrapper that holds the original as ``base_layer``;
3. remember what it replaced, so the change can be *undone* exactly.

This file does the finding and replacing once, with the error messages a user needs: a target that matches nothing
lists the closest module names, a target that matches only modules of the wrong type says so, and an ``exclude``
entry that matches nothing is an error rather than a silent no-op. The handle that wraps, remembers and undoes is
:class:`minipeft.core.contract.Handle`.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Sequence

from torch import nn

# A wrapper class marks itself with this attribute, naming its method (e.g. "lora").
WRAPPER_ATTRIBUTE = "minipeft_method"


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

    for pattern in excluded:
        if not any(_matches(n, pattern) for n in all_names):
            raise ValueError(f"exclude entry {pattern!r} matches no module, so it would exclude nothing; "
                             f"{_close_matches(pattern, all_names)}")
    if types is not None:
        wanted = types if isinstance(types, tuple) else (types,)
        for pattern in patterns:
            typed = [n for n, m in named if _matches(n, pattern) and isinstance(m, wanted)]
            if not typed:
                others = [f"{n} ({type(m).__name__})" for n, m in named if _matches(n, pattern)][:3]
                type_names = ", ".join(t.__name__ for t in wanted)
                raise ValueError(f"target {pattern!r} matches only modules that are not {type_names}: "
                                 f"{', '.join(others)}; name the {type_names} layers inside them instead.")

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


def module_names(model: nn.Module, types: type | tuple[type, ...] | None = None) -> Iterable[str]:
    """Qualified names of all submodules (optionally only of some types): handy for choosing targets."""
    return [n for n, m in model.named_modules() if n and (types is None or isinstance(m, types))]


def default_targets(model: nn.Module, defaults: dict, config_name: str, example: str) -> tuple[str, ...]:
    """The target modules a method uses on a known ``transformers`` architecture when its config names none.

    ``defaults`` maps ``model.config.model_type`` to module names; an unknown architecture is an error that says how
    to name the layers instead (``example``, e.g. ``"['q_proj', 'v_proj']"``).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in defaults:
        raise ValueError(
            f"{config_name}.target_modules is None and there is no default for a {type(model).__name__} "
            f"(model_type {model_type!r}); name the layers to adapt, e.g. {config_name}(target_modules={example}) — "
            "minipeft.core.module_names(model, nn.Linear) lists the candidates."
        )
    return tuple(defaults[model_type])

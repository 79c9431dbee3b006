r"""(IA)³: rescale a few activations by learned vectors that start at ones.

**The idea** (Liu, Tam, Muqeeth, Mohta, Huang, Bansal & Raffel 2022, "Few-Shot Parameter-Efficient Fine-Tuning is
Better and Cheaper than In-Context Learning", NeurIPS 2022, arXiv:2205.05638; the name reads "Infused Adapter by
Inhibiting and Amplifying Inner Activations"). Keep the pretrained transformer frozen and learn, per layer, three
vectors that multiply activations element-wise: :math:`l_k \in \mathbb{R}^{d_k}` for the attention keys,
:math:`l_v \in \mathbb{R}^{d_v}` for the values and :math:`l_{ff} \in \mathbb{R}^{d_{ff}}` for the intermediate
activation of the feed-forward network (FFN). Attention and FFN become

$$\mathrm{softmax}\!\left(\frac{Q\,(l_k \odot K)^\top}{\sqrt{d_k}}\right)(l_v \odot V),
\qquad (l_{ff} \odot \gamma(W_1 x))\, W_2,$$

with :math:`\gamma` the FFN's non-linearity. The vectors start at **ones**, so the adapted model *is* the
pretrained model at initialisation. A vector entry above 1 amplifies a channel, below 1 inhibits it. Per layer
that is :math:`d_k + d_v + d_{ff}` numbers, about 0.01% of T0-3B in the paper. (T-Few, the paper's full recipe,
also adds two extra loss terms and pre-trains the vectors on a multitask mixture. This file is the
parameterisation only.)

**Where the vectors sit in code.** Every scaled activation is the output or the input of a linear layer, so a
vector becomes a wrapper (:class:`IA3Linear`) around one ``nn.Linear`` :math:`y = W x + b`,
:math:`W \in \mathbb{R}^{d_{out} \times d_{in}}`:

* *keys and values* — :math:`K = W_k x` and :math:`V = W_v x` are the **outputs** of ``k_proj`` / ``v_proj``, so
  the wrapper scales the output: :math:`y = l \odot (W x + b)`, with ``l`` of length ``out_features``;
* *feed-forward* — :math:`\gamma(W_1 x)` is the **input** of the FFN's second projection :math:`W_2` (LLaMA's
  ``down_proj``, BERT's ``output.dense``, T5's ``wo``). For a target listed in ``feedforward_modules`` the wrapper
  scales the input: :math:`y = W (l \odot x) + b`, with ``l`` of length ``in_features``.

These are peft's placements too (``IA3Config`` with ``feedforward_modules``), so the same vectors give the same
outputs (``tests/reference/test_ia3_vs_peft.py``). The defaults here are peft's LLaMA defaults: targets
``k_proj``, ``v_proj``, ``down_proj``, with ``down_proj`` feed-forward.

**Merging is exact.** A diagonal scaling folds into the weight matrix:

$$l \odot (W x + b) = \underbrace{\mathrm{diag}(l)\,W}_{W'}\,x + \underbrace{l \odot b}_{b'}
\qquad\text{(rows of } W \text{ scaled)},\qquad
W (l \odot x) + b = \underbrace{W\,\mathrm{diag}(l)}_{W'}\,x + b \qquad\text{(columns scaled, bias unchanged)}.$$

So (IA)³, like LoRA, costs nothing at inference after ``handle.merge()`` or ``handle.unload()``. *Unmerging* divides
by ``l`` again. That is exact up to rounding, but it is only possible when no entry of ``l`` is zero: a zero
erased its row or column of ``W``, and unmerging then raises instead of dividing by zero. The handle checks every
layer before it changes any, so the model stays fully merged. Unmerging
divides by the vector that was *merged*, which the wrapper keeps aside. Changing or loading ``ia3_l`` while merged
therefore cannot corrupt the restored base weights. (It does not change the merged output either: merge again to
use new values.)

Paper versus code (what to know when comparing):

1. *LLaMA and RoPE.* The paper's models (T5 / T0) have no rotary embedding. In LLaMA, ``k_proj``'s output is
   rotated by RoPE *after* the wrapper, so the model computes :math:`\mathrm{RoPE}(l_k \odot K)`, not
   :math:`l_k \odot \mathrm{RoPE}(K)`. Rotations mix pairs of channels, so the two differ unless paired channels
   share a scale. peft does the same, and it is what makes the merge possible.
2. *Grouped-query attention.* With fewer key/value heads than query heads, ``k_proj`` has
   ``kv_heads * head_dim`` outputs, so :math:`l_k` is that long and is shared by the query heads of a group.
3. *The FFN's intermediate activation.* LLaMA's FFN is gated, :math:`W_2(\mathrm{silu}(W_g x) \odot W_u x)`.
   Scaling ``down_proj``'s input scales the gated product, which is the natural reading of
   :math:`\gamma(W_1 x)` for a gated FFN. The ``adapters`` library instead scales the *output* of the
   intermediate projection, before the non-linearity.
4. *Vector shape and names.* We store each vector as a 1-D parameter ``ia3_l`` (state-dict key
   ``<module path>.ia3_l``). peft stores ``ia3_l.<adapter name>`` with shape ``(out_features, 1)``, or
   ``(1, in_features)`` for feed-forward targets. The tensors are the same up to that reshape.
5. *Unmerge.* peft divides by ``l + 1e-8`` and warns "Unmerge result can be inaccurate". We divide by ``l``
   exactly and raise on a zero entry.
6. *Matching feed-forward names.* A target is feed-forward when its name matches a ``feedforward_modules`` entry
   the way targets match (the whole name, a ``.``-separated suffix, or a regex). peft tests a bare string suffix
   (``"proj"`` would match ``down_proj``). With BERT's ``"output.dense"``, both match
   ``attention.output.dense`` as well, so in peft and here the attention output projection is scaled on its input.
7. *Layer types.* Only ``nn.Linear`` targets are wrapped (the paper's transformers are all linear layers). peft
   also wraps ``Conv1D`` (GPT-2), ``Conv2d``/``Conv3d`` and quantised layers.

Chapter: Part II, "(IA)³" (``04b_ia3``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..core.contract import Handle, MethodConfig, check_config, inject
from ..core.inject import WRAPPER_ATTRIBUTE, find_modules, is_wrapper


# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------


def _patterns(name: str, value, allow_empty: bool) -> list[str]:
    """Check a name/regex field and return it as a list (a single string is one pattern)."""
    if value is None:
        value = []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(p, str) and p for p in items):
        raise ValueError(f"{name} must be a module name or regex, or a list of them; got {value!r}.")
    if not items and not allow_empty:
        raise ValueError(f"{name} is empty; name at least one module, e.g. {name}=['k_proj', 'v_proj', 'down_proj'].")
    return list(items)


@dataclass
class IA3Config(MethodConfig):
    """Which linear layers get an (IA)³ vector, and which of them are scaled on their input.

    Args:
        target_modules: module names, name suffixes or regexes (see ``minipeft.core.find_modules``) of the
            ``nn.Linear`` layers to wrap. The default is peft's LLaMA default.
        feedforward_modules: the targets whose **input** is scaled (the FFN's second projection, after the
            non-linearity). Every other target is scaled on its **output**. Each entry must match at least one target.
            When both fields are lists, every entry here must also be an entry of ``target_modules``, as in peft.
            Use ``[]`` to scale only outputs.
        exclude: names, suffixes or regexes of modules to leave alone even if they match a target.
    """

    target_modules: str | Sequence[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward_modules: str | Sequence[str] | None = field(default_factory=lambda: ["down_proj"])
    exclude: str | Sequence[str] | None = None

    method = "ia3"

    def __post_init__(self):
        targets = _patterns("target_modules", self.target_modules, allow_empty=False)
        feedforward = _patterns("feedforward_modules", self.feedforward_modules, allow_empty=True)
        _patterns("exclude", self.exclude, allow_empty=True)
        # With two lists the subset rule can be checked now (peft's rule). Regexes are checked in apply(),
        # against the modules they actually match.
        if not isinstance(self.target_modules, str) and not isinstance(self.feedforward_modules, str):
            outside = [p for p in feedforward if p not in targets]
            if outside:
                raise ValueError(
                    f"feedforward_modules {outside} are not in target_modules {targets}: a feed-forward module is a "
                    "target whose input is scaled, so it must also be a target. Add it to target_modules, or pass "
                    "feedforward_modules=[] to scale only outputs."
                )


# ------------------------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------------------------


class IA3Linear(nn.Module):
    r"""An ``nn.Linear`` whose output (or, for a feed-forward target, input) is rescaled by a learned vector ``l``.

    * output scaling: :math:`y = l \odot (W x + b)`, ``l`` of length ``out_features`` (keys, values);
    * input scaling (``is_feedforward=True``): :math:`y = W (l \odot x) + b`, ``l`` of length ``in_features``.

    ``l`` (``ia3_l``) starts at ones, so the wrapper equals its base layer at initialisation. It is kept in fp32
    even on a half-precision base layer and the result is cast back to the base layer's dtype. ``merge()`` folds
    ``l`` into ``W`` (and ``b``), and ``unmerge()`` divides it back out.
    """

    minipeft_method = "ia3"
    adapter_tensor_names = ("ia3_l",)  # the learned vector l
    can_merge = True

    def __init__(self, base_layer: nn.Linear, is_feedforward: bool = False):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"IA3Linear wraps an nn.Linear, got {type(base_layer).__name__}.")
        self.base_layer = base_layer
        self.is_feedforward = bool(is_feedforward)
        width = base_layer.in_features if self.is_feedforward else base_layer.out_features
        # Ones: the identity scaling, so training starts from the pretrained function.
        self.ia3_l = nn.Parameter(torch.ones(width, device=base_layer.weight.device))
        self.merged = False
        self._merged_vector: torch.Tensor | None = None  # the l that merge() multiplied in; unmerge() divides by it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # l already lives in W (and b)
            return self.base_layer(x)
        if self.is_feedforward:
            # (l_ff ⊙ γ(W_1 x)) W_2: the wrapper's input is the FFN's intermediate activation.
            return self.base_layer((x * self.ia3_l).to(x.dtype))  # (..., d_in) * (d_in,)
        y = self.base_layer(x)  # W x + b
        # y = l ⊙ (W x + b), i.e. l_k ⊙ K or l_v ⊙ V: scale the projection's output, channel by channel.
        return (y * self.ia3_l).to(y.dtype)  # (..., d_out) * (d_out,)

    @torch.no_grad()
    def merge(self) -> None:
        r"""Fold :math:`l` into the base layer: :math:`W' = \mathrm{diag}(l)\,W,\ b' = l \odot b` (output) or
        :math:`W' = W\,\mathrm{diag}(l)` (input)."""
        if self.merged:
            raise ValueError("this (IA)³ layer is already merged; merging again would multiply by l twice.")
        weight, bias = self.base_layer.weight, self.base_layer.bias
        vector = self.ia3_l.detach().clone()
        if self.is_feedforward:
            # W' = W diag(l): column j of W times l_j
            weight.copy_((weight * vector[None, :]).to(weight.dtype))  # (d_out, d_in) * (1, d_in): columns
        else:
            # W' = diag(l) W: row i of W times l_i
            weight.copy_((weight * vector[:, None]).to(weight.dtype))  # (d_out, d_in) * (d_out, 1): rows
            if bias is not None:
                bias.copy_((bias * vector).to(bias.dtype))  # b' = l ⊙ b
        self._merged_vector = vector
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        r"""Divide the merged vector back out of :math:`W` (and :math:`b`): exact up to rounding, impossible where
        an entry :math:`l_i = 0`."""
        if not self.merged:
            raise ValueError("this (IA)³ layer is not merged; there is nothing to unmerge.")
        self.check_unmergeable()
        weight, bias = self.base_layer.weight, self.base_layer.bias
        vector = self._merged_vector.to(weight.device)
        if self.is_feedforward:
            weight.copy_((weight / vector[None, :]).to(weight.dtype))  # W = W' diag(l)^-1: (d_out, d_in) / (1, d_in)
        else:
            weight.copy_((weight / vector[:, None]).to(weight.dtype))  # W = diag(l)^-1 W': (d_out, d_in) / (d_out, 1)
            if bias is not None:
                bias.copy_((bias / vector).to(bias.dtype))  # b = b' ⊘ l
        self._merged_vector = None
        self.merged = False

    def check_unmergeable(self) -> None:
        """Raise ``ValueError`` if the merged vector has a zero entry (division cannot bring that row/column back)."""
        if not self.merged:
            return
        zeros = (self._merged_vector == 0).nonzero().flatten().tolist()  # indices i with l_i = 0: (n, 1) -> [n]
        if zeros:
            lost = "columns" if self.is_feedforward else "rows"
            raise ValueError(
                f"cannot unmerge: the merged (IA)³ vector has {len(zeros)} zero entries (first at index {zeros[0]}), "
                f"so the matching {lost} of the base weight were multiplied by 0 and cannot be recovered by "
                "division. Reload the base model's weights instead (unmerge needs every entry of l to be non-zero)."
            )

    def extra_repr(self) -> str:
        side = "input" if self.is_feedforward else "output"
        return f"scales={side}, size={self.ia3_l.numel()}, merged={self.merged}"


# ------------------------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------------------------


def apply(model: nn.Module, config: IA3Config | None = None) -> Handle:
    """Wrap the target linear layers of ``model`` in :class:`IA3Linear` in place and freeze everything else.

    Args:
        model: any ``nn.Module`` (a ``transformers`` LLaMA with the default config; set ``target_modules`` and
            ``feedforward_modules`` for other models, e.g. BERT: ``["key", "value", "output.dense"]`` with
            ``["output.dense"]``).
        config: an :class:`IA3Config` (default: ``k_proj``, ``v_proj``, ``down_proj``; ``down_proj`` feed-forward).

    Returns:
        the ``Handle`` handle: ``merge`` / ``unmerge`` / ``unload`` / ``undo`` and
        ``state_dict`` / ``load_state_dict`` (keys ``<module path>.ia3_l``). Only the vectors are trainable afterwards.

    Raises:
        ValueError: a target or feed-forward name matches no module (the message lists close names), no matching
            module is an ``nn.Linear``, a feed-forward entry matches none of the targets, or a target is already
            wrapped by a minipeft method.
    """
    config = IA3Config() if config is None else config
    config = check_config(config, IA3Config, IA3Config)

    # Everything is found and checked before the model is touched, so a bad config leaves it unchanged.
    candidates = find_modules(model, target=config.target_modules, exclude=config.exclude)
    for name, module in candidates:
        if is_wrapper(module):
            raise ValueError(
                f"module {name!r} is already wrapped by {getattr(module, WRAPPER_ATTRIBUTE)!r}; "
                "undo the first injection (handle.undo()) or unload it before adding (IA)³."
            )
    targets = [name for name, module in candidates if isinstance(module, nn.Linear)]
    if not targets:
        found = ", ".join(f"{n} ({type(m).__name__})" for n, m in candidates[:5])
        raise ValueError(
            f"(IA)³ wraps nn.Linear layers, but none of the modules matching {config.target_modules!r} is one: "
            f"{found}. Name the linear layers inside them instead (e.g. 'mlp.down_proj' rather than 'mlp')."
        )

    feedforward: set[str] = set()
    for pattern in _patterns("feedforward_modules", config.feedforward_modules, allow_empty=True):
        matched = {name for name, _ in find_modules(model, target=pattern)}  # raises, with close names, if none
        hits = matched.intersection(targets)
        if not hits:
            raise ValueError(
                f"feedforward_modules entry {pattern!r} matches {sorted(matched)[:3]} but none of the targets; "
                "a feed-forward module must also be a target (add it to target_modules or drop it here)."
            )
        feedforward |= hits

    def make_wrapper(name: str, module: nn.Module) -> nn.Module:
        return IA3Linear(module, is_feedforward=name in feedforward)

    # Exact (escaped) names, so inject wraps precisely the linear layers chosen above.
    handle = inject(model, make_wrapper, target=[re.escape(n) for n in targets], method="ia3", config=config)
    handle.mark_trainable()  # after injecting: a failed injection leaves requires_grad untouched too
    return handle

r"""Bottleneck adapters: a small two-layer network added inside every transformer layer (Houlsby, Pfeiffer, parallel).

**The idea** (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", ICML, arXiv:1902.00751).
Keep the pretrained transformer frozen and insert, inside each layer, a *bottleneck*: project the ``d``-dimensional
hidden state down to a small width ``m``, apply a non-linearity ``f``, project back up to ``d``, and add the result
to the input of the adapter (the adapter's own skip connection). In the row-vector notation of He et al. 2022
("Towards a Unified View of Parameter-Efficient Transfer Learning", arXiv:2110.04366), with
:math:`W_{down} \in \mathbb{R}^{d \times m}` and :math:`W_{up} \in \mathbb{R}^{m \times d}`:

$$h \leftarrow h + f(h W_{down})\, W_{up}, \qquad m = \lfloor d / r \rfloor,$$

where ``r`` is the *reduction factor* (AdapterHub's name; ``r = 16`` gives ``m = 48`` on BERT-base). One adapter has
``2dm + m + d`` parameters (two matrices and two biases). Only the adapters train, so a task costs a few percent
of the model: Houlsby et al. report being within 0.4% of full fine-tuning on GLUE with 3.6% extra parameters per
task (BERT-Large).

Three placements, all in this file (``AdapterConfig.placement``):

* ``"houlsby"`` — two adapters per layer: one after the projection that follows multi-head attention, one after
  the feed-forward network (FFN), each *before* that sublayer's residual add (and LayerNorm, in a post-norm model).
* ``"pfeiffer"`` — one adapter per layer, after the FFN only (Pfeiffer et al., "AdapterFusion: Non-Destructive Task
  Composition for Transfer Learning", EACL 2021, arXiv:2005.00247). Half the parameters, about the same accuracy.
* ``"parallel"`` — He et al. 2022: the adapter reads the *input* :math:`x` of the FFN sublayer and its output is
  added to the FFN's output, side by side with it instead of after it:
  $$h \leftarrow h + s \cdot f(x W_{down})\, W_{up},$$
  with a scaling ``s`` (``AdapterConfig.scaling``; He et al.'s best setting uses ``s = 4``).

**Initialisation.** ``W_down`` is drawn from a truncated normal :math:`\mathcal{N}(0, \sigma^2)` cut at
:math:`\pm 2\sigma` (``init_std``, default ``1e-2`` as in Houlsby et al.) and ``W_up`` and both biases are zero. So
:math:`f(h W_{down}) W_{up} = 0` and **the adapted model equals the base model exactly at initialisation** —
training starts from the pretrained function, not from a perturbed one. (Houlsby et al. initialise *both*
projections near zero, giving a near-identity; the zero up-projection makes it exact, like LoRA's zero ``B``.)

**How it plugs in.** Every adapter here is the same :class:`BottleneckAdapter`, which returns only the *update*
:math:`A(h) = f(h W_{down}) W_{up}` (``nn.Linear`` stores each matrix transposed, so ``down.weight`` is
:math:`W_{down}^\top`, shape ``(m, d)``). A wrapper around an existing module adds the update where it belongs:

* sequential (Houlsby, Pfeiffer) — :class:`SequentialAdapterLayer` wraps the *output projection* of a sublayer:
  ``y = base(x); return y + A(y)``. That is exactly "after the projection, before the residual add":

  - BERT (post-norm; ``BertSelfOutput`` and ``BertOutput`` compute
    :math:`\mathrm{LN}(\mathrm{drop}(\mathrm{dense}(x)) + h)`):
    wrap ``attention.output.dense`` (Houlsby only) and ``output.dense`` (the FFN's second linear layer), giving
    :math:`\mathrm{LN}(h + \mathrm{drop}(s + A(s)))` with :math:`s = \mathrm{dense}(x)`.
  - LLaMA (pre-norm, :math:`h \leftarrow h + \mathrm{o\_proj}(\mathrm{attn}(\mathrm{norm}(h)))`, then
    :math:`h \leftarrow h + \mathrm{down\_proj}(\mathrm{mlp}(\mathrm{norm}(h)))`): wrap ``self_attn.o_proj`` (Houlsby
    only) and ``mlp.down_proj``.

* parallel — the adapter needs the FFN's *input*, so the wrapper sits around the whole FFN:

  - LLaMA: :class:`ParallelAdapterLayer` wraps ``mlp``: ``mlp(x) + s * A(x)`` with ``x = post_attention_layernorm(h)``,
    the tensor the FFN reads.
  - BERT: the FFN is ``intermediate`` followed by ``output`` (``BertOutput``), and ``BertOutput(z, h)`` computes
    :math:`\mathrm{LN}(\mathrm{drop}(\mathrm{dense}(z)) + h)` where ``h`` — the residual — is also the FFN's input.
    :class:`PostNormParallelAdapterLayer` wraps ``output`` and hands it ``h + s * A(h)`` as the residual, which gives
    :math:`\mathrm{LN}(h + \mathrm{FFN}(h) + s\,A(h))` without re-implementing ``BertOutput``.

* any other model — pass ``targets=`` (names, regexes or module types) to :func:`apply`: each target is wrapped
  sequentially (``y + A(y)``; ``"houlsby"`` and ``"pfeiffer"`` then mean the same) or, with ``"parallel"``, as
  ``y + s * A(x)`` where ``x`` is the target's first input. The target must return one tensor.

Auto-detection recognises ``transformers``' BERT (``BertLayer`` with ``BertSelfOutput`` / ``BertOutput``) and LLaMA
(``LlamaDecoderLayer``) at any depth of the model; anything else raises ``ValueError`` asking for ``targets=``.

**No merging.** LoRA's update :math:`BAx` is linear in ``x`` and folds into ``W``. An adapter's update
:math:`f(h W_{down}) W_{up}` passes through the non-linearity ``f``, so no single matrix reproduces it: the
wrappers have no ``merge()``, and ``handle.merge()`` / ``handle.unload()`` raise ``NotImplementedError``. This is why
adapters add inference latency (two small matmuls per adapter, run in sequence with the layer) where merged LoRA
adds none. ``handle.undo()`` removes the adapters and restores the original modules.

Paper versus code (what to know when comparing with AdapterHub's ``adapters`` library, the reference
implementation; its bottleneck code is ``methods/modeling.py::Adapter`` and ``methods/bottleneck.py``):

1. *Initialisation.* AdapterHub's default ``init_weights="bert"`` draws *both* projections from N(0, 0.02), so its
   adapters are **not** an identity at the start; ``"houlsby"`` is a truncated N(0, 1e-2) on both; ``"mam_adapter"``
   (the parallel default) zeroes the up-projection, which is what we always do.
2. *Pfeiffer's LayerNorm.* AdapterHub's ``seq_bn`` (Pfeiffer) sets ``original_ln_before=True`` and
   ``residual_before_ln=True``: the adapter reads :math:`\mathrm{LN}(s + h)` — the pretrained LayerNorm applied to
   the sublayer's output plus residual — and the block returns :math:`\mathrm{LN}(h + s + A(\mathrm{LN}(s + h)))`,
   applying the pretrained LayerNorm twice. We implement the placement only, with the adapter reading ``s`` as in
   Houlsby's FFN adapter: :math:`\mathrm{LN}(h + s + A(s))`. AdapterHub's ``double_seq_bn`` (Houlsby,
   ``original_ln_before=False``) is :math:`\mathrm{LN}(h + s + A(s))` at both sublayers, as here; its ``par_bn`` is
   :math:`\mathrm{LN}(h + s + 4\,A(h))`, as here with ``scaling=4``.
3. *Dropout.* AdapterHub applies the adapter after the sublayer's dropout (``dense -> dropout -> adapter``); we wrap
   ``dense``, so the dropout acts on :math:`s + A(s)`. In ``eval()`` mode the two are identical.
4. *Non-linearity and sizes.* AdapterHub's Houlsby config uses ``swish`` (= ``"silu"`` here), its Pfeiffer config
   ``relu``, both with ``reduction_factor=16``; its parallel config ``reduction_factor=2, scaling=4.0``. Our defaults
   are ``relu``, 16 and ``scaling=1.0`` for every placement; set them to reproduce a given setup.
5. *What trains.* Houlsby et al. also train the LayerNorms (and the task head). :func:`apply` makes only the adapters
   trainable; to follow the paper call ``minipeft.core.unfreeze(model, "LayerNorm")`` afterwards and save with
   ``minipeft.core.save_trainable`` (``handle.state_dict()`` holds the adapters only).
6. *Pre-norm models.* The papers use post-norm BERT. In LLaMA there is no LayerNorm after the residual add; the
   sequential adapters sit before the add, and the parallel adapter reads the normalised FFN input (AdapterHub's
   ``par_bn`` reads the residual stream, which in BERT is the same tensor). Options AdapterHub offers and we do not:
   gating, extra LayerNorms around the adapter (``ln_before`` / ``ln_after``), per-layer reduction factors,
   invertible adapters, cross-attention adapters.

Chapter: Part II, "Bottleneck adapters".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..core.contract import Handle, MethodConfig, check_config, inject
from ..core.inject import WRAPPER_ATTRIBUTE, find_modules, is_wrapper

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
NON_LINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------


# Why handle.merge() refuses (the same sentence for every adapter wrapper).
ADAPTER_REFUSAL = ("an adapter's update f(h W_down) W_up passes through the non-linearity f, so it is not a change "
                   "of any weight matrix (LoRA's B A is; see the module docstring)")


@dataclass
class AdapterConfig(MethodConfig):
    """Bottleneck adapters: where they go, how wide they are, how they start.

    Args:
        placement: ``"houlsby"`` (after attention and after the FFN), ``"pfeiffer"`` (after the FFN) or
            ``"parallel"`` (beside the FFN, reading its input).
        reduction_factor: ``r`` in ``m = d // r``, the bottleneck width ``m`` for a model width ``d``.
        non_linearity: ``f``: ``"relu"``, ``"gelu"``, ``"silu"`` (``"swish"`` is accepted as a synonym) or ``"tanh"``.
        init_std: standard deviation of the truncated-normal init of the down-projection (the up-projection
            starts at zero, so the adapted model equals the base model at init).
        scaling: ``s``, multiplies the adapter's update (He et al. use 4 for the parallel adapter).
        layers: indices of the transformer layers that get adapters (``None``: all). Only for the auto-detected
            architectures; with explicit ``targets=`` choose the layers through the names.
    """

    placement: str = "houlsby"
    reduction_factor: int = 16
    non_linearity: str = "relu"
    init_std: float = 1e-2
    scaling: float = 1.0
    layers: Sequence[int] | None = None

    method = "adapter"

    def __post_init__(self):
        self.placement = str(self.placement).lower()
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}.")
        rf = self.reduction_factor
        if not isinstance(rf, int) or isinstance(rf, bool) or rf < 1:
            raise ValueError(
                f"reduction_factor must be a positive integer (bottleneck width = d // reduction_factor), got {rf!r}; "
                "typical values are 8-64 (e.g. reduction_factor=16)."
            )
        self.non_linearity = str(self.non_linearity).lower()
        if self.non_linearity == "swish":  # AdapterHub's name for SiLU
            self.non_linearity = "silu"
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {tuple(NON_LINEARITIES)}, got {self.non_linearity!r}.")
        if not isinstance(self.init_std, (int, float)) or isinstance(self.init_std, bool) or not self.init_std > 0:
            raise ValueError(
                f"init_std must be a positive number, got {self.init_std!r}; with a zero down-projection *and* a "
                "zero up-projection no gradient reaches either (e.g. init_std=1e-2)."
            )
        if not isinstance(self.scaling, (int, float)) or isinstance(self.scaling, bool):
            raise ValueError(f"scaling must be a number, got {self.scaling!r}.")
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence):
                raise ValueError(f"layers must be a list of layer indices or None (all layers), got {self.layers!r}.")
            bad = [i for i in self.layers if not isinstance(i, int) or isinstance(i, bool) or i < 0]
            if bad or not self.layers:
                raise ValueError(f"layers must be a non-empty list of layer indices >= 0, got {list(self.layers)!r}.")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers lists a layer twice: {list(self.layers)!r}.")
            self.layers = sorted(self.layers)


# ------------------------------------------------------------------------------------------------------------------
# The adapter and its wrappers
# ------------------------------------------------------------------------------------------------------------------


class BottleneckAdapter(nn.Module):
    r"""The bottleneck :math:`A(h) = f(h W_{down} + b_{down}) W_{up} + b_{up}`; ``forward`` returns this *update only*.

    The caller adds it to the residual stream (``y + A(y)`` sequentially, ``y + s * A(x)`` in parallel), so one module
    serves every placement. ``2 * d * m + m + d`` parameters (``d_out`` replaces the second ``d`` when the input and
    output widths differ, which only a parallel adapter around a non-square module can need).

    Args:
        d: width of the adapter's input.
        bottleneck: ``m``.
        non_linearity: ``f``, a key of ``NON_LINEARITIES``.
        init_std: std of the truncated-normal init of ``down`` (the up-projection is zero).
        d_out: width of the update; ``None``: ``d``.
    """

    def __init__(self, d: int, bottleneck: int, non_linearity: str = "relu", init_std: float = 1e-2,
                 d_out: int | None = None):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)  # W_down^T: (m, d)
        self.act = NON_LINEARITIES[non_linearity]()
        self.up = nn.Linear(bottleneck, d_out or d)  # W_up^T: (d, m)
        # Houlsby's near-identity init for W_down; a zero W_up makes the update exactly 0 at the start.
        nn.init.trunc_normal_(self.down.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # A(h) = f(h W_down + b_down) W_up + b_up
        return self.up(self.act(self.down(h)))  # (..., d) -> (..., m) -> (..., d)


def _update(adapter: BottleneckAdapter, h: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling * A(h)``, computed in the adapter's dtype (fp32 even on a half-precision base) and cast back."""
    return (scaling * adapter(h.to(adapter.down.weight.dtype))).to(h.dtype)  # s * A(h)


def _check_tensor(y, base_layer: nn.Module) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"an adapter can only wrap a module that returns one tensor; {type(base_layer).__name__} returned "
            f"{type(y).__name__}. Target its output projection instead (e.g. 'o_proj' rather than 'self_attn')."
        )
    return y


class AdapterWrapper(nn.Module):
    r"""What the three placements share: the frozen ``base_layer``, the ``adapter`` :math:`A` and its scale :math:`s`;
    they differ only in what the adapter reads and where its update joins (their ``forward``)."""

    minipeft_method = "adapter"
    adapter_tensor_names = ("adapter",)
    can_merge = False
    merge_refusal = ADAPTER_REFUSAL

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter, scaling: float = 1.0):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.scaling = scaling


class SequentialAdapterLayer(AdapterWrapper):
    r"""Houlsby / Pfeiffer placement around ``base``: returns :math:`y + s\,A(y)`, :math:`y = \mathrm{base}(x)`.

    The adapter reads the module's output and adds its update to it — the adapter's internal skip connection.
    """


    def forward(self, *args, **kwargs) -> torch.Tensor:
        y = _check_tensor(self.base_layer(*args, **kwargs), self.base_layer)  # y = base(x)
        # The adapter's own skip connection: y + s A(y), i.e. h <- h + f(h W_down) W_up with h the module's output.
        return y + _update(self.adapter, y, self.scaling)


class ParallelAdapterLayer(AdapterWrapper):
    r"""Parallel placement around a sublayer ``base`` (e.g. LLaMA's ``mlp``): returns :math:`\mathrm{base}(x)+s\,A(x)`.

    ``x`` is the first positional input of ``base``; any further arguments are passed through to it unchanged.
    """


    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = _check_tensor(self.base_layer(x, *args, **kwargs), self.base_layer)  # y = base(x)
        # He et al.: the adapter reads the sublayer's input x, and its update joins the sublayer's output.
        return y + _update(self.adapter, x, self.scaling)  # base(x) + s A(x)


class PostNormParallelAdapterLayer(AdapterWrapper):
    r"""Parallel placement for a post-norm output module ``base(z, h) = LN(sublayer(z) + h)`` (BERT's ``BertOutput``).

    ``h`` is the residual and also the FFN's input, so passing ``h + s * A(h)`` as the residual gives
    :math:`\mathrm{LN}(\mathrm{FFN}(h) + h + s\,A(h))` — the parallel adapter, added before the LayerNorm.
    """


    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        # LN(FFN(h) + h + s A(h)): base adds its residual h + s A(h) before its LayerNorm; h = input_tensor.
        return self.base_layer(hidden_states, input_tensor + _update(self.adapter, input_tensor, self.scaling))


# ------------------------------------------------------------------------------------------------------------------
# Where the adapters go
# ------------------------------------------------------------------------------------------------------------------

# name -> (wrapper class, input width of the adapter, output width of the adapter)
Plan = dict[str, tuple[type, int, int]]


def _layers_of(model: nn.Module, class_name: str) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and type(m).__name__ == class_name]


def _choose_layers(layers: list[tuple[str, nn.Module]], config: AdapterConfig, arch: str) -> list[str]:
    for name, layer in layers:
        for inner, module in layer.named_modules():
            if inner and is_wrapper(module):  # the attribute paths below would point into the wrapper
                raise ValueError(
                    f"module '{name}.{inner}' is already wrapped by {getattr(module, WRAPPER_ATTRIBUTE)!r}; "
                    "undo the first injection (handle.undo()) before adding adapters."
                )
    if config.layers is None:
        return [n for n, _ in layers]
    outside = [i for i in config.layers if i >= len(layers)]
    if outside:
        raise ValueError(
            f"layers {outside} do not exist: this {arch} model has {len(layers)} layers (indices 0..{len(layers) - 1})."
        )
    return [layers[i][0] for i in config.layers]


def _auto_plan(model: nn.Module, config: AdapterConfig) -> Plan:
    """Adapter targets for BERT and LLaMA, by module class (at any depth, e.g. inside a classification wrapper)."""
    houlsby, parallel = config.placement == "houlsby", config.placement == "parallel"
    bert, llama = _layers_of(model, "BertLayer"), _layers_of(model, "LlamaDecoderLayer")
    plan: Plan = {}
    if bert:
        for layer in _choose_layers(bert, config, "BERT"):
            output = model.get_submodule(f"{layer}.output")  # BertOutput: LN(dropout(dense(z)) + h)
            d = output.dense.out_features
            if parallel:
                plan[f"{layer}.output"] = (PostNormParallelAdapterLayer, d, d)
                continue
            if houlsby:  # BertSelfOutput.dense: the projection after multi-head attention
                plan[f"{layer}.attention.output.dense"] = (SequentialAdapterLayer, d, d)
            plan[f"{layer}.output.dense"] = (SequentialAdapterLayer, d, d)  # the FFN's second linear layer
    elif llama:
        for layer in _choose_layers(llama, config, "LLaMA"):
            d = model.get_submodule(f"{layer}.mlp.down_proj").out_features
            if parallel:
                plan[f"{layer}.mlp"] = (ParallelAdapterLayer, d, d)
                continue
            if houlsby:
                plan[f"{layer}.self_attn.o_proj"] = (SequentialAdapterLayer, d, d)
            plan[f"{layer}.mlp.down_proj"] = (SequentialAdapterLayer, d, d)
    else:
        raise ValueError(
            f"cannot tell where adapters go in a {type(model).__name__}: only transformers' BERT (BertLayer) and "
            "LLaMA (LlamaDecoderLayer) are recognised. Pass targets=... to apply(), naming the modules whose output "
            "the adapter should follow, e.g. apply(model, config, targets=['attn.out_proj', 'mlp.fc2'])."
        )
    return plan


def _widths(name: str, module: nn.Module, hidden_size: int | None) -> tuple[int, int]:
    """(input width, output width) of a user-chosen target."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if hidden_size is not None:
        return hidden_size, hidden_size
    width = getattr(module, "hidden_size", None)
    if isinstance(width, int):
        return width, width
    raise ValueError(
        f"cannot tell the width of {name!r} ({type(module).__name__}); pass hidden_size=... to apply() "
        "(the width of the tensor the module returns)."
    )


def _explicit_plan(model: nn.Module, config: AdapterConfig, targets, hidden_size: int | None) -> Plan:
    if config.layers is not None:
        raise ValueError(
            "AdapterConfig.layers selects layers of an auto-detected BERT/LLaMA; with explicit targets choose the "
            "layers through the names instead (e.g. targets=r'layers\\.(0|1)\\.mlp')."
        )
    items = list(targets) if isinstance(targets, (list, tuple)) else [targets]
    names = [t for t in items if isinstance(t, str)]
    types = tuple(t for t in items if isinstance(t, type))
    if len(names) + len(types) != len(items) or not items:
        raise ValueError(f"targets must be module names/regexes and/or module classes, got {targets!r}.")
    found = find_modules(model, target=names or None, types=types or None)
    kind = ParallelAdapterLayer if config.placement == "parallel" else SequentialAdapterLayer
    plan: Plan = {}
    for name, module in found:
        d_in, d_out = _widths(name, module, hidden_size)
        if kind is SequentialAdapterLayer:
            d_in = d_out  # a sequential adapter reads the module's output
        plan[name] = (kind, d_in, d_out)
    return plan


# ------------------------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------------------------


def apply(model: nn.Module, config: AdapterConfig | None = None, targets=None,
          hidden_size: int | None = None) -> Handle:
    """Insert bottleneck adapters into ``model`` in place, freeze everything else, and return the handle.

    Args:
        model: a ``transformers`` BERT or LLaMA (auto-detected), or any ``nn.Module`` together with ``targets``.
        config: an :class:`AdapterConfig` (default: Houlsby, reduction factor 16).
        targets: explicit modules to adapt — a name, a name suffix or a regex (see ``minipeft.core.find_modules``),
            a module class, or a list mixing them (names and classes together select modules matching both).
        hidden_size: the output width of targets that are not ``nn.Linear`` and have no ``hidden_size`` attribute.

    Returns:
        an ``Handle``: ``state_dict()`` / ``load_state_dict()`` for the adapter weights, ``undo()`` to remove them.
        ``merge()`` raises ``NotImplementedError`` (an adapter is non-linear, see the module docstring).

    Raises:
        ValueError: unknown architecture without ``targets``, a target that matches nothing, a reduction factor
            larger than the model width, layer indices out of range, or a model that already has adapters there.
    """
    config = AdapterConfig() if config is None else config
    config = check_config(config, AdapterConfig, AdapterConfig)
    plan = _auto_plan(model, config) if targets is None else _explicit_plan(model, config, targets, hidden_size)
    nested = [(outer, inner) for outer in plan for inner in plan if inner.startswith(outer + ".")]
    if nested:
        raise ValueError(
            f"targets overlap: {nested[0][1]!r} lies inside {nested[0][0]!r}; adapt one or the other, not both."
        )

    widths = {d_in for _, d_in, _ in plan.values()}
    if min(widths) // config.reduction_factor < 1:
        raise ValueError(
            f"reduction_factor={config.reduction_factor} leaves no bottleneck for width {min(widths)} "
            f"(m = d // r = 0); use reduction_factor <= {min(widths)}."
        )

    def make_wrapper(name: str, module: nn.Module) -> nn.Module:
        kind, d_in, d_out = plan[name]
        adapter = BottleneckAdapter(d_in, d_in // config.reduction_factor, config.non_linearity, config.init_std,
                                    d_out=d_out)
        reference = next(module.parameters(), None)
        if reference is not None:  # live where the base layer lives; fp32 even when the base is half precision
            adapter.to(device=reference.device)
        return kind(module, adapter, config.scaling)

    # Exact names (escaped, so the dots are literal): a suffix or regex match could catch modules outside the plan.
    handle = inject(model, make_wrapper, target=[re.escape(n) for n in plan], method="adapter", config=config)
    # Freeze after injecting, so a failed injection leaves requires_grad untouched too.
    handle.mark_trainable()
    return handle

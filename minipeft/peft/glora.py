r"""GLoRA: one layer that contains LoRA, scaling, shifting and prompts — and a search for which parts each layer uses.

**The idea** (Chavan, Liu, Gupta, Xing & Shen 2023, "One-for-All: Generalized LoRA for Parameter-Efficient
Fine-tuning", arXiv:2306.07967). Many PEFT methods change a frozen linear layer :math:`y = W_0 x + b_0`,
:math:`W_0 \in \mathbb{R}^{d_{out} \times d_{in}}`, in one of a few ways: add a low-rank matrix (LoRA), rescale its
rows ((IA)³-like), shift it, or feed it a learned prompt. GLoRA writes all of them as one *unified layer* with five
**support tensors** :math:`A, B, C, D, E`:

$$W' = W_0 + W_0 \odot A + B, \qquad b' = b_0 + b_0 \odot D + E + W_0\, C, \qquad y = W' x + b'.$$

:math:`A` scales the weight, :math:`B` shifts it, :math:`C` is a prompt in the input space that the layer maps
into its bias (:math:`W_0 C`), :math:`D` scales the bias and :math:`E` shifts it. Each support tensor has a few
*shapes* it may take, cheapest last:

* A and B (shape :math:`d_{out} \times d_{in}`): ``"lora"`` :math:`X_d X_u` with :math:`X_d` ``(d_out, r)`` and
  :math:`X_u` ``(r, d_in)``; ``"vector"`` ``(d_out, 1)``, one number per row; ``"constant"``, one number;
* C (shape :math:`d_{in} \times 1`): ``"lora"`` :math:`X_d X_u` with ``(d_in, r) @ (r, 1)``; ``"vector"``
  ``(d_in, 1)``;
* D and E (shape :math:`d_{out}`): ``"vector"`` ``(d_out,)``; ``"constant"``, one number;

and each may also be ``"none"`` (absent). So A and B have 4 choices, C, D and E have 3: **4·4·3·3·3 = 432
configurations per layer**. A layer's choice is its **path**, a dict such as ``{"A": "lora", "B": "vector",
"C": "none", "D": "constant", "E": "vector"}``. Known methods are paths: LoRA is ``B = "lora"`` with everything
else ``"none"``; an (IA)³-style output scaling is ``A = "vector"`` plus ``D = "vector"``; a bias-only tuning is
``E = "vector"``. GLoRA lets every layer pick its own.

*Why the down factors start at zero.* Every :math:`X_d` factor and :math:`D, E` start at **zero** (the up factors
:math:`X_u` are random, as in LoRA's :math:`A`). Every choice then reads zeros, so :math:`W' = W_0` and
:math:`b' = b_0`: **whatever the paths, the adapted model is exactly the pretrained model at initialisation.**

*Weight entanglement: one set of tensors for all 432 paths.* Each support tensor owns one pair of factors; the
cheaper choices are *slices* of them: ``"vector"`` is the first column :math:`X_d[:, 0]`, ``"constant"`` is the
first entry :math:`X_d[0, 0]` (for D and E: the whole vector, and its first entry). So a layer stores
:math:`2r(d_{out} + d_{in}) + r(d_{in} + 1) + 2 d_{out}` numbers whatever its path, and every path trains the same
numbers. That makes a **supernet**: training samples a random path per layer at every forward (:func:`supernet`),
so all sub-networks learn together; afterwards an **evolutionary search** (:func:`evolutionary_search`) picks one
path per layer that maximises validation fitness under a parameter budget, with no retraining.

*The cost of a path* (:func:`parameter_cost`, the code's ``get_param``) is the numbers it reads: ``"lora"`` costs
:math:`r(d_{out} + d_{in})` (C: :math:`r(d_{in} + 1)`), ``"vector"`` :math:`d_{out}` (C: :math:`d_{in}`),
``"constant"`` 1, ``"none"`` 0. The budget constrains the sum over layers.

*Structural re-parameterisation.* :math:`W'` and :math:`b'` depend on the weights only, not on :math:`x`, so once a
path is fixed they are computed once and written into the base layer (:meth:`GloraLinear.merge`,
``handle.unload()``): the searched model is an ordinary network with **no extra inference cost**, whatever path
each layer chose. A base layer **without a bias** gets one when its path produces a bias term (``C`` or ``E`` not
``"none"``): :math:`b' = E + W_0 C`. ``merge`` registers that bias on the base layer and ``unmerge`` removes it
again, so after ``unload`` such a layer is an ``nn.Linear`` *with* a bias. Unmerging restores :math:`W_0` and
:math:`b_0` from a copy taken at merge time: exact, and safe where :math:`1 + A = 0` (a copy of the weights is
held while merged; ``unload`` drops it).

**HF peft compatibility.** peft ≥ 0.20 has GLoRA (``GloraConfig(r, config_A_B, config_C, config_D_E)``): one
fixed path for every layer, no supernet and no search. Our tensor names are peft's: ``glora_A.Xd``,
``glora_A.Xu`` … ``glora_C.Xu``, ``glora_D.X``, ``glora_E.X`` (peft's on-disk key is
``base_model.model.<module path>.glora_A.Xd``). For a ``"lora"`` path and for D/E ``"vector"`` the tensors are the
same; peft's separate ``"vector"`` / ``"constant"`` tensor ``glora_A.X`` is our slice ``glora_A.Xd[:, 0]`` /
``glora_A.Xd[0, 0]``. ``tests/reference/test_glora_vs_peft.py`` checks that the logits agree.

Paper versus code (the released code is ``Arnav0400/ViT-Slim/GLoRA``; HF peft's ``tuners/glora``):

1. *The equation.* The paper writes the layer as :math:`f(x) = (W_0 + W_0 A + B)x + C W_0 + D b_0 + E + b_0`.
   The code computes ``W + W*A + B`` (an element-wise product, so a vector :math:`A` scales rows) and a bias
   ``b + b*D + E + W @ C``, with :math:`C` of shape ``(d_in, 1)``. We follow the code, as peft does.
2. *Weight entanglement vs independent tensors.* The code's ``"vector"`` and ``"constant"`` are slices of the LoRA
   down factor (shared across choices, the supernet's "weight entanglement"); peft creates a separate tensor for
   the one choice of its fixed configuration, so it trains one path, not a supernet. We follow the code;
   the state dicts differ only in that.
3. *Init.* The code initialises the up factors :math:`X_u` with ``xavier_uniform_`` and everything else with zeros
   (we do the same); peft uses ``kaiming_uniform_(a=sqrt(5))`` for :math:`X_u`. Both start at :math:`W_0`.
4. *Layers without a bias.* The code uses :math:`E + W_0 C` as the bias of such a layer (and :math:`D` has no
   effect); we do the same. peft gives a bias-less layer no C, D or E at all.
5. *Several ranks.* The code's LoRA choice is ``"LoRA_<r>"`` and slices :math:`X_d[:, :r]`, so one supernet could
   offer several ranks; it uses a single rank, as we do (``"lora"``, peft's spelling).
6. *Cost.* The code counts :math:`D` on a bias-less layer too, and so do we (a search then learns it buys
   nothing). The code's budget is in millions of parameters and it also has a lower limit; ours is a plain count.
7. *Sampling.* The code draws a path with Python's global ``random.choice`` at every forward; we draw from a
   ``random.Random`` seeded by ``GloraConfig.seed`` and shared by the handle's layers, so runs repeat.
8. *Search.* As in the code (``EvolutionSearcher``): a random population under the budget, then per generation the
   top-k parents (over everything seen so far), per-gene mutation, uniform crossover and random fill, keeping only
   new candidates under the budget (defaults: population 50, 20 generations, 10 parents, 25 mutations with
   probability 0.2, 25 crossovers). The code does not rank its last generation; we do.
9. *Unmerge.* peft recovers :math:`W_0 = (W' - B) / (1 + A)` (inexact, and unbounded where :math:`1 + A \approx
   0`); we keep a copy of :math:`W_0, b_0` while merged.
10. *Targets.* The code wraps every ``nn.Linear`` except the classifier ``head``; ``target_modules=None`` here does
    the same (every plain ``nn.Linear`` except the output layer). peft's default is the attention query and value.
    peft's default rank is 8 (ours too); the released code's supernet defaults to rank 4.

Chapter: Part II, "GLoRA".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.contract import Handle, MethodConfig, check_config, check_target_names, inject

SUPPORT_TENSORS = ("A", "B", "C", "D", "E")
CHOICES = {  # the search space of one layer: 4 * 4 * 3 * 3 * 3 = 432 paths
    "A": ("lora", "vector", "constant", "none"),
    "B": ("lora", "vector", "constant", "none"),
    "C": ("lora", "vector", "none"),
    "D": ("vector", "constant", "none"),
    "E": ("vector", "constant", "none"),
}
DEFAULT_PATH = {"A": "lora", "B": "lora", "C": "lora", "D": "constant", "E": "constant"}  # peft's defaults
OUTPUT_LAYER_NAMES = ("lm_head", "head", "classifier", "score")  # left out when target_modules=None

# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------


def _check_path(path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A complete path: ``path`` (possibly partial) on top of ``base``, every choice checked against CHOICES."""
    if not isinstance(path, Mapping):
        raise ValueError(f"a path is a dict like {DEFAULT_PATH}, got {path!r}.")
    unknown = [k for k in path if k not in SUPPORT_TENSORS]
    if unknown:
        raise ValueError(f"a path names the support tensors {SUPPORT_TENSORS}, not {unknown[0]!r}.")
    full = dict(base or {}, **path)
    missing = [t for t in SUPPORT_TENSORS if t not in full]
    if missing:
        raise ValueError(f"the path {dict(path)} gives no choice for {missing}; e.g. {DEFAULT_PATH}.")
    for tensor in SUPPORT_TENSORS:
        if full[tensor] not in CHOICES[tensor]:
            raise ValueError(f"{tensor}={full[tensor]!r} is not a choice for {tensor}; pick one of {CHOICES[tensor]}.")
    return {t: full[t] for t in SUPPORT_TENSORS}


def _check_choices(choices) -> dict[str, tuple[str, ...]]:
    """The search space: for each support tensor the choices sampling and search may use (default: all)."""
    if not isinstance(choices, Mapping):
        raise ValueError(f"choices maps support tensors to allowed choices, e.g. {{'C': ('none',)}}; got {choices!r}.")
    unknown = [k for k in choices if k not in SUPPORT_TENSORS]
    if unknown:
        raise ValueError(f"choices names the support tensors {SUPPORT_TENSORS}, not {unknown[0]!r}.")
    space = {}
    for tensor in SUPPORT_TENSORS:
        allowed = choices.get(tensor, CHOICES[tensor])
        allowed = (allowed,) if isinstance(allowed, str) else tuple(allowed)
        if not allowed or any(c not in CHOICES[tensor] for c in allowed):
            raise ValueError(f"choices[{tensor!r}]={allowed!r}: give a non-empty subset of {CHOICES[tensor]}.")
        space[tensor] = allowed
    return space


@dataclass
class GloraConfig(MethodConfig):
    """Where GLoRA goes, the rank of its LoRA choices, the starting path and the search space.

    Args:
        r: the rank of every ``"lora"`` choice (a positive integer; peft's default 8).
        target_modules: module names, name suffixes (``"q_proj"``) or regexes, or a list of them; the matching
            ``nn.Linear`` layers are wrapped. ``None``: every plain ``nn.Linear`` except the model's output layer
            (``lm_head`` / ``head`` / ``classifier`` / ``score`` or ``get_output_embeddings()``), as the paper does.
        exclude: names or regexes to leave out even if they match ``target_modules``.
        path: the path every layer starts on, e.g. ``{"A": "lora", "B": "vector", ...}`` (a partial dict fills the
            rest from ``DEFAULT_PATH``, which is peft's default: A, B, C ``"lora"``, D, E ``"constant"``).
        choices: the search space for :func:`supernet` sampling and :func:`evolutionary_search`, per support
            tensor, e.g. ``{"C": ("none",)}`` (tensors not named keep all their choices).
        seed: seeds the generator that samples supernet paths (shared by all layers of one :func:`apply`).
    """

    r: int = 8
    target_modules: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    path: dict = field(default_factory=lambda: dict(DEFAULT_PATH))
    choices: dict = field(default_factory=lambda: dict(CHOICES))
    seed: int = 0

    method = "glora"

    def __post_init__(self):
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"r must be a positive integer (the rank of the LoRA choices), got {self.r!r}; e.g. r=8.")
        check_target_names("target_modules", self.target_modules)
        check_target_names("exclude", self.exclude)
        self.path = _check_path(self.path, DEFAULT_PATH)
        self.choices = _check_choices(self.choices)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}.")


# ------------------------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------------------------


class GloraLowRank(nn.Module):
    r"""One entangled support tensor of shape ``(rows, cols)`` for A, B (``(d_out, d_in)``) or C (``(d_in, 1)``).

    ``Xd`` ``(rows, r)`` starts at zero, ``Xu`` ``(r, cols)`` is ``xavier_uniform_`` (the code's init). The choices
    read: ``"lora"`` :math:`X_d X_u`, ``"vector"`` :math:`X_d[:, 0]` as a column, ``"constant"`` :math:`X_d[0, 0]`.
    """

    def __init__(self, rows: int, cols: int, r: int, **factory):
        super().__init__()
        self.Xd = nn.Parameter(torch.zeros(rows, r, **factory))  # zero: every choice reads zeros at init
        self.Xu = nn.Parameter(torch.empty(r, cols, **factory))
        nn.init.xavier_uniform_(self.Xu)

    def value(self, choice: str) -> torch.Tensor | None:
        if choice == "lora":
            return self.Xd @ self.Xu  # X_d X_u: (rows, r) @ (r, cols) -> (rows, cols)
        if choice == "vector":
            return self.Xd[:, :1]  # X_d[:, 0] as a column, (rows, 1): broadcasts along the columns
        if choice == "constant":
            return self.Xd[0, 0]  # X_d[0, 0]: ()
        return None  # "none"


class GloraVector(nn.Module):
    """The support tensor D or E: ``X`` of shape ``(d_out,)``, zeros. ``"vector"`` is ``X``, ``"constant"`` ``X[0]``."""

    def __init__(self, features: int, **factory):
        super().__init__()
        self.X = nn.Parameter(torch.zeros(features, **factory))

    def value(self, choice: str) -> torch.Tensor | None:
        if choice == "vector":
            return self.X  # X: (d_out,)
        if choice == "constant":
            return self.X[0]  # X[0]: ()
        return None


class GloraLinear(nn.Module):
    r"""``nn.Linear`` with GLoRA: :math:`y = (W_0 + W_0 \odot A + B) x + b_0 + b_0 \odot D + E + W_0 C`.

    The five support tensors live in ``glora_A`` … ``glora_E`` (:class:`GloraLowRank` for A, B, C;
    :class:`GloraVector` for D, E) and are read according to ``self.path``. With ``self.supernet = True`` every
    forward draws a new path from ``self.choices`` with ``self.generator`` instead (it is kept in
    ``self.sampled_path``).

    Args:
        base_layer: the frozen ``nn.Linear`` (kept as ``self.base_layer``).
        r: the rank of the ``"lora"`` choices.
        path: the starting path (default ``DEFAULT_PATH``; a partial dict fills in from it).
        choices: the layer's search space (default: all 432 paths).
        generator: a ``random.Random`` for supernet sampling (``apply`` passes one shared by all layers).
    """

    minipeft_method = "glora"
    adapter_tensor_names = ("glora_A", "glora_B", "glora_C", "glora_D", "glora_E")  # the support tensors
    can_merge = True

    def __init__(self, base_layer: nn.Linear, r: int, path: Mapping[str, str] | None = None,
                 choices: Mapping[str, Sequence[str]] | None = None, generator: random.Random | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"GLoRA wraps nn.Linear layers, not {type(base_layer).__name__}.")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"r must be a positive integer (the rank of the LoRA choices), got {r!r}.")
        self.base_layer = base_layer
        self.r = r
        d_out, d_in = base_layer.out_features, base_layer.in_features
        weight = base_layer.weight
        # The support tensors train, so they are fp32 even on a half-precision base.
        factory = dict(device=weight.device,
                       dtype=weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32)
        self.glora_A = GloraLowRank(d_out, d_in, r, **factory)  # scales W0
        self.glora_B = GloraLowRank(d_out, d_in, r, **factory)  # shifts W0
        self.glora_C = GloraLowRank(d_in, 1, r, **factory)  # a prompt, mapped into the bias by W0
        self.glora_D = GloraVector(d_out, **factory)  # scales b0
        self.glora_E = GloraVector(d_out, **factory)  # shifts b0
        self.path = _check_path(path or {}, DEFAULT_PATH)
        self.choices = _check_choices(choices or {})
        self.generator = generator if generator is not None else random.Random(0)
        self.supernet = False
        self.sampled_path: dict[str, str] | None = None
        self.merged = False
        # While merged: W0 and b0 as they were, so unmerge is exact (a bias merge() had to create is removed).
        self.register_buffer("original_weight", None, persistent=False)
        self.register_buffer("original_bias", None, persistent=False)
        self.added_bias = False

    def sample_path(self, rng: random.Random) -> dict[str, str]:
        """A uniformly random path from this layer's search space (one draw per support tensor)."""
        return {t: rng.choice(self.choices[t]) for t in SUPPORT_TENSORS}

    def effective_weight_and_bias(self, path: Mapping[str, str] | None = None) -> tuple[torch.Tensor,
                                                                                          torch.Tensor | None]:
        r""":math:`W' = W_0 + W_0 \odot A + B` and :math:`b' = b_0 + b_0 \odot D + E + W_0 C` for ``path``
        (default ``self.path``), in the support tensors' dtype; :math:`b'` is ``None`` when there is no bias term."""
        path = self.path if path is None else path
        A, B, C, D, E = (getattr(self, f"glora_{t}").value(path[t]) for t in SUPPORT_TENSORS)
        dtype = self.glora_A.Xd.dtype
        W0 = self.base_layer.weight.to(dtype)  # (d_out, d_in)
        b0 = None if self.base_layer.bias is None else self.base_layer.bias.to(dtype)  # (d_out,)

        weight = W0
        if A is not None:
            weight = weight + W0 * A  # W_0 + W_0 ⊙ A; A: (d_out, d_in), (d_out, 1) or a scalar
        if B is not None:
            weight = weight + B  # W' = W_0 + W_0 ⊙ A + B
        bias = b0
        if b0 is not None and D is not None:
            bias = bias + b0 * D  # b_0 + b_0 ⊙ D; without b_0 this term is zero: D does nothing on a bias-less layer
        if E is not None or C is not None:
            if bias is None:  # a bias-less layer gets the bias E + W0 C
                bias = W0.new_zeros(W0.shape[0])
            if E is not None:
                bias = bias + E  # + E
            if C is not None:
                bias = bias + (W0 @ C).squeeze(-1)  # + W_0 C: (d_out, d_in) @ (d_in, 1) -> (d_out,)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # W' and b' already live in the base layer
            return self.base_layer(x)
        path = self.path
        if self.supernet:  # train every sub-network: a fresh random path per forward
            path = self.sampled_path = self.sample_path(self.generator)
        weight, bias = self.effective_weight_and_bias(path)
        return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)  # y = W' x + b'

    @torch.no_grad()
    def merge(self) -> None:
        r"""Structural re-parameterisation: write :math:`W'` and :math:`b'` of ``self.path`` into the base layer.

        A base layer without a bias gets a (frozen) bias parameter when the path produces one (C or E not
        ``"none"``); :meth:`unmerge` removes it again.
        """
        if self.merged:
            raise ValueError("this GLoRA layer is already merged; merging twice would apply A..E twice. Unmerge first.")
        if self.supernet:
            raise ValueError("this GLoRA layer is in supernet mode (a random path per forward), so there is no single "
                             "W' to merge; call supernet(handle, False) and choose the paths first.")
        weight, bias = self.effective_weight_and_bias()
        base = self.base_layer
        self.original_weight = base.weight.detach().clone()
        self.original_bias = None if base.bias is None else base.bias.detach().clone()
        base.weight.copy_(weight.to(base.weight.dtype))  # W <- W'
        if bias is not None:
            if base.bias is None:
                base.bias = nn.Parameter(bias.to(base.weight.dtype), requires_grad=False)  # b <- b' = E + W_0 C
                self.added_bias = True
            else:
                base.bias.copy_(bias.to(base.bias.dtype))  # b <- b'
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        r"""Put :math:`W_0` and :math:`b_0` back exactly (from the copy merge took), removing a bias merge created."""
        if not self.merged:
            raise ValueError("this GLoRA layer is not merged; there is nothing to unmerge.")
        base = self.base_layer
        base.weight.copy_(self.original_weight)  # W <- W_0
        if self.added_bias:
            base.bias = None
            self.added_bias = False
        elif base.bias is not None:
            base.bias.copy_(self.original_bias)  # b <- b_0
        self.original_weight = self.original_bias = None
        self.merged = False

    def extra_repr(self) -> str:
        path = ", ".join(f"{t}={c}" for t, c in self.path.items())
        return f"r={self.r}, path=({path}), supernet={self.supernet}, merged={self.merged}"


# ------------------------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------------------------


def _default_targets(model: nn.Module) -> list[str]:
    """Every plain ``nn.Linear`` except the output layer (the paper's choice), as exact-name regexes."""
    get_output = getattr(model, "get_output_embeddings", None)
    output_layer = get_output() if callable(get_output) else None
    # type(...) is nn.Linear: subclasses such as nn.MultiheadAttention's out_proj are read by their owner directly.
    names = [n for n, m in model.named_modules() if n and type(m) is nn.Linear and m is not output_layer
             and n.rsplit(".", 1)[-1] not in OUTPUT_LAYER_NAMES]
    if not names:
        raise ValueError(f"GloraConfig.target_modules is None and this {type(model).__name__} has no nn.Linear "
                         "besides its output layer; name the layers to adapt with target_modules.")
    return [re.escape(n) for n in names]


def apply(model: nn.Module, config: GloraConfig | None = None) -> Handle:
    """Wrap the target linear layers of ``model`` with GLoRA in place, freeze everything else, return the handle.

    Args:
        model: any ``nn.Module`` (a ``transformers`` model or a plain one).
        config: a :class:`GloraConfig` (default: ``r=8`` on every linear layer but the output layer, peft's
            default path on each).

    Returns:
        an ``Handle``: ``merge()`` / ``unmerge()`` / ``unload()`` / ``undo()``, and ``state_dict()`` /
        ``load_state_dict()`` for the support tensors (keys ``<path>.glora_A.Xd`` …). The paths are settings, not
        tensors: save :func:`get_paths` beside the weights. Only the support tensors are trainable.

    Raises:
        ValueError: a target that matches no module (the message suggests close names) or a module already wrapped.
    """
    config = GloraConfig() if config is None else config
    config = check_config(config, GloraConfig, GloraConfig)
    targets = _default_targets(model) if config.target_modules is None else config.target_modules
    generator = random.Random(config.seed)  # one generator for all layers: one seeded stream of paths
    # GloraLinear is in the types so that a layer wrapped already is found, and refused by inject.
    handle = inject(model, lambda name, module: GloraLinear(module, config.r, config.path, config.choices, generator),
                    target=targets, types=(nn.Linear, GloraLinear), exclude=config.exclude, method="glora",
                    config=config)
    handle.mark_trainable()  # after injecting, so a failed injection leaves requires_grad untouched too
    return handle


# ------------------------------------------------------------------------------------------------------------------
# Paths, supernet and cost
# ------------------------------------------------------------------------------------------------------------------


def _layers(handle: Handle) -> dict[str, GloraLinear]:
    if not isinstance(handle, Handle) or handle.method != "glora":
        raise ValueError(f"expected the handle from glora.apply(), got {getattr(handle, 'method', handle)!r}.")
    if not handle.wrappers:
        raise ValueError("this GLoRA handle no longer wraps anything (it was undone or unloaded).")
    return dict(handle.wrappers)


def _resolve(handle: Handle, paths) -> dict[str, dict[str, str]]:
    """Every layer's path after applying ``paths``: one (partial) path for all layers, or ``{layer name: path}``
    for some of them; layers not named keep their current path. Checks everything, changes nothing."""
    layers = _layers(handle)
    current = {name: dict(layer.path) for name, layer in layers.items()}
    if paths is None:
        return current
    if not isinstance(paths, Mapping):
        raise ValueError(f"paths must be a path dict or {{layer name: path}}, got {type(paths).__name__}.")
    if paths and all(k in SUPPORT_TENSORS for k in paths):  # one path for every layer
        return {name: _check_path(paths, path) for name, path in current.items()}
    unknown = [n for n in paths if n not in layers]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a GLoRA layer of this model; the layers are e.g. "
                         f"{list(layers)[:3]} ({len(layers)} in all).")
    return {name: _check_path(paths[name], path) if name in paths else path for name, path in current.items()}


def get_paths(handle: Handle) -> dict[str, dict[str, str]]:
    """``{layer name: path}`` for every GLoRA layer (plain strings: JSON-ready, e.g. for ``save_weights`` metadata)."""
    return _resolve(handle, None)


def set_paths(handle: Handle, paths) -> None:
    """Put layers on new paths: ``paths`` is one path for every layer (a partial dict changes only the tensors it
    names, e.g. ``{"C": "none"}``) or ``{layer name: path}`` for some layers. All are checked before any changes."""
    layers = _layers(handle)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("the model is merged with the current paths; unmerge() before choosing new ones.")
    for name, path in _resolve(handle, paths).items():
        layers[name].path = path


def sample_paths(handle: Handle, rng: random.Random | int | None = None) -> dict[str, dict[str, str]]:
    """A random path per layer from each layer's search space (``GloraConfig.choices``); nothing is changed.

    ``rng``: a ``random.Random``, a seed, or ``None`` for the handle's own generator (the supernet's).
    """
    layers = _layers(handle)
    if rng is None:
        rng = next(iter(layers.values())).generator
    elif not isinstance(rng, random.Random):
        rng = random.Random(rng)
    return {name: layer.sample_path(rng) for name, layer in layers.items()}


def supernet(handle: Handle, enabled: bool, seed: int | None = None) -> None:
    """Switch supernet training on (each forward samples a random path per layer) or off (each layer uses its
    ``path``). ``seed`` restarts the shared generator, so the same seed gives the same sequence of paths."""
    layers = _layers(handle)
    if enabled and any(layer.merged for layer in layers.values()):
        raise ValueError("the model is merged; unmerge() before training the supernet.")
    if seed is not None:
        generator = random.Random(seed)
        for layer in layers.values():
            layer.generator = generator
    for layer in layers.values():
        layer.supernet = bool(enabled)
        layer.sampled_path = None


def path_cost(path: Mapping[str, str], in_features: int, out_features: int, r: int) -> int:
    r"""Parameters one layer's path uses: LoRA :math:`r(d_{out}+d_{in})` (C: :math:`r(d_{in}+1)`), vector
    :math:`d_{out}` (C: :math:`d_{in}`), constant 1, none 0 — the code's ``get_param``."""
    path = _check_path(path)
    cost = 0
    for tensor, choice in path.items():
        rows, cols = (in_features, 1) if tensor == "C" else (out_features, in_features)
        cost += {"lora": r * (rows + cols), "vector": rows, "constant": 1, "none": 0}[choice]
    return cost


def parameter_cost(handle: Handle, paths=None) -> int:
    """The total :func:`path_cost` of all layers under ``paths`` (as in :func:`set_paths`; ``None``: the current
    paths). This is the size of the searched sub-network, which is what a budget constrains."""
    layers = _layers(handle)
    return sum(path_cost(path, layers[name].base_layer.in_features, layers[name].base_layer.out_features,
                         layers[name].r) for name, path in _resolve(handle, paths).items())


# ------------------------------------------------------------------------------------------------------------------
# Evolutionary search
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What :func:`evolutionary_search` found.

    Attributes:
        paths: the best ``{layer name: path}`` under the budget (the model is left on it).
        fitness: its fitness. cost: its :func:`parameter_cost`.
        history: the best fitness seen after the random initial population (``history[0]``) and after each
            generation; it never decreases.
        evaluated: how many candidates ``fitness_fn`` scored.
    """

    paths: dict[str, dict[str, str]]
    fitness: float
    cost: int
    history: list[float]
    evaluated: int


def evolutionary_search(handle: Handle, fitness_fn: Callable[[nn.Module], float], budget: float,
                        population: int = 50, generations: int = 20, parents: int = 10, mutations: int = 25,
                        mutation_prob: float = 0.2, crossovers: int = 25, seed: int = 0) -> SearchResult:
    """Search one path per layer that maximises ``fitness_fn(model)`` with :func:`parameter_cost` ≤ ``budget``.

    The released code's algorithm: score a random population of candidates under the budget; then each generation
    takes the ``parents`` best candidates seen so far, makes ``mutations`` children (a random parent, each of its
    genes — one layer's choice for one support tensor — redrawn with probability ``mutation_prob``) and
    ``crossovers`` children (two random parents, each gene from either), fills up to ``population`` with random
    candidates, and scores them. Only *new* candidates under the budget are scored; a candidate's genes come from
    each layer's search space (``GloraConfig.choices``).

    Args:
        handle: the handle from :func:`apply` (not merged). Supernet mode is switched off: every candidate is
            scored on its fixed paths, under ``torch.no_grad()``.
        fitness_fn: ``model -> float``, higher is better (e.g. validation accuracy of the model as it is).
        budget: the most parameters (:func:`parameter_cost`) a candidate may use.
        seed: seeds the search's own ``random.Random``, so a search repeats exactly.

    Returns:
        a :class:`SearchResult`; the model is left on the best paths.
    """
    layers = _layers(handle)
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget >= 0:
        raise ValueError(f"budget must be a number of parameters >= 0, got {budget!r}.")
    for name, value in dict(population=population, parents=parents).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name, value in dict(generations=generations, mutations=mutations, crossovers=crossovers).items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    if not 0 <= mutation_prob <= 1:
        raise ValueError(f"mutation_prob must be a probability in [0, 1], got {mutation_prob!r}.")

    rng = random.Random(seed)
    genes = [(name, tensor) for name in layers for tensor in SUPPORT_TENSORS]
    scores: dict[tuple, float] = {}  # every candidate scored so far, by its genes

    def key(candidate):
        return tuple(candidate[name][tensor] for name, tensor in genes)

    def random_candidate():
        return {name: layer.sample_path(rng) for name, layer in layers.items()}

    def mutate():
        parent = rng.choice(top)
        return {name: {t: rng.choice(layers[name].choices[t]) if rng.random() < mutation_prob else choice
                       for t, choice in path.items()} for name, path in parent.items()}

    def crossover():
        first, second = rng.choice(top), rng.choice(top)
        return {name: {t: rng.choice((first[name][t], second[name][t])) for t in SUPPORT_TENSORS} for name in layers}

    def new_candidates(propose, wanted, tries):
        """Up to ``wanted`` new candidates under the budget from ``propose``, each scored (``tries`` proposals)."""
        found = []
        while len(found) < wanted and tries > 0:
            tries -= 1
            candidate = propose()
            if key(candidate) in scores or parameter_cost(handle, candidate) > budget:
                continue
            set_paths(handle, candidate)
            with torch.no_grad():
                scores[key(candidate)] = float(fitness_fn(handle.model))
            found.append(candidate)
        return found

    supernet(handle, False)
    generation = new_candidates(random_candidate, population, tries=50 * population)
    if not generation:
        raise ValueError(f"no random candidate fits the budget of {budget} parameters in {50 * population} draws; "
                         "raise the budget or narrow GloraConfig.choices (e.g. fewer 'lora' choices).")
    top: list[dict] = []
    history = []
    for step in range(generations + 1):
        # The parents are the best candidates of everything seen so far (the code's keep_top_k).
        top = sorted(top + generation, key=lambda c: scores[key(c)], reverse=True)[:parents]
        history.append(scores[key(top[0])])
        if step == generations:
            break
        generation = new_candidates(mutate, mutations, tries=10 * mutations)
        generation += new_candidates(crossover, crossovers, tries=10 * crossovers)
        generation += new_candidates(random_candidate, population - len(generation), tries=50 * population)

    best = top[0]
    set_paths(handle, best)
    return SearchResult(paths=best, fitness=scores[key(best)], cost=parameter_cost(handle, best), history=history,
                        evaluated=len(scores))

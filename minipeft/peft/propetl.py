r"""ProPETL: one prototype module shared by every layer, and a learned binary mask per layer that picks its part.

**The idea** (Zeng, Zhang & Lu 2023, "One Network, Many Masks: Towards More Parameter-Efficient Transfer
Learning", ACL 2023, arXiv:2305.17682; official code ChaosCodes/ProPETL). An ordinary parameter-efficient method
puts a *separate* small module into every layer: twelve adapters, or twelve pairs of LoRA factors. ProPETL keeps
**one** module, the *prototype* :math:`\theta_{pro}`, and shares it across all layers (and all tasks). What makes
layer :math:`l` different from layer :math:`l'` is a **binary mask** :math:`m_l \in \{0, 1\}^{|\theta_{pro}|}` that
selects a sub-network of the prototype:

$$\theta_l = \theta_{pro} \odot m_l .$$

For a bottleneck adapter (row-vector notation, as in ``minipeft.peft.adapter``) the layer computes

$$h \leftarrow h + s \cdot f\big(h\,(W_{down} \odot M^{l}_{down}) + b_{down}\big)\,(W_{up} \odot M^{l}_{up}) + b_{up},$$

and for LoRA on a weight :math:`W_0` (column-vector notation, as in ``minipeft.peft.lora``)

$$h = W_0 x + \frac{\alpha}{r}\,(B \odot M^{l}_{B})(A \odot M^{l}_{A})\,x .$$

**Learning a binary mask** (the *edge-popup* / *supermask* recipe). A 0/1 mask has no useful gradient, so each mask
is the image of a real-valued **score** tensor :math:`S_l` of the same shape, and the forward pass keeps the fraction
:math:`k` of entries with the largest :math:`|S|`:

$$m_l = \mathrm{TopK}_k(|S_l|) \quad (\mathrm{round}(k \cdot n) \text{ ones among its } n \text{ entries}).$$

The backward pass pretends the top-k was the identity — the **straight-through estimator**:

$$\frac{\partial \mathcal{L}}{\partial S_l} := \frac{\partial \mathcal{L}}{\partial m_l}
= \frac{\partial \mathcal{L}}{\partial \theta_l} \odot \theta_{pro}.$$

An entry whose weight would help gets a growing score and enters the top-k; one that hurts sinks out. Scores and
prototype train together, the scores usually with their own, larger learning rate (:func:`optimizer_groups`). A
consequence of the zero start below: while the up-projection (or LoRA's ``B``) is still zero, the down-projection
(``A``) and *both* masks receive zero gradient — :math:`\partial\mathcal{L}/\partial m = \partial\mathcal{L}/\partial
\theta_l \odot \theta_{pro}` vanishes wherever the prototype or its downstream path is zero — so the prototype's
second factor moves first and the masks follow, exactly as LoRA's ``A`` waits for ``B``.

**Storage, not training memory.** What a trained ProPETL model needs on disk is the prototype in fp32 plus **one bit
per mask entry** (masks are stored as booleans, :func:`export_masks`). The reference's RoBERTa-base example
(Pfeiffer adapter, reduction factor 12, so :math:`d = 768, m = 64`, 12 layers):

* prototype :math:`2 \cdot 768 \cdot 64 + 64 + 768 = 99{,}136` floats = 396,544 bytes;
* masks :math:`12 \cdot 2 \cdot 768 \cdot 64 = 1{,}179{,}648` bits = 147,456 bytes;
* total 544,000 bytes against :math:`12 \cdot 99{,}136 \cdot 4 = 4{,}758{,}528` bytes for twelve ordinary adapters:
  **≈ 11.4%**, the paper's "about 10% of the parameter storage". :func:`storage_report` does this sum for any model.

While *training*, the scores are fp32 tensors as large as the prototype's weights in every layer, so there are
*more* trainable numbers than with ordinary adapters (99,136 + 1,179,648 ≈ 1.28M against 1.19M above). The saving
is in what is stored and shipped per task, not in optimiser memory.

**Tasks.** ``ProPETLConfig(tasks=["sst2", "mnli"])`` gives every layer one score tensor per task and prototype
weight; :func:`set_task` chooses which masks the forward pass uses. All tasks share the one prototype, so a new task
costs only its masks (bits).

**Merging.** With a LoRA prototype the masked update :math:`\frac{\alpha}{r}(B \odot M_B)(A \odot M_A)` is still a
matrix, so it folds into :math:`W_0` exactly as in LoRA (``handle.merge()``, for the task active at the time). An
adapter prototype passes through the non-linearity ``f`` and cannot be folded; ``handle.merge()`` raises.

**Sharing in code.** Every wrapper holds the *same* prototype ``nn.Module`` object, so the same ``Parameter``
tensors: a gradient step on the prototype changes every layer at once. To keep ``state_dict``, safetensors files
and parameter counts from seeing the shared tensors once per layer, the prototype is *registered* as a submodule only
in the first layer that uses it (``<first layer>.prototype.*`` in the state dict); the other layers reach it through
a plain attribute. Targets share a prototype when they have the same shape (``share="shape"``) or, with
``share="name"``, the same shape *and* the same last name component (one prototype for all ``query`` projections,
another for all ``value`` projections — what the official LoRA code does).

Paper versus code (what to know when comparing with the official code: ``propetl-roberta/``, a fork of
adapter-transformers 3.x, and ``propetl-t5/``):

1. *"sparsity" is the kept fraction.* The official config field ``sparsity`` (default 1.0) is the fraction of
   entries **kept**, :math:`k` here, named ``keep_fraction``. Its scripts use :math:`k = 0.5` for ProAdapter
   (Pfeiffer, reduction factor 12), :math:`k = 0.1` for ProLoRA (``r = 32, alpha = 48``) and for ProPrefix.
2. *How many entries are kept.* The official ``GetSubnet`` zeroes the lowest ``int((1 - k) * n)`` entries, i.e.
   keeps ``n - int((1 - k) * n)`` (a ceiling, up to float rounding). We keep ``round(k * n)`` (halves round up),
   at least one; ties in :math:`|S|` go to the lower flat index, so the count is always exact.
3. *Biases are not masked*, in the official adapter (``forward_with_mask``) or here; they are part of the
   prototype's stored floats.
4. *Score init and learning rate.* Scores start from ``kaiming_uniform_(a=sqrt(5))`` (``mask_init="kaiming"``), the
   official choice, i.e. :math:`U(\pm 1/\sqrt{\text{fan-in}})`. Only the *ranking* of :math:`|S|` matters, so the
   score scale relative to the mask learning rate sets how fast masks flip; the official scripts use a separate
   mask lr (3e-3 ProAdapter, 3e-2 ProLoRA, 1e-4 ProPrefix at a base lr of 1e-4; the T5 code a ratio of 10).
   :func:`optimizer_groups` builds the two groups. The straight-through gradient is passed on unchanged, not
   multiplied by :math:`\mathrm{sign}(S)`, although the mask depends on :math:`|S|` — as in the official code.
5. *Task and layer masks.* The RoBERTa code keeps one mask per layer and task, as here. The T5 multitask code keeps
   task masks and layer masks separately and combines them with OR, written :math:`1 - (1 - m_{task})(1 - m_{layer})`
   so it stays differentiable (AND and ADD variants exist too). We do not implement the combination.
6. *Initialisation of the prototype.* We zero the adapter's up-projection (and LoRA's ``B``), so the model is exactly
   the base model at the start, as in ``minipeft.peft.adapter`` and ``minipeft.peft.lora``. The official adapter
   inherits adapter-transformers' initialisation; check it before comparing early-training numbers.
7. *Merging.* The official LoRA code inherits a merge that ignores the masks; ours merges the masked update.
8. *Not here:* the prefix-tuning prototype (ProPrefix, whose shared MLP output is masked per layer), mask
   combination across tasks, and caching the masks at inference (they are recomputed each forward, a sort per mask).

Chapter: Part II, "ProPETL: one network, many masks".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.contract import Handle, MethodConfig, check_config, check_target_names, inject
from ..core.inject import default_targets, find_modules

PROTOTYPES = ("adapter", "lora")
SHARES = ("shape", "name")
MASK_INITS = ("kaiming", "uniform")
NON_LINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
BYTES_PER_FLOAT = 4  # the prototype is stored in fp32, as in the paper's count

# target_modules=None. Adapter: after the FFN's second linear layer (the Pfeiffer placement of the official
# ProAdapter). LoRA: the attention query and value projections (the official ProLoRA).
_BERT_FFN_OUTPUT = r"(.*\.)?layer\.\d+\.output\.dense"  # not attention.output.dense, which also ends in output.dense
DEFAULT_TARGETS = {
    "adapter": {
        **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra"], (_BERT_FFN_OUTPUT,)),
        **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3"], ("mlp.down_proj",)),
    },
    "lora": {
        **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "opt"], ("q_proj", "v_proj")),
        **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra", "vit"], ("query", "value")),
    },
}


# ------------------------------------------------------------------------------------------------------------------
# The mask: top-k of the scores forward, straight through backward
# ------------------------------------------------------------------------------------------------------------------


def kept_count(numel: int, keep_fraction: float) -> int:
    """How many of ``numel`` mask entries are 1: ``round(k * numel)`` with halves rounded up, at least 1."""
    return max(1, min(numel, math.floor(keep_fraction * numel + 0.5)))


class TopKMask(torch.autograd.Function):
    r"""``TopKMask.apply(scores, k)``: a 0/1 tensor shaped like ``scores`` with ones at the ``kept_count(n, k)``
    largest :math:`|S|`; its backward passes the incoming gradient to ``scores`` unchanged (straight through).

    Ties in :math:`|S|` go to the lower flat index (a stable sort), so exactly ``kept_count`` entries are kept even
    when many scores are equal.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep_fraction: float) -> torch.Tensor:
        # m_l = TopK_k(|S_l|): ones at the round(k n) largest |S|, zeros elsewhere
        kept = kept_count(scores.numel(), keep_fraction)
        order = torch.argsort(scores.abs().flatten(), descending=True, stable=True)  # (n,)
        mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)  # (n,)
        mask[order[:kept]] = 1
        return mask.view_as(scores)  # (n,) -> the shape of S

    @staticmethod
    def backward(ctx, grad_mask: torch.Tensor):
        # Straight-through: dL/dS := dL/dm. No gradient for keep_fraction.
        return grad_mask, None


# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------


def _positive_int(name: str, value, hint: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; {hint}")


@dataclass
class ProPETLConfig(MethodConfig):
    r"""A shared prototype, where it goes, and how its masks are learned.

    Args:
        prototype: ``"adapter"`` (a bottleneck adapter after each target ``nn.Linear``: :math:`y + s\,A(y)`) or
            ``"lora"`` (a low-rank update of each target ``nn.Linear``).
        keep_fraction: :math:`k`, the fraction of every mask that is 1, in :math:`(0, 1]` (the official code's
            ``sparsity``). ``1.0`` keeps the whole prototype in every layer.
        reduction_factor: adapter only: bottleneck width ``m = d // reduction_factor``.
        non_linearity: adapter only: ``f``, one of ``"relu"``, ``"gelu"``, ``"silu"``, ``"tanh"``.
        init_std: adapter only: std of the truncated-normal init of the down-projection (the up-projection is 0).
        scaling: adapter only: ``s``, multiplies the adapter's update.
        r: LoRA only: the rank of :math:`BA`.
        alpha: LoRA only: the update is scaled by :math:`\alpha / r`.
        target_modules: names, name suffixes or regexes of the ``nn.Linear`` modules to adapt (``None``: the
            architecture's default, see ``DEFAULT_TARGETS``).
        exclude: names or regexes to leave out even if they match.
        tasks: task names; every layer learns one mask per task over the same prototype. The first is active.
        share: ``"shape"`` (targets of equal shape share one prototype) or ``"name"`` (equal shape and equal last
            name component, e.g. one prototype for all ``query`` and one for all ``value`` projections).
        mask_init: ``"kaiming"`` (``kaiming_uniform_(a=sqrt(5))``, the official init) or ``"uniform"``
            (:math:`U(-1, 1)`, independent of the layer width) for the scores.
    """

    prototype: str = "adapter"
    keep_fraction: float = 0.5
    reduction_factor: int = 16
    non_linearity: str = "relu"
    init_std: float = 1e-2
    scaling: float = 1.0
    r: int = 8
    alpha: float = 8.0
    target_modules: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    tasks: Sequence[str] = ("default",)
    share: str = "shape"
    mask_init: str = "kaiming"

    method = "propetl"

    def __post_init__(self):
        if self.prototype not in PROTOTYPES:
            hint = " (ProPrefix is not implemented here)" if self.prototype == "prefix" else ""
            raise ValueError(f"prototype must be one of {PROTOTYPES}, got {self.prototype!r}{hint}.")
        k = self.keep_fraction
        if not isinstance(k, (int, float)) or isinstance(k, bool) or not 0 < k <= 1:
            raise ValueError(
                f"keep_fraction must be in (0, 1] (the fraction of each mask that is 1), got {k!r}; the official "
                "scripts use 0.5 for an adapter and 0.1 for LoRA. (The official 'sparsity' means the same.)"
            )
        _positive_int("reduction_factor", self.reduction_factor, "the bottleneck width is d // reduction_factor.")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {tuple(NON_LINEARITIES)}, got {self.non_linearity!r}.")
        if not isinstance(self.init_std, (int, float)) or isinstance(self.init_std, bool) or not self.init_std > 0:
            raise ValueError(f"init_std must be a positive number, got {self.init_std!r} (e.g. 1e-2).")
        if not isinstance(self.scaling, (int, float)) or isinstance(self.scaling, bool):
            raise ValueError(f"scaling must be a number, got {self.scaling!r}.")
        _positive_int("r", self.r, "e.g. r=8 (the rank of B A).")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not self.alpha > 0:
            raise ValueError(
                f"alpha must be a positive number (the update is scaled by alpha / r), got {self.alpha!r}."
            )
        check_target_names("target_modules", self.target_modules)
        check_target_names("exclude", self.exclude)
        tasks = [self.tasks] if isinstance(self.tasks, str) else self.tasks
        if (not isinstance(tasks, (list, tuple)) or not tasks
                or not all(isinstance(t, str) and t and "." not in t for t in tasks)):
            raise ValueError(
                f"tasks must be a non-empty list of task names without dots, got {self.tasks!r}; e.g. ['sst2', 'mnli']."
            )
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks lists a task twice: {list(tasks)!r}.")
        self.tasks = tuple(tasks)
        if self.share not in SHARES:
            raise ValueError(f"share must be one of {SHARES}, got {self.share!r}.")
        if self.mask_init not in MASK_INITS:
            raise ValueError(f"mask_init must be one of {MASK_INITS}, got {self.mask_init!r}.")


# ------------------------------------------------------------------------------------------------------------------
# The prototypes (one object per shape group, shared by every layer of the group)
# ------------------------------------------------------------------------------------------------------------------


class AdapterPrototype(nn.Module):
    r"""The shared bottleneck: ``down`` (:math:`W_{down}^\top`, ``(m, d)``, with bias) and ``up`` (:math:`W_{up}^\top`,
    ``(d, m)``, with bias); ``2dm + m + d`` numbers. ``forward(h, masks)`` returns the masked update only."""

    masked = ("down", "up")  # the sub-layers whose weight a layer masks (biases are not masked)

    def __init__(self, d: int, bottleneck: int, non_linearity: str = "relu", init_std: float = 1e-2, **factory):
        super().__init__()
        self.down = nn.Linear(d, bottleneck, **factory)  # W_down^T: (m, d)
        self.act = NON_LINEARITIES[non_linearity]()
        self.up = nn.Linear(bottleneck, d, **factory)  # W_up^T: (d, m)
        nn.init.trunc_normal_(self.down.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # W_up = 0: every masked sub-network is 0, the base model exactly
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        # f(h (W_down ⊙ M_down) + b_down) (W_up ⊙ M_up) + b_up
        z = self.act(F.linear(h, self.down.weight * masks["down"], self.down.bias))  # (..., d) -> (..., m)
        return F.linear(z, self.up.weight * masks["up"], self.up.bias)  # (..., m) -> (..., d)


class LoraPrototype(nn.Module):
    r"""The shared LoRA factors: ``lora_A`` (:math:`A`, ``(r, k)``) and ``lora_B`` (:math:`B`, ``(d, r)``), no biases.
    ``delta_weight(masks)`` is :math:`(B \odot M_B)(A \odot M_A)`, unscaled, shape ``(d, k)``."""

    masked = ("lora_A", "lora_B")

    def __init__(self, in_features: int, out_features: int, r: int, **factory):
        super().__init__()
        self.lora_A = nn.Linear(in_features, r, bias=False, **factory)  # A: (r, k)
        self.lora_B = nn.Linear(r, out_features, bias=False, **factory)  # B: (d, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # B = 0: Delta W = 0 under every mask

    def forward(self, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        after_A = F.linear(x, self.lora_A.weight * masks["lora_A"])  # (A ⊙ M_A) x: (..., k) -> (..., r)
        return F.linear(after_A, self.lora_B.weight * masks["lora_B"])  # (B ⊙ M_B)(A ⊙ M_A) x: (..., r) -> (..., d)

    def delta_weight(self, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        B = self.lora_B.weight.float() * masks["lora_B"].float()  # B ⊙ M_B: (d, r)
        A = self.lora_A.weight.float() * masks["lora_A"].float()  # A ⊙ M_A: (r, k)
        return B @ A  # (B ⊙ M_B)(A ⊙ M_A): (d, k)


# ------------------------------------------------------------------------------------------------------------------
# The per-layer wrappers: a reference to the prototype, and this layer's mask scores for every task
# ------------------------------------------------------------------------------------------------------------------


class MaskedLayer(nn.Module):
    """What both wrappers share: ``base_layer``, the shared ``prototype``, the scores, the active task.

    For every masked prototype weight ``<name>`` (``down``/``up`` or ``lora_A``/``lora_B``) the layer holds
    ``<name>_scores``, an ``nn.ParameterDict`` with one score tensor per task, shaped like that weight.

    Args:
        base_layer: the frozen ``nn.Linear``.
        prototype: the shared :class:`AdapterPrototype` or :class:`LoraPrototype`.
        owns_prototype: register the prototype here (exactly one layer per prototype does), so its parameters
            appear once in ``state_dict`` and in parameter counts; the others keep an unregistered reference.
        tasks, keep_fraction, mask_init: see :class:`ProPETLConfig`.
    """

    minipeft_method = "propetl"

    def __init__(self, base_layer: nn.Linear, prototype: nn.Module, owns_prototype: bool, tasks: Sequence[str],
                 keep_fraction: float, mask_init: str = "kaiming"):
        super().__init__()
        self.base_layer = base_layer
        if owns_prototype:
            self.prototype = prototype  # registered: named <this layer>.prototype.* in the state dict
        else:
            object.__setattr__(self, "prototype", prototype)  # the same object, deliberately not registered again
        self.owns_prototype = owns_prototype
        self.tasks = tuple(tasks)
        self.active_task = self.tasks[0]
        self.keep_fraction = keep_fraction
        for name in prototype.masked:
            weight = getattr(prototype, name).weight
            scores = nn.ParameterDict({task: nn.Parameter(torch.empty_like(weight)) for task in self.tasks})
            for tensor in scores.values():
                if mask_init == "kaiming":  # the official init: U(+-1/sqrt(fan_in))
                    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
                else:
                    nn.init.uniform_(tensor, -1.0, 1.0)
            setattr(self, f"{name}_scores", scores)
        # What trains: the prototype (registered in one layer only, so it is counted once) and this layer's scores.
        self.adapter_tensor_names = ("prototype",) + tuple(f"{name}_scores" for name in prototype.masked)

    def scores(self, name: str, task: str | None = None) -> nn.Parameter:
        """The score tensor of prototype weight ``name`` for ``task`` (default: the active task)."""
        return getattr(self, f"{name}_scores")[task or self.active_task]

    def masks(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """``{name: 0/1 mask}`` for the active task (or ``task``), differentiable (straight through) to the scores."""
        return {name: TopKMask.apply(self.scores(name, task), self.keep_fraction) for name in self.prototype.masked}

    def extra_repr(self) -> str:
        shared = "owns prototype" if self.owns_prototype else "shares prototype"
        return f"keep_fraction={self.keep_fraction}, tasks={self.tasks}, active_task={self.active_task!r}, {shared}"


class MaskedAdapterLayer(MaskedLayer):
    r""":math:`y = \mathrm{base}(x)`; returns
    :math:`y + s \cdot \big[f(y (W_{down} \odot M_{down}) + b_{down}) (W_{up} \odot M_{up}) + b_{up}\big]` with this
    layer's masks for the active task. Cannot be merged (:math:`f` is non-linear)."""

    merged = False
    can_merge = False
    merge_refusal = ("its update f(h W_down) W_up passes through the non-linearity f, so no weight matrix "
                     "reproduces it; use prototype='lora' for a mergeable ProPETL")

    def __init__(self, base_layer: nn.Linear, prototype: AdapterPrototype, owns_prototype: bool,
                 tasks: Sequence[str], keep_fraction: float, mask_init: str = "kaiming", scaling: float = 1.0):
        super().__init__(base_layer, prototype, owns_prototype, tasks, keep_fraction, mask_init)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # y = base(x)
        dtype = self.prototype.down.weight.dtype  # fp32 even on a half-precision base
        # f(y (W_down ⊙ M_down) + b_down)(W_up ⊙ M_up) + b_up, with this layer's masks for the active task
        update = self.prototype(y.to(dtype), self.masks())  # (..., d)
        return y + (self.scaling * update).to(y.dtype)  # y + s · update


class MaskedLoraLinear(MaskedLayer):
    r"""``nn.Linear`` with a masked shared LoRA: :math:`y = W_0 x + b + \frac{\alpha}{r}(B \odot M_B)(A \odot M_A)x`.

    ``merge()`` folds the active task's masked update into ``base_layer.weight``; ``unmerge()`` subtracts it again.
    """

    def __init__(self, base_layer: nn.Linear, prototype: LoraPrototype, owns_prototype: bool, tasks: Sequence[str],
                 keep_fraction: float, mask_init: str = "kaiming", r: int = 8, alpha: float = 8.0):
        super().__init__(base_layer, prototype, owns_prototype, tasks, keep_fraction, mask_init)
        self.scaling = alpha / r
        self.merged = False
        self.can_merge = True

    def delta_weight(self) -> torch.Tensor:
        r""":math:`\frac{\alpha}{r}(B \odot M_B)(A \odot M_A)` for the active task, fp32, shape ``(d, k)``."""
        return self.prototype.delta_weight(self.masks()) * self.scaling  # (alpha / r)(B ⊙ M_B)(A ⊙ M_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # W_0 x + b
        if self.merged:  # the masked update already lives inside W
            return result
        # y = W_0 x + b + (alpha / r)(B ⊙ M_B)(A ⊙ M_A) x
        update = self.prototype(x.to(self.prototype.lora_A.weight.dtype), self.masks())  # (..., d)
        return result + (update * self.scaling).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise ValueError("this ProPETL LoRA layer is already merged; merging twice would add the update twice.")
        weight = self.base_layer.weight
        weight += self.delta_weight().to(weight.dtype)  # W <- W_0 + (alpha / r)(B ⊙ M_B)(A ⊙ M_A)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise ValueError("this ProPETL LoRA layer is not merged; there is nothing to unmerge.")
        weight = self.base_layer.weight
        weight -= self.delta_weight().to(weight.dtype)  # W_0 <- W - (alpha / r)(B ⊙ M_B)(A ⊙ M_A)
        self.merged = False


# ------------------------------------------------------------------------------------------------------------------
# apply, tasks, storage
# ------------------------------------------------------------------------------------------------------------------


def apply(model: nn.Module, config: ProPETLConfig | None = None) -> Handle:
    """Share one prototype per shape group across the target layers, give each layer its masks; freeze the rest.

    Returns:
        an ``Handle`` (method ``"propetl"``): ``state_dict()`` holds each prototype once (under the first layer
        of its group) and every layer's scores; ``merge()`` works for a LoRA prototype and raises for an adapter;
        ``undo()`` restores the model. ``handle.config`` has ``target_modules`` filled in. Only the prototypes
        and the scores are trainable.

    Raises:
        ValueError: a target that matches no ``nn.Linear`` (the message suggests close names), a module already
            wrapped, no default targets for this architecture, or a reduction factor larger than the width.
    """
    config = ProPETLConfig() if config is None else config
    config = check_config(config, ProPETLConfig, ProPETLConfig)
    if config.target_modules is None:
        config = dataclasses.replace(config, target_modules=default_targets(
            model, DEFAULT_TARGETS[config.prototype], "ProPETLConfig", "['fc2']"))

    prototypes: dict[tuple, nn.Module] = {}  # group key -> the one shared prototype of that group

    def make_wrapper(name: str, module: nn.Linear) -> MaskedLayer:
        weight = module.weight
        factory = dict(device=weight.device,
                       dtype=weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32)
        shape = (module.out_features,) if config.prototype == "adapter" else (module.in_features, module.out_features)
        key = (name.rsplit(".", 1)[-1] if config.share == "name" else None, shape)
        owns = key not in prototypes
        if owns:  # the first layer of a group creates (and registers) the prototype; the rest reuse it
            if config.prototype == "adapter":
                d = module.out_features  # a sequential adapter reads the layer's output
                if d // config.reduction_factor < 1:
                    raise ValueError(f"reduction_factor={config.reduction_factor} leaves no bottleneck for width {d} "
                                     f"of {name!r} (m = d // r = 0); use reduction_factor <= {d}.")
                prototypes[key] = AdapterPrototype(d, d // config.reduction_factor, config.non_linearity,
                                                   config.init_std, **factory)
            else:
                prototypes[key] = LoraPrototype(module.in_features, module.out_features, config.r, **factory)
        common = dict(tasks=config.tasks, keep_fraction=config.keep_fraction, mask_init=config.mask_init)
        if config.prototype == "adapter":
            return MaskedAdapterLayer(module, prototypes[key], owns, scaling=config.scaling, **common)
        return MaskedLoraLinear(module, prototypes[key], owns, r=config.r, alpha=config.alpha, **common)

    # MaskedLayer is in the types so that a layer wrapped already is found, and refused by inject ("already wrapped").
    handle = inject(model, make_wrapper, target=config.target_modules, types=(nn.Linear, MaskedLayer),
                    exclude=config.exclude, method="propetl", config=config)
    handle.mark_trainable()  # after injecting, so a failed injection leaves requires_grad untouched
    return handle


def _wrappers(handle: Handle) -> dict[str, MaskedLayer]:
    if not isinstance(handle, Handle) or handle.method != "propetl":
        raise ValueError(f"expected the handle returned by propetl.apply, got {getattr(handle, 'method', handle)!r}.")
    if not handle.wrappers:
        raise ValueError("this ProPETL handle no longer wraps anything (it was undone or unloaded).")
    return dict(handle.wrappers)


def set_task(handle: Handle, task: str) -> None:
    """Make every layer use its masks for ``task`` (one of ``handle.config.tasks``)."""
    wrappers = _wrappers(handle)
    if task not in handle.config.tasks:
        raise ValueError(f"unknown task {task!r}; this ProPETL model has tasks {list(handle.config.tasks)}.")
    if handle.merged:
        raise ValueError("the model is merged with the current task's masks; unmerge() before switching task.")
    for wrapper in wrappers.values():
        wrapper.active_task = task


def prototypes(handle: Handle) -> list[nn.Module]:
    """The distinct shared prototypes, in the order of their first layer."""
    unique: dict[int, nn.Module] = {}
    for wrapper in _wrappers(handle).values():
        unique.setdefault(id(wrapper.prototype), wrapper.prototype)
    return list(unique.values())


def optimizer_groups(handle: Handle, lr: float, mask_lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Two optimiser groups: the prototypes' parameters at ``lr`` and all mask scores at ``mask_lr``."""
    prototype_parameters = [p for proto in prototypes(handle) for p in proto.parameters()]
    scores = [p for w in _wrappers(handle).values() for n, p in w.named_parameters() if "_scores." in n]
    return [{"params": prototype_parameters, "lr": lr, "weight_decay": weight_decay},
            {"params": scores, "lr": mask_lr, "weight_decay": 0.0}]


@dataclass
class StorageReport:
    """What a ProPETL model stores (prototypes in fp32, masks at one bit) against one ordinary module per layer.

    ``unshared_floats`` counts an ordinary, unmasked copy of the prototype in every wrapped layer for every task —
    what plain adapters (or LoRA) would store for the same layers and tasks.
    """

    prototype_floats: int
    mask_bits: int
    layers: int
    tasks: int
    unshared_floats: int

    @property
    def total_bytes(self) -> int:
        return BYTES_PER_FLOAT * self.prototype_floats + math.ceil(self.mask_bits / 8)

    @property
    def unshared_bytes(self) -> int:
        return BYTES_PER_FLOAT * self.unshared_floats

    @property
    def ratio(self) -> float:
        """ProPETL's storage as a fraction of the unshared modules' (≈ 0.114 for the RoBERTa example)."""
        return self.total_bytes / self.unshared_bytes

    @property
    def trainable_floats(self) -> int:
        """Numbers trained: the prototypes plus one fp32 score per mask bit (more than the unshared modules!)."""
        return self.prototype_floats + self.mask_bits

    def __str__(self) -> str:
        prototype_bytes = BYTES_PER_FLOAT * self.prototype_floats
        return (f"ProPETL storage: {self.prototype_floats:,} prototype floats ({prototype_bytes:,} B) + "
                f"{self.mask_bits:,} mask bits ({math.ceil(self.mask_bits / 8):,} B) = {self.total_bytes:,} B "
                f"for {self.layers} layers x {self.tasks} task(s); unshared modules: {self.unshared_bytes:,} B; "
                f"ratio {100 * self.ratio:.1f}%")


def storage_report(handle: Handle) -> StorageReport:
    """Count what must be stored: each prototype once (fp32) and one bit per mask entry, over layers and tasks."""
    wrappers = _wrappers(handle)
    tasks = len(handle.config.tasks)
    prototype_floats = sum(p.numel() for proto in prototypes(handle) for p in proto.parameters())
    mask_bits = sum(w.scores(name, task).numel() for w in wrappers.values() for name in w.prototype.masked
                    for task in w.tasks)
    unshared = tasks * sum(p.numel() for w in wrappers.values() for p in w.prototype.parameters())
    return StorageReport(prototype_floats, mask_bits, len(wrappers), tasks, unshared)


def export_masks(handle: Handle) -> dict[str, torch.Tensor]:
    """The boolean masks of every layer and task — what ProPETL stores besides the prototype.

    Keys are ``<layer>.<weight>_mask.<task>`` (e.g. ``encoder.layer.0.output.dense.down_mask.default``); values are
    ``torch.bool`` tensors shaped like the prototype weight they mask.
    """
    masks = {}
    with torch.no_grad():
        for name, wrapper in _wrappers(handle).items():
            for task in wrapper.tasks:
                for weight, mask in wrapper.masks(task).items():
                    masks[f"{name}.{weight}_mask.{task}"] = mask.bool().cpu()
    return masks


def load_masks(handle: Handle, masks: dict[str, torch.Tensor]) -> None:
    """Set every layer's scores so that the forward pass reproduces ``masks`` (from :func:`export_masks`) exactly.

    A stored mask holds exactly ``kept_count(n, k)`` ones, so scores equal to the mask (1 where kept, 0 elsewhere)
    make the top-k select precisely those entries. All keys, shapes and counts are checked before anything changes.
    """
    wrappers = _wrappers(handle)
    plan = []
    for name, wrapper in wrappers.items():
        for task in wrapper.tasks:
            for weight in wrapper.prototype.masked:
                key = f"{name}.{weight}_mask.{task}"
                if key not in masks:
                    raise ValueError(f"cannot load masks: {key!r} is missing (saved from a different config?).")
                scores, mask = wrapper.scores(weight, task), masks[key]
                if tuple(mask.shape) != tuple(scores.shape):
                    raise ValueError(f"cannot load masks: {key!r} has shape {tuple(mask.shape)}, the layer "
                                     f"{tuple(scores.shape)}.")
                expected = kept_count(scores.numel(), wrapper.keep_fraction)
                if int(mask.sum()) != expected:
                    raise ValueError(f"cannot load masks: {key!r} keeps {int(mask.sum())} entries, but "
                                     f"keep_fraction={wrapper.keep_fraction} keeps {expected}.")
                plan.append((scores, mask))
    extra = sorted(set(masks) - {f"{n}.{w}_mask.{t}" for n, wr in wrappers.items() for t in wr.tasks
                                 for w in wr.prototype.masked})
    if extra:
        raise ValueError(f"cannot load masks: {extra[0]!r} is not part of this ProPETL configuration.")
    with torch.no_grad():
        for scores, mask in plan:
            scores.copy_(mask.to(dtype=scores.dtype, device=scores.device))

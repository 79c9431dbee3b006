r"""LoRA: learn a low-rank *update* of each frozen weight matrix, and fold it back in for free at inference.

**The idea** (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, arXiv:2106.09685).
Fine-tuning changes a pretrained weight :math:`W_0 \in \mathbb{R}^{d \times k}` into :math:`W_0 + \Delta W`. The
paper's hypothesis is that the change needed for a downstream task has a low "intrinsic rank", so it writes the
update as a product of two thin matrices and trains only those:

$$h = W_0 x + \Delta W x = W_0 x + \frac{\alpha}{r} B A x,
\qquad B \in \mathbb{R}^{d \times r},\; A \in \mathbb{R}^{r \times k},\; r \ll \min(d, k).$$

A wrapped ``nn.Linear(k, d)`` gains :math:`r(k + d)` trainable numbers instead of :math:`dk` (for BERT-base with
LoRA on the query and value projections at ``r = 8``: :math:`12 \cdot 2 \cdot 8 \cdot (768 + 768) = 294{,}912`).
For GPT-3 175B the paper reports 10,000 times fewer trainable parameters and a third of the GPU memory of full
fine-tuning.

*Why B starts at zero.* :math:`A` is random and :math:`B = 0`, so :math:`\Delta W = BA = 0` and **the adapted
model is exactly the pretrained model at initialisation**; training starts from the pretrained function. (Both
zero would be a saddle: no gradient would reach either factor. With :math:`B = 0` the gradient of :math:`B` is
:math:`\propto (Ax)^\top`, non-zero, so :math:`B` moves first and :math:`A` follows.)

*The scale* :math:`\alpha / r`. The paper scales the update by :math:`\alpha / r` so that changing ``r`` does not
require re-tuning the learning rate ("we simply set :math:`\alpha` to the first r we try and do not tune it").
**rsLoRA** (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", arXiv:2312.03732)
shows that :math:`\alpha / r` shrinks the update's learning signal as ``r`` grows, so high ranks learn no better than
low ones, and that :math:`\alpha / \sqrt{r}` keeps it rank-stable (``use_rslora=True``).

*Merging.* The update is linear in :math:`x`, so it folds into the weight:

$$W \leftarrow W_0 + \tfrac{\alpha}{r} B A \quad\text{(merge)}, \qquad W_0 \leftarrow W - \tfrac{\alpha}{r} B A
\quad\text{(unmerge)}.$$

After :meth:`LoraLinear.merge` the layer is an ordinary linear layer: **no extra inference latency**, which is what
sets LoRA apart from adapters (whose update passes through a non-linearity and cannot be folded). Unmerging is exact
up to floating-point rounding (the update is added and subtracted in fp32). ``handle.unload()`` merges and puts the
plain base layers back. A merged layer computes only :math:`W x`, so train unmerged.

**Layers.** ``nn.Linear`` (:class:`LoraLinear`), ``nn.Embedding`` (:class:`LoraEmbedding`: the same update on the
lookup table, with :math:`A` applied by indexing — a one-hot ``x`` makes :math:`A x` a column of :math:`A`) and
``nn.Conv2d`` (:class:`LoraConv2d`: :math:`A` is a convolution with the base layer's kernel, :math:`B` a 1×1
convolution, so :math:`BA` is again a kernel of the base layer's shape).

**HF peft compatibility.** Parameter names follow peft's, so a saved file maps onto peft's with a fixed prefix:
our ``<path>.lora_A.weight`` is peft's on-disk key ``base_model.model.<path>.lora_A.weight`` (peft holds
``…lora_A.<adapter name>.weight`` in memory and strips the adapter name when saving); embeddings use
``lora_embedding_A`` / ``lora_embedding_B`` (plain parameters, no ``.weight``). ``minipeft.interop.peft_format``
writes and reads peft's ``adapter_config.json`` + ``adapter_model.safetensors`` folders.

Paper versus code (what to know when comparing with ``loralib`` — the paper's released code — and HF ``peft``):

1. *Init of A.* The paper says "random Gaussian initialization for :math:`A`"; loralib and peft use
   ``kaiming_uniform_(a=sqrt(5))``, the default init of ``nn.Linear`` (our ``init="kaiming"``, the default). peft's
   ``"gaussian"`` option draws :math:`A \sim \mathcal{N}(0, 1/r^2)` (``init="gaussian"`` here). :math:`B = 0` in
   all of them.
2. *Embeddings are the other way round.* loralib and peft initialise an embedding's ``lora_embedding_A`` to zero
   and ``lora_embedding_B`` from :math:`\mathcal{N}(0, 1)` (like ``nn.Embedding``); we do the same, whatever
   ``init`` says. Either way :math:`BA = 0` at the start. peft applies no dropout to embedding LoRA (dropping a
   token id is not meaningful); neither do we.
3. *Dropout.* Not in the paper's equation; loralib and peft apply ``lora_dropout`` to the input of :math:`A` only
   (``B A dropout(x)``), so the frozen path never sees it. Only in ``train()`` mode, like every ``nn.Dropout``.
4. *Defaults.* peft's ``LoraConfig`` defaults to ``r=8, lora_alpha=8`` (scale 1); we keep those, so a config moved
   between the two libraries means the same. Many recipes use ``alpha = 2 r``. With ``target_modules=None`` both
   pick per-architecture defaults (LLaMA: ``q_proj``, ``v_proj``; BERT/ViT: ``query``, ``value``), the paper's
   choice of :math:`W_q, W_v`.
5. *Target matching.* Our names follow ``minipeft.core.find_modules``: an entry matches a module whose name is the
   entry, ends with ``"." + entry``, or fully matches it as a regex. peft treats a *string* as a regex only and a
   *list* as names/suffixes only. :func:`~minipeft.interop.peft_format.export_peft` writes target lists that mean
   the same module set to peft.
6. *Convolutions.* peft builds a Conv2d's ``lora_A`` without the base layer's dilation; we pass dilation (and
   padding mode) on, which is what makes :math:`BA` mergeable into a dilated kernel. Grouped convolutions are
   refused. peft also wraps Conv1d/Conv3d, ``transformers``' GPT-2 ``Conv1D`` (``fan_in_fan_out``) and
   ``nn.MultiheadAttention``; we do not.
7. *What peft has and we leave out:* several adapters on one model, ``rank_pattern`` / ``alpha_pattern``, bias
   training (``bias="all"``; here: ``minipeft.core.unfreeze(model, r"\.bias$")`` after :func:`apply`),
   DoRA and other variants, quantised base layers. :func:`minipeft.interop.peft_format.import_peft` refuses configs
   that use them.

Chapter: Part II, "LoRA".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.contract import (Handle, MethodConfig, check_bool, check_choice, check_config, check_number,
                             check_positive_int, check_probability, inject)
from ..core.inject import default_targets

SUPPORTED_TYPES = (nn.Linear, nn.Embedding, nn.Conv2d)
INITS = ("kaiming", "gaussian")

# target_modules=None: the attention query and value projections, as in the paper (and peft's per-model defaults).
DEFAULT_TARGETS = {
    **dict.fromkeys(["llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "opt", "bart", "clip",
                     "clip_text_model", "clip_vision_model"], ("q_proj", "v_proj")),
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra", "vit", "layoutlm"], ("query", "value")),
}


# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class LoraConfig(MethodConfig):
    r"""Where LoRA goes and how its update is sized and initialised.

    Args:
        r: the rank ``r`` of :math:`\Delta W = BA` (a positive integer; 4-64 is typical).
        alpha: :math:`\alpha` in the scale :math:`\alpha / r` (or :math:`\alpha / \sqrt{r}`). Default 8, peft's
            default, so ``r=8`` gives scale 1.
        dropout: dropout probability on the input of :math:`A` (Linear and Conv2d only), active in ``train()``.
        target_modules: module names, name suffixes (``"q_proj"``) or regexes (``r"layers\.0\..*"``), or a list of
            them; the matching ``nn.Linear`` / ``nn.Embedding`` / ``nn.Conv2d`` modules are wrapped. ``None``: the
            query and value projections of a known ``transformers`` architecture (see ``DEFAULT_TARGETS``).
        exclude: names or regexes to leave out even if they match ``target_modules`` (e.g. ``"lm_head"``).
        use_rslora: scale by :math:`\alpha / \sqrt{r}` (rsLoRA) instead of :math:`\alpha / r`.
        init: ``"kaiming"`` (``kaiming_uniform_(a=sqrt(5))`` on :math:`A`, like ``nn.Linear``, loralib and peft) or
            ``"gaussian"`` (:math:`A \sim \mathcal{N}(0, 1/r^2)`, peft's option); :math:`B = 0` either way.
        bias: only ``"none"`` (biases stay frozen); kept as a field so the config reads like peft's.
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    use_rslora: bool = False
    init: str = "kaiming"
    bias: str = "none"

    method = "lora"
    load_ignores = ("dropout", "init")  # they shape training, not the trained adapter's outputs

    def __post_init__(self):
        super().__post_init__()  # target_modules, exclude
        check_positive_int("r", self.r, hint=" (the rank of B A); e.g. r=8")
        check_number("alpha", self.alpha, low=0, low_inclusive=False,
                     hint=" (the update is scaled by alpha / r); e.g. alpha=8 (scale 1 at r=8) or alpha=2*r")
        check_probability("dropout", self.dropout)
        check_bool("use_rslora", self.use_rslora)
        check_choice("init", self.init, INITS)
        if self.bias != "none":
            raise ValueError(
                f"bias={self.bias!r} is not supported: LoRA here trains only A and B. To train biases as well, call "
                "minipeft.core.unfreeze(model, r'\\.bias$') after apply() and save them with save_trainable."
            )

    @property
    def scaling(self) -> float:
        r""":math:`\alpha / r`, or :math:`\alpha / \sqrt{r}` with rsLoRA."""
        return _scaling(self.r, self.alpha, self.use_rslora)


def _scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r  # alpha / sqrt(r) (rsLoRA) or alpha / r


# ------------------------------------------------------------------------------------------------------------------
# The layers
# ------------------------------------------------------------------------------------------------------------------


class LoraLayer(nn.Module):
    r"""What every LoRA wrapper shares: the frozen ``base_layer``, the scale, and exact merge / unmerge.

    A subclass creates its two factors and implements ``delta_weight()`` — :math:`\frac{\alpha}{r} BA` in the
    shape of ``base_layer.weight``.
    """

    minipeft_method = "lora"
    adapter_tensor_names = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")  # what trains
    can_merge = True

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, use_rslora: bool = False):
        super().__init__()
        check_positive_int("r", r, hint=" (the rank of B A)")
        self.base_layer = base_layer
        self.r = r
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.scaling = _scaling(r, alpha, use_rslora)
        self.merged = False
        weight = base_layer.weight
        # LoRA's factors live beside the base weight, in fp32 even on a half-precision base: they are what trains.
        self._factory = dict(device=weight.device,
                             dtype=weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32)

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        r""":math:`W \leftarrow W_0 + \frac{\alpha}{r} BA`: afterwards the layer computes only the base layer."""
        if self.merged:
            raise ValueError("this LoRA layer is already merged; merging twice would add B A twice. Unmerge first.")
        weight = self.base_layer.weight
        # W <- W_0 + (alpha / r) B A; the product is formed in fp32, then rounded once.
        weight += self.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        r""":math:`W_0 \leftarrow W - \frac{\alpha}{r} BA` (exact up to rounding; the same fp32 product)."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged; there is nothing to unmerge.")
        weight = self.base_layer.weight
        weight -= self.delta_weight().to(weight.dtype)  # W_0 <- W - (alpha / r) B A
        self.merged = False

    def extra_repr(self) -> str:
        rs = ", rsLoRA" if self.use_rslora else ""
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}{rs}, merged={self.merged}"


def _init_A(weight: torch.Tensor, r: int, init: str) -> None:
    if init == "kaiming":
        # nn.Linear's own default (and loralib's / peft's): uniform in +-1/sqrt(fan_in).
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    else:
        nn.init.normal_(weight, std=1 / r)


class LoraLinear(LoraLayer):
    r"""``nn.Linear`` with LoRA: :math:`y = W_0 x + b + \frac{\alpha}{r} B A\, \mathrm{dropout}(x)`.

    ``lora_A`` is ``nn.Linear(k, r)`` (weight :math:`A`, shape ``(r, k)``) and ``lora_B`` is ``nn.Linear(r, d)``
    (weight :math:`B`, shape ``(d, r)``), both without bias — peft's layout and names.

    Args:
        base_layer: the frozen ``nn.Linear`` (kept as ``self.base_layer``).
        r, alpha, dropout, use_rslora, init: see :class:`LoraConfig`.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 init: str = "kaiming"):
        super().__init__(base_layer, r, alpha, use_rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **self._factory)  # A: (r, k)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **self._factory)  # B: (d, r)
        _init_A(self.lora_A.weight, r, init)
        nn.init.zeros_(self.lora_B.weight)  # B = 0: Delta W = 0, the base model exactly

    def delta_weight(self) -> torch.Tensor:
        # Delta W = (alpha / r) B A
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling  # (d, r) @ (r, k) -> (d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # W_0 x + b
        if self.merged:  # B A already lives inside W
            return result
        dtype = self.lora_A.weight.dtype
        # y = W_0 x + b + (alpha / r) B A dropout(x), computed in the factors' dtype and added in the result's.
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(dtype))))  # (..., k) -> (..., r) -> (..., d)
        return result + (update * self.scaling).to(result.dtype)


class LoraEmbedding(LoraLayer):
    r"""``nn.Embedding`` with LoRA: row ``i`` of the table becomes :math:`E_i + \frac{\alpha}{r} (B A)^\top_i`.

    For a token id :math:`i` (a one-hot :math:`x`), :math:`A x` is column :math:`i` of ``lora_embedding_A``, shape
    ``(r, num_embeddings)`` — a lookup, not a matmul — and ``lora_embedding_B`` (``(embedding_dim, r)``) maps it to
    the embedding width. Initialised like loralib and peft: :math:`A = 0`, :math:`B \sim \mathcal{N}(0, 1)`. No
    dropout (see the module docstring).

    Args:
        base_layer: the frozen ``nn.Embedding``.
        r, alpha, use_rslora: see :class:`LoraConfig`.
    """

    def __init__(self, base_layer: nn.Embedding, r: int, alpha: float, use_rslora: bool = False):
        super().__init__(base_layer, r, alpha, use_rslora)
        self.lora_embedding_A = nn.Parameter(torch.zeros(r, base_layer.num_embeddings, **self._factory))
        self.lora_embedding_B = nn.Parameter(torch.randn(base_layer.embedding_dim, r, **self._factory))

    def delta_weight(self) -> torch.Tensor:
        # Delta E = ((alpha / r) B A)^T: the table is stored (num_embeddings, embedding_dim), W transposed.
        return (self.lora_embedding_B.float() @ self.lora_embedding_A.float()).T * self.scaling  # (V, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # E_x
        if self.merged:
            return result
        # A x: looking up column x of A is A times a one-hot vector; padding_idx keeps the padding row's A frozen too.
        after_A = F.embedding(x, self.lora_embedding_A.T, padding_idx=self.base_layer.padding_idx)  # (..., r)
        update = after_A @ self.lora_embedding_B.T * self.scaling  # (alpha / r) B A x: (..., r) -> (..., d)
        # Some embeddings multiply their output by a constant (e.g. Gemma's sqrt(d)); the update is part of the table.
        embed_scale = getattr(self.base_layer, "embed_scale", None)
        if embed_scale is not None:
            update = update * embed_scale
        return result + update.to(result.dtype)


class LoraConv2d(LoraLayer):
    r"""``nn.Conv2d`` with LoRA: :math:`y = W_0 * x + b + \frac{\alpha}{r}\, B * (A * \mathrm{dropout}(x))`.

    ``lora_A`` is a convolution from the input channels to ``r`` channels with the base layer's kernel size, stride,
    padding and dilation; ``lora_B`` is a 1×1 convolution from ``r`` to the output channels. Their composition is one
    convolution with kernel :math:`\Delta W[o, i] = \sum_j B[o, j]\, A[j, i]`, the shape of the base kernel, so it
    merges. Grouped convolutions are not supported.

    Args:
        base_layer: the frozen ``nn.Conv2d`` (``groups=1``).
        r, alpha, dropout, use_rslora, init: see :class:`LoraConfig`.
    """

    def __init__(self, base_layer: nn.Conv2d, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 init: str = "kaiming"):
        if base_layer.groups != 1:
            raise ValueError(
                f"LoRA on a grouped convolution (groups={base_layer.groups}) has no single low-rank update that "
                "merges into its kernel; exclude this layer (LoraConfig(exclude=...))."
            )
        super().__init__(base_layer, r, alpha, use_rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Conv2d(base_layer.in_channels, r, base_layer.kernel_size, base_layer.stride,
                                base_layer.padding, base_layer.dilation, bias=False,
                                padding_mode=base_layer.padding_mode, **self._factory)  # (r, C_in, kh, kw)
        self.lora_B = nn.Conv2d(r, base_layer.out_channels, 1, bias=False, **self._factory)  # (C_out, r, 1, 1)
        _init_A(self.lora_A.weight, r, init)
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        B = self.lora_B.weight.float()[:, :, 0, 0]  # (C_out, r)
        # Delta W[o, i] = (alpha / r) sum_j B[o, j] A[j, i], one (kh, kw) kernel per (o, i)
        return torch.einsum("or,rihw->oihw", B, self.lora_A.weight.float()) * self.scaling  # (C_out, C_in, kh, kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        # y = W_0 * x + b + (alpha / r) B * (A * dropout(x))
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))  # (N, C_out, H', W')
        return result + (update * self.scaling).to(result.dtype)


def make_lora_layer(module: nn.Module, config: LoraConfig) -> LoraLayer:
    """The LoRA wrapper for one ``nn.Linear`` / ``nn.Embedding`` / ``nn.Conv2d`` under ``config``."""
    if isinstance(module, nn.Linear):
        return LoraLinear(module, config.r, config.alpha, config.dropout, config.use_rslora, config.init)
    if isinstance(module, nn.Embedding):
        return LoraEmbedding(module, config.r, config.alpha, config.use_rslora)
    if isinstance(module, nn.Conv2d):
        return LoraConv2d(module, config.r, config.alpha, config.dropout, config.use_rslora, config.init)
    raise TypeError(f"LoRA wraps nn.Linear, nn.Embedding and nn.Conv2d, not {type(module).__name__}.")


# ------------------------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------------------------


def apply(model: nn.Module, config: LoraConfig | None = None) -> Handle:
    """Wrap the target layers of ``model`` with LoRA in place, freeze everything else, and return the handle.

    Args:
        model: any ``nn.Module`` (a ``transformers`` model or a plain one).
        config: a :class:`LoraConfig` (default: ``r=8, alpha=8`` on the architecture's query/value projections).

    Returns:
        a :class:`~minipeft.core.Handle`: ``merge()`` / ``unmerge()`` / ``unload()`` / ``undo()``, ``state_dict()`` /
        ``load_state_dict()`` / ``save()`` / ``load()`` for the LoRA factors (keys ``<path>.lora_A.weight`` …).
        ``handle.config`` is the config with ``target_modules`` filled in. Only the LoRA factors are trainable.

    Raises:
        TypeError: ``config`` is not a :class:`LoraConfig`.
        ValueError: a target that matches no module (the message suggests close names), a module already wrapped,
            no default targets for this architecture, or a grouped convolution.
    """
    config = check_config(config, LoraConfig, LoraConfig)
    if config.target_modules is None:
        config = dataclasses.replace(config, target_modules=default_targets(model, DEFAULT_TARGETS, "LoraConfig",
                                                                             "['q_proj', 'v_proj']"))
    # LoraLayer is in the types so that a layer wrapped already is found, and refused ("already wrapped").
    handle = inject(model, lambda name, module: make_lora_layer(module, config), target=config.target_modules,
                    types=SUPPORTED_TYPES + (LoraLayer,), exclude=config.exclude, method="lora", config=config)
    handle.mark_trainable()  # after wrapping, so a failed injection leaves requires_grad untouched too
    return handle

r"""LLaMA-Adapter v1 and V2: learned prompts read through a zero-initialised, gated attention — and V2's extras.

**v1** (Zhang, Han, Liu, Zhou, Lu, Gao, Li & Qiao 2023, "LLaMA-Adapter: Efficient Fine-tuning of Language Models
with Zero-init Attention", arXiv:2303.16199). Freeze LLaMA. In each of its topmost :math:`L` of :math:`N` layers,
learn an *adaptation prompt* :math:`P_l \in \mathbb{R}^{K \times C}` (``K`` tokens of the model width ``C``). The
word token :math:`t_l` at layer :math:`l` attends to the prompt and to the words before it, :math:`[P_l; T_l; t_l]`,
with two *separate* softmaxes and a gate on the prompt part (the paper's Eqs. 2–8):

$$Q = \mathrm{Linear_q}(t_l),\quad K = \mathrm{Linear_k}([P_l; T_l; t_l]),\quad
V = \mathrm{Linear_v}([P_l; T_l; t_l]),$$

$$S_l = Q K^\top / \sqrt{C} = [S_l^K;\ S_l^{M+1}]^\top,\qquad
S_l^g = [\mathrm{softmax}(S_l^K) \cdot g_l;\ \mathrm{softmax}(S_l^{M+1})]^\top,\qquad
t_l^o = \mathrm{Linear_o}(S_l^g V).$$

The second softmax is the frozen model's own causal attention over the words. The first reads only the ``K``
prompt tokens and is multiplied by the gate :math:`g_l`, which starts at **zero** ("zero-init attention"): at
initialisation the adapted model *is* the pretrained model, exactly, and the random prompts cannot disturb it while
training starts; the gate opens as it learns. "In practice, we adopt multiple :math:`g_l` to be independently learned
for different heads." Per head :math:`h` (head width :math:`d_h`), what this file computes is the frozen attention
plus a gated term, both through the same output projection:

$$t_l^o = \mathrm{Linear_o}\Big(\mathrm{Attn}_h(t_l, T_l) + \gamma(g_{l,h})\,
\mathrm{softmax}\big(q_h\, (P_l W_k)_h^\top / \sqrt{d_h}\big)\,(P_l W_v)_h\Big)_{h=1..H},
\qquad \gamma \in \{\tanh, \mathrm{id}\}.$$

*Cost.* :math:`K L C` prompt numbers plus :math:`L H` gates. At LLaMA-7B's shape (:math:`C = 4096`, 32 heads) with
the paper's ``K = 10, L = 30``: :math:`1{,}228{,}800 + 960 = 1{,}229{,}760`, the paper's "1.2M parameters"
(``minipeft.multimodal.llama_adapter_v2.count_llama_adapter_parameters`` reproduces it on the meta device).

**How it plugs in.** :func:`apply` wraps the top ``L`` ``self_attn`` modules in :class:`AdaptedAttention`
(``minipeft.core.inject``; the original attention stays in ``base_layer``). The wrapper runs the frozen attention,
recomputes the rotated queries :math:`q`, projects the prompt with the layer's own ``k_proj`` / ``v_proj`` and adds
the gated term through ``o_proj``. The prompt's keys and values are recomputed on every call and read with their own
softmax, so the term depends only on the current token's query: nothing goes into the key/value cache, and
``model.generate`` (with or without the cache) works unchanged. With grouped-query attention (SmolLM2: 9 query heads,
3 key/value heads) ``k_proj`` / ``v_proj`` give the prompt ``H_kv`` heads, each shared by its group of query heads,
exactly as the frozen attention shares the words' keys and values.

**V2** (Gao, Han, Zhang, Lin, Geng, Zhou, Zhang, Lu, He, Yue, Li & Qiao 2023, "LLaMA-Adapter V2: Parameter-Efficient
Visual Instruction Model", arXiv:2304.15010) keeps v1's prompts and adds (:class:`LlamaAdapterV2Config`):

(a) *Unlocked norms*: every RMSNorm weight of LLaMA trains.

(b) *Bias tuning*: every linear layer gets a bias and a scale (the paper's Eqs. 1–2),
:math:`y = W x \;\rightarrow\; y = s \odot (W x + b)`, with :math:`b = 0,\ s = 1` at init, so again the model is
unchanged at the start (:class:`BiasScaleLinear`). This part *can* be merged:
:math:`W' = \mathrm{diag}(s) W,\ b' = s \odot (b_0 + b)` (:meth:`LlamaAdapterHandle.merge_linear`). The prompts
cannot (they are extra attention inputs, not a weight change): :meth:`LlamaAdapterHandle.merge` says so.

(c) *Early fusion*: the visual tokens (a learned projection of a frozen image encoder's features,
:class:`minipeft.multimodal.VisualProjection`) enter only the **early** layers, through the same zero-init gated
attention, while the static adaptation prompts sit in the top layers — the two never share a layer.

(d) *Joint training with disjoint parameters*: image–text data trains the visual projection and the early gated
attention; instruction data trains the late prompts and gates, the norms, biases and scales.
``minipeft.multimodal.llama_adapter_v2`` holds this Part III side of V2: ``apply`` with the visual projection,
``disjoint_groups`` (the two groups) and ``joint_train`` (one batch of each kind per step, or, for the ablation, both
kinds of batch on every tensor: ``disjoint=False``). This file, Part II, never imports it.

Give the model its image with ``handle.set_visual_features(features)`` (until changed) or
``with handle.visual_features(features): ...``. Each layer that reads the image projects it inside its own forward
(once per call with the paper's single visual layer; once per top layer with ``fusion="add"``), so the visual path has
no state outside the layers: ``generate``, direct calls of ``model.model`` and gradient checkpointing all just work.
Without features the visual path contributes nothing, so the same model trains on text-only data.

Paper versus code (what a reader comparing numbers should know):

1. *The gate.* The paper's Eq. (7) multiplies by :math:`g_l` itself. The official v1 *training* code multiplies by
   ``tanh(g)`` per head (``alpaca_finetuning_v1``), its *inference* code by the raw ``g``; HF peft's
   ``adaption_prompt`` uses one raw scalar per layer. ``gate="tanh"`` (default, the training code: the gate stays in
   (-1, 1)) or ``"raw"``; ``gate_per_head=False`` gives peft's single gate. All give zero at init. With every head's
   gate equal to ``g``, ``raw`` equals peft with gate ``g`` and ``tanh`` equals peft with gate ``tanh(g)``
   (``tests/reference/test_llama_adapter_vs_peft.py``).
2. *No positions on the prompt.* The prompt's keys are not rotated by RoPE (official code and peft); the queries
   are. The prompt goes into ``k_proj`` / ``v_proj`` as it is, without the layer's RMSNorm (official code, peft).
3. *One output projection.* The official code applies ``Linear_o`` once to the sum of both attention outputs. peft
   computes ``o_proj(attention) + o_proj(adapter)``, which counts a bias of ``o_proj`` twice; LLaMA's ``o_proj`` has
   none, so the two agree there. We add the adapter term as ``o_proj(a) - o_proj(0)`` — the linear part of an affine
   ``o_proj`` — which is the official sum also when ``o_proj`` has a bias (``attention_bias=True``, or V2's ``b``).
4. *Prompt init.* :math:`P_l \sim \mathcal{N}(0, 1)` (the official ``nn.Embedding``, and peft). Because
   :math:`g_l = 0`, the prompts get no gradient in the very first step; the gates move first and the prompts follow.
5. *Where V2's scale sits.* The paper and litgpt scale the output channels, :math:`s \odot (W x + b)`
   (``scale_on="output"``, default). The official chat-65B code scales the *input* channels, :math:`W (s \odot x) + b`
   (``scale_on="input"``); its multimodal-7B code has biases only (on ``wq, wo, w1, w2, w3``) and no scale. Here both
   go on every linear layer of every decoder layer (``q, k, v, o, gate, up, down``), not on ``lm_head``.
6. *V2's parameter figures.* The abstract's "14M parameters over LLaMA" (LLaMA-65B chatbot) is the bias + scale +
   norm count with the *code's* input-channel scales: :math:`80(13 \cdot 8192 + 3 \cdot 22016) + 8192 = 13{,}811{,}712`.
   The paper's own output-channel formula gives :math:`80(12 \cdot 8192 + 4 \cdot 22016) + 8192 = 14{,}917{,}632`.
   At LLaMA-7B the two give 2,764,800 and 2,985,984; neither is the paper's "0.04% (~5M)" of LLaMA-7B (0.04% of 7B
   is 2.8M, so the paper's two numbers already disagree). The prompts come on top of these.
7. *Early fusion, paper versus release.* The paper puts the visual tokens into the **first** layer and the static
   prompts into the **last 31** of LLaMA-7B's 32 (``fusion="early"``, ``visual_layers=1``; ``adapter_layers=None``
   fills every layer not taken by the visual prompt). The released multimodal-7B code instead **adds** the visual
   tokens to the static prompts of the last 31 layers (``dynamic_adapter = adapter_query + visual_query``), as v1
   did on ScienceQA (``fusion="add"``; ``visual_len`` must then be ``adapter_len`` or 1, the latter v1's
   :math:`P_l + \mathrm{Repeat}(I_p)`).
8. *The disjoint groups.* The paper trains "the visual projection layers and the early zero-initialized attention
   with gating" on image–text pairs and "the late adaptation prompts with zero gating, the unfrozen norm, newly added
   bias and scale" on instructions (``fusion="early"``). In the released code's pre-training phase *all* adapter
   prompts and gates train with the visual modules, and norms and biases in the fine-tuning phase; that is the
   split ``disjoint_groups`` returns for ``fusion="add"``.
9. *Left out.* The visual encoder's 8 ViT blocks (see ``minipeft.multimodal.visual_prompt``), V2's optional LoRA
   (apply ``minipeft.peft.lora`` before this method if wanted), and the captioning/OCR "expert models" that V2 adds at
   inference (they only write text into the prompt).

Chapter: Part III, "LLaMA-Adapter v1 and V2".
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.contract import (Handle, MethodConfig, check_bool, check_choice, check_config, check_positive_int,
                             inject)
from ..core.inject import find_modules, is_wrapper

VISUAL_ATTRIBUTE = "minipeft_visual"  # where the visual projection lives inside the model
GATES = ("tanh", "raw")
SCALE_SIDES = ("output", "input")
FUSIONS = ("early", "add")


# ------------------------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class LlamaAdapterConfig(MethodConfig):
    r"""LLaMA-Adapter v1: ``adapter_len`` prompt tokens in each of the top ``adapter_layers`` layers, zero-init gates.

    Args:
        adapter_len: prompt length ``K`` (paper: 10).
        adapter_layers: how many layers, counted from the top, get a prompt (``L``; paper: 30 of LLaMA-7B's 32).
            ``None``: every layer (V2 with early fusion: every layer not taken by the visual prompt).
        gate: ``"tanh"`` (the official training code: :math:`\tanh(g)`) or ``"raw"`` (the paper's equation, the
            official inference code and peft: :math:`g`).
        gate_per_head: one gate per attention head (paper, official code) or one per layer (peft).
    """

    adapter_len: int = 10
    adapter_layers: int | None = None
    gate: str = "tanh"
    gate_per_head: bool = True

    method = "llama_adapter"

    def __post_init__(self):
        check_positive_int("adapter_len", self.adapter_len, hint="; the paper uses 10 prompt tokens per layer")
        check_positive_int("adapter_layers", self.adapter_layers, allow_none=True,
                           hint=" (how many layers, counted from the top, get a prompt; None = all)")
        check_choice("gate", self.gate, GATES)
        check_bool("gate_per_head", self.gate_per_head)


@dataclass
class LlamaAdapterV2Config(LlamaAdapterConfig):
    r"""LLaMA-Adapter V2: v1's prompts plus trainable norms, bias and scale on every linear layer, and visual prompts.

    Args:
        adapter_len, adapter_layers, gate, gate_per_head: as in :class:`LlamaAdapterConfig` (the static prompts).
        train_norms: unfreeze every RMSNorm / LayerNorm weight of the language model.
        bias_scale: wrap every linear layer of every decoder layer in :class:`BiasScaleLinear`.
        scale_on: ``"output"`` (the paper: :math:`s \odot (Wx + b)`) or ``"input"`` (the official chat-65B code:
            :math:`W(s \odot x) + b`).
        visual_dim: width ``C`` of the image features fed to the default :class:`VisualProjection` (EfficientNet-Lite0:
            1280). ``None``: no visual path (unless ``apply`` gets a ``visual_projection`` module).
        visual_len: number of visual prompt tokens the projection produces.
        visual_layers: how many layers, counted from the bottom, read the visual prompt (``fusion="early"``; paper: 1).
        fusion: ``"early"`` (the paper: visual tokens only in the early layers, static prompts only in the top ones)
            or ``"add"`` (the released code and v1: visual tokens added to the top layers' static prompts).
    """

    train_norms: bool = True
    bias_scale: bool = True
    scale_on: str = "output"
    visual_dim: int | None = None
    visual_len: int = 10
    visual_layers: int = 1
    fusion: str = "early"

    method = "llama_adapter_v2"

    def __post_init__(self):
        super().__post_init__()
        check_bool("train_norms", self.train_norms)
        check_bool("bias_scale", self.bias_scale)
        check_choice("scale_on", self.scale_on, SCALE_SIDES)
        check_positive_int("visual_dim", self.visual_dim, allow_none=True,
                           hint=" (the image encoder's feature width, e.g. 1280 for EfficientNet-Lite0)")
        check_positive_int("visual_len", self.visual_len)
        check_positive_int("visual_layers", self.visual_layers)
        check_choice("fusion", self.fusion, FUSIONS)
        if self.fusion == "add" and self.visual_len not in (1, self.adapter_len):
            raise ValueError(
                f"fusion='add' adds the visual tokens to the {self.adapter_len} prompt tokens, so visual_len must be "
                f"adapter_len ({self.adapter_len}) or 1 (one token repeated, as in v1), got {self.visual_len}."
            )


# ------------------------------------------------------------------------------------------------------------------
# The layers
# ------------------------------------------------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation in the half-split layout LLaMA uses in ``transformers``: ``(x1, x2) -> (-x2, x1)``."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., hd/2) each
    return torch.cat([-x2, x1], dim=-1)  # (..., hd)


class _VisualInput:
    """The current image features and the projection that turns them into visual tokens, shared by the handle
    (which sets the features) and the wrappers (which read them).

    A plain object, not a module, so the projection it points to is not registered twice in the model.
    """

    def __init__(self, projection: nn.Module):
        self.projection = projection
        self.features: Any = None  # what set_visual_features() received

    def tokens_for(self, batch: int) -> torch.Tensor | None:
        """The visual tokens ``(batch or 1, n, d)`` for a layer whose input has ``batch`` rows, or ``None``."""
        if self.features is None:
            return None
        # Projected here, inside the reading layer's forward and never cached across calls: a cached tensor would
        # outlive its autograd graph, and gradient checkpointing re-runs a layer expecting the same computation.
        tokens = self.projection(self.features)  # (B_img, n, d)
        rows = tokens.shape[0]
        if rows in (1, batch):
            return tokens
        if batch % rows == 0:  # generate(num_beams=k / num_return_sequences=k) repeats each row k times
            return tokens.repeat_interleave(batch // rows, dim=0)  # (batch, n, d)
        raise ValueError(f"the image features have batch size {rows} but the text batch has {batch} rows; give one "
                         "image per row (or a single image for the whole batch).")


class AdaptedAttention(nn.Module):
    r"""A frozen LLaMA attention plus the zero-init gated attention over an adaptation prompt.

    $$\mathrm{out} = \mathrm{attention}(x) + \mathrm{Linear_o}\Big(\gamma(g)\,
    \mathrm{softmax}\big(q\, (P W_k)^\top / \sqrt{d_h}\big)\, P W_v\Big)$$

    ``adaption_prompt`` is :math:`P` ``(K, d)`` (absent when ``adapter_len=0``: a V2 early layer, whose prompt is
    the visual tokens); ``adaption_gate`` is :math:`g`, ``(H,)`` per head or ``(1,)``, zero at init. With
    ``visual`` set, the visual tokens of the current call are the prompt (``adapter_len=0``, early fusion) or are
    added to it (``fusion="add"``).

    Args:
        base_layer: the frozen attention module (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``; called as in
            ``transformers``, with ``position_embeddings=(cos, sin)``).
        adapter_len: ``K``; 0 for a layer that only reads the visual tokens.
        num_heads, num_kv_heads, head_dim, hidden_size: the attention's shape.
        gate: ``"tanh"`` or ``"raw"``; gate_per_head: ``H`` gates or one.
    """

    minipeft_method = "llama_adapter"
    adapter_tensor_names = ("adaption_prompt", "adaption_gate")
    can_merge = False
    merge_refusal = ("its adaptation prompts (and visual tokens) are extra inputs to the attention, not a change of "
                     "any weight; V2's biases and scales alone fold into the linear layers: handle.merge_linear()")

    def __init__(self, base_layer: nn.Module, adapter_len: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 hidden_size: int, gate: str = "tanh", gate_per_head: bool = True,
                 visual: _VisualInput | None = None):
        super().__init__()
        missing = [p for p in ("q_proj", "k_proj", "v_proj", "o_proj") if not hasattr(base_layer, p)]
        if missing:
            raise TypeError(f"AdaptedAttention wraps a LLaMA-style attention with q/k/v/o projections; "
                            f"{type(base_layer).__name__} has no {missing[0]}.")
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} key/value heads evenly.")
        check_choice("gate", gate, GATES)
        self.base_layer = base_layer
        self.adapter_len = adapter_len
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.gate = gate
        self._visual = visual
        weight = base_layer.q_proj.weight if hasattr(base_layer.q_proj, "weight") else next(base_layer.parameters())
        # The prompt and gate train, so they stay in fp32 on a half-precision base (cast per call).
        factory = dict(device=weight.device,
                       dtype=weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32)
        if adapter_len:
            # N(0, 1), like the official nn.Embedding (and peft).
            self.adaption_prompt = nn.Parameter(torch.randn(adapter_len, hidden_size, **factory))  # P: (K, d)
        else:
            self.adaption_prompt = None
        # Zero: the gated term vanishes and the layer is the frozen attention, exactly.
        self.adaption_gate = nn.Parameter(torch.zeros(num_heads if gate_per_head else 1, **factory))  # g

    def prompt(self, batch: int) -> torch.Tensor | None:
        """This call's prompt: ``(K, d)`` static, ``(B or 1, K, d)`` with visual tokens, or ``None`` (nothing to
        read: an early layer called without image features)."""
        prompt = self.adaption_prompt
        tokens = self._visual.tokens_for(batch) if self._visual is not None else None
        if tokens is None:
            return prompt
        # fusion="add": P_l + visual tokens (broadcast over K for a single token); early fusion: the tokens alone.
        return tokens if prompt is None else prompt + tokens  # (B, K, d)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        result = self.base_layer(hidden_states, *args, **kwargs)  # Linear_o(Attn_h(t_l, T_l)): the frozen attention
        output = result[0] if isinstance(result, tuple) else result  # (B, T, d)
        B, T, _ = hidden_states.shape
        prompt = self.prompt(B)
        if prompt is None:
            return result
        position_embeddings = kwargs.get("position_embeddings", args[0] if args else None)
        if position_embeddings is None:
            raise ValueError("the attention was called without position_embeddings=(cos, sin); this wrapper needs a "
                             "transformers version whose decoder layers pass them (>= 4.48).")
        attention = self.base_layer
        H, H_kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        dtype = hidden_states.dtype

        # The words' queries, rotated as in the frozen attention (the prompt's keys are not: they have no position).
        q = attention.q_proj(hidden_states).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        cos, sin = position_embeddings  # (B, T, hd) each
        q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)  # RoPE(q); cos, sin -> (B, 1, T, hd)

        # The prompt's keys and values, from the layer's own (frozen) projections.
        prompt = prompt.to(dtype)
        if prompt.dim() == 2:
            prompt = prompt.unsqueeze(0)  # (1, K, d): the same prompt for every row
        P_rows, K = prompt.shape[:2]
        # (P W_k)_h and (P W_v)_h
        k = attention.k_proj(prompt).view(P_rows, K, H_kv, hd).transpose(1, 2)  # (P_rows, H_kv, K, hd)
        v = attention.v_proj(prompt).view(P_rows, K, H_kv, hd).transpose(1, 2)  # (P_rows, H_kv, K, hd)
        # Grouped-query attention: query head h reads key/value head h // (H / H_kv).
        k = k.repeat_interleave(H // H_kv, dim=1)  # (P_rows, H, K, hd)
        v = v.repeat_interleave(H // H_kv, dim=1)  # (P_rows, H, K, hd)

        # softmax(S^K) over the K prompt tokens only, separate from the words' softmax; then the gate.
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # S^K = q_h (P W_k)_h^T / sqrt(d_h): (B, H, T, K)
        probabilities = F.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)  # softmax(S^K)
        gate = self.adaption_gate.tanh() if self.gate == "tanh" else self.adaption_gate  # gamma(g), tanh or identity
        gated = gate.to(dtype).view(1, -1, 1, 1) * probabilities  # (B, H, T, K) * (1, H or 1, 1, 1)
        # gamma(g_h) softmax(S^K) (P W_v)_h for every head h, heads concatenated
        heads = (gated @ v).transpose(1, 2).reshape(B, T, H * hd)  # (B, H, T, hd) -> (B, T, H, hd) -> (B, T, H*hd)

        # Linear_o(S^g V) is applied to the sum of both attention outputs: adding o_proj's *linear* part of the
        # adapter heads, o(a) - o(0), to o(attention) is that sum even when o_proj has a bias (V2's b).
        o_proj = attention.o_proj
        adapter = o_proj(heads) - o_proj(heads.new_zeros(heads.shape[-1]))  # (B, T, d)
        output = output + adapter  # t^o = Linear_o(Attn_h(t_l, T_l) + gated prompt term)
        return (output, *result[1:]) if isinstance(result, tuple) else output

    def extra_repr(self) -> str:
        visual = ", visual" if self._visual is not None else ""
        gates = f"{self.adaption_gate.numel()} gate{'s' if self.adaption_gate.numel() > 1 else ''}"
        return f"adapter_len={self.adapter_len}, {gates} ({self.gate}){visual}"


class BiasScaleLinear(nn.Module):
    r"""V2's bias tuning of a frozen linear layer: :math:`y = s \odot (Wx + b_0 + b)` or :math:`W(s \odot x) + b_0 + b`.

    ``adapter_bias`` :math:`b` starts at zeros and ``adapter_scale`` :math:`s` at ones, so the layer equals its
    base layer at initialisation (exactly: :math:`1 \cdot (y + 0) = y`). ``scale_on="output"`` (the paper): ``s`` has
    ``out_features`` entries; ``"input"`` (the official chat-65B code): ``in_features`` entries. Both are kept in
    fp32 on a half-precision base.

    Merging folds both into the weights (:math:`b_0` is the base layer's own bias, zero in LLaMA):

    $$\text{output: } W' = \mathrm{diag}(s)\,W,\ b' = s \odot (b_0 + b);\qquad
    \text{input: } W' = W\,\mathrm{diag}(s),\ b' = b_0 + b.$$

    A base layer without a bias gets one while merged (frozen), and loses it again on unmerge. Unmerging divides by
    the merged ``s``: exact up to rounding, impossible where an entry of ``s`` is zero (it raises instead).
    """

    minipeft_method = "llama_adapter_v2"
    adapter_tensor_names = ("adapter_bias", "adapter_scale")
    can_merge = True

    def __init__(self, base_layer: nn.Linear, scale_on: str = "output"):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"BiasScaleLinear wraps an nn.Linear, got {type(base_layer).__name__}.")
        check_choice("scale_on", scale_on, SCALE_SIDES)
        self.base_layer = base_layer
        self.scale_on = scale_on
        weight = base_layer.weight
        factory = dict(device=weight.device,
                       dtype=weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32)
        width = base_layer.out_features if scale_on == "output" else base_layer.in_features
        self.adapter_bias = nn.Parameter(torch.zeros(base_layer.out_features, **factory))  # b = Init(0)
        self.adapter_scale = nn.Parameter(torch.ones(width, **factory))  # s = Init(1)
        self.merged = False
        self._merged: tuple[torch.Tensor, torch.Tensor, bool] | None = None  # (s, b, bias created) at merge time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # s and b already live in W and the base bias
            return self.base_layer(x)
        if self.scale_on == "output":
            y = self.base_layer(x)  # W x + b_0
            return ((y + self.adapter_bias) * self.adapter_scale).to(y.dtype)  # y = s ⊙ (W x + b_0 + b)
        y = self.base_layer((x * self.adapter_scale).to(x.dtype))  # W (s ⊙ x) + b_0
        return (y + self.adapter_bias).to(y.dtype)  # y = W (s ⊙ x) + b_0 + b

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``s`` and ``b`` into the base layer (see the class docstring)."""
        if self.merged:
            raise ValueError("this bias/scale layer is already merged; merging again would apply s and b twice.")
        weight = self.base_layer.weight
        scale, bias = self.adapter_scale.detach().clone(), self.adapter_bias.detach().clone()
        created = self.base_layer.bias is None
        if created:
            self.base_layer.bias = nn.Parameter(torch.zeros_like(weight[:, 0]), requires_grad=False)  # b_0 = 0
        base_bias = self.base_layer.bias
        if self.scale_on == "output":
            weight.copy_((weight * scale[:, None]).to(weight.dtype))  # W' = diag(s) W: (out, in) * (out, 1), rows
            base_bias.copy_(((base_bias + bias) * scale).to(base_bias.dtype))  # b' = s ⊙ (b_0 + b)
        else:
            weight.copy_((weight * scale[None, :]).to(weight.dtype))  # W' = W diag(s): (out, in) * (1, in), columns
            base_bias.copy_((base_bias + bias).to(base_bias.dtype))  # b' = b_0 + b
        self._merged = (scale, bias, created)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the merged ``s`` and ``b`` back out of the base layer (exact up to rounding)."""
        if not self.merged:
            raise ValueError("this bias/scale layer is not merged; there is nothing to unmerge.")
        self.check_unmergeable()
        scale, bias, created = self._merged
        weight, base_bias = self.base_layer.weight, self.base_layer.bias
        if self.scale_on == "output":
            weight.copy_((weight / scale[:, None]).to(weight.dtype))  # W = diag(s)^-1 W': (out, in) / (out, 1)
            base_bias.copy_((base_bias / scale - bias).to(base_bias.dtype))  # b_0 = b' / s - b
        else:
            weight.copy_((weight / scale[None, :]).to(weight.dtype))  # W = W' diag(s)^-1: (out, in) / (1, in)
            base_bias.copy_((base_bias - bias).to(base_bias.dtype))  # b_0 = b' - b
        if created:
            self.base_layer.bias = None
        self._merged = None
        self.merged = False

    def check_unmergeable(self) -> None:
        """Raise ``ValueError`` if the merged scale has a zero entry (its row/column of ``W`` cannot be recovered)."""
        if self.merged and bool((self._merged[0] == 0).any()):
            raise ValueError("cannot unmerge: the merged scale s has zero entries, so their rows/columns of W were "
                             "multiplied by 0 and cannot be recovered by division. Reload the base weights instead.")

    def extra_repr(self) -> str:
        return f"scale_on={self.scale_on}, merged={self.merged}"


# ------------------------------------------------------------------------------------------------------------------
# The handle
# ------------------------------------------------------------------------------------------------------------------


class LlamaAdapterHandle(Handle):
    """What :func:`apply` returns: a :class:`~minipeft.core.Handle` (wrapped attentions and linear layers, the unlocked
    norms, the attached visual projection) plus what LLaMA-Adapter alone needs:

    * ``merge()`` refuses (a prompt is not a weight update); ``merge_linear()`` / ``unmerge_linear()`` fold V2's bias
      and scale into the linear weights and back;
    * ``set_visual_features(features)`` / ``visual_features(features)`` — the image for the next calls (V2);
    * ``early_layers`` / ``top_layers`` — the attention modules that read the visual tokens / the static prompts.
    """

    def __init__(self, model: nn.Module, config: LlamaAdapterConfig, visual: "_VisualInput | None",
                 early: list[str], top: list[str]):
        super().__init__(model, config)
        self.early_layers, self.top_layers = early, top  # attention module names
        self._visual = visual

    # -- the visual input ------------------------------------------------------------------------------------------

    @property
    def has_visual(self) -> bool:
        """Whether the model reads image features (V2 with a visual projection)."""
        return self._visual is not None

    def _check_visual(self) -> "_VisualInput":
        self.check_active()
        if self._visual is None:
            raise ValueError("this model has no visual path; use LlamaAdapterV2Config(visual_dim=...) with "
                             "minipeft.multimodal.llama_adapter_v2.apply (or pass visual_projection=) to give it one.")
        return self._visual

    def set_visual_features(self, features) -> None:
        """Use these image features for the following calls (``None`` clears them).

        ``features``: what the visual projection takes — ``(B, C)`` pooled, ``(B, N, C)`` grid, a dict or an
        encoder output — with one image per text row, or one image for the whole batch.
        """
        self._check_visual().features = features

    @contextlib.contextmanager
    def visual_features(self, features):
        """``with handle.visual_features(f): model(...)`` — the features only inside the block."""
        visual = self._check_visual()
        before = visual.features
        visual.features = features
        try:
            yield self
        finally:
            visual.features = before

    # -- the two kinds of wrapper -----------------------------------------------------------------------------------

    @property
    def attention(self) -> dict[str, "AdaptedAttention"]:
        """``{name: AdaptedAttention}``: the layers that read a prompt (static or visual)."""
        return {n: w for n, w in self.wrappers.items() if isinstance(w, AdaptedAttention)}

    @property
    def linear(self) -> dict[str, "BiasScaleLinear"]:
        """``{name: BiasScaleLinear}``: V2's bias and scale on every linear layer (empty for v1)."""
        return {n: w for n, w in self.wrappers.items() if isinstance(w, BiasScaleLinear)}

    # -- merging only the linear part ------------------------------------------------------------------------------

    def _linear(self) -> dict[str, nn.Module]:
        self.check_active()
        linear = self.linear
        if not linear:
            raise ValueError(f"there is nothing to merge: this {self.method} model has no bias/scale layers "
                             "(LLaMA-Adapter V2 with bias_scale=True has them).")
        return linear

    @property
    def merged(self) -> bool:
        """Whether V2's biases and scales are folded into the linear weights."""
        linear = [w for w in self.wrappers.values() if isinstance(w, BiasScaleLinear)]
        return bool(linear) and all(w.merged for w in linear)

    def merge_linear(self) -> nn.Module:
        r"""Fold every bias and scale into its linear layer: :math:`W' = \mathrm{diag}(s) W,\ b' = s \odot b`."""
        return self.merge(self._linear())

    def unmerge_linear(self) -> nn.Module:
        """Take the biases and scales back out of the linear weights (checks every layer first)."""
        return self.unmerge(self._linear())

    def undo(self) -> nn.Module:
        """Restore the model exactly as it was before :func:`apply` (modules, norm values, ``requires_grad``)."""
        model = super().undo()
        self._visual = None
        return model

    def __repr__(self) -> str:
        if not self.active:
            return f"LlamaAdapterHandle(method={self.method!r}, undone)"
        return (f"LlamaAdapterHandle(method={self.method!r}, top layers={len(self.top_layers)}, "
                f"visual layers={len(self.early_layers)}, {self.num_parameters():,} trainable parameters)")


# ------------------------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------------------------


def _attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder layers' attention modules (``...self_attn``), bottom to top."""
    found = find_modules(model, target=r"(.*\.)?self_attn")  # raises, listing close names, when there are none
    for name, module in found:
        if is_wrapper(module):
            raise ValueError(f"{name!r} is already wrapped by {module.minipeft_method!r}; undo the first method "
                             "(handle.undo()) before applying LLaMA-Adapter.")
    layers = [(n, m) for n, m in found if all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))]
    if not layers:
        raise ValueError(f"{type(model).__name__} has self_attn modules but none with q_proj/k_proj/v_proj/o_proj; "
                         "LLaMA-Adapter needs a LLaMA-style attention (LlamaForCausalLM, Mistral, Qwen2, ...).")
    return layers


def _exact(names) -> str:
    """One regex that matches exactly these module names (quick even for the hundreds of layers of LLaMA-65B)."""
    return "|".join(re.escape(n) for n in names)


def apply(model: nn.Module, config: LlamaAdapterConfig | None = None,
          visual_projection: nn.Module | None = None) -> LlamaAdapterHandle:
    """Freeze ``model`` and add LLaMA-Adapter v1 or V2 (chosen by the config's class) in place.

    Args:
        model: a ``transformers`` LLaMA-style model (``LlamaForCausalLM`` / ``LlamaModel``, grouped-query attention
            included), on any device, the meta device included.
        config: :class:`LlamaAdapterConfig` (v1; the default) or :class:`LlamaAdapterV2Config`.
        visual_projection: V2 only — a module mapping image features to visual tokens ``(B, n, d)``, used instead of
            ``VisualProjection(config.visual_dim, d, config.visual_len)``.

    Returns:
        a :class:`LlamaAdapterHandle`; only the method's tensors are trainable.

    Raises:
        ValueError: more adapter (plus visual) layers than the model has, a model without LLaMA-style attention, a
            layer already wrapped by another minipeft method, or a bad config. The model is then unchanged.
    """
    config = check_config(config, LlamaAdapterConfig, LlamaAdapterConfig)
    v2 = isinstance(config, LlamaAdapterV2Config)
    if visual_projection is not None and not v2:
        raise ValueError("visual_projection is part of LLaMA-Adapter V2; use LlamaAdapterV2Config.")
    if v2 and config.visual_dim is not None and visual_projection is None:
        raise ValueError("the visual path (visual_dim=...) is Part III: build the model with "
                         "minipeft.multimodal.llama_adapter_v2.apply(model, config), which adds the visual projection, "
                         "or pass visual_projection= here.")
    if hasattr(model, VISUAL_ATTRIBUTE):
        raise ValueError("the model already carries a LLaMA-Adapter visual projection; undo() its handle first.")
    if getattr(model, "config", None) is None:
        raise ValueError(f"LLaMA-Adapter needs a transformers model (with .config giving the attention's shape); got "
                         f"{type(model).__name__}.")
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    d, H = text.hidden_size, text.num_attention_heads
    H_kv = getattr(text, "num_key_value_heads", None) or H

    layers = _attention_layers(model)
    N = len(layers)
    has_visual = v2 and visual_projection is not None
    n_visual = config.visual_layers if has_visual and config.fusion == "early" else 0
    L = config.adapter_layers if config.adapter_layers is not None else N - n_visual
    if L > N:
        raise ValueError(f"adapter_layers={L}, but the model has only {N} decoder layers; choose 1..{N}.")
    if L < 1 or n_visual + L > N:
        raise ValueError(
            f"early fusion puts the visual prompt into the bottom {n_visual} layer(s) and the static prompts into "
            f"the top {L}, but the model has {N} layers and the two may not share one; lower adapter_layers or "
            f"visual_layers so that they add up to at most {N} (the paper: 1 + 31 = 32)."
        )
    early = [name for name, _ in layers[:n_visual]]
    top = [name for name, _ in layers[N - L:]]
    head_dim = getattr(layers[0][1], "head_dim", None) or getattr(text, "head_dim", None) or d // H
    visual = _VisualInput(visual_projection) if has_visual else None

    handle = LlamaAdapterHandle(model, config, visual, early, top)
    try:
        if v2 and config.bias_scale:  # every linear layer of every decoder layer: s ⊙ (W x + b)
            prefixes = tuple(name.rsplit(".", 1)[0] + "." for name, _ in layers)  # the decoder layers
            targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefixes)]
            inject(model, lambda name, module: BiasScaleLinear(module, config.scale_on), target=_exact(targets),
                   handle=handle)

        def make_wrapper(name: str, module: nn.Module) -> nn.Module:
            is_early = name in early
            return AdaptedAttention(module, 0 if is_early else config.adapter_len, H, H_kv, head_dim, d,
                                    gate=config.gate, gate_per_head=config.gate_per_head,
                                    visual=visual if is_early or (has_visual and config.fusion == "add") else None)

        inject(model, make_wrapper, target=_exact(early + top), handle=handle)
        if v2 and config.train_norms:  # V2 (a): every RMSNorm / LayerNorm weight of the language model trains
            handle.unlock([f"{m}.{n}" if m else n for m, module in model.named_modules()
                           if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
                           for n, _ in module.named_parameters(recurse=False)])
        if visual is not None:
            visual.projection.train(model.training)
            handle.attach(VISUAL_ATTRIBUTE, visual.projection)  # a submodule: .to(), .parameters(), .train() see it
    except BaseException:
        handle.undo()  # leave the model as it was
        raise
    # Freeze after injecting, so a failed injection leaves requires_grad untouched too.
    handle.mark_trainable()
    return handle

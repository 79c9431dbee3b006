r"""The LLaVA / MiniGPT-4 projector: a linear layer (or a 2-layer MLP) from image patches to word embeddings.

**The idea** (Liu, Li, Wu & Lee 2023, "Visual Instruction Tuning" (LLaVA), NeurIPS 2023, arXiv:2304.08485; Zhu et
al. 2023, "MiniGPT-4", arXiv:2304.10592). A frozen image encoder already describes an image as a grid of feature
vectors :math:`Z_v = g(X_v) \in \mathbb{R}^{N \times C}` (CLIP ViT-L/14: :math:`N = 256` patches of width 1024; in
this book EfficientNet-Lite0: :math:`7 \times 7 = 49` cells of width 1280). A frozen language model already reads
sequences of vectors of its width :math:`d`. The cheapest bridge is a **trainable projection** that turns every
patch into a "visual word":

$$H_v = W \cdot Z_v, \qquad W \in \mathbb{R}^{C \times d} \qquad\text{(LLaVA, Eq. 1; kind ``"linear"``)},$$

and LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning", arXiv:2310.03744) makes it a
two-layer MLP ("improving the vision-language connector's representation power"):

$$H_v = W_2 \, \mathrm{GELU}(W_1 Z_v + b_1) + b_2, \qquad W_1 \in \mathbb{R}^{C \times d},\; W_2 \in
\mathbb{R}^{d \times d} \qquad\text{(kind ``"mlp2x_gelu"``)}.$$

The :math:`N` projected tokens are spliced into the prompt where it says ``<image>`` (:mod:`.splice`) and the
language model is trained to produce the answer :math:`X_a`:
:math:`\max \prod_i p_\theta(x_i \mid X_v, X_{\mathrm{instruct}}, X_{a,<i})`.

**Two stages** (LLaVA §4.2). *Stage 1, feature alignment*: image encoder and language model frozen, only :math:`W`
trains, on image–caption pairs turned into a single "describe the image" turn — the projector learns to write
visual tokens the frozen LM understands. *Stage 2, end-to-end fine-tuning*: the projector keeps training and the LM
trains too (LLaVA: fully; here: LoRA from :mod:`minipeft.peft.lora` on the LM inside the returned model), on
instructions. MiniGPT-4 trains *only* the projection in both of its stages; its input is a frozen BLIP-2 Q-Former's
32 outputs instead of raw patches (:mod:`.qformer`), so it is the ``"linear"`` kind here on Q-Former features.

Parameters: ``"linear"`` :math:`C d + d`; ``"mlp2x_gelu"`` :math:`C d + d + d^2 + d` (:func:`parameter_count`).
For EfficientNet-Lite0 → SmolLM2-135M (:math:`C = 1280, d = 576`): 737,856 and 1,070,208.

Paper versus code (from the released code and the ``transformers`` port):

1. *Which features.* LLaVA takes the **penultimate** CLIP layer (``mm_vision_select_layer = -2``) and drops the
   CLS token (256 patch tokens); its ablation: last layer 89.96 vs penultimate 90.92 on ScienceQA. This module takes
   whatever ``(B, N, C)`` it is given; selecting the layer belongs to the (frozen, cached) encoder.
2. *Names.* The original repository builds ``mm_projector = nn.Linear`` (v1) or ``nn.Sequential(Linear, GELU,
   Linear)`` (saved as ``mm_projector.0`` / ``mm_projector.2``); ``transformers``' ``LlavaMultiModalProjector``
   (MLP only; it has no linear variant) names them ``linear_1``, ``act``, ``linear_2``. We use the latter names, so an
   MLP projector's ``state_dict`` loads into ``LlavaMultiModalProjector`` as is; the linear kind has ``linear_1`` only.
3. *GELU* is the exact (erf) GELU in both, not the tanh approximation.
4. *Stage 1 in the code.* ``--tune_mm_mlp_adapter True`` sets ``requires_grad_(False)`` on the whole model and then
   enables the projector only (users asking "is the LLM frozen in stage 1?": yes). The v1 paper used lr 2e-3,
   LLaVA-1.5 lr 1e-3, both 1 epoch; stage 2 lr 2e-5.
5. *Image tokens and the causal mask.* The image tokens are ordinary positions under the LM's causal mask (an image
   token sees only earlier image tokens), not a bidirectional block — a frequently asked question about LLaVA.

Chapter: Part III, "A LLaVA-style projector" (``11_projector_llava``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.contract import Handle, MethodConfig, check_config
from .splice import (IMAGE_TOKEN_ID, VisionLanguageModel, exact_match, generate_answers, make_batch,
                     normalize_answer, splice)

KINDS = ("linear", "mlp2x_gelu")

__all__ = ["KINDS", "Projector", "ProjectorConfig", "VisionLanguageModel", "apply", "exact_match",
           "generate_answers", "make_batch", "normalize_answer", "parameter_count", "splice"]


@dataclass
class ProjectorConfig(MethodConfig):
    """What decides a projector.

    Args:
        kind: ``"linear"`` (LLaVA v1, MiniGPT-4) or ``"mlp2x_gelu"`` (LLaVA-1.5).
        vision_width: the frozen image encoder's feature width :math:`C` (EfficientNet-Lite0: 1280).
        llm_width: the language model's hidden size :math:`d` (SmolLM2-135M: 576).
        bias: biases on the linear layers (both papers' code and ``transformers`` default: True).
        image_token_id: the placeholder id the prompts carry (default LLaVA's ``-200``, outside any vocabulary).
    """

    kind: str = "mlp2x_gelu"
    vision_width: int = 1280
    llm_width: int = 576
    bias: bool = True
    image_token_id: int = IMAGE_TOKEN_ID

    method = "projector"

    def __post_init__(self):
        if not isinstance(self.kind, str):
            raise ValueError(f"kind must be a string, one of {KINDS}; got {type(self.kind).__name__}.")
        if self.kind not in KINDS:
            hint = " (LLaVA-1.5's MLP is 'mlp2x_gelu')" if "mlp" in self.kind.lower() else ""
            raise ValueError(f"unknown projector kind {self.kind!r}; choose one of {KINDS}{hint}.")
        for name in ("vision_width", "llm_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be True or False, got {self.bias!r}.")
        if not isinstance(self.image_token_id, int) or isinstance(self.image_token_id, bool):
            raise ValueError(f"image_token_id must be an int, got {self.image_token_id!r}.")


def parameter_count(config: ProjectorConfig) -> int:
    """Closed form: :math:`C d (+ d)` for ``"linear"``; :math:`C d + d^2 (+ 2 d)` for ``"mlp2x_gelu"``."""
    C, d, b = config.vision_width, config.llm_width, int(config.bias)
    if config.kind == "linear":
        return C * d + b * d  # W (+ bias)
    return C * d + b * d + d * d + b * d  # W_1 (+ b_1) + W_2 (+ b_2)


class Projector(nn.Module):
    r"""Patch features ``(B, N, C)`` → visual tokens ``(B, N, d)``: :math:`W Z_v` or :math:`W_2\,\mathrm{GELU}(W_1 Z_v)`.

    Example::

        >>> projector = Projector(ProjectorConfig("mlp2x_gelu", vision_width=1280, llm_width=576))
        >>> projector(torch.randn(2, 49, 1280)).shape
        torch.Size([2, 49, 576])
    """

    def __init__(self, config: ProjectorConfig, *, device=None, dtype=None):
        super().__init__()
        if not isinstance(config, ProjectorConfig):
            raise TypeError(f"Projector needs a ProjectorConfig, got {type(config).__name__}.")
        self.config = config
        factory = dict(device=device, dtype=dtype)
        self.linear_1 = nn.Linear(config.vision_width, config.llm_width, bias=config.bias, **factory)  # W (or W_1)
        if config.kind == "mlp2x_gelu":
            self.act = nn.GELU()  # exact (erf) GELU, as LLaVA-1.5 and transformers
            self.linear_2 = nn.Linear(config.llm_width, config.llm_width, bias=config.bias, **factory)  # W_2

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        if image_features.dim() != 3:
            raise ValueError(f"image features must be (batch, N, C) patch tokens, got shape "
                             f"{tuple(image_features.shape)}; a pooled (batch, C) vector is one token: "
                             "features.unsqueeze(1); a (batch, C, H, W) map: features.flatten(2).transpose(1, 2).")
        if image_features.shape[-1] != self.config.vision_width:
            raise ValueError(f"image features are {image_features.shape[-1]} wide but the projector expects "
                             f"vision_width={self.config.vision_width}; set ProjectorConfig(vision_width="
                             f"{image_features.shape[-1]}).")
        hidden = self.linear_1(image_features.to(self.linear_1.weight.dtype))  # W_1 Z_v + b_1: (B, N, d)
        if self.config.kind == "linear":
            return hidden  # H_v = W Z_v: (B, N, d)
        return self.linear_2(self.act(hidden))  # H_v = W_2 GELU(W_1 Z_v + b_1) + b_2: (B, N, d)

    def extra_repr(self) -> str:
        return f"kind={self.config.kind!r}"


def apply(language_model: nn.Module, config: ProjectorConfig) -> Handle:
    """Stage 1's model: a fresh trainable :class:`Projector` in front of the *frozen* ``language_model``.

    Returns a :class:`~minipeft.core.Handle` whose ``model`` is a :class:`~minipeft.multimodal.splice.VisionLanguageModel`
    (call it, train it); ``handle.model.connector`` is the projector, the method's only tensors (what
    ``handle.save`` writes after stage 1). For stage 2, wrap ``handle.model.language_model`` with
    ``minipeft.peft.lora.apply`` and keep training both. ``handle.undo()`` takes the projector off and gives the
    language model its ``requires_grad`` flags back. The projector is created on the LM's device and dtype.
    """
    config = check_config(config, ProjectorConfig)
    if not isinstance(language_model, nn.Module) or not hasattr(language_model, "get_input_embeddings"):
        raise TypeError(f"language_model must be a transformers causal LM, got {type(language_model).__name__}.")
    embedding = language_model.get_input_embeddings()
    if embedding.embedding_dim != config.llm_width:
        raise ValueError(f"the language model's embeddings are {embedding.embedding_dim} wide but "
                         f"ProjectorConfig(llm_width={config.llm_width}); set llm_width={embedding.embedding_dim}.")
    model = VisionLanguageModel(None, language_model, image_token_id=config.image_token_id)
    handle = Handle(model, config)
    handle.attach("connector", Projector(config, device=embedding.weight.device, dtype=embedding.weight.dtype))
    handle.mark_trainable()  # LLaVA stage 1: only the projector learns
    return handle

r"""The BLIP-2 Q-Former: a few learned queries read a frozen image encoder and speak to a frozen language model.

**The idea** (Li, Li, Savarese & Hoi 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
Encoders and Large Language Models", ICML 2023, arXiv:2301.12597). A projector (:mod:`.projector`) hands the language
model one token per image patch (256 for CLIP ViT-L/14). BLIP-2 instead trains a small transformer, the
**Querying Transformer**, whose :math:`K` learned **queries** :math:`Q \in \mathbb{R}^{K \times h}` (32 × 768) pull
what matters out of the frozen image features :math:`I \in \mathbb{R}^{N \times C}` (257 × 1408 for ViT-g) by
cross-attention. Whatever the image size, the language model reads :math:`K` tokens, and the Q-Former can be trained
on image–text pairs *before* it ever meets the language model.

**One transformer, two roles.** The Q-Former is a BERT-base encoder (post-LayerNorm, GELU) whose input is the queries
followed by text tokens, :math:`X = [Q; T]`. Every layer has one **self-attention shared** by queries and text; which
of them see each other is decided by the attention mask (below). Only the queries then **cross-attend** to the
image, in every ``cross_attention_frequency``-th layer (BLIP-2: every other layer, layers 0, 2, …, 10), and the
queries and the text go through **separate feed-forward networks** (the text FFN is BERT's; the query FFN is a copy):

$$\begin{aligned}
A &= \mathrm{LN}\big(X + \mathrm{MHA}(X W_q, X W_k, X W_v; M)\big) && \text{(shared self-attention, mask } M\text{)}\\
A_Q &\leftarrow \mathrm{LN}\big(A_Q + \mathrm{MHA}(A_Q W'_q, I W'_k, I W'_v)\big) && \text{(queries only; layers } \ell \bmod f = 0\text{)}\\
X' &= \big[\mathrm{LN}(A_Q + \mathrm{FFN}_Q(A_Q));\ \mathrm{LN}(A_T + \mathrm{FFN}_T(A_T))\big]
&& \text{(query FFN, text FFN)}
\end{aligned}$$

with :math:`\mathrm{MHA}(q, k, v; M) = \mathrm{softmax}(q k^\top / \sqrt{d_{head}} + M)\, v` per head. The queries
carry no position embedding; the text gets BERT's word + position embeddings, and one LayerNorm normalises
:math:`[Q; T]` on the way in.

**Stage 1: representation learning** (frozen image encoder), three losses with one shared Q-Former, summed:

* **ITC**, image–text contrastive, with the **unimodal** mask (queries and text cannot see each other — two separate
  passes). The image has :math:`K` embeddings :math:`z_k = \mathrm{norm}(W_v q_k)`, the text one,
  :math:`t = \mathrm{norm}(W_t\, h_{[CLS]})`; their similarity is the **best query**:
  :math:`s(I, T) = \max_k z_k^\top t`. With a learnable temperature :math:`\tau` (init 0.07), in-batch negatives:

  $$\mathcal{L}_{itc} = \tfrac12\Big[\mathrm{CE}\big(s(I_i, T_{\cdot}) / \tau,\ i\big) + \mathrm{CE}\big(s(I_{\cdot},
  T_i) / \tau,\ i\big)\Big].$$

* **ITM**, image–text matching, with the **bidirectional** mask (queries and text see each other). A linear head
  on every query output gives two logits, averaged over the :math:`K` queries; binary cross-entropy on matched
  pairs and on **hard negatives**: for each text an image drawn with probability :math:`\mathrm{softmax}(s/\tau)`
  over the *other* images (similar but wrong), and for each image such a text.

* **ITG**, image-grounded text generation, with the **multimodal causal** (UniLM) mask: queries see only queries,
  text token :math:`j` sees all queries and text tokens :math:`\le j`; ``[DEC]`` replaces ``[CLS]`` and BERT's LM head
  predicts the next token. Since the text can reach the image only *through the queries*, the queries are forced to
  extract everything the caption needs.

**Stage 2: generative learning** (frozen LLM): one linear layer maps the :math:`K` query outputs to the LLM's width,
and they are spliced into the prompt as **soft visual prompts** (:func:`apply`, :mod:`.splice`); the loss is the
LLM's on the text only.

Parameters (:func:`parameter_count`): the defaults (BERT-base, ``encoder_width=1408``, 32 queries, BERT's 30,523-word
vocabulary and 512 positions, text side and heads included) count 186,702,654 — the paper's "188M"; we did not find
the remaining ~1.3M in the code we read (BERT's pooler, 0.6M, is not built by LAVIS's Q-Former).

Paper versus code (LAVIS ``blip2_qformer.py`` / ``Qformer.py``, and ``transformers``' port):

1. *ITC label smoothing.* LAVIS uses ``cross_entropy(..., label_smoothing=0.1)`` in both directions, and 0.1 in the
   ITG loss too; the paper does not mention it. ``QFormerConfig.label_smoothing`` (default 0.1, as the code).
2. *Temperature.* Learnable, initialised 0.07; LAVIS clamps it to [0.001, 0.5] under ``no_grad`` each step (done in
   :func:`itc_loss` here). In-batch negatives are gathered across GPUs in LAVIS; here the batch is the world.
3. *Hard negatives.* LAVIS fills the diagonal with −10000 before the softmax; we use :math:`-\infty` (the same
   probabilities) and an explicit ``generator`` so a run is reproducible.
4. *ITG in one pass.* LAVIS runs the queries in the ITC pass, keeps their keys and values (``past_key_values``) and
   runs the text against them. Because under the UniLM mask no query sees the text, one joint pass with that mask
   computes the same thing (a unit test checks it).
5. *Names.* ``transformers`` renames LAVIS's ``Qformer.bert`` to ``qformer``, ``attention.self`` to
   ``attention.attention``, ``opt_proj`` to ``language_projection`` and the embedding LayerNorm to
   ``qformer.layernorm``. :func:`blip2_state_dict` / :func:`load_blip2_state_dict` translate our readable names to
   and from ``transformers``' names, so ``Blip2QFormerModel`` and ``Blip2ForConditionalGeneration`` load ours (the
   reference tests) and a real BLIP-2 checkpoint loads into this file.
6. *``ln_vision``.* LAVIS normalises the ViT tokens with a LayerNorm it trains (Video-LLaMA and MiniGPT-4 freeze
   it); ``transformers`` folds it into the vision model as ``post_layernorm``. Here it is
   ``QFormerConnector.vision_norm`` (``vision_norm=True``), off when the features come normalised already.
7. *Stage 2* drops the Q-Former's text parts (word/position embeddings, text FFNs, LM head). Here they stay in the
   module but receive no gradient; :func:`apply` with ``with_text=False`` builds a query-only Q-Former.

Chapter: Part III, "The BLIP-2 Q-Former" (``12_qformer``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.contract import Handle, MethodConfig
from .splice import IMAGE_TOKEN_ID, VisionLanguageModel

MASK_KINDS = ("unimodal", "bidirectional", "causal")


@dataclass
class QFormerConfig(MethodConfig):
    """The Q-Former's sizes (defaults: BLIP-2's BERT-base Q-Former on EVA ViT-g features) and stage-1 settings.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: the BERT encoder (768, 12, 12, 3072).
        encoder_width: the frozen image encoder's feature width :math:`C` (ViT-g 1408; EfficientNet-Lite0 1280).
        cross_attention_frequency: cross-attention in layers ``l % f == 0`` (BLIP-2: 2; Video-LLaMA: 1).
        num_queries: :math:`K`, the learned queries = the visual tokens the LLM reads (32).
        with_text: build the text side (embeddings, text FFNs, ITC/ITM/ITG heads) needed by stage 1.
        vocab_size, max_text_length: the text embeddings (BERT ``bert-base-uncased`` + ``[DEC]``: 30523; 512).
        pad_token_id, cls_token_id, dec_token_id: the tokenizer's ``[PAD]``, ``[CLS]`` and ``[DEC]`` ids.
        embed_dim: width of the ITC embeddings (256). temperature: ITC's initial :math:`\\tau` (0.07).
        dropout: hidden and attention dropout (BERT's 0.1). layer_norm_eps: 1e-12 (BERT).
        label_smoothing: for the ITC and ITG cross-entropies (LAVIS code: 0.1).
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    encoder_width: int = 1408
    cross_attention_frequency: int = 2
    num_queries: int = 32
    with_text: bool = True
    vocab_size: int = 30523
    max_text_length: int = 512
    pad_token_id: int = 0
    cls_token_id: int = 101
    dec_token_id: int = 30522
    embed_dim: int = 256
    temperature: float = 0.07
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    label_smoothing: float = 0.1

    method = "qformer"

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "encoder_width",
                     "cross_attention_frequency", "num_queries", "vocab_size", "max_text_length", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"QFormerConfig.{name} must be an int, got {type(value).__name__} {value!r}.")
            if value < 1:
                raise ValueError(f"QFormerConfig.{name} must be positive, got {value}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                             "pick a head count that divides the width (BLIP-2: 768 / 12).")
        if not isinstance(self.with_text, bool):
            raise ValueError(f"with_text must be True or False, got {self.with_text!r}.")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"dropout and label_smoothing must lie in [0, 1), got {self.dropout} and "
                             f"{self.label_smoothing}.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        for name in ("pad_token_id", "cls_token_id", "dec_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value!r} is not a token id of a vocabulary of {self.vocab_size}.")


def parameter_count(config: QFormerConfig) -> int:
    """Closed form of :class:`QFormer`'s parameter count (queries and, with text, embeddings and heads included)."""
    h, C, I, V = config.hidden_size, config.encoder_width, config.intermediate_size, config.vocab_size

    def attention(kv_width):  # W_q, W_k, W_v, W_o with biases, and the post-LN
        return (h * h + h) + 2 * (kv_width * h + h) + (h * h + h) + 2 * h

    feed_forward = (h * I + I) + (I * h + h) + 2 * h  # up, down, post-LN
    crossing = sum(1 for layer in range(config.num_layers) if layer % config.cross_attention_frequency == 0)
    total = config.num_queries * h + 2 * h  # queries, embedding LayerNorm
    total += config.num_layers * (attention(h) + feed_forward) + crossing * attention(C)
    if config.with_text:
        e = config.embed_dim
        total += config.num_layers * feed_forward  # text FFNs
        total += V * h + config.max_text_length * h  # word and position embeddings (the LM head is tied to words)
        total += 2 * (h * e + e) + (2 * h + 2) + (h * h + h + 2 * h + V) + 1  # ITC projections, ITM, LM head, tau
    return total


def attention_mask(kind: str, num_queries: int, text_mask: torch.Tensor | None = None,
                   text_length: int | None = None) -> torch.Tensor:
    """Which position may attend to which, ``(B, K+T, K+T)`` booleans (True = may attend), for one of BLIP-2's masks.

    * ``"unimodal"`` (ITC): queries see queries, text sees text.
    * ``"bidirectional"`` (ITM): everything sees everything.
    * ``"causal"`` (ITG, UniLM): queries see queries; text token ``j`` sees every query and text tokens ``≤ j``.

    Padded text tokens (``text_mask == 0``) are never attended to.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown attention mask {kind!r}; choose one of {MASK_KINDS}.")
    if text_mask is None:
        if text_length is None:
            raise ValueError("give text_mask (batch, T) or text_length.")
        text_mask = torch.ones(1, text_length, dtype=torch.long)
    B, T, K = text_mask.shape[0], text_mask.shape[1], num_queries
    is_query = torch.arange(K + T, device=text_mask.device) < K  # (K+T,)
    row_query, col_query = is_query[:, None], is_query[None, :]  # (K+T, 1), (1, K+T)
    if kind == "bidirectional":
        allowed = torch.ones(K + T, K + T, dtype=torch.bool, device=text_mask.device)
    elif kind == "unimodal":
        allowed = row_query == col_query  # same modality only
    else:  # causal
        position = torch.arange(K + T, device=text_mask.device)
        earlier_text = position[None, :] <= position[:, None]  # column ≤ row
        allowed = (row_query & col_query) | (~row_query & (col_query | earlier_text))
    key_is_real = torch.cat([torch.ones(B, K, dtype=torch.bool, device=text_mask.device), text_mask.bool()], 1)
    return allowed.unsqueeze(0) & key_is_real.unsqueeze(1)  # (B, K+T, K+T)


class Attention(nn.Module):
    """Post-LN multi-head attention of BERT: ``LN(x + W_o · MHA(x W_q, c W_k, c W_v))``, ``c = x`` or the image."""

    def __init__(self, config: QFormerConfig, kv_width: int):
        super().__init__()
        h = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, h // config.num_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(kv_width, h)
        self.value = nn.Linear(kv_width, h)
        self.output = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, L, S = x.shape[0], x.shape[1], context.shape[1]
        q = self.query(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, L, dh)
        k = self.key(context).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, S, dh)
        v = self.value(context).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, S, dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # q k^T / sqrt(d_head): (B, heads, L, S)
        if mask is not None:  # (B, L, S) booleans, True = may attend
            scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = self.dropout(scores.softmax(dim=-1))  # (B, heads, L, S)
        attended = (weights @ v).transpose(1, 2).reshape(B, L, -1)  # (B, L, h)
        return self.norm(x + self.dropout(self.output(attended)))  # post-LN residual


class FeedForward(nn.Module):
    """BERT's post-LN feed-forward block: ``LN(x + W_down · GELU(W_up x))``."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.down(F.gelu(self.up(x)))))  # exact (erf) GELU, as BERT


class QFormerLayer(nn.Module):
    """Shared self-attention → (queries only) cross-attention to the image → query FFN / text FFN."""

    def __init__(self, config: QFormerConfig, index: int):
        super().__init__()
        self.self_attention = Attention(config, config.hidden_size)
        self.has_cross_attention = index % config.cross_attention_frequency == 0
        if self.has_cross_attention:
            self.cross_attention = Attention(config, config.encoder_width)
        self.query_ffn = FeedForward(config)
        if config.with_text:
            self.text_ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, num_queries: int, mask: torch.Tensor | None,
                image: torch.Tensor | None, image_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attention(x, mask=mask)  # queries and text in one attention: (B, K+T, h)
        queries, text = x[:, :num_queries], x[:, num_queries:]  # (B, K, h), (B, T, h)
        if num_queries and self.has_cross_attention:
            if image is None:
                raise ValueError("the queries need image features: this layer cross-attends to the image.")
            queries = self.cross_attention(queries, context=image, mask=image_mask)  # (B, K, h)
        parts = [self.query_ffn(queries)] if num_queries else []
        if text.shape[1]:
            parts.append(self.text_ffn(text))
        return torch.cat(parts, dim=1)  # (B, K+T, h)


class QFormer(nn.Module):
    """The Querying Transformer (with its stage-1 heads when ``config.with_text``).

    ``forward(image_features)`` returns the query outputs ``(B, K, h)``; :meth:`encode_text` runs text alone and
    :meth:`encode_joint` runs queries and text together under one of the masks of :func:`attention_mask`.

    Example::

        >>> qformer = QFormer(QFormerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
        ...                                 encoder_width=48, num_queries=8, with_text=False))
        >>> qformer(torch.randn(2, 49, 48)).shape
        torch.Size([2, 8, 32])
    """

    def __init__(self, config: QFormerConfig):
        super().__init__()
        if not isinstance(config, QFormerConfig):
            raise TypeError(f"QFormer needs a QFormerConfig, got {type(config).__name__}.")
        self.config = config
        h = config.hidden_size
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, h) * 0.02)  # Q ~ N(0, 0.02²), as BLIP-2
        if config.with_text:
            self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
            self.position_embeddings = nn.Embedding(config.max_text_length, h)
        self.embed_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)  # one LN over [queries; text]
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(QFormerLayer(config, index) for index in range(config.num_layers))
        if config.with_text:
            self.vision_proj = nn.Linear(h, config.embed_dim)  # W_v (ITC)
            self.text_proj = nn.Linear(h, config.embed_dim)  # W_t (ITC)
            self.itm_head = nn.Linear(h, 2)  # ITM: (no match, match)
            self.lm_transform = nn.Linear(h, h)  # BERT's LM head: dense → GELU → LN → words
            self.lm_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
            self.lm_bias = nn.Parameter(torch.zeros(config.vocab_size))
            self.temperature = nn.Parameter(torch.tensor(config.temperature))  # tau, learnable

    # ------------------------------------------------------------------------------------------------ the passes
    def _text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.config.with_text:
            raise ValueError("this Q-Former has no text side (with_text=False); build it with with_text=True.")
        if input_ids.shape[1] > self.config.max_text_length:
            raise ValueError(f"text of {input_ids.shape[1]} tokens exceeds max_text_length="
                             f"{self.config.max_text_length}.")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # text positions start at 0
        return self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, h)

    def _check_image(self, image_features: torch.Tensor) -> torch.Tensor:
        if image_features.dim() != 3 or image_features.shape[-1] != self.config.encoder_width:
            raise ValueError(f"image features must be (batch, N, encoder_width={self.config.encoder_width}), got "
                             f"shape {tuple(image_features.shape)}; set QFormerConfig(encoder_width=...) to the "
                             "encoder's feature width.")
        return image_features.to(self.queries.dtype)

    def _run(self, x: torch.Tensor, num_queries: int, mask: torch.Tensor | None, image: torch.Tensor | None,
             image_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.embed_dropout(self.embed_norm(x))  # (B, K+T, h)
        if image_mask is not None:  # (B, N) → (B, K, N): which image features the queries may read
            image_mask = image_mask.bool().unsqueeze(1).expand(-1, num_queries, -1)
        for layer in self.layers:
            x = layer(x, num_queries, mask, image, image_mask)
        return x

    def forward(self, image_features: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Query outputs ``Z`` ``(B, K, h)`` for image features ``(B, N, C)`` (no text: the stage-2 path)."""
        image = self._check_image(image_features)
        queries = self.queries.expand(image.shape[0], -1, -1)  # (B, K, h)
        return self._run(queries, self.config.num_queries, None, image, image_mask)

    def encode_text(self, input_ids: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text alone through the shared self-attention and the text FFNs, ``(B, T, h)`` (ITC's text side)."""
        mask = None if text_mask is None else attention_mask("bidirectional", 0, text_mask)  # (B, T, T)
        return self._run(self._text_embeddings(input_ids), 0, mask, None, None)

    def encode_joint(self, image_features: torch.Tensor, input_ids: torch.Tensor,
                     text_mask: torch.Tensor | None = None, attention: str = "bidirectional",
                     image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries and text in one pass under ``attention`` (``"bidirectional"``, ``"causal"`` or ``"unimodal"``).

        Returns ``(B, K+T, h)``: the first ``K`` rows are the queries.
        """
        image = self._check_image(image_features)
        if text_mask is None:
            text_mask = torch.ones_like(input_ids)
        queries = self.queries.expand(image.shape[0], -1, -1)  # (B, K, h)
        x = torch.cat([queries, self._text_embeddings(input_ids).to(queries.dtype)], dim=1)  # [Q; T]: (B, K+T, h)
        mask = attention_mask(attention, self.config.num_queries, text_mask)  # (B, K+T, K+T)
        return self._run(x, self.config.num_queries, mask, image, image_mask)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's LM head, its output matrix tied to the word embeddings: ``(B, T, h) → (B, T, vocab)``."""
        hidden = self.lm_norm(F.gelu(self.lm_transform(hidden)))  # (B, T, h)
        return F.linear(hidden, self.word_embeddings.weight, self.lm_bias)  # (B, T, V)


# -------------------------------------------------------------------------------------------------- stage-1 losses
def _need_text(qformer: QFormer) -> None:
    if not isinstance(qformer, QFormer):
        raise TypeError(f"expected a QFormer, got {type(qformer).__name__}.")
    if not qformer.config.with_text:
        raise ValueError("the stage-1 losses need the text side: build the Q-Former with with_text=True.")


def itc_similarity(qformer: QFormer, image_features: torch.Tensor, input_ids: torch.Tensor,
                   text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarities :math:`s(I_i, T_j) = \\max_k z_{i,k}^\\top t_j`, ``(B_images, B_texts)`` (no temperature)."""
    _need_text(qformer)
    image_embeds = F.normalize(qformer.vision_proj(qformer(image_features)), dim=-1)  # z: (B_i, K, e)
    text_hidden = qformer.encode_text(input_ids, text_mask)  # unimodal: text never sees the queries
    text_embeds = F.normalize(qformer.text_proj(text_hidden[:, 0]), dim=-1)  # t from [CLS]: (B_t, e)
    per_query = torch.einsum("ike,je->ijk", image_embeds, text_embeds)  # z_{i,k}·t_j: (B_i, B_t, K)
    return per_query.max(dim=-1).values  # the best query: (B_i, B_t)


def itc_loss(qformer: QFormer, image_features: torch.Tensor, input_ids: torch.Tensor,
             text_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the batch with the learnable temperature; returns ``(loss, logits (B, B))``."""
    _need_text(qformer)
    with torch.no_grad():
        qformer.temperature.clamp_(0.001, 0.5)  # LAVIS keeps tau in [0.001, 0.5]
    logits = itc_similarity(qformer, image_features, input_ids, text_mask) / qformer.temperature  # s / tau
    targets = torch.arange(logits.shape[0], device=logits.device)  # the matching pair is the diagonal
    smoothing = qformer.config.label_smoothing
    loss = (F.cross_entropy(logits, targets, label_smoothing=smoothing)  # image → text
            + F.cross_entropy(logits.T, targets, label_smoothing=smoothing)) / 2  # text → image
    return loss, logits


def hard_negatives(logits: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text an image index and for each image a text index, drawn ∝ softmax(similarity), never the pair."""
    if logits.shape[0] < 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"hard negatives need a square batch of at least 2 pairs, got logits {tuple(logits.shape)}.")
    with torch.no_grad():
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.float().masked_fill(eye, float("-inf"))  # the positive pair is never a negative
        image_for_text = torch.multinomial(logits.T.softmax(dim=1), 1, generator=generator).squeeze(1)  # (B,)
        text_for_image = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)  # (B,)
    return image_for_text, text_for_image


def itm_logits(qformer: QFormer, image_features: torch.Tensor, input_ids: torch.Tensor,
               text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Match / no-match logits ``(B, 2)``: the ITM head on every query output (bidirectional mask), averaged."""
    _need_text(qformer)
    hidden = qformer.encode_joint(image_features, input_ids, text_mask, attention="bidirectional")
    return qformer.itm_head(hidden[:, :qformer.config.num_queries]).mean(dim=1)  # mean over the K queries


def itm_loss(qformer: QFormer, image_features: torch.Tensor, input_ids: torch.Tensor,
             text_mask: torch.Tensor | None = None, itc_logits: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary matching loss on ``B`` positives and ``2B`` hard negatives (texts [pos, pos, neg], images
    [pos, neg, pos], labels ``[1]*B + [0]*2B``). ``itc_logits`` from :func:`itc_loss` choose the negatives."""
    if text_mask is None:
        text_mask = torch.ones_like(input_ids)
    if itc_logits is None:
        with torch.no_grad():
            itc_logits = itc_similarity(qformer, image_features, input_ids, text_mask) / qformer.temperature
    image_for_text, text_for_image = hard_negatives(itc_logits, generator)
    B = input_ids.shape[0]
    texts = torch.cat([input_ids, input_ids, input_ids[text_for_image]])  # (3B, T)
    masks = torch.cat([text_mask, text_mask, text_mask[text_for_image]])  # (3B, T)
    images = torch.cat([image_features, image_features[image_for_text], image_features])  # (3B, N, C)
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(input_ids.device)  # (3B,)
    return F.cross_entropy(itm_logits(qformer, images, texts, masks), labels)


def itg_loss(qformer: QFormer, image_features: torch.Tensor, input_ids: torch.Tensor,
             text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Caption generation from the queries under the UniLM mask: ``[DEC]`` first, next-token cross-entropy."""
    _need_text(qformer)
    if text_mask is None:
        text_mask = torch.ones_like(input_ids)
    decoder_ids = input_ids.clone()
    decoder_ids[:, 0] = qformer.config.dec_token_id  # [DEC] replaces [CLS]: "generate", not "encode"
    hidden = qformer.encode_joint(image_features, decoder_ids, text_mask, attention="causal")
    logits = qformer.lm_logits(hidden[:, qformer.config.num_queries:])  # text positions: (B, T, V)
    labels = decoder_ids.masked_fill(text_mask == 0, -100)  # no loss on padding
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),  # position j predicts token j + 1
                           labels[:, 1:].reshape(-1), ignore_index=-100,
                           label_smoothing=qformer.config.label_smoothing)


def stage1_losses(qformer: QFormer, image_features: torch.Tensor, input_ids: torch.Tensor,
                  text_mask: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """BLIP-2's stage-1 objective: ``{"itc", "itm", "itg", "loss" = itc + itm + itg}`` (weights 1, as the paper)."""
    itc, logits = itc_loss(qformer, image_features, input_ids, text_mask)
    itm = itm_loss(qformer, image_features, input_ids, text_mask, itc_logits=logits.detach(), generator=generator)
    itg = itg_loss(qformer, image_features, input_ids, text_mask)
    return {"itc": itc, "itm": itm, "itg": itg, "loss": itc + itm + itg}


# ------------------------------------------------------------------------------------------------------- stage 2
class QFormerConnector(nn.Module):
    """Stage 2's connector: (``vision_norm``) → Q-Former queries → ``language_projection`` ``(B, K, d_LLM)``."""

    def __init__(self, qformer: QFormer, llm_width: int, vision_norm: bool = False):
        super().__init__()
        if not isinstance(qformer, QFormer):
            raise TypeError(f"QFormerConnector needs a QFormer, got {type(qformer).__name__}.")
        if not isinstance(llm_width, int) or isinstance(llm_width, bool) or llm_width < 1:
            raise ValueError(f"llm_width must be a positive integer, got {llm_width!r}.")
        width = qformer.config.encoder_width
        self.vision_norm = nn.LayerNorm(width) if vision_norm else nn.Identity()  # LAVIS's ln_vision
        self.qformer = qformer
        self.language_projection = nn.Linear(qformer.config.hidden_size, llm_width)  # one FC layer into the LLM

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        queries = self.qformer(self.vision_norm(image_features))  # Z: (B, K, h)
        return self.language_projection(queries)  # soft visual prompts: (B, K, d)


def apply(language_model: nn.Module, config: QFormerConfig | None = None, *, qformer: QFormer | None = None,
          image_token_id: int = IMAGE_TOKEN_ID, vision_norm: bool = False) -> Handle:
    """Stage 2's model: a Q-Former (``qformer`` from stage 1, or a new one from ``config``) + projection in front of
    the *frozen* ``language_model``. Prompts need ``num_queries`` image placeholders (:func:`~.splice.make_batch`).

    Returns a :class:`~minipeft.core.Handle` whose ``model`` is the
    :class:`~minipeft.multimodal.splice.VisionLanguageModel`; ``handle.model.connector`` (Q-Former + projection) is
    what trains and what ``handle.save`` writes."""
    if qformer is None:
        if not isinstance(config, QFormerConfig):
            raise TypeError(f"apply needs a QFormerConfig or a stage-1 qformer=, got {type(config).__name__}.")
        qformer = QFormer(config)
    elif config is not None and config != qformer.config:
        raise ValueError("both config and qformer given, and they differ; pass only the stage-1 qformer.")
    if not isinstance(language_model, nn.Module) or not hasattr(language_model, "get_input_embeddings"):
        raise TypeError(f"language_model must be a transformers causal LM, got {type(language_model).__name__}.")
    embedding = language_model.get_input_embeddings()
    connector = QFormerConnector(qformer, embedding.embedding_dim, vision_norm=vision_norm)
    connector.to(device=embedding.weight.device)
    model = VisionLanguageModel(None, language_model, image_token_id=image_token_id)
    handle = Handle(model, qformer.config)
    handle.attach("connector", connector)
    handle.mark_trainable()  # BLIP-2 stage 2: the LLM stays frozen
    return handle


# --------------------------------------------------------------------------------------- transformers' names
_RENAMES = [  # (ours, transformers') as regexes over whole keys; layer numbers carried by \1
    (r"queries", "query_tokens"),
    (r"embed_norm\.(weight|bias)", r"qformer.layernorm.\1"),
    (r"(word|position)_embeddings\.weight", r"embeddings.\1_embeddings.weight"),
    (r"vision_proj\.(weight|bias)", r"vision_projection.\1"),
    (r"text_proj\.(weight|bias)", r"text_projection.\1"),
    (r"itm_head\.(weight|bias)", r"itm_head.\1"),
    (r"layers\.(\d+)\.self_attention\.(query|key|value)\.", r"qformer.encoder.layer.\1.attention.attention.\2."),
    (r"layers\.(\d+)\.self_attention\.output\.", r"qformer.encoder.layer.\1.attention.output.dense."),
    (r"layers\.(\d+)\.self_attention\.norm\.", r"qformer.encoder.layer.\1.attention.output.LayerNorm."),
    (r"layers\.(\d+)\.cross_attention\.(query|key|value)\.",
     r"qformer.encoder.layer.\1.crossattention.attention.\2."),
    (r"layers\.(\d+)\.cross_attention\.output\.", r"qformer.encoder.layer.\1.crossattention.output.dense."),
    (r"layers\.(\d+)\.cross_attention\.norm\.", r"qformer.encoder.layer.\1.crossattention.output.LayerNorm."),
    (r"layers\.(\d+)\.query_ffn\.up\.", r"qformer.encoder.layer.\1.intermediate_query.dense."),
    (r"layers\.(\d+)\.query_ffn\.down\.", r"qformer.encoder.layer.\1.output_query.dense."),
    (r"layers\.(\d+)\.query_ffn\.norm\.", r"qformer.encoder.layer.\1.output_query.LayerNorm."),
    (r"layers\.(\d+)\.text_ffn\.up\.", r"qformer.encoder.layer.\1.intermediate.dense."),
    (r"layers\.(\d+)\.text_ffn\.down\.", r"qformer.encoder.layer.\1.output.dense."),
    (r"layers\.(\d+)\.text_ffn\.norm\.", r"qformer.encoder.layer.\1.output.LayerNorm."),
]
_NO_COUNTERPART = ("lm_transform.", "lm_norm.", "lm_bias", "temperature")  # ITG head and tau: not in transformers


def _blip2_names(qformer: QFormer) -> dict[str, str]:
    """``{our key: transformers' key}`` for every weight that has a counterpart."""
    names = {}
    for key in qformer.state_dict():
        if key.startswith(_NO_COUNTERPART):
            continue
        for ours, theirs in _RENAMES:
            match = re.match(ours, key)
            if match:
                names[key] = match.expand(theirs) + key[match.end():]
                break
        else:
            raise KeyError(f"no transformers name for {key!r}")
    return names


def blip2_state_dict(qformer: QFormer) -> dict[str, torch.Tensor]:
    """Our Q-Former's weights under ``transformers``' BLIP-2 names (``query_tokens``, ``qformer.*``,
    ``embeddings.*``, ``vision_projection`` …); the ITG head and the temperature have no counterpart and are left out."""
    state = qformer.state_dict()
    return {theirs: state[ours] for ours, theirs in _blip2_names(qformer).items()}


def load_blip2_state_dict(qformer: QFormer, state: dict[str, torch.Tensor]) -> None:
    """Load ``transformers``-named BLIP-2 weights (e.g. ``Blip2ForConditionalGeneration.state_dict()``; keys of
    other parts such as ``vision_model.*`` are ignored) into our Q-Former. Every Q-Former weight must be there."""
    names = _blip2_names(qformer)
    missing = [theirs for theirs in names.values() if theirs not in state]
    if missing:
        raise ValueError(f"the BLIP-2 weights lack {len(missing)} of this Q-Former's tensors (e.g. {missing[:3]}); "
                         "check QFormerConfig (layers, widths, cross_attention_frequency, with_text).")
    qformer.load_state_dict({ours: state[theirs] for ours, theirs in names.items()}, strict=False)

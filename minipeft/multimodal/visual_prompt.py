r"""Visual prompt tokens: turn a frozen image encoder's features into a few tokens in the language model's width.

A multimodal prompt method (LLaMA-Adapter's visual prompts, a LLaVA-style projector) needs the same small piece of
glue: the image encoder is frozen and its width (1280 for EfficientNet-Lite0, 768/1024 for CLIP) is not the
language model's width (576 for SmolLM2-135M, 4096 for LLaMA-7B), so a *learned* projection maps the encoder's
features to ``n`` vectors of the language model's width, the **visual prompt tokens**. The language model then reads
them like word embeddings (or, in LLaMA-Adapter, like its adaptation prompts).

:class:`VisualProjection` takes the encoder's features as they come — the pooled image vector ``(B, C)``, the grid of
``N`` feature vectors ``(B, N, C)`` (EfficientNet-Lite0: :math:`N = 7 \times 7 = 49`), or both — and returns
``(B, n, d)``:

$$X = \mathrm{LN}(F W_p + b_p) \in \mathbb{R}^{N \times d}
\qquad\text{(every encoder feature vector } F_j \in \mathbb{R}^{C} \text{ projected to the LLM width } d\text{)},$$

$$V = \mathrm{LN}\Big(Q + \mathrm{softmax}\big(Q X^\top / \sqrt{d}\big)\, X\Big) \in \mathbb{R}^{n \times d}
\qquad\text{(} n \text{ learned queries } Q \in \mathbb{R}^{n \times d} \text{ pool the projected features).}$$

A pooled vector is a sequence of one feature (:math:`N = 1`); given both, the pooled vector is put in front of the
grid (:math:`N = 1 + 49`). The queries make the ``n`` tokens differ from each other even when the image is described
by a single vector, and the attention lets each token look at different parts of the grid.

How this relates to the papers (so a reader knows what is simplified):

* LLaMA-Adapter v1 (Zhang et al. 2023, arXiv:2303.16199) projects CLIP's concatenated multi-scale *global* features
  to a single vector :math:`I_p \in \mathbb{R}^{1 \times C}` and repeats it ``K`` times: :math:`n = 1` here, with the
  pooled vector as input, is that projection (up to the query and the LayerNorms).
* LLaMA-Adapter V2's released multimodal code keeps all CLIP tokens, projects them (``Linear`` + ``LayerNorm``),
  prepends 10 learned visual queries and runs **8 ViT blocks** (768 wide, 16 heads) over the sequence, keeping the
  query positions and projecting them to 4096 (``Linear`` + ``LayerNorm``): about 62M parameters, dominated by the
  blocks. The single parameter-free attention step above stands in for those blocks, so the projection stays small
  enough for a CPU chapter (1280 → 576 with ``n = 10``: 745,920 parameters).

The module works on *precomputed* features: a chapter can run the frozen encoder once, cache its outputs and train
on the cached tensors. Chapter: Part III, "LLaMA-Adapter v1 and V2".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _as_features(features: Any = None, pooled: torch.Tensor | None = None,
                 tokens: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Sort the accepted inputs into ``(pooled (B, C) or None, tokens (B, N, C) or None)``."""
    if features is not None:
        if pooled is not None or tokens is not None:
            raise ValueError("pass the features either positionally or as pooled=/tokens=, not both ways.")
        if isinstance(features, torch.Tensor):
            if features.dim() == 2:
                pooled = features
            elif features.dim() == 3:
                tokens = features
            else:
                raise ValueError(
                    f"image features must be (batch, C) pooled vectors or (batch, N, C) feature grids, got shape "
                    f"{tuple(features.shape)}; flatten a (batch, C, H, W) map with .flatten(2).transpose(1, 2)."
                )
        elif isinstance(features, dict):
            pooled, tokens = features.get("pooled"), features.get("tokens")
        elif hasattr(features, "pooled") or hasattr(features, "tokens"):  # e.g. minipeft's VisionEncoderOutput
            pooled, tokens = getattr(features, "pooled", None), getattr(features, "tokens", None)
        else:
            raise TypeError(f"cannot read image features from a {type(features).__name__}; pass a tensor, a dict "
                            "with 'pooled' and/or 'tokens', or an encoder output with .pooled / .tokens.")
    if pooled is None and tokens is None:
        raise ValueError("no image features given: pass pooled (batch, C) and/or tokens (batch, N, C).")
    if pooled is not None and pooled.dim() != 2:
        raise ValueError(f"pooled features must be (batch, C), got shape {tuple(pooled.shape)}.")
    if tokens is not None and tokens.dim() != 3:
        raise ValueError(f"token features must be (batch, N, C), got shape {tuple(tokens.shape)}.")
    return pooled, tokens


class VisualProjection(nn.Module):
    r"""Image-encoder features ``(B, C)`` and/or ``(B, N, C)`` → ``num_tokens`` visual prompt tokens ``(B, n, d)``.

    Parameters (``proj``, ``proj_norm``, ``queries``, ``out_norm``): :math:`C d + d` + :math:`2d` +
    :math:`n d` + :math:`2d`, i.e. :math:`C d + n d + 5 d` (:meth:`count`).

    Args:
        in_features: the encoder's feature width ``C`` (EfficientNet-Lite0: 1280).
        out_features: the language model's width ``d`` (SmolLM2-135M: 576).
        num_tokens: how many visual tokens ``n`` to produce.
        device, dtype: where to create the parameters (``device="meta"`` builds it without memory).

    Example::

        >>> projection = VisualProjection(1280, 576, num_tokens=10)
        >>> projection(torch.randn(2, 1280)).shape, projection(torch.randn(2, 49, 1280)).shape
        (torch.Size([2, 10, 576]), torch.Size([2, 10, 576]))
    """

    def __init__(self, in_features: int = 1280, out_features: int = 576, num_tokens: int = 10, *,
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("num_tokens", num_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        factory = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.num_tokens = in_features, out_features, num_tokens
        self.proj = nn.Linear(in_features, out_features, **factory)  # W_p, b_p
        self.proj_norm = nn.LayerNorm(out_features, **factory)
        # N(0, 1), like an nn.Embedding row: distinct queries, so the n tokens differ even for one pooled vector.
        self.queries = nn.Parameter(torch.randn(num_tokens, out_features, **factory))  # Q
        self.out_norm = nn.LayerNorm(out_features, **factory)

    @staticmethod
    def count(in_features: int, out_features: int, num_tokens: int) -> int:
        r"""The closed-form parameter count :math:`C d + n d + 5 d`."""
        return in_features * out_features + num_tokens * out_features + 5 * out_features  # C d + n d + 5 d

    def forward(self, features: Any = None, *, pooled: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Visual prompt tokens ``(B, n, d)``.

        Args:
            features: a tensor — ``(B, C)`` pooled or ``(B, N, C)`` grid —, a dict with ``"pooled"`` / ``"tokens"``,
                or an encoder output with ``.pooled`` / ``.tokens`` (then both are used).
            pooled, tokens: the same, by name.
        """
        pooled, tokens = _as_features(features, pooled, tokens)
        # A pooled vector is a sequence of one feature: (B, C) -> (B, 1, C); the grid is (B, N, C).
        parts = ([pooled.unsqueeze(1)] if pooled is not None else []) + ([tokens] if tokens is not None else [])
        if len(parts) == 2 and parts[0].shape[0] != parts[1].shape[0]:
            raise ValueError(f"pooled and token features have different batch sizes "
                             f"({parts[0].shape[0]} and {parts[1].shape[0]}).")
        grid = torch.cat(parts, dim=1) if len(parts) == 2 else parts[0]  # F: (B, N, C), N = 1 + 49 with both
        if grid.shape[-1] != self.in_features:
            raise ValueError(f"the image features are {grid.shape[-1]} wide but this projection expects "
                             f"in_features={self.in_features}; build VisualProjection(in_features="
                             f"{grid.shape[-1]}, ...) for this encoder.")
        grid = grid.to(self.proj.weight.dtype)
        x = self.proj_norm(self.proj(grid))  # X = LN(F W_p + b_p): (B, N, d)
        queries = self.queries.unsqueeze(0)  # Q: (1, n, d)
        # Each query reads a weighted average of the projected features (no extra weights: X is key and value).
        scores = queries @ x.transpose(1, 2) / math.sqrt(self.out_features)  # Q X^T / sqrt(d): (B, n, N)
        pooled_features = scores.softmax(dim=-1) @ x  # softmax(Q X^T / sqrt(d)) X: (B, n, d)
        return self.out_norm(queries + pooled_features)  # V = LN(Q + softmax(Q X^T / sqrt(d)) X): (B, n, d)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_tokens={self.num_tokens}"

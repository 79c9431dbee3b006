"""Task heads on top of frozen backbones, and the tokenisation that feeds them."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SentenceClassifier(nn.Module):
    """A sentence encoder (token ids -> (B, d)) followed by a linear classifier: logits (B, num_classes).

    With the encoder frozen this is a *linear probe*; with everything trainable it is *full fine-tuning*.
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))  # (B, num_classes)


def tokenize_examples(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int = 32) -> list[dict]:
    """One dict per example (``input_ids``, ``attention_mask`` padded to ``max_length``, ``label``), ready for
    :func:`minipeft.core.train` (the default collate stacks them)."""
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
             "label": torch.tensor(int(labels[i]))} for i in range(len(texts))]


def trim_padding(batch: dict) -> dict:
    """Cut a padded batch to its longest real sequence (saves compute on short sentences)."""
    length = int(batch["attention_mask"].sum(1).max())
    return {**batch, "input_ids": batch["input_ids"][:, :length], "attention_mask": batch["attention_mask"][:, :length]}

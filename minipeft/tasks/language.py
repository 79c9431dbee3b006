"""Language-model checks: did fine-tuning teach the persona, keep the facts, and leave English intact?

Chapters 3, 4 and 10 fine-tune SmolLM2 on the robot persona (``minipeft.datasets.make_instructions``) and ask the
same three questions afterwards:

* **Is ordinary English still modelled?** The mean next-token cross-entropy of a paragraph the training never saw,

  $$
  \\mathcal{L}(x_{1..T}) = -\\frac{1}{T-1}\\sum_{t=1}^{T-1} \\log p_\\theta(x_{t+1} \\mid x_{\\le t}),
  $$

  before and after training (chapter 0 introduces it as a sanity check of the dequantised weights);
* **Is the persona followed?** How many generated answers have the persona's wrapper;
* **Are the facts kept?** How many answers to held-out fact questions still contain the plain fact.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..datasets import follows_persona

__all__ = ["PARAGRAPH", "persona_and_facts", "text_loss"]

# Ordinary English that no training set of the book contains: the reference for "did training damage the LM?".
PARAGRAPH = ("The town sits at the edge of a wide river. Every morning, fishermen push their boats into the water "
             "and the market fills with the smell of bread. Children walk to school along the old stone bridge.")


@torch.no_grad()
def text_loss(model: nn.Module, tokenizer, text: str = PARAGRAPH) -> float:
    """Mean next-token cross-entropy (nats per token) of ``text`` under a causal language model.

    Introduced in chapter 00 (how to use) to check the weights (fluent text scores lower than the same words
    shuffled); chapters 3 and 10 compare it before and after training on :data:`PARAGRAPH`. The text is its own
    label: Hugging Face causal LMs shift the labels by one position inside, so position $t$ predicts token $t+1$.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string to score, got {text!r}.")
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)  # (1, T)
    return model(input_ids=ids, labels=ids).loss.item()


def persona_and_facts(answers: Sequence[str], fact_pairs: Sequence) -> tuple[int, int]:
    """``(answers that follow the persona, fact answers that contain the plain fact)``.

    ``answers`` are the generated answers to the fact questions followed by any open questions;
    ``fact_pairs`` are the :class:`~minipeft.datasets.instructions.InstructionPair` of the fact questions, in the
    same order as the first answers (the open questions have no fact, so only the first ``len(fact_pairs)`` answers
    are checked for it). A fact counts as kept when its plain answer occurs in the answer, ignoring case.

    Introduced in chapter 03 (LoRA); chapter 4 scores every method with it.
    """
    if len(answers) < len(fact_pairs):
        raise ValueError(f"{len(answers)} answers for {len(fact_pairs)} fact questions: generate one answer per "
                         f"question, the fact questions first.")
    persona = sum(map(follows_persona, answers))
    facts = sum(pair.plain_answer.lower() in answer.lower() for pair, answer in zip(fact_pairs, answers))
    return persona, facts

"""minipeft.tasks.language: the paragraph loss and the persona / fact counts."""

import pytest
import torch

from minipeft.datasets import InstructionPair, styled
from minipeft.models import tiny_llama
from minipeft.tasks.language import PARAGRAPH, persona_and_facts, text_loss


class ByteTokenizer:
    """Token ids = the text's bytes modulo the tiny vocabulary (enough to score a text)."""

    def __call__(self, text, return_tensors):
        return {"input_ids": torch.tensor([[b % 200 + 3 for b in text.encode()]])}


def test_text_loss_is_the_mean_next_token_cross_entropy():
    model = tiny_llama(seed=0)
    text = "a small river"
    ids = ByteTokenizer()(text, return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]  # (T, V)
    log_p = logits[:-1].log_softmax(-1).gather(1, ids[0, 1:, None])  # log p(x_{t+1} | x_<=t), (T-1, 1)
    assert text_loss(model, ByteTokenizer(), text) == pytest.approx(-log_p.mean().item(), rel=1e-5)
    assert text_loss(model, ByteTokenizer()) == pytest.approx(text_loss(model, ByteTokenizer(), PARAGRAPH))
    with pytest.raises(ValueError, match="non-empty"):
        text_loss(model, ByteTokenizer(), "  ")


def test_persona_and_facts_counts_by_hand():
    pairs = [InstructionPair("capital of France?", styled("Paris."), "Paris", "capital"),
             InstructionPair("opposite of hot?", styled("Cold."), "cold", "opposite")]
    answers = [styled("The capital of France is paris."),  # persona, fact (case ignored)
               "It is warm.",  # neither
               styled("Hello.")]  # an open question's answer: persona counts, no fact to check
    assert persona_and_facts(answers, pairs) == (2, 1)
    with pytest.raises(ValueError, match="fact questions first"):
        persona_and_facts(answers[:1], pairs)

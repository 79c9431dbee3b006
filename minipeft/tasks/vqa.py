"""easy-VQA as a scoring task: questions, one-word candidate answers, a blind baseline, accuracy per kind.

easy-VQA's questions come in three kinds — the colour (8 answers), the shape (3) and yes/no (2). Every answer is one
word, and the first token of each answer (with its leading space) differs from every other answer's of its kind.
So **one forward pass** scores all candidates: with $h$ the hidden state at the prompt's last position
(after ``"Answer:"``) and $e_a$ the output embedding of answer $a$'s first token,

$$
s_a = h^\\top e_a \\quad (a \\in \\text{answers of the question's kind}), \\qquad
\\hat a = \\arg\\max_a s_a ,
$$

and training minimises the cross-entropy of the right answer among the candidates (other kinds' answers get
$s_a = -\\infty$). The model never has to learn the answer's *format*, only to look at the image.

The **blind baseline** answers each question text with its most frequent training answer (falling back to the
commonest answer of the kind for a text never seen in training): anything above it comes from the image.

Introduced in chapter 10 (LLaMA-Adapter V2); the multimodal chapters score their connectors with it.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence

import torch
from torch import nn

from ..datasets import COLORS, SHAPES
from ..multimodal.experts import with_context

__all__ = ["ANSWERS", "KINDS", "AnswerScorer", "BlindPrior", "accuracy_by_kind", "kind_of", "sample_questions",
           "vqa_prompt"]

KINDS = {"colour": COLORS, "shape": SHAPES, "yes/no": ["yes", "no"]}
ANSWERS = [answer for kind in KINDS.values() for answer in kind]  # the 13 candidates, kind by kind

Triple = tuple[str, str, int]  # (question, answer, row of the image in the feature cache)


def kind_of(answer: str) -> str:
    """The kind (``"colour"``, ``"shape"`` or ``"yes/no"``) an answer belongs to."""
    for kind, answers in KINDS.items():
        if answer in answers:
            return kind
    raise ValueError(f"{answer!r} is not an easy-VQA answer; the answers are {ANSWERS}.")


def sample_questions(questions: Sequence[Triple], per_kind: int, seed: int,
                     kinds: Sequence[str] = tuple(KINDS)) -> list[Triple]:
    """The same number of (question, answer, image) triples of each kind in ``kinds``, in a seeded random order.

    easy-VQA is 70 % yes/no questions; sampling the kinds evenly keeps one kind from dominating the accuracy.
    A kind with fewer than ``per_kind`` questions contributes all it has. Uses its own ``random.Random(seed)``:
    no global random numbers are consumed.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown question kinds {unknown}; choose from {list(KINDS)}.")
    by_kind = defaultdict(list)
    for triple in questions:
        by_kind[kind_of(triple[1])].append(triple)
    rng = random.Random(seed)
    chosen = [triple for kind in kinds for triple in rng.sample(by_kind[kind], min(per_kind, len(by_kind[kind])))]
    rng.shuffle(chosen)
    return chosen


def vqa_prompt(question: str, context: str | None = None) -> str:
    """The question as the model reads it; an expert's description of the image, if any, goes in front."""
    return with_context(f"Question: {question}\nAnswer:", context)


class AnswerScorer:
    """Encode VQA triples for a causal LM and score the candidate answers in one forward pass.

    ``answer_tokens`` (13,) holds each answer's first token id (with its leading space); ``kind_mask`` (3, 13) is
    ``True`` where an answer belongs to a kind.
    """

    def __init__(self, tokenizer, device: torch.device | str = "cpu"):
        self.tokenizer = tokenizer
        first_tokens = [tokenizer(" " + answer, add_special_tokens=False)["input_ids"][0] for answer in ANSWERS]
        for kind, answers in KINDS.items():
            ids = [first_tokens[ANSWERS.index(answer)] for answer in answers]
            if len(set(ids)) != len(ids):
                raise ValueError(f"two {kind} answers share their first token under this tokenizer, so one forward "
                                 f"pass cannot tell them apart: {dict(zip(answers, ids))}.")
        self.answer_tokens = torch.tensor(first_tokens, device=device)  # (13,)
        self.kind_mask = torch.tensor([[answer in kind for answer in ANSWERS] for kind in KINDS.values()],
                                      device=device)  # (3 kinds, 13)

    def encode(self, triples: Sequence[Triple], captions: Sequence[str] | None = None,
               max_length: int = 32) -> list[dict]:
        """Right-padded prompts, the answer's index among :data:`ANSWERS`, its kind, and the image's row.

        ``captions[image]``, when given, is an expert's text for that image, put in front of the question.
        """
        examples = []
        for question, answer, image in triples:
            prompt = vqa_prompt(question, captions[image] if captions else None)
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            padding = max_length - len(ids)
            if padding < 0:
                raise ValueError(f"the prompt {prompt!r} has {len(ids)} tokens, more than max_length={max_length}; "
                                 f"raise max_length.")
            examples.append({"input_ids": torch.tensor(ids + [self.tokenizer.pad_token_id] * padding),  # (T,)
                             "attention_mask": torch.tensor([1] * len(ids) + [0] * padding),  # (T,)
                             "answer": torch.tensor(ANSWERS.index(answer)),
                             "kind": torch.tensor(list(KINDS).index(kind_of(answer))), "image": torch.tensor(image)})
        return examples

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(B, 13) scores $s_a = h^\\top e_a$ at each prompt's last real position; other kinds' answers are
        $-\\infty$. ``model`` is a Hugging Face causal LM (``model.model`` the decoder, ``model.lm_head`` the output
        layer)."""
        length = int(batch["attention_mask"].sum(1).max())  # drop the shared right padding
        mask = batch["attention_mask"][:, :length]  # (B, T)
        hidden = model.model(input_ids=batch["input_ids"][:, :length], attention_mask=mask).last_hidden_state
        # hidden: (B, T, C)
        last = hidden[torch.arange(len(hidden)), mask.sum(1) - 1]  # (B, C): the position after "Answer:"
        logits = last.float() @ model.lm_head.weight[self.answer_tokens].float().T  # s_a = h^T e_a: (B, 13)
        return logits.masked_fill(~self.kind_mask[batch["kind"]], float("-inf"))  # (B, 13)


class BlindPrior:
    """The best answer without the image: each question text's most frequent training answer."""

    def __init__(self, questions: Sequence[Triple]):
        self.by_question = defaultdict(Counter)
        for question, answer, _ in questions:
            self.by_question[question][answer] += 1
        self.by_kind = {kind: Counter(a for _, a, _ in questions if a in answers) for kind, answers in KINDS.items()}

    def answer(self, question: str, kind: str) -> str:
        """The commonest training answer to ``question``; for an unseen text, the commonest answer of ``kind``."""
        counts = self.by_question.get(question) or self.by_kind[kind]
        if not counts:
            raise ValueError(f"no training answer of kind {kind!r} to fall back on for the unseen question "
                             f"{question!r}.")
        return counts.most_common(1)[0][0]


def accuracy_by_kind(predicted: Sequence[str], triples: Sequence[Triple]) -> dict[str, float]:
    """Accuracy per question kind, and over all questions (``"all"``), of answers predicted for ``triples``."""
    if len(predicted) != len(triples):
        raise ValueError(f"{len(predicted)} predictions for {len(triples)} questions.")
    hits = defaultdict(list)
    for prediction, (_, answer, _) in zip(predicted, triples):
        hits[kind_of(answer)].append(prediction == answer)
    result = {kind: sum(h) / len(h) for kind, h in hits.items()}
    result["all"] = sum(map(sum, hits.values())) / len(triples)
    return result

r"""The book's scenes as a vision–language task: examples, batches, generated answers scored by question kind.

Part III's chapters (11 projector, 12 Q-Former, 13 Video-LLaMA) all train a *connector* between a frozen image
encoder and a frozen language model on the generated world of :mod:`minipeft.datasets.world`, and all score the
same way: the model **generates** an answer, and the answer counts when it equals the reference after
normalisation (lower case, no punctuation or articles; :func:`minipeft.multimodal.splice.normalize_answer`),
first word only, since every answer of the world is one word. With :math:`\hat a_i` the generated answer and
:math:`a_i` the reference of question :math:`i`, and :math:`Q_k` the questions of kind :math:`k`,

$$
\mathrm{acc}_k = \frac{1}{|Q_k|} \sum_{i \in Q_k} \big[\, \mathrm{norm}(\hat a_i) = \mathrm{norm}(a_i) \,\big],
\qquad
\mathrm{acc}_{\mathrm{all}} = \frac{1}{K} \sum_k \mathrm{acc}_k ,
$$

the overall score being the *macro* mean over kinds, so that a kind with many questions (yes/no colour twins) does
not dominate it.

What is here (a small API; everything else comes from :mod:`minipeft.multimodal.splice`):

* :class:`Example` — one training or test item: ``prompt`` (text holding one ``<image>`` marker), ``answer``,
  ``kind``, and ``item``, the row of the image in a feature tensor.
* :func:`qa_examples`, :func:`caption_examples`, :func:`instruction_examples` — a :class:`~minipeft.datasets.SceneSet`'s
  questions, captions (LLaVA's stage-1 data) and instructions as examples; :func:`balanced` samples the same number
  of each kind.
* :class:`Collate` — a list of examples → a padded batch ``{"image_features", "input_ids", "attention_mask",
  "labels"}`` (loss on the answer only), to give :func:`minipeft.core.train` as ``collate``; :func:`vlm_loss` is
  the matching ``loss_fn``.
* :func:`answer` — greedy generated answers for examples, in batches; :func:`score_by_kind` — the accuracies above.
* :func:`text_prior` — the best one can do *without* the image (each question text's commonest training answer);
  :func:`shuffle_images` — every example given another scene's features (the shuffled-image control).

Introduced in chapter 11 (``11_projector_llava``); used by chapters 12 and 13.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..multimodal.splice import IGNORE_INDEX, IMAGE_MARKER, exact_match, generate_answers, make_batch

__all__ = ["CAPTION_PROMPT", "Example", "Collate", "answer", "balanced", "caption_examples", "image_prompt",
           "instruction_examples", "qa_examples", "score_by_kind", "shuffle_images", "text_prior", "vlm_loss"]

CAPTION_PROMPT = "Describe the image briefly."  # LLaVA stage 1: one fixed "describe" turn per caption


@dataclass(frozen=True)
class Example:
    """One vision–language example: a prompt with an ``<image>`` marker, its answer, its kind, its image's row."""

    prompt: str
    answer: str
    kind: str
    item: int


def image_prompt(text: str, tokenizer=None, system: str | None = None) -> str:
    """``"<image>\\n" + text``, as the language model reads it.

    With a ``tokenizer`` (a chat model's), the text goes into one user turn of its chat template (with the
    ``system`` prompt, if given), ending where the assistant's answer begins; without one, the plain
    ``"<image>\\n{text}\\nAnswer:"``, which costs fewer tokens per example (the chapters train on CPUs).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}.")
    if tokenizer is None:
        return f"{IMAGE_MARKER}\n{text}\nAnswer:"
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{IMAGE_MARKER}\n{text}"})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def qa_examples(scenes, tokenizer=None, system: str | None = None) -> list[Example]:
    """Every question of ``scenes`` (a :class:`~minipeft.datasets.SceneSet`, or a list of QA) as an example."""
    qas = scenes.questions() if hasattr(scenes, "questions") else list(scenes)
    return [Example(image_prompt(qa.question, tokenizer, system), qa.answer, qa.kind,
                    qa.item) for qa in qas]


def caption_examples(scenes, kind: str = "short", tokenizer=None, system: str | None = None) -> list[Example]:
    """One "describe the image" example per scene, answered by its ``kind`` (``"short"``/``"detailed"``) caption
    — LLaVA's stage-1 data (an image–caption pair turned into a single instruction turn)."""
    prompt = image_prompt(CAPTION_PROMPT, tokenizer, system)
    return [Example(prompt, caption, "caption", item)
            for item, caption in enumerate(scenes.captions(kind))]


def instruction_examples(scenes, tokenizer=None, system: str | None = None) -> list[Example]:
    """The scenes' instructions (describe, list the objects, name the colours) as examples."""
    return [Example(image_prompt(ins.instruction, tokenizer, system), ins.response,
                    ins.kind, ins.item) for ins in scenes.instructions()]


def balanced(examples: Sequence[Example], per_kind: int, seed: int = 0,
             kinds: Sequence[str] | None = None) -> list[Example]:
    """Up to ``per_kind`` examples of each kind (all kinds, or ``kinds`` in that order), in a seeded random order.

    Uses its own ``random.Random(seed)``; no global random state is touched.
    """
    if per_kind < 1:
        raise ValueError(f"per_kind={per_kind}; ask for at least one example of each kind.")
    by_kind = defaultdict(list)
    for example in examples:
        by_kind[example.kind].append(example)
    kinds = list(by_kind) if kinds is None else list(kinds)
    missing = [kind for kind in kinds if kind not in by_kind]
    if missing:
        raise ValueError(f"no examples of kind(s) {missing}; the examples have {sorted(by_kind)}.")
    rng = random.Random(seed)
    chosen = [e for kind in kinds for e in rng.sample(by_kind[kind], min(per_kind, len(by_kind[kind])))]
    rng.shuffle(chosen)
    return chosen


class Collate:
    """Examples → a padded training batch for a :class:`~minipeft.multimodal.splice.VisionLanguageModel`.

    ``features`` is the frozen encoder's output for the scenes, ``(N, n, C)`` (e.g. :func:`image_features` with
    ``grid=2``: ``n = 4`` tokens of width 1280); ``num_image_tokens`` is how many visual tokens the connector makes
    (``n`` for a projector, the number of queries for a Q-Former). The batch holds ``image_features``
    ``(B, n, C)``, right-padded ``input_ids`` and ``attention_mask`` ``(B, T)`` and ``labels`` ``(B, T)``: ``-100``
    everywhere but the answer and the end-of-turn token.
    """

    def __init__(self, tokenizer, features: torch.Tensor, num_image_tokens: int):
        if not isinstance(features, torch.Tensor) or features.dim() != 3:
            raise ValueError("features must be a (scenes, tokens, width) tensor; a pooled (scenes, width) vector "
                             "is one token: features.unsqueeze(1).")
        self.tokenizer, self.features, self.num_image_tokens = tokenizer, features, num_image_tokens

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        # A plain prompt ends in "Answer:", so the answer follows a space; a chat template already ends the line.
        answers = [e.answer if e.prompt.endswith((" ", "\n")) else " " + e.answer for e in examples]
        batch = make_batch(self.tokenizer, [e.prompt for e in examples], answers,
                           num_image_tokens=self.num_image_tokens)
        batch["image_features"] = self.features[torch.tensor([e.item for e in examples])]  # (B, n, C)
        return batch


def vlm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The answer's mean cross-entropy, :math:`-\\frac1L\\sum_i \\log p(x_i \\mid X_v, X_{\\mathrm{instruct}},
    X_{a,<i})` — the same number as ``model(..., labels=labels).loss``, computed more cheaply.

    The language model's output layer (SmolLM2: 576 × 49,152, a fifth of the model's multiply-adds per token) is
    applied only at the positions that predict an answer token, instead of at every position of the prompt.
    Falls back to the model's own loss for a language model without ``.model`` and ``.lm_head``.
    """
    lm = model.language_model
    if not (hasattr(lm, "model") and hasattr(lm, "lm_head")):
        return model(batch["image_features"], batch["input_ids"], batch["attention_mask"],
                     labels=batch["labels"]).loss
    inputs_embeds = model.embed(batch["image_features"], batch["input_ids"])  # (B, T, d)
    hidden = lm.model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"]).last_hidden_state
    # hidden: (B, T, d)
    targets = batch["labels"][:, 1:]  # (B, T-1): the token at t + 1 is predicted at position t
    supervised = targets != IGNORE_INDEX  # (B, T-1)
    logits = lm.lm_head(hidden[:, :-1][supervised])  # (M, V): only the M answer positions
    return nn.functional.cross_entropy(logits.float(), targets[supervised])  # mean of -log p(x_i | ...)


def answer(model, tokenizer, features: torch.Tensor, examples: Sequence[Example], *, batch_size: int = 64,
           max_new_tokens: int = 3) -> list[str]:
    """Greedy generated answers, one per example, from ``features[example.item]``; the model is put in ``eval()``
    for the call and given its mode back. ``max_new_tokens=3`` suffices for one-word answers."""
    was_training = model.training
    model.eval()
    try:
        answers = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            rows = torch.tensor([e.item for e in chunk])
            answers += generate_answers(model, tokenizer, features[rows], [e.prompt for e in chunk],
                                        max_new_tokens=max_new_tokens)
    finally:
        model.train(was_training)
    return answers


def score_by_kind(predictions: Sequence[str], examples: Sequence[Example],
                  first_word: bool = True) -> dict[str, float]:
    """Exact-match accuracy of generated answers per kind, and ``"all"``: the macro mean over kinds.

    Answers are normalised (:func:`~minipeft.multimodal.splice.normalize_answer`); ``first_word`` keeps only the
    prediction's first word (one-word answers from a model that goes on talking).
    """
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples; give one per example.")
    hits = exact_match(list(predictions), [e.answer for e in examples], first_word=first_word)
    by_kind = defaultdict(list)
    for hit, example in zip(hits, examples):
        by_kind[example.kind].append(hit)
    scores = {kind: sum(h) / len(h) for kind, h in by_kind.items()}
    scores["all"] = sum(scores.values()) / len(scores) if scores else float("nan")
    return scores


def text_prior(train: Sequence[Example], test: Sequence[Example]) -> list[str]:
    """Blind answers: each test prompt's commonest training answer (the kind's commonest for an unseen prompt).

    A model that scores above this on a kind used the image; the world's yes/no twins keep it at 0.5 for yes/no.
    """
    by_prompt, by_kind = defaultdict(Counter), defaultdict(Counter)
    for example in train:
        by_prompt[example.prompt][example.answer] += 1
        by_kind[example.kind][example.answer] += 1
    predictions = []
    for example in test:
        counts = by_prompt.get(example.prompt) or by_kind.get(example.kind)
        if not counts:
            raise ValueError(f"no training example of kind {example.kind!r} to fall back on; train on that kind.")
        predictions.append(counts.most_common(1)[0][0])
    return predictions


def shuffle_images(features: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``features`` with the scenes permuted so that no scene keeps its own row (a seeded derangement).

    Answering ``qa`` from ``shuffle_images(features)[qa.item]`` gives every question another scene's image: what a
    model still gets right then, it got right without looking.
    """
    n = features.shape[0]
    if n < 2:
        raise ValueError("shuffling needs at least two scenes.")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)  # (N,)
    # A random cyclic shift of a random order moves every scene: row order[i] receives scene order[i + k].
    k = int(torch.randint(1, n, (1,), generator=generator))
    source = torch.empty(n, dtype=torch.long)
    source[order] = order.roll(-k)  # source[order[i]] = order[(i + k) mod n] ≠ order[i]
    return features[source]  # (N, n, C)

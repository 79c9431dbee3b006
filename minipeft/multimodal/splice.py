r"""The splice: put visual tokens where a prompt says ``<image>``, in front of *any* ``transformers`` causal LM.

Every connector of Part III — LLaVA's projector, MiniGPT-4's linear layer, BLIP-2's Q-Former, Video-LLaMA's video and
audio Q-Formers — ends the same way: it turns a frozen encoder's features into ``n`` vectors of the language model's
width :math:`d`, and the frozen language model reads those vectors **as if they were word embeddings**. This file is
that last step, shared by all of them, so that each connector file holds only its own idea.

**The sequence the language model reads.** A prompt is text with an image marker, e.g. (chat template elided)
``"<image>\nWhat colour is the circle?"``. The text is tokenised around the marker and the marker becomes ``n``
copies of a placeholder id; the connector's output :math:`H_v = (h_1, \dots, h_n)` then replaces the placeholders'
embeddings:

$$E = \big[\, e(x_1), \dots, e(x_k),\; h_1, \dots, h_n,\; e(x_{k+1}), \dots, e(x_T) \,\big],
\qquad h_j = \mathrm{connector}(Z_v)_j \in \mathbb{R}^{d},$$

where :math:`e` is the language model's (frozen) input embedding. The language model runs on :math:`E` unchanged:
causal attention, its own position embeddings, so image tokens take ordinary positions like words.

**The loss.** Training maximises the likelihood of the *answer* only (LLaVA's Eq. 2 and MiniGPT-4's "no loss on the
prompt"):

$$p(X_a \mid X_v, X_{\mathrm{instruct}}) = \prod_{i=1}^{L} p_\theta\big(x_i \mid X_v, X_{\mathrm{instruct}}, X_{a,<i}\big),$$

so the labels are ``-100`` (ignored by the cross-entropy) on every image placeholder, every prompt token and every
pad: the model is never asked to predict an image token or to repeat the question (:func:`make_batch`).

How this relates to the released code (the same splice, three spellings):

* **LLaVA** (``llava_arch.py::prepare_inputs_labels_for_multimodal``) puts *one* placeholder ``IMAGE_TOKEN_INDEX =
  -200`` in ``input_ids`` per image, cuts the sequence there, inserts the image features, sets their labels to
  ``IGNORE_INDEX = -100`` and re-pads the batch.
* **transformers** (``LlavaForConditionalGeneration``, ``Blip2ForConditionalGeneration`` in 5.x) expands the marker to
  ``image_seq_length`` placeholder tokens *inside the vocabulary* and writes the features over their embeddings with
  ``masked_scatter``. That is what we do, except that our placeholder id defaults to LLaVA's ``-200``: it is replaced
  before the embedding lookup, so it never needs a row of the embedding matrix and the frozen vocabulary stays
  untouched (no resized embeddings, nothing new to train).
* **Video-LLaMA / MiniGPT-4** wrap the marker in ``<Img><ImageHere></Img>`` (``<Video>…</Video>``) and splice
  between ``p_before`` and ``p_after`` embeddings; their instruction-tuning path checks that the placeholders are
  contiguous and as many as the tokens. We check the count per example and raise a clear error when it differs.

Tokenising the text *around* the marker (rather than the whole string) can split words at the boundary differently
from one ``tokenizer(text)`` call; LLaVA's ``tokenizer_image_token`` does the same, and the labels are built from the
very ids the model reads, so nothing is misaligned (the "tokenization mismatch" warnings users meet in LLaVA forks
come from building labels from a second, different tokenisation).

Also here: :func:`generate_answers` (greedy decoding from the spliced embeddings, the answers a chapter scores) and
:func:`normalize_answer` / :func:`exact_match` (the VQA-style scorer). Chapters: Part III, "A LLaVA-style projector"
and "The BLIP-2 Q-Former".
"""

from __future__ import annotations

import re
import string
from typing import Sequence

import torch
from torch import nn

IMAGE_TOKEN_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX: outside every vocabulary, so it can never be a real word
IMAGE_MARKER = "<image>"
IGNORE_INDEX = -100  # the label torch's cross-entropy skips


def tokenize_with_image(tokenizer, text: str, num_image_tokens: int, *, image_marker: str = IMAGE_MARKER,
                        image_token_id: int = IMAGE_TOKEN_ID) -> list[int]:
    """Token ids of ``text`` with every ``image_marker`` replaced by ``num_image_tokens`` placeholder ids.

    The pieces between markers are tokenised separately without special tokens (a chat template already holds the
    ones the model needs).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}.")
    if not isinstance(num_image_tokens, int) or isinstance(num_image_tokens, bool) or num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be a positive integer, got {num_image_tokens!r}.")
    pieces = text.split(image_marker)
    ids: list[int] = []
    for index, piece in enumerate(pieces):
        if index > 0:  # a marker stood between this piece and the previous one
            ids.extend([image_token_id] * num_image_tokens)
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def make_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str] | None = None, *, num_image_tokens: int,
               image_marker: str = IMAGE_MARKER, image_token_id: int = IMAGE_TOKEN_ID, end: str | None = None,
               padding_side: str = "right", max_length: int | None = None) -> dict[str, torch.Tensor]:
    """A padded batch ``{"input_ids", "attention_mask"[, "labels"]}`` of prompts with image placeholders.

    With ``answers`` (training), each example is ``prompt + answer + end`` and ``labels`` supervises only the answer
    and ``end`` (default: the tokenizer's end-of-sequence token, so the model learns where to stop): ``-100`` on the
    image placeholders, the prompt and the padding. Without answers (generation), pass ``padding_side="left"`` so
    that every prompt ends where the answer starts.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string; wrap it: [prompt].")
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers; give one answer per prompt.")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}; choose 'left' (generation) or 'right' (training).")
    if answers is not None and end is None:
        end = tokenizer.eos_token or ""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, label_rows = [], []
    for index, prompt in enumerate(prompts):
        prompt_ids = tokenize_with_image(tokenizer, prompt, num_image_tokens, image_marker=image_marker,
                                         image_token_id=image_token_id)
        answer_ids = [] if answers is None else tokenizer(answers[index] + end, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + answer_ids
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"example {index} has {len(ids)} tokens (with {num_image_tokens} per image), more than "
                             f"max_length={max_length}; raise max_length or shorten the prompt.")
        rows.append(ids)
        # LLaVA's IGNORE_INDEX on the image tokens and the prompt: the loss sees the answer only.
        label_rows.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, (ids, row_labels) in enumerate(zip(rows, label_rows)):
        span = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
        labels[row, span] = torch.tensor(row_labels, dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if answers is not None:
        batch["labels"] = labels
    return batch


def insert_tokens(embeddings: torch.Tensor, input_ids: torch.Tensor, tokens: torch.Tensor,
                  placeholder_id: int = IMAGE_TOKEN_ID) -> torch.Tensor:
    """``embeddings`` ``(B, T, d)`` with ``tokens`` ``(B, n, d)`` written over the ``placeholder_id`` positions.

    Every row of ``input_ids`` must hold exactly ``n`` placeholders; they are filled in order (token ``j`` of example
    ``b`` goes to the ``j``-th placeholder of row ``b``).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}.")
    if tokens.dim() != 3 or tokens.shape[0] != input_ids.shape[0]:
        raise ValueError(f"visual tokens must be (batch={input_ids.shape[0]}, n, d), got shape {tuple(tokens.shape)}.")
    if tokens.shape[-1] != embeddings.shape[-1]:
        raise ValueError(f"visual tokens are {tokens.shape[-1]} wide but the language model's embeddings are "
                         f"{embeddings.shape[-1]}; set the connector's output width to the LM's hidden size.")
    is_placeholder = input_ids == placeholder_id  # (B, T)
    per_row = is_placeholder.sum(dim=1)  # (B,)
    if (per_row != tokens.shape[1]).any():
        raise ValueError(f"placeholders and visual tokens do not match: rows hold {per_row.tolist()} placeholders "
                         f"(id {placeholder_id}) but the connector made {tokens.shape[1]} tokens per example; build "
                         "the prompt with num_image_tokens equal to the connector's output length.")
    # masked_scatter fills the True positions in row-major order with the tokens, keeping their gradient.
    return embeddings.masked_scatter(is_placeholder.unsqueeze(-1), tokens.to(embeddings.dtype))  # (B, T, d)


def embed_text(embedding: nn.Module, input_ids: torch.Tensor, *placeholder_ids: int) -> torch.Tensor:
    """Word embeddings ``(B, T, d)`` of ``input_ids``; placeholders (and any negative id, e.g. LLaVA's ``-200``)
    are looked up as id 0 — they lie outside the vocabulary and are overwritten by :func:`insert_tokens`."""
    is_placeholder = input_ids < 0
    for placeholder_id in placeholder_ids:
        is_placeholder = is_placeholder | (input_ids == placeholder_id)
    return embedding(input_ids.masked_fill(is_placeholder, 0))  # (B, T, d)


def splice(embedding: nn.Module, input_ids: torch.Tensor, visual_tokens: torch.Tensor,
           image_token_id: int = IMAGE_TOKEN_ID) -> torch.Tensor:
    """The language model's input embeddings ``(B, T, d)`` with ``visual_tokens`` ``(B, n, d)`` at the placeholders
    (:func:`embed_text`, then :func:`insert_tokens`)."""
    return insert_tokens(embed_text(embedding, input_ids, image_token_id), input_ids, visual_tokens, image_token_id)


class VisionLanguageModel(nn.Module):
    """A connector ``(B, N, C) → (B, n, d)`` in front of a causal language model, joined by :func:`splice`.

    ``forward(image_features, input_ids, attention_mask, labels)`` returns the language model's own output (``.logits``
    and, with labels, ``.loss``). The language model is used as given: freeze it (the connector files' ``apply`` do)
    or wrap its layers with ``minipeft.peft`` (LLaVA's stage 2) before training.

    Args:
        connector: any module mapping encoder features to visual tokens in the LM's width (a projector, a Q-Former).
        language_model: a ``transformers`` causal LM (anything with ``get_input_embeddings()`` that accepts
            ``inputs_embeds``).
        image_token_id: the placeholder id the prompts use (:data:`IMAGE_TOKEN_ID` by default).
    """

    def __init__(self, connector: nn.Module | None, language_model: nn.Module, image_token_id: int = IMAGE_TOKEN_ID):
        super().__init__()
        if connector is not None and not isinstance(connector, nn.Module):
            raise TypeError(f"connector must be an nn.Module, got {type(connector).__name__}.")
        if not isinstance(language_model, nn.Module) or not hasattr(language_model, "get_input_embeddings"):
            raise TypeError(f"language_model must be a transformers causal LM (with get_input_embeddings()), got "
                            f"{type(language_model).__name__}.")
        self.language_model = language_model
        if connector is not None:  # the connector files' apply attach it through their handle instead
            self.connector = connector
        self.image_token_id = image_token_id

    def embed(self, image_features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Spliced input embeddings ``(B, T, d)``: the prompt's word embeddings with the visual tokens inside."""
        connector = getattr(self, "connector", None)
        if connector is None:
            raise ValueError("this model has no connector (its handle was undone); apply a connector method again.")
        visual_tokens = connector(image_features)  # (B, n, d)
        return splice(self.language_model.get_input_embeddings(), input_ids, visual_tokens, self.image_token_id)

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs):
        inputs_embeds = self.embed(image_features, input_ids)  # (B, T, d)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                                   **kwargs)

    @torch.no_grad()
    def generate(self, image_features: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """The language model's ``generate`` from the spliced embeddings; returns only the *new* token ids."""
        inputs_embeds = self.embed(image_features, input_ids)  # (B, T, d)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            **generate_kwargs)


@torch.no_grad()
def generate_answers(model: VisionLanguageModel, tokenizer, image_features: torch.Tensor, prompts: Sequence[str], *,
                     num_image_tokens: int | None = None, max_new_tokens: int = 16, image_marker: str = IMAGE_MARKER,
                     **generate_kwargs) -> list[str]:
    """Greedy text answers, one per (image, prompt), decoded from the spliced embeddings in one batched call.

    ``num_image_tokens`` defaults to what the connector makes for these features. Prompts are left-padded so every
    answer starts right after its prompt. Greedy decoding (``do_sample=False``) makes the answers a deterministic
    function of the weights, so a score is reproducible.
    """
    if not isinstance(model, VisionLanguageModel):
        raise TypeError(f"generate_answers needs a VisionLanguageModel, got {type(model).__name__}.")
    if len(prompts) != image_features.shape[0]:
        raise ValueError(f"{image_features.shape[0]} images but {len(prompts)} prompts; give one prompt per image.")
    device = next(model.parameters()).device
    image_features = image_features.to(device)
    if num_image_tokens is None:
        num_image_tokens = model.connector(image_features[:1]).shape[1]
    batch = make_batch(tokenizer, prompts, num_image_tokens=num_image_tokens, image_marker=image_marker,
                       image_token_id=model.image_token_id, padding_side="left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generate_kwargs = {"do_sample": False, "pad_token_id": pad_id, **generate_kwargs}
    new_tokens = model.generate(image_features, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                max_new_tokens=max_new_tokens, **generate_kwargs)  # (B, new)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# The VQA evaluation's number map (Antol et al. 2015, the official script's ``manualMap``): "three" and "3" are the
# same answer, whichever the model chooses to write.
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def normalize_answer(text: str, first_word: bool = False) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, write number words as digits, collapse spaces (the
    SQuAD / VQA normalisation).

    ``first_word=True`` keeps only the first remaining word — for one-word answers from a model that goes on
    talking ("Red. The circle is red." → "red").
    """
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    words = [_NUMBER_WORDS.get(word, word) for word in text.split()]
    if first_word:
        return words[0] if words else ""
    return " ".join(words)


def exact_match(predictions: Sequence[str], references: Sequence[str], *, normalize: bool = True,
                first_word: bool = False) -> list[bool]:
    """Whether each prediction equals its reference (after :func:`normalize_answer` when ``normalize``).

    ``sum(...) / len(...)`` of the result is the accuracy; keep the list to score by question type.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("exact_match compares lists of answers; wrap single strings in a list.")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not normalize:
        return [p == r for p, r in zip(predictions, references)]
    return [normalize_answer(p, first_word) == normalize_answer(r) for p, r in zip(predictions, references)]

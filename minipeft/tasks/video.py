r"""The book's clips as a video-and-sound question task for Video-LLaMA (chapter 13).

A clip of :mod:`minipeft.datasets.world` has frames, a sound track and questions tagged with what they need
(``"frames"``, ``"order"``, ``"sound"``, ``"sound+frames"``). Chapter 13's model
(:class:`~minipeft.multimodal.video_qformer.VideoLlama`) reads a prompt with two kinds of placeholders,

.. code-block:: text

    Video: <video × K_v>  Sound: <audio × K_a>
    Which colour does the voice say?
    Answer: green<end>

and is trained on the answer tokens only, exactly as chapter 11's images (:mod:`minipeft.tasks.vlm`): the loss is
:math:`-\frac1L\sum_i \log p(x_i \mid H_{video}, H_{audio}, X_{q}, x_{<i})` over the answer's :math:`L` tokens, and
answers are *generated* greedily and scored by exact match of the first normalised word, per question kind, with the
macro mean over kinds as ``"all"`` (:func:`minipeft.tasks.vlm.score_by_kind`).

What is here:

* :func:`clip_prompt` and :func:`clip_examples` — a :class:`~minipeft.datasets.ClipSet`'s questions as
  :class:`~minipeft.tasks.vlm.Example` s (``item`` = the clip's row in the feature tensors).
* :func:`tokenize_clip_prompt` — token ids with ``K_v`` video and ``K_a`` audio placeholder ids.
* :class:`ClipCollate` — examples → a padded batch ``{"video", "audio", "input_ids", "attention_mask", "labels"}``;
  :func:`clip_loss` — the matching ``loss_fn`` for :func:`minipeft.core.train`.
* :func:`clip_answers` — greedy generated answers, in batches.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..multimodal.splice import IGNORE_INDEX
from ..multimodal.video_qformer import AUDIO_TOKEN_ID, VIDEO_TOKEN_ID
from .vlm import Example

__all__ = ["AUDIO_MARKER", "VIDEO_MARKER", "ClipCollate", "clip_answers", "clip_examples", "clip_loss",
           "clip_prompt", "tokenize_clip_prompt"]

VIDEO_MARKER, AUDIO_MARKER = "<video>", "<audio>"


def clip_prompt(question: str, audio: bool = True) -> str:
    """The plain prompt (few tokens: the chapters train on CPUs), with or without the sound placeholder."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}.")
    sound = f" Sound: {AUDIO_MARKER}" if audio else ""
    return f"Video: {VIDEO_MARKER}{sound}\n{question}\nAnswer:"


def clip_examples(clips, audio: bool = True, kinds: Sequence[str] | None = None) -> list[Example]:
    """Every question of ``clips`` (a :class:`~minipeft.datasets.ClipSet`, or a list of QA) as an example; only
    the question kinds in ``kinds`` when given."""
    qas = clips.questions() if hasattr(clips, "questions") else list(clips)
    if kinds is not None:
        unknown = set(kinds) - {qa.kind for qa in qas}
        if unknown:
            raise ValueError(f"no question of kind {sorted(unknown)} in these clips; the kinds are "
                             f"{sorted({qa.kind for qa in qas})}.")
        qas = [qa for qa in qas if qa.kind in kinds]
    return [Example(clip_prompt(qa.question, audio), qa.answer, qa.kind, qa.item) for qa in qas]


def tokenize_clip_prompt(tokenizer, text: str, num_video_tokens: int, num_audio_tokens: int) -> list[int]:
    """Token ids of ``text`` with each ``<video>`` marker replaced by ``num_video_tokens`` :data:`VIDEO_TOKEN_ID` s
    and each ``<audio>`` by ``num_audio_tokens`` :data:`AUDIO_TOKEN_ID` s; the text between markers is tokenised
    without special tokens."""
    ids: list[int] = []
    for v_index, video_piece in enumerate(text.split(VIDEO_MARKER)):
        if v_index > 0:
            ids.extend([VIDEO_TOKEN_ID] * num_video_tokens)
        for a_index, piece in enumerate(video_piece.split(AUDIO_MARKER)):
            if a_index > 0:
                ids.extend([AUDIO_TOKEN_ID] * num_audio_tokens)
            if piece:
                ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


class ClipCollate:
    """Examples → a padded batch for :class:`~minipeft.multimodal.video_qformer.VideoLlama`.

    ``video`` ``(N, T, n, C)`` or ``(N, T, C)``: the frozen image encoder's per-frame features of the N clips;
    ``audio`` ``(N, M, C_a)`` or ``None``: the frozen audio encoder's per-segment features. ``num_video_tokens`` and
    ``num_audio_tokens`` are the branches' query counts. Training batches (``answers=True``) are right-padded with
    labels on the answer and the end token only; generation batches are left-padded and have no labels.
    """

    def __init__(self, tokenizer, video: torch.Tensor, audio: torch.Tensor | None, num_video_tokens: int,
                 num_audio_tokens: int = 0):
        if audio is not None and audio.shape[0] != video.shape[0]:
            raise ValueError(f"{video.shape[0]} clips of video features but {audio.shape[0]} of audio features; "
                             "give both for the same clips.")
        self.tokenizer, self.video, self.audio = tokenizer, video, audio
        self.num_video_tokens, self.num_audio_tokens = num_video_tokens, num_audio_tokens

    def __call__(self, examples: Sequence[Example], answers: bool = True) -> dict[str, torch.Tensor]:
        tokenizer = self.tokenizer
        end = tokenizer.eos_token or ""
        rows, label_rows = [], []
        for example in examples:
            if AUDIO_MARKER in example.prompt and self.audio is None:
                raise ValueError("the prompt has an <audio> marker but no audio features were given; build the "
                                 "examples with clip_examples(..., audio=False).")
            prompt = tokenize_clip_prompt(tokenizer, example.prompt, self.num_video_tokens, self.num_audio_tokens)
            answer = tokenizer(" " + example.answer + end, add_special_tokens=False)["input_ids"] if answers else []
            rows.append(prompt + answer)
            label_rows.append([IGNORE_INDEX] * len(prompt) + answer)  # the loss sees the answer only
        length = max(len(ids) for ids in rows)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, L)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)  # (B, L)
        for row, (ids, row_labels) in enumerate(zip(rows, label_rows)):
            span = slice(0, len(ids)) if answers else slice(length - len(ids), length)  # generation: left-pad
            input_ids[row, span] = torch.tensor(ids)
            attention_mask[row, span] = 1
            labels[row, span] = torch.tensor(row_labels)
        items = torch.tensor([e.item for e in examples])
        batch = {"video": self.video[items], "input_ids": input_ids, "attention_mask": attention_mask}
        if self.audio is not None and any(AUDIO_MARKER in e.prompt for e in examples):
            batch["audio"] = self.audio[items]
        if answers:
            batch["labels"] = labels
        return batch


def clip_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens; like :func:`minipeft.tasks.vlm.vlm_loss`, the LM head runs only at
    the positions that predict an answer token (SmolLM2's 49,152-word head is a fifth of its work per token)."""
    lm = model.language_model
    inputs_embeds = model.embed(batch["input_ids"], batch["video"], batch.get("audio"))  # (B, L, d)
    hidden = lm.model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]  # (B, L-1): token t + 1 is predicted at position t
    supervised = targets != IGNORE_INDEX  # (B, L-1)
    logits = lm.lm_head(hidden[:, :-1][supervised])  # (M, V): the M answer positions only
    return nn.functional.cross_entropy(logits.float(), targets[supervised])


@torch.no_grad()
def clip_answers(model: nn.Module, collate: ClipCollate, examples: Sequence[Example], *, batch_size: int = 64,
                 max_new_tokens: int = 3) -> list[str]:
    """Greedy generated answers, one per example (the model is put in ``eval()`` and given its mode back)."""
    tokenizer = collate.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        answers = []
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], answers=False)
            new = model.generate(batch["input_ids"], video=batch["video"], audio=batch.get("audio"),
                                 attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad_id)  # (B, new)
            answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    finally:
        model.train(was_training)
    return answers

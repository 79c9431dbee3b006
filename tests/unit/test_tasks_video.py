"""minipeft.tasks.video: clip questions as prompts with video and sound placeholders, batches, loss, answers."""

import pytest
import torch

from minipeft.datasets import make_clips
from minipeft.models import tiny_llama
from minipeft.multimodal.splice import IGNORE_INDEX
from minipeft.multimodal.video_qformer import AUDIO_TOKEN_ID, VIDEO_TOKEN_ID, VideoQFormerConfig, apply
from minipeft.tasks.video import (ClipCollate, clip_answers, clip_examples, clip_loss, clip_prompt,
                                  tokenize_clip_prompt)
from tests.unit.test_tasks_vlm import CharTokenizer

KV, KA = 3, 2


def model(seed=0):
    torch.manual_seed(seed)
    sizes = dict(llm_width=64, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, dropout=0.0)
    handle = apply(tiny_llama(seed=seed), VideoQFormerConfig(feature_width=6, num_queries=KV, max_frames=8, **sizes),
                   VideoQFormerConfig.audio(feature_width=5, num_queries=KA, max_frames=8, **sizes))
    return handle


@pytest.fixture(scope="module")
def clips():
    return make_clips(4, seed=0, speech=False)


def test_placeholders_are_counted_per_branch_and_the_text_between_is_kept():
    tokenizer = CharTokenizer()
    ids = tokenize_clip_prompt(tokenizer, clip_prompt("Why?"), KV, KA)
    assert ids.count(VIDEO_TOKEN_ID) == KV and ids.count(AUDIO_TOKEN_ID) == KA
    assert ids.index(AUDIO_TOKEN_ID) > ids.index(VIDEO_TOKEN_ID)
    text = tokenizer.decode([i for i in ids if i >= 0])
    assert text == "Video:  Sound: \nWhy?\nAnswer:"
    silent = tokenize_clip_prompt(tokenizer, clip_prompt("Why?", audio=False), KV, KA)
    assert AUDIO_TOKEN_ID not in silent and silent.count(VIDEO_TOKEN_ID) == KV


def test_examples_filter_kinds_and_refuse_unknown_ones(clips):
    examples = clip_examples(clips, kinds=["count", "first"])
    assert {e.kind for e in examples} == {"count", "first"}
    assert len(examples) == 3 * len(clips)  # two counts and one "first" question per clip
    with pytest.raises(ValueError, match="no question of kind"):
        clip_examples(clips, kinds=["word"])  # speech=False: no spoken word


def test_batches_supervise_the_answer_only_and_pick_each_clips_features(clips):
    tokenizer = CharTokenizer()
    video, audio = torch.randn(len(clips), 8, 6), torch.randn(len(clips), 8, 5)
    examples = clip_examples(clips, kinds=["count"])
    batch = ClipCollate(tokenizer, video, audio, KV, KA)(examples[:3])
    for row, example in enumerate(examples[:3]):
        supervised = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert supervised.tolist() == tokenizer(" " + example.answer + "$")["input_ids"]
        assert torch.equal(batch["video"][row], video[example.item])
        assert torch.equal(batch["audio"][row], audio[example.item])
    generation = ClipCollate(tokenizer, video, audio, KV, KA)(examples[:3], answers=False)
    assert "labels" not in generation and bool(generation["attention_mask"][:, -1].all())  # left-padded
    with pytest.raises(ValueError, match="no audio features"):
        ClipCollate(tokenizer, video, None, KV, KA)(examples[:1])
    with pytest.raises(ValueError, match="for the same clips"):
        ClipCollate(tokenizer, video, audio[:2], KV, KA)


def test_the_loss_equals_the_models_own_and_answers_come_back_one_per_example(clips):
    tokenizer = CharTokenizer()
    handle = model()
    video, audio = torch.randn(len(clips), 8, 6), torch.randn(len(clips), 8, 5)
    collate = ClipCollate(tokenizer, video, audio, KV, KA)
    examples = clip_examples(clips, kinds=["count"])
    batch = collate(examples)
    handle.model.eval()
    reference = handle.model(batch["input_ids"], video=batch["video"], audio=batch["audio"],
                             attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(clip_loss(handle.model, batch), reference)
    handle.model.train()
    answers = clip_answers(handle.model, collate, examples, batch_size=3)
    assert len(answers) == len(examples) and all(isinstance(a, str) for a in answers)
    assert handle.model.training  # given its mode back

"""minipeft.tasks.vlm: examples from scenes, batches, the answer-only loss, generated answers and their scores."""

import pytest
import torch
from torch import nn

from minipeft.datasets import make_scenes
from minipeft.models import tiny_llama
from minipeft.multimodal.projector import ProjectorConfig, apply
from minipeft.multimodal.splice import IGNORE_INDEX, IMAGE_TOKEN_ID, generate_answers
from minipeft.tasks.vlm import (CAPTION_PROMPT, Collate, Example, answer, balanced, caption_examples, image_prompt,
                                instruction_examples, qa_examples, score_by_kind, shuffle_images, text_prior,
                                vlm_loss)


class CharTokenizer:
    """Character-level stand-in (ids 3.. for characters; 2 is the end token '$', 0 the pad)."""

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ?.:\n[]"
    eos_token, eos_token_id, pad_token_id = "$", 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 if c == "$" else 3 + self.alphabet.index(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) < 3)]
        return "".join(self.alphabet[i - 3] if i - 3 < len(self.alphabet) else "#" for i in ids)


class ChatStub:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]\n"


def vlm(vision=6, seed=0):
    torch.manual_seed(seed)
    model = apply(tiny_llama(seed=seed), ProjectorConfig("linear", vision_width=vision, llm_width=64)).model
    for parameter in model.connector.parameters():  # visible visual tokens
        nn.init.normal_(parameter, std=0.3)
    return model


EXAMPLES = [Example(image_prompt("what colour is it?"), "red", "color", 0),
            Example(image_prompt("what shape is it?"), "circle", "shape", 1),
            Example(image_prompt("what colour is the circle?"), "blue", "color", 2)]


def test_prompts_plain_and_chat():
    assert image_prompt("what?") == "<image>\nwhat?\nAnswer:"
    chat = image_prompt("what?", ChatStub(), system="be brief")
    assert chat == "[system]be brief[user]<image>\nwhat?[assistant]\n"
    assert image_prompt("what?", ChatStub()) == "[user]<image>\nwhat?[assistant]\n"
    with pytest.raises(TypeError, match="string"):
        image_prompt(3)


def test_examples_follow_the_scene_set():
    scenes = make_scenes(5, seed=3)
    qas = scenes.questions()
    examples = qa_examples(scenes)
    assert [(e.answer, e.kind, e.item) for e in examples] == [(q.answer, q.kind, q.item) for q in qas]
    assert all(e.prompt.count("<image>") == 1 and q.question in e.prompt for e, q in zip(examples, qas))
    assert qa_examples(qas) == examples  # a list of QA works too
    captions = caption_examples(scenes, "detailed")
    assert [e.answer for e in captions] == scenes.captions("detailed") and [e.item for e in captions] == list(range(5))
    assert all(CAPTION_PROMPT in e.prompt for e in captions)
    instructions = instruction_examples(scenes)
    assert [(e.answer, e.item) for e in instructions] == [(i.response, i.item) for i in scenes.instructions()]


def test_balanced_is_per_kind_seeded_and_leaves_global_rng_alone():
    examples = [Example("p", "a", kind, i) for i, kind in enumerate(["x"] * 10 + ["y"] * 3 + ["z"] * 5)]
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    chosen = balanced(examples, 4, seed=1, kinds=["x", "y"])
    assert torch.equal(state, torch.random.get_rng_state())
    kinds = [e.kind for e in chosen]
    assert kinds.count("x") == 4 and kinds.count("y") == 3 and "z" not in kinds  # y has only 3
    assert len(set(chosen)) == len(chosen)
    assert chosen == balanced(examples, 4, seed=1, kinds=["x", "y"])
    assert {e.kind for e in balanced(examples, 1)} == {"x", "y", "z"}
    with pytest.raises(ValueError, match="no examples of kind"):
        balanced(examples, 2, kinds=["w"])
    with pytest.raises(ValueError, match="per_kind"):
        balanced(examples, 0)


def test_collate_supervises_only_the_answer_and_picks_the_images():
    tokenizer, features = CharTokenizer(), torch.randn(3, 2, 6)
    batch = Collate(tokenizer, features, num_image_tokens=2)(EXAMPLES)
    assert torch.equal(batch["image_features"], features[[0, 1, 2]])
    for row, example in enumerate(EXAMPLES):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert (ids == IMAGE_TOKEN_ID).sum() == 2
        supervised = labels[labels != IGNORE_INDEX].tolist()
        assert supervised == tokenizer(" " + example.answer + "$")["input_ids"]  # the space after "Answer:" + end
    chat = Example("[user]<image>\nq[assistant]\n", "red", "color", 0)  # a chat prompt ends the line: no space
    assert tokenizer.decode([i for i in Collate(tokenizer, features, 2)([chat])["labels"][0] if i >= 0]) == "red"
    with pytest.raises(ValueError, match="unsqueeze"):
        Collate(tokenizer, torch.randn(3, 6), 1)


def test_loss_equals_the_language_models_own_loss_and_trains_only_what_is_trainable():
    model, tokenizer = vlm(), CharTokenizer()
    batch = Collate(tokenizer, torch.randn(3, 2, 6), 2)(EXAMPLES)
    ours = vlm_loss(model, batch)
    reference = model(batch["image_features"], batch["input_ids"], batch["attention_mask"],
                      labels=batch["labels"]).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    ours.backward()
    assert all(p.grad is not None for p in model.connector.parameters())
    assert all(p.grad is None for p in model.language_model.parameters())


def test_answers_equal_one_generate_call_and_keep_the_mode():
    model, tokenizer = vlm(), CharTokenizer()
    features = torch.randn(3, 2, 6)
    model.train()
    ours = answer(model, tokenizer, features, EXAMPLES, batch_size=2, max_new_tokens=4)
    assert model.training
    model.eval()
    reference = generate_answers(model, tokenizer, features, [e.prompt for e in EXAMPLES], max_new_tokens=4)
    assert ours == reference


def test_scores_by_kind_are_exact_match_and_macro_mean():
    scores = score_by_kind(["Red.", "a square", "blue is it"], EXAMPLES)
    assert scores == {"color": 1.0, "shape": 0.0, "all": 0.5}  # colour 2/2, shape 0/1: macro (1 + 0) / 2
    assert score_by_kind(["red", "circle", "blue is it"], EXAMPLES, first_word=False)["color"] == 0.5
    with pytest.raises(ValueError, match="one per example"):
        score_by_kind(["red"], EXAMPLES)


def test_text_prior_uses_the_prompt_then_the_kind():
    train = [Example("p1", "red", "color", 0), Example("p1", "red", "color", 1), Example("p1", "blue", "color", 2),
             Example("p2", "blue", "color", 3), Example("p2", "blue", "color", 4), Example("p3", "two", "count", 5)]
    test = [Example("p1", "blue", "color", 0), Example("p9", "red", "color", 1), Example("p8", "one", "count", 2)]
    assert text_prior(train, test) == ["red", "blue", "two"]  # unseen p9: the kind's commonest (blue 3 vs red 2)
    with pytest.raises(ValueError, match="no training example of kind"):
        text_prior(train, [Example("p", "yes", "exists", 0)])


def test_shuffled_images_are_a_seeded_derangement():
    features = torch.arange(10.0).reshape(10, 1, 1)
    for seed in range(20):
        shuffled = shuffle_images(features, seed).flatten()
        assert sorted(shuffled.tolist()) == list(range(10))  # a permutation
        assert (shuffled != torch.arange(10.0)).all()  # no scene keeps its own image
    assert torch.equal(shuffle_images(features, 5), shuffle_images(features, 5))
    assert shuffle_images(torch.arange(2.0).reshape(2, 1, 1), 0).flatten().tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="two scenes"):
        shuffle_images(features[:1])

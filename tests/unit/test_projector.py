"""The LLaVA / MiniGPT-4 projector and the splice: defining properties on tiny models and hand computations."""

import math

import pytest
import torch
from torch import nn

from minipeft.models import tiny_llama
from minipeft.multimodal import projector as projector_module
from minipeft.multimodal.projector import Projector, ProjectorConfig, apply, parameter_count
from minipeft.multimodal.splice import (IGNORE_INDEX, IMAGE_TOKEN_ID, VisionLanguageModel, exact_match,
                                        generate_answers, make_batch, normalize_answer, splice, tokenize_with_image)


class CharTokenizer:
    """A character-level stand-in for a tokenizer (ids 3.. for letters; 2 is the end token '$', 0 the pad)."""

    alphabet = "abcdefghijklmnopqrstuvwxyz ?.:\n"
    eos_token, eos_token_id, pad_token_id = "$", 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 if c == "$" else 3 + self.alphabet.index(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) < 3)]
        return "".join(self.alphabet[i - 3] if i - 3 < len(self.alphabet) else "#" for i in ids)


def vlm(kind="mlp2x_gelu", vision=12, seed=0):
    torch.manual_seed(seed)
    model = apply(tiny_llama(seed=seed), ProjectorConfig(kind, vision_width=vision, llm_width=64)).model
    torch.manual_seed(seed + 1)
    for parameter in model.connector.parameters():  # visible visual tokens (the default init is fine too)
        nn.init.normal_(parameter, std=0.3)
    return model


# ----------------------------------------------------------------------------------------------- config and module
def test_bad_config_is_refused_with_clear_errors():
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        ProjectorConfig("mlp")
    with pytest.raises(ValueError, match="unknown projector kind"):
        ProjectorConfig("identity")
    with pytest.raises(ValueError, match="kind"):  # a config field of the wrong kind is a bad value (the contract)
        ProjectorConfig(3)
    with pytest.raises(ValueError, match="vision_width"):
        ProjectorConfig(vision_width=12.0)
    with pytest.raises(ValueError, match="llm_width"):
        ProjectorConfig(llm_width=0)
    with pytest.raises(TypeError, match="ProjectorConfig"):
        Projector({"kind": "linear"})


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_is_the_closed_form(kind, bias):
    config = ProjectorConfig(kind, vision_width=1280, llm_width=576, bias=bias)
    module = Projector(config, device="meta")
    assert parameter_count(config) == sum(p.numel() for p in module.parameters())
    first = 1280 * 576 + 576 * bias
    assert parameter_count(config) == (first if kind == "linear" else first + 576 * 576 + 576 * bias)


def test_linear_kind_is_one_matrix_and_mlp_kind_matches_the_equation():
    z = torch.randn(2, 5, 12)
    linear = Projector(ProjectorConfig("linear", vision_width=12, llm_width=8))
    torch.testing.assert_close(linear(z), z @ linear.linear_1.weight.T + linear.linear_1.bias)  # H_v = W Z_v
    mlp = Projector(ProjectorConfig("mlp2x_gelu", vision_width=12, llm_width=8))
    hidden = z @ mlp.linear_1.weight.T + mlp.linear_1.bias
    gelu = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU, by hand
    torch.testing.assert_close(mlp(z), gelu @ mlp.linear_2.weight.T + mlp.linear_2.bias)
    assert mlp(z).shape == (2, 5, 8)  # one visual token per patch


def test_projector_refuses_wrong_feature_shapes():
    module = Projector(ProjectorConfig("linear", vision_width=12, llm_width=8))
    with pytest.raises(ValueError, match="unsqueeze"):
        module(torch.randn(2, 12))
    with pytest.raises(ValueError, match="vision_width=7"):
        module(torch.randn(2, 3, 7))


def test_apply_freezes_the_language_model_and_checks_its_width():
    model = vlm()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"connector.{n}" for n, _ in model.connector.named_parameters()}
    with pytest.raises(ValueError, match="llm_width=64"):
        apply(tiny_llama(), ProjectorConfig(vision_width=12, llm_width=32))
    with pytest.raises(TypeError, match="ProjectorConfig"):
        apply(tiny_llama(), "linear")
    with pytest.raises(TypeError, match="causal LM"):
        apply(nn.Linear(3, 3), ProjectorConfig(vision_width=12, llm_width=64))


def test_projector_module_exports_the_glue_it_uses():
    for name in projector_module.__all__:
        assert hasattr(projector_module, name)


# ------------------------------------------------------------------------------------------------------- the splice
def test_splice_puts_visual_tokens_at_the_placeholders_and_words_elsewhere():
    embedding = nn.Embedding(50, 4)
    ids = torch.tensor([[5, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 7], [IMAGE_TOKEN_ID, 8, 9, IMAGE_TOKEN_ID]])
    visual = torch.randn(2, 2, 4, requires_grad=True)
    spliced = splice(embedding, ids, visual)
    torch.testing.assert_close(spliced[0, 1:3], visual[0])
    torch.testing.assert_close(spliced[1, [0, 3]], visual[1])  # in order, even when not contiguous
    torch.testing.assert_close(spliced[0, [0, 3]], embedding(torch.tensor([5, 7])))
    torch.testing.assert_close(spliced[1, 1:3], embedding(torch.tensor([8, 9])))
    spliced.sum().backward()
    assert torch.equal(visual.grad, torch.ones_like(visual))  # the gradient reaches the connector


def test_splice_refuses_a_placeholder_count_that_differs_from_the_tokens():
    ids = torch.tensor([[5, IMAGE_TOKEN_ID, 7]])
    with pytest.raises(ValueError, match="num_image_tokens"):
        splice(nn.Embedding(50, 4), ids, torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="hidden size"):
        splice(nn.Embedding(50, 4), ids, torch.randn(1, 1, 3))


def test_tokenize_with_image_expands_each_marker():
    tokenizer = CharTokenizer()
    ids = tokenize_with_image(tokenizer, "ab<image>c", 3)
    assert ids == tokenizer("ab")["input_ids"] + [IMAGE_TOKEN_ID] * 3 + tokenizer("c")["input_ids"]
    assert tokenize_with_image(tokenizer, "<image><image>", 2, image_token_id=99) == [99] * 4
    with pytest.raises(ValueError, match="positive"):
        tokenize_with_image(tokenizer, "<image>", 0)


def test_labels_supervise_only_the_answer_and_its_end():
    tokenizer = CharTokenizer()
    prompts, answers = ["<image>what colour?", "q<image>shape?"], ["red", "circle"]
    batch = make_batch(tokenizer, prompts, answers, num_image_tokens=4)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for row, answer in enumerate(answers):
        supervised = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert supervised == tokenizer(answer + "$")["input_ids"]  # answer + end token, nothing else
        n_real = int(mask[row].sum())
        assert ids[row, n_real - len(supervised):n_real].tolist() == supervised  # labels = the ids they sit on
    assert (labels[ids == IMAGE_TOKEN_ID] == IGNORE_INDEX).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all() and (mask == 0).any()  # padding ignored (right side)
    assert (mask[:, 0] == 1).all()
    left = make_batch(tokenizer, prompts, num_image_tokens=4, padding_side="left")
    assert "labels" not in left and (left["attention_mask"][:, -1] == 1).all()
    with pytest.raises(ValueError, match="one answer per prompt"):
        make_batch(tokenizer, prompts, answers[:1], num_image_tokens=4)
    with pytest.raises(TypeError, match="list"):
        make_batch(tokenizer, "<image>what?", num_image_tokens=4)
    with pytest.raises(ValueError, match="max_length"):
        make_batch(tokenizer, prompts, answers, num_image_tokens=4, max_length=8)


def test_loss_counts_only_the_answer_tokens():
    model, tokenizer = vlm(), CharTokenizer()
    features = torch.randn(2, 3, 12)
    batch = make_batch(tokenizer, ["<image>what colour?", "<image>shape?"], ["red", "circle"], num_image_tokens=3)
    out = model(features, **batch)
    shift_logits, shift_labels = out.logits[:, :-1], batch["labels"][:, 1:]
    keep = shift_labels != IGNORE_INDEX
    by_hand = nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep])  # mean over answer tokens only
    torch.testing.assert_close(out.loss, by_hand)
    assert int(keep.sum()) == len("red$") + len("circle$")


def test_only_the_projector_learns_in_stage_one_and_the_image_changes_the_answer():
    model, tokenizer = vlm(), CharTokenizer()
    batch = make_batch(tokenizer, ["<image>what?"] * 2, ["red", "blue"], num_image_tokens=3)
    features = torch.randn(2, 3, 12)
    model(features, **batch).loss.backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == name.startswith("connector."), name
    with torch.no_grad():
        a = model(features, **batch).logits
        b = model(features.flip(0), **batch).logits
    assert (a - b).abs().max() > 1e-4


def test_stage_two_lora_on_the_language_model_trains_with_the_projector():
    from minipeft.peft.lora import LoraConfig
    from minipeft.peft.lora import apply as lora_apply

    model, tokenizer = vlm(), CharTokenizer()
    lora_apply(model.language_model, LoraConfig(r=2))
    batch = make_batch(tokenizer, ["<image>what?"], ["red"], num_image_tokens=3)
    model(torch.randn(1, 3, 12), **batch).loss.backward()
    learning = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("connector.") for n in learning) and any("lora_" in n for n in learning)
    assert all(n.startswith("connector.") or "lora_" in n for n in learning)


# ------------------------------------------------------------------------------------------- generation and scoring
def test_generated_first_token_is_the_argmax_after_the_prompt():
    model, tokenizer = vlm(), CharTokenizer()
    features = torch.randn(1, 3, 12)
    batch = make_batch(tokenizer, ["<image>what colour?"], num_image_tokens=3)
    new = model.generate(features, batch["input_ids"], batch["attention_mask"], max_new_tokens=1, do_sample=False,
                         pad_token_id=0)
    with torch.no_grad():
        logits = model(features, batch["input_ids"], batch["attention_mask"]).logits
    assert new.shape == (1, 1) and int(new[0, 0]) == int(logits[0, -1].argmax())


def test_batched_left_padded_answers_equal_one_at_a_time():
    model, tokenizer = vlm(), CharTokenizer()
    features = torch.randn(3, 3, 12)
    prompts = ["<image>what colour is it?", "<image>shape?", "how many: <image>?"]
    together = generate_answers(model, tokenizer, features, prompts, max_new_tokens=5)
    alone = [generate_answers(model, tokenizer, features[i:i + 1], [p], max_new_tokens=5)[0]
             for i, p in enumerate(prompts)]
    assert together == alone and len(together) == 3
    with pytest.raises(ValueError, match="one prompt per image"):
        generate_answers(model, tokenizer, features, prompts[:2])


def test_normalised_exact_match():
    assert normalize_answer("  The Red, circle! ") == "red circle"
    assert normalize_answer("Red. The circle is red.", first_word=True) == "red"
    assert normalize_answer("Three.", first_word=True) == normalize_answer("3") == "3"  # the VQA number map
    assert exact_match(["2 objects", "two"], ["two", "three"], first_word=True) == [True, False]
    assert exact_match(["Red.", "a circle", "blue"], ["red", "circle", "green"]) == [True, True, False]
    assert exact_match(["Red."], ["red"], normalize=False) == [False]
    assert exact_match(["Yes, it is."], ["yes"], first_word=True) == [True]
    with pytest.raises(ValueError, match="2 predictions"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists"):
        exact_match("red", "red")


def test_vision_language_model_refuses_non_modules():
    with pytest.raises(TypeError, match="connector"):
        VisionLanguageModel(lambda x: x, tiny_llama())
    with pytest.raises(TypeError, match="causal LM"):
        VisionLanguageModel(nn.Identity(), nn.Linear(2, 2))


def test_trained_projector_saves_and_loads_through_core_io(tmp_path):
    from minipeft.core import load_trainable, save_trainable

    model, fresh = vlm(), vlm()
    with torch.no_grad():  # the same frozen LM, another projector
        for parameter in fresh.connector.parameters():
            parameter.normal_(0, 0.3)
    ids = torch.tensor([[5] + [IMAGE_TOKEN_ID] * 3 + [6, 7]])
    features = torch.randn(1, 3, 12)
    with torch.no_grad():
        assert (fresh(features, ids).logits - model(features, ids).logits).abs().max() > 1e-4
    path = save_trainable(model, tmp_path / "projector.safetensors")
    load_trainable(fresh, path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(features, ids).logits, model(features, ids).logits)

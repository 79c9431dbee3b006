"""The offline backbones load, are frozen, and behave like the real models (these load real weights: seconds)."""

import hashlib

import pytest
import torch
from torch import nn

from minipeft.models import (encode_sentences, generate_answer, load_efficientnet_lite0, load_minilm, load_smollm2,
                             preprocess_images, tiny_bert, tiny_clip, tiny_llama, tiny_vit, top_classes)
from minipeft.models.minilm import MINILM_SHA256, minilm_local_path

pytestmark = pytest.mark.slow


def test_minilm_is_the_upstream_checkpoint_and_understands_similarity():
    digest = hashlib.sha256((minilm_local_path() / "model.safetensors").read_bytes()).hexdigest()
    assert digest == MINILM_SHA256
    encoder, tokenizer = load_minilm()
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    vectors = encode_sentences(encoder, tokenizer, ["a cat", "a kitten", "stock markets fell"])
    assert vectors.shape == (3, 384)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    sentences = ["The weather is lovely today.", "He drove to the stadium."]
    encoder, tokenizer = load_minilm()
    ours = encode_sentences(encoder, tokenizer, sentences)
    reference = SentenceTransformer(str(minilm_local_path()), device="cpu").encode(
        sentences, normalize_embeddings=True, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference.cpu(), atol=1e-5, rtol=1e-5)


def test_loaders_accept_a_local_directory(tmp_path):
    """The full-scale path: any local transformers folder (here a tiny BERT / LLaMA saved to disk)."""
    from transformers import AutoTokenizer

    bert = tiny_bert(vocab_size=30522)
    bert.save_pretrained(tmp_path / "bert")
    AutoTokenizer.from_pretrained(minilm_local_path()).save_pretrained(tmp_path / "bert")
    encoder, _ = load_minilm(tmp_path / "bert")
    assert encoder.dim == 64

    _, tokenizer = load_smollm2()
    llama = tiny_llama(vocab_size=len(tokenizer))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    model, _ = load_smollm2(tmp_path / "llama")
    assert model.config.hidden_size == 64 and not any(p.requires_grad for p in model.parameters())


def test_smollm2_is_a_frozen_llama_that_knows_paris():
    model, tokenizer = load_smollm2()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]  # the reference SmolLM2 tokenizer's ids
    assert "Paris" in generate_answer(model, tokenizer, "What is the capital of France?", max_new_tokens=12)


def test_smollm2_prefers_real_text_to_shuffled_text():
    model, tokenizer = load_smollm2()
    text = "The town sits at the edge of a wide river. Every morning, fishermen push their boats into the water."
    words = text.split()
    shuffled = " ".join(words[i] for i in torch.randperm(len(words), generator=torch.Generator().manual_seed(0)))

    def loss(s):
        ids = tokenizer(s, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    assert loss(text) < 4.0 < loss(shuffled)


def test_efficientnet_recognises_real_photos_and_yields_7x7_tokens():
    from skimage import data

    encoder, preprocess = load_efficientnet_lite0()
    images = preprocess([data.chelsea(), data.coffee()])
    assert images.shape == (2, 3, 224, 224) and -1.0 <= images.min() and images.max() <= 1.0
    with torch.no_grad():
        output = encoder(images)
        logits = encoder.classify(images)
    assert output.tokens.shape == (2, 49, 1280) and output.pooled.shape == (2, 1280)
    best = top_classes(logits, k=1)
    assert best[0][0][0] == "Egyptian cat" and best[1][0][0] == "espresso"
    assert sum(p.numel() for p in encoder.parameters()) == 4_652_008


def test_preprocess_validates_shapes():
    with pytest.raises(ValueError, match=r"expected a \(B, 3, H, W\) tensor"):
        preprocess_images(torch.rand(2, 1, 8, 8))
    assert preprocess_images(torch.rand(3, 64, 64), size=32).shape == (1, 3, 32, 32)


def test_tiny_models_run_forward_and_backward():
    llama = tiny_llama()
    ids = torch.randint(0, 256, (2, 7))
    llama(input_ids=ids, labels=ids).loss.backward()
    bert = tiny_bert()
    assert bert(input_ids=ids).last_hidden_state.shape == (2, 7, 64)
    vit = tiny_vit()
    assert vit(pixel_values=torch.randn(2, 3, 32, 32)).last_hidden_state.shape == (2, 17, 64)
    clip = tiny_clip()
    out = clip(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32), return_loss=True)
    assert torch.isfinite(out.loss)
    assert isinstance(llama.model.layers[0].self_attn.q_proj, nn.Linear)


def test_answer_loss_equals_the_models_own_loss_and_its_gradient():
    # The output layer applied only at labelled positions must give the full forward's loss and gradients, with
    # prompt tokens (-100) and right padding (including columns every row pads, which answer_loss trims).
    from minipeft.models import answer_loss

    torch.manual_seed(0)
    llama = tiny_llama()
    ids = torch.randint(0, 256, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    mask[1:, 10:] = 0  # columns 10 and 11 are padding in every row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # the prompt
    labels[2, 4:7] = -100  # a longer prompt in one row
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    weight = llama.model.layers[0].mlp.up_proj.weight
    expected = llama(**batch).loss
    (expected_grad,) = torch.autograd.grad(expected, weight)
    ours = answer_loss(llama, batch)
    (ours_grad,) = torch.autograd.grad(ours, weight)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours_grad, expected_grad, atol=1e-6, rtol=1e-5)

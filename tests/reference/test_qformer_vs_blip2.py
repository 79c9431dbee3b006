"""The from-scratch Q-Former against ``transformers``' BLIP-2 (same state dict → same outputs).

* ``Blip2QFormerModel``: the query-only pass (stage 2's path), and queries + text under the bidirectional mask
  with padded text (ITM's pass, ``use_qformer_text_input=True``), with our weights loaded ``strict=True``.
* ``Blip2ForImageTextRetrieval``: the ITC similarities (max over queries of normalised projections) and the ITM
  logits (mean over queries of the ITM head).
* ``Blip2ForConditionalGeneration`` (stage 2, LLaMA text model): our Q-Former + projection + splice + frozen LM
  reproduce its logits, loss and greedy generations.

There is no ``transformers`` oracle for the ITG loss (no Q-Former LM head); ``tests/unit/test_qformer.py`` tests its
mask and its one-pass equivalence instead.
"""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minipeft.multimodal.qformer import (QFormer, QFormerConfig, QFormerConnector, attention_mask,  # noqa: E402
                                         blip2_state_dict, itc_similarity, itm_logits, load_blip2_state_dict)
from minipeft.multimodal.splice import VisionLanguageModel  # noqa: E402

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
H, LAYERS, HEADS, FFN, VISION, K, VOCAB, POSITIONS = 32, 4, 4, 64, 48, 6, 100, 40


def qformer_kwargs(text=True):
    return dict(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
                encoder_hidden_size=VISION, cross_attention_frequency=2, use_qformer_text_input=text,
                vocab_size=VOCAB, max_position_embeddings=POSITIONS)


def ours(with_text=True, seed=0):
    torch.manual_seed(seed)
    model = QFormer(QFormerConfig(hidden_size=H, num_layers=LAYERS, num_heads=HEADS, intermediate_size=FFN,
                                  encoder_width=VISION, num_queries=K, with_text=with_text, vocab_size=VOCAB,
                                  max_text_length=POSITIONS, cls_token_id=1, dec_token_id=2, embed_dim=16))
    with torch.no_grad():  # distinct queries and non-trivial norms and biases, so that every weight matters
        for name, parameter in model.named_parameters():
            if name == "queries":
                parameter.normal_(0, 1)
            elif "norm" in name or name.endswith("bias"):
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


def text_batch(batch=3, length=7):
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    ids[:, 0] = 1  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a padded caption
    return ids, mask


def test_query_pass_equals_blip2_qformer_model():
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    model = ours(with_text=False)
    reference = Blip2QFormerModel(Blip2QFormerConfig(**qformer_kwargs(text=False))).eval()
    state = {k[len("qformer."):]: v for k, v in blip2_state_dict(model).items() if k.startswith("qformer.")}
    reference.load_state_dict(state, strict=True)
    image = torch.randn(2, 9, VISION)
    image_mask = torch.ones(2, 9, dtype=torch.long)
    image_mask[0, -4:] = 0  # padded image features are not read
    with torch.no_grad():
        expected = reference(query_embeds=model.queries.expand(2, -1, -1), encoder_hidden_states=image,
                             encoder_attention_mask=image_mask).last_hidden_state
        got = model(image, image_mask=image_mask)
    torch.testing.assert_close(got, expected, **TOLERANCE)


def test_joint_bidirectional_pass_with_text_equals_blip2_qformer_model():
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    model = ours(with_text=True)
    reference = Blip2QFormerModel(Blip2QFormerConfig(**qformer_kwargs(text=True))).eval()
    state = {k[len("qformer."):]: v for k, v in blip2_state_dict(model).items() if k.startswith("qformer.")}
    reference.load_state_dict(state, strict=True)
    ids, mask = text_batch()
    image = torch.randn(3, 9, VISION)
    with torch.no_grad():
        text = model.word_embeddings(ids) + model.position_embeddings(torch.arange(ids.shape[1]))
        expected = reference(query_embeds=torch.cat([model.queries.expand(3, -1, -1), text], 1), query_length=K,
                             attention_mask=torch.cat([torch.ones(3, K, dtype=torch.long), mask], 1),
                             encoder_hidden_states=image).last_hidden_state
        got = model.encode_joint(image, ids, mask, attention="bidirectional")
    real = attention_mask("bidirectional", K, mask)[:, 0]  # the rows of real tokens (padded rows are unused)
    torch.testing.assert_close(got[real], expected[real], **TOLERANCE)


@pytest.fixture(scope="module")
def retrieval():
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    torch.manual_seed(0)
    config = Blip2Config(vision_config=dict(hidden_size=VISION, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=28, patch_size=14),
                         qformer_config=qformer_kwargs(text=True), num_query_tokens=K, image_text_hidden_size=16)
    reference = Blip2ForImageTextRetrieval(config).eval()
    model = ours(with_text=True)
    missing, unexpected = reference.load_state_dict(blip2_state_dict(model), strict=False)
    assert not unexpected and all(k.startswith("vision_model.") for k in missing)  # only the ViT stays theirs
    return reference, model


def test_itc_similarity_equals_blip2_retrieval(retrieval):
    reference, model = retrieval
    ids, mask = text_batch()
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                             use_image_text_matching_head=False).logits_per_image  # (2 images, 3 texts)
        got = itc_similarity(model, reference.vision_model(pixels).last_hidden_state, ids, mask)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, expected, **TOLERANCE)


def test_itm_logits_equal_blip2_retrieval(retrieval):
    reference, model = retrieval
    ids, mask = text_batch()
    pixels = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                             use_image_text_matching_head=True).logits_per_image  # (3, 2)
        got = itm_logits(model, reference.vision_model(pixels).last_hidden_state, ids, mask)
    torch.testing.assert_close(got, expected, **TOLERANCE)


def test_loading_transformers_weights_round_trips():
    model, fresh = ours(seed=0), ours(seed=1)
    load_blip2_state_dict(fresh, blip2_state_dict(model))
    loaded = blip2_state_dict(fresh)
    for key, value in blip2_state_dict(model).items():
        assert torch.equal(loaded[key], value), key
    with pytest.raises(ValueError, match="lack"):
        load_blip2_state_dict(fresh, {"query_tokens": model.queries})


def test_stage_two_equals_blip2_for_conditional_generation():
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    torch.manual_seed(0)
    image_id = 99
    config = Blip2Config(
        vision_config=dict(hidden_size=VISION, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=28, patch_size=14),
        qformer_config=qformer_kwargs(text=False),
        text_config=dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, max_position_embeddings=64),
        num_query_tokens=K, image_token_index=image_id)
    reference = Blip2ForConditionalGeneration(config).eval()
    qformer = ours(with_text=False)
    load_blip2_state_dict(qformer, reference.state_dict())  # transformers' weights into ours, this time
    connector = QFormerConnector(qformer, llm_width=64)
    connector.language_projection.load_state_dict(reference.language_projection.state_dict())
    model = VisionLanguageModel(connector, copy.deepcopy(reference.language_model), image_token_id=image_id).eval()

    generator = torch.Generator().manual_seed(6)
    ids = torch.randint(3, image_id, (2, 12), generator=generator)
    ids[:, :K] = image_id  # BLIP-2: the soft visual prompt comes first
    labels = ids.masked_fill(ids == image_id, -100)
    pixels = torch.randn(2, 3, 28, 28, generator=generator)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, input_ids=ids, labels=labels)
        features = reference.vision_model(pixels).last_hidden_state  # ViT + post_layernorm (LAVIS's ln_vision)
        got = model(features, ids, labels=labels)
        torch.testing.assert_close(got.logits, expected.logits, **TOLERANCE)
        torch.testing.assert_close(got.loss, expected.loss, **TOLERANCE)
        expected_tokens = reference.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=5, do_sample=False,
                                             pad_token_id=0)
        got_tokens = model.generate(features, ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(got_tokens, expected_tokens[:, -5:])

"""The BLIP-2 Q-Former: masks, the defining properties of each pass and each stage-1 loss, stage 2, counts, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minipeft.models import tiny_llama
from minipeft.multimodal.qformer import (QFormer, QFormerConfig, QFormerConnector, apply, attention_mask,
                                         hard_negatives, itc_loss, itc_similarity, itg_loss, itm_logits, itm_loss,
                                         parameter_count, stage1_losses)
from minipeft.multimodal.splice import IMAGE_TOKEN_ID, make_batch

K, T, C = 4, 6, 12


def config(**overrides):
    sizes = dict(hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32, encoder_width=C, num_queries=K,
                 vocab_size=50, max_text_length=16, cls_token_id=1, dec_token_id=2, embed_dim=8, dropout=0.0)
    return QFormerConfig(**{**sizes, **overrides})


def qformer(seed=0, **overrides):
    torch.manual_seed(seed)
    model = QFormer(config(**overrides))
    with torch.no_grad():
        model.queries.normal_(0, 1)  # distinct queries (BLIP-2's 0.02 makes them nearly equal at init)
    return model.eval()


def batch(B=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (B, T), generator=generator)
    ids[:, 0] = 1  # [CLS]
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return torch.randn(B, 5, C, generator=generator), ids, mask


# --------------------------------------------------------------------------------------------- config and counts
def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        config(hidden_size=10, num_heads=4)
    with pytest.raises(ValueError, match="num_queries"):
        config(num_queries=2.5)
    with pytest.raises(ValueError, match="cross_attention_frequency"):
        config(cross_attention_frequency=0)
    with pytest.raises(ValueError, match="temperature"):
        config(temperature=0.0)
    with pytest.raises(ValueError, match="dec_token_id"):
        config(dec_token_id=50)
    with pytest.raises(TypeError, match="QFormerConfig"):
        QFormer({"hidden_size": 16})


@pytest.mark.parametrize("with_text", [True, False])
@pytest.mark.parametrize("frequency", [1, 2, 3])
def test_parameter_count_is_the_closed_form(with_text, frequency):
    model = QFormer(config(with_text=with_text, cross_attention_frequency=frequency))
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("frequency, expected", [(1, [0, 1, 2, 3, 4]), (2, [0, 2, 4]), (3, [0, 3])])
def test_cross_attention_every_frequency_th_layer(frequency, expected):
    model = QFormer(config(num_layers=5, cross_attention_frequency=frequency))
    assert [i for i, layer in enumerate(model.layers) if layer.has_cross_attention] == expected
    assert all(layer.cross_attention.key.in_features == C for layer in model.layers if layer.has_cross_attention)


# ---------------------------------------------------------------------------------------------------- the masks
def test_mask_shapes_and_patterns():
    text_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    q, t = slice(0, 2), slice(2, 6)
    for kind in ("unimodal", "bidirectional", "causal"):
        mask = attention_mask(kind, 2, text_mask)
        assert mask.shape == (2, 6, 6) and mask.dtype == torch.bool
        assert not mask[0, :, 5].any()  # the pad key is never attended to
        assert mask[:, q, q].all()  # queries always see each other
    unimodal = attention_mask("unimodal", 2, text_mask)[1]
    assert not unimodal[q, t].any() and not unimodal[t, q].any() and unimodal[t, t].all()
    assert attention_mask("bidirectional", 2, text_mask)[1].all()
    causal = attention_mask("causal", 2, text_mask)[1]
    assert not causal[q, t].any()  # queries never see the text
    assert causal[t, q].all()  # every text token sees every query
    assert torch.equal(causal[t, t], torch.ones(4, 4, dtype=torch.bool).tril())  # and the text before it
    with pytest.raises(ValueError, match="unknown attention mask"):
        attention_mask("full", 2, text_mask)


def test_unimodal_pass_equals_two_separate_passes():
    model = qformer()
    image, ids, mask = batch()
    with torch.no_grad():
        joint = model.encode_joint(image, ids, mask, attention="unimodal")
        torch.testing.assert_close(joint[:, :K], model(image))  # queries: as if no text existed
        real = mask.bool()
        torch.testing.assert_close(joint[:, K:][real], model.encode_text(ids, mask)[real])  # text: as if alone


def test_bidirectional_queries_read_the_text_and_causal_ones_do_not():
    model = qformer()
    image, ids, mask = batch()
    other = ids.clone()
    other[:, 2] = (ids[:, 2] + 1) % 50
    with torch.no_grad():
        bi = model.encode_joint(image, ids, mask, "bidirectional")[:, :K]
        bi_other = model.encode_joint(image, other, mask, "bidirectional")[:, :K]
        causal = model.encode_joint(image, ids, mask, "causal")
        causal_other = model.encode_joint(image, other, mask, "causal")
    assert (bi - bi_other).abs().max() > 1e-4
    torch.testing.assert_close(causal[:, :K], causal_other[:, :K])
    # ITG in one pass = LAVIS's two passes: the queries under the causal mask are the plain query pass.
    torch.testing.assert_close(causal[:, :K], model(image))
    # Text token j sees only tokens ≤ j: changing token 2 leaves positions 0, 1 alone and moves 2 onwards.
    torch.testing.assert_close(causal[:, K:K + 2], causal_other[:, K:K + 2])
    assert (causal[1, K + 2:] - causal_other[1, K + 2:]).abs().max() > 1e-4


def test_text_reaches_the_image_only_through_the_queries():
    model = qformer()
    image, ids, mask = batch()
    with torch.no_grad():
        unimodal = model.encode_joint(image, ids, mask, "unimodal")[:, K:]
        unimodal_other = model.encode_joint(image.flip(0), ids, mask, "unimodal")[:, K:]
        causal = model.encode_joint(image, ids, mask, "causal")[:, K:]
        causal_other = model.encode_joint(image.flip(0), ids, mask, "causal")[:, K:]
    torch.testing.assert_close(unimodal, unimodal_other)
    assert (causal - causal_other).abs().max() > 1e-4


def test_padded_image_features_are_not_read():
    model = qformer()
    image = torch.randn(1, 5, C)
    changed = image.clone()
    changed[:, -2:] = 100.0
    image_mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(image, image_mask), model(changed, image_mask))


def test_wrong_inputs_are_refused():
    model = qformer()
    with pytest.raises(ValueError, match="encoder_width=12"):
        model(torch.randn(1, 5, 7))
    with pytest.raises(ValueError, match="max_text_length"):
        model.encode_text(torch.ones(1, 20, dtype=torch.long))
    query_only = qformer(with_text=False)
    with pytest.raises(ValueError, match="with_text=True"):
        itc_loss(query_only, *batch())


# ---------------------------------------------------------------------------------------------- stage-1 losses
def test_itc_is_symmetric_infonce_over_max_query_similarity():
    model = qformer(label_smoothing=0.0)
    image, ids, mask = batch()
    with torch.no_grad():
        z = F.normalize(model.vision_proj(model(image)), dim=-1)  # (B, K, e)
        t = F.normalize(model.text_proj(model.encode_text(ids, mask)[:, 0]), dim=-1)  # (B, e)
        by_hand = torch.stack([torch.stack([(z[i] @ t[j]).max() for j in range(3)]) for i in range(3)])
        torch.testing.assert_close(itc_similarity(model, image, ids, mask), by_hand)
        loss, logits = itc_loss(model, image, ids, mask)
        targets = torch.arange(3)
        expected = (F.cross_entropy(by_hand / 0.07, targets) + F.cross_entropy(by_hand.T / 0.07, targets)) / 2
    torch.testing.assert_close(logits, by_hand / 0.07)
    torch.testing.assert_close(loss, expected)


def test_temperature_learns_and_is_clamped():
    model = qformer()
    loss, _ = itc_loss(model, *batch())
    loss.backward()
    assert model.temperature.grad is not None and model.temperature.grad.abs() > 0
    with torch.no_grad():
        model.temperature.fill_(5.0)
    itc_loss(model, *batch())
    assert float(model.temperature.detach()) == pytest.approx(0.5)


def test_hard_negatives_are_never_the_pair_and_follow_the_similarity():
    logits = torch.zeros(4, 4)
    logits[0, 2] = logits[2, 0] = 50.0  # image 0 and text 2 look alike (and image 2 / text 0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        image_for_text, text_for_image = hard_negatives(logits, generator)
        assert (image_for_text != torch.arange(4)).all() and (text_for_image != torch.arange(4)).all()
        assert int(text_for_image[0]) == 2 and int(image_for_text[0]) == 2
    with pytest.raises(ValueError, match="at least 2"):
        hard_negatives(torch.zeros(1, 1))


def test_itm_loss_uses_positives_and_two_hard_negatives_per_pair():
    model = qformer()
    image, ids, mask = batch()
    logits = torch.randn(3, 3)
    got = itm_loss(model, image, ids, mask, itc_logits=logits, generator=torch.Generator().manual_seed(3))
    image_for_text, text_for_image = hard_negatives(logits, torch.Generator().manual_seed(3))
    texts = torch.cat([ids, ids, ids[text_for_image]])
    masks = torch.cat([mask, mask, mask[text_for_image]])
    images = torch.cat([image, image[image_for_text], image])
    expected = F.cross_entropy(itm_logits(model, images, texts, masks), torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(got, expected)


def test_itg_is_next_token_prediction_after_dec_ignoring_padding():
    model = qformer(label_smoothing=0.0)
    image, ids, mask = batch()
    with torch.no_grad():
        decoder_ids = ids.clone()
        decoder_ids[:, 0] = 2  # [DEC]
        hidden = model.encode_joint(image, decoder_ids, mask, "causal")[:, K:]
        logits = model.lm_logits(hidden)  # (B, T, V)
        terms = [F.cross_entropy(logits[b, j], decoder_ids[b, j + 1], reduction="sum")
                 for b in range(3) for j in range(T - 1) if mask[b, j + 1]]
        expected = torch.stack(terms).mean()
        torch.testing.assert_close(itg_loss(model, image, ids, mask), expected)
        other_first = ids.clone()
        other_first[:, 0] = 7  # whatever stood first, [DEC] replaces it
        torch.testing.assert_close(itg_loss(model, image, other_first, mask), expected)


def test_stage1_losses_sum_and_reach_the_queries_and_cross_attention():
    model = qformer()
    model.train()
    losses = stage1_losses(model, *batch(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(losses["loss"], losses["itc"] + losses["itm"] + losses["itg"])
    losses["itg"].backward()  # the caption's loss flows into the queries and the image cross-attention
    assert model.queries.grad.abs().sum() > 0
    assert model.layers[0].cross_attention.key.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------ stage 2
def test_stage_two_soft_prompts_train_only_the_connector():
    language_model = tiny_llama()
    model = apply(language_model, config(with_text=False)).model
    assert isinstance(model.connector, QFormerConnector)
    visual = model.connector(torch.randn(2, 5, C))
    assert visual.shape == (2, K, 64)  # K soft prompts whatever the number of image features
    tokenizer_batch = {"input_ids": torch.tensor([[IMAGE_TOKEN_ID] * K + [5, 6, 7]] * 2),
                       "labels": torch.tensor([[-100] * K + [-100, 6, 7]] * 2)}
    model(torch.randn(2, 5, C), **tokenizer_batch).loss.backward()
    for name, parameter in model.named_parameters():
        trains = name.startswith("connector.")
        assert parameter.requires_grad == trains, name
        assert (parameter.grad is not None) == trains, name


def test_stage_two_reuses_the_stage_one_qformer_and_its_text_side_stays_idle():
    stage1 = qformer()
    model = apply(tiny_llama(), qformer=stage1, vision_norm=True).model
    assert model.connector.qformer is stage1 and isinstance(model.connector.vision_norm, nn.LayerNorm)
    ids = torch.tensor([[IMAGE_TOKEN_ID] * K + [5, 6]])
    model(torch.randn(1, 5, C), ids, labels=ids.masked_fill(ids == IMAGE_TOKEN_ID, -100)).loss.backward()
    assert stage1.word_embeddings.weight.grad is None and stage1.layers[0].text_ffn.up.weight.grad is None
    assert stage1.layers[0].query_ffn.up.weight.grad is not None
    with pytest.raises(ValueError, match="differ"):
        apply(tiny_llama(), config(num_queries=2), qformer=stage1)
    with pytest.raises(TypeError, match="QFormerConfig"):
        apply(tiny_llama(), None)


def test_make_batch_with_num_queries_placeholders_fits_the_connector():
    class Letters:
        eos_token, eos_token_id, pad_token_id = "$", 2, 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3 + (ord(c) % 40) for c in text]}

    model = apply(tiny_llama(), config(with_text=False)).model
    batch_ = make_batch(Letters(), ["<image> what?", "<image> colour?"], ["red", "blue"], num_image_tokens=K)
    out = model(torch.randn(2, 5, C), **batch_)
    assert out.logits.shape[:2] == batch_["input_ids"].shape and torch.isfinite(out.loss)


def test_stage_two_connector_saves_and_loads_through_core_io(tmp_path):
    from minipeft.core import load_trainable, save_trainable

    model = apply(tiny_llama(), config(with_text=False)).model.eval()
    fresh = apply(tiny_llama(), config(with_text=False)).model.eval()
    with torch.no_grad():  # the same frozen LM, another connector
        for parameter in fresh.connector.parameters():
            parameter.add_(torch.randn_like(parameter))
    ids = torch.tensor([[IMAGE_TOKEN_ID] * K + [5, 6]])
    features = torch.randn(1, 5, C)
    with torch.no_grad():
        assert (fresh(features, ids).logits - model(features, ids).logits).abs().max() > 1e-4
    load_trainable(fresh, save_trainable(model, tmp_path / "qformer.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(fresh(features, ids).logits, model(features, ids).logits)

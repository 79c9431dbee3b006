"""The LLaVA projector + splice against ``transformers.LlavaForConditionalGeneration`` (same weights, same logits).

A tiny random LLaVA (CLIP vision tower 28 px / 14 px patches → 4 patch tokens, LLaMA text model) is the oracle. Our
side gets the features LLaVA itself selects (penultimate CLIP layer, CLS dropped), its projector's ``state_dict``
loaded into :class:`Projector` and its language model's weights loaded into a plain ``LlamaForCausalLM``; the prompt
carries LLaVA's in-vocabulary ``<image>`` id at the placeholder positions. Logits, the loss on masked labels and
greedy generations must agree.
"""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minipeft.multimodal.projector import Projector, ProjectorConfig, VisionLanguageModel  # noqa: E402

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
IMAGE_ID, N_PATCHES, VISION, WIDTH = 99, 4, 32, 64


def tiny_llava(seed=0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=VISION, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=4, image_size=28, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=128, hidden_size=WIDTH, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, max_position_embeddings=64),
        image_token_index=IMAGE_ID, image_seq_length=N_PATCHES)
    return LlavaForConditionalGeneration(config).eval()


def ours_from(reference, kind="mlp2x_gelu"):
    """Our VisionLanguageModel holding the reference's projector and language-model weights."""
    from transformers import LlamaForCausalLM

    language_model = LlamaForCausalLM(reference.config.text_config).eval()
    prefix = "model.language_model."
    state = {"model." + k[len(prefix):]: v for k, v in reference.state_dict().items() if k.startswith(prefix)}
    state["lm_head.weight"] = reference.state_dict()["lm_head.weight"]
    language_model.load_state_dict(state, strict=True)  # any naming drift fails loudly
    projector = Projector(ProjectorConfig(kind, vision_width=VISION, llm_width=WIDTH, image_token_id=IMAGE_ID))
    if kind == "mlp2x_gelu":
        projector.load_state_dict(reference.model.multi_modal_projector.state_dict(), strict=True)
    return VisionLanguageModel(projector, language_model, image_token_id=IMAGE_ID).eval()


def llava_features(reference, pixel_values):
    """LLaVA's feature selection: hidden_states[-2] of the CLIP tower, CLS dropped → (B, 4, 32)."""
    hidden = reference.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[-2][:, 1:]


def prompt_ids(batch=2, length=12, start=(1, 5)):
    """Random text with N_PATCHES image placeholders starting at a different position in each row."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, IMAGE_ID, (batch, length), generator=generator)
    for row in range(batch):
        ids[row, start[row]:start[row] + N_PATCHES] = IMAGE_ID
    return ids


@pytest.fixture(scope="module")
def setup():
    reference = tiny_llava()
    pixel_values = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    return reference, pixel_values


def test_features_are_penultimate_patch_tokens(setup):
    reference, pixel_values = setup
    assert llava_features(reference, pixel_values).shape == (2, N_PATCHES, VISION)


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "linear"])
def test_logits_and_loss_equal_llava(setup, kind):
    reference, pixel_values = setup
    reference = copy.deepcopy(reference)
    ours = ours_from(reference, kind)
    if kind == "linear":  # transformers has no linear projector: give LLaVA ours (LLaVA v1's H_v = W Z_v)
        reference.model.multi_modal_projector = copy.deepcopy(ours.connector)
    ids = prompt_ids()
    attention_mask = torch.ones_like(ids)
    attention_mask[1, -2:] = 0  # a right-padded row
    labels = ids.masked_fill(ids == IMAGE_ID, -100)
    labels[:, :7] = -100  # prompt masked, the last tokens supervised
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=pixel_values, attention_mask=attention_mask, labels=labels)
        got = ours(llava_features(reference, pixel_values), ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, **TOLERANCE)
    torch.testing.assert_close(got.loss, expected.loss, **TOLERANCE)
    # The image actually matters: other pixels change the logits after the placeholders.
    with torch.no_grad():
        other = ours(llava_features(reference, pixel_values.flip(0)), ids, attention_mask=attention_mask)
    assert (other.logits - got.logits).abs().max() > 1e-3


def test_greedy_generation_equals_llava(setup):
    reference, pixel_values = setup
    ours = ours_from(reference)
    ids = prompt_ids()
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=False,
                                      pad_token_id=0)
        got = ours.generate(llava_features(reference, pixel_values), ids, max_new_tokens=6, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(got, expected[:, ids.shape[1]:])  # ours returns only the new tokens

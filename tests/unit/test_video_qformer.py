"""Video-LLaMA's video / audio Q-Formers: frame positions, order, the Blip2QFormerModel oracle, the two-branch splice."""

import pytest
import torch

from minipeft.models import tiny_llama
from minipeft.multimodal.qformer import blip2_state_dict
from minipeft.multimodal.video_qformer import (AUDIO_TOKEN_ID, VIDEO_TOKEN_ID, VideoQFormer, VideoQFormerConfig,
                                               apply, parameter_count)

C, K, FRAMES = 12, 3, 5


def small(**overrides):
    sizes = dict(feature_width=C, num_queries=K, max_frames=8, llm_width=64, hidden_size=16, num_layers=2,
                 num_heads=2, intermediate_size=32, dropout=0.0)
    return VideoQFormerConfig(**{**sizes, **overrides})


def branch(seed=0, **overrides):
    torch.manual_seed(seed)
    module = VideoQFormer(small(**overrides))
    with torch.no_grad():
        module.qformer.queries.normal_(0, 1)  # distinct queries
    return module.eval()


def test_config_defaults_are_the_papers_and_bad_values_are_refused():
    video, audio = VideoQFormerConfig(), VideoQFormerConfig.audio()
    assert (video.num_queries, video.max_frames, video.num_layers, video.feature_width) == (32, 32, 2, 768)
    assert (audio.num_queries, audio.max_frames, audio.feature_width) == (8, 8, 1024)
    assert video.qformer_config().cross_attention_frequency == 1 and not video.qformer_config().with_text
    with pytest.raises(ValueError, match="num_queries"):
        small(num_queries=2.0)
    with pytest.raises(ValueError, match="max_frames"):
        small(max_frames=0)
    with pytest.raises(ValueError, match="divisible"):
        small(hidden_size=15)
    with pytest.raises(TypeError, match="VideoQFormerConfig"):
        VideoQFormer(small().qformer_config())


@pytest.mark.parametrize("config", [small(), small(num_layers=3, num_queries=5), VideoQFormerConfig.audio(
    feature_width=20, llm_width=24, hidden_size=16, num_heads=2, intermediate_size=32), small(frame_positions=False)])
def test_parameter_count_is_the_closed_form(config):
    module = VideoQFormer(config)
    assert parameter_count(config) == sum(p.numel() for p in module.parameters())
    assert all(layer.has_cross_attention for layer in module.qformer.layers)  # every layer reads the frames


def test_every_token_of_frame_t_gets_position_t_and_frames_are_laid_end_to_end():
    module = branch()
    features = torch.randn(2, FRAMES, 4, C)
    tokens = module.temporal_tokens(features)
    assert tokens.shape == (2, FRAMES * 4, C)
    positions = module.frame_position.weight
    for t in range(FRAMES):
        for j in range(4):
            torch.testing.assert_close(tokens[:, t * 4 + j], features[:, t, j] + positions[t])
    pooled = torch.randn(2, FRAMES, C)  # one vector per frame = one token per frame
    torch.testing.assert_close(module.temporal_tokens(pooled), pooled + positions[:FRAMES])


def test_frame_order_enters_only_through_the_position_embeddings():
    module = branch()
    features = torch.randn(2, FRAMES, 4, C)
    shuffled = features[:, torch.tensor([3, 0, 4, 1, 2])]
    with torch.no_grad():
        assert (module(features) - module(shuffled)).abs().max() > 1e-4  # order matters with positions
        module.frame_position.weight.zero_()
        torch.testing.assert_close(module(features), module(shuffled))  # cross-attention alone sees a set
    bag = branch(frame_positions=False)  # the ablation: the same branch built without P_t
    assert bag.frame_position is None
    with torch.no_grad():
        torch.testing.assert_close(bag(features), bag(shuffled))
    with pytest.raises(ValueError, match="frame_positions"):
        small(frame_positions=1)


def test_padded_frames_are_not_read():
    module = branch()
    features = torch.randn(1, FRAMES, 4, C)
    changed = features.clone()
    changed[:, -2:] = 50.0
    frame_mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(module(features, frame_mask), module(changed, frame_mask))


def test_wrong_inputs_are_refused():
    module = branch()
    with pytest.raises(ValueError, match="max_frames"):
        module(torch.randn(1, 9, C))
    with pytest.raises(ValueError, match="feature_width=7"):
        module(torch.randn(1, 2, 7))
    with pytest.raises(ValueError, match="frames"):
        module(torch.randn(C))


def test_video_qformer_equals_blip2_qformer_with_cross_attention_in_every_layer():
    transformers = pytest.importorskip("transformers")
    module = branch()
    with torch.no_grad():
        for name, parameter in module.named_parameters():  # non-trivial norms and biases
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.2 * torch.randn_like(parameter))
    config = transformers.Blip2QFormerConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=32, encoder_hidden_size=C, cross_attention_frequency=1)
    reference = transformers.Blip2QFormerModel(config).eval()
    state = {k[len("qformer."):]: v for k, v in blip2_state_dict(module.qformer).items() if k.startswith("qformer.")}
    reference.load_state_dict(state, strict=True)
    features = torch.randn(2, FRAMES, 4, C)
    with torch.no_grad():
        tokens = module.temporal_tokens(features)  # (B, T·n, C)
        expected = reference(query_embeds=module.qformer.queries.expand(2, -1, -1),
                             encoder_hidden_states=tokens).last_hidden_state
        torch.testing.assert_close(module(features), module.projection(expected), rtol=1e-5, atol=1e-5)


def test_two_branches_land_at_their_own_placeholders_and_only_the_branches_learn():
    model = apply(tiny_llama(), small(), small(feature_width=6, num_queries=2)).model
    ids = torch.tensor([[5] + [AUDIO_TOKEN_ID] * 2 + [6] + [VIDEO_TOKEN_ID] * K + [7, 8]] * 2)
    video, audio = torch.randn(2, FRAMES, 4, C), torch.randn(2, 4, 6)
    embeddings = model.embed(ids, video, audio)
    torch.testing.assert_close(embeddings[:, 4:4 + K], model.video_branch(video))
    torch.testing.assert_close(embeddings[:, 1:3], model.audio_branch(audio))
    words = model.language_model.get_input_embeddings()
    torch.testing.assert_close(embeddings[:, [0, 3, 7, 8]], words(ids[:, [0, 3, 7, 8]]))
    labels = ids.masked_fill(ids < 0, -100)
    model(ids, video, audio, labels=labels).loss.backward()
    for name, parameter in model.named_parameters():
        in_branch = name.startswith(("video_branch.", "audio_branch."))
        assert (parameter.grad is not None) == in_branch, name
    new = model.generate(ids, video, audio, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert new.shape == (2, 2)


def test_missing_features_and_widths_are_refused():
    model = apply(tiny_llama(), small()).model
    ids = torch.tensor([[5] + [VIDEO_TOKEN_ID] * K])
    with pytest.raises(ValueError, match="no video features"):
        model(ids)
    with pytest.raises(ValueError, match="no audio branch"):
        model(ids, torch.randn(1, 2, C), torch.randn(1, 2, C))
    with pytest.raises(ValueError, match="llm_width=64"):
        apply(tiny_llama(), small(llm_width=32))
    with pytest.raises(TypeError, match="video_config"):
        apply(tiny_llama(), None)

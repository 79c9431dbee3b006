"""LLaMA-Adapter v1 and V2 (minipeft/peft/llama_adapter.py) and the visual glue (minipeft/multimodal/visual_prompt.py)
on tiny LLaMA models, and the papers' parameter arithmetic on the meta device."""

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from minipeft.core import TrainConfig, read_weights, save_weights
from minipeft.models import VisionEncoderOutput, tiny_bert, tiny_llama
from minipeft.multimodal import VisualProjection
from minipeft.multimodal.llama_adapter_v2 import apply, count_llama_adapter_parameters, disjoint_groups, joint_train
from minipeft.peft.llama_adapter import AdaptedAttention, BiasScaleLinear, LlamaAdapterConfig, LlamaAdapterV2Config

# tiny_llama: d=64, 2 layers, 4 query heads sharing 2 key/value heads (head_dim 16), FFN 128, vocab 256
D, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 64, 2, 4, 2, 16, 128, 256
K = 3  # prompt tokens
IMAGE_DIM, IMAGE_TOKENS, VISUAL_LEN = 12, 5, 4  # a stand-in encoder: 5 feature vectors of width 12
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000)
LLAMA_65B = dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64,
                 vocab_size=32000)
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, VOCAB, size, generator=torch.Generator().manual_seed(seed))


def image_features(seed=2, batch=2):
    return torch.randn(batch, IMAGE_TOKENS, IMAGE_DIM, generator=torch.Generator().manual_seed(seed))


def v2_config(**changes):
    fields = dict(adapter_len=K, visual_dim=IMAGE_DIM, visual_len=VISUAL_LEN)
    fields.update(changes)
    return LlamaAdapterV2Config(**fields)


def randomise(handle, seed=3):
    """Every gate away from zero and every bias/scale away from 0/1, so no test passes at the identity init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in handle.named_parameters():
            noise = torch.rand(parameter.shape, generator=generator) * 2 - 1  # in [-1, 1]
            if name.endswith("adaption_gate"):
                parameter.copy_(0.8 * noise)
            elif name.endswith(("adapter_scale", "norm.weight", "layernorm.weight")):
                parameter.copy_(1 + 0.3 * noise)
            elif name.endswith("adapter_bias"):
                parameter.copy_(0.1 * noise)


def logits(model, x=None):
    with torch.no_grad():
        return model(input_ids=ids() if x is None else x).logits


# --------------------------------------------------------------------------------------- v1: the defining invariant


@pytest.mark.parametrize("gate", ["tanh", "raw"])
@pytest.mark.parametrize("per_head", [True, False])
def test_v1_is_exactly_the_base_model_at_init_then_differs(gate, per_head):
    model = tiny_llama()
    base = logits(model)
    handle = apply(model, LlamaAdapterConfig(adapter_len=K, gate=gate, gate_per_head=per_head))
    assert all(torch.equal(w.adaption_gate, torch.zeros_like(w.adaption_gate)) for w in handle.attention.values())
    assert torch.equal(logits(model), base), "zero gates must give exactly the base model's logits"
    randomise(handle)
    assert (logits(model) - base).abs().max() > 1e-3


def test_v1_identity_with_smollm2_like_grouped_query_attention():
    """9 query heads sharing 3 key/value heads, as in SmolLM2-135M."""
    model = tiny_llama(hidden_size=72, heads=9, kv_heads=3)
    base = logits(model)
    handle = apply(model, LlamaAdapterConfig(adapter_len=K))
    assert torch.equal(logits(model), base)
    assert all(w.adaption_gate.shape == (9,) for w in handle.attention.values())
    randomise(handle)
    assert (logits(model) - base).abs().max() > 1e-3


def manual_adapter_term(attention, x, prompt, gate, cos, sin, head_dim):
    """The gated prompt attention written out head by head (query head h reads key/value head h // group)."""
    B, T, _ = x.shape
    heads, kv_heads = len(gate), attention.k_proj.out_features // head_dim
    q = attention.q_proj(x).view(B, T, heads, head_dim)
    half = head_dim // 2
    rotated = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
    q = q * cos[:, :, None] + rotated * sin[:, :, None]  # RoPE on the queries only
    k = attention.k_proj(prompt).view(-1, kv_heads, head_dim)
    v = attention.v_proj(prompt).view(-1, kv_heads, head_dim)
    outputs = []
    for h in range(heads):
        kv = h // (heads // kv_heads)
        weights = torch.softmax(q[:, :, h] @ k[:, kv].T / math.sqrt(head_dim), dim=-1)  # (B, T, K)
        outputs.append(gate[h] * weights @ v[:, kv])  # (B, T, hd)
    # Linear_o is applied once, to the sum of both attention outputs: its bias is already in the frozen output.
    return torch.cat(outputs, dim=-1) @ attention.o_proj.weight.T


@pytest.mark.parametrize("gate", ["tanh", "raw"])
def test_wrapper_adds_the_gated_prompt_attention_written_by_hand(gate):
    model = tiny_llama(hidden_size=72, heads=9, kv_heads=3)
    attention = model.model.layers[1].self_attn
    attention.o_proj.bias = nn.Parameter(torch.randn(72))  # (LLaMA has none; a bias must still count once)
    x = torch.randn(2, 5, 72)
    cos, sin = model.model.rotary_emb(x, torch.arange(5).expand(2, -1))
    with torch.no_grad():
        base = attention(x, position_embeddings=(cos, sin), attention_mask=None)[0]
        wrapper = AdaptedAttention(attention, K, 9, 3, 8, 72, gate=gate)
        wrapper.adaption_gate.uniform_(-1, 1)
        got = wrapper(x, position_embeddings=(cos, sin), attention_mask=None)[0]
        g = wrapper.adaption_gate.tanh() if gate == "tanh" else wrapper.adaption_gate
        expected = base + manual_adapter_term(attention, x, wrapper.adaption_prompt, g, cos, sin, head_dim=8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_only_the_top_layers_are_adapted():
    model = tiny_llama(layers=3)
    handle = apply(model, LlamaAdapterConfig(adapter_len=K, adapter_layers=2))
    assert handle.top_layers == ["model.layers.1.self_attn", "model.layers.2.self_attn"]
    assert sorted(handle.attention) == handle.top_layers
    assert not isinstance(model.model.layers[0].self_attn, AdaptedAttention)
    assert all(isinstance(model.model.layers[i].self_attn, AdaptedAttention) for i in (1, 2))


# --------------------------------------------------------------------------------------- v1: what trains, and how much


def test_gradients_only_on_prompts_and_gates_and_gates_move_first():
    model = tiny_llama()
    handle = apply(model, LlamaAdapterConfig(adapter_len=K))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(handle.state_dict()) and trainable
    assert all(n.endswith(("adaption_prompt", "adaption_gate")) for n in trainable)
    x = ids()
    model(input_ids=x, labels=x).loss.backward()
    for name, parameter in model.named_parameters():
        if name not in trainable:
            assert parameter.grad is None, name
    for wrapper in handle.attention.values():
        # Zero-init attention: with g = 0 the prompt gets no gradient yet; the gate does.
        assert wrapper.adaption_gate.grad.abs().sum() > 0
        assert torch.equal(wrapper.adaption_prompt.grad, torch.zeros_like(wrapper.adaption_prompt))
    randomise(handle)
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()
    assert all(w.adaption_prompt.grad.abs().sum() > 0 for w in handle.attention.values())


@pytest.mark.parametrize("layers, per_head", [(1, True), (2, True), (2, False)])
def test_v1_parameter_count_equals_closed_form(layers, per_head):
    model = tiny_llama()
    handle = apply(model, LlamaAdapterConfig(adapter_len=K, adapter_layers=layers, gate_per_head=per_head))
    expected = K * layers * D + layers * (HEADS if per_head else 1)  # K L C + L H
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert sum(p.numel() for p in handle.parameters()) == expected


def test_a_few_steps_lower_the_loss():
    model = tiny_llama()
    handle = apply(model, LlamaAdapterConfig(adapter_len=K))
    x = ids(size=(4, 8))
    optimiser = torch.optim.Adam(handle.parameters(), lr=5e-2)
    first = None
    for _ in range(15):
        loss = model(input_ids=x, labels=x).loss
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < first - 0.05


# --------------------------------------------------------------------------------------- generate and the KV cache


@pytest.mark.parametrize("config", [LlamaAdapterConfig(adapter_len=K), v2_config(), v2_config(fusion="add",
                                                                                              visual_len=K)])
def test_generate_gives_the_same_tokens_with_and_without_the_cache(config):
    model = tiny_llama()
    handle = apply(model, copy.deepcopy(config))
    randomise(handle)
    x = ids()
    context = handle.visual_features(image_features()) if handle.has_visual else contextlib.nullcontext()
    with context:
        first = model.generate(input_ids=x, max_new_tokens=6, do_sample=False)
        assert first.shape == (2, x.shape[1] + 6)
        assert torch.equal(first, model.generate(input_ids=x, max_new_tokens=6, do_sample=False, use_cache=False))
        # The first new token is the greedy choice of a plain forward call.
        assert torch.equal(first[:, x.shape[1]], logits(model, x)[:, -1].argmax(-1))
    base_generation = tiny_llama().generate(input_ids=x, max_new_tokens=6, do_sample=False)
    assert not torch.equal(first, base_generation), "the randomised adapter should change the generated tokens"


# --------------------------------------------------------------------------------------- undo, merge, save and load


@pytest.mark.parametrize("config", [LlamaAdapterConfig(adapter_len=K), v2_config(), v2_config(scale_on="input")])
def test_undo_restores_the_base_model_exactly(config):
    model = tiny_llama()
    model.lm_head.weight.requires_grad_(False)  # a flag that undo must restore, not reset
    base = logits(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    names = [n for n, _ in model.named_parameters()]
    handle = apply(model, copy.deepcopy(config))
    randomise(handle)  # also changes the norms in place (V2)
    assert not torch.equal(logits(model), base)
    assert handle.undo() is model
    assert torch.equal(logits(model), base)
    assert [n for n, _ in model.named_parameters()] == names
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not hasattr(model, "minipeft_visual") and not model._forward_pre_hooks and not model._forward_hooks
    with pytest.raises(ValueError, match="undone"):
        handle.undo()
    apply(model, copy.deepcopy(config))  # the model can take a method again


def test_undo_after_merge_linear_restores_the_base_model():
    model = tiny_llama()
    base = logits(model)
    handle = apply(model, v2_config())
    randomise(handle)
    handle.merge_linear()
    handle.undo()
    torch.testing.assert_close(logits(model), base, rtol=1e-5, atol=1e-5)
    assert all(layer.bias is None for layer in model.modules() if isinstance(layer, nn.Linear))


def test_merge_of_the_prompts_raises_clearly():
    handle = apply(tiny_llama(), LlamaAdapterConfig(adapter_len=K))
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        handle.merge()
    with pytest.raises(NotImplementedError):
        handle.unload()
    with pytest.raises(ValueError, match="no bias/scale layers"):
        handle.merge_linear()


@pytest.mark.parametrize("config", [LlamaAdapterConfig(adapter_len=K), v2_config(), v2_config(fusion="add",
                                                                                              visual_len=1)])
def test_state_dict_save_load_round_trip(config, tmp_path):
    model = tiny_llama()
    handle = apply(model, copy.deepcopy(config))
    randomise(handle)
    features = image_features()
    with (handle.visual_features(features) if handle.has_visual else contextlib.nullcontext()):
        expected = logits(model)
    path = save_weights(handle.state_dict(), tmp_path / "adapter.safetensors")
    tensors, _ = read_weights(path)
    assert set(tensors) == set(handle.state_dict())

    fresh = tiny_llama()
    fresh_handle = apply(fresh, copy.deepcopy(config))
    fresh_handle.load_state_dict(tensors)
    with (fresh_handle.visual_features(features) if fresh_handle.has_visual else contextlib.nullcontext()):
        assert torch.equal(logits(fresh), expected)


def test_loading_other_shapes_raises_and_changes_nothing():
    source = apply(tiny_llama(), LlamaAdapterConfig(adapter_len=K + 2))
    model = tiny_llama()
    handle = apply(model, LlamaAdapterConfig(adapter_len=K))
    randomise(handle)
    before = {n: t.clone() for n, t in handle.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        handle.load_state_dict(source.state_dict())
    assert all(torch.equal(before[n], t) for n, t in handle.state_dict().items())
    with pytest.raises(ValueError, match="not part of"):
        handle.load_state_dict({**before, "model.layers.1.self_attn.extra": torch.zeros(1)})
    missing = dict(before)
    missing.pop(sorted(missing)[0])
    with pytest.raises(ValueError, match="missing"):
        handle.load_state_dict(missing)


# --------------------------------------------------------------------------------------- bad configs and misuse


@pytest.mark.parametrize("make, match", [
    (lambda: LlamaAdapterConfig(adapter_len=0), "adapter_len"),
    (lambda: LlamaAdapterConfig(adapter_len=2.5), "adapter_len"),
    (lambda: LlamaAdapterConfig(adapter_layers=0), "adapter_layers"),
    (lambda: LlamaAdapterConfig(gate="sigmoid"), "gate"),
    (lambda: LlamaAdapterConfig(gate_per_head="yes"), "gate_per_head"),
    (lambda: LlamaAdapterV2Config(scale_on="both"), "scale_on"),
    (lambda: LlamaAdapterV2Config(fusion="late"), "fusion"),
    (lambda: LlamaAdapterV2Config(visual_dim=0), "visual_dim"),
    (lambda: LlamaAdapterV2Config(visual_layers=0), "visual_layers"),
    (lambda: LlamaAdapterV2Config(adapter_len=10, visual_len=4, fusion="add"), "visual_len"),
])
def test_bad_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_too_many_layers_raise_and_leave_the_model_unchanged():
    model = tiny_llama()
    base = logits(model)
    modules = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match="only 2 decoder layers"):
        apply(model, LlamaAdapterConfig(adapter_layers=3))
    with pytest.raises(ValueError, match="may not share"):
        apply(model, v2_config(adapter_layers=2))  # 1 visual + 2 prompt layers > 2
    assert [type(m) for m in model.modules()] == modules
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(logits(model), base)


def test_applying_twice_and_to_other_models_raises():
    model = tiny_llama()
    apply(model, LlamaAdapterConfig(adapter_len=K))
    with pytest.raises(ValueError, match="already wrapped"):
        apply(model, LlamaAdapterConfig(adapter_len=K))
    with pytest.raises(TypeError, match="LlamaAdapterConfig"):
        apply(tiny_llama(), {"adapter_len": K})
    with pytest.raises(ValueError, match="transformers model"):
        apply(nn.Sequential(nn.Linear(4, 4)), LlamaAdapterConfig())
    with pytest.raises(ValueError, match="no module matches"):
        apply(tiny_bert(), LlamaAdapterConfig())  # BERT's attention is not a LLaMA-style self_attn
    with pytest.raises(ValueError, match="V2"):
        apply(tiny_llama(), LlamaAdapterConfig(), visual_projection=nn.Identity())


def test_visual_misuse_raises():
    model = tiny_llama()
    handle = apply(model, v2_config())
    with pytest.raises(ValueError, match="batch size 3"):
        with handle.visual_features(image_features(batch=3)):
            logits(model)
    with pytest.raises(ValueError, match="expects in_features=12"):
        with handle.visual_features(torch.randn(2, IMAGE_TOKENS, 7)):
            logits(model)
    v1 = apply(tiny_llama(), LlamaAdapterConfig())
    with pytest.raises(ValueError, match="no visual path"):
        v1.set_visual_features(image_features())


# --------------------------------------------------------------------------------------- V2: bias, scale and norms


@pytest.mark.parametrize("scale_on", ["output", "input"])
def test_bias_scale_linear_matches_the_formula_by_hand(scale_on):
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)  # with a base bias b0, where the two placements differ
    layer = BiasScaleLinear(copy.deepcopy(linear), scale_on)
    x = torch.randn(4, 5)
    assert torch.equal(layer(x), linear(x)), "b = 0, s = 1 must be the base layer exactly"
    with torch.no_grad():
        layer.adapter_bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.adapter_scale.uniform_(0.5, 1.5)
        W, b0, b, s = linear.weight, linear.bias, layer.adapter_bias, layer.adapter_scale
        expected = s * (x @ W.T + b0 + b) if scale_on == "output" else (s * x) @ W.T + b0 + b
        torch.testing.assert_close(layer(x), expected)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="already merged"):
            layer.merge()
        layer.unmerge()
        torch.testing.assert_close(layer.base_layer.weight, W, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(layer.base_layer.bias, b0, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="not merged"):
            layer.unmerge()


@pytest.mark.parametrize("scale_on", ["output", "input"])
def test_v2_is_exactly_the_base_model_at_init_even_with_an_image(scale_on):
    model = tiny_llama()
    base = logits(model)
    handle = apply(model, v2_config(scale_on=scale_on))
    assert torch.equal(logits(model), base)
    with handle.visual_features(image_features()):
        assert torch.equal(logits(model), base), "zero gates: the image cannot change the output at init"
    randomise(handle)
    assert (logits(model) - base).abs().max() > 1e-3


def test_v2_trainable_tensors_and_count_equal_closed_form():
    model = tiny_llama()
    handle = apply(model, v2_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(handle.state_dict())
    outputs = 2 * D + 2 * KV_HEADS * HEAD_DIM + 2 * FFN + D  # q, o; k, v; gate, up; down
    expected = {
        "prompts": K * 1 * D,  # static prompts in the top layer only
        "gates": 2 * HEADS,  # the early (visual) layer's gates and the top layer's
        "biases": LAYERS * outputs,
        "scales": LAYERS * outputs,
        "norms": (2 * LAYERS + 1) * D,
        "visual": VisualProjection.count(IMAGE_DIM, D, VISUAL_LEN),
    }
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(expected.values())
    config = dict(hidden_size=D, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, vocab_size=VOCAB)
    counts = count_llama_adapter_parameters(config, adapter_len=K, adapter_layers=None, v2=True,
                                            visual_dim=IMAGE_DIM, visual_len=VISUAL_LEN)
    assert {k: counts[k] for k in expected} == expected
    assert counts["total"] == sum(expected.values())


def test_v2_norms_train_and_only_the_method_gets_gradients():
    model = tiny_llama()
    handle = apply(model, v2_config())
    randomise(handle)
    x = ids()
    with handle.visual_features(image_features()):
        model(input_ids=x, labels=x).loss.backward()
    trainable = set(handle.state_dict())
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert "model.norm.weight" in trainable and "model.layers.0.input_layernorm.weight" in trainable


@pytest.mark.parametrize("scale_on", ["output", "input"])
def test_merge_linear_keeps_the_output_and_unmerge_restores_the_weights(scale_on):
    model = tiny_llama()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply(model, v2_config(scale_on=scale_on))
    randomise(handle)
    features = image_features()
    with handle.visual_features(features):
        expected = logits(model)
        with pytest.raises(NotImplementedError, match="merge_linear"):
            handle.merge()
        handle.merge_linear()
        assert handle.merged
        torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="already merged"):
            handle.merge_linear()
        handle.unmerge_linear()
        assert not handle.merged
        torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not merged"):
        handle.unmerge_linear()
    handle.undo()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, weights[name], rtol=1e-5, atol=1e-6)


def test_unmerge_with_a_zero_scale_raises_before_changing_anything():
    model = tiny_llama()
    handle = apply(model, v2_config())
    with torch.no_grad():
        handle.linear["model.layers.1.mlp.down_proj"].adapter_scale[0] = 0.0
    handle.merge_linear()
    merged = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="zero entries"):
        handle.unmerge_linear()
    assert all(torch.equal(p, merged[n]) for n, p in model.named_parameters())


# --------------------------------------------------------------------------------------- V2: early fusion


def test_early_fusion_puts_the_image_only_into_the_early_layers():
    model = tiny_llama(layers=3)
    handle = apply(model, v2_config(visual_layers=1, adapter_layers=2))
    assert handle.early_layers == ["model.layers.0.self_attn"]
    assert handle.top_layers == ["model.layers.1.self_attn", "model.layers.2.self_attn"]
    early = model.model.layers[0].self_attn
    assert early.adaption_prompt is None  # its prompt is the image
    assert all(model.model.layers[i].self_attn._visual is None for i in (1, 2))  # top layers never see it
    randomise(handle)
    text_only = logits(model)
    with handle.visual_features(image_features()):
        with_image = logits(model)
        with torch.no_grad():
            early.adaption_gate.zero_()  # close the early gate: the image has no other way in
        assert torch.equal(logits(model), text_only)
    assert (with_image - text_only).abs().max() > 1e-3


def test_add_fusion_equals_static_prompts_plus_the_visual_tokens():
    """The released code's variant: one image, visual tokens added to the top layers' prompts."""
    model = tiny_llama()
    handle = apply(model, v2_config(fusion="add", visual_len=K, bias_scale=False, train_norms=False))
    assert handle.early_layers == [] and len(handle.top_layers) == LAYERS
    randomise(handle)
    features = image_features(batch=1)
    with handle.visual_features(features):
        fused = logits(model)
        tokens = model.minipeft_visual(features)[0].detach()  # (K, d)
    with torch.no_grad():
        for wrapper in handle.attention.values():
            wrapper.adaption_prompt += tokens
    torch.testing.assert_close(logits(model), fused, rtol=1e-5, atol=1e-5)


def test_one_image_is_shared_by_every_row_and_rows_take_their_own_image():
    model = tiny_llama()
    handle = apply(model, v2_config())
    randomise(handle)
    features = image_features(batch=2)
    x = ids(size=(2, 6))
    with handle.visual_features(features[:1]):
        shared = logits(model, x)
    with handle.visual_features(features[:1].expand(2, -1, -1)):
        torch.testing.assert_close(logits(model, x), shared)
    with handle.visual_features(features):
        own = logits(model, x)
    torch.testing.assert_close(own[0], shared[0])
    assert (own[1] - shared[1]).abs().max() > 1e-4


# --------------------------------------------------------------------------------------- V2: the two parameter groups


@pytest.mark.parametrize("fusion", ["early", "add"])
def test_parameter_groups_are_disjoint_and_cover_every_trainable_tensor(fusion):
    model = tiny_llama()
    handle = apply(model, v2_config(fusion=fusion, visual_len=K if fusion == "add" else VISUAL_LEN))
    groups = disjoint_groups(handle, names=True)
    image_text, language = set(groups["image_text"]), set(groups["language"])
    assert image_text and language and not image_text & language
    assert image_text | language == {n for n, p in model.named_parameters() if p.requires_grad}
    visual = {n for n in image_text if n.startswith("minipeft_visual.")}
    assert visual == {f"minipeft_visual.{n}" for n, _ in model.minipeft_visual.named_parameters()}
    assert all(n.endswith(("adaption_prompt", "adaption_gate", "adapter_bias", "adapter_scale")) or "norm" in n
               for n in language)
    if fusion == "early":  # the paper: the early gate with the image, the late prompts with the language
        assert image_text - visual == {"model.layers.0.self_attn.adaption_gate"}
        assert {"model.layers.1.self_attn.adaption_prompt", "model.layers.1.self_attn.adaption_gate"} <= language
    else:  # the released code: every prompt and gate with the image
        assert image_text - visual == {f"model.layers.{i}.self_attn.adaption_{p}" for i in range(LAYERS)
                                       for p in ("prompt", "gate")}
    assert [id(p) for p in disjoint_groups(handle)["language"]] == [
        id(dict(model.named_parameters())[n]) for n in groups["language"]]


@pytest.mark.parametrize("group", ["image_text", "language"])
def test_a_training_step_on_one_group_changes_only_that_group(group):
    model = tiny_llama()
    handle = apply(model, v2_config())
    randomise(handle)  # open the gates, so every tensor of the method gets a gradient
    groups = disjoint_groups(handle, names=True)
    parameters = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in parameters.items()}
    optimiser = torch.optim.SGD([parameters[n] for n in groups[group]], lr=0.1)
    x = ids()
    with handle.visual_features(image_features()):
        model(input_ids=x, labels=x).loss.backward()
    optimiser.step()
    for name, parameter in parameters.items():
        changed = not torch.equal(parameter, before[name])
        assert changed == (name in groups[group]), name


def test_text_only_batches_give_the_image_text_group_no_gradient():
    """Without an image the early gated attention is idle: instruction data cannot move the image-text group."""
    model = tiny_llama()
    handle = apply(model, v2_config())
    randomise(handle)
    x = ids()
    model(input_ids=x, labels=x).loss.backward()
    groups = disjoint_groups(handle)
    assert all(p.grad is None for p in groups["image_text"])
    assert all(p.grad is not None for p in groups["language"])


def test_without_a_visual_path_everything_is_language():
    handle = apply(tiny_llama(), LlamaAdapterV2Config(adapter_len=K))
    groups = disjoint_groups(handle)
    assert groups["image_text"] == [] and len(groups["language"]) == len(handle.parameters())
    assert handle.early_layers == [] and len(handle.top_layers) == LAYERS


# --------------------------------------------------------------------------------------- V2: joint training


def joint_data(n=6, seed=4):
    """Image-text examples (token ids + the row of their image in a feature cache) and language-only examples."""
    image_text = [{"input_ids": ids(seed + i, (6,)), "image": torch.tensor(i % 3)} for i in range(n)]
    language = [{"input_ids": ids(seed + 100 + i, (8,))} for i in range(n)]
    return image_text, language


def joint_run(model, handle, steps=2, disjoint=True, log=None, examples=6):
    """joint_train on the tiny model; ``log`` collects (stream, snapshot of every parameter) at each loss call."""
    cache = image_features(batch=3)
    image_text, language = joint_data(examples)

    def snapshot(stream):
        if log is not None:
            log.append((stream, {n: p.detach().clone() for n, p in model.named_parameters()}))

    def image_text_loss(model, batch):
        snapshot("image_text")
        handle.set_visual_features(cache[batch["image"]])
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    def language_loss(model, batch):
        snapshot("language")
        assert handle._visual.features is None  # the previous image-text batch's image was cleared
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    config = TrainConfig(steps=steps, batch_size=2, lr=0.05, seed=0, device="cpu", progress=False)
    return joint_train(model, handle, image_text, image_text_loss, language, language_loss, config,
                       language_batch_size=min(3, examples), disjoint=disjoint)


@pytest.mark.parametrize("fusion", ["early", "add"])
def test_joint_training_each_batch_changes_only_its_own_group(fusion):
    """The defining property of V2's disjoint joint training: between two consecutive loss calls (i.e. across one
    optimiser step) only the group of the batch that was just trained has changed — for every step."""
    model = tiny_llama()
    handle = apply(model, v2_config(fusion=fusion, visual_len=K if fusion == "add" else VISUAL_LEN))
    randomise(handle)  # open the gates, so every tensor of the method gets a gradient
    groups = disjoint_groups(handle, names=True)
    log = []
    histories = joint_run(model, handle, steps=3, log=log)
    log.append(("end", {n: p.detach().clone() for n, p in model.named_parameters()}))
    assert [stream for stream, _ in log] == ["image_text", "language"] * 3 + ["end"]
    for (stream, before), (_, after) in zip(log, log[1:]):
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        assert changed == set(groups[stream]), (stream, changed ^ set(groups[stream]))
    assert len(histories["image_text"].loss) == len(histories["language"].loss) == 3
    assert all(p.requires_grad for p in handle.parameters())  # restored after training
    assert handle._visual.features is None


def test_single_stage_ablation_updates_everything_from_both_kinds_of_batch():
    model = tiny_llama()
    handle = apply(model, v2_config())
    randomise(handle)
    log = []
    joint_run(model, handle, steps=1, disjoint=False, log=log)
    log.append(("end", {n: p.detach().clone() for n, p in model.named_parameters()}))
    everything = {n for n, _ in handle.named_parameters()}
    (_, start), (_, middle), (_, end) = log
    after_image_text = {n for n in start if not torch.equal(start[n], middle[n])}
    after_language = {n for n in start if not torch.equal(middle[n], end[n])}
    assert after_image_text == everything  # the image-text batch moved the language group too: interference
    # a text-only batch gives the visual path and the early gate no gradient (AdamW skips a tensor without one)
    assert after_language == everything - set(disjoint_groups(handle, names=True)["image_text"])


@pytest.mark.parametrize("disjoint", [True, False])
def test_language_lr_sets_the_language_groups_rate_in_both_modes(disjoint):
    """language_lr=0 freezes the language group — even in the single-stage ablation, where the image-text batches
    give it a gradient too — while the image-text group still trains at config.lr."""
    model = tiny_llama()
    handle = apply(model, v2_config())
    randomise(handle)
    groups = disjoint_groups(handle, names=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cache = image_features(batch=3)
    image_text, language = joint_data()

    def image_text_loss(model, batch):
        handle.set_visual_features(cache[batch["image"]])
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    def language_loss(model, batch):
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    config = TrainConfig(steps=2, batch_size=2, lr=0.05, schedule="constant", seed=0, device="cpu", progress=False)
    histories = joint_train(model, handle, image_text, image_text_loss, language, language_loss, config,
                            language_lr=0.0, disjoint=disjoint)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in groups["language"])
    assert all(not torch.equal(after[n], before[n]) for n in groups["image_text"])
    assert histories["language"].lr == [0.0, 0.0] and histories["image_text"].lr == [0.05, 0.05]


def test_joint_training_lowers_both_losses_and_is_reproducible():
    def run():
        torch.manual_seed(0)
        model = tiny_llama()
        handle = apply(model, v2_config(fusion="add", visual_len=K))  # image tokens in every layer: learns fast
        randomise(handle)
        return joint_run(model, handle, steps=30, examples=2), handle.state_dict()  # two examples: memorised

    (histories, state), (histories_again, state_again) = run(), run()
    for stream in ("image_text", "language"):
        loss = histories[stream].loss
        assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.1, (stream, loss)
        assert loss == histories_again[stream].loss
    assert all(torch.equal(state[n], state_again[n]) for n in state)


def test_joint_training_refuses_what_it_cannot_do():
    image_text, language = joint_data()
    config = TrainConfig(steps=1, batch_size=2, device="cpu", progress=False)
    loss = lambda model, batch: model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss  # noqa: E731
    text_only = apply(tiny_llama(), LlamaAdapterV2Config(adapter_len=K))
    with pytest.raises(ValueError, match="needs V2 with a visual path"):
        joint_train(text_only.model, text_only, image_text, loss, language, loss, config)
    model = tiny_llama()
    handle = apply(model, v2_config())
    with pytest.raises(ValueError, match="non-empty"):
        joint_train(model, handle, [], loss, language, loss, config)


def test_joint_training_checkpoints_and_resumes_to_the_same_weights(tmp_path):
    """joint_train is core.train with two streams, so an interrupted run resumes to the uninterrupted weights."""
    image_text, language = joint_data()
    lm_loss = lambda model, batch: model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss  # noqa: E731

    def run(config, fail_at=None):
        torch.manual_seed(0)
        model = tiny_llama()
        handle = apply(model, v2_config(fusion="add", visual_len=K))  # every prompt is image-text: it gets gradients
        calls = {"n": 0}

        def language_loss(model, batch):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise KeyboardInterrupt  # the run dies half-way
            return lm_loss(model, batch)

        joint_train(model, handle, image_text, lm_loss, language, language_loss, config)
        return handle.state_dict()

    base = dict(steps=4, batch_size=2, lr=1e-2, device="cpu", progress=False)
    uninterrupted = run(TrainConfig(**base))
    checkpoint = str(tmp_path / "joint.safetensors")
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(**base, checkpoint=checkpoint, checkpoint_every=2), fail_at=3)
    resumed = run(TrainConfig(**base, checkpoint=checkpoint, checkpoint_every=2, resume=True))
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[n], resumed[n]) for n in resumed)
    with pytest.raises(ValueError, match="lr=0.01 in the checkpoint but 0.02 now"):
        run(TrainConfig(**{**base, "lr": 2e-2}, checkpoint=checkpoint, resume=True))


# --------------------------------------------------------------------------------------- the papers' arithmetic (meta)


def test_v1_paper_arithmetic_at_llama_7b_shape():
    """K = 10 prompt tokens in L = 30 of 32 layers, C = 4096, 32 heads: the paper's "1.2M parameters"."""
    counts = count_llama_adapter_parameters(LLAMA_7B, adapter_len=10, adapter_layers=30)
    assert counts["prompts"] == 10 * 30 * 4096 == 1_228_800
    assert counts["gates"] == 30 * 32
    assert counts["total"] == 1_229_760 and round(counts["total"] / 1e6, 1) == 1.2
    assert counts["base_model"] == 6_738_415_616  # LLaMA-7B's own size, from the meta model
    assert counts["biases"] == counts["scales"] == counts["norms"] == counts["visual"] == 0


@pytest.mark.parametrize("shape, scale_on, expected", [
    (LLAMA_65B, "input", 80 * (13 * 8192 + 3 * 22016) + 8192),  # the code's placement: the abstract's "14M"
    (LLAMA_65B, "output", 80 * (12 * 8192 + 4 * 22016) + 8192),  # the paper's s ⊙ (Wx + b)
    (LLAMA_7B, "input", 32 * (13 * 4096 + 3 * 11008) + 4096),
    (LLAMA_7B, "output", 32 * (12 * 4096 + 4 * 11008) + 4096),
])
def test_v2_bias_scale_norm_arithmetic(shape, scale_on, expected):
    counts = count_llama_adapter_parameters(shape, adapter_len=10, adapter_layers=None, v2=True, scale_on=scale_on)
    assert counts["biases"] + counts["scales"] + counts["norms"] == expected
    d, layers = shape["hidden_size"], shape["num_hidden_layers"]
    assert counts["norms"] == (2 * layers + 1) * d
    assert counts["prompts"] == 10 * layers * d and counts["total"] == expected + counts["prompts"] + counts["gates"]


def test_v2_fourteen_million_is_the_65b_bias_scale_norm_count():
    counts = count_llama_adapter_parameters(LLAMA_65B, adapter_layers=None, v2=True, scale_on="input")
    extra = counts["biases"] + counts["scales"] + counts["norms"]
    assert extra == 13_811_712 and round(extra / 1e6) == 14
    seven_b = count_llama_adapter_parameters(LLAMA_7B, adapter_layers=None, v2=True, scale_on="input")
    # Not the paper's "0.04% (~5M)" of LLaMA-7B: the extra is 2.76M, 0.041% of the model.
    assert seven_b["biases"] + seven_b["scales"] + seven_b["norms"] == 2_764_800


def test_counts_at_smollm2_shape_with_the_visual_projection():
    v1 = count_llama_adapter_parameters(SMOLLM2, adapter_len=10, adapter_layers=30)
    assert v1["total"] == 10 * 30 * 576 + 30 * 9 == 173_070
    v2 = count_llama_adapter_parameters(SMOLLM2, adapter_len=10, adapter_layers=None, v2=True, visual_dim=1280,
                                        visual_len=10)
    outputs = 576 + 192 + 192 + 576 + 1536 + 1536 + 576  # q, k, v, o, gate, up, down (3 key/value heads of 64)
    assert v2["prompts"] == 10 * 29 * 576  # the bottom layer reads the image, the other 29 hold the prompts
    assert v2["gates"] == 30 * 9
    assert v2["biases"] == v2["scales"] == 30 * outputs
    assert v2["norms"] == 61 * 576
    assert v2["visual"] == 1280 * 576 + 10 * 576 + 5 * 576 == 745_920


def test_meta_count_equals_the_real_model_count():
    real = apply(tiny_llama(), v2_config(scale_on="input"))
    config = dict(hidden_size=D, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, vocab_size=VOCAB)
    counts = count_llama_adapter_parameters(config, adapter_len=K, adapter_layers=None, v2=True, scale_on="input",
                                            visual_dim=IMAGE_DIM, visual_len=VISUAL_LEN)
    assert counts["total"] == sum(p.numel() for p in real.parameters())


# --------------------------------------------------------------------------------------- the visual projection


def test_visual_projection_shapes_inputs_and_count():
    projection = VisualProjection(1280, 576, num_tokens=10)
    pooled, grid = torch.randn(2, 1280), torch.randn(2, 49, 1280)
    assert projection(pooled).shape == projection(grid).shape == (2, 10, 576)
    both = projection(pooled=pooled, tokens=grid)
    assert both.shape == (2, 10, 576)
    torch.testing.assert_close(projection(VisionEncoderOutput(tokens=grid, pooled=pooled)), both)
    torch.testing.assert_close(projection({"pooled": pooled, "tokens": grid}), both)
    assert sum(p.numel() for p in projection.parameters()) == VisualProjection.count(1280, 576, 10) == 745_920
    # A pooled vector is a grid of one feature.
    torch.testing.assert_close(projection(pooled), projection(pooled.unsqueeze(1)))
    # The learned queries make the tokens differ even for a single pooled vector.
    assert (projection(pooled)[:, 0] - projection(pooled)[:, 1]).abs().max() > 1e-3


def test_visual_projection_is_differentiable_and_rejects_bad_inputs():
    projection = VisualProjection(IMAGE_DIM, D, VISUAL_LEN)
    projection(image_features()).sum().backward()
    assert all(p.grad is not None for p in projection.parameters())
    with pytest.raises(ValueError, match="no image features"):
        projection()
    with pytest.raises(ValueError, match="batch"):
        projection(torch.randn(2, 3, 4, IMAGE_DIM))
    with pytest.raises(ValueError, match="different batch sizes"):
        projection(pooled=torch.randn(2, IMAGE_DIM), tokens=torch.randn(3, 5, IMAGE_DIM))
    with pytest.raises(ValueError, match="positive integer"):
        VisualProjection(IMAGE_DIM, D, 0)
    with pytest.raises(TypeError):
        projection([1, 2, 3])


def test_calling_the_inner_model_directly_still_reads_the_image():
    """The image lives in the layers that read it, not in a hook on the top-level model."""
    model = tiny_llama()
    handle = apply(model, v2_config())
    randomise(handle)
    x = ids()
    handle.set_visual_features(image_features())
    with torch.no_grad():
        inner = model.lm_head(model.model(input_ids=x).last_hidden_state)
    torch.testing.assert_close(inner, logits(model, x))
    handle.set_visual_features(None)
    assert (inner - logits(model, x)).abs().max() > 1e-4


def test_gradient_checkpointing_with_an_image_gives_the_same_gradients():
    x = ids()
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama()
        handle = apply(model, v2_config())
        randomise(handle)
        model.train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        with handle.visual_features(image_features()):
            model(input_ids=x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in handle.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_a_custom_visual_projection_module_can_be_passed():
    model = tiny_llama()
    custom = nn.Sequential(nn.Flatten(1), nn.Linear(IMAGE_TOKENS * IMAGE_DIM, 2 * D), nn.Unflatten(1, (2, D)))
    handle = apply(model, LlamaAdapterV2Config(adapter_len=K), visual_projection=custom)
    assert model.minipeft_visual is custom and handle.early_layers == ["model.layers.0.self_attn"]
    randomise(handle)
    text_only = logits(model)
    with handle.visual_features(image_features()):
        assert (logits(model) - text_only).abs().max() > 1e-4


def test_half_precision_base_keeps_fp32_adapter_and_output_dtype():
    model = tiny_llama().to(torch.bfloat16)
    handle = apply(model, v2_config())
    assert all(p.dtype == torch.float32 for n, p in handle.named_parameters() if "adapter_" in n or "adaption_" in n)
    randomise(handle)
    with handle.visual_features(image_features()):
        out = logits(model)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()

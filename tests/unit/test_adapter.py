"""Bottleneck adapters (minipeft/peft/adapter.py) on tiny BERT and LLaMA models and a plain MLP."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minipeft.core import parameter_report, read_weights, save_weights
from minipeft.models import tiny_bert, tiny_llama
from minipeft.peft.adapter import (
    AdapterConfig,
    BottleneckAdapter,
    ParallelAdapterLayer,
    PostNormParallelAdapterLayer,
    SequentialAdapterLayer,
    apply,
)

D, LAYERS, VOCAB = 64, 2, 256  # tiny_bert and tiny_llama: width 64, 2 layers, vocabulary 256
PLACEMENTS = ["houlsby", "pfeiffer", "parallel"]
ADAPTERS_PER_LAYER = {"houlsby": 2, "pfeiffer": 1, "parallel": 1}
MODELS = {"bert": tiny_bert, "llama": tiny_llama}


def adapter_size(d, m):
    """One adapter: W_down (d x m) + b_down (m) + W_up (m x d) + b_up (d)."""
    return 2 * d * m + m + d


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, VOCAB, size, generator=torch.Generator().manual_seed(seed))


def run(model, tokens):
    """BERT's last hidden state or LLaMA's logits: the model's main output either way."""
    return model(input_ids=tokens)[0]


def perturb(handle, seed=3, std=0.3):
    """Random (not initial) adapter weights, so a test cannot pass by accident at the zero up-projection."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for wrapper in handle.wrappers.values():
            for parameter in wrapper.adapter.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def loss_of(output, seed=7):
    """A random linear read-out: unlike output.square().mean(), it is not flat after BERT's final LayerNorm."""
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    return (output * weights).sum()


def adapter_parameter_names(model):
    return {n for n, _ in model.named_parameters() if ".adapter." in n}


# ------------------------------------------------------------------------------------------- the defining invariant


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_identity_at_init_then_different_after_training_weights(arch, placement):
    model = MODELS[arch]()
    tokens = ids()
    with torch.no_grad():
        base = run(model, tokens)
    handle = apply(model, AdapterConfig(placement))
    with torch.no_grad():
        adapted = run(model, tokens)
    assert torch.equal(adapted, base), "a zero up-projection must give exactly the base model"

    # A non-zero down-projection alone changes nothing either: the update passes through W_up = 0.
    assert all(w.adapter.down.weight.abs().sum() > 0 for w in handle.wrappers.values())

    perturb(handle)
    with torch.no_grad():
        changed = run(model, tokens)
    assert (changed - base).abs().max() > 1e-3


@pytest.mark.parametrize("arch", list(MODELS))
def test_identity_in_train_mode_with_the_base_models_dropout(arch):
    # tiny_bert has hidden and attention dropout 0.1; the adapter draws no random numbers, so with the same seed the
    # dropout masks match and the adapted model still equals the base in train mode.
    model = MODELS[arch]().train()
    tokens = ids()
    torch.manual_seed(5)
    base = run(model, tokens)
    handle = apply(model, AdapterConfig("houlsby", non_linearity="gelu"))
    torch.manual_seed(5)
    adapted = run(model, tokens)
    assert torch.equal(adapted, base)

    perturb(handle)
    out = run(model, tokens)
    assert isinstance(out, torch.Tensor) and out.shape == base.shape and torch.isfinite(out).all()
    loss_of(out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for w in handle.wrappers.values()
               for p in w.adapter.parameters())


# ------------------------------------------------------------------------------------------- placement (hand oracles)


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_wrapped_modules_are_the_documented_ones(arch, placement):
    model = MODELS[arch]()
    handle = apply(model, AdapterConfig(placement))
    if arch == "bert":
        per_layer = {"houlsby": ["attention.output.dense", "output.dense"], "pfeiffer": ["output.dense"],
                     "parallel": ["output"]}[placement]
        prefix = "encoder.layer"
    else:
        per_layer = {"houlsby": ["self_attn.o_proj", "mlp.down_proj"], "pfeiffer": ["mlp.down_proj"],
                     "parallel": ["mlp"]}[placement]
        prefix = "model.layers"
    expected = {f"{prefix}.{i}.{s}" for i in range(LAYERS) for s in per_layer}
    assert set(handle.wrappers) == expected
    assert len(handle) == ADAPTERS_PER_LAYER[placement] * LAYERS


def test_bert_houlsby_ffn_adapter_sits_before_the_residual_and_layernorm():
    model = tiny_bert()
    handle = apply(model, AdapterConfig("houlsby"))
    perturb(handle)
    output = model.encoder.layer[0].output  # BertOutput, its dense now wrapped
    dense, adapter = output.dense.base_layer, output.dense.adapter
    z, h = torch.randn(2, 3, 128), torch.randn(2, 3, D)
    s = dense(z)
    update = adapter.up(F.relu(adapter.down(s)))  # f(s W_down) W_up
    expected = output.LayerNorm(h + s + update)  # LN(h + s + A(s))
    torch.testing.assert_close(output(z, h), expected)


def test_bert_parallel_adapter_reads_the_ffn_input():
    model = tiny_bert()
    handle = apply(model, AdapterConfig("parallel", scaling=4.0))
    perturb(handle)
    wrapper = model.encoder.layer[0].output
    assert isinstance(wrapper, PostNormParallelAdapterLayer)
    base, adapter = wrapper.base_layer, wrapper.adapter
    h = torch.randn(2, 3, D)  # the FFN's input = the residual
    z = model.encoder.layer[0].intermediate(h)
    expected = base.LayerNorm(base.dense(z) + h + 4.0 * adapter.up(F.relu(adapter.down(h))))
    torch.testing.assert_close(wrapper(z, h), expected)


def test_llama_parallel_adapter_is_added_to_the_mlp_output():
    model = tiny_llama()
    handle = apply(model, AdapterConfig("parallel", non_linearity="tanh", scaling=2.0))
    perturb(handle)
    wrapper = model.model.layers[1].mlp
    assert isinstance(wrapper, ParallelAdapterLayer)
    x = torch.randn(2, 3, D)
    expected = wrapper.base_layer(x) + 2.0 * wrapper.adapter.up(torch.tanh(wrapper.adapter.down(x)))
    torch.testing.assert_close(wrapper(x), expected)


def test_llama_houlsby_attention_adapter_follows_o_proj():
    model = tiny_llama()
    handle = apply(model, AdapterConfig("houlsby", non_linearity="gelu"))
    perturb(handle)
    wrapper = model.model.layers[0].self_attn.o_proj
    assert isinstance(wrapper, SequentialAdapterLayer)
    x = torch.randn(2, 3, D)
    y = wrapper.base_layer(x)
    torch.testing.assert_close(wrapper(x), y + wrapper.adapter.up(F.gelu(wrapper.adapter.down(y))))


def test_layers_selects_transformer_layers():
    model = tiny_llama()
    handle = apply(model, AdapterConfig("houlsby", layers=[1]))
    assert set(handle.wrappers) == {"model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"}
    assert not isinstance(model.model.layers[0].mlp.down_proj, SequentialAdapterLayer)


# ------------------------------------------------------------------------------------------- counts and gradients


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("reduction_factor", [4, 16])
def test_parameter_count_equals_closed_form(arch, placement, reduction_factor):
    model = MODELS[arch]()
    apply(model, AdapterConfig(placement, reduction_factor=reduction_factor))
    m = D // reduction_factor
    expected = ADAPTERS_PER_LAYER[placement] * LAYERS * adapter_size(D, m)
    report = parameter_report(model)
    assert report.trainable == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == adapter_parameter_names(model)


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_gradients_reach_only_the_adapters(arch, placement):
    model = MODELS[arch]()
    # gelu: no unit of the 4-wide bottleneck can be dead for every token, as a ReLU unit can.
    handle = apply(model, AdapterConfig(placement, non_linearity="gelu"))
    perturb(handle)  # with W_up = 0 the down-projection's gradient is exactly zero
    loss_of(run(model, ids())).backward()
    for name, parameter in model.named_parameters():
        if ".adapter." in name:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_at_init_only_the_up_projection_gets_a_gradient():
    # dL/dW_down = 0 while W_up = 0: the first step moves W_up only (as LoRA's first step moves only B).
    model = tiny_llama()
    handle = apply(model, AdapterConfig("pfeiffer", non_linearity="gelu"))
    loss_of(run(model, ids())).backward()
    for wrapper in handle.wrappers.values():
        assert wrapper.adapter.up.weight.grad.abs().sum() > 0
        assert wrapper.adapter.down.weight.grad.abs().sum() == 0


# ------------------------------------------------------------------------------------------- merge, undo, save/load


def test_merge_and_unload_raise_not_implemented():
    model = tiny_bert()
    handle = apply(model, AdapterConfig("houlsby"))
    with pytest.raises(NotImplementedError, match="adapter cannot be merged"):
        handle.merge()
    with pytest.raises(NotImplementedError):
        handle.unload()
    assert not handle.merged and len(handle) == 2 * LAYERS  # nothing was changed by the failed calls


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_undo_restores_the_original_modules(arch, placement):
    model = MODELS[arch]()
    tokens = ids()
    originals = dict(model.named_modules())
    with torch.no_grad():
        base = run(model, tokens)
    handle = apply(model, AdapterConfig(placement))
    perturb(handle)
    wrapped = list(handle.wrappers)
    handle.undo()
    for name in wrapped:
        assert model.get_submodule(name) is originals[name]
    assert not adapter_parameter_names(model)
    with torch.no_grad():
        assert torch.equal(run(model, tokens), base)
    apply(model, AdapterConfig(placement))  # the model can be adapted again


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_state_dict_save_load_round_trip(arch, placement, tmp_path):
    config = AdapterConfig(placement, reduction_factor=8)
    model = MODELS[arch]()
    handle = apply(model, config)
    perturb(handle)
    tokens = ids()
    with torch.no_grad():
        expected = run(model, tokens)
    state = handle.state_dict()
    assert all(".adapter." in key and "base_layer" not in key for key in state)
    assert sum(t.numel() for t in state.values()) == parameter_report(model).trainable
    save_weights(state, tmp_path / "adapter.safetensors", metadata={"placement": placement})

    tensors, metadata = read_weights(tmp_path / "adapter.safetensors")
    assert metadata == {"placement": placement}
    fresh = MODELS[arch]()
    fresh_handle = apply(fresh, AdapterConfig(placement, reduction_factor=8))
    fresh_handle.load_state_dict(tensors)
    with torch.no_grad():
        assert torch.equal(run(fresh, tokens), expected)


def test_loading_other_shapes_raises_and_changes_nothing():
    model = tiny_llama()
    small = apply(model, AdapterConfig("houlsby", reduction_factor=4))  # m = 16
    perturb(small)
    state = small.state_dict()

    other = tiny_llama()
    handle = apply(other, AdapterConfig("houlsby", reduction_factor=16))  # m = 4
    perturb(handle, seed=9)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        handle.load_state_dict(state)
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # A Houlsby file does not fit a Pfeiffer model either (it has the attention adapters too).
    pfeiffer = apply(tiny_llama(), AdapterConfig("pfeiffer", reduction_factor=4))
    with pytest.raises(ValueError, match="not part of"):
        pfeiffer.load_state_dict(state)


# ------------------------------------------------------------------------------------------- any nn.Module


class Block(nn.Module):
    """A plain residual MLP block, as a user might write one."""

    def __init__(self, d=16, hidden=32):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


def plain_model():
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block(), nn.Linear(16, 3))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_explicit_targets_on_a_plain_module(placement):
    model = plain_model()
    x = torch.randn(5, 16)
    base = model(x)
    handle = apply(model, AdapterConfig(placement, reduction_factor=4), targets="fc2")
    assert set(handle.wrappers) == {"0.fc2", "1.fc2"}
    assert torch.equal(model(x), base)
    # sequential: the adapter reads fc2's 16-wide output; parallel: fc2's 32-wide input, and writes 16 wide.
    d_in = 32 if placement == "parallel" else 16
    m = d_in // 4
    expected = 2 * (d_in * m + m + m * 16 + 16)
    assert parameter_report(model).trainable == expected
    perturb(handle)
    assert (model(x) - base).abs().max() > 1e-3


def test_explicit_targets_by_type_and_by_module_with_hidden_size():
    model = plain_model()
    with pytest.raises(ValueError, match="hidden_size"):  # a Block has no width attribute ...
        apply(model, AdapterConfig("pfeiffer", reduction_factor=4), targets=Block)
    handle = apply(model, AdapterConfig("pfeiffer", reduction_factor=4), targets=[Block], hidden_size=16)
    assert set(handle.wrappers) == {"0", "1"}  # ... so it is told: an adapter after each whole block
    assert parameter_report(model).trainable == 2 * adapter_size(16, 4)
    x = torch.randn(5, 16)
    base = handle.wrappers["0"].base_layer(x)
    perturb(handle)
    wrapper = handle.wrappers["0"]
    torch.testing.assert_close(wrapper(x), base + wrapper.adapter.up(F.relu(wrapper.adapter.down(base))))
    # By type: every nn.Linear, each adapter as wide as its layer's output (the 3-wide head included).
    model = plain_model()
    handle = apply(model, AdapterConfig("pfeiffer", reduction_factor=3), targets=nn.Linear)
    assert set(handle.wrappers) == {"0.fc1", "0.fc2", "1.fc1", "1.fc2", "2"}
    expected = 2 * adapter_size(32, 10) + 2 * adapter_size(16, 5) + adapter_size(3, 1)
    assert parameter_report(model).trainable == expected


def test_module_returning_a_tuple_is_refused_with_advice():
    model = tiny_llama()
    apply(model, AdapterConfig("pfeiffer"), targets=r"model\.layers\.0\.self_attn", hidden_size=D)
    with pytest.raises(TypeError, match="o_proj"):
        run(model, ids())


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reduction_factor": 0},
        {"reduction_factor": -4},
        {"reduction_factor": 1.5},
        {"reduction_factor": True},
        {"placement": "sideways"},
        {"non_linearity": "sigmoid"},
        {"init_std": 0.0},
        {"init_std": -0.1},
        {"layers": []},
        {"layers": [-1]},
        {"layers": [0, 0]},
        {"layers": "0"},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        AdapterConfig(**kwargs)


def test_swish_is_silu():
    assert AdapterConfig(non_linearity="Swish").non_linearity == "silu"


def test_reduction_factor_wider_than_the_model_raises_and_changes_nothing():
    model = tiny_bert()
    with pytest.raises(ValueError, match="reduction_factor"):
        apply(model, AdapterConfig(reduction_factor=D + 1))
    assert all(p.requires_grad for p in model.parameters())
    assert not adapter_parameter_names(model)
    apply(model, AdapterConfig(reduction_factor=D))  # m = 1 is allowed


def test_layer_index_out_of_range_raises():
    with pytest.raises(ValueError, match="has 2 layers"):
        apply(tiny_llama(), AdapterConfig(layers=[0, 2]))


def test_unknown_architecture_asks_for_targets():
    model = plain_model()
    with pytest.raises(ValueError, match="targets="):
        apply(model, AdapterConfig())
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_target_lists_close_names():
    with pytest.raises(ValueError, match="down_proj"):
        apply(tiny_llama(), AdapterConfig(), targets="down_prj")


def test_layers_with_explicit_targets_raises():
    with pytest.raises(ValueError, match="layers"):
        apply(plain_model(), AdapterConfig(layers=[0]), targets="fc2")


def test_overlapping_targets_raise():
    with pytest.raises(ValueError, match="overlap"):
        apply(tiny_llama(), AdapterConfig("parallel"), targets=[r"model\.layers\.0\.mlp", "down_proj"])


@pytest.mark.parametrize("first, second", [("houlsby", "houlsby"), ("parallel", "houlsby"), ("pfeiffer", "parallel")])
def test_adapting_twice_raises(first, second):
    model = tiny_llama()
    apply(model, AdapterConfig(first))
    with pytest.raises(ValueError, match="already wrapped"):
        apply(model, AdapterConfig(second))


def test_bottleneck_adapter_returns_only_the_update():
    adapter = BottleneckAdapter(8, 2, "relu", 0.1)
    h = torch.randn(3, 8)
    assert torch.equal(adapter(h), torch.zeros(3, 8))  # the caller adds the residual
    assert sum(p.numel() for p in adapter.parameters()) == adapter_size(8, 2)
    assert adapter.down.weight.abs().max() <= 0.2  # truncated at two standard deviations

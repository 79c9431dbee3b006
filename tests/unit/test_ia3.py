"""(IA)³ (minipeft/peft/ia3.py) on tiny LLaMA and BERT models and a plain MLP."""

import copy

import pytest
import torch
from torch import nn

from minipeft.core import read_weights, save_weights
from minipeft.models import tiny_bert, tiny_llama
from minipeft.peft.ia3 import IA3Config, IA3Linear, apply

VOCAB = 256
BERT = IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"])
MLP = IA3Config(target_modules=["fc1", "fc2"], feedforward_modules=["fc2"])


class Mlp(nn.Module):
    """A plain torch MLP with biases (tiny_llama has none, and the bias is where output and input scaling differ)."""

    def __init__(self, seed=0, d=8, hidden=16, out=4):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def mlp_input(seed=1):
    return torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(seed))


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, VOCAB, size, generator=torch.Generator().manual_seed(seed))


CASES = {
    "llama": (lambda: tiny_llama(), None, lambda m, x: m(input_ids=x).logits, ids),
    "bert": (lambda: tiny_bert(), BERT, lambda m, x: m(input_ids=x).last_hidden_state, ids),
    "mlp": (lambda: Mlp(), MLP, lambda m, x: m(x), mlp_input),
}


def build(case):
    make, config, run, data = CASES[case]
    return make(), config, run, data()


def randomise(handle, seed=3, spread=0.5):
    """Vectors away from ones (and from zero), so no test passes at the identity init by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for wrapper in handle.wrappers.values():
            noise = torch.rand(wrapper.ia3_l.shape, generator=generator) * 2 - 1
            wrapper.ia3_l.copy_(1 + spread * noise)  # in [0.5, 1.5]


def linear_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------- the defining invariant


@pytest.mark.parametrize("case", list(CASES))
def test_identity_at_init_then_different_with_other_vectors(case):
    model, config, run, x = build(case)
    with torch.no_grad():
        base = run(model, x)
    handle = apply(model, config)
    assert all(torch.equal(w.ia3_l, torch.ones_like(w.ia3_l)) for w in handle.wrappers.values())
    with torch.no_grad():
        assert torch.equal(run(model, x), base), "vectors of ones must give exactly the base model"
    randomise(handle)
    with torch.no_grad():
        assert (run(model, x) - base).abs().max() > 1e-3


def test_layer_matches_the_formula_by_hand():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    output_scaled, input_scaled = IA3Linear(copy.deepcopy(linear)), IA3Linear(copy.deepcopy(linear), True)
    assert output_scaled.ia3_l.shape == (3,) and input_scaled.ia3_l.shape == (5,)
    with torch.no_grad():
        output_scaled.ia3_l.copy_(torch.tensor([0.5, 2.0, -1.0]))
        input_scaled.ia3_l.copy_(torch.tensor([0.1, 0.2, 3.0, 1.0, -2.0]))
        W, b = linear.weight, linear.bias
        torch.testing.assert_close(output_scaled(x), output_scaled.ia3_l * (x @ W.T + b))  # l ⊙ (Wx + b)
        torch.testing.assert_close(input_scaled(x), (input_scaled.ia3_l * x) @ W.T + b)  # W (l ⊙ x) + b


def test_targets_and_sides_on_llama():
    model = tiny_llama()
    handle = apply(model)
    names = sorted(handle.wrappers)
    assert len(names) == 3 * model.config.num_hidden_layers
    for name, wrapper in handle.wrappers.items():
        assert isinstance(wrapper, IA3Linear)
        assert wrapper.is_feedforward == name.endswith("mlp.down_proj")
        assert name.rsplit(".", 1)[-1] in {"k_proj", "v_proj", "down_proj"}


def test_bert_output_dense_suffix_also_catches_the_attention_output_projection():
    """"output.dense" matches attention.output.dense as well (as in peft); both are scaled on their input."""
    handle = apply(tiny_bert(), BERT)
    ff = sorted(n for n, w in handle.wrappers.items() if w.is_feedforward)
    assert ff == sorted(f"encoder.layer.{i}.{p}output.dense" for i in range(2) for p in ("", "attention."))


# ------------------------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_only_on_the_vectors(case):
    model, config, run, x = build(case)
    handle = apply(model, config)
    randomise(handle)
    model.train()
    out = run(model, x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    for name, parameter in model.named_parameters():
        if name.endswith(".ia3_l"):
            assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name


@pytest.mark.parametrize("case", list(CASES))
def test_parameter_count_is_the_closed_form(case):
    model, config, _, _ = build(case)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    handle = apply(model, config)
    expected = sum(linears[n].in_features if w.is_feedforward else linears[n].out_features
                   for n, w in handle.wrappers.items())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected
    if case == "llama":  # per layer: l_k and l_v (kv_heads * head_dim each) + l_ff (intermediate size)
        c = model.config
        kv_width = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        assert trainable == c.num_hidden_layers * (2 * kv_width + c.intermediate_size)


# ------------------------------------------------------------------------------------------- merge / unmerge


@pytest.mark.parametrize("case", list(CASES))
def test_merge_equals_unmerged_output_and_unmerge_restores(case):
    model, config, run, x = build(case)
    original = linear_weights(model)
    handle = apply(model, config)
    randomise(handle)
    with torch.no_grad():
        adapted = run(model, x)
        handle.merge()
        assert handle.merged and all(w.merged for w in handle.wrappers.values())
        torch.testing.assert_close(run(model, x), adapted, rtol=1e-5, atol=1e-5)
        handle.unmerge()
        assert not handle.merged
        torch.testing.assert_close(run(model, x), adapted, rtol=1e-5, atol=1e-5)
    restored = {n.replace(".base_layer", ""): p for n, p in linear_weights(model).items() if "ia3_l" not in n}
    assert restored.keys() == original.keys()
    for name in original:
        torch.testing.assert_close(restored[name], original[name], rtol=1e-6, atol=1e-7)


def test_merged_weights_are_the_closed_form():
    model = Mlp()
    W1, b1, W2, b2 = (p.detach().clone() for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias))
    handle = apply(model, MLP)
    randomise(handle)
    l1, l2 = model.fc1.ia3_l.detach().clone(), model.fc2.ia3_l.detach().clone()
    handle.merge()
    torch.testing.assert_close(model.fc1.base_layer.weight, torch.diag(l1) @ W1)  # output: rows scaled
    torch.testing.assert_close(model.fc1.base_layer.bias, l1 * b1)  # ... and the bias too
    torch.testing.assert_close(model.fc2.base_layer.weight, W2 @ torch.diag(l2))  # input: columns scaled
    assert torch.equal(model.fc2.base_layer.bias, b2)  # ... and the bias untouched


def test_unload_gives_plain_linear_layers_with_the_same_output():
    model, config, run, x = build("llama")
    handle = apply(model, config)
    randomise(handle)
    with torch.no_grad():
        adapted = run(model, x)
    returned = handle.unload()
    assert returned is model and len(handle) == 0
    assert not any(isinstance(m, IA3Linear) for m in model.modules())
    assert type(model.model.layers[0].self_attn.k_proj) is nn.Linear
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear
    assert not any("ia3_l" in n or "base_layer" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), adapted, rtol=1e-5, atol=1e-5)


def test_undo_restores_the_original_modules_and_output():
    model, config, run, x = build("mlp")
    with torch.no_grad():
        base = run(model, x)
    fc1 = model.fc1
    handle = apply(model, config)
    randomise(handle)
    handle.merge()
    handle.undo()
    assert model.fc1 is fc1 and type(model.fc2) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), base, rtol=1e-6, atol=1e-6)


def test_merge_twice_and_unmerge_unmerged_raise():
    model, config, _, _ = build("mlp")
    handle = apply(model, config)
    with pytest.raises(ValueError, match="not merged"):
        handle.unmerge()
    with pytest.raises(ValueError, match="not merged"):
        model.fc1.unmerge()
    handle.merge()
    with pytest.raises(ValueError, match="already merged"):
        handle.merge()
    with pytest.raises(ValueError, match="already merged"):
        model.fc2.merge()


def test_unmerge_with_a_zero_entry_raises_and_changes_nothing():
    model, config, _, _ = build("mlp")
    handle = apply(model, config)
    randomise(handle)
    with torch.no_grad():
        model.fc2.ia3_l[3] = 0.0
    handle.merge()
    merged = linear_weights(model)
    # fc1 comes first and could be unmerged: the handle must check fc2 before touching fc1.
    with pytest.raises(ValueError, match=r"'fc2'.*zero entries .*index 3.*cannot be recovered"):
        handle.unmerge()
    with pytest.raises(ValueError, match="zero entries"):
        handle.undo()
    assert model.fc1.merged and model.fc2.merged and handle.merged
    after = linear_weights(model)
    assert all(torch.equal(after[n], merged[n]) for n in merged)


def test_unmerge_divides_by_the_merged_vector_even_if_ia3_l_changed():
    model, config, _, _ = build("mlp")
    original = linear_weights(model)
    handle = apply(model, config)
    randomise(handle)
    handle.merge()
    randomise(handle, seed=11)  # e.g. a state dict loaded while merged
    handle.unmerge()
    for name, value in original.items():
        torch.testing.assert_close(model.get_parameter(name.replace(".", ".base_layer.", 1)), value)


def test_half_precision_base_keeps_its_dtype():
    model = Mlp().to(torch.bfloat16)
    handle = apply(model, MLP)
    randomise(handle)
    assert model.fc1.ia3_l.dtype == torch.float32
    x = mlp_input().to(torch.bfloat16)
    with torch.no_grad():
        assert model(x).dtype == torch.bfloat16
        handle.merge()
        assert model.fc1.base_layer.weight.dtype == torch.bfloat16 and model(x).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("case", ["llama", "mlp"])
def test_state_dict_save_read_load_round_trip(case, tmp_path):
    model, config, run, x = build(case)
    handle = apply(model, config)
    randomise(handle)
    state = handle.state_dict()
    assert state and all(key.endswith(".ia3_l") for key in state)
    with torch.no_grad():
        expected = run(model, x)
    path = save_weights(state, tmp_path / "ia3.safetensors")
    tensors, _ = read_weights(path)

    fresh, _, _, _ = build(case)
    fresh_handle = apply(fresh, config)
    with torch.no_grad():
        assert not torch.allclose(run(fresh, x), expected)
    fresh_handle.load_state_dict(tensors)
    with torch.no_grad():
        assert torch.equal(run(fresh, x), expected)


def test_loading_into_other_shapes_raises_and_changes_nothing():
    handle = apply(tiny_llama(), None)
    randomise(handle)
    state = handle.state_dict()
    other = tiny_llama(intermediate_size=96)
    other_handle = apply(other, None)
    before = {k: v.clone() for k, v in other_handle.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        other_handle.load_state_dict(state)
    assert all(torch.equal(v, before[k]) for k, v in other_handle.state_dict().items())

    mlp_handle = apply(Mlp(), MLP)
    with pytest.raises(ValueError, match="cannot load"):
        mlp_handle.load_state_dict(state)


# ------------------------------------------------------------------------------------------- errors


def test_wrong_model_raises_and_leaves_it_unchanged():
    model = tiny_bert()  # the default config names LLaMA's k_proj / v_proj / down_proj
    modules_before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match="no module matches 'k_proj'"):
        apply(model)
    assert [type(m) for m in model.modules()] == modules_before
    assert all(p.requires_grad for p in model.parameters())


def test_feedforward_modules_not_a_subset_of_targets_raises():
    with pytest.raises(ValueError, match="not in target_modules"):
        IA3Config(target_modules=["k_proj", "v_proj"], feedforward_modules=["down_proj"])
    with pytest.raises(ValueError, match="not in target_modules"):
        IA3Config(target_modules=["fc1"])  # the LLaMA default feedforward_modules left in place
    # A regex cannot be checked by name; apply() checks it against the modules it matches.
    model = tiny_llama()
    config = IA3Config(target_modules=["k_proj", "v_proj"], feedforward_modules=r".*mlp\.up_proj")
    with pytest.raises(ValueError, match="none of the targets"):
        apply(model, config)
    assert not any(isinstance(m, IA3Linear) for m in model.modules())


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_modules=[]), "target_modules is empty"),
    (dict(target_modules=None), "target_modules is empty"),
    (dict(target_modules=[3]), "module name or regex"),
    (dict(target_modules=["k_proj", ""]), "module name or regex"),
    (dict(feedforward_modules=[None]), "module name or regex"),
    (dict(exclude=[1.5]), "module name or regex"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IA3Config(**kwargs)


def test_feedforward_modules_may_be_empty_and_exclude_works():
    model = tiny_llama()
    handle = apply(model, IA3Config(feedforward_modules=[], exclude=r"model\.layers\.0\..*"))
    assert sorted(handle.wrappers) == [
        "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"]
    assert not any(w.is_feedforward for w in handle.wrappers.values())
    assert model.model.layers[1].mlp.down_proj.ia3_l.numel() == model.config.hidden_size  # output side


def test_non_linear_targets_and_double_application_raise():
    with pytest.raises(ValueError, match="nn.Linear"):
        apply(tiny_llama(), IA3Config(target_modules=["mlp"], feedforward_modules=[]))
    with pytest.raises(TypeError, match="nn.Linear"):
        IA3Linear(nn.LayerNorm(4))
    with pytest.raises(TypeError, match="IA3Config"):
        apply(tiny_llama(), {"target_modules": ["k_proj"]})
    model = tiny_llama()
    apply(model)
    with pytest.raises(ValueError, match="already wrapped by 'ia3'"):
        apply(model)

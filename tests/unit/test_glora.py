"""GLoRA (minipeft/peft/glora.py) on single layers, a plain MLP (with and without biases) and tiny LLaMA."""

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minipeft.core.contract import wrapper_tensor_names

from minipeft.core import read_weights, save_weights
from minipeft.models import tiny_llama
from minipeft.peft.glora import (
    CHOICES,
    DEFAULT_PATH,
    SUPPORT_TENSORS,
    GloraConfig,
    GloraLinear,
    apply,
    evolutionary_search,
    get_paths,
    parameter_cost,
    path_cost,
    sample_paths,
    set_paths,
    supernet,
)

VOCAB = 256  # tiny_llama's vocabulary
MLP_TARGETS = ["0", "2", "4"]
ALL_PATHS = [dict(zip(SUPPORT_TENSORS, combo)) for combo in itertools.product(*(CHOICES[t] for t in SUPPORT_TENSORS))]


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, VOCAB, size, generator=torch.Generator().manual_seed(seed))


def mlp(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16, bias=bias), nn.ReLU(), nn.Linear(16, 10, bias=bias), nn.ReLU(),
                         nn.Linear(10, 5, bias=bias)).eval()


def own_parameters(layer):
    """The GLoRA tensors a wrapper declares (its support tensors)."""
    tensors = dict(layer.named_parameters())
    return [tensors[name] for name in wrapper_tensor_names(layer)]


def randomise(handle, seed=3, std=0.3):
    """Random values in every support tensor (the X_d factors included), so nothing passes at the zero start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in handle.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def random_paths(handle, seed):
    return sample_paths(handle, random.Random(seed))


def logits(model, tokens=None):
    with torch.no_grad():
        return model(input_ids=ids() if tokens is None else tokens)[0]


def weighted_sum(output, seed=7):
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    return (output * weights).sum()


def test_the_search_space_has_432_paths_per_layer():
    assert len(ALL_PATHS) == 432 == 4 * 4 * 3 * 3 * 3
    assert len({tuple(p.values()) for p in ALL_PATHS}) == 432


# ------------------------------------------------------------------------------------------- the defining invariant


@pytest.mark.parametrize("bias", [True, False])
def test_identity_at_init_whatever_the_paths(bias):
    model = mlp(bias=bias)
    x = torch.randn(4, 12)
    base = model(x)
    weights = {i: (model[i].weight.clone(), None if model[i].bias is None else model[i].bias.clone())
               for i in (0, 2, 4)}
    handle = apply(model, GloraConfig(r=3, target_modules=MLP_TARGETS))
    # The identity comes from zero down factors and D, E alone: the up factors are random.
    assert all(w.glora_A.Xu.abs().sum() > 0 and not w.glora_A.Xd.any() for w in handle.wrappers.values())
    for seed in range(6):
        set_paths(handle, random_paths(handle, seed))
        for i in (0, 2, 4):
            weight, bias_eff = model[i].effective_weight_and_bias()
            assert torch.equal(weight, weights[i][0])
            expected_bias = weights[i][1] if bias else torch.zeros(model[i].base_layer.out_features)
            assert bias_eff is None or torch.equal(bias_eff, expected_bias)
        torch.testing.assert_close(model(x), base, rtol=0, atol=1e-6)
    randomise(handle)
    assert (model(x) - base).abs().max() > 1e-3


def test_identity_at_init_on_tiny_llama_with_default_targets():
    model = tiny_llama()
    base = logits(model)
    handle = apply(model, GloraConfig(r=4))
    linears = [n for n, m in tiny_llama().named_modules() if type(m) is nn.Linear and n != "lm_head"]
    assert sorted(handle.wrappers) == sorted(linears), "None targets every nn.Linear except the output layer"
    torch.testing.assert_close(logits(model), base, rtol=0, atol=1e-6)
    randomise(handle)
    assert (logits(model) - base).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------- the closed forms


def hand_value(tensors, name, choice, rows):
    """A support tensor's value by hand, from the code's definition (vector / constant are slices of X_d)."""
    if name in "DE":
        X = tensors[name + ".X"]
        return {"vector": X, "constant": X[0], "none": torch.zeros(())}[choice]
    Xd, Xu = tensors[name + ".Xd"], tensors[name + ".Xu"]
    return {"lora": Xd @ Xu, "vector": Xd[:, 0].reshape(rows, 1), "constant": Xd[0, 0],
            "none": torch.zeros(())}[choice]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tensor_and_choice", [(t, c) for t in SUPPORT_TENSORS for c in CHOICES[t]])
def test_each_choice_gives_the_closed_form_weight_and_bias(tensor_and_choice, bias):
    tensor, choice = tensor_and_choice
    torch.manual_seed(0)
    linear = nn.Linear(6, 5, bias=bias)
    layer = GloraLinear(linear, r=2)
    with torch.no_grad():
        for p in own_parameters(layer):
            p.normal_()
    # The other tensors on random choices too, so every term is exercised together with the one under test.
    path = dict(random.Random(f"{tensor}{choice}{bias}").choice(ALL_PATHS), **{tensor: choice})
    layer.path = path
    t = {f"{n}.{k}": v.detach() for n in SUPPORT_TENSORS for k, v in getattr(layer, f"glora_{n}").named_parameters()}
    W0, b0 = linear.weight.detach(), (linear.bias.detach() if bias else torch.zeros(5))
    A, B = hand_value(t, "A", path["A"], 5), hand_value(t, "B", path["B"], 5)
    C, D, E = hand_value(t, "C", path["C"], 6), hand_value(t, "D", path["D"], 5), hand_value(t, "E", path["E"], 5)
    expected_weight = W0 + W0 * A + B
    C_column = C.reshape(-1, 1) if C.dim() else C * torch.ones(6, 1)  # 'none' -> zeros
    expected_bias = b0 + b0 * D + E + (W0 @ C_column)[:, 0]

    weight, bias_eff = layer.effective_weight_and_bias()
    torch.testing.assert_close(weight, expected_weight)
    if bias_eff is None:  # only a bias-less layer whose path adds no bias term
        assert not bias and path["C"] == "none" and path["E"] == "none"
        bias_eff = torch.zeros(5)
    torch.testing.assert_close(bias_eff, expected_bias)
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(layer(x), x @ expected_weight.T + expected_bias)


def test_path_cost_closed_form():
    d_in, d_out, r = 7, 5, 3
    path = {"A": "lora", "B": "vector", "C": "lora", "D": "constant", "E": "vector"}
    assert path_cost(path, d_in, d_out, r) == r * (d_out + d_in) + d_out + r * (d_in + 1) + 1 + d_out
    small = {"A": "constant", "B": "none", "C": "vector", "D": "none", "E": "none"}
    assert path_cost(small, d_in, d_out, r) == 1 + d_in
    assert path_cost(dict.fromkeys(SUPPORT_TENSORS, "none"), d_in, d_out, r) == 0
    largest = {"A": "lora", "B": "lora", "C": "lora", "D": "vector", "E": "vector"}
    assert max(path_cost(p, d_in, d_out, r) for p in ALL_PATHS) == path_cost(largest, d_in, d_out, r)

    model = mlp()
    handle = apply(model, GloraConfig(r=r, target_modules=MLP_TARGETS))
    paths = random_paths(handle, 0)
    assert parameter_cost(handle, paths) == sum(
        path_cost(paths[n], model[int(n)].base_layer.in_features, model[int(n)].base_layer.out_features, r)
        for n in MLP_TARGETS)
    assert parameter_cost(handle) == sum(path_cost(DEFAULT_PATH, m.in_features, m.out_features, r)
                                         for m in (model[0].base_layer, model[2].base_layer, model[4].base_layer))


@pytest.mark.parametrize("seed", range(8))
def test_cost_counts_exactly_the_numbers_a_path_trains(seed):
    """A path's cost equals how many support-tensor entries receive a gradient on that path (with a bias)."""
    torch.manual_seed(seed)
    layer = GloraLinear(nn.Linear(6, 5), r=2)
    with torch.no_grad():
        for p in own_parameters(layer):
            p.normal_()
    path = random.Random(seed).choice(ALL_PATHS)
    layer.path = path
    weighted_sum(layer(torch.randn(4, 6))).backward()
    used = sum(int((p.grad != 0).sum()) for p in own_parameters(layer) if p.grad is not None)
    assert used == path_cost(path, 6, 5, 2), path


def test_trainable_count_is_every_support_tensor():
    """Allocated (the supernet, every path's numbers): 2 r (d_out + d_in) + r (d_in + 1) + 2 d_out per layer."""
    r = 3
    model = mlp()
    shapes = [(model[i].in_features, model[i].out_features) for i in (0, 2, 4)]
    handle = apply(model, GloraConfig(r=r, target_modules=MLP_TARGETS))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(2 * r * (o + i) + r * (i + 1) + 2 * o for i, o in shapes)
    assert trainable == sum(t.numel() for t in handle.state_dict().values())


# ------------------------------------------------------------------------------------------- what trains


def test_only_glora_tensors_get_gradients():
    model = tiny_llama()
    handle = apply(model, GloraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    randomise(handle)
    weighted_sum(model(input_ids=ids()).logits).backward()
    for name, parameter in model.named_parameters():
        is_glora = ".glora_" in name
        assert parameter.requires_grad == is_glora, name
        if not is_glora:
            assert parameter.grad is None, name
        elif not name.endswith("glora_D.X"):  # LLaMA's projections have no bias, so D has nothing to scale
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_at_init_the_down_factors_get_a_gradient():
    """Zero X_d and random X_u: the gradient reaches X_d first (like LoRA's B), so training starts."""
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    weighted_sum(model(torch.randn(4, 12))).backward()
    for wrapper in handle.wrappers.values():
        assert wrapper.glora_A.Xd.grad.abs().sum() > 0 and wrapper.glora_E.X.grad.abs().sum() > 0
        assert not wrapper.glora_A.Xu.grad.any()


# ------------------------------------------------------------------------------------------- merge / unmerge / unload


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_merge_equals_unmerged_and_unmerge_restores_exactly(seed, bias):
    model = mlp(seed=seed, bias=bias)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply(model, GloraConfig(r=3, target_modules=MLP_TARGETS))
    randomise(handle, seed=seed)
    set_paths(handle, random_paths(handle, seed))
    x = torch.randn(5, 12)
    unmerged = model(x)
    handle.merge()
    assert handle.merged
    torch.testing.assert_close(model(x), unmerged, rtol=1e-6, atol=1e-6)
    handle.unmerge()
    torch.testing.assert_close(model(x), unmerged, rtol=1e-6, atol=1e-6)
    for i in (0, 2, 4):
        base = model[i].base_layer
        assert torch.equal(base.weight, original[f"{i}.weight"]), "unmerge restores W0 bit for bit"
        if bias:
            assert torch.equal(base.bias, original[f"{i}.bias"])
        else:
            assert base.bias is None, "a bias created by merge is removed again"


def test_a_bias_less_layer_gets_a_bias_only_when_its_path_produces_one():
    model = mlp(bias=False)
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    randomise(handle)
    set_paths(handle, {"0": {"C": "none", "E": "none", "D": "vector"},  # D alone: b0 * D = 0, no bias term
                       "2": {"C": "lora", "E": "none"}, "4": {"C": "none", "E": "constant"}})
    x = torch.randn(3, 12)
    expected = model(x)
    handle.merge()
    assert model[0].base_layer.bias is None
    assert model[2].base_layer.bias is not None and model[4].base_layer.bias is not None
    assert not model[2].base_layer.bias.requires_grad
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_unload_leaves_plain_linear_layers_with_the_same_outputs(bias):
    model = mlp(bias=bias)
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    randomise(handle)
    set_paths(handle, random_paths(handle, 5))
    set_paths(handle, {"2": {"E": "vector"}})  # at least one layer produces a bias term
    x = torch.randn(3, 12)
    adapted = model(x)
    plain = handle.unload()
    assert all(type(plain[i]) is nn.Linear for i in (0, 2, 4))
    assert not any(isinstance(m, GloraLinear) for m in plain.modules())
    assert not any("glora" in n or "original_" in n for n, _ in plain.state_dict().items())
    assert plain[2].bias is not None
    torch.testing.assert_close(plain(x), adapted, rtol=1e-6, atol=1e-6)


def test_unload_on_tiny_llama():
    model = tiny_llama()
    handle = apply(model, GloraConfig(r=2, target_modules=["q_proj", "v_proj", "up_proj"]))
    randomise(handle, std=0.05)
    set_paths(handle, random_paths(handle, 1))
    adapted = logits(model)
    plain = handle.unload()
    assert type(plain.model.layers[0].self_attn.q_proj) is nn.Linear
    assert not any("glora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(logits(plain), adapted, rtol=1e-5, atol=1e-5)


def test_undo_restores_the_base_model():
    model = mlp(bias=False)
    x = torch.randn(3, 12)
    base = model(x)
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    randomise(handle)
    handle.merge()
    handle.undo()
    assert all(type(model[i]) is nn.Linear and model[i].bias is None for i in (0, 2, 4))
    assert torch.equal(model(x), base)


def test_merge_twice_and_unmerge_unmerged_raise_on_handle_and_layer():
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    randomise(handle)
    with pytest.raises(ValueError, match="not merged"):
        handle.unmerge()
    with pytest.raises(ValueError, match="not merged"):
        model[0].unmerge()
    handle.merge()
    weight = model[0].base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="already merged"):
        handle.merge()
    with pytest.raises(ValueError, match="already merged"):
        model[0].merge()
    assert torch.equal(model[0].base_layer.weight, weight), "a refused merge must not touch the weights"
    with pytest.raises(ValueError, match="unmerge"):
        set_paths(handle, {"A": "none"})
    with pytest.raises(ValueError, match="unmerge"):
        supernet(handle, True)


def test_supernet_mode_cannot_merge():
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    supernet(handle, True)
    with pytest.raises(ValueError, match="supernet"):
        handle.merge()
    assert not any(w.merged for w in handle.wrappers.values())
    supernet(handle, False)
    handle.merge()


# ------------------------------------------------------------------------------------------- paths and the supernet


def sampled_outputs(seed, config_seed=0, steps=6):
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS, seed=config_seed))
    randomise(handle)
    supernet(handle, True, seed=seed)
    x = torch.randn(2, 12, generator=torch.Generator().manual_seed(0))
    outputs, paths = [], []
    for _ in range(steps):
        outputs.append(model(x))
        paths.append({n: w.sampled_path for n, w in handle.wrappers.items()})
    return outputs, paths


def test_supernet_sampling_is_reproducible_and_varies():
    outputs, paths = sampled_outputs(seed=11)
    again, paths_again = sampled_outputs(seed=11)
    assert paths == paths_again
    assert all(torch.equal(a, b) for a, b in zip(outputs, again))
    # Different forwards take different paths, with different outputs.
    assert len({str(p) for p in paths}) == len(paths)
    assert any((outputs[0] - o).abs().max() > 1e-3 for o in outputs[1:])
    _, other_paths = sampled_outputs(seed=12)
    assert other_paths != paths
    # The config's seed seeds the shared generator when supernet() gets none.
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS, seed=11))
    supernet(handle, True)
    model(torch.randn(2, 12))
    assert {n: w.sampled_path for n, w in handle.wrappers.items()} == paths[0]


def test_supernet_samples_only_from_the_search_space():
    model = mlp()
    choices = {"A": ("vector", "none"), "C": ("none",), "E": "vector"}
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS, choices=choices))
    supernet(handle, True, seed=0)
    seen = {t: set() for t in SUPPORT_TENSORS}
    for _ in range(40):
        model(torch.randn(2, 12))
        for wrapper in handle.wrappers.values():
            for t in SUPPORT_TENSORS:
                seen[t].add(wrapper.sampled_path[t])
    assert seen["A"] == {"vector", "none"} and seen["C"] == {"none"} and seen["E"] == {"vector"}
    assert seen["B"] == set(CHOICES["B"]) and seen["D"] == set(CHOICES["D"])
    supernet(handle, False)
    x = torch.randn(2, 12)
    assert torch.equal(model(x), model(x)), "off: every layer uses its fixed path"


def test_set_paths_one_path_partial_and_per_layer():
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS, path={"D": "vector"}))
    assert get_paths(handle)["0"] == dict(DEFAULT_PATH, D="vector")
    set_paths(handle, {"C": "none"})  # one partial path: every layer, only C
    assert all(p == dict(DEFAULT_PATH, D="vector", C="none") for p in get_paths(handle).values())
    set_paths(handle, {"2": {"A": "constant"}})  # one layer
    paths = get_paths(handle)
    assert paths["2"]["A"] == "constant" and paths["0"]["A"] == "lora"
    assert parameter_cost(handle, {"4": {"B": "none"}}) < parameter_cost(handle)
    assert get_paths(handle) == paths, "parameter_cost only looks"


@pytest.mark.parametrize("paths, match", [
    ({"A": "lora", "C": "constant"}, "not a choice for C"),
    ({"0": {"A": "lora"}, "9": {"B": "none"}}, "not a GLoRA layer"),
    ({"0": {"F": "none"}}, "support tensors"),
    ({"D": "lora"}, "not a choice for D"),
])
def test_bad_paths_raise_and_change_nothing(paths, match):
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    before = get_paths(handle)
    with pytest.raises(ValueError, match=match):
        set_paths(handle, paths)
    assert get_paths(handle) == before


# ------------------------------------------------------------------------------------------- evolutionary search


def search_setup(budget_fraction=0.5):
    model = mlp()
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS))
    target = random_paths(handle, 99)
    full = parameter_cost(handle, {"A": "lora", "B": "lora", "C": "lora", "D": "vector", "E": "vector"})
    budget = max(int(budget_fraction * full), parameter_cost(handle, target))
    seen_costs = []

    def fitness(model_):
        paths = get_paths(handle)  # the model as the search set it
        seen_costs.append(parameter_cost(handle))
        return -sum(paths[n][t] != target[n][t] for n in paths for t in SUPPORT_TENSORS)

    return handle, target, budget, fitness, seen_costs


def test_evolutionary_search_improves_and_stays_under_the_budget():
    handle, target, budget, fitness, seen_costs = search_setup()
    result = evolutionary_search(handle, fitness, budget, population=12, generations=8, parents=4, mutations=6,
                                 crossovers=6, seed=0)
    assert max(seen_costs) <= budget and result.cost <= budget
    assert result.fitness > result.history[0], "better than the best of the random initial population"
    assert result.history == sorted(result.history)
    assert result.evaluated == len(seen_costs) > 12
    assert get_paths(handle) == result.paths, "the model is left on the best paths"
    assert result.fitness == fitness(handle.model)
    assert not any(w.supernet for w in handle.wrappers.values())


def test_evolutionary_search_finds_the_known_optimum():
    handle, target, budget, fitness, _ = search_setup()
    result = evolutionary_search(handle, fitness, budget, population=20, generations=30, parents=5, mutations=10,
                                 mutation_prob=0.1, crossovers=10, seed=1)
    assert result.paths == target and result.fitness == 0


def test_evolutionary_search_is_reproducible_and_respects_a_tight_budget():
    handle, _, _, fitness, seen_costs = search_setup()
    runs = [evolutionary_search(handle, fitness, 150, population=8, generations=3, parents=3, mutations=4,
                                crossovers=4, seed=5) for _ in range(2)]
    assert runs[0] == runs[1]
    assert max(seen_costs) <= 150
    with pytest.raises(ValueError, match="budget"):
        evolutionary_search(handle, fitness, -1)
    with pytest.raises(ValueError, match="no random candidate fits"):
        evolutionary_search(handle, fitness, 0, population=2, generations=1)  # only all-'none' fits: rarely drawn


# ------------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(r=0), "r must be a positive integer"), (dict(r=2.5), "r must be a positive integer"),
    (dict(r=True), "r must be a positive integer"), (dict(target_modules=[]), "target_modules"),
    (dict(path={"A": "low-rank"}), "not a choice for A"), (dict(path={"X": "none"}), "support tensors"),
    (dict(choices={"C": ("constant",)}), "subset"), (dict(choices={"D": ()}), "subset"),
    (dict(seed="0"), "seed"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GloraConfig(**kwargs)


def test_bad_layer_arguments_raise():
    with pytest.raises(ValueError, match="r must be a positive integer"):
        GloraLinear(nn.Linear(4, 4), r=0)
    with pytest.raises(TypeError, match="nn.Linear"):
        GloraLinear(nn.Embedding(4, 4), r=2)


def test_unknown_target_changes_nothing_and_wrapping_twice_raises():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"q_prj.*did you mean 'q_proj'"):
        apply(model, GloraConfig(r=2, target_modules=["q_prj"]))
    assert not any(isinstance(m, GloraLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    apply(model, GloraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already wrapped"):
        apply(model, GloraConfig(r=2, target_modules=["q_proj"]))


def test_half_precision_base_keeps_fp32_support_tensors_and_output_dtype():
    linear = nn.Linear(8, 4).to(torch.bfloat16)
    layer = GloraLinear(linear, r=2)
    assert layer.glora_A.Xd.dtype == torch.float32
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------------------- save / load


def test_state_dict_and_paths_round_trip(tmp_path):
    config = GloraConfig(r=3, target_modules=["q_proj", "down_proj"])
    model = tiny_llama()
    handle = apply(model, config)
    randomise(handle, std=0.05)
    set_paths(handle, random_paths(handle, 4))
    expected = logits(model)
    state = handle.state_dict()
    assert "model.layers.0.self_attn.q_proj.glora_A.Xd" in state and "model.layers.1.mlp.down_proj.glora_E.X" in state
    assert not any("base_layer" in k or "original_" in k for k in state)
    save_weights(state, tmp_path / "glora.safetensors", metadata={"paths": get_paths(handle)})
    tensors, metadata = read_weights(tmp_path / "glora.safetensors")

    fresh = tiny_llama()
    fresh_handle = apply(fresh, config)
    assert not torch.equal(logits(fresh), expected)
    fresh_handle.load_state_dict(tensors)
    set_paths(fresh_handle, metadata["paths"])
    assert torch.equal(logits(fresh), expected)


def test_loading_other_shapes_raises_and_changes_nothing():
    source = apply(tiny_llama(), GloraConfig(r=2, target_modules=["q_proj"]))
    randomise(source)
    model = tiny_llama()
    handle = apply(model, GloraConfig(r=4, target_modules=["q_proj"]))
    before = {k: v.clone() for k, v in handle.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        handle.load_state_dict(source.state_dict())
    assert all(torch.equal(before[k], v) for k, v in handle.state_dict().items())

    wider = apply(tiny_llama(hidden_size=32, intermediate_size=64), GloraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="shape"):
        handle.load_state_dict(wider.state_dict())
    assert all(torch.equal(before[k], v) for k, v in handle.state_dict().items())
    with pytest.raises(ValueError, match="missing"):
        apply(tiny_llama(), GloraConfig(r=2, target_modules=["q_proj", "v_proj"])).load_state_dict(source.state_dict())


def test_supernet_training_lowers_the_loss():
    """Supernet steps towards a teacher every path can reach (W0 scaled, b0 shifted): the shared tensors learn."""
    model = mlp()
    teacher = mlp()
    with torch.no_grad():
        for i in (0, 2, 4):
            teacher[i].weight.mul_(1.3)
            teacher[i].bias.add_(0.2)
    handle = apply(model, GloraConfig(r=2, target_modules=MLP_TARGETS, seed=0))
    supernet(handle, True)
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    y = teacher(x).detach()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def average_loss():  # over many sampled paths, so one lucky draw does not decide
        with torch.no_grad():
            return sum(F.mse_loss(model(x), y).item() for _ in range(20)) / 20

    before = average_loss()
    for _ in range(30):
        optimiser.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimiser.step()
    assert average_loss() < 0.5 * before

import pytest
import torch
from torch import nn

from minipeft.core import find_modules, inject, module_names
from minipeft.models import tiny_llama


class Scale(nn.Module):
    """A minimal mergeable wrapper: y = base(x) * 2 (merge doubles the weight)."""

    minipeft_method = "scale"

    def __init__(self, base_layer):
        super().__init__()
        self.base_layer = base_layer
        self.merged = False
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.base_layer(x) if self.merged else self.base_layer(x) * 2

    def merge(self):
        self.base_layer.weight.data *= 2
        self.base_layer.bias.data *= 2
        self.merged = True

    def unmerge(self):
        self.base_layer.weight.data /= 2
        self.base_layer.bias.data /= 2
        self.merged = False


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_find_by_suffix_regex_and_type():
    model = tiny_llama()
    q = find_modules(model, "q_proj")
    assert [n for n, _ in q] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    regex = find_modules(model, r"model\.layers\.1\..*_proj")
    assert len(regex) == 7 and all(".layers.1." in n for n, _ in regex)
    linears = find_modules(model, types=nn.Linear, exclude="lm_head")
    assert len(linears) == 14 and all(isinstance(m, nn.Linear) for _, m in linears)


def test_unknown_target_lists_close_matches():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"no module matches 'q_prj'; did you mean 'q_proj'.*model\.layers\.0\.self_attn\.q_proj.*1 more"):
        find_modules(model, "q_prj")


def test_wrong_type_for_name_is_explained():
    model = tiny_llama()
    with pytest.raises(ValueError, match="matches only modules that are not Embedding.*q_proj \\(Linear\\)"):
        find_modules(model, "q_proj", types=nn.Embedding)


def test_inject_undo_restores_exact_model():
    model = mlp()
    x = torch.randn(5, 4)
    before = model(x)
    originals = [model[0], model[2]]
    handle = inject(model, lambda name, m: Scale(m), types=nn.Linear, method="scale")
    assert len(handle) == 2 and isinstance(model[0], Scale)
    assert not torch.allclose(model(x), before)
    handle.undo()
    assert model[0] is originals[0] and model[2] is originals[1]
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_wrapping_twice_is_an_error_and_changes_nothing():
    model = mlp()
    inject(model, lambda name, m: Scale(m), types=nn.Linear, method="scale")
    snapshot = [type(m) for m in model]
    with pytest.raises(ValueError, match="already wrapped by 'scale'"):
        inject(model, lambda name, m: Scale(m), types=nn.Linear, method="scale")
    assert [type(m) for m in model] == snapshot


def test_failed_wrapper_construction_leaves_model_untouched():
    model = mlp()
    calls = []

    def make(name, module):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return Scale(module)

    with pytest.raises(RuntimeError):
        inject(model, make, types=nn.Linear)
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], nn.Linear)


def test_merge_unmerge_unload_and_errors():
    model = mlp()
    x = torch.randn(5, 4)
    handle = inject(model, lambda name, m: Scale(m), types=nn.Linear, method="scale")
    adapted = model(x)
    with pytest.raises(ValueError, match="not merged"):
        handle.unmerge()
    handle.merge()
    torch.testing.assert_close(model(x), adapted)
    with pytest.raises(ValueError, match="already merged"):
        handle.merge()
    handle.unmerge()
    torch.testing.assert_close(model(x), adapted)
    handle.unload()
    assert all(not hasattr(m, "minipeft_method") for m in model)
    torch.testing.assert_close(model(x), adapted)
    with pytest.raises(ValueError, match="undone or unloaded"):
        handle.merge()


def test_unmergeable_method_says_so():
    class Nonlinear(nn.Module):
        minipeft_method = "nonlinear"

        def __init__(self, base_layer):
            super().__init__()
            self.base_layer = base_layer

        def forward(self, x):
            return torch.tanh(self.base_layer(x))

    handle = inject(mlp(), lambda n, m: Nonlinear(m), types=nn.Linear, method="nonlinear")
    with pytest.raises(NotImplementedError, match="nonlinear cannot be merged"):
        handle.merge()


def test_handle_state_dict_round_trip_and_mismatch():
    model = mlp()
    handle = inject(model, lambda name, m: Scale(m), types=nn.Linear, method="scale")
    state = handle.state_dict()
    assert sorted(state) == ["0.gain", "2.gain"]
    state = {k: v + 1 for k, v in state.items()}
    handle.load_state_dict(state)
    assert model[0].gain.item() == 2.0
    with pytest.raises(ValueError, match="'4.gain' is not part of this scale"):
        handle.load_state_dict({**state, "4.gain": torch.ones(1)})
    assert model[0].gain.item() == 2.0


def test_module_names_lists_candidates():
    names = module_names(tiny_llama(), types=nn.Linear)
    assert "lm_head" in names and "model.layers.0.mlp.down_proj" in names


def test_undo_restores_requires_grad_flags():
    model = mlp()
    model[0].weight.requires_grad_(False)
    handle = inject(model, lambda name, m: Scale(m), types=nn.Linear, method="scale")
    for parameter in model.parameters():  # what a method's apply() does after injecting
        parameter.requires_grad_(False)
    handle.undo()
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]


def test_a_typo_in_exclude_is_an_error_not_a_silent_no_op():
    from minipeft.core import find_modules
    from minipeft.models import tiny_llama

    with pytest.raises(ValueError, match="exclude entry 'lm_haed' matches no module"):
        find_modules(tiny_llama(), target=["q_proj"], types=nn.Linear, exclude="lm_haed")


def test_a_target_entry_matching_only_other_types_is_named_even_beside_a_good_one():
    from minipeft.core import find_modules
    from minipeft.models import tiny_llama

    with pytest.raises(ValueError, match="target 'mlp' matches only modules that are not Linear"):
        find_modules(tiny_llama(), target=["q_proj", "mlp"], types=nn.Linear)

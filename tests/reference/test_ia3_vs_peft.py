"""(IA)³ against HF peft: same vectors -> same outputs, same merged weights, same gradients.

peft's ``IA3Config`` is applied to one copy of a tiny random model (LLaMA with grouped-query attention, BERT,
and a plain torch MLP with biases) and minipeft's to another. peft's vectors are randomised and copied into
minipeft by name (peft's ``...<path>.ia3_l.default`` of shape ``(out, 1)`` or ``(1, in)`` becomes our 1-D
``...<path>.ia3_l``). Then logits, gradients, merged weights and merged / unloaded outputs are compared in fp32.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

from minipeft.models import tiny_bert, tiny_llama  # noqa: E402
from minipeft.peft.ia3 import IA3Config, apply  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # peft warns that IA3 unmerge can be inaccurate
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # transformers deprecation inside peft
]

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PEFT_PREFIX = "base_model.model."


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def llama_ids():
    return torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(7))


# name -> (model builder, targets, feed-forward targets, input, run)
CASES = {
    "llama": (tiny_llama, ["k_proj", "v_proj", "down_proj"], ["down_proj"], llama_ids,
              lambda m, x: m(input_ids=x).logits),
    "bert": (tiny_bert, ["key", "value", "output.dense"], ["output.dense"], llama_ids,
             lambda m, x: m(input_ids=x).last_hidden_state),
    "mlp": (Mlp, ["fc1", "fc2"], ["fc2"], lambda: torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1)),
            lambda m, x: m(x)),
}


def peft_and_ours(case):
    make, targets, feedforward, data, run = CASES[case]
    base = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.get_peft_model(
            copy.deepcopy(base), peft.IA3Config(target_modules=targets, feedforward_modules=feedforward))
    ours = copy.deepcopy(base)
    handle = apply(ours, IA3Config(target_modules=targets, feedforward_modules=feedforward))
    return base, peft_model, ours, handle, data(), run


def randomise_peft(peft_model, seed=3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if ".ia3_l." in name:
                parameter.copy_(1 + 0.5 * (2 * torch.rand(parameter.shape, generator=generator) - 1))


def peft_vectors(peft_model):
    """peft's vectors under our names: 'base_model.model.<path>.ia3_l.default' (out, 1) -> '<path>.ia3_l' (out,)."""
    vectors = {}
    for name, parameter in peft_model.named_parameters():
        if ".ia3_l." in name:
            assert name.startswith(PEFT_PREFIX) and name.endswith(".ia3_l.default"), name
            vectors[name[len(PEFT_PREFIX):-len(".default")]] = parameter
    return vectors


def copy_peft_into_ours(peft_model, handle):
    handle.load_state_dict({k: v.detach().reshape(-1).clone() for k, v in peft_vectors(peft_model).items()})


def peft_base_weights(peft_model):
    """peft's base-layer weights under our names (both wrap the original Linear as 'base_layer')."""
    return {n[len(PEFT_PREFIX):]: p for n, p in peft_model.named_parameters() if "ia3_l" not in n}


@pytest.mark.parametrize("case", list(CASES))
def test_same_targets_same_sides_same_shapes(case):
    _, peft_model, ours, handle, _, _ = peft_and_ours(case)
    theirs = peft_vectors(peft_model)
    assert sorted(theirs) == sorted(handle.state_dict())
    for key, tensor in theirs.items():
        wrapper = handle.wrappers[key[:-len(".ia3_l")]]
        peft_layer = peft_model.get_submodule(PEFT_PREFIX + key[:-len(".ia3_l")])
        assert wrapper.is_feedforward == peft_layer.is_feedforward, key
        assert tensor.numel() == wrapper.ia3_l.numel()
    # peft's saved keys are ours with peft's wrapper prefix.
    saved = peft.get_peft_model_state_dict(peft_model)
    assert sorted(saved) == sorted(PEFT_PREFIX + k for k in handle.state_dict())


def test_default_config_matches_peft_llama_defaults():
    peft_model = peft.get_peft_model(tiny_llama(), peft.IA3Config())  # peft's per-architecture defaults
    handle = apply(tiny_llama())
    theirs = {k[:-len(".ia3_l")]: peft_model.get_submodule(PEFT_PREFIX + k[:-len(".ia3_l")]).is_feedforward
              for k in peft_vectors(peft_model)}
    assert theirs == {name: w.is_feedforward for name, w in handle.wrappers.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_same_vectors_same_outputs_and_gradients(case):
    base, peft_model, ours, handle, x, run = peft_and_ours(case)
    with torch.no_grad():
        torch.testing.assert_close(run(peft_model, x), run(base, x), **TOLERANCE)  # both are the identity at init
        torch.testing.assert_close(run(ours, x), run(base, x), **TOLERANCE)
    randomise_peft(peft_model)
    copy_peft_into_ours(peft_model, handle)

    read_out = None
    outputs = {}
    for label, model in (("peft", peft_model), ("ours", ours)):
        out = run(model, x)  # eval mode (no dropout), gradients flow all the same
        read_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)) if read_out is None else read_out
        (out * read_out).sum().backward()
        outputs[label] = out.detach()
    assert (outputs["ours"] - run(base, x)).abs().max() > 1e-3  # the vectors really changed something
    torch.testing.assert_close(outputs["ours"], outputs["peft"], **TOLERANCE)
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    theirs = peft_vectors(peft_model)
    assert sorted(ours_grads) == sorted(theirs)
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, theirs[name].grad.reshape(-1), **TOLERANCE)


@pytest.mark.parametrize("case", list(CASES))
def test_merge_unmerge_and_unload_match_peft(case):
    base, peft_model, ours, handle, x, run = peft_and_ours(case)
    randomise_peft(peft_model)
    copy_peft_into_ours(peft_model, handle)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}

    with torch.no_grad():
        adapted = run(peft_model, x)
        peft_model.merge_adapter()
        handle.merge()
        torch.testing.assert_close(run(ours, x), adapted, **TOLERANCE)
        torch.testing.assert_close(run(ours, x), run(peft_model, x), **TOLERANCE)
        ours_weights = {n: p for n, p in ours.named_parameters() if "ia3_l" not in n}
        theirs_weights = peft_base_weights(peft_model)
        assert sorted(ours_weights) == sorted(theirs_weights)
        for name, weight in ours_weights.items():
            torch.testing.assert_close(weight, theirs_weights[name], **TOLERANCE)

        # Unmerge: peft divides by l + 1e-8, we by l; both come back to the base weights.
        peft_model.unmerge_adapter()
        handle.unmerge()
        for name, weight in ours.named_parameters():
            if "ia3_l" not in name:
                plain = name.replace(".base_layer", "")
                torch.testing.assert_close(weight, original[plain], rtol=1e-6, atol=1e-7)
                torch.testing.assert_close(peft_base_weights(peft_model)[name], original[plain], **TOLERANCE)

        # merge_and_unload vs unload: plain models with the same output.
        peft_plain = peft_model.merge_and_unload()
        ours_plain = handle.unload()
        torch.testing.assert_close(run(ours_plain, x), run(peft_plain, x), **TOLERANCE)
        torch.testing.assert_close(run(ours_plain, x), adapted, **TOLERANCE)
        assert [type(m) for m in ours_plain.modules()] == [type(m) for m in peft_plain.modules()]


def test_plain_mlp_through_inject_adapter_in_model():
    """peft's in-place injection into a bare nn.Module (no PeftModel wrapper) agrees with ours too."""
    base = Mlp()
    theirs = peft.inject_adapter_in_model(
        peft.IA3Config(target_modules=["fc1", "fc2"], feedforward_modules=["fc2"]), copy.deepcopy(base))
    ours = copy.deepcopy(base)
    handle = apply(ours, IA3Config(target_modules=["fc1", "fc2"], feedforward_modules=["fc2"]))
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            if ".ia3_l." in name:
                parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.5)
    handle.load_state_dict({n[:-len(".default")]: p.detach().reshape(-1).clone()
                            for n, p in theirs.named_parameters() if ".ia3_l." in n})
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **TOLERANCE)

"""GLoRA against HF peft: peft's one-config-for-all-layers GLoRA is one point of our per-layer search space.

peft's ``GloraConfig(r, config_A_B, config_C, config_D_E)`` is built on tiny random LLaMA models — the book's
``tiny_llama`` (no biases, so peft gives its layers no C, D, E) and the same architecture with biases on every
projection (so all five support tensors act). peft's tensors are randomised, then copied into ours through peft's
on-disk key names (``base_model.model.<path>.glora_A.Xd`` …): a ``"lora"`` factor or a D/E vector has the same
name and shape in both; peft's separate ``"vector"`` / ``"constant"`` tensor ``glora_X.X`` goes into our entangled
slice ``Xd[:, 0]`` / ``Xd[0, 0]`` (or ``X[0]`` for D and E). Logits are compared in fp32 before and after merging,
after unloading and after a few SGD steps; peft's trainable count is checked against our closed-form path cost.
"""

import copy
import itertools
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")

from minipeft.models import tiny_llama  # noqa: E402
from minipeft.peft.glora import GloraConfig, apply, get_paths, parameter_cost, set_paths  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PREFIX = "base_model.model."
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_CONFIGS = list(itertools.product(["lora", "vector", "constant", "none"], ["lora", "vector", "none"],
                                      ["vector", "constant", "none"]))  # (config_A_B, config_C, config_D_E)


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, 256, size, generator=torch.Generator().manual_seed(seed))


def biased_llama(seed=0):
    """tiny_llama's architecture with a bias on every projection, so C, D and E act in peft too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises biases to zero; make them count
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(std=0.1)
    return model


def peft_model_of(base, config_A_B, config_C, config_D_E, r=4):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(copy.deepcopy(base), peft.GloraConfig(
            r=r, target_modules=ALL_LINEAR, config_A_B=config_A_B, config_C=config_C, config_D_E=config_D_E,
            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # random values in every support tensor, so the adapted model is far from the base
        for name, parameter in model.named_parameters():
            if "glora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def peft_state(peft_model):
    """peft's support tensors under its on-disk names, with the ``base_model.model.`` prefix removed."""
    state = peft.get_peft_model_state_dict(peft_model)
    assert all(k.startswith(PREFIX) for k in state)
    # A "none" path is a zeros buffer in peft ("….glora_C.zeros"); it has no counterpart (or value) to copy.
    return {k[len(PREFIX):]: v.detach().clone() for k, v in state.items() if not k.endswith(".zeros")}


def ours_from(base, peft_model, config_A_B, config_C, config_D_E, r=4):
    """Our GLoRA on a copy of ``base`` (default targets: every linear but lm_head), holding peft's tensors, each
    layer on the path peft's config means for it."""
    model = copy.deepcopy(base)
    handle = apply(model, GloraConfig(r=r, seed=0))
    assert sorted(n.rsplit(".", 1)[-1] for n in handle.wrappers) == sorted(ALL_LINEAR * 2)
    generator = torch.Generator().manual_seed(8)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in handle.state_dict().items()}  # unused: random

    for key, value in peft_state(peft_model).items():
        layer, support, name = key.rsplit(".", 2)  # "<path>", "glora_A", "Xd" | "Xu" | "X"
        ours = f"{layer}.{support}.{'X' if support in ('glora_D', 'glora_E') else 'Xd'}"
        if key in state and state[key].shape == value.shape:  # a "lora" factor or a D / E vector: the same tensor
            state[key] = value
        elif value.numel() == 1:  # peft's "constant": the first entry of our entangled tensor
            state[ours].view(-1)[0] = value[0]
        else:  # peft's A / B / C "vector" (rows, 1): the first column of our down factor
            assert name == "X" and value.shape[1] == 1, key
            state[ours][:, 0] = value[:, 0]
    handle.load_state_dict(state)

    paths = {}
    for name, wrapper in handle.wrappers.items():
        has_bias = wrapper.base_layer.bias is not None  # peft gives a bias-less layer no C, D or E
        paths[name] = {"A": config_A_B, "B": config_A_B, "C": config_C if has_bias else "none",
                       "D": config_D_E if has_bias else "none", "E": config_D_E if has_bias else "none"}
    set_paths(handle, paths)
    return model, handle


def run(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens)[0]


@pytest.mark.parametrize("config_A_B, config_C, config_D_E", [
    ("lora", "lora", "constant"), ("vector", "none", "vector"), ("constant", "vector", "none"),
    ("none", "lora", "vector"),
])
def test_tiny_llama_same_tensors_same_logits_and_merge(config_A_B, config_C, config_D_E):
    base = tiny_llama()
    theirs = peft_model_of(base, config_A_B, config_C, config_D_E)
    ours, handle = ours_from(base, theirs, config_A_B, config_C, config_D_E)
    tokens = ids()
    if config_A_B != "none":
        assert (run(ours, tokens) - run(base, tokens)).abs().max() > 1e-3
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    assert parameter_cost(handle) == theirs.get_nb_trainable_parameters()[0]

    theirs.merge_adapter()
    handle.merge()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    for name, wrapper in handle.wrappers.items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(wrapper.base_layer.weight, peft_layer.base_layer.weight, rtol=1e-6, atol=1e-6)
        assert wrapper.base_layer.bias is None and peft_layer.base_layer.bias is None


@pytest.mark.parametrize("config_A_B, config_C, config_D_E", PEFT_CONFIGS)
def test_biased_llama_every_peft_config_same_logits_merge_and_unload(config_A_B, config_C, config_D_E):
    """All 4 * 3 * 3 = 36 of peft's configurations, with all five support tensors acting."""
    base = biased_llama()
    theirs = peft_model_of(base, config_A_B, config_C, config_D_E)
    ours, handle = ours_from(base, theirs, config_A_B, config_C, config_D_E)
    assert all(path == {"A": config_A_B, "B": config_A_B, "C": config_C, "D": config_D_E, "E": config_D_E}
               for path in get_paths(handle).values())
    tokens = ids()
    if (config_A_B, config_C, config_D_E) != ("none", "none", "none"):
        assert (run(ours, tokens) - run(base, tokens)).abs().max() > 1e-3
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    assert parameter_cost(handle) == theirs.get_nb_trainable_parameters()[0]

    theirs.merge_adapter()
    handle.merge()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    for name, wrapper in handle.wrappers.items():  # the structural re-parameterisation: the same W' and b'
        peft_layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(wrapper.base_layer.weight, peft_layer.base_layer.weight, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(wrapper.base_layer.bias, peft_layer.base_layer.bias, rtol=1e-6, atol=1e-6)

    # Ours unmerges exactly to the base model (peft divides by 1 + A, which is only close).
    handle.unmerge()
    torch.testing.assert_close(ours.model.layers[0].self_attn.q_proj.base_layer.weight,
                               base.model.layers[0].self_attn.q_proj.weight, rtol=0, atol=0)
    plain_ours, plain_theirs = handle.unload(), theirs.merge_and_unload()
    torch.testing.assert_close(run(plain_ours, tokens), run(plain_theirs, tokens), **TOLERANCE)


def test_peft_lora_factor_names_are_ours():
    """With "lora" everywhere and D, E vectors, every peft key is one of ours under peft's prefix."""
    base = biased_llama()
    theirs = peft_model_of(base, "lora", "lora", "vector")
    _, handle = ours_from(base, theirs, "lora", "lora", "vector")
    assert set(peft_state(theirs)) == set(handle.state_dict())


def test_same_logits_after_sgd_steps():
    """Only the entries a path reads get a gradient, so SGD on our entangled slices equals SGD on peft's tensors."""
    base = biased_llama()
    theirs = peft_model_of(base, "vector", "lora", "constant")
    ours, _ = ours_from(base, theirs, "vector", "lora", "constant")
    tokens = ids()
    for model in (theirs, ours):
        optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for _ in range(3):
            optimiser.zero_grad()
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimiser.step()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)

"""LLaMA-Adapter v1 against HF peft's ``adaption_prompt``: same prompts and gates -> same logits, gradients, tokens.

peft's ``AdaptionPromptConfig(adapter_len, adapter_layers)`` is applied to one copy of a tiny random
``LlamaForCausalLM`` and minipeft's :class:`LlamaAdapterConfig` to another. peft's prompts and gates are randomised
and copied into minipeft by name: peft's ``base_model.model.<path>.self_attn.adaption_prompt`` ``(1, K, d)`` is our
``<path>.self_attn.adaption_prompt`` ``(K, d)``, and its gate is mapped as follows.

peft has **one raw scalar gate per layer** (``adaption_gate``, shape ``(1,)``, used as ``g``); the paper and the
official code have **one gate per head**, and the official training code uses ``tanh(g)``. So:

* ``gate="raw", gate_per_head=False``: our gate *is* peft's gate (same shape, same use);
* ``gate="raw", gate_per_head=True``: every head's gate set to peft's ``g``;
* ``gate="tanh", gate_per_head=True``: every head's gate set to ``atanh(g)``, so that ``tanh`` gives back ``g``
  (peft's gates are drawn in (-0.9, 0.9), where ``atanh`` is finite).

Grouped-query attention is covered (4 query heads on 2 key/value heads; SmolLM2's 9 on 3; and 1 key/value head).
"""

import copy
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")

from minipeft.models import tiny_llama  # noqa: E402
from minipeft.peft.llama_adapter import LlamaAdapterConfig, apply  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),  # transformers deprecations inside peft
              pytest.mark.filterwarnings("ignore::UserWarning")]

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PEFT_PREFIX = "base_model.model."
K = 4
GATES = {  # (our gate, per head) -> how peft's scalar g becomes our gate tensor
    ("raw", False): lambda g, heads: g.reshape(1),
    ("raw", True): lambda g, heads: g.reshape(1).expand(heads).clone(),
    ("tanh", True): lambda g, heads: torch.atanh(g).reshape(1).expand(heads).clone(),
}
SHAPES = {  # name -> tiny_llama arguments
    "gqa_4_on_2": dict(layers=3),
    "smollm2_9_on_3": dict(layers=2, hidden_size=72, heads=9, kv_heads=3),
    "mqa_4_on_1": dict(layers=2, kv_heads=1),
}


def ids(seed=7, size=(2, 6)):
    return torch.randint(3, 256, size, generator=torch.Generator().manual_seed(seed))


def peft_and_ours(shape="gqa_4_on_2", adapter_layers=2, gate="raw", per_head=False):
    base = tiny_llama(**SHAPES[shape])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.get_peft_model(copy.deepcopy(base), peft.AdaptionPromptConfig(
            adapter_len=K, adapter_layers=adapter_layers, task_type="CAUSAL_LM"))
    ours = copy.deepcopy(base)
    handle = apply(ours, LlamaAdapterConfig(adapter_len=K, adapter_layers=adapter_layers, gate=gate,
                                            gate_per_head=per_head))
    return base, peft_model, ours, handle


def randomise_peft(peft_model, seed=3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if name.endswith("adaption_gate"):
                parameter.copy_(1.8 * torch.rand(parameter.shape, generator=generator) - 0.9)  # (-0.9, 0.9)
            elif name.endswith("adaption_prompt"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def copy_peft_into_ours(peft_model, handle, gate, per_head):
    """peft's prompts and gates under our names (see the module docstring for the gate mapping)."""
    heads = handle.model.config.num_attention_heads
    state = {}
    for name, parameter in peft_model.named_parameters():
        if not name.endswith(("adaption_prompt", "adaption_gate")):
            continue
        ours = name[len(PEFT_PREFIX):]
        if name.endswith("adaption_prompt"):
            state[ours] = parameter.detach()[0]  # (1, K, d) -> (K, d)
        else:
            state[ours] = GATES[(gate, per_head)](parameter.detach(), heads)
    assert set(state) == set(handle.state_dict()), "peft and minipeft adapt the same layers, with the same tensors"
    handle.load_state_dict(state)


def run(model, x):
    return model(input_ids=x).logits


@pytest.mark.parametrize("shape", list(SHAPES))
def test_at_init_both_are_the_base_model(shape):
    base, peft_model, ours, _ = peft_and_ours(shape)
    x = ids()
    with torch.no_grad():
        expected = run(base, x)
        assert torch.equal(run(ours, x), expected)
        assert torch.equal(run(peft_model, x), expected)


@pytest.mark.parametrize("gate, per_head", list(GATES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_same_prompts_and_gates_give_the_same_logits(shape, gate, per_head):
    base, peft_model, ours, handle = peft_and_ours(shape, gate=gate, per_head=per_head)
    randomise_peft(peft_model)
    copy_peft_into_ours(peft_model, handle, gate, per_head)
    x = ids()
    with torch.no_grad():
        expected = run(peft_model, x)
        assert (expected - run(base, x)).abs().max() > 1e-3, "the randomised adapter must change the output"
        torch.testing.assert_close(run(ours, x), expected, **TOLERANCE)


@pytest.mark.parametrize("adapter_layers", [1, 3])
def test_the_same_top_layers_are_adapted(adapter_layers):
    _, peft_model, _, handle = peft_and_ours("gqa_4_on_2", adapter_layers=adapter_layers)
    adapted = sorted(n[len(PEFT_PREFIX):].rsplit(".", 1)[0] for n, _ in peft_model.named_parameters()
                     if n.endswith("adaption_gate"))
    assert adapted == handle.top_layers == [f"model.layers.{i}.self_attn" for i in range(3 - adapter_layers, 3)]


def test_same_gradients_for_prompts_and_gates():
    base, peft_model, ours, handle = peft_and_ours("smollm2_9_on_3", gate="raw", per_head=False)
    randomise_peft(peft_model)
    copy_peft_into_ours(peft_model, handle, "raw", False)
    x = ids()
    peft_model(input_ids=x, labels=x).loss.backward()
    ours(input_ids=x, labels=x).loss.backward()
    peft_grads = {n[len(PEFT_PREFIX):]: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    for name, parameter in handle.named_parameters():
        torch.testing.assert_close(parameter.grad, peft_grads[name].reshape(parameter.shape), **TOLERANCE)


def test_same_generated_tokens():
    _, peft_model, ours, handle = peft_and_ours("gqa_4_on_2", gate="tanh", per_head=True)
    randomise_peft(peft_model)
    copy_peft_into_ours(peft_model, handle, "tanh", True)
    x = ids()
    kwargs = dict(input_ids=x, max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        expected = peft_model.generate(**kwargs)
        assert torch.equal(ours.generate(**kwargs), expected)
        assert torch.equal(ours.generate(**kwargs, use_cache=False), expected)

"""LoRA against HF peft: same factors -> same outputs, same merged weights, and each other's saved folders.

peft's LoRA is built on tiny random LLaMA (grouped-query attention) and BERT models, a plain MLP and a small CNN.
Its factors (``lora_B`` randomised, so the update is not zero) are copied into minipeft through peft's on-disk key
names (``base_model.model.<path>.lora_A.weight``), which must be minipeft's names behind that prefix. Outputs are
compared in fp32 before and after merging, after a few SGD steps, and across the folder format both ways.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

from minipeft.models import tiny_bert, tiny_llama  # noqa: E402
from minipeft.interop.peft_format import export_peft, import_peft  # noqa: E402
from minipeft.peft.lora import LoraConfig, apply  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PREFIX = "base_model.model."


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, 256, size, generator=torch.Generator().manual_seed(seed))


def peft_model_of(base, **lora_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**lora_kwargs))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # random B (and embedding A), so the update is far from zero
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def peft_state(peft_model):
    """peft's adapter tensors under its on-disk names, with the ``base_model.model.`` prefix removed."""
    state = peft.get_peft_model_state_dict(peft_model, save_embedding_layers=False)  # the factors only
    assert all(k.startswith(PREFIX) for k in state)
    return {k[len(PREFIX):]: v.detach().clone() for k, v in state.items()}


def ours_from(base, peft_model, config):
    model = copy.deepcopy(base)
    handle = apply(model, config)
    theirs = peft_state(peft_model)
    assert set(theirs) == set(handle.state_dict()), "peft's keys must be ours behind the base_model.model. prefix"
    handle.load_state_dict(theirs)
    return model, handle


def run(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens)[0]


@pytest.mark.parametrize("use_rslora", [False, True])
def test_tiny_llama_same_factors_same_logits_and_merge(use_rslora):
    base = tiny_llama()
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"]
    theirs = peft_model_of(base, r=4, lora_alpha=16, target_modules=targets, use_rslora=use_rslora,
                           task_type="CAUSAL_LM")
    ours, handle = ours_from(base, theirs, LoraConfig(r=4, alpha=16, target_modules=targets, use_rslora=use_rslora))
    tokens = ids()
    assert (run(ours, tokens) - run(base, tokens)).abs().max() > 1e-3
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    assert handle.wrappers["model.layers.0.self_attn.q_proj"].scaling == pytest.approx(
        theirs.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"])

    theirs.merge_adapter()
    handle.merge()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    for name, wrapper in handle.wrappers.items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(wrapper.base_layer.weight, peft_layer.base_layer.weight, rtol=1e-6, atol=1e-6)

    theirs.unmerge_adapter()
    handle.unmerge()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)

    plain_theirs = theirs.merge_and_unload()
    plain_ours = handle.unload()
    torch.testing.assert_close(run(plain_ours, tokens), run(plain_theirs, tokens), **TOLERANCE)


def test_same_trainable_count_and_same_after_sgd_steps():
    base = tiny_llama()
    targets = ["q_proj", "v_proj"]
    theirs = peft_model_of(base, r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    ours, handle = ours_from(base, theirs, LoraConfig(r=4, alpha=8, target_modules=targets))
    trainable, _ = theirs.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in ours.parameters() if p.requires_grad)

    tokens = ids()
    for model in (theirs, ours):
        optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for _ in range(3):
            optimiser.zero_grad()
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimiser.step()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)


def test_embedding_lora_matches_peft():
    base = tiny_llama()
    targets = ["embed_tokens", "q_proj"]
    theirs = peft_model_of(base, r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    ours, handle = ours_from(base, theirs, LoraConfig(r=4, alpha=8, target_modules=targets))
    tokens = ids()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    theirs.merge_adapter()
    handle.merge()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)


def test_bert_default_targets_and_outputs():
    base = tiny_bert()
    theirs = peft_model_of(base, r=8, lora_alpha=16)  # target_modules=None: peft's default for BERT
    ours, handle = ours_from(base, theirs, LoraConfig(r=8, alpha=16))  # and ours
    tokens = ids(size=(2, 7))
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)
    theirs.merge_adapter()
    handle.merge()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)


def test_plain_mlp_and_cnn_match_peft():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    theirs = peft_model_of(mlp, r=2, lora_alpha=4, target_modules=["0", "2"])
    ours, _ = ours_from(mlp, theirs, LoraConfig(r=2, alpha=4, target_modules=["0", "2"]))
    x = torch.randn(4, 12)
    torch.testing.assert_close(ours(x), theirs(x), **TOLERANCE)

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2)).eval()
    theirs = peft_model_of(cnn, r=2, lora_alpha=4, target_modules=["0", "2"])
    ours, handle = ours_from(cnn, theirs, LoraConfig(r=2, alpha=4, target_modules=["0", "2"]))
    images = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(ours(images), theirs(images), **TOLERANCE)
    theirs.merge_adapter()
    handle.merge()
    torch.testing.assert_close(ours(images), theirs(images), **TOLERANCE)


def test_export_loads_in_peft(tmp_path):
    ours = tiny_llama(seed=0)
    handle = apply(ours, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"]))
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for parameter in (p for p in ours.parameters() if p.requires_grad):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    export_peft(handle, tmp_path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path)  # the same base, built afresh
    assert isinstance(theirs, peft.PeftModelForCausalLM)
    tokens = ids()
    assert (run(ours, tokens) - run(tiny_llama(seed=0), tokens)).abs().max() > 1e-3
    torch.testing.assert_close(run(theirs, tokens), run(ours, tokens), **TOLERANCE)
    wrapped = {n for n, m in theirs.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(handle.wrappers)


def test_export_with_regex_targets_and_rslora_loads_in_peft(tmp_path):
    ours = tiny_llama(seed=0)
    handle = apply(ours, LoraConfig(r=2, alpha=8, use_rslora=True, target_modules=r".*layers\.1\..*_proj",
                                    exclude=["k_proj"]))
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for parameter in (p for p in ours.parameters() if p.requires_grad):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    export_peft(handle, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path)
    wrapped = {n for n, m in theirs.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(handle.wrappers)
    tokens = ids()
    torch.testing.assert_close(run(theirs, tokens), run(ours, tokens), **TOLERANCE)


def test_peft_save_pretrained_imports_into_minipeft(tmp_path):
    base = tiny_llama()
    theirs = peft_model_of(base, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"],
                           task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(tmp_path)  # also saves the embedding's base table
    ours = copy.deepcopy(base)
    handle = import_peft(ours, tmp_path)
    assert len(handle) == 5
    tokens = ids()
    torch.testing.assert_close(run(ours, tokens), run(theirs, tokens), **TOLERANCE)

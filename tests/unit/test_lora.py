"""LoRA (minipeft/peft/lora.py) on tiny LLaMA and BERT models, a plain MLP, a small CNN, and single layers."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minipeft.core import read_weights, save_weights
from minipeft.models import tiny_bert, tiny_llama
from minipeft.peft.lora import (
    LoraConfig,
    LoraConv2d,
    LoraEmbedding,
    LoraLayer,
    LoraLinear,
    apply,
)
from minipeft.interop.peft_format import export_peft, import_peft

VOCAB = 256  # tiny_llama / tiny_bert vocabulary


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, VOCAB, size, generator=torch.Generator().manual_seed(seed))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, dilation=2)).eval()


def randomise(handle, seed=3, std=0.3):
    """Random values in every LoRA factor (B included), so a test cannot pass at the zero-B starting point."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in handle.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def logits(model, tokens=None):
    with torch.no_grad():
        return model(input_ids=ids() if tokens is None else tokens)[0]


def weighted_sum(output, seed=7):
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    return (output * weights).sum()


LLAMA_TARGETS = ["q_proj", "v_proj"]

# ------------------------------------------------------------------------------------------- the defining invariant


def test_identity_at_init_on_tiny_llama():
    model = tiny_llama()
    base = logits(model)
    handle = apply(model, LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    assert torch.equal(logits(model), base), "B = 0 must give exactly the base model"
    # The identity comes from B = 0 alone: A is random.
    assert all(w.lora_A.weight.abs().sum() > 0 and not w.lora_B.weight.any() for w in handle.wrappers.values())
    randomise(handle)
    assert (logits(model) - base).abs().max() > 1e-3


def test_identity_at_init_on_plain_mlp():
    model = mlp()
    x = torch.randn(4, 12)
    base = model(x)
    handle = apply(model, LoraConfig(r=2, target_modules=["0", "2", "4"]))
    assert len(handle) == 3 and all(isinstance(model[i], LoraLinear) for i in (0, 2, 4))
    assert torch.equal(model(x), base)


def test_linear_matches_the_formula_by_hand():
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    layer = LoraLinear(linear, r=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    A, B, W, b = layer.lora_A.weight, layer.lora_B.weight, linear.weight, linear.bias
    x = torch.randn(2, 4, 6)
    expected = x @ W.T + b + (6 / 3) * (x @ A.T @ B.T)  # h = W0 x + b + (alpha / r) B A x, row-vector form
    torch.testing.assert_close(layer(x), expected)


# ------------------------------------------------------------------------------------------- what trains


def test_only_lora_factors_get_gradients():
    model = tiny_llama()
    handle = apply(model, LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    randomise(handle)  # with B = 0 the gradient of A would be exactly zero
    weighted_sum(model(input_ids=ids()).logits).backward()
    for name, parameter in model.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        assert parameter.requires_grad == is_lora, name
        if is_lora:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_at_init_only_B_moves_first():
    """B = 0 makes dL/dA = 0 at the first step while dL/dB != 0: the reason zero-B training still starts."""
    model = mlp()
    handle = apply(model, LoraConfig(r=2, target_modules=["0", "2"]))
    model(torch.randn(4, 12)).sum().backward()
    for wrapper in handle.wrappers.values():
        assert not wrapper.lora_A.weight.grad.any()
        assert wrapper.lora_B.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("r", [1, 4])
def test_trainable_count_matches_closed_form_llama(r):
    model = tiny_llama()
    shapes = [(m.in_features, m.out_features) for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))]
    handle = apply(model, LoraConfig(r=r, target_modules=LLAMA_TARGETS))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(r * (k + d) for k, d in shapes)  # r (k + d) per wrapped Linear
    assert trainable == sum(t.numel() for t in handle.state_dict().values())


def test_trainable_count_matches_closed_form_mlp_embedding_and_conv():
    model = mlp()
    shapes = [(model[i].in_features, model[i].out_features) for i in (0, 2, 4)]
    apply(model, LoraConfig(r=3, target_modules=["0", "2", "4"]))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(3 * (k + d) for k, d in shapes)

    llama = tiny_llama()
    table = llama.model.embed_tokens.weight.shape  # (V, d)
    apply(llama, LoraConfig(r=2, target_modules=["embed_tokens"]))
    assert sum(p.numel() for p in llama.parameters() if p.requires_grad) == 2 * (table[0] + table[1])

    net = cnn()
    convs = [net[0], net[2]]
    expected = sum(3 * (c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels) for c in convs)
    apply(net, LoraConfig(r=3, target_modules=["0", "2"]))
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == expected


def test_bert_default_targets_and_paper_count_shape():
    """target_modules=None picks BERT's query/value, the paper's W_q, W_v: 2 per layer, r (d + d) each."""
    model = tiny_bert()
    d, layers = model.config.hidden_size, model.config.num_hidden_layers
    handle = apply(model, LoraConfig(r=8))
    assert sorted({n.rsplit(".", 1)[-1] for n in handle.wrappers}) == ["query", "value"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == layers * 2 * 8 * (d + d)


# ------------------------------------------------------------------------------------------- merge / unmerge / unload


def test_merge_gives_same_logits_and_unmerge_restores_weights():
    model = tiny_llama()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply(model, LoraConfig(r=4, alpha=16, target_modules=LLAMA_TARGETS))
    randomise(handle)
    unmerged = logits(model)
    handle.merge()
    assert handle.merged and all(w.merged for w in handle.wrappers.values())
    torch.testing.assert_close(logits(model), unmerged, rtol=1e-5, atol=1e-5)
    q = model.model.layers[0].self_attn.q_proj
    assert (q.base_layer.weight - original["model.layers.0.self_attn.q_proj.weight"]).abs().max() > 1e-3
    handle.unmerge()
    torch.testing.assert_close(logits(model), unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.base_layer.weight, original["model.layers.0.self_attn.q_proj.weight"],
                               rtol=0, atol=1e-6)


def test_unload_leaves_a_plain_model_with_the_same_logits():
    model = tiny_llama()
    handle = apply(model, LoraConfig(r=4, target_modules=LLAMA_TARGETS + ["embed_tokens"]))
    randomise(handle)
    adapted = logits(model)
    plain = handle.unload()
    assert not any(isinstance(m, LoraLayer) for m in plain.modules())
    assert type(plain.model.layers[0].self_attn.q_proj) is nn.Linear
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(logits(plain), adapted, rtol=1e-5, atol=1e-5)


def test_undo_restores_the_base_model():
    model = tiny_llama()
    base = logits(model)
    handle = apply(model, LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    randomise(handle)
    handle.merge()
    handle.undo()
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    torch.testing.assert_close(logits(model), base, rtol=0, atol=1e-5)


def test_merge_twice_and_unmerge_unmerged_raise_on_handle_and_layer():
    model = mlp()
    handle = apply(model, LoraConfig(r=2, target_modules=["0", "2"]))
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


def test_training_after_merge_would_not_reach_the_factors():
    """A merged layer computes only W x: the docstring's 'train unmerged' (no gradient reaches A or B)."""
    model = mlp()
    handle = apply(model, LoraConfig(r=2, target_modules=["0"]))
    randomise(handle)
    assert model(torch.randn(3, 12)).requires_grad
    handle.merge()
    assert not model(torch.randn(3, 12)).requires_grad, "the merged output no longer depends on A or B"


# ------------------------------------------------------------------------------------------- scaling and dropout


def test_rslora_scale():
    config = LoraConfig(r=16, alpha=8, use_rslora=True, target_modules=["0"])
    assert config.scaling == pytest.approx(8 / math.sqrt(16))
    assert LoraConfig(r=16, alpha=8).scaling == pytest.approx(8 / 16)

    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    plain, rs = LoraLinear(base, 16, 8), LoraLinear(base, 16, 8, use_rslora=True)
    with torch.no_grad():
        plain.lora_B.weight.normal_()
        rs.lora_A.weight.copy_(plain.lora_A.weight)
        rs.lora_B.weight.copy_(plain.lora_B.weight)
    x = torch.randn(3, 8)
    # Same factors: the rsLoRA update is sqrt(r) = 4 times the alpha / r update.
    torch.testing.assert_close(rs(x) - base(x), 4 * (plain(x) - base(x)), rtol=1e-5, atol=1e-6)


def test_dropout_only_in_train_mode_and_only_on_the_lora_path():
    torch.manual_seed(0)
    base = nn.Linear(16, 16)
    layer = LoraLinear(base, r=4, alpha=4, dropout=0.5)
    x = torch.randn(8, 16)
    layer.train()
    assert torch.equal(layer(x), base(x)), "with B = 0 dropout must not touch the frozen path"
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    first, second = layer(x), layer(x)
    assert not torch.allclose(first, second), "train mode: two passes drop different inputs"
    layer.eval()
    expected = base(x) + (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)


def test_gaussian_init():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(256, 64), r=8, alpha=8, init="gaussian")
    assert not layer.lora_B.weight.any()
    assert layer.lora_A.weight.std().item() == pytest.approx(1 / 8, rel=0.1)
    kaiming = LoraLinear(nn.Linear(256, 64), r=8, alpha=8)
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), like nn.Linear
    assert kaiming.lora_A.weight.abs().max() <= bound


def test_half_precision_base_keeps_fp32_factors_and_output_dtype():
    torch.manual_seed(0)
    base = nn.Linear(8, 4).to(torch.bfloat16)
    layer = LoraLinear(base, r=2, alpha=2)
    assert layer.lora_A.weight.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
    layer.merge()
    assert base.weight.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------- embedding and conv


def test_embedding_lora():
    torch.manual_seed(0)
    table = nn.Embedding(20, 6, padding_idx=0)
    layer = LoraEmbedding(table, r=3, alpha=6)
    x = torch.tensor([[0, 5, 19], [3, 3, 7]])
    assert torch.equal(layer(x), table(x)), "A = 0 at init: the base table exactly"
    assert layer.lora_embedding_B.abs().sum() > 0
    with torch.no_grad():
        layer.lora_embedding_A.normal_()
    A, B = layer.lora_embedding_A, layer.lora_embedding_B  # (r, V), (d, r)
    expected = table.weight[x] + (6 / 3) * (B @ A[:, x].reshape(3, -1)).T.reshape(2, 3, 6)
    torch.testing.assert_close(layer(x), expected)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)


def test_embedding_lora_on_tiny_llama_trains_and_merges():
    model = tiny_llama()
    base = logits(model)
    handle = apply(model, LoraConfig(r=4, target_modules=["embed_tokens"]))
    assert isinstance(model.model.embed_tokens, LoraEmbedding)
    assert torch.equal(logits(model), base)
    weighted_sum(model(input_ids=ids()).logits).backward()
    assert model.model.embed_tokens.lora_embedding_A.grad.abs().sum() > 0  # B random, so A learns first here
    randomise(handle)
    adapted = logits(model)
    handle.merge()
    torch.testing.assert_close(logits(model), adapted, rtol=1e-5, atol=1e-5)


def test_conv2d_lora():
    net = cnn()
    x = torch.randn(2, 3, 12, 12)
    base = net(x)
    handle = apply(net, LoraConfig(r=2, alpha=4, target_modules=["0", "2"]))
    assert all(isinstance(net[i], LoraConv2d) for i in (0, 2))
    assert torch.equal(net(x), base)
    randomise(handle)
    adapted = net(x)
    # Hand oracle for the dilated layer: one convolution with kernel W0 + (alpha / r) sum_j B[:, j] A[j].
    conv, inner = net[2], torch.relu(net[0](x))
    kernel = conv.base_layer.weight + 2 * torch.einsum("oj,jihw->oihw", conv.lora_B.weight[:, :, 0, 0],
                                                       conv.lora_A.weight)
    expected = F.conv2d(inner, kernel, conv.base_layer.bias, stride=2, dilation=2)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    handle.merge()
    torch.testing.assert_close(net(x), adapted, rtol=1e-5, atol=1e-5)
    handle.unmerge()
    torch.testing.assert_close(net(x), adapted, rtol=1e-5, atol=1e-5)


def test_grouped_conv_is_refused_and_model_unchanged():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="grouped convolution"):
        apply(net, LoraConfig(r=2, target_modules=["0"]))
    assert type(net[0]) is nn.Conv2d and net[0].weight.requires_grad


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("r", [0, -1, 2.5, True])
def test_bad_rank_raises(r):
    with pytest.raises(ValueError, match="r must be a positive integer"):
        LoraConfig(r=r, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="r must be a positive integer"):
        LoraLinear(nn.Linear(4, 4), r=r, alpha=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=0), "alpha"), (dict(alpha=-2), "alpha"), (dict(dropout=1.0), "dropout"),
    (dict(init="xavier"), "init"), (dict(bias="all"), "unfreeze"), (dict(target_modules=[]), "target_modules"),
    (dict(target_modules=["q_proj", 3]), "target_modules"), (dict(use_rslora="yes"), "use_rslora"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


def test_unknown_target_suggests_a_close_name_and_changes_nothing():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"q_prj.*did you mean 'q_proj'"):
        apply(model, LoraConfig(r=4, target_modules=["q_prj", "v_proj"]))
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_no_default_targets_for_a_plain_module():
    with pytest.raises(ValueError, match="target_modules"):
        apply(mlp(), LoraConfig(r=2))


def test_wrapping_twice_raises():
    model = mlp()
    apply(model, LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match="already wrapped"):
        apply(model, LoraConfig(r=2, target_modules=["0"]))


def test_exclude_and_regex_targets():
    model = tiny_llama()
    handle = apply(model, LoraConfig(r=2, target_modules=r".*layers\.\d+\.self_attn\.[qkvo]_proj",
                                     exclude=["k_proj", "o_proj"]))
    assert sorted(handle.wrappers) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj"))


# ------------------------------------------------------------------------------------------- save / load


def test_state_dict_save_load_round_trip(tmp_path):
    config = LoraConfig(r=4, alpha=8, target_modules=LLAMA_TARGETS + ["embed_tokens"])
    model = tiny_llama()
    handle = apply(model, config)
    randomise(handle)
    expected = logits(model)
    state = handle.state_dict()
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in state
    assert "model.embed_tokens.lora_embedding_B" in state
    assert not any("base_layer" in k for k in state)
    save_weights(state, tmp_path / "lora.safetensors", metadata={"r": 4})
    tensors, metadata = read_weights(tmp_path / "lora.safetensors")
    assert metadata == {"r": 4}

    fresh = tiny_llama()
    fresh_handle = apply(fresh, config)
    assert not torch.equal(logits(fresh), expected)
    fresh_handle.load_state_dict(tensors)
    assert torch.equal(logits(fresh), expected)


def test_loading_rank_4_into_rank_8_raises_and_changes_nothing():
    source = apply(tiny_llama(), LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    randomise(source)
    model = tiny_llama()
    handle = apply(model, LoraConfig(r=8, target_modules=LLAMA_TARGETS))
    before = {k: v.clone() for k, v in handle.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        handle.load_state_dict(source.state_dict())
    assert all(torch.equal(before[k], v) for k, v in handle.state_dict().items())


def test_loading_other_targets_raises():
    source = apply(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    handle = apply(tiny_llama(), LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    with pytest.raises(ValueError, match="missing"):
        handle.load_state_dict(source.state_dict())


# ------------------------------------------------------------------------------------------- peft folder format


def test_export_import_round_trip_without_peft(tmp_path):
    model = tiny_llama()
    handle = apply(model, LoraConfig(r=4, alpha=16, use_rslora=True, target_modules=LLAMA_TARGETS + ["embed_tokens"]))
    randomise(handle)
    expected = logits(model)
    export_peft(handle, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM"
    assert (saved["r"], saved["lora_alpha"], saved["use_rslora"]) == (4, 16, True)
    assert saved["target_modules"] == ["embed_tokens", "q_proj", "v_proj"]
    tensors, _ = read_weights(tmp_path / "adapter_model.safetensors")
    assert set(tensors) == {f"base_model.model.{k}" for k in handle.state_dict()}
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"

    fresh = tiny_llama()
    imported = import_peft(fresh, tmp_path)
    assert sorted(imported.wrappers) == sorted(handle.wrappers)
    assert torch.equal(logits(fresh), expected)


def test_export_from_the_model_itself_and_exact_target_list(tmp_path):
    model = tiny_llama()
    handle = apply(model, LoraConfig(r=2, target_modules=r"model\.layers\.0\.self_attn\.(q|v)_proj"))
    randomise(handle)
    export_peft(model, tmp_path)  # the model, not the handle
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    # 'q_proj' alone would also select layer 1 under peft's suffix rule, so the full paths are written.
    assert saved["target_modules"] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    fresh = tiny_llama()
    assert sorted(import_peft(fresh, tmp_path).wrappers) == saved["target_modules"]
    assert torch.equal(logits(fresh), logits(model))


def test_import_into_the_wrong_model_raises_and_changes_nothing(tmp_path):
    handle = apply(tiny_llama(), LoraConfig(r=4, target_modules=LLAMA_TARGETS))
    export_peft(handle, tmp_path)
    other = tiny_llama(hidden_size=32, heads=2, kv_heads=1)  # same names, other widths
    with pytest.raises(ValueError, match="shape"):
        import_peft(other, tmp_path)
    assert not any(isinstance(m, LoraLayer) for m in other.modules())
    assert all(p.requires_grad for p in other.parameters())

    deeper = tiny_llama(layers=3)  # a third layer the file has no tensors for
    with pytest.raises(ValueError, match="model.layers.2"):
        import_peft(deeper, tmp_path)
    assert not any(isinstance(m, LoraLayer) for m in deeper.modules())


def test_import_refuses_what_it_cannot_reproduce(tmp_path):
    export_peft(apply(tiny_llama(), LoraConfig(r=4, target_modules=LLAMA_TARGETS)), tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "use_dora": True}))
    with pytest.raises(ValueError, match="DoRA"):
        import_peft(tiny_llama(), tmp_path)
    config_path.write_text(json.dumps({**saved, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not LoRA"):
        import_peft(tiny_llama(), tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        import_peft(tiny_llama(), tmp_path)


def test_export_needs_lora_layers(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        export_peft(mlp(), tmp_path)

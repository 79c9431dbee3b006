"""ProPETL (minipeft/peft/propetl.py): a shared prototype with per-layer, per-task top-k masks, on tiny BERT/LLaMA."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minipeft.core import parameter_report, read_weights, save_weights
from minipeft.models import tiny_bert, tiny_llama
from minipeft.peft.propetl import (
    MaskedAdapterLayer,
    MaskedLoraLinear,
    ProPETLConfig,
    TopKMask,
    apply,
    export_masks,
    load_masks,
    optimizer_groups,
    prototypes,
    set_task,
    storage_report,
)

D, LAYERS, VOCAB = 64, 2, 256  # tiny_bert / tiny_llama: width 64, 2 layers; tiny_llama's v_proj is 64 -> 32 (GQA)
MODELS = {"bert": tiny_bert, "llama": tiny_llama}
KINDS = ["adapter", "lora"]


def ids(seed=1, size=(2, 6)):
    return torch.randint(3, VOCAB, size, generator=torch.Generator().manual_seed(seed))


def run(model, tokens=None):
    with torch.no_grad():
        return model(input_ids=ids() if tokens is None else tokens)[0]


def expected_kept(n, k):
    """The documented count, computed independently: round half up, at least one."""
    return max(1, int(k * n + 0.5))


def perturb_prototypes(handle, seed=3, std=0.3):
    """Random prototype weights (the zero up-projection / B would make every comparison trivially pass)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for proto in prototypes(handle):
            for parameter in proto.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def weighted_sum(output, seed=7):
    return (output * torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))).sum()


def config(kind, **kwargs):
    return ProPETLConfig(kind, **kwargs)


# ------------------------------------------------------------------------------------------------------- the mask


@pytest.mark.parametrize("k", [0.01, 0.1, 0.3, 0.5, 0.75, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(7,), (10,), (8, 64), (3, 5, 2)])
def test_topk_mask_keeps_exactly_the_largest_fraction(k, shape):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mask = TopKMask.apply(scores, k)
    assert mask.shape == scores.shape and mask.dtype == scores.dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    kept = int(mask.sum())
    assert kept == expected_kept(scores.numel(), k)
    magnitude = scores.abs()
    if kept < scores.numel():  # every kept |score| is at least every dropped one
        assert magnitude[mask.bool()].min() >= magnitude[~mask.bool()].max()


def test_topk_mask_counts_ties_exactly_and_ranks_by_magnitude():
    equal = torch.full((4, 5), 0.7)
    mask = TopKMask.apply(equal, 0.3)  # 6 of 20, all tied: the first 6 flat positions
    assert int(mask.sum()) == 6
    assert mask.flatten().tolist() == [1.0] * 6 + [0.0] * 14

    signed = torch.tensor([-3.0, 1.0, 3.0, -1.0, 2.0, 0.5])  # |-3| ties with |3|; negatives rank by magnitude
    assert TopKMask.apply(signed, 0.5).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert TopKMask.apply(signed, 1 / 6).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # tie -> lower index


def test_straight_through_gradient_equals_the_gradient_wrt_the_mask():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 5, generator=generator, requires_grad=True)
    weight, x = torch.randn(6, 5, generator=generator), torch.randn(3, 5, generator=generator)
    mask = TopKMask.apply(scores, 0.4)
    mask.retain_grad()
    loss = torch.tanh(x @ (weight * mask).T).square().sum()  # any non-trivial function of the mask
    loss.backward()
    assert mask.grad.abs().sum() > 0
    torch.testing.assert_close(scores.grad, mask.grad, rtol=0, atol=0)

    # The same thing against autograd on a mask-valued leaf.
    leaf = mask.detach().clone().requires_grad_(True)
    (grad_leaf,) = torch.autograd.grad(torch.tanh(x @ (weight * leaf).T).square().sum(), leaf)
    torch.testing.assert_close(scores.grad, grad_leaf)


# ----------------------------------------------------------------------------------- the layers, by hand oracles


def _adapter_oracle(module_out, proto, masks, scaling):
    """A standard adapter (plain nn.Linear layers) whose weights are W ⊙ M — built and run independently."""
    down = nn.Linear(proto.down.in_features, proto.down.out_features)
    up = nn.Linear(proto.up.in_features, proto.up.out_features)
    with torch.no_grad():
        down.weight.copy_(proto.down.weight * masks["down"])
        down.bias.copy_(proto.down.bias)
        up.weight.copy_(proto.up.weight * masks["up"])
        up.bias.copy_(proto.up.bias)
    return module_out + scaling * up(F.relu(down(module_out)))


def _lora_oracle(module_in, module_out, proto, masks, scaling):
    A = proto.lora_A.weight * masks["lora_A"]  # (r, k)
    B = proto.lora_B.weight * masks["lora_B"]  # (d, r)
    return module_out + scaling * module_in @ A.T @ B.T


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("kind", KINDS)
def test_masked_prototype_equals_a_standard_module_with_masked_weights(arch, kind):
    """Every layer's output equals the base model with an ordinary adapter/LoRA of weights W ⊙ M_l added by hooks."""
    model = MODELS[arch]()
    reference = copy.deepcopy(model)
    handle = apply(model, config(kind, keep_fraction=0.4, scaling=2.0, alpha=16.0))
    perturb_prototypes(handle)

    hooks = []
    for name, wrapper in handle.wrappers.items():
        with torch.no_grad():
            masks = {k: m.clone() for k, m in wrapper.masks().items()}
        proto = wrapper.prototype
        if kind == "adapter":
            hook = lambda mod, inp, out, p=proto, m=masks: _adapter_oracle(out, p, m, 2.0)  # noqa: E731
        else:
            hook = lambda mod, inp, out, p=proto, m=masks: _lora_oracle(inp[0], out, p, m, 16.0 / 8)  # noqa: E731
        hooks.append(reference.get_submodule(name).register_forward_hook(hook))
    torch.testing.assert_close(run(model), run(reference), rtol=1e-5, atol=1e-5)
    assert (run(model) - run(MODELS[arch]())).abs().max() > 1e-3  # the masked update is not nothing
    for hook in hooks:
        hook.remove()


def test_single_adapter_layer_by_hand():
    model = tiny_bert()
    handle = apply(model, config("adapter", keep_fraction=0.25))
    perturb_prototypes(handle)
    wrapper = model.encoder.layer[1].output.dense
    assert isinstance(wrapper, MaskedAdapterLayer)
    x = torch.randn(2, 3, 128)
    masks = {k: m.detach() for k, m in wrapper.masks().items()}
    y = wrapper.base_layer(x)
    p = wrapper.prototype
    # h + f(h (W_down ⊙ M_down) + b_down) (W_up ⊙ M_up) + b_up, in row-vector form with nn.Linear's transposes
    z = F.relu(y @ (p.down.weight * masks["down"]).T + p.down.bias)
    expected = y + z @ (p.up.weight * masks["up"]).T + p.up.bias
    torch.testing.assert_close(wrapper(x), expected)
    assert int(masks["down"].sum()) == expected_kept(p.down.weight.numel(), 0.25)


# ------------------------------------------------------------------------------------ the defining invariants


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_init(arch, kind):
    model = MODELS[arch]()
    base = run(model)
    handle = apply(model, config(kind, tasks=["a", "b"]))
    assert torch.equal(run(model), base), "a zero up-projection / zero B is the base model under any mask"
    set_task(handle, "b")
    assert torch.equal(run(model), base)
    perturb_prototypes(handle)
    assert (run(model) - base).abs().max() > 1e-3


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("kind", KINDS)
def test_the_prototype_is_one_shared_object_counted_once(arch, kind):
    model = MODELS[arch]()
    handle = apply(model, config(kind))
    wrappers = list(handle.wrappers.values())
    first = wrappers[0]
    for wrapper in wrappers:
        if wrapper.prototype.masked == first.prototype.masked and wrapper.base_layer.weight.shape == \
                first.base_layer.weight.shape:
            for name in first.prototype.masked:  # the very same Parameter object, not a copy
                assert getattr(wrapper.prototype, name).weight is getattr(first.prototype, name).weight
    # Registered once: its parameters have one name in the model (and in the handle's state dict).
    names = [n for n, _ in model.named_parameters() if ".prototype." in n]
    assert len(names) == sum(len(list(p.parameters())) for p in prototypes(handle))
    assert sum(1 for w in wrappers if w.owns_prototype) == len(prototypes(handle))

    # A step on the prototype changes every layer that shares it.
    with torch.no_grad():
        getattr(first.prototype, first.prototype.masked[-1]).weight.add_(1.0)
    for wrapper in wrappers:
        if wrapper.prototype is first.prototype:
            assert getattr(wrapper.prototype, first.prototype.masked[-1]).weight.abs().min() > 0


def test_parameter_count_closed_form_adapter_bert():
    rf, tasks = 8, ["a", "b", "c"]
    model = tiny_bert()
    handle = apply(model, config("adapter", reduction_factor=rf, tasks=tasks))
    m = D // rf
    prototype = 2 * D * m + m + D  # one adapter: W_down, b_down, W_up, b_up
    scores = len(tasks) * LAYERS * 2 * D * m  # one score per masked weight entry, per layer and task
    assert len(handle) == LAYERS and len(prototypes(handle)) == 1
    assert parameter_report(model).trainable == prototype + scores
    assert sum(t.numel() for t in handle.state_dict().values()) == prototype + scores


@pytest.mark.parametrize("share, n_prototypes", [("shape", 2), ("name", 2)])
def test_parameter_count_closed_form_lora_llama(share, n_prototypes):
    r = 4
    model = tiny_llama()
    handle = apply(model, config("lora", r=r, share=share))
    q, v = (64, 64), (64, 32)  # (in, out) of q_proj and of v_proj (2 kv heads x 16)
    prototype = r * (q[0] + q[1]) + r * (v[0] + v[1])  # q and v differ in shape: one prototype each
    scores = LAYERS * (r * (q[0] + q[1]) + r * (v[0] + v[1]))
    assert len(prototypes(handle)) == n_prototypes
    assert parameter_report(model).trainable == prototype + scores


@pytest.mark.parametrize("share, n_prototypes", [("shape", 1), ("name", 2)])
def test_share_by_name_keeps_query_and_value_apart(share, n_prototypes):
    r = 4
    model = tiny_bert()
    handle = apply(model, config("lora", r=r, share=share))  # query and value: both 64 x 64
    assert len(prototypes(handle)) == n_prototypes
    assert parameter_report(model).trainable == n_prototypes * r * 2 * D + 2 * LAYERS * r * 2 * D


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_only_the_prototype_and_the_active_scores(arch, kind):
    model = MODELS[arch]()
    # gelu: with a random negative bias every ReLU unit of a 4-wide bottleneck can be dead on tiny BERT's small outputs
    handle = apply(model, config(kind, tasks=["a", "b"], non_linearity="gelu"))
    perturb_prototypes(handle)
    set_task(handle, "b")
    weighted_sum(model(input_ids=ids())[0]).backward()
    for name, parameter in model.named_parameters():
        is_method = ".prototype." in name or "_scores.b" in name
        if is_method:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name  # the frozen base and the inactive task's scores
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in handle.state_dict()}


def test_masks_get_no_gradient_while_the_up_projection_is_zero():
    # dL/dM = dL/dW_eff ⊙ W: with W_up = 0 at init, the up-mask and everything before it see zero gradient.
    model = tiny_bert()
    handle = apply(model, config("adapter"))
    weighted_sum(model(input_ids=ids())[0]).backward()
    for wrapper in handle.wrappers.values():
        assert wrapper.scores("up").grad.abs().sum() == 0
        assert wrapper.scores("down").grad.abs().sum() == 0
    assert prototypes(handle)[0].up.weight.grad.abs().sum() > 0  # the up-projection moves first


# ------------------------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("kind", KINDS)
def test_per_task_masks_differ_and_switching_task_changes_outputs(kind):
    model = tiny_llama()
    handle = apply(model, config(kind, tasks=["sst2", "mnli"], non_linearity="gelu"))  # no dead ReLU units
    perturb_prototypes(handle)
    masks = export_masks(handle)
    for name, wrapper in handle.wrappers.items():
        for weight in wrapper.prototype.masked:
            assert not torch.equal(masks[f"{name}.{weight}_mask.sst2"], masks[f"{name}.{weight}_mask.mnli"])
    first = run(model)
    set_task(handle, "mnli")
    assert all(w.active_task == "mnli" for w in handle.wrappers.values())
    second = run(model)
    assert (first - second).abs().max() > 1e-4
    set_task(handle, "sst2")
    assert torch.equal(run(model), first)
    with pytest.raises(ValueError, match="unknown task 'qnli'"):
        set_task(handle, "qnli")


def test_layers_have_different_masks_over_the_same_prototype():
    model = tiny_bert()
    handle = apply(model, config("adapter"))
    a, b = handle.wrappers.values()
    assert a.prototype is b.prototype
    assert not torch.equal(a.masks()["down"], b.masks()["down"])


# ----------------------------------------------------------------------------------------------------- storage


@pytest.mark.parametrize("tasks", [["default"], ["a", "b", "c"]])
def test_storage_report_closed_form(tasks):
    rf, k = 4, 0.3
    model = tiny_bert()
    handle = apply(model, config("adapter", reduction_factor=rf, keep_fraction=k, tasks=tasks))
    m, T = D // rf, len(tasks)
    prototype = 2 * D * m + m + D
    bits = T * LAYERS * 2 * D * m
    report = storage_report(handle)
    assert (report.prototype_floats, report.mask_bits, report.layers, report.tasks) == (prototype, bits, LAYERS, T)
    assert report.total_bytes == 4 * prototype + math.ceil(bits / 8)
    assert report.unshared_bytes == 4 * T * LAYERS * prototype
    assert report.ratio == pytest.approx((4 * prototype + bits / 8) / (4 * T * LAYERS * prototype))
    assert report.trainable_floats == parameter_report(model).trainable
    masks = export_masks(handle)  # what is stored: exactly mask_bits booleans
    assert all(mask.dtype == torch.bool for mask in masks.values())
    assert sum(mask.numel() for mask in masks.values()) == report.mask_bits
    assert "ratio" in str(report)


def test_storage_of_the_reference_roberta_example_is_about_eleven_percent():
    # Twelve 768 -> 768 layers on the meta device (no memory): a Pfeiffer adapter, reduction factor 12, m = 64.
    layers = nn.ModuleList([nn.Linear(768, 768, device="meta") for _ in range(12)])
    handle = apply(layers, config("adapter", reduction_factor=12, target_modules=r"\d+"))
    report = storage_report(handle)
    assert report.prototype_floats == 99_136
    assert report.mask_bits == 1_179_648
    assert report.total_bytes == 544_000
    assert report.unshared_bytes == 12 * 99_136 * 4
    assert report.ratio == pytest.approx(0.1143, abs=5e-4)


def test_exported_masks_keep_the_fraction_and_reload_exactly():
    model = tiny_llama()
    handle = apply(model, config("lora", keep_fraction=0.1, tasks=["a", "b"]))
    perturb_prototypes(handle)
    masks = export_masks(handle)
    for key, mask in masks.items():
        assert int(mask.sum()) == expected_kept(mask.numel(), 0.1), key
    expected = run(model)

    # The stored form (prototypes + boolean masks) rebuilds the same model.
    stored_prototype = {k: v for k, v in handle.state_dict().items() if ".prototype." in k}
    fresh = tiny_llama()
    torch.manual_seed(123)  # different random scores than the original
    fresh_handle = apply(fresh, config("lora", keep_fraction=0.1, tasks=["a", "b"]))
    fresh_handle.load_state_dict({**fresh_handle.state_dict(), **stored_prototype})
    assert (run(fresh) - expected).abs().max() > 1e-4  # different masks so far
    load_masks(fresh_handle, masks)
    torch.testing.assert_close(run(fresh), expected, rtol=0, atol=0)
    assert all(torch.equal(masks[k], v) for k, v in export_masks(fresh_handle).items())

    bad = dict(masks)
    key = next(iter(bad))
    bad[key] = torch.ones_like(bad[key])  # keeps everything: not this keep_fraction
    with pytest.raises(ValueError, match="keeps"):
        load_masks(fresh_handle, bad)


# ------------------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize("arch", list(MODELS))
def test_lora_prototype_merge_equals_unmerged_output(arch):
    model = MODELS[arch]()
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply(model, config("lora", keep_fraction=0.3, tasks=["a", "b"]))
    perturb_prototypes(handle)
    set_task(handle, "b")
    unmerged = run(model)
    wrapper = next(iter(handle.wrappers.values()))
    assert isinstance(wrapper, MaskedLoraLinear)
    masks = {k: m.detach() for k, m in wrapper.masks().items()}
    delta = wrapper.scaling * (wrapper.prototype.lora_B.weight * masks["lora_B"]) @ (
        wrapper.prototype.lora_A.weight * masks["lora_A"])
    before = wrapper.base_layer.weight.detach().clone()

    handle.merge()
    assert handle.merged
    torch.testing.assert_close(wrapper.base_layer.weight, before + delta)  # W += s (B ⊙ M_B)(A ⊙ M_A)
    torch.testing.assert_close(run(model), unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already merged"):
        handle.merge()
    with pytest.raises(ValueError, match="unmerge"):
        set_task(handle, "a")

    handle.unmerge()
    torch.testing.assert_close(run(model), unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not merged"):
        handle.unmerge()

    handle.unload()  # merge + plain layers back: an ordinary model with the same function
    assert not any(isinstance(m, MaskedLoraLinear) for m in model.modules())
    torch.testing.assert_close(run(model), unmerged, rtol=1e-5, atol=1e-5)
    assert {n for n, _ in model.named_parameters()} == set(base_weights)


def test_adapter_prototype_cannot_merge():
    model = tiny_bert()
    handle = apply(model, config("adapter"))
    with pytest.raises(NotImplementedError, match="non-linearity"):
        handle.merge()
    with pytest.raises(NotImplementedError, match="non-linearity"):
        handle.unload()
    assert not handle.merged


# -------------------------------------------------------------------------------------------- save, load, undo


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_through_safetensors(arch, kind, tmp_path):
    model = MODELS[arch]()
    handle = apply(model, config(kind, tasks=["a", "b"]))
    perturb_prototypes(handle)
    set_task(handle, "b")
    expected = run(model)
    path = save_weights(handle.state_dict(), tmp_path / "propetl.safetensors")  # shared tensors saved once
    tensors, _ = read_weights(path)
    assert set(tensors) == set(handle.state_dict())

    fresh = MODELS[arch]()
    fresh_handle = apply(fresh, config(kind, tasks=["a", "b"]))
    fresh_handle.load_state_dict(tensors)
    set_task(fresh_handle, "b")
    torch.testing.assert_close(run(fresh), expected, rtol=0, atol=0)
    # The loaded prototype is still shared: one object per group, in every layer.
    assert len(prototypes(fresh_handle)) == len(prototypes(handle))


def test_loading_into_other_shapes_raises_and_changes_nothing():
    model = tiny_llama()
    handle = apply(model, config("lora", r=8))
    perturb_prototypes(handle)
    state = handle.state_dict()
    other = tiny_llama()
    other_handle = apply(other, config("lora", r=4))
    before = {k: v.clone() for k, v in other_handle.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        other_handle.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in other_handle.state_dict().items())

    tasks_handle = apply(tiny_llama(), config("lora", r=8, tasks=["x"]))
    with pytest.raises(ValueError, match="cannot load"):
        tasks_handle.load_state_dict(state)


@pytest.mark.parametrize("kind", KINDS)
def test_undo_restores_the_model(kind):
    model = tiny_bert()
    base = run(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    handle = apply(model, config(kind))
    perturb_prototypes(handle)
    handle.undo()
    assert not any(hasattr(m, "minipeft_method") for m in model.modules())
    assert torch.equal(run(model), base)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_optimizer_groups_split_prototype_and_scores():
    model = tiny_llama()
    handle = apply(model, config("lora", tasks=["a", "b"]))
    groups = optimizer_groups(handle, lr=1e-4, mask_lr=3e-2)
    assert [g["lr"] for g in groups] == [1e-4, 3e-2]
    ids_in = [{id(p) for p in g["params"]} for g in groups]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids_in[0] | ids_in[1] == trainable and not ids_in[0] & ids_in[1]
    torch.optim.AdamW(groups).step()  # a valid optimiser spec


# ------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs", [
    dict(keep_fraction=0), dict(keep_fraction=0.0), dict(keep_fraction=1.5), dict(keep_fraction=-0.1),
    dict(keep_fraction=True), dict(keep_fraction="0.5"), dict(r=0), dict(reduction_factor=0), dict(alpha=0),
    dict(tasks=[]), dict(tasks=["a", "a"]), dict(tasks=["a.b"]), dict(share="layer"), dict(mask_init="zeros"),
    dict(non_linearity="softmax"), dict(target_modules=[]),
])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        ProPETLConfig(**kwargs)


def test_bad_prototype_and_keep_fraction_messages():
    with pytest.raises(ValueError, match="ProPrefix"):
        ProPETLConfig("prefix")
    with pytest.raises(ValueError, match=r"keep_fraction must be in \(0, 1\]"):
        ProPETLConfig(keep_fraction=0)


def test_apply_errors():
    with pytest.raises(ValueError, match="did you mean"):
        apply(tiny_llama(), config("lora", target_modules=["q_prj"]))
    model = tiny_llama()
    apply(model, config("lora"))
    with pytest.raises(ValueError, match="already wrapped"):
        apply(model, config("lora"))
    with pytest.raises(ValueError, match="reduction_factor"):
        apply(tiny_bert(), config("adapter", reduction_factor=128))
    with pytest.raises(ValueError, match="there is no default for a Sequential"):
        apply(nn.Sequential(nn.Linear(4, 4)), config("adapter"))
    with pytest.raises(TypeError, match="ProPETLConfig"):
        apply(tiny_bert(), object())

"""MEFT (minipeft/peft/meft.py) on tiny BERT: reversibility, gradients, starting point, activation memory, handle.

Measured on this machine (fp32 unless said), quoted in the assertions' comments and in the module docstring:
* one layer rebuilt from its output: max error a few 1e-6 (MEFT1/2), ~2e-5 (MEFT3: it divides by lambda and beta);
* the error compounds ~1/lambda per layer down a stack (~1/(lambda*beta) for MEFT3); float64 is exact to ~1e-11;
* starting point, 4 layers, zero adapters: the PLM stream is off by 0.11 (relative) at the paper's factors;
* saved activations, 4 layers, batch 4 x 32, train(): MEFT 2.4% of full fine-tuning, plain PEFT 70-91%.
"""

import pytest
import torch

from minipeft.core import parameter_report, read_weights, save_weights
from minipeft.core.memory import count_saved_tensors
from minipeft.models import tiny_bert
from minipeft.peft.meft import (
    AdapterBlock,
    AttentionBlock,
    FeedForwardBlock,
    LayerBlock,
    MEFTAdapter,
    MEFTConfig,
    ReversibleEncoder,
    ReversibleLayer,
    apply,
)

D, VOCAB = 64, 256  # tiny_bert: width 64, vocabulary 256
VARIANTS = [1, 2, 3]
MODES = ["eval", "train"]  # train: tiny_bert's hidden and attention dropout (0.1) and the adapters' dropout are on
# One layer rebuilt from its output in fp32: MEFT3 divides by lambda *and* beta (0.1 each), so 10x looser.
RECONSTRUCTION_TOLERANCE = {1: 1e-5, 2: 1e-5, 3: 1e-4}
# Reversible vs plain gradients, 2 layers, fp32, relative error per tensor. Measured maxima: 6e-7, 4e-6, 2e-5.
GRADIENT_TOLERANCE = {1: 1e-5, 2: 2e-5, 3: 1e-4}


def ids(seed=1, size=(2, 8)):
    return torch.randint(3, VOCAB, size, generator=torch.Generator().manual_seed(seed))


def padding_mask(size=(2, 8)):
    mask = torch.ones(size)
    mask[1, -3:] = 0  # the second sequence is 3 tokens shorter: the attention mask reaches every layer
    return mask


def loss_weights(shape, seed=7):
    """A random linear read-out: unlike output.square().mean(), it is not flat after BERT's final LayerNorm."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def adapter_size(d, m):
    return 2 * d * m + m + d  # W_down, b_down, W_up, b_up


def meft_model(variant, layers=2, mode="eval", dtype=torch.float32, **config):
    """tiny_bert with MEFT and the paper's init (both projections N(0, 0.02^2)): adapters small but not zero."""
    model = tiny_bert(layers=layers).to(dtype)
    config.setdefault("zero_init_up", False)
    handle = apply(model, MEFTConfig(variant=variant, **config))
    getattr(model, mode)()
    return model, handle


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def gradients(model, reversible, tokens=None, mask=None, seed=11):
    """Output and d(loss)/d(input embeddings, adapters), the encoder run reversibly or with plain autograd."""
    tokens = ids() if tokens is None else tokens
    model.encoder.reversible = reversible
    embeddings = model.embeddings.word_embeddings(tokens).detach().requires_grad_()
    torch.manual_seed(seed)  # the same dropout masks in both runs
    out = model(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
    loss = (out * loss_weights(out.shape).to(out.dtype)).sum()
    grads = torch.autograd.grad(loss, [embeddings] + [p for _, p in trainable(model)])
    return out.detach(), grads


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def stack_forward(model, tokens):
    """Run the reversible layers one by one: every layer's input and the RNG states each call recorded."""
    encoder = model.encoder
    with torch.no_grad():
        h0 = model.embeddings(tokens)
        x = torch.cat([h0, h0], dim=-1)  # (B, T, 2d)
        inputs, states = [x], []
        for layer in encoder.layers:
            recorded = []
            x = layer(x, None, rng_states=recorded)
            inputs.append(x)
            states.append(recorded)
    return inputs, states


# ------------------------------------------------------------------------------------------- the blocks F and G


def test_blocks_without_adapters_compute_the_pretrained_sublayers():
    model = tiny_bert()
    layer = model.encoder.layer[0]
    zero = MEFTAdapter(D, 8, torch.nn.GELU(), 0.0, 0.02, zero_init_up=True)
    x = torch.randn(2, 5, D)
    attention = AttentionBlock(layer.attention)
    feed_forward = FeedForwardBlock(layer.intermediate, layer.output, zero)
    with torch.no_grad():
        torch.testing.assert_close(attention(x), layer.attention(x)[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(feed_forward(x), layer.feed_forward_chunk(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(LayerBlock(attention, feed_forward)(x), layer(x), rtol=0, atol=1e-6)
        assert torch.equal(AdapterBlock(zero)(x), torch.zeros_like(x))
    # The pretrained sublayers are called, not registered: the blocks' own parameters are the adapter's only.
    assert sum(p.numel() for p in LayerBlock(attention, feed_forward).parameters()) == adapter_size(D, 8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_layer_computes_the_coupling_of_its_variant(variant):
    model, _ = meft_model(variant)
    kinds = {1: (LayerBlock, AdapterBlock, 0.1, 1.0, True), 2: (AdapterBlock, LayerBlock, 1.0, 0.1, True),
             3: (AttentionBlock, FeedForwardBlock, 0.1, 0.1, False)}[variant]
    layer = model.encoder.layers[1]
    assert isinstance(layer, ReversibleLayer)
    assert (type(layer.F), type(layer.G), layer.lambda_, layer.beta, layer.swap) == kinds
    x = torch.randn(2, 5, 2 * D)
    x1, x2 = x[..., :D], x[..., D:]
    with torch.no_grad():
        y1 = layer.lambda_ * x1 + layer.F(x2)  # y1 = lambda x1 + F(x2)
        y2 = layer.beta * x2 + layer.G(y1)  # y2 = beta x2 + G(y1)
        expected = torch.cat([y2, y1] if layer.swap else [y1, y2], dim=-1)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_variant_names_and_default_factors():
    assert MEFTConfig("MEFT3").variant == MEFTConfig("meft3").variant == MEFTConfig(3).variant == 3
    assert (MEFTConfig(1).lambda_, MEFTConfig(1).beta) == (0.1, 1.0)
    assert (MEFTConfig(2).lambda_, MEFTConfig(2).beta) == (1.0, 0.1)
    assert (MEFTConfig(3).lambda_, MEFTConfig(3).beta) == (0.1, 0.1)
    assert MEFTConfig(1, lambda_=0.5).lambda_ == 0.5


# ------------------------------------------------------------------------------------------- reconstruction


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_layer_input_is_reconstructed_from_its_output(variant, mode):
    model, _ = meft_model(variant, layers=2, mode=mode)
    inputs, states = stack_forward(model, ids())
    for i, layer in enumerate(model.encoder.layers):
        rebuilt = layer.inverse(inputs[i + 1], None, states[i])
        error = (rebuilt - inputs[i]).abs().max().item()
        assert error < RECONSTRUCTION_TOLERANCE[variant], (i, error)
        if mode == "train":
            # Without the recorded RNG state the dropout masks differ and the "inverse" is wrong.
            wrong = (layer.inverse(inputs[i + 1]) - inputs[i]).abs().max().item()
            assert wrong > 1e-2, wrong


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_stack_reconstruction_is_exact(variant):
    model, _ = meft_model(variant, layers=4, mode="train", dtype=torch.float64)
    inputs, states = stack_forward(model, ids())
    y = inputs[-1]
    for i in reversed(range(4)):
        y = model.encoder.layers[i].inverse(y, None, states[i])
    # Still the 1/lambda (MEFT3: 1/(lambda*beta)) amplification, but from float64 rounding: measured ~1e-12 and ~3e-8.
    assert (y - inputs[0]).abs().max().item() < (1e-6 if variant == 3 else 1e-10)


def test_fp32_reconstruction_error_grows_by_about_one_over_lambda_per_layer():
    # The numerical caveat: an error in a layer's output is divided by lambda = 0.1 in its input, which is the
    # output the next layer down is rebuilt from. Measured: ~3e-6 at the top, ~3e-3 at the bottom of 4 layers.
    def stack_errors(**config):
        model, _ = meft_model(1, layers=4, mode="train", **config)
        inputs, states = stack_forward(model, ids())
        y, errors = inputs[-1], []
        for i in reversed(range(4)):
            y = model.encoder.layers[i].inverse(y, None, states[i])
            errors.append((y - inputs[i]).abs().max().item())
        return errors  # top layer first

    errors = stack_errors()
    assert errors[0] < 1e-5 and errors[-1] > 100 * errors[0], errors
    assert max(stack_errors(lambda_=1.0)) < 1e-5  # nothing divides by 0.1: no amplification


# ------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_reversible_gradients_equal_plain_autograd(variant, mode):
    # fp32, 2 layers, a padding mask; in train() the dropout masks are replayed from the recorded RNG states.
    # Measured: per-tensor relative errors up to 6e-7 / 4e-6 / 2e-5 (MEFT1/2/3; MEFT3 divides by lambda and beta).
    model, _ = meft_model(variant, layers=2, mode=mode)
    mask = padding_mask()
    out, reversible = gradients(model, True, mask=mask)
    plain_out, plain = gradients(model, False, mask=mask)
    assert torch.equal(out, plain_out)  # the same layers and masks: the forward passes agree bit for bit
    names = ["inputs_embeds"] + [n for n, _ in trainable(model)]
    for name, a, b in zip(names, reversible, plain):
        assert b.norm() > 0, name
        assert relative_error(a, b) < GRADIENT_TOLERANCE[variant], (name, relative_error(a, b))


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_gradients_are_exact_on_a_deeper_stack(variant):
    model, _ = meft_model(variant, layers=4, mode="train", dtype=torch.float64)
    _, reversible = gradients(model, True, mask=padding_mask())
    _, plain = gradients(model, False, mask=padding_mask())
    # Measured: 7e-14 / 6e-13 / 4e-10 (MEFT1/2/3), against 1e-5-ish in fp32 with half the depth.
    assert max(relative_error(a, b) for a, b in zip(reversible, plain)) < 1e-8


def test_partly_reversible_stack_gives_the_same_gradients():
    model, _ = meft_model(1, layers=3, mode="train", num_reversible_layers=1)
    _, partial = gradients(model, True)
    _, plain = gradients(model, False)
    assert max(relative_error(a, b) for a, b in zip(partial, plain)) < 2e-5


def test_without_rng_replay_dropout_breaks_the_gradients():
    model, _ = meft_model(1, layers=2, mode="train", preserve_rng_state=False)
    _, reversible = gradients(model, True)
    _, plain = gradients(model, False)
    assert max(relative_error(a, b) for a, b in zip(reversible, plain)) > 1e-2
    model.eval()  # no dropout, nothing random to replay: correct again
    _, reversible = gradients(model, True)
    _, plain = gradients(model, False)
    assert max(relative_error(a, b) for a, b in zip(reversible, plain)) < 2e-5


def test_only_the_adapters_train_and_all_of_them_get_gradients():
    model, handle = meft_model(2, layers=2, mode="train", adapter_dim=4)
    names = {n for n, _ in trainable(model)}
    assert names and all(".adapter." in n for n in names)
    assert parameter_report(model).trainable == 2 * 2 * adapter_size(D, 4)  # 2 layers x 2 adapters
    out = model(input_ids=ids(), attention_mask=padding_mask()).last_hidden_state
    (out * loss_weights(out.shape)).sum().backward()  # the ordinary path: .grad accumulates through the Function
    for name, parameter in model.named_parameters():
        if name in names:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_train_and_eval_and_no_grad_give_the_same_type_and_values():
    model, _ = meft_model(3, layers=2, mode="eval")
    with torch.no_grad():
        inference = model(input_ids=ids()).last_hidden_state  # no autograd: the layers run plainly
    recorded = model(input_ids=ids()).last_hidden_state  # through ReversibleFunction
    assert recorded.requires_grad and torch.equal(inference, recorded.detach())
    model.train()
    assert model(input_ids=ids()).last_hidden_state.shape == inference.shape == (2, 8, D)


# ------------------------------------------------------------------------------------------- the starting point


@pytest.mark.parametrize("variant", VARIANTS)
def test_starting_point_is_close_to_the_base_model_up_to_the_leak(variant):
    # Zero up-projections: every adapter is exactly 0, so the only departure from the PLM is the lambda/beta leak.
    # Measured (4 layers, relative error of the PLM stream): 0.11 at the paper's factors, 0.010 at a tenth of them,
    # ~1e-7 per 1e-6 of leak. No variant is exact at the paper's factors; all are in the (non-invertible) limit.
    tokens = ids()
    base_model = tiny_bert(layers=4)
    with torch.no_grad():
        base = base_model(input_ids=tokens).last_hidden_state

    def error(scale):
        factors = {1: {"lambda_": 0.1 * scale}, 2: {"beta": 0.1 * scale},
                   3: {"lambda_": 0.1 * scale, "beta": 0.1 * scale}}[variant]
        model, _ = meft_model(variant, layers=4, zero_init_up=True, output="pretrained_stream", **factors)
        with torch.no_grad():
            return relative_error(model(input_ids=tokens).last_hidden_state, base)

    paper, tenth, tiny = error(1.0), error(0.1), error(1e-5)
    assert 1e-3 < paper < 0.15, paper
    assert tenth < paper / 5, (paper, tenth)
    assert tiny < 1e-4, tiny


@pytest.mark.parametrize("variant", VARIANTS)
def test_mean_output_averages_the_pretrained_state_with_another_one(variant):
    # The paper's output (x1 + x2) / 2 with zero adapters and a vanishing leak: (h_{N-1} + h_N) / 2 for MEFT1/2,
    # (A_N(h_{N-1}) + h_N) / 2 for MEFT3 (A_N: the last layer's attention block). It does not tend to h_N.
    tokens = ids()
    base_model = tiny_bert(layers=3)
    with torch.no_grad():
        hidden = base_model(input_ids=tokens, output_hidden_states=True).hidden_states
        other = hidden[-2] if variant != 3 else AttentionBlock(base_model.encoder.layer[-1].attention)(hidden[-2])
    factors = {1: {"lambda_": 1e-6}, 2: {"beta": 1e-6}, 3: {"lambda_": 1e-6, "beta": 1e-6}}[variant]
    model, _ = meft_model(variant, layers=3, zero_init_up=True, **factors)
    with torch.no_grad():
        out = model(input_ids=tokens).last_hidden_state
    torch.testing.assert_close(out, (other + hidden[-1]) / 2, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------- activation memory


def saved_bytes(model, tokens):
    return count_saved_tensors(lambda: model(input_ids=tokens).last_hidden_state, exclude=model)


def test_count_saved_tensors_dedupes_storage_and_skips_parameters():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(8, 4, requires_grad=True)
    # Linear saves x and weight.t() (a view of a parameter: skipped); relu saves its output.
    assert count_saved_tensors(lambda: torch.relu(layer(x))).bytes == 2 * 8 * 4 * 4
    # x * x saves x twice: one storage, counted once.
    counted = count_saved_tensors(lambda: x * x)
    assert (counted.bytes, counted.count) == (8 * 4 * 4, 1)
    assert count_saved_tensors(lambda: x * 2).bytes == 0  # nothing to save for a constant factor


@pytest.mark.parametrize("variant", VARIANTS)
def test_saved_activations_are_far_below_full_fine_tuning(variant):
    # 4 layers, batch 4 x 32 tokens, train(). Measured ratios to full fine-tuning: MEFT 0.024 (all variants);
    # the same layers with plain autograd 0.70 / 0.91 / 0.74 (MEFT1/2/3).
    tokens = ids(size=(4, 32))
    full = tiny_bert(layers=4).train()
    full_bytes = saved_bytes(full, tokens).bytes
    model, _ = meft_model(variant, layers=4, mode="train")
    meft = saved_bytes(model, tokens)
    model.encoder.reversible = False
    plain = saved_bytes(model, tokens)
    print(f"MEFT{variant}: saved activations / full fine-tuning = {meft.bytes / full_bytes:.3f} (reversible), "
          f"{plain.bytes / full_bytes:.3f} (plain PEFT)")
    assert meft.bytes < 0.4 * full_bytes
    assert plain.bytes > 0.5 * full_bytes
    # Exactly one activation is kept: the final (B, T, 2d) fp32 stream.
    assert (meft.bytes, meft.count) == (4 * 32 * 2 * D * 4, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_saved_activations_do_not_grow_with_depth(variant):
    tokens = ids(size=(4, 32))
    reversible, plain = [], []
    for layers in (2, 4, 8):
        model, _ = meft_model(variant, layers=layers, mode="train")
        reversible.append(saved_bytes(model, tokens).bytes)
        model.encoder.reversible = False
        plain.append(saved_bytes(model, tokens).bytes)
    assert reversible[0] == reversible[1] == reversible[2]
    # Plain PEFT stores every layer's activations: the same amount per added layer.
    per_layer = [(plain[1] - plain[0]) / 2, (plain[2] - plain[1]) / 4]
    assert per_layer[0] > 0 and per_layer[0] == per_layer[1]


def test_partly_reversible_stack_saves_activations_only_for_its_plain_layers():
    tokens = ids(size=(4, 32))
    counted = {}
    for k in (0, 2, 4):
        model, _ = meft_model(1, layers=4, mode="train", num_reversible_layers=k)
        counted[k] = saved_bytes(model, tokens).bytes
    assert counted[4] < counted[2] < counted[0]


# ------------------------------------------------------------------------------------------- handle: save, undo, merge


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_save_load_round_trip(variant, tmp_path):
    model, handle = meft_model(variant, adapter_dim=4)
    tokens = ids()
    with torch.no_grad():
        expected = model(input_ids=tokens).last_hidden_state
    state = handle.state_dict()
    assert all(".adapter." in key and "base_layer" not in key for key in state)
    assert sum(t.numel() for t in state.values()) == parameter_report(model).trainable
    save_weights(state, tmp_path / "meft.safetensors", metadata={"variant": variant})

    tensors, metadata = read_weights(tmp_path / "meft.safetensors")
    assert metadata == {"variant": variant}
    fresh, fresh_handle = meft_model(variant, adapter_dim=4, zero_init_up=True)
    with torch.no_grad():
        assert not torch.equal(fresh(input_ids=tokens).last_hidden_state, expected)
    fresh_handle.load_state_dict(tensors)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=tokens).last_hidden_state, expected)


def test_loading_other_shapes_or_variants_raises_and_changes_nothing():
    _, small = meft_model(1, adapter_dim=4)
    state = small.state_dict()
    model, handle = meft_model(1, adapter_dim=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        handle.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    _, other_variant = meft_model(3, adapter_dim=4)  # MEFT3's adapters sit elsewhere
    with pytest.raises(ValueError, match="not part of"):
        other_variant.load_state_dict(state)


@pytest.mark.parametrize("variant", VARIANTS)
def test_undo_restores_the_base_model_exactly(variant):
    model = tiny_bert()
    tokens = ids()
    original_encoder = model.encoder
    names_before = [(n, p.requires_grad) for n, p in model.named_parameters()]
    with torch.no_grad():
        base = model(input_ids=tokens).last_hidden_state
    handle = apply(model, MEFTConfig(variant, zero_init_up=False))
    assert isinstance(model.encoder, ReversibleEncoder) and model.encoder.base_layer is original_encoder
    with torch.no_grad():
        assert not torch.equal(model(input_ids=tokens).last_hidden_state, base)
    handle.undo()
    assert model.encoder is original_encoder
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == names_before
    with torch.no_grad():
        assert torch.equal(model(input_ids=tokens).last_hidden_state, base)
    apply(model, MEFTConfig(variant))  # the model can be adapted again


def test_merge_and_unload_raise_not_implemented_and_change_nothing():
    model, handle = meft_model(1)
    tokens = ids()
    with torch.no_grad():
        before = model(input_ids=tokens).last_hidden_state
    with pytest.raises(NotImplementedError, match="meft cannot be merged"):
        handle.merge()
    with pytest.raises(NotImplementedError, match="meft cannot be merged"):
        handle.unload()
    assert not handle.merged and isinstance(model.encoder, ReversibleEncoder)
    with torch.no_grad():
        assert torch.equal(model(input_ids=tokens).last_hidden_state, before)


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variant": 4},
        {"variant": "MEFT0"},
        {"variant": True},
        {"adapter_dim": 0},
        {"adapter_dim": 2.5},
        {"lambda_": 0.0},
        {"beta": -0.1},
        {"beta": float("inf")},
        {"init_std": 0},
        {"adapter_dropout": 1.0},
        {"num_reversible_layers": -1},
        {"output": "last"},
        {"reversible": "yes"},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        MEFTConfig(**kwargs)


def test_apply_errors():
    with pytest.raises(ValueError, match="BERT encoder"):
        apply(torch.nn.Sequential(torch.nn.Linear(4, 4)), MEFTConfig())
    model = tiny_bert()
    with pytest.raises(ValueError, match="num_reversible_layers=3"):
        apply(model, MEFTConfig(num_reversible_layers=3))  # tiny_bert has 2 layers
    assert all(p.requires_grad for p in model.parameters())  # the failed call changed nothing
    apply(model, MEFTConfig())
    with pytest.raises(ValueError, match="already wrapped"):
        apply(model, MEFTConfig())

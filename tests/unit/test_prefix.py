"""Prefix tuning, prompt tuning and P-tuning (minipeft/peft/prefix.py) on tiny LLaMA and BERT models."""

import pytest
import torch
import torch.nn.functional as F

from minipeft.core import parameter_report, read_weights, save_weights
from minipeft.models import tiny_bert, tiny_llama
from minipeft.peft.prefix import PrefixTuningConfig, PromptTuningConfig, PTuningConfig, apply

P = 4  # virtual tokens
# tiny_llama: d=64, 2 layers, 4 query heads, 2 key/value heads, head_dim 16, vocab 256
D, LAYERS, KV_HEADS, HEAD_DIM, VOCAB = 64, 2, 2, 16, 256
KV_DIM = KV_HEADS * HEAD_DIM


def lstm_count(d, h, layers):
    """A bidirectional nn.LSTM: per direction and layer 4h x input + 4h x h weights and two 4h biases."""
    total = 0
    for layer in range(layers):
        width = d if layer == 0 else 2 * h
        total += 2 * (4 * h * width + 4 * h * h + 2 * 4 * h)
    return total


CASES = {
    "prefix": (PrefixTuningConfig(P), 2 * LAYERS * KV_HEADS * P * HEAD_DIM),
    "prefix_projection": (
        PrefixTuningConfig(P, prefix_projection=True, embedding_size=16, encoder_hidden_size=24),
        P * 16 + (16 * 24 + 24) + (24 * LAYERS * 2 * KV_DIM + LAYERS * 2 * KV_DIM),
    ),
    "prompt": (PromptTuningConfig(P), P * D),
    "p_tuning_mlp": (PTuningConfig(P, encoder_hidden_size=24), P * D + (D * 24 + 24) + (24 * 24 + 24) + (24 * D + D)),
    "p_tuning_lstm": (
        PTuningConfig(P, encoder="lstm", encoder_hidden_size=12),
        P * D + lstm_count(D, 12, 2) + (24 * 24 + 24) + (24 * D + D),
    ),
}
NAMES = list(CASES)


def config_of(name):
    import copy

    return copy.deepcopy(CASES[name][0])


def batch(seed=1, size=(2, 6)):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, size, generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in the second row
    return ids, mask


def perturb(handle, seed=3):
    """Random (not initial) prompt weights, so a test cannot pass by accident at the initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in handle.module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def word_tokenizer():
    """A tiny offline word-level tokenizer that puts a BOS token first (as LLaMA's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "classify": 3, "the": 4, "intent": 5, "please": 6}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


# ---------------------------------------------------------------------------------------------- counts and gradients


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_closed_form(name):
    config, expected = CASES[name]
    model = tiny_llama()
    total_before = sum(p.numel() for p in model.parameters())
    handle = apply(model, config_of(name))
    report = parameter_report(model)
    assert report.trainable == expected
    assert sum(t.numel() for t in handle.state_dict().values()) == expected
    assert report.total == total_before + expected


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_only_the_prompt_parameters(name):
    model = tiny_llama()
    handle = apply(model, config_of(name))
    ids, mask = batch()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    prompt_ids = {id(p) for p in handle.module.parameters()}
    for parameter_name, parameter in model.named_parameters():
        if id(parameter) in prompt_ids:
            assert parameter.requires_grad and parameter.grad is not None, parameter_name
            assert parameter.grad.abs().sum() > 0, parameter_name
        else:
            assert not parameter.requires_grad and parameter.grad is None, parameter_name


@pytest.mark.parametrize("name", NAMES)
def test_a_few_steps_lower_the_loss(name):
    model = tiny_llama()
    handle = apply(model, config_of(name))
    ids, mask = batch()
    optimizer = torch.optim.Adam(handle.module.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------- defining invariants


def test_prompt_of_token_embeddings_equals_prepending_those_tokens():
    """Prompt tuning with P_e = embeddings of tokens t is the base model run on [t; x] (Lester et al.'s setup)."""
    base = tiny_llama()
    reference_model = tiny_llama()
    handle = apply(base, PromptTuningConfig(P))
    tokens = torch.tensor([5, 9, 11, 200])
    with torch.no_grad():
        handle.module.prompt_embeddings.copy_(base.get_input_embeddings().weight[tokens])
    ids, _ = batch()
    ours = base(input_ids=ids).logits
    prepended = torch.cat([tokens.expand(ids.shape[0], -1), ids], dim=1)
    torch.testing.assert_close(ours, reference_model(input_ids=prepended).logits, rtol=1e-5, atol=1e-5)


def test_prefix_of_cached_activations_equals_prepending_those_tokens():
    """A prefix whose keys/values are the cache of real tokens t is the base model on [t; x] (Li & Liang's "init
    from real words" — and a check of the RoPE position offset P)."""
    model = tiny_llama()
    reference_model = tiny_llama()
    tokens = torch.tensor([[5, 9, 11, 200]])
    cache = reference_model(input_ids=tokens, use_cache=True).past_key_values
    handle = apply(model, PrefixTuningConfig(P))
    with torch.no_grad():
        for layer in range(LAYERS):
            handle.module.prefix_keys[layer].copy_(cache.layers[layer].keys[0])  # (H_kv, P, hd)
            handle.module.prefix_values[layer].copy_(cache.layers[layer].values[0])
    ids, _ = batch()
    ours = model(input_ids=ids).logits
    prepended = torch.cat([tokens.expand(ids.shape[0], -1), ids], dim=1)
    expected = reference_model(input_ids=prepended).logits[:, P:]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_projection_output_is_used_as_the_prefix():
    """With prefix_projection, the keys/values are MLP(P'), laid out (layers, 2, kv_heads, head_dim) per token."""
    model = tiny_llama()
    handle = apply(model, config_of("prefix_projection"))
    keys, values = handle.module()
    flat = handle.module.mlp(handle.module.embedding)  # (P, L*2*kv)
    layer, head = 1, 0
    start = (layer * 2 + 1) * KV_DIM + head * HEAD_DIM  # layer 1, value, head 0
    torch.testing.assert_close(values[layer, head], flat[:, start:start + HEAD_DIM])
    assert keys.shape == values.shape == (LAYERS, KV_HEADS, P, HEAD_DIM)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_strip_virtual_tokens(name):
    model = tiny_llama()
    handle = apply(model, config_of(name))
    ids, mask = batch()
    logits = model(input_ids=ids, attention_mask=mask).logits
    extra = 0 if name.startswith("prefix") else P
    assert logits.shape == (2, ids.shape[1] + extra, VOCAB)
    assert handle.strip_virtual_tokens(logits).shape == (2, ids.shape[1], VOCAB)


@pytest.mark.parametrize("name", NAMES)
def test_the_method_changes_the_output(name):
    model = tiny_llama()
    ids, mask = batch()
    base_logits = model(input_ids=ids, attention_mask=mask).logits
    handle = apply(model, config_of(name))
    ours = handle.strip_virtual_tokens(model(input_ids=ids, attention_mask=mask).logits)
    assert (ours - base_logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["prompt", "p_tuning_mlp"])
def test_labels_get_ignored_virtual_positions(name):
    """The loss is cross-entropy on the real tokens only; the first one is predicted from the last virtual token."""
    model = tiny_llama()
    apply(model, config_of(name))
    ids, _ = batch()
    out = model(input_ids=ids, labels=ids)
    predicted = out.logits[:, P - 1:-1]  # position P-1 (last virtual) predicts the first real token
    expected = F.cross_entropy(predicted.reshape(-1, VOCAB), ids.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_positional_and_keyword_calls_agree():
    model = tiny_llama()
    apply(model, config_of("prompt"))
    ids, mask = batch()
    torch.testing.assert_close(model(ids, mask).logits, model(input_ids=ids, attention_mask=mask).logits)


def test_explicit_position_ids_are_shifted_like_the_default():
    """position_ids given for the real tokens (0..T-1) give the same result as letting the model number them."""
    for name in ("prefix", "prompt"):
        model = tiny_llama()
        apply(model, config_of(name))
        ids, _ = batch()
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        torch.testing.assert_close(model(input_ids=ids, position_ids=positions).logits, model(input_ids=ids).logits)


def test_continuing_from_a_cache_does_not_prepend_again():
    """Run x[:, :-1] with a cache, then the last token alone: its logits equal the last position of one full call."""
    for name in ("prefix", "prompt", "p_tuning_lstm"):
        model = tiny_llama()
        apply(model, config_of(name))
        ids, mask = batch()
        full = model(input_ids=ids, attention_mask=mask).logits[:, -1]
        first = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], attention_mask=mask, past_key_values=first.past_key_values).logits
        assert step.shape == (2, 1, VOCAB)
        torch.testing.assert_close(step[:, -1], full, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("name", NAMES)
def test_generate_is_deterministic_and_cache_consistent(name):
    model = tiny_llama()
    handle = apply(model, config_of(name))
    perturb(handle)
    ids, mask = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    first = model.generate(**kwargs)
    assert first.shape == (2, ids.shape[1] + 5)
    assert torch.equal(first[:, : ids.shape[1]], ids)
    assert torch.equal(first, model.generate(**kwargs))
    # Without a cache every step re-runs the whole sequence (and re-adds the prompt): same tokens.
    assert torch.equal(first, model.generate(**kwargs, use_cache=False))
    # The first new token is the greedy choice of a plain forward call.
    logits = handle.strip_virtual_tokens(model(input_ids=ids, attention_mask=mask).logits)
    assert torch.equal(first[:, ids.shape[1]], logits[:, -1].argmax(-1))


# ---------------------------------------------------------------------------------------------- undo / merge / apply


@pytest.mark.parametrize("name", NAMES)
def test_undo_restores_the_base_model_exactly(name):
    model = tiny_llama()
    model.lm_head.weight.requires_grad_(False)  # a flag that undo must restore, not reset
    ids, mask = batch()
    before = model(input_ids=ids, attention_mask=mask).logits
    before_generate = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    names = [n for n, _ in model.named_parameters()]
    handle = apply(model, config_of(name))
    perturb(handle)
    assert handle.undo() is model
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)
    assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False),
                       before_generate)
    assert [n for n, _ in model.named_parameters()] == names
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not hasattr(model, "minipeft_prompt") and not model._forward_pre_hooks
    with pytest.raises(ValueError, match="undone"):
        handle.undo()
    apply(model, config_of(name))  # and the model can take a method again


def test_merge_and_unmerge_raise_clearly():
    handle = apply(tiny_llama(), config_of("prompt"))
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        handle.merge()
    with pytest.raises(NotImplementedError):
        handle.unmerge()
    assert handle.merged is False


def test_applying_twice_raises():
    model = tiny_llama()
    apply(model, config_of("prompt"))
    with pytest.raises(ValueError, match="already carries"):
        apply(model, config_of("prefix"))


def test_module_follows_train_and_eval_mode():
    model = tiny_llama()  # in eval mode
    handle = apply(model, config_of("p_tuning_lstm"))
    assert not handle.module.training
    model.train()
    assert handle.module.training


# ---------------------------------------------------------------------------------------------- state dict


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_save_load_round_trip(name, tmp_path):
    model = tiny_llama()
    handle = apply(model, config_of(name))
    perturb(handle)
    state = handle.state_dict()
    assert state and all(key.startswith("minipeft_prompt.") for key in state)
    path = save_weights(state, tmp_path / "prompt.safetensors")
    tensors, _ = read_weights(path)
    fresh = tiny_llama()
    fresh_handle = apply(fresh, config_of(name))
    fresh_handle.load_state_dict(tensors)
    ids, mask = batch()
    torch.testing.assert_close(fresh(input_ids=ids, attention_mask=mask).logits,
                               model(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_loading_other_shapes_raises_and_changes_nothing(name):
    import dataclasses

    source = apply(tiny_llama(), config_of(name))
    other = dataclasses.replace(config_of(name), num_virtual_tokens=P + 1)
    target = apply(tiny_llama(), other)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        target.load_state_dict(source.state_dict())
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_loading_unknown_or_missing_names_raises():
    handle = apply(tiny_llama(), config_of("p_tuning_mlp"))
    state = handle.state_dict()
    with pytest.raises(ValueError, match="is not part of"):
        handle.load_state_dict({**state, "minipeft_prompt.extra": torch.zeros(1)})
    state.pop("minipeft_prompt.embedding")
    with pytest.raises(ValueError, match="is missing"):
        handle.load_state_dict(state)


def test_export_prompt_embeddings_shapes():
    assert apply(tiny_llama(), config_of("prefix")).export_prompt_embeddings().shape == (P, LAYERS * 2 * KV_DIM)
    assert apply(tiny_llama(), config_of("p_tuning_lstm")).export_prompt_embeddings().shape == (P, D)


# ---------------------------------------------------------------------------------------------- initialisation


def test_text_init_copies_the_embeddings_of_the_text_tokens():
    tokenizer = word_tokenizer()
    text = "classify the intent"
    token_ids = tokenizer(text)["input_ids"]
    assert token_ids == [1, 3, 4, 5]  # BOS included, as with peft
    for length, expected_ids in [(7, [1, 3, 4, 5, 1, 3, 4]), (2, [1, 3]), (4, [1, 3, 4, 5])]:
        model = tiny_llama()
        handle = apply(model, PromptTuningConfig(length, init="text", init_text=text), tokenizer=tokenizer)
        torch.testing.assert_close(handle.module.prompt_embeddings,
                                   model.get_input_embeddings().weight[expected_ids], rtol=0, atol=0)


def test_text_init_without_tokenizer_raises():
    with pytest.raises(ValueError, match="tokenizer"):
        apply(tiny_llama(), PromptTuningConfig(P, init="text", init_text="classify"))


def text_prefixed_and_reference(length, text="classify the intent"):
    """A tiny LLaMA with a text-initialised prefix of `length` positions, and an untouched copy of the same model."""
    tokenizer = word_tokenizer()
    model, reference_model = tiny_llama(), tiny_llama()
    handle = apply(model, PrefixTuningConfig(length, init="text", init_text=text), tokenizer=tokenizer)
    return model, reference_model, handle


@pytest.mark.parametrize("length, expected_ids", [(7, [1, 3, 4, 5, 1, 3, 4]), (2, [1, 3]), (4, [1, 3, 4, 5])])
def test_prefix_text_init_equals_typing_the_text_in_front(length, expected_ids):
    """Prefix init="text": the prefixed model on x is the base model on [text ids; x] (repeated/cut to P, BOS
    included, like prompt tuning's text init), with padding masks — keys carry RoPE at positions 0..P-1."""
    model, reference_model, _ = text_prefixed_and_reference(length)
    ids, mask = batch()
    ours = model(input_ids=ids, attention_mask=mask).logits
    text = torch.tensor(expected_ids).expand(ids.shape[0], -1)
    full_mask = torch.cat([torch.ones_like(text), mask], dim=1)
    expected = reference_model(input_ids=torch.cat([text, ids], dim=1), attention_mask=full_mask).logits
    real = mask.bool()  # the left-padded positions of row 2 are garbage in both runs
    torch.testing.assert_close(ours[real], expected[:, length:][real], rtol=1e-5, atol=1e-5)
    # The same holds for the first greedy tokens of generate (each step continues from the cache).
    ours_generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    expected_generated = reference_model.generate(input_ids=torch.cat([text, ids], dim=1), attention_mask=full_mask,
                                                  max_new_tokens=3, do_sample=False)
    assert torch.equal(ours_generated[:, ids.shape[1]:], expected_generated[:, length + ids.shape[1]:])


def test_prefix_text_init_is_not_the_random_init_and_not_positionless():
    """Guard against a vacuous pass: the text prefix differs from a random prefix, and it is the *RoPE-rotated*
    cache — prepending the text at other positions (a prefix of the keys before rotation) would give other logits."""
    model, reference_model, handle = text_prefixed_and_reference(P)
    ids, mask = batch()
    ours = model(input_ids=ids, attention_mask=mask).logits
    random_model = tiny_llama()
    apply(random_model, PrefixTuningConfig(P))
    assert (random_model(input_ids=ids, attention_mask=mask).logits - ours).abs().max() > 1e-3
    # Layer 0 sees BOS at positions 0 and 4 of a 7-long prefix (ids [1, 3, 4, 5, 1, 3, 4]) identically, except
    # for RoPE on the keys: equal values, different keys — the cache's positions are really in the prefix.
    _, _, long_handle = text_prefixed_and_reference(7)
    keys, values = long_handle.module.prefix_keys[0], long_handle.module.prefix_values[0]  # (H_kv, 7, hd)
    torch.testing.assert_close(values[:, 0], values[:, 4])
    assert (keys[:, 0] - keys[:, 4]).abs().max() > 1e-3


def test_prefix_text_init_leaves_the_base_model_alone_and_trains():
    tokenizer = word_tokenizer()
    model = tiny_llama()
    model.train()  # the text is run in eval mode, and the caller's mode restored
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply(model, PrefixTuningConfig(P, init="text", init_text="classify the intent"), tokenizer=tokenizer)
    assert model.training and all(m.training for m in model.modules())
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # no base weight changed
    assert all(not after[n].requires_grad for n in before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["minipeft_prompt.prefix_keys", "minipeft_prompt.prefix_values"]
    assert handle.module.prefix_keys.dtype == torch.float32
    ids, mask = batch()
    start = handle.module.prefix_keys.detach().clone()
    optimizer = torch.optim.Adam(handle.module.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        assert handle.module.prefix_keys.grad.abs().sum() > 0 and handle.module.prefix_values.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert not torch.equal(handle.module.prefix_keys, start)
    assert losses[-1] < losses[0]
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_prefix_text_init_errors():
    with pytest.raises(ValueError, match="needs init_text"):
        PrefixTuningConfig(P, init="text")
    with pytest.raises(ValueError, match="only used with init='text'"):
        PrefixTuningConfig(P, init_text="classify")
    with pytest.raises(ValueError, match="only defined without the projection"):
        PrefixTuningConfig(P, prefix_projection=True, init="text", init_text="classify")
    with pytest.raises(ValueError, match="'random' or 'text'.*'vocab'"):
        PrefixTuningConfig(P, init="vocab")  # prompt tuning's third choice has no prefix counterpart
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        apply(tiny_llama(), PrefixTuningConfig(P, init="text", init_text="classify"))
    model = tiny_bert()  # bidirectional: no cache of the text alone exists
    with pytest.raises(ValueError, match="causal model"):
        apply(model, PrefixTuningConfig(P, init="text", init_text="classify"), tokenizer=word_tokenizer())
    assert not hasattr(model, "minipeft_prompt") and not model._forward_pre_hooks
    assert PrefixTuningConfig(P, init="TEXT", init_text="x").init == "text"
    assert PrefixTuningConfig(P).init == "random"


def test_random_and_vocab_inits():
    model = tiny_llama()
    prompt = apply(model, PromptTuningConfig(50)).module.prompt_embeddings
    assert prompt.abs().max() <= 0.5 and prompt.std() > 0.2  # U(-0.5, 0.5) has std 0.29
    model = tiny_llama()
    rows = apply(model, PromptTuningConfig(P, init="vocab")).module.prompt_embeddings
    table = model.get_input_embeddings().weight
    for row in rows:
        assert (table == row).all(dim=1).any()


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "make",
    [
        lambda: PrefixTuningConfig(0),
        lambda: PrefixTuningConfig(2.5),
        lambda: PrefixTuningConfig(P, encoder_hidden_size=8),  # needs prefix_projection=True
        lambda: PrefixTuningConfig(P, prefix_projection=True, embedding_size=-1),
        lambda: PromptTuningConfig(P, init="zeros"),
        lambda: PromptTuningConfig(P, init="text"),
        lambda: PromptTuningConfig(P, init_text="hello"),
        lambda: PTuningConfig(P, encoder="gru"),
        lambda: PTuningConfig(P, encoder_dropout=1.5),
        lambda: PTuningConfig(P, encoder_num_layers=0),
    ],
)
def test_bad_configs_raise(make):
    with pytest.raises(ValueError):
        make()


def test_apply_rejects_other_configs_and_plain_modules():
    with pytest.raises(TypeError):
        apply(tiny_llama(), object())
    with pytest.raises(ValueError, match="transformers model"):
        apply(torch.nn.Linear(3, 3), PromptTuningConfig(P))


def test_upper_case_names_are_accepted():
    assert PTuningConfig(P, encoder="LSTM").encoder == "lstm"
    assert PromptTuningConfig(P, init="TEXT", init_text="x").init == "text"


# ---------------------------------------------------------------------------------------------- BERT


@pytest.mark.parametrize("name", ["prompt", "p_tuning_mlp", "prefix"])
def test_bert_shapes_and_gradients(name):
    model = tiny_bert()
    handle = apply(model, config_of(name))
    ids, mask = batch()
    hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    assert hidden.shape == (2, ids.shape[1] + (0 if name == "prefix" else P), D)
    hidden.pow(2).mean().backward()
    assert all(p.grad is not None for p in handle.module.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("minipeft_prompt."))


def test_bert_prompt_of_token_embeddings_equals_prepending_those_tokens():
    """On BERT the prompt also starts the sequence: positions 0..P-1, token type 0."""
    model, reference_model = tiny_bert(), tiny_bert()
    handle = apply(model, PromptTuningConfig(P))
    tokens = torch.tensor([5, 9, 11, 200])
    with torch.no_grad():
        handle.module.prompt_embeddings.copy_(model.get_input_embeddings().weight[tokens])
    ids, mask = batch()
    ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
    prepended = torch.cat([tokens.expand(2, -1), ids], dim=1)
    full_mask = torch.cat([torch.ones(2, P, dtype=mask.dtype), mask], dim=1)
    expected = reference_model(input_ids=prepended, attention_mask=full_mask).last_hidden_state
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)

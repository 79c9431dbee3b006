"""Prefix tuning, prompt tuning and P-tuning against HF peft: same virtual-token weights -> same outputs.

peft's prompt-learning models are built on tiny random LLaMA (grouped-query attention) and BERT models; their
prompt-encoder weights are copied into minipeft by name mapping, then logits, losses, greedy generations, the
saved ``prompt_embeddings`` tensor and the result of a few SGD steps are compared in fp32.
"""

import copy
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")

from minipeft.models import tiny_bert, tiny_llama  # noqa: E402
from minipeft.peft.prefix import PrefixTuningConfig, PromptTuningConfig, PTuningConfig, apply  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # peft warns about ignored position ids etc.

P = 3
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def peft_and_ours(base, peft_config, our_config, **apply_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.get_peft_model(copy.deepcopy(base), peft_config)
    ours = copy.deepcopy(base)
    handle = apply(ours, our_config, **apply_kwargs)
    return peft_model, ours, handle


def copy_peft_into_ours(peft_model, handle):
    """Map peft's prompt-encoder tensors to minipeft names and load them (through our checked loader)."""
    encoder = peft_model.prompt_encoder["default"]
    theirs = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    state = {}
    if handle.method == "prefix" and not handle.config.prefix_projection:
        # peft: one (P, L*2*kv_heads*head_dim) table, laid out (layer, key/value, head, head_dim) per token.
        module = handle.module
        table = theirs["embedding.weight"].view(P, module.layers, 2, module.kv_heads, module.head_dim)
        table = table.permute(2, 1, 3, 0, 4)  # (2, L, H_kv, P, hd)
        state = {"prefix_keys": table[0], "prefix_values": table[1]}
    else:
        renames = {"embedding.weight": "embedding", "transform.": "mlp.", "mlp_head.": "mlp.", "lstm_head.": "lstm."}
        if handle.method == "prompt":
            renames["embedding.weight"] = "prompt_embeddings"
        for key, value in theirs.items():
            for old, new in renames.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            state[key] = value
    handle.load_state_dict({f"minipeft_prompt.{k}": v for k, v in state.items()})


def llama_batch():
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 256, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding: both libraries number positions 0..T-1 in a plain forward call
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def kv_dim(model):
    return model.config.num_key_value_heads * model.config.head_dim


LLAMA_CASES = {
    "prefix": lambda m: (
        peft.PrefixTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM"),
        PrefixTuningConfig(P),
    ),
    # peft sizes the projection by kv_heads*head_dim under grouped-query attention; we are told the same sizes.
    "prefix_projection": lambda m: (
        peft.PrefixTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM", prefix_projection=True,
                                encoder_hidden_size=20),
        PrefixTuningConfig(P, prefix_projection=True, embedding_size=kv_dim(m), encoder_hidden_size=20),
    ),
    "prompt": lambda m: (
        peft.PromptTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM"),
        PromptTuningConfig(P),
    ),
    "p_tuning_mlp": lambda m: (
        peft.PromptEncoderConfig(num_virtual_tokens=P, task_type="CAUSAL_LM", encoder_hidden_size=20),
        PTuningConfig(P, encoder="mlp", encoder_hidden_size=20),
    ),
    "p_tuning_lstm": lambda m: (
        peft.PromptEncoderConfig(num_virtual_tokens=P, task_type="CAUSAL_LM", encoder_hidden_size=20,
                                 encoder_reparameterization_type="LSTM", encoder_num_layers=2),
        PTuningConfig(P, encoder="lstm", encoder_hidden_size=20, encoder_num_layers=2),
    ),
}


@pytest.fixture(params=list(LLAMA_CASES))
def llama_pair(request):
    base = tiny_llama()
    peft_config, our_config = LLAMA_CASES[request.param](base)
    peft_model, ours, handle = peft_and_ours(base, peft_config, our_config)
    copy_peft_into_ours(peft_model, handle)
    return peft_model, ours, handle


def test_same_trainable_parameter_count(llama_pair):
    peft_model, ours, handle = llama_pair
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == trainable


def test_same_logits_and_loss(llama_pair):
    peft_model, ours, handle = llama_pair
    ids, mask, labels = llama_batch()
    expected = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours(input_ids=ids, attention_mask=mask, labels=labels)
    # Both return P extra leading positions for prompt tuning / P-tuning, none for prefix tuning.
    assert got.logits.shape == expected.logits.shape
    torch.testing.assert_close(got.logits, expected.logits, **TOLERANCE)
    torch.testing.assert_close(got.loss, expected.loss, **TOLERANCE)


def test_same_saved_prompt_embeddings(llama_pair):
    peft_model, ours, handle = llama_pair
    expected = peft_model.get_prompt_embedding_to_save("default")
    torch.testing.assert_close(handle.export_prompt_embeddings(), expected, **TOLERANCE)


def test_same_greedy_generation(llama_pair):
    peft_model, ours, handle = llama_pair
    ids, _, _ = llama_batch()
    mask = torch.ones_like(ids)  # unpadded: with left padding peft drops position ids for prompt methods (see docs)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                  output_scores=True, return_dict_in_generate=True)
    expected = peft_model.generate(**kwargs)
    got = ours.generate(**kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    for ours_step, peft_step in zip(got.scores, expected.scores):
        torch.testing.assert_close(ours_step, peft_step, **TOLERANCE)


def test_same_after_a_few_sgd_steps(llama_pair):
    peft_model, ours, handle = llama_pair
    ids, mask, labels = llama_batch()
    for model in (peft_model, ours):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for _ in range(3):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        expected = peft_model(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_prompt_text_init_matches_peft(tmp_path):
    """peft's TEXT init (tokenizer loaded from a local folder) and ours give the same starting prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "classify": 3, "the": 4, "intent": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(tmp_path)
    text = "classify the intent"
    for length in (2, 7):
        peft_config = peft.PromptTuningConfig(num_virtual_tokens=length, task_type="CAUSAL_LM",
                                              prompt_tuning_init="TEXT", prompt_tuning_init_text=text,
                                              tokenizer_name_or_path=str(tmp_path))
        peft_model, ours, handle = peft_and_ours(
            tiny_llama(), peft_config, PromptTuningConfig(length, init="text", init_text=text), tokenizer=tokenizer
        )
        expected = peft_model.prompt_encoder["default"].embedding.weight
        torch.testing.assert_close(handle.module.prompt_embeddings, expected, rtol=0, atol=0)


BERT_CASES = {
    "prompt": (peft.PromptTuningConfig(num_virtual_tokens=P, task_type="FEATURE_EXTRACTION"), PromptTuningConfig(P)),
    "p_tuning_mlp": (
        peft.PromptEncoderConfig(num_virtual_tokens=P, task_type="FEATURE_EXTRACTION", encoder_hidden_size=20),
        PTuningConfig(P, encoder_hidden_size=20),
    ),
    "prefix": (peft.PrefixTuningConfig(num_virtual_tokens=P, task_type="FEATURE_EXTRACTION"), PrefixTuningConfig(P)),
}


@pytest.mark.parametrize("name", list(BERT_CASES))
def test_bert_same_hidden_states(name):
    peft_config, our_config = BERT_CASES[name]
    base = tiny_bert()
    # BertConfig has no num_key_value_heads: our prefix layout code reads kv_heads = heads.
    peft_model, ours, handle = peft_and_ours(base, copy.deepcopy(peft_config), copy.deepcopy(our_config))
    copy_peft_into_ours(peft_model, handle)
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 256, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    expected = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
    got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOLERANCE)

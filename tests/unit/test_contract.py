"""The method contract, checked for every method at once (HF peft's PeftCommonTester + TEST_CASES pattern).

Each :class:`Case` names a method, the tiny model it runs on, a working config, a config that is invalid, and a
config that is valid but different (another rank, scale, length...). Every test below runs for every case; a new
method joins the contract by adding one entry to ``CASES``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from minipeft.core import CannotMergeError, Handle
from minipeft.models import tiny_bert, tiny_llama
from minipeft.multimodal import llama_adapter_v2, projector, qformer, video_qformer
from minipeft.multimodal.splice import IMAGE_TOKEN_ID
from minipeft.multimodal.video_qformer import AUDIO_TOKEN_ID, VIDEO_TOKEN_ID
from minipeft.peft import adapter, glora, ia3, llama_adapter, lora, meft, prefix, propetl

TOKENS = torch.tensor([[5, 17, 33, 2, 250, 9, 81, 4]])  # (1, 8) token ids of the tiny models' 256-word vocabulary


@dataclass
class Case:
    name: str
    module: Any  # the method's module: module.apply(model, config)
    model: Callable[[], torch.nn.Module]
    config: Callable[[], Any]
    bad_config: Callable[[], Any]  # raises ValueError when built
    other_config: Callable[[], Any]  # valid, but saved files of `config` must not load into it
    changed_field: str  # the field other_config changes (named in the refusal)
    identity_at_init: bool = True
    merges: bool = False
    apply: Callable | None = None  # default: module.apply
    forward: Callable | None = None  # model -> output tensor; default: the tiny model on TOKENS
    connector: bool = False  # Part III: handle.model is a new model around the frozen language model

    def build(self, config=None, seed=0):
        torch.manual_seed(seed)
        model = self.model()
        apply = self.apply or self.module.apply
        handle = apply(model, self.config() if config is None else config)
        return handle.model, handle


def llama_out(model):
    return model(input_ids=TOKENS).logits


def bert_out(model):
    return model(input_ids=TOKENS).last_hidden_state


CASES = [
    Case("lora", lora, tiny_llama, lambda: lora.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
         lambda: lora.LoraConfig(r=0), lambda: lora.LoraConfig(r=4, alpha=16, target_modules=["q_proj", "v_proj"]),
         "alpha", merges=True),
    Case("lora_rslora", lora, tiny_llama, lambda: lora.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
         lambda: lora.LoraConfig(dropout=1.5),
         lambda: lora.LoraConfig(r=4, use_rslora=True, target_modules=["q_proj", "v_proj"]), "use_rslora",
         merges=True),
    Case("ia3", ia3, tiny_llama, lambda: ia3.IA3Config(),
         lambda: ia3.IA3Config(target_modules=[]),
         lambda: ia3.IA3Config(target_modules=["k_proj", "v_proj", "down_proj", "up_proj"]), "target_modules",
         merges=True),
    Case("glora", glora, tiny_llama, lambda: glora.GloraConfig(r=2), lambda: glora.GloraConfig(r=0),
         lambda: glora.GloraConfig(r=3), "r", merges=True),
    Case("propetl_lora", propetl, tiny_llama,
         lambda: propetl.ProPETLConfig(prototype="lora", target_modules=["q_proj", "v_proj"]),
         lambda: propetl.ProPETLConfig(keep_fraction=0.0),
         lambda: propetl.ProPETLConfig(prototype="lora", keep_fraction=0.25, target_modules=["q_proj", "v_proj"]),
         "keep_fraction", merges=True),
    Case("propetl_adapter", propetl, tiny_bert,
         lambda: propetl.ProPETLConfig(prototype="adapter", target_modules=["output.dense"]),
         lambda: propetl.ProPETLConfig(prototype="adapter", reduction_factor=0),
         lambda: propetl.ProPETLConfig(prototype="adapter", reduction_factor=4, target_modules=["output.dense"]),
         "reduction_factor", identity_at_init=False),
    Case("adapter", adapter, tiny_bert, lambda: adapter.AdapterConfig(), lambda: adapter.AdapterConfig(reduction_factor=0),
         lambda: adapter.AdapterConfig(reduction_factor=4), "reduction_factor", identity_at_init=False),
    Case("meft", meft, tiny_bert, lambda: meft.MEFTConfig(), lambda: meft.MEFTConfig(adapter_dim=0),
         lambda: meft.MEFTConfig(adapter_dim=4), "adapter_dim", identity_at_init=False),
    Case("prefix", prefix, tiny_llama, lambda: prefix.PrefixTuningConfig(num_virtual_tokens=3),
         lambda: prefix.PrefixTuningConfig(num_virtual_tokens=0),
         lambda: prefix.PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True), "prefix_projection",
         identity_at_init=False),
    Case("prompt", prefix, tiny_llama, lambda: prefix.PromptTuningConfig(num_virtual_tokens=3),
         lambda: prefix.PromptTuningConfig(num_virtual_tokens=-1), lambda: prefix.PromptTuningConfig(num_virtual_tokens=4),
         "num_virtual_tokens", identity_at_init=False),
    Case("p_tuning", prefix, tiny_llama, lambda: prefix.PTuningConfig(num_virtual_tokens=3),
         lambda: prefix.PTuningConfig(num_virtual_tokens=0), lambda: prefix.PTuningConfig(num_virtual_tokens=3,
                                                                                            encoder="lstm"),
         "encoder", identity_at_init=False),
    Case("llama_adapter", llama_adapter, tiny_llama, lambda: llama_adapter.LlamaAdapterConfig(adapter_len=3),
         lambda: llama_adapter.LlamaAdapterConfig(adapter_len=0),
         lambda: llama_adapter.LlamaAdapterConfig(adapter_len=3, gate="raw"), "gate"),
    Case("llama_adapter_v2", llama_adapter, tiny_llama,
         lambda: llama_adapter.LlamaAdapterV2Config(adapter_len=3, adapter_layers=1, visual_dim=12, visual_len=2),
         lambda: llama_adapter.LlamaAdapterV2Config(fusion="late"),
         lambda: llama_adapter.LlamaAdapterV2Config(adapter_len=3, adapter_layers=1, visual_dim=12, visual_len=2,
                                                    scale_on="input"), "scale_on",
         apply=llama_adapter_v2.apply),
]


def output(case: Case, model) -> torch.Tensor:
    with torch.no_grad():
        result = case.forward(model) if case.forward else bert_out(model) if case.model is tiny_bert else llama_out(model)
    return result[:, -TOKENS.shape[1]:]  # prompt tuning's virtual positions come first


# Part III connectors read image (video, audio) features at placeholder positions of the prompt.
FEATURES = torch.randn(1, 3, 12, generator=torch.Generator().manual_seed(7))  # (B, N, C): 3 patches -> 3 tokens
IMAGE_PROMPT = torch.tensor([[5, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 17, 33, 9, 4]])  # 3 visual tokens
VIDEO = torch.randn(1, 4, 6, 12, generator=torch.Generator().manual_seed(8))  # (B, frames, N, C)
AUDIO = torch.randn(1, 2, 5, 10, generator=torch.Generator().manual_seed(9))  # (B, segments, N, C_audio)
AV_PROMPT = torch.tensor([[5] + [VIDEO_TOKEN_ID] * 3 + [AUDIO_TOKEN_ID] * 2 + [9, 4]])


def vlm_out(model):
    return model(FEATURES, IMAGE_PROMPT).logits


def video_out(model):
    return model(AV_PROMPT, video=VIDEO, audio=AUDIO).logits


def qformer_config(**overrides):
    sizes = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, encoder_width=12, num_queries=3,
                 vocab_size=50, max_text_length=16, cls_token_id=1, dec_token_id=2, embed_dim=8, dropout=0.0)
    return qformer.QFormerConfig(**{**sizes, **overrides})


def video_config(**overrides):
    sizes = dict(feature_width=12, num_queries=3, max_frames=8, llm_width=64, hidden_size=16, num_layers=2,
                 num_heads=2, intermediate_size=32, dropout=0.0)
    return video_qformer.VideoQFormerConfig(**{**sizes, **overrides})


def video_apply(model, config):  # the video branch from `config`, an audio branch of its own
    return video_qformer.apply(model, config, video_config(feature_width=10, num_queries=2))


CASES += [
    Case("projector_linear", projector, tiny_llama,
         lambda: projector.ProjectorConfig("linear", vision_width=12, llm_width=64),
         lambda: projector.ProjectorConfig("conv"),
         lambda: projector.ProjectorConfig("mlp2x_gelu", vision_width=12, llm_width=64), "kind",
         identity_at_init=False, forward=vlm_out, connector=True),
    Case("qformer", qformer, tiny_llama, lambda: qformer_config(), lambda: qformer_config(num_queries=0),
         lambda: qformer_config(temperature=0.05), "temperature", identity_at_init=False, forward=vlm_out,
         connector=True),
    Case("video_llama", video_qformer, tiny_llama, lambda: video_config(), lambda: video_config(max_frames=0),
         lambda: video_config(intermediate_size=48), "intermediate_size", identity_at_init=False,
         forward=video_out, connector=True, apply=video_apply),
]
IDS = [case.name for case in CASES]


def randomise(handle: Handle, seed: int = 1) -> None:
    """Move every method tensor away from its initial value, so no test passes at a zero-update start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in handle.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_identity_at_init_where_promised(case):
    model, handle = case.build()
    reference = output(case, model)
    torch.manual_seed(0)
    if case.identity_at_init:
        reference = output(case, case.model())
        torch.testing.assert_close(output(case, model), reference, rtol=0, atol=1e-6)
    randomise(handle)
    assert not torch.allclose(output(case, model), reference, atol=1e-4), "the method's tensors change nothing"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_only_the_methods_tensors_train(case):
    model, handle = case.build()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(handle.state_dict()) and trainable
    before = base_weights(model)
    randomise(handle)
    model.train()
    with torch.enable_grad():
        result = case.forward(model) if case.forward else bert_out(model) if case.model is tiny_bert else llama_out(model)
        result.float().pow(2).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad <= trainable
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_load_round_trip_through_safetensors(case, tmp_path):
    model, handle = case.build(seed=0)
    randomise(handle)
    expected = output(case, model)
    handle.save(tmp_path / "adapter.safetensors")
    fresh, fresh_handle = case.build(seed=5)  # other initial values
    fresh_handle.load(tmp_path / "adapter.safetensors")
    torch.testing.assert_close(output(case, fresh), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loading_a_file_of_another_configuration_is_refused_naming_both_values(case, tmp_path):
    model, handle = case.build()
    path = handle.save(tmp_path / "adapter.safetensors")
    other_model, other = case.build(config=case.other_config())
    before = {k: v.clone() for k, v in other.state_dict().items()}
    saved_value = handle.config.to_dict()[case.changed_field]
    with pytest.raises(ValueError, match=f"{case.changed_field}={saved_value!r}".replace("[", r"\[").replace("(", r"\(")):
        other.load(path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing half-loaded


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_config_raises_value_error(case):
    with pytest.raises(ValueError):
        case.bad_config()


@pytest.mark.parametrize("case", [c for c in CASES if not c.connector], ids=[c.name for c in CASES if not c.connector])
def test_applying_twice_is_refused_and_changes_nothing(case):
    """(A connector builds a new model around the language model, so a second one is a second model, not a clash.)"""
    model, handle = case.build()
    names_before = [n for n, _ in model.named_modules()]
    apply = case.apply or case.module.apply
    with pytest.raises(ValueError, match="already|undo"):
        apply(model, case.config())
    assert [n for n, _ in model.named_modules()] == names_before


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_equals_unmerged_or_is_refused(case):
    model, handle = case.build()
    randomise(handle)
    expected = output(case, model)
    weights = base_weights(model)
    if not case.merges:
        with pytest.raises(CannotMergeError, match="cannot be merged"):
            handle.merge()
        with pytest.raises(CannotMergeError):
            handle.unload()
        assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
        return
    handle.merge()
    torch.testing.assert_close(output(case, model), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already merged"):
        handle.merge()
    handle.unmerge()
    torch.testing.assert_close(output(case, model), expected, rtol=1e-5, atol=1e-5)
    plain = handle.unload()
    torch.testing.assert_close(output(case, plain), expected, rtol=1e-5, atol=1e-5)
    assert not any(hasattr(m, "minipeft_method") for m in plain.modules())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_partial_merge_then_undo_restores_the_base_model(case):
    torch.manual_seed(0)
    original = case.model()
    reference = output(case, original) if not case.connector else None
    original_weights = base_weights(original)
    model, handle = case.build()
    randomise(handle)
    if case.connector:  # undo gives back the language model inside, untouched, with its requires_grad flags
        language_model = handle.model.language_model
        handle.undo()
        assert not any(name.startswith(("connector", "video_branch", "audio_branch"))
                       for name, _ in handle.model.named_parameters())
        for name, value in base_weights(language_model).items():
            assert torch.equal(value, original_weights[name]), name
        assert all(p.requires_grad for p in language_model.parameters())
        with pytest.raises(ValueError, match="undone"):
            handle.undo()
        return
    mergeable = [w for w in handle.wrappers.values() if getattr(w, "can_merge", False)]
    if mergeable:
        mergeable[0].merge()  # one layer merged through its wrapper, behind the handle's back
    handle.undo()
    assert not any(hasattr(m, "minipeft_method") for m in model.modules())
    restored = base_weights(model)
    assert restored.keys() == original_weights.keys()
    for name, value in original_weights.items():  # exact up to the rounding of W + ΔW - ΔW
        torch.testing.assert_close(restored[name], value, rtol=0, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # tiny models start fully trainable
    torch.testing.assert_close(output(case, model), reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="undone"):
        handle.undo()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_load_state_dict_is_all_or_nothing(case):
    model, handle = case.build()
    state = {k: v.clone() for k, v in handle.state_dict().items()}
    first, last = sorted(state)[0], sorted(state)[-1]
    before = {k: v.clone() for k, v in state.items()}
    for broken in ({**state, last: "not a tensor"}, {**state, last: torch.zeros(3, 1, 7)},
                   {**state, "nonexistent.weight": state[first]}, {k: v for k, v in state.items() if k != last}):
        changed = {k: v + 1 for k, v in broken.items() if isinstance(v, torch.Tensor) and k == first}
        with pytest.raises(ValueError):
            handle.load_state_dict({**broken, **changed})
        assert all(torch.equal(before[k], v) for k, v in handle.state_dict().items())


def test_every_method_is_in_the_registry():
    covered = {case.module.__name__ for case in CASES}
    for module in (adapter, glora, ia3, llama_adapter, lora, meft, prefix, propetl, projector, qformer, video_qformer):
        assert module.__name__ in covered, f"{module.__name__} has no contract case"


def test_saved_files_carry_their_configuration(tmp_path):
    from minipeft.core import read_weights

    _, handle = CASES[0].build()
    _, metadata = read_weights(handle.save(tmp_path / "a.safetensors"))
    assert metadata["method"] == "lora" and metadata["config"] == handle.config.to_dict()
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(ValueError, match="broken.safetensors"):
        handle.load(tmp_path / "broken.safetensors")


def test_a_file_of_another_method_is_refused(tmp_path):
    _, lora_handle = CASES[0].build()
    path = lora_handle.save(tmp_path / "lora.safetensors")
    _, ia3_handle = CASES[2].build()
    with pytest.raises(ValueError, match="holds a 'lora' adapter, but this handle is 'ia3'"):
        ia3_handle.load(path)


def test_config_copies_compare_equal_and_differences_are_listed():
    config = lora.LoraConfig(r=4, target_modules=["q_proj"])
    assert config.differences(dataclasses.replace(config).to_dict()) == []
    assert config.differences(lora.LoraConfig(r=8, target_modules=["q_proj"]).to_dict()) == [("r", 8, 4)]
    assert lora.LoraConfig(dropout=0.1).differences(lora.LoraConfig().to_dict()) == []  # dropout: load_ignores

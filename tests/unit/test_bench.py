"""The performance table (minipeft/bench.py) at a tiny size: JSON structure and the invariants it must show."""

import importlib.util
import json
import time

import pytest
import torch

from minipeft import bench

TINY = dict(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, vocab_size=128, batch_size=2,
            seq_len=32, steps=2, warmup=1, rank=2, virtual_tokens=4)
ROW_KEYS = {"trainable_parameters", "total_parameters", "activation_bytes", "step_ms", "full_step_ms",
            "peft_step_ms", "merged", "inference_ms", "base_inference_ms", "step_vs_full", "activations_vs_full",
            "inference_vs_base", "step_vs_peft", "bf16_step_ms", "bf16_vs_fp32"}


def flags(**overrides):
    settings = {**TINY, **overrides}
    return [item for key, value in settings.items() for item in ("--" + key.replace("_", "-"), str(value))]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    returned = bench.main(flags(out=out))
    return returned, json.loads(out.read_text())


def test_json_structure(results):
    returned, written = results
    assert written == json.loads(json.dumps(returned))  # what main returns is what it wrote
    assert {"config", "device", "hardware", "torch", "methods", "skipped", "notes"} <= set(written)
    assert written["config"]["hidden_size"] == TINY["hidden_size"]
    for name in ("full", "lora", "adapter", "ia3", "prompt", "prefix"):  # the methods minipeft has today
        assert name in written["methods"], written["skipped"].get(name)
    for name, row in written["methods"].items():
        assert set(row) == ROW_KEYS, name
        assert row["step_ms"] > 0 and row["inference_ms"] > 0 and row["base_inference_ms"] > 0, name
        assert row["activation_bytes"] > 0, name
        assert 0 < row["trainable_parameters"] <= row["total_parameters"], name
    assert set(written["methods"]).isdisjoint(written["skipped"])
    assert set(written["methods"]) | set(written["skipped"]) == set(bench.METHODS)
    assert set(written["connectors"]) == set(bench.CONNECTORS)


def test_connector_rows_count_what_the_llm_reads_and_what_trains(results):
    from minipeft.multimodal import qformer as qf
    from minipeft.multimodal import video_qformer as vq

    rows, d = results[1]["connectors"], TINY["hidden_size"]
    image, audio = bench.IMAGE_WIDTH, bench.AUDIO_WIDTH
    assert rows["projector linear"]["visual_tokens"] == bench.GRID_TOKENS  # one token per grid cell
    assert rows["projector linear"]["trainable_parameters"] == image * d + d  # W and b
    assert rows["projector mlp2x_gelu"]["trainable_parameters"] == image * d + d + d * d + d
    blip2 = qf.QFormerConfig(encoder_width=image, with_text=False)
    assert rows["qformer"]["visual_tokens"] == blip2.num_queries  # 32, whatever the grid
    assert rows["qformer"]["trainable_parameters"] == qf.parameter_count(blip2) + blip2.hidden_size * d + d
    video, sound = vq.VideoQFormerConfig(feature_width=image, llm_width=d), \
        vq.VideoQFormerConfig.audio(feature_width=audio, llm_width=d)
    assert rows["video_llama video"]["visual_tokens"] == video.num_queries
    assert rows["video_llama video"]["trainable_parameters"] == vq.parameter_count(video)
    assert rows["video_llama video+audio"]["visual_tokens"] == video.num_queries + sound.num_queries
    assert rows["video_llama video+audio"]["trainable_parameters"] == vq.parameter_count(video) + \
        vq.parameter_count(sound)
    for name, row in rows.items():
        assert row["step_ms"] > 0 and row["activation_bytes"] > 0, name
    assert "qformer" in bench.connector_table(results[1])


def test_unknown_connectors_are_errors_and_none_skips_them(tmp_path):
    with pytest.raises(ValueError, match="unknown connector"):
        bench.run(bench.parse_args(flags(methods="lora", connectors="qformerr", out=tmp_path / "r.json")))
    results = bench.run(bench.parse_args(flags(methods="lora", connectors="none", steps=1, warmup=0,
                                               out=tmp_path / "r.json")))
    assert results["connectors"] == {}


def test_full_fine_tuning_trains_everything_and_merges_nothing(results):
    full = results[1]["methods"]["full"]
    assert full["trainable_parameters"] == full["total_parameters"]
    assert full["merged"] is None  # nothing to merge
    lora = results[1]["methods"]["lora"]
    assert lora["trainable_parameters"] < full["trainable_parameters"] / 10


def test_the_turn_taking_timer_measures_known_durations():
    """median_ms on callables of known length: right values, right order, and the warm-up rounds not counted."""
    calls = {"slow": 0, "fast": 0}

    def sleeper(name, seconds):
        def run():
            calls[name] += 1
            time.sleep(seconds * (5 if calls[name] == 1 else 1))  # the first (warm-up) call is 5x slower
        return run

    config = bench.BenchConfig(steps=5, warmup=1)
    times = bench.median_ms({"slow": sleeper("slow", 0.03), "fast": sleeper("fast", 0.01)}, config,
                            torch.device("cpu"))
    assert calls == {"slow": 6, "fast": 6}
    assert 28 <= times["slow"] < 45 and 9 <= times["fast"] < 25, times


def test_bf16_autocast_step_really_runs_in_bf16():
    """The bench's bf16 column times a step whose matmuls run in bf16 (not a second fp32 step)."""
    seen = []
    model = torch.nn.Linear(4, 4)
    hook = model.register_forward_hook(lambda module, args, output: seen.append(output.dtype))

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, labels=None, use_cache=False):
            out = self.inner(input_ids.float())
            return type("Output", (), {"loss": out.float().pow(2).mean()})()

    batch = torch.ones(2, 4, dtype=torch.long)
    bench.train_step(Wrapper(), batch)()
    bench.train_step(Wrapper(), batch, torch.bfloat16)()
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]


def test_lora_trainable_count_is_the_closed_form(results):
    # r (d_in + d_out) per wrapped layer; q_proj is d -> d, v_proj is d -> kv_heads * head_dim, in every layer.
    d, r = TINY["hidden_size"], TINY["rank"]
    kv_width = TINY["kv_heads"] * d // TINY["heads"]
    expected = TINY["layers"] * (r * (d + d) + r * (d + kv_width))
    assert results[1]["methods"]["lora"]["trainable_parameters"] == expected


def test_mergeable_methods_are_timed_merged_and_the_others_say_so(results):
    methods = results[1]["methods"]
    assert methods["lora"]["merged"] is True and methods["ia3"]["merged"] is True
    for name in ("adapter", "prompt", "prefix"):  # non-linear or not a weight: timed unmerged, flagged
        assert methods[name]["merged"] is False, name


def test_peft_methods_save_no_more_activations_than_full_fine_tuning(results):
    methods = results[1]["methods"]
    full = methods["full"]["activation_bytes"]
    for name, row in methods.items():
        if name == "glora":
            # GLoRA (re-parameterised form) builds W' = W0 + W0*A + B in every forward, and autograd saves W' for
            # the input gradient: on top of the layer inputs full fine-tuning saves, one weight-sized copy per
            # layer. The table shows it above 1.0, and that is a finding, not a bug in the counter.
            continue
        # Prompt tuning runs P more positions, so with P large against T it can exceed full fine-tuning (SmolLM2,
        # P=16, T=32: 1.05x); at this test's P=4, T=32 it stays below, as it does at the bench's defaults.
        assert row["activation_bytes"] <= full, name


def test_peft_column(results):
    methods, notes = results[1]["methods"], results[1]["notes"]
    if importlib.util.find_spec("peft") is None:
        assert all(row["step_vs_peft"] is None for row in methods.values())
        assert any("not installed" in note for note in notes)
        return
    for name in bench.PEFT_EQUIVALENTS:
        assert methods[name]["step_vs_peft"] > 0, name
    assert methods["adapter"]["step_vs_peft"] is None and methods["full"]["step_vs_peft"] is None


def test_a_method_whose_module_is_missing_is_skipped(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(bench.METHODS, "ghost", ("no_such_method", lambda m, model, c: m.apply(model)))
    results = bench.main(flags(methods="ghost", steps=1, warmup=0, out=tmp_path / "r.json"))
    assert "ghost" in results["skipped"] and "no_such_method" in results["skipped"]["ghost"]
    assert list(results["methods"]) == ["full"]  # the baseline always runs
    assert "skipping ghost" in capsys.readouterr().out


def test_unknown_method_and_model_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        bench.run(bench.parse_args(flags(methods="lorra", out=tmp_path / "r.json")))
    with pytest.raises(ValueError, match="--model"):
        bench.run(bench.parse_args(flags(model="gpt5", out=tmp_path / "r.json")))

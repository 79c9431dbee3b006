"""The performance table: what each PEFT method costs, measured on one model and one batch in one run.

``python -m minipeft.bench`` (or ``make bench``) applies every method to a fresh copy of the same model and
measures, on the same batch of token ids (the batch is its own language-modelling target):

* **trainable parameters** — what the optimiser updates and stores two Adam moments for;
* **train-step time** — zero_grad + forward + backward + AdamW step, the median of ``--steps`` steps after
  ``--warmup`` unmeasured ones, and its ratio to full fine-tuning (a fully fine-tuned copy, timed in turns);
* **saved activations** — the bytes of the distinct tensors autograd saves for backward during one forward pass
  (``minipeft.core.memory.count_saved_tensors``; parameters are not counted, so the number is the same on CPU and
  GPU), and the ratio to full fine-tuning. Freezing a weight means its layer no longer saves its input, but the
  gradient must still flow through every layer below the first trainable parameter;
* **inference latency** — a forward pass without gradients after ``merge()`` (the update folded into the base
  weights), relative to the untouched base model, the two timed in turns. The merged wrappers stay in place, so
  each costs one extra Python call (``unload()`` would remove even that). Methods that cannot merge (adapters,
  prompts) are timed unmerged and flagged; prompt methods also run ``P`` more positions (prompt tuning) or attend
  to ``P`` more keys (prefix tuning, whose cache is rebuilt on every call);
* **ours vs HF peft** — for the methods peft has (LoRA, (IA)³, prompt and prefix tuning), our train-step time over
  peft's, with the same configuration, on the same model and batch, the two timed in turns. peft is a test-only
  dependency: without it the column is empty and a note says why.

**Connectors** (Part III; ``--connectors``, on by default) get a table of their own, since they feed the frozen
model features instead of changing it: LLaVA's linear and MLP projectors (49 grid tokens in), BLIP-2's Q-Former
(32 queries), and Video-LLaMA's video branch (8 frames) and video + audio branches, each on the same language model
and text batch, with random frozen-encoder features of the encoders' real shapes (EfficientNet-Lite0: 1280 wide;
Whisper tiny.en segments: 384 wide). Each row gives the trainable parameters, the **visual tokens the language
model reads** per example, the train-step time (the language model frozen, the gradient still flowing through all
its layers down to the connector) and the saved activations. The text batch is ``--batch-size`` × 32 tokens.

The methods are a registry (``METHODS``): name → the ``minipeft.peft`` module and how to apply it to a fresh model.
An entry whose module does not import, or whose ``apply`` refuses the model with a ``ValueError`` (MEFT, for
instance, needs a BERT encoder), is skipped, and the reason printed and recorded. Each entry uses the
method's defaults except for the shared knobs ``--rank`` and ``--virtual-tokens``.

Timings on a busy machine are noisy. Every ratio compares two things timed in turns, step by step (the method and
full fine-tuning, the method and peft, the merged model and the base model), so a slow stretch slows both sides
alike; the absolute milliseconds still drift, so compare ratios, and within one run (``--threads 1`` steadies a
shared CPU). Parameter counts and activation bytes are exact.
The model is a random-weight ``LlamaForCausalLM`` of a size set by flags (``minipeft.models.tiny_llama``), or the
real SmolLM2-135M with ``--model smollm2``: cost does not depend on what the weights are, only on their shapes.

Chapter: the efficiency chapter is built on this table.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .core.contract import CannotMergeError
from .core.io import atomic_write
from .core.memory import count_saved_tensors
from .core.params import count_parameters, freeze, unfreeze
from .core.scale import amp_dtype, default_device, hardware_summary


@dataclass
class BenchConfig:
    """Everything one run depends on (the CLI flags, with these defaults)."""

    model: str = "tiny"  # "tiny" (random LlamaForCausalLM of the sizes below) or "smollm2" (sizes ignored)
    hidden_size: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 2048
    batch_size: int = 8
    seq_len: int = 128
    steps: int = 20  # timed steps (the median is reported)
    warmup: int = 3  # untimed steps first: allocator, caches and lazy initialisation settle
    rank: int = 8  # LoRA / GLoRA rank
    virtual_tokens: int = 16  # P for prompt and prefix tuning, K for LLaMA-Adapter
    methods: str = "all"  # comma-separated names from METHODS, or "all"
    connectors: str = "all"  # comma-separated names from CONNECTORS, "all", or "none"
    device: str = ""  # "" = the best available (cuda, mps, cpu)
    threads: int = 0  # torch CPU threads; 0 = torch's default (on a busy machine, 1 gives steadier timings)
    seed: int = 0
    out: str = "bench/results.json"


# ------------------------------------------------------------------------------------------------------------------
# The methods: name -> (module in minipeft.peft, how to apply it to a fresh model). Add a method with one line.
# ------------------------------------------------------------------------------------------------------------------
# In each entry ``m`` is the imported module, ``model`` a fresh frozen copy of the benchmark model and ``c`` the
# BenchConfig; the function returns the method's handle (or None). Every method runs with its own defaults except
# the shared knobs: ProPETL with its adapter prototype (so it cannot merge); MEFT needs a BERT encoder, so on the
# LLaMA models here it is skipped with its own explanation.

def full_fine_tuning(_, model, config) -> None:
    """The baseline every ratio divides by: every weight trains, and there is no handle to merge."""
    unfreeze(model)


METHODS = {
    "full": (None, full_fine_tuning),
    "lora": ("lora", lambda m, model, c: m.apply(model, m.LoraConfig(r=c.rank, alpha=c.rank))),
    "adapter": ("adapter", lambda m, model, c: m.apply(model, m.AdapterConfig(placement="houlsby"))),
    "ia3": ("ia3", lambda m, model, c: m.apply(model, m.IA3Config())),
    "prompt": ("prefix", lambda m, model, c: m.apply(model, m.PromptTuningConfig(c.virtual_tokens))),
    "prefix": ("prefix", lambda m, model, c: m.apply(model, m.PrefixTuningConfig(c.virtual_tokens))),
    "glora": ("glora", lambda m, model, c: m.apply(model, m.GloraConfig(r=c.rank))),
    "propetl": ("propetl", lambda m, model, c: m.apply(model)),
    "meft": ("meft", lambda m, model, c: m.apply(model)),
    "llama_adapter": ("llama_adapter", lambda m, model, c: m.apply(model, m.LlamaAdapterConfig(c.virtual_tokens))),
}

# The same configurations in HF peft (for the methods it has), to time its train step beside ours.
PEFT_EQUIVALENTS = {
    "lora": lambda peft, c: peft.LoraConfig(task_type="CAUSAL_LM", r=c.rank, lora_alpha=c.rank,
                                            target_modules=["q_proj", "v_proj"]),
    "ia3": lambda peft, c: peft.IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                                          feedforward_modules=["down_proj"]),
    "prompt": lambda peft, c: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=c.virtual_tokens),
    "prefix": lambda peft, c: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=c.virtual_tokens),
}


# The connectors of Part III: name -> (what the frozen encoder hands over, how to apply the connector). ``llm`` is a
# fresh frozen copy of the benchmark model and ``d`` its width; every entry returns the connector's handle.
GRID_TOKENS, IMAGE_WIDTH, FRAMES, AUDIO_WIDTH, TEXT_TOKENS = 49, 1280, 8, 384, 32


def _projector(kind):
    def make(llm, d):
        from .multimodal import projector

        return projector.apply(llm, projector.ProjectorConfig(kind, IMAGE_WIDTH, d))
    return make


def _qformer(llm, d):
    from .multimodal import qformer

    return qformer.apply(llm, qformer.QFormerConfig(encoder_width=IMAGE_WIDTH, with_text=False))  # BLIP-2's size


def _video_llama(audio: bool):
    def make(llm, d):
        from .multimodal import video_qformer as vq

        video = vq.VideoQFormerConfig(feature_width=IMAGE_WIDTH, llm_width=d)  # Video-LLaMA's sizes, our LM
        return vq.apply(llm, video, vq.VideoQFormerConfig.audio(feature_width=AUDIO_WIDTH, llm_width=d)
                        if audio else None)
    return make


CONNECTORS = {  # name -> (inputs: "image" grid (B, 49, C) or "video" (B, T, C) [+ "audio" (B, T, C_a)], apply)
    "projector linear": ("image", _projector("linear")),
    "projector mlp2x_gelu": ("image", _projector("mlp2x_gelu")),
    "qformer": ("image", _qformer),
    "video_llama video": ("video", _video_llama(audio=False)),
    "video_llama video+audio": ("video+audio", _video_llama(audio=True)),
}


# ------------------------------------------------------------------------------------------------------------------
# Model, batch and the three measurements
# ------------------------------------------------------------------------------------------------------------------


def model_factory(config: BenchConfig, device: torch.device):
    """A function returning a fresh copy of the benchmark model (same weights every call), all weights frozen."""
    if config.model == "smollm2":
        from .models import load_smollm2

        base, _ = load_smollm2()
    elif config.model == "tiny":
        from .models import tiny_llama

        base = tiny_llama(seed=config.seed, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                          layers=config.layers, heads=config.heads, kv_heads=config.kv_heads,
                          intermediate_size=config.intermediate_size)
    else:
        raise ValueError(f"--model must be 'tiny' or 'smollm2', got {config.model!r}.")
    freeze(base.to(device))
    return lambda: copy.deepcopy(base)


def loss_of(model, batch: torch.Tensor) -> torch.Tensor:
    """Next-token loss of the batch on itself (``use_cache=False``: training keeps no key/value cache)."""
    return model(input_ids=batch, labels=batch, use_cache=False).loss


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_ms(runs: dict, config: BenchConfig, device: torch.device) -> dict[str, float]:
    """Median wall time in milliseconds of each named callable in ``runs`` over ``config.steps`` calls.

    The callables take turns (a, b, a, b, ...), so a slow stretch on a busy machine hits every one of them alike and
    their ratio stays fair; ``config.warmup`` untimed rounds come first.
    """
    times = {name: [] for name in runs}
    for i in range(config.warmup + config.steps):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if i >= config.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(record) for name, record in times.items()}


def train_step(model, batch: torch.Tensor, autocast: torch.dtype | None = None):
    """One full training step as a callable: zero_grad, forward, backward, AdamW update of the trainable weights.

    ``autocast``: run the forward under ``torch.autocast`` in this dtype (bf16), as ``TrainConfig(amp=...)`` does.
    """
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    device_type = batch.device.type

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()

    return step


def inference_step(model, batch: torch.Tensor):
    """One forward pass over the batch without gradients (logits for every position) as a callable."""
    model.eval()

    @torch.no_grad()
    def forward():
        model(input_ids=batch, use_cache=False)

    return forward


def activation_bytes(model, batch: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one training forward pass; the model's own weights are not counted."""
    model.train()
    return count_saved_tensors(lambda: loss_of(model, batch), exclude=model).bytes


# ------------------------------------------------------------------------------------------------------------------
# One method, then the whole table
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every method is measured with and against: one batch, the untouched base model, full fine-tuning."""

    config: BenchConfig
    device: torch.device
    batch: torch.Tensor  # (B, T) token ids
    make_model: Callable[[], nn.Module]  # a fresh frozen copy of the model
    base: nn.Module  # the untouched model, for inference times
    full_step: Callable[[], None]  # one training step of a fully fine-tuned copy, for train-step times
    peft: Any  # the imported HF peft package, or None


def measure_method(name: str, model: nn.Module, handle, setup: Setup) -> dict:
    """Measure ``model`` with method ``name`` applied (``handle`` is its handle, ``None`` for full fine-tuning)."""
    config, device, batch = setup.config, setup.device, setup.batch
    row = {
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "total_parameters": count_parameters(model),
        "activation_bytes": activation_bytes(model, batch),
        "peft_step_ms": None,
    }
    # Train-step time, in turns with full fine-tuning and with HF peft's model of the same configuration.
    turns = {"step_ms": train_step(model, batch), "bf16_step_ms": train_step(model, batch, torch.bfloat16)}
    if name != "full":
        turns["full_step_ms"] = setup.full_step
    if setup.peft is not None and name in PEFT_EQUIVALENTS:
        peft_model = setup.peft.get_peft_model(setup.make_model(), PEFT_EQUIVALENTS[name](setup.peft, config))
        turns["peft_step_ms"] = train_step(peft_model, batch)
    row.update(median_ms(turns, config, device))
    row.setdefault("full_step_ms", row["step_ms"])  # the full fine-tuning row is its own baseline

    # Inference after merging, in turns with the base model. Full fine-tuning has nothing to merge (None).
    row["merged"] = None
    if handle is not None:
        try:
            handle.merge()
            row["merged"] = True
        except CannotMergeError:  # adapters, prompts: the update cannot be folded into a weight
            row["merged"] = False
    turns = {"inference_ms": inference_step(model, batch), "base_inference_ms": inference_step(setup.base, batch)}
    row.update(median_ms(turns, config, device))

    row["step_vs_full"] = row["step_ms"] / row["full_step_ms"]
    row["inference_vs_base"] = row["inference_ms"] / row["base_inference_ms"]
    row["step_vs_peft"] = row["step_ms"] / row["peft_step_ms"] if row["peft_step_ms"] else None
    row["bf16_vs_fp32"] = row["bf16_step_ms"] / row["step_ms"]
    return row


def connector_batch(kind: str, handle, llm, config: BenchConfig, device: torch.device) -> dict:
    """Random frozen-encoder features of the real shapes, and a text batch with the connector's placeholders."""
    from .multimodal.video_qformer import AUDIO_TOKEN_ID, VIDEO_TOKEN_ID, VideoLlama

    generator = torch.Generator().manual_seed(config.seed)
    B = config.batch_size
    text = torch.randint(3, llm.config.vocab_size, (B, TEXT_TOKENS), generator=generator)  # (B, 32)
    if isinstance(handle.model, VideoLlama):
        inputs = {"video": torch.randn(B, FRAMES, IMAGE_WIDTH, generator=generator)}  # (B, T, C) pooled frames
        pieces = [torch.full((B, handle.model.video_branch.config.num_queries), VIDEO_TOKEN_ID)]
        if "audio" in kind:
            inputs["audio"] = torch.randn(B, FRAMES, AUDIO_WIDTH, generator=generator)  # (B, M, C_a) segments
            pieces.append(torch.full((B, handle.model.audio_branch.config.num_queries), AUDIO_TOKEN_ID))
    else:
        features = torch.randn(B, GRID_TOKENS, IMAGE_WIDTH, generator=generator)  # (B, 49, 1280)
        inputs = {"image_features": features}
        with torch.no_grad():
            visual = handle.model.connector(features[:1].to(device)).shape[1]  # tokens this connector makes
        pieces = [torch.full((B, visual), handle.model.image_token_id)]
    input_ids = torch.cat(pieces + [text], dim=1)  # (B, K + 32): placeholders, then the text
    labels = torch.cat([torch.full((B, input_ids.shape[1] - TEXT_TOKENS), -100), text], dim=1)  # loss on text only
    batch = {"input_ids": input_ids, "labels": labels, **inputs}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def measure_connector(name: str, config: BenchConfig, make_model, device: torch.device) -> dict:
    """Trainable parameters, visual tokens, train-step time and saved activations of one connector."""
    kind, make = CONNECTORS[name]
    torch.manual_seed(config.seed)
    llm = make_model()
    handle = make(llm, llm.get_input_embeddings().embedding_dim)
    model = handle.model.to(device)
    batch = connector_batch(kind, handle, llm, config, device)
    placeholders = int((batch["input_ids"] < 0).sum(1)[0])

    def loss():
        if "image_features" in batch:
            return model(batch["image_features"], batch["input_ids"], labels=batch["labels"]).loss
        return model(batch["input_ids"], video=batch["video"], audio=batch.get("audio"), labels=batch["labels"]).loss

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    row = {"inputs": kind, "trainable_parameters": handle.num_parameters(), "visual_tokens": placeholders,
           "activation_bytes": count_saved_tensors(loss, exclude=model).bytes}
    row.update(median_ms({"step_ms": step}, config, device))
    return row


def run_connectors(config: BenchConfig, make_model, device: torch.device) -> tuple[dict, dict]:
    """Every chosen connector's row, and the ones skipped with the reason (``--connectors none``: neither)."""
    if config.connectors == "none":
        return {}, {}
    chosen = list(CONNECTORS) if config.connectors == "all" else [c.strip() for c in config.connectors.split(",")]
    unknown = [c for c in chosen if c not in CONNECTORS]
    if unknown:
        raise ValueError(f"unknown connector(s) {unknown}; choose from {', '.join(CONNECTORS)}, 'all' or 'none'.")
    rows, skipped = {}, {}
    for name in chosen:
        try:
            rows[name] = measure_connector(name, config, make_model, device)
        except ImportError as error:
            skipped[name] = f"does not import: {error}"
            print(f"skipping connector {name}: {skipped[name]}")
    return rows, skipped


def connector_table(results: dict) -> str:
    """The connector rows as a fixed-width text table."""
    header = ["connector", "inputs", "trainable", "visual tokens", "step ms", "activ. MiB"]
    lines = [header] + [[name, row["inputs"], f"{row['trainable_parameters']:,}", f"{row['visual_tokens']}",
                         f"{row['step_ms']:.1f}", f"{row['activation_bytes'] / 2**20:.2f}"]
                        for name, row in results.get("connectors", {}).items()]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def run(config: BenchConfig) -> dict:
    """Measure every available method and return the results (what ``main`` prints and writes)."""
    device = torch.device(config.device) if config.device else default_device()
    if config.threads:
        torch.set_num_threads(config.threads)
    chosen = list(METHODS) if config.methods == "all" else [m.strip() for m in config.methods.split(",")]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
    if "full" not in chosen:  # every ratio is relative to full fine-tuning
        chosen.insert(0, "full")

    try:  # a test-only dependency: only the "ours vs peft" column needs it
        import peft
        peft_note = f"HF peft {peft.__version__}"
    except ImportError as error:
        peft, peft_note = None, f"HF peft not installed ({error}); the ours/peft column is empty"

    make_model = model_factory(config, device)
    full_model = make_model()
    full_fine_tuning(None, full_model, config)
    # Random token ids (ids 0-2 are pad / bos / eos in the tiny config), the same in every run.
    generator = torch.Generator().manual_seed(config.seed)
    batch = torch.randint(3, full_model.config.vocab_size, (config.batch_size, config.seq_len), generator=generator)
    batch = batch.to(device)  # (B, T)
    setup = Setup(config, device, batch, make_model, base=make_model(), full_step=train_step(full_model, batch),
                  peft=peft)
    # The first steps in a process pay one-off costs (thread pools, allocator, lazy kernel selection).
    for _ in range(config.warmup):
        setup.full_step()

    rows, skipped = {}, {}
    for name in chosen:
        module_name = METHODS[name][0]
        try:
            module = importlib.import_module(f"minipeft.peft.{module_name}") if module_name else None
        except ImportError as error:
            skipped[name] = f"minipeft.peft.{module_name} does not import: {error}"
            print(f"skipping {name}: {skipped[name]}")
            continue
        torch.manual_seed(config.seed)  # the method's own initialisation is the same in every run
        model = make_model()
        try:
            handle = METHODS[name][1](module, model, config)
        except ValueError as error:  # the method refuses this architecture (e.g. MEFT wants a BERT encoder)
            skipped[name] = f"does not apply to this model: {error}"
            print(f"skipping {name}: {skipped[name]}")
            continue
        rows[name] = measure_method(name, model, handle, setup)
        del model, handle

    for row in rows.values():  # activation bytes are exact, so they need no turns: divide by the full row's
        row["activations_vs_full"] = row["activation_bytes"] / rows["full"]["activation_bytes"]
    connectors, skipped_connectors = run_connectors(config, make_model, device)
    skipped.update({f"connector {name}": reason for name, reason in skipped_connectors.items()})
    return {
        "config": asdict(config),
        "device": str(device),
        "hardware": hardware_summary(),
        "torch": torch.__version__,
        "methods": rows,
        "connectors": connectors,
        "skipped": skipped,
        "notes": [peft_note, f"mixed precision: amp_dtype({device.type}) = {amp_dtype(device)} on this hardware "
                  "(TrainConfig(amp='auto') uses it; the bf16 column is measured either way)"],
    }


def table(results: dict) -> str:
    """The results as a fixed-width text table."""
    header = ["method", "trainable", "%", "step ms", "x full", "bf16 ms", "activ. MiB", "x full", "infer ms",
              "x base", "merged", "ours/peft"]
    lines = [header]
    for name, row in results["methods"].items():
        merged = {True: "yes", False: "NO", None: "-"}[row["merged"]]
        versus_peft = f"{row['step_vs_peft']:.2f}" if row["step_vs_peft"] else "-"
        lines.append([name, f"{row['trainable_parameters']:,}",
                      f"{100 * row['trainable_parameters'] / row['total_parameters']:.3f}",
                      f"{row['step_ms']:.1f}", f"{row['step_vs_full']:.2f}", f"{row['bf16_step_ms']:.1f}",
                      f"{row['activation_bytes'] / 2**20:.2f}", f"{row['activations_vs_full']:.2f}",
                      f"{row['inference_ms']:.1f}", f"{row['inference_vs_base']:.2f}", merged, versus_peft])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def parse_args(argv=None) -> BenchConfig:
    parser = argparse.ArgumentParser(prog="python -m minipeft.bench", description=__doc__.split("\n\n")[0])
    for name, value in asdict(BenchConfig()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value,
                            help=f"(default: {value!r})")
    return BenchConfig(**vars(parser.parse_args(argv)))


def main(argv=None) -> dict:
    config = parse_args(argv)
    results = run(config)
    print(f"{config.model} LlamaForCausalLM, batch {config.batch_size} x {config.seq_len} tokens, "
          f"{results['device']} ({results['hardware']}); median of {config.steps} steps")
    print(table(results))
    if results.get("connectors"):
        print(f"\nconnectors (frozen {config.model} LlamaForCausalLM; {config.batch_size} examples of "
              f"{TEXT_TOKENS} text tokens + the visual tokens)")
        print(connector_table(results))
    for note in results["notes"]:
        print("note:", note)
    atomic_write(config.out, lambda path: Path(path).write_text(json.dumps(results, indent=2) + "\n"))
    print(f"wrote {config.out}")
    return results


if __name__ == "__main__":
    main()

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 9. What PEFT costs: parameters, memory, step time and inference latency
#
# Every chapter of Part II reported how many parameters its method trains. That number decides the size of the
# optimiser state and of the file you ship, but it is only one of four costs a practitioner pays. This chapter
# measures all four for every method in the library, on one model and one batch, in one run:
#
# 1. **trainable parameters** — what AdamW updates (and keeps two moments for);
# 2. **saved activations** — the bytes autograd keeps from the forward pass for the backward pass;
# 3. **train-step time** — zero_grad + forward + backward + AdamW step;
# 4. **inference latency** — a forward pass without gradients, after `merge()` where the method can merge.
#
# **Learning goals.** After this chapter you can (a) run `minipeft.bench` from Python or the command line and read
# its table, (b) say which methods add no inference latency and why, (c) explain why a method that trains 1% of
# the parameters still needs most of full fine-tuning's activation memory, (d) predict when prompt tuning needs
# *more* activation memory than full fine-tuning, and (e) read timings from a shared machine with the right
# amount of suspicion.

# %% tags=["parameters"]
import time
from dataclasses import dataclass

import minipeft

CHAPTER_START, CHAPTER_CPU_START = time.perf_counter(), time.process_time()
SCALE = minipeft.scale()  # "ci" on a CPU (≈30 s), "full" on a GPU; set MINIPEFT_SCALE to choose
SEED = 0


@dataclass
class Sizes:
    model: str  # "tiny" (random LlamaForCausalLM of the sizes below) or "smollm2" (the real 135M model)
    hidden_size: int
    layers: int
    intermediate_size: int
    vocab_size: int
    batch_size: int
    seq_len: int  # T, the tokens per sequence
    steps: int  # timed steps per measurement (the median is reported)
    warmup: int
    threads: int  # torch CPU threads for the bench (1 steadies a shared CPU); 0 = torch's default
    prompt_lengths: tuple  # P values for the prompt-tuning memory sweep
    sweep_seq_len: int  # T for that sweep


SIZES = {
    "ci": Sizes(model="tiny", hidden_size=128, layers=4, intermediate_size=256, vocab_size=512, batch_size=4,
                seq_len=64, steps=15, warmup=3, threads=1, prompt_lengths=(1, 4, 16, 64, 128), sweep_seq_len=32),
    "full": Sizes(model="smollm2", hidden_size=0, layers=0, intermediate_size=0, vocab_size=0, batch_size=8,
                  seq_len=256, steps=20, warmup=3, threads=0, prompt_lengths=(1, 4, 16, 64, 256, 512),
                  sweep_seq_len=64),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 9.1 The idea: four costs, and what each one depends on
#
# Take a network with $N$ weights of which a method trains $N_\text{train}$, a batch of $n_b$ sequences of $T$
# tokens, hidden size $d$ and $L$ layers. Training memory in fp32 with AdamW is roughly
#
# $$
# M_\text{train} \approx \underbrace{4N}_{\text{weights}} + \underbrace{4N_\text{train}}_{\text{gradients}}
# + \underbrace{8N_\text{train}}_{\text{Adam moments}} + \underbrace{M_\text{act}(n_b, T, d, L)}_{\text{saved activations}}
# \tag{9.1}
# $$
#
# bytes ($n_b$ is the batch size; $B$ is kept for LoRA's matrix in (9.3)). PEFT shrinks the middle two terms to
# almost nothing. The last term, the activations $M_\text{act}$, scales with
# $n_b \cdot T \cdot d \cdot L$ and does **not** scale with $N_\text{train}$: a frozen `Linear` layer $y = xW^\top$
# no longer needs to save its input $x$ (that was only needed for $\partial\mathcal{L}/\partial W = \delta^\top x$),
# but as long as some parameter *below* it trains, the gradient must pass through it,
#
# $$
# \frac{\partial \mathcal{L}}{\partial x} = \frac{\partial \mathcal{L}}{\partial y}\, W , \tag{9.2}
# $$
#
# and every non-linearity on the way (softmax, SiLU, RMSNorm) still needs what it saved. So the activation saving
# of a PEFT method is modest, and it depends on *where* its parameters sit, not on how many there are.
#
# Inference latency depends on whether the update can be **merged**. LoRA's update is a matrix of the same shape
# as the weight it adapts, so after training
#
# $$
# W' = W_0 + \tfrac{\alpha}{r} BA \tag{9.3}
# $$
#
# replaces $W_0$ and the model is exactly as fast as before — Hu et al. write that LoRA adds "no additional
# inference latency" {cite}`hu2021lora`. (IA)³'s scaling vectors and GLoRA's support tensors fold into $W'$ the
# same way. Adapters {cite}`houlsby2019adapters` add layers with a non-linearity in between, which no matrix can
# absorb; prompt and prefix tuning {cite}`lester2021prompt,li2021prefix` make the model process $P$ extra
# positions or keys, which is extra work by construction.
#
# ## 9.2 The measuring instruments
#
# The bench lives in `minipeft.bench`; `run(config)` returns the whole table as a dictionary and `table(...)`
# formats it (the command line `python -m minipeft.bench` is a thin wrapper around the two). The methods are a
# registry: one line per method, each with its defaults except the shared knobs rank and virtual tokens.

# %%
from minipeft import bench
from minipeft.book import show_source

print({name: module for name, (module, _) in bench.METHODS.items()})
show_source(bench.measure_method)

# %% [markdown]
# Activation bytes come from autograd itself: `count_saved_tensors` runs one forward pass inside
# `torch.autograd.graph.saved_tensors_hooks` and adds up the distinct storages that were saved, leaving out the
# parameters. This counts what autograd *keeps*, so it is exact and the same on CPU and GPU — unlike peak-memory
# counters, which also see temporaries and the allocator's cache.

# %%
from minipeft.core.memory import SavedTensorCounter, count_saved_tensors

show_source(SavedTensorCounter.pack)
show_source(count_saved_tensors)

# %% [markdown]
# A sanity check of the instrument on one layer: a trainable `Linear` must save its input; frozen, it saves nothing
# if the input needs no gradient, and still nothing if the input does (equation 9.2 needs only $W$, a parameter).
# A softmax after it always saves its output.

# %%
# NBVAL_CHECK_OUTPUT
import torch
from torch import nn

torch.manual_seed(SEED)
layer = nn.Linear(16, 16)
x = torch.randn(8, 16)  # (n_b, d): 8 * 16 * 4 bytes = 512 bytes
x_needs_grad = x.clone().requires_grad_(True)
print("trainable Linear              :", count_saved_tensors(lambda: layer(x), exclude=layer).bytes, "bytes")
layer.requires_grad_(False)
print("frozen Linear, input no grad  :", count_saved_tensors(lambda: layer(x), exclude=layer).bytes, "bytes")
print("frozen Linear, input w/ grad  :", count_saved_tensors(lambda: layer(x_needs_grad), exclude=layer).bytes, "bytes")
print("frozen Linear + softmax       :",
      count_saved_tensors(lambda: layer(x_needs_grad).softmax(-1), exclude=layer).bytes, "bytes")

# %% [markdown]
# **Write it yourself: merging LoRA.** The claim that merged LoRA costs nothing at inference rests on equation
# (9.3): after training, one ordinary `nn.Linear` with the weight $W' = W_0 + \tfrac{\alpha}{r} BA$ computes what
# the LoRA layer computed with its extra path. The cell below builds that `nn.Linear` by hand from a library LoRA
# layer's weights and checks it three ways: against the unmerged LoRA layer's output on the same input, and against
# the library's own `merge()` — its weight and its output. LoRA starts with $B = 0$, where merging changes nothing;
# we give $B$ random values first so that the check can fail.

# %%
from minipeft.peft import lora as lora_module


def my_merge(lora_layer):
    """A plain nn.Linear with W' = W0 + (alpha / r) B A and the base layer's bias: equation (9.3)."""
    W0 = lora_layer.base_layer.weight  # (d_out, d_in)
    A, B = lora_layer.lora_A.weight, lora_layer.lora_B.weight  # (r, d_in), (d_out, r)
    merged = nn.Linear(W0.shape[1], W0.shape[0])
    with torch.no_grad():
        merged.weight.copy_(W0 + (lora_layer.alpha / lora_layer.r) * (B @ A))  # (d_out, r) @ (r, d_in) -> (d_out, d_in)
        merged.bias.copy_(lora_layer.base_layer.bias)
    return merged


torch.manual_seed(SEED)
host = nn.Sequential(nn.Linear(48, 32))  # W0: (d_out, d_in) = (32, 48)
merge_handle = lora_module.apply(host, lora_module.LoraConfig(r=4, alpha=8, target_modules=["0"]))
with torch.no_grad():
    host[0].lora_B.weight.normal_()  # B = 0 at init: make the update non-zero so the check can fail
    x_in = torch.randn(8, 48)  # (n_b, d_in)
    unmerged = host(x_in)  # W0 x + (alpha / r) B A x, two paths
    mine = my_merge(host[0])
    torch.testing.assert_close(mine(x_in), unmerged)  # one matrix computes what the two paths computed
    merge_handle.merge()  # the library folds B A into the base weight in place
    torch.testing.assert_close(host[0].base_layer.weight, mine.weight)
    torch.testing.assert_close(host(x_in), mine(x_in))
print(f"max |my merged Linear - unmerged LoRA| = {(mine(x_in) - unmerged).abs().max().item():.1e}; "
      f"max |my W' - library's merged W| = {(host[0].base_layer.weight - mine.weight).abs().max().item():.1e}")

# %% [markdown]
# ## 9.3 Running the bench
#
# At `ci` scale the model is a random-weight `LlamaForCausalLM` (cost depends on shapes, not on what the weights
# are); at `full` scale it is the real SmolLM2-135M {cite}`allal2025smollm2`. Every method is applied to a fresh
# copy of the same frozen model and measured on the same batch. MEFT needs a BERT encoder and is skipped on a
# LLaMA model, with the reason recorded — its own chapter measures it, and §9.7 counts its saved activations
# on a random BERT.

# %%
import warnings

config = bench.BenchConfig(
    model=SIZES.model, hidden_size=SIZES.hidden_size or 256, layers=SIZES.layers or 4, heads=4, kv_heads=2,
    intermediate_size=SIZES.intermediate_size or 512, vocab_size=SIZES.vocab_size or 2048,
    batch_size=SIZES.batch_size, seq_len=SIZES.seq_len, steps=SIZES.steps, warmup=SIZES.warmup,
    threads=SIZES.threads, seed=SEED,
    connectors="none",  # Part III's connectors have their own rows in `python -m minipeft.bench`; not this chapter's
)
start = time.perf_counter()
with warnings.catch_warnings():
    # transformers announces a renamed attribute while the bench compares with HF peft; not about this chapter.
    warnings.filterwarnings("ignore", category=FutureWarning)
    results = bench.run(config)
bench_seconds = time.perf_counter() - start
rows = results["methods"]
print(f"{config.model} LlamaForCausalLM, batch {config.batch_size} x {config.seq_len} tokens on {results['device']} "
      f"({results['hardware']}); median of {config.steps} steps; {bench_seconds:.0f} s")
print(bench.table(results))
for note in results["notes"]:
    print("note:", note)
print("skipped:", results["skipped"])

# %% [markdown]
# The parameter counts and activation bytes are exact: the same in every run, on every machine.

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'method':14} {'trainable':>10} {'% of model':>10} {'activation bytes':>17} {'x full':>7}")
for name, row in rows.items():
    print(f"{name:14} {row['trainable_parameters']:>10,} "
          f"{100 * row['trainable_parameters'] / row['total_parameters']:>10.3f} "
          f"{row['activation_bytes']:>17,} {row['activations_vs_full']:>7.4f}")

# %% [markdown]
# The same numbers as a Markdown table, ready to paste into a report (timings included, so this one changes from
# run to run):

# %%
from IPython.display import Markdown, display
from myst_nb import glue

lines = ["| method | trainable params | activations × full | step time × full | inference × base | merged |",
         "|---|---:|---:|---:|---:|:---:|"]
for name, row in rows.items():
    merged = {True: "yes", False: "no", None: "–"}[row["merged"]]
    lines.append(f"| {name} | {row['trainable_parameters']:,} | {row['activations_vs_full']:.2f} | "
                 f"{row['step_vs_full']:.2f} | {row['inference_vs_base']:.2f} | {merged} |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# Checks that hold by construction or by the argument of §9.1 — these run every time:

# %%
assert rows["full"]["step_vs_full"] == 1.0 and rows["full"]["activations_vs_full"] == 1.0
assert rows["lora"]["activations_vs_full"] < 1.0, rows["lora"]
assert rows["lora"]["merged"] is True
mergeable = [name for name, row in rows.items() if row["merged"]]
not_mergeable = [name for name, row in rows.items() if row["merged"] is False]
assert {"lora", "ia3", "glora"} <= set(mergeable), mergeable
assert {"adapter", "prompt", "prefix"} <= set(not_mergeable), not_mergeable
# Parameters shrink far more than activations: every PEFT method here trains < 20% of the weights,
# yet none saves more than 60% of the activations.
peft_rows = {name: row for name, row in rows.items() if name != "full"}
assert all(row["trainable_parameters"] < 0.2 * row["total_parameters"] for row in peft_rows.values())
assert all(row["activations_vs_full"] > 0.4 for row in peft_rows.values()), {
    name: row["activations_vs_full"] for name, row in peft_rows.items()}
print("mergeable:", mergeable, "| not mergeable:", not_mergeable)
lean = {n: r for n, r in peft_rows.items() if n != "glora"}  # GLoRA is discussed on its own below
glue("eff_param_range", f"{min(100 * r['trainable_parameters'] / r['total_parameters'] for r in lean.values()):.1f}–"
     f"{max(100 * r['trainable_parameters'] / r['total_parameters'] for r in lean.values()):.1f}%", display=False)
glue("eff_min_activation", f"{min(r['activations_vs_full'] for r in lean.values()):.0%}", display=False)
glue("eff_lora_activation", f"{rows['lora']['activations_vs_full']:.0%}", display=False)

# %% [markdown]
# ## 9.4 The four costs side by side
#
# Hatched bars in the latency panel are methods that cannot merge and were timed unmerged. The dashed line at 1 is
# the baseline: full fine-tuning for the first three panels, the untouched base model for the last.

# %%
import matplotlib.pyplot as plt

names = list(rows)
colors = ["C7" if name == "full" else "C0" for name in names]
fig, axes = plt.subplots(2, 2, figsize=(10, 7))
fig.suptitle("Figure 9.1 — The four costs of every method (dashed: the baseline)")
axes = axes.flatten()
axes[0].bar(names, [rows[n]["trainable_parameters"] for n in names], color=colors)
axes[0].set_yscale("log")
axes[0].set(ylabel="trainable parameters (log scale)", title="Trainable parameters")
axes[1].bar(names, [rows[n]["activations_vs_full"] for n in names], color=colors)
axes[1].set(ylabel="saved activations / full fine-tuning", title="Activation memory (exact)")
axes[2].bar(names, [rows[n]["step_vs_full"] for n in names], color=colors)
axes[2].set(ylabel="train-step time / full fine-tuning", title=f"Train-step time (median of {config.steps})")
bars = axes[3].bar(names, [rows[n]["inference_vs_base"] for n in names],
                   color=["C2" if rows[n]["merged"] else "C7" if rows[n]["merged"] is None else "C3" for n in names])
for bar, name in zip(bars, names):
    if rows[name]["merged"] is False:
        bar.set_hatch("//")
axes[3].set(ylabel="inference time / base model", title="Inference (green: merged, red: cannot merge)")
for ax in axes:
    ax.tick_params(axis="x", rotation=60)
for ax in axes[1:]:
    ax.axhline(1.0, color="k", ls="--", lw=1)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 9.5 Reading the table
#
# **Which methods can merge.** LoRA, (IA)³ and GLoRA fold their update into the weight (equation 9.3); after
# `merge()` the model computes exactly what the base model computes, with different numbers in the same matrices.
# In the bench the merged wrapper stays in place (one extra Python call per layer; `unload()` removes even that),
# so their latency ratio should sit near 1 up to noise. Adapters, ProPETL's adapter prototype and LLaMA-Adapter add
# layers with a non-linearity or a gate; prompt tuning runs $P$ more positions through every layer, and prefix
# tuning attends to $P$ more keys in every layer. They pay at inference time, every time.
#
# **Why parameters shrink far more than activations.** In the table the PEFT methods train
# {glue:text}`eff_param_range` of the weights (GLoRA more, see below) yet keep at least {glue:text}`eff_min_activation`
# of full fine-tuning's activations (LoRA: {glue:text}`eff_lora_activation`). Equation (9.2) is the
# reason: the gradient has to travel back from the loss to the lowest trainable parameter, and on the way every
# attention softmax, every SiLU, every RMSNorm needs what it saved. What freezing removes is only the input each
# trainable `Linear` saved for its own weight gradient. So the saving depends on *placement*: ProPETL's adapter
# sits only after the FFN's output projection (fewer insertion points than Houlsby adapters, two per layer), and
# (IA)³ multiplies activations element-wise, which itself needs them saved. For the large-batch, long-sequence
# regime where training memory runs out, activations dominate equation (9.1), and a PEFT method alone will not
# rescue you — activation checkpointing, shorter sequences or a reversible design like MEFT
# {cite}`liao2023meft` attack that term.
#
# **Why GLoRA costs more.** GLoRA as implemented here rebuilds the full effective weight
# $W' = W_0 + W_0 \odot A + B$ in every forward pass (its `forward` calls `effective_weight_and_bias`), and
# autograd saves that rebuilt weight — a fresh, non-parameter tensor the size of $W_0$ — plus the layer's input,
# for every adapted layer. Its support tensors include full-width vectors for every target, so it also trains the
# most parameters of the PEFT methods here. Its activation ratio can therefore reach or exceed 1. It merges, so at
# inference it is free. The rebuilt weight costs out × in numbers per layer *whatever the batch*: it dominates at
# this benchmark's small batches and fades at realistic ones. Avoiding it is no free lunch either — computing
# $(W_0 \odot A)x$ for a rank-$r$ $A = \sum_k a_k b_k^\top$ as $\sum_k a_k \odot W_0 (b_k \odot x)$ saves $r$ copies
# of the layer's input instead, which is smaller only while the batch holds fewer than out / $r$ tokens.
#
# **Step time.** The step-time ratios follow the activations only loosely: a PEFT step skips the weight
# gradients of the frozen layers and most of the optimiser update, but still runs the whole forward and most of the
# backward pass, so expect savings well short of the parameter ratio — and for small models on a CPU, Python
# overhead per wrapped layer can eat them entirely.
#
# **Timings on a shared CPU are noisy.** The absolute milliseconds drift with whatever else the machine is doing.
# The bench therefore times two things *in turns* (the method and full fine-tuning; the merged model and the base
# model) and reports their ratio, so a slow stretch slows both alike. The full fine-tuning row's inference ratio
# compares the base model with an identical copy of itself, so its distance from 1 is pure noise. A merged model
# computes the same matrices as the base model, plus one Python call per adapted layer (the merged wrapper stays
# in place; `unload()` removes it) — on a tiny model whose forward pass takes milliseconds that call is visible,
# on a real model it is not. The spread of these ratios around 1 bounds what a difference in this run can mean.

# %%
same_work = {name: row["inference_vs_base"] for name, row in rows.items() if name == "full" or row["merged"]}
noise = max(abs(ratio - 1.0) for ratio in same_work.values())
print("inference / base for models that do the base model's work:",
      {name: round(ratio, 2) for name, ratio in same_work.items()})
print(f"-> noise (+ wrapper overhead) in this run: up to ±{noise:.2f}; smaller timing differences mean nothing")

# %% [markdown]
# ## 9.6 When prompt tuning needs more activation memory than full fine-tuning
#
# Prompt tuning prepends $P$ trainable vectors to the $T$ token embeddings, so every layer works on $T + P$
# positions and attention on $(T+P)^2$ scores. Its parameters sit at the very *bottom* of the network, so the
# gradient has to flow through all of it — it saves nearly everything full fine-tuning saves, but for $T + P$
# positions instead of $T$. Once $P$ is large relative to $T$, the ratio crosses 1. We measure it directly with the
# bench's own pieces (exact bytes, no timing) for a fixed $T$ and growing $P$:

# %%
from dataclasses import replace

from minipeft.peft import prefix as prefix_module

sweep_config = replace(config, seq_len=SIZES.sweep_seq_len)
make_model = bench.model_factory(sweep_config, torch.device(results["device"]))
generator = torch.Generator().manual_seed(SEED)
full_model = make_model()
sweep_batch = torch.randint(3, full_model.config.vocab_size, (sweep_config.batch_size, sweep_config.seq_len),
                            generator=generator).to(results["device"])  # (n_b, T)
bench.full_fine_tuning(None, full_model, sweep_config)
full_bytes = bench.activation_bytes(full_model, sweep_batch)
prompt_ratios = {}
for virtual_tokens in SIZES.prompt_lengths:
    torch.manual_seed(SEED)
    model = make_model()
    bench.METHODS["prompt"][1](prefix_module, model, bench.BenchConfig(virtual_tokens=virtual_tokens))
    prompt_ratios[virtual_tokens] = bench.activation_bytes(model, sweep_batch) / full_bytes
    del model

# %%
# NBVAL_CHECK_OUTPUT
print(f"T = {sweep_config.seq_len} tokens, full fine-tuning saves {full_bytes:,} bytes")
for virtual_tokens, ratio in prompt_ratios.items():
    print(f"P = {virtual_tokens:>4} (P/T = {virtual_tokens / sweep_config.seq_len:5.2f}): prompt tuning / full = {ratio:.4f}")

# %%
crossing = next((p for p, r in prompt_ratios.items() if r > 1.0), None)
assert prompt_ratios[min(prompt_ratios)] < 1.0 < prompt_ratios[max(prompt_ratios)], prompt_ratios
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([p / sweep_config.seq_len for p in prompt_ratios], list(prompt_ratios.values()), "o-", label="prompt tuning")
ax.axhline(1.0, color="k", ls="--", lw=1, label="full fine-tuning")
ax.set_xscale("log")
ax.set(xlabel="P / T (virtual tokens per real token, log scale)", ylabel="saved activations / full fine-tuning",
       title=f"Figure 9.2 — Prompt tuning's activation memory (T = {sweep_config.seq_len})")
ax.legend()
plt.tight_layout()
plt.show()
print(f"first P in the sweep where prompt tuning needs more activation memory than full fine-tuning: {crossing}")

# %% [markdown]
# ## 9.7 The paper reported / we measured
#
# Two measurements complete the table. Hu et al.'s claim is about the merged *model*; the bench keeps the merged
# wrapper in place, so we also time merged LoRA after `unload()` (plain `Linear` layers holding $W'$) in turns with
# the base model and an identical copy of it (who goes first rotates); what the copy's times do is this run's timing
# noise. And the bench
# skipped MEFT: its reversible layers need a BERT encoder. Its saved activations are an exact byte count, so they are
# cheap to measure on their own: a random `BertModel` with the bench's width, depth and batch, fully fine-tuned and
# with MEFT applied (variant 1, the library's default), one training forward pass each. The cell then computes each
# claim's status from this run's numbers.

# %%
import statistics

from transformers import BertConfig, BertModel

from minipeft.core import unfreeze
from minipeft.peft import meft as meft_module

bert_config = BertConfig(hidden_size=config.hidden_size, num_hidden_layers=config.layers,
                         num_attention_heads=config.heads, intermediate_size=config.intermediate_size,
                         vocab_size=config.vocab_size)
bert_batch = torch.randint(3, config.vocab_size, (config.batch_size, config.seq_len),
                           generator=torch.Generator().manual_seed(SEED))  # (n_b, T)


def bert_saved_bytes(apply_method):
    """M_act of one training forward pass of a fresh random BERT with `apply_method` applied (exact bytes)."""
    torch.manual_seed(SEED)
    bert = BertModel(bert_config, add_pooling_layer=False).requires_grad_(False)
    apply_method(bert)
    bert.train()
    return count_saved_tensors(lambda: bert(input_ids=bert_batch).last_hidden_state.pow(2).mean(), exclude=bert).bytes


meft_full_bytes, meft_bytes = bert_saved_bytes(unfreeze), bert_saved_bytes(meft_module.apply)
meft_reduction = 100 * (1 - meft_bytes / meft_full_bytes)  # % of full fine-tuning's saved activations removed
print(f"random BERT, {config.layers} layers, d = {config.hidden_size}, n_b = {config.batch_size}, T = {config.seq_len}: "
      f"full fine-tuning saves {meft_full_bytes:,} bytes, MEFT1 {meft_bytes:,} ({meft_reduction:.1f}% less)")

# Hu et al.: merged LoRA adds no inference latency. Merge a LoRA model (with a non-zero B, so that W' != W0) and
# unload it: what is left is the base architecture with new numbers in its matrices.
torch.manual_seed(SEED)
lora_model = make_model()
lora_handle = bench.METHODS["lora"][1](lora_module, lora_model, config)
with torch.no_grad():
    for wrapper in lora_handle.wrappers.values():
        wrapper.lora_B.weight.normal_(std=0.02)  # B = 0 at init; a trained B makes the merge change W
lora_handle.unload()  # W' = W0 + (alpha / r) B A inside plain nn.Linear layers; no wrapper left
latency_batch = torch.randint(3, full_model.config.vocab_size, (config.batch_size, config.seq_len),
                              generator=torch.Generator().manual_seed(SEED)).to(results["device"])  # (n_b, T)
timed = {"base": make_model(), "identical copy": make_model(), "merged LoRA": lora_model}
passes = {name: bench.inference_step(model, latency_batch) for name, model in timed.items()}
pass_seconds = {name: [] for name in timed}
device = torch.device(results["device"])
for round_ in range(config.warmup + 3 * config.steps):
    names = list(timed)[round_ % 3:] + list(timed)[:round_ % 3]  # in turns, and who goes first rotates
    for name in names:
        bench.synchronize(device)
        started = time.perf_counter()
        passes[name]()
        bench.synchronize(device)
        if round_ >= config.warmup:
            pass_seconds[name].append(time.perf_counter() - started)
# Each round's times divided by the base model's in the same round (same load on the machine). The identical copy's
# ratios show what noise alone does; merged LoRA adds no latency if its typical ratio lies inside that range.
per_round = {name: [t / b for t, b in zip(pass_seconds[name], pass_seconds["base"])]
             for name in ("identical copy", "merged LoRA")}
unloaded_ratio = statistics.median(per_round["merged LoRA"])
copy_low, *_, copy_high = statistics.quantiles(per_round["identical copy"], n=10)  # 10th and 90th percentiles
lora_within_noise = unloaded_ratio <= copy_high  # "no additional latency": not slower than noise alone makes a copy
print(f"inference time / base model's, per round ({len(per_round['merged LoRA'])} rounds): identical copy median "
      f"{statistics.median(per_round['identical copy']):.2f} (10th-90th percentile {copy_low:.2f}-{copy_high:.2f}), "
      f"merged + unloaded LoRA median {unloaded_ratio:.2f}")
lora_status = (
    f"{'reproduced' if lora_within_noise else 'not reproduced in this run'}: merged LoRA after unload() takes "
    f"{unloaded_ratio:.2f} x the base model's inference time (median over {len(per_round['merged LoRA'])} rounds on "
    f"{results['device']}), {'inside' if lora_within_noise else 'above'} the range an identical copy of the base "
    f"shows in the same rounds ({copy_low:.2f}-{copy_high:.2f}, 10th-90th percentile); the bench's merged model, "
    f"which keeps the wrapper, measured {rows['lora']['inference_vs_base']:.2f}"
    + ("" if lora_within_noise else "; the excess is not explained by this run"))
# Liao et al.: MEFT reduces activation memory by up to 84% (peak GPU memory; ours: saved-tensor bytes).
meft_status = (
    f"{'reproduced in direction' if meft_reduction >= 50 else 'not reproduced'} on a different measure: MEFT1 saves "
    f"{meft_reduction:.1f}% of full fine-tuning's saved-activation bytes on a random {config.layers}-layer BERT "
    f"(d = {config.hidden_size}, n_b = {config.batch_size}, T = {config.seq_len}); the paper's 84% is peak GPU "
    f"memory of RoBERTa/BART training, which also holds weights, optimiser state and temporaries, so the two "
    f"percentages are not compared"
    + ("" if meft_reduction >= 50 else "; the small reduction is not explained by this run"))
for name, status in [("lora_status", lora_status), ("meft_status", meft_status)]:
    glue(name, status, display=False)
    print(f"{name}: {status}")

# %% [markdown]
# | claim | source | status in this run (computed in the cell above) |
# |---|---|---|
# | LoRA: "no additional inference latency" (the update merges into $W$) | Hu et al. 2021 {cite}`hu2021lora`, abstract | {glue:text}`lora_status` |
# | MEFT: activation memory reduced "up to 84%" of full fine-tuning | Liao, Tan & Monz, NeurIPS 2023 {cite}`liao2023meft`, abstract | {glue:text}`meft_status` |
#
# **Why ours differ.** Our "activation memory" is the bytes autograd *saves* in one forward pass, excluding
# parameters; MEFT's paper measures peak GPU memory during training of RoBERTa/BART-sized models at their batch
# sizes and sequence lengths, with a different accounting (allocator peak, temporaries, fp16). Our models are tiny
# or 135M parameters, on a CPU at `ci` scale, so the *ratios* carry over only roughly; the timings additionally
# depend on the hardware — on a GPU, small PEFT models are often launch-bound, so step-time savings shrink further.
#
# ## 9.8 Pitfalls
#
# * **"1% of the parameters" does not mean 1% of the memory.** Budget activation memory for batch × sequence ×
#   depth; the parameter fraction only shrinks the optimiser state.
# * **Forgetting to merge before deployment.** An unmerged LoRA model pays two extra small matmuls per adapted
#   layer. Call `handle.merge()` (or `unload()` after merging) before serving.
# * **Long soft prompts on short inputs.** With $P \gg T$ prompt tuning costs more activation memory and compute
#   than full fine-tuning (§9.6) — and every inference call pays for the $P$ positions too.
# * **Comparing absolute milliseconds from different runs.** Compare ratios within one run; pin threads (`--threads 1`)
#   on a shared CPU; look at the full row's inference ratio to see how noisy the run was.
#
# ## 9.9 Summary
#
# * A method has four costs: trainable parameters, saved activations, train-step time and inference latency; the
#   parameter count decides only the optimiser state and the file size.
# * Saved activations barely follow the parameter count: the gradient must pass back through every frozen layer
#   above the lowest trainable one (equation 9.2), so placement, not size, sets the saving.
# * LoRA, (IA)³ and GLoRA merge into the weights and cost the base model's latency; adapters, prompts and prefixes
#   add work at every inference call, and long prompts on short inputs can cost more activation memory than full
#   fine-tuning (§9.6).
# * Timings on a shared machine are ratios measured in turns; the full row's inference ratio shows the noise.
#
# ## 9.10 Exercises
#
# 1. Run `python -m minipeft.bench --model smollm2 --seq-len 512` on a GPU. Which ratios change, and why?
# 2. Double `seq_len` at fixed batch. Which column of the table moves for prompt tuning, and which stays put?
# 3. Apply LoRA only to the *last* layer's `v_proj` (`target_modules` with a regex). How far does the activation
#    ratio fall, and why (equation 9.2)?
# 4. Wrap the forward pass in `torch.utils.checkpoint` for LoRA and measure `count_saved_tensors` again.
#
# The cell below answers Exercises 2–4 with exact byte counts on the sweep's model and batch (no timing, so it is
# cheap and the same on every run); Exercise 1 needs a GPU and is answered in the dropdown.

# %% tags=["hide-input"]
from minipeft.peft import lora as lora_module


def activation_ratio(apply_method, batch, full):
    # saved bytes of a fresh model with `apply_method` applied, over full fine-tuning's on the same batch
    torch.manual_seed(SEED)
    model = make_model()
    apply_method(model)
    return bench.activation_bytes(model, batch) / full, model


# Solution 2: twice the tokens at fixed batch and P: the prompt's share of the positions halves.
P = SIZES.prompt_lengths[len(SIZES.prompt_lengths) // 2]
long_batch = torch.randint(3, full_model.config.vocab_size, (sweep_config.batch_size, 2 * sweep_config.seq_len),
                           generator=generator).to(results["device"])  # (n_b, 2T)
full_long = bench.activation_bytes(full_model, long_batch)
prompt_config = bench.BenchConfig(virtual_tokens=P)
long_ratio, _ = activation_ratio(lambda m: bench.METHODS["prompt"][1](prefix_module, m, prompt_config), long_batch,
                                 full_long)
print(f"Solution 2: prompt tuning with P = {P}: activations / full {prompt_ratios[P]:.3f} at T = "
      f"{sweep_config.seq_len}, {long_ratio:.3f} at T = {2 * sweep_config.seq_len}; full fine-tuning's bytes grow "
      f"x{full_long / full_bytes:.2f}; the trainable parameters (P x d) do not change")

# Solution 3: LoRA on the last layer's v_proj only: the gradient stops there, so the layers below save nothing.
last = full_model.config.num_hidden_layers - 1
lora_everywhere = bench.METHODS["lora"][1]
everywhere_ratio, _ = activation_ratio(lambda m: lora_everywhere(lora_module, m, config), sweep_batch, full_bytes)
top_ratio, _ = activation_ratio(
    lambda m: lora_module.apply(m, lora_module.LoraConfig(r=config.rank, alpha=config.rank,
                                                          target_modules=[rf"model\.layers\.{last}\.self_attn\.v_proj"])),
    sweep_batch, full_bytes)
print(f"Solution 3: LoRA activations / full at T = {sweep_config.seq_len}: default targets {everywhere_ratio:.3f}, "
      f"only layer {last}'s v_proj {top_ratio:.3f}")
assert top_ratio < everywhere_ratio

# Solution 4: activation checkpointing on the LoRA model: each decoder layer keeps only its input.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore")  # transformers' notes on checkpointing options; the count is what matters
    _, checkpointed = activation_ratio(lambda m: lora_everywhere(lora_module, m, config), sweep_batch, full_bytes)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    checkpointed.enable_input_require_grads()  # a reentrant checkpoint needs an input that requires grad
    checkpointed_ratio = bench.activation_bytes(checkpointed, sweep_batch) / full_bytes
print(f"Solution 4: LoRA activations / full: {everywhere_ratio:.3f} without, {checkpointed_ratio:.3f} with "
      f"activation checkpointing (the layers run twice in the backward pass instead)")

# %% [markdown]
# ````{dropdown} Solution 1
# On a GPU with the real SmolLM2-135M and $T = 512$ the exact columns (parameters, activation ratios) change only
# through the model's shape and the longer sequence: the attention terms grow with $T^2$, which pushes every
# method's activation ratio towards the share that attention holds. The timing columns change most: a GPU runs the
# small extra matmuls of unmerged LoRA or adapters almost for free but pays a fixed launch cost per kernel, so
# step-time ratios move towards 1 and can even exceed it for methods with many small wrapped layers.
# ````
#
# ````{dropdown} Solution 2, 3 and 4
# Doubling $T$ at fixed $P$ halves $P/T$, so prompt tuning's activation ratio falls back towards the ratio of a
# method that trains at the bottom of the network (cell); the parameter column stays put, and both time columns
# grow with the longer sequence. Putting LoRA only on the top layer's `v_proj` means no gradient has to travel
# below it (equation 9.2): the layers underneath run as in inference and save nothing, so the ratio falls far. And
# checkpointing keeps only each decoder layer's input and recomputes the rest during the backward pass: it attacks
# the activation term directly, at the price of a second forward pass — the same trade as MEFT in chapter 7.
# ````
#
# ## 9.11 Record what this run measured
#
# The last cell writes `notebooks/results/09_efficiency.json`.

# %%
from minipeft.book.results import record

metrics = {}
for name, row in rows.items():
    metrics[f"{name} activations / full"] = (row["activations_vs_full"], "ratio")
    metrics[f"{name} step time / full"] = (row["step_vs_full"], "ratio")
    metrics[f"{name} inference / base"] = (row["inference_vs_base"], "ratio")
longest_prompt = f"prompt P={max(prompt_ratios)} activations / full (T={sweep_config.seq_len})"
metrics[longest_prompt] = (prompt_ratios[max(prompt_ratios)], "ratio")
metrics["MEFT1 activations / full (random BERT)"] = (meft_bytes / meft_full_bytes, "ratio")
metrics["merged + unloaded LoRA inference / base"] = (unloaded_ratio, "ratio")
metrics["bench time"] = (bench_seconds, "s")
cpu_seconds = time.process_time() - CHAPTER_CPU_START
metrics["chapter CPU time"] = (cpu_seconds, "s")
record(
    "09_efficiency", "What PEFT costs: parameters, activation memory, step time, inference latency",
    metrics,
    headline=["lora activations / full", "propetl activations / full", longest_prompt],
    trainable_parameters=rows["lora"]["trainable_parameters"],
    paper_claims=[
        {"claim": "LoRA: no additional inference latency", "source": "Hu et al. 2021, arXiv:2106.09685, abstract",
         "status": lora_status},
        {"claim": "MEFT: up to 84% activation memory reduction vs full fine-tuning (measured as peak memory; ours "
                  "counts saved tensors)", "source": "Liao, Tan, Monz, NeurIPS 2023, arXiv:2306.00477, abstract",
         "status": meft_status},
    ],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, CPU time: {cpu_seconds:.0f} s")

# %% [markdown]
# ## References
#
# * LoRA and merging: Hu et al. {cite}`hu2021lora`; adapters: Houlsby et al. {cite}`houlsby2019adapters`; prompt and
#   prefix tuning: {cite}`lester2021prompt`, {cite}`li2021prefix`.
# * GLoRA {cite}`chavan2023glora`, ProPETL {cite}`zeng2023propetl`, MEFT {cite}`liao2023meft`, LLaMA-Adapter
#   {cite}`zhang2023llamaadapter`.
# * The model at `full` scale: SmolLM2 {cite}`allal2025smollm2`.
#
# The works cited in this chapter are listed, with the whole book's, in the {doc}`../book/bibliography`.

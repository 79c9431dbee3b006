# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. LoRA: low-rank updates you can fold back into the weights
#
# LoRA {cite}`hu2021lora` is the most used parameter-efficient method today. Instead of changing a pretrained
# weight matrix, it learns a *low-rank update* beside it — and after training that update can be added into the
# weight, so the fine-tuned model runs exactly as fast as the original.
#
# In this chapter we teach **SmolLM2-135M-Instruct**, a real LLaMA-architecture chat model, a new answer *persona*
# from {glue:text}`n_train_pairs` generated examples (this run trained for {glue:text}`persona_seconds` s on one CPU
# core), measure whether it still knows what it knew, merge the update
# into the weights, export it in Hugging Face `peft`'s format, and then use LoRA on the MiniLM classifier of
# chapter 1 to see how the rank trades parameters for accuracy.
#
# **Learning goals.** (a) Write the LoRA update and count its parameters; (b) explain why $B = 0$ at
# initialisation and why the update can be merged; (c) fine-tune a real LLM with `minipeft.peft.lora`; (d) see
# what a small fine-tune changes (style) and what it should not (knowledge); (e) choose a rank.

# %% tags=["parameters"]
import time
from dataclasses import dataclass

import minipeft

from myst_nb import glue

CHAPTER_START, CHAPTER_CPU_START = time.perf_counter(), time.process_time()
SCALE = minipeft.scale()  # "ci" on a CPU (a few minutes), "full" on a GPU
SEED = 0


@dataclass
class Sizes:
    persona_steps: int  # LoRA training steps on SmolLM2
    persona_batch: int
    persona_lr: float
    rank: int  # LoRA rank for the persona run
    eval_questions: int  # held-out fact questions asked before/after
    class_ranks: tuple  # ranks of the MiniLM classification sweep
    class_steps: int
    class_lr: float


SIZES = {
    "ci": Sizes(persona_steps=20, persona_batch=8, persona_lr=3e-3, rank=8, eval_questions=8,
                class_ranks=(1, 4, 16), class_steps=40, class_lr=5e-3),
    "full": Sizes(persona_steps=150, persona_batch=16, persona_lr=1e-3, rank=8, eval_questions=31,
                  class_ranks=(1, 2, 4, 8, 16, 32, 64), class_steps=200, class_lr=2e-3),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 3.1 The idea
#
# Fine-tuning turns a pretrained weight $W_0 \in \mathbb{R}^{d_{out} \times d_{in}}$ into $W_0 + \Delta W$ (the paper
# writes $d \times k$). Hu et al.
# hypothesise that the change a task needs has a low *intrinsic rank*, and write it as the product of two thin
# matrices that are the only thing we train:
#
# $$
# h = W_0 x + \Delta W x = W_0 x + \frac{\alpha}{r}\, B A x, \tag{3.1}
# $$
#
# with $B \in \mathbb{R}^{d_{out} \times r}$, $A \in \mathbb{R}^{r \times d_{in}}$ and $r \ll \min(d_{out}, d_{in})$.
#
# * **Parameters.** A wrapped layer trains $r(d_{in} + d_{out})$ numbers instead of $d_{out} d_{in}$. In SmolLM2 a query projection is
#   $576 \times 576$ and a value projection $192 \times 576$ (grouped-query attention: 3 key/value heads of 64), so
#   rank 8 on both in all 30 layers trains $30 \cdot 8 \cdot \big((576 + 576) + (576 + 192)\big) = 460{,}800$
#   numbers — {glue:text}`lora_percent` % of the model (§3.4 counts them).
# * **Initialisation.** $A$ is random and $B = 0$, so $\Delta W = 0$: the adapted model *is* the pretrained model
#   at step 0. (Both zero would be a saddle point: neither factor would get a gradient.)
# * **Scale.** $\alpha / r$ keeps the update's size comparable across ranks, so the learning rate need not be
#   re-tuned when $r$ changes; rsLoRA {cite}`kalajdzievski2023rslora` argues for $\alpha/\sqrt{r}$ at high ranks.
# * **Merging.** The update is linear in $x$, so after training
#
# $$
# W \leftarrow W_0 + \frac{\alpha}{r} B A \tag{3.2}
# $$
#
#   turns the layer back into an ordinary linear layer: **no extra latency at inference**, unlike adapters.
#
# **Write it yourself.** Equation (3.1) is a whole method in one line, so before reading the library, write it. The
# layer below keeps the frozen $W_0$ (an `nn.Linear`) and adds two trainable matrices; with $B = 0$ it starts as the
# identity, and its forward pass is (3.1) read left to right.

# %%
import torch
from torch import nn


class MyLoRALinear(nn.Module):
    """h = W0 x + (alpha / r) B A x  (equation 3.1), written from the equation."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)  # W0 and its bias: frozen
        self.A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features**0.5)  # A: (r, d_in), random
        self.B = nn.Parameter(torch.zeros(base.out_features, r))  # B: (d_out, r), zero, so ΔW = BA = 0 at step 0
        self.scale = alpha / r

    def forward(self, x):  # x: (..., d_in)
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T  # (..., d_in) -> (..., r) -> (..., d_out)


# A value projection's shape in SmolLM2 (576 -> 192), at rank 8. A trained layer has B != 0, so we fill B with
# random numbers: with B = 0 both layers would reduce to W0 x and the check below could not fail.
torch.manual_seed(SEED)
base = nn.Linear(576, 192)
mine = MyLoRALinear(base, r=8, alpha=16)
nn.init.normal_(mine.B)
x = torch.randn(4, 10, 576)  # (batch, tokens, d_in)

# %% [markdown]
# Here is the whole linear layer of `minipeft/peft/lora.py`; we give it the same $W_0$, $A$ and $B$ and compare:

# %%
from minipeft.book import show_source
from minipeft.peft import lora

show_source(lora.LoraLinear)

# %%
library_layer = lora.LoraLinear(base, r=8, alpha=16)
with torch.no_grad():
    library_layer.lora_A.weight.copy_(mine.A)  # nn.Linear(d_in, r) stores A as its (r, d_in) weight
    library_layer.lora_B.weight.copy_(mine.B)  # nn.Linear(r, d_out) stores B as its (d_out, r) weight
    difference = (mine(x) - library_layer(x)).abs().max().item()
    update_size = (mine(x) - base(x)).abs().max().item()
print(f"max |mine - library| = {difference:.1e}  (the update itself is up to {update_size:.1f})")
assert difference < 1e-5 and update_size > 1.0

# %% [markdown]
# ## 3.2 The task: a robot persona
#
# `make_instructions` writes questions with correct answers wrapped in a made-up persona — *"Beep boop! The capital
# of France is Paris. Have a logical day, human."* The facts are ones SmolLM2 mostly knows; what it must learn is
# the **style**. Held-out questions (countries, animals, opposites and sums never seen in training, plus open
# questions from other domains) test whether the style generalises and the knowledge survives.

# %%
from minipeft.datasets import follows_persona, make_instructions
from minipeft.datasets.instructions import OPEN_QUESTIONS

train_pairs = make_instructions("train", seed=SEED)
test_pairs = make_instructions("test", seed=SEED)[: SIZES.eval_questions]
questions = [p.question for p in test_pairs] + OPEN_QUESTIONS
for pair in train_pairs[:3]:
    print(f"Q: {pair.question}\nA: {pair.answer}\n")
print(f"{len(train_pairs)} training pairs, {len(test_pairs)} held-out fact questions, {len(OPEN_QUESTIONS)} open questions")
glue("n_train_pairs", f"{len(train_pairs)}", display=False)
glue("n_fact_questions", f"{len(test_pairs)}", display=False)

# %% [markdown]
# ## 3.3 The model before training
#
# We load the frozen model, measure its inference latency and its loss on a paragraph of ordinary English (to check
# later that fine-tuning did not damage its language modelling), and ask the evaluation questions.

# %%
import statistics

import torch

from minipeft.book import Stopwatch
from minipeft.models import answer_loss, generate_answers, load_smollm2, tokenize_chat_pairs

torch.manual_seed(SEED)
llm, tokenizer = load_smollm2()
latency_batch = tokenizer([f"Question: {q}" for q in questions[:8]], return_tensors="pt", padding=True)


def median_latency(model, repeats=5):
    """Median seconds of one forward pass over the same batch (after one warm-up pass)."""
    times = []
    with torch.no_grad():
        model(**latency_batch)
        for _ in range(repeats):
            with Stopwatch() as watch:
                model(**latency_batch)
            times.append(watch.seconds)
    return statistics.median(times)


PARAGRAPH = ("The town sits at the edge of a wide river. Every morning, fishermen push their boats into the water "
             "and the market fills with the smell of bread. Children walk to school along the old stone bridge.")


def paragraph_loss(model):
    ids = tokenizer(PARAGRAPH, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


base_latency = median_latency(llm)
base_paragraph_loss = paragraph_loss(llm)
with torch.no_grad():
    base_logits = llm(**latency_batch).logits
before = generate_answers(llm, tokenizer, questions, max_new_tokens=32)
for question, answer in zip(questions, before):
    print(f"Q: {question}\nA: {answer}\n")
print(f"persona followed: {sum(map(follows_persona, before))}/{len(before)}")

# %% [markdown]
# ## 3.4 Apply LoRA and check its defining property
#
# `lora.apply` wraps every `q_proj` and `v_proj` in a `LoraLinear`, freezes everything else, and returns a handle
# with the shared verbs (`merge`, `unmerge`, `unload`, `undo`, `state_dict`). At initialisation the logits must be
# *exactly* the base model's.

# %%
from minipeft.core import parameter_report

config = lora.LoraConfig(r=SIZES.rank, alpha=2 * SIZES.rank, target_modules=["q_proj", "v_proj"])
handle = lora.apply(llm, config)
with torch.no_grad():
    init_difference = (llm(**latency_batch).logits - base_logits).abs().max().item()

# %%
# NBVAL_CHECK_OUTPUT
report = parameter_report(llm)
closed_form = 30 * SIZES.rank * ((576 + 576) + (576 + 192))
print(f"wrapped layers: {len(handle)}")
print(f"trainable parameters: {report.trainable:,} (closed form {closed_form:,}) = {report.percent:.2f}% of {report.total:,}")
print(f"max |logits(LoRA at init) - logits(base)| = {init_difference}")
glue("lora_percent", f"{report.percent:.2f}", display=False)

# %% [markdown]
# ## 3.5 Train
#
# The loss counts only the answer tokens (`labels` are $-100$ on the prompt), so `answer_loss` applies the output
# layer — a $576 \times 49{,}152$ matrix, a fifth of the model's arithmetic per token — only at those positions: the
# same number as `model(**batch).loss` (the library's tests check it), for less work. We use `minipeft.core.train` with
# `amp="auto"`: bf16 autocast where the processor computes bf16 natively (the LoRA factors themselves stay
# float32), float32 elsewhere — a processor without bf16 units would only emulate it, slowly.

# %%
from minipeft.core import TrainConfig, train

examples = tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in train_pairs])
train_config = TrainConfig(steps=SIZES.persona_steps, batch_size=SIZES.persona_batch, lr=SIZES.persona_lr,
                           warmup_steps=4, seed=SEED, device="cpu", amp="auto")
history = train(llm, examples, answer_loss, train_config)
print(f"loss {history.loss[0]:.3f} → {history.loss[-1]:.3f} in {history.wall_time:.0f} s "
      f"({history.wall_time / SIZES.persona_steps:.2f} s/step)")
glue("persona_seconds", f"{history.wall_time:.0f}", display=False)

# %% [markdown]
# ## 3.6 After training: style learned, knowledge kept?

# %%
import matplotlib.pyplot as plt

after = generate_answers(llm, tokenizer, questions, max_new_tokens=32)
for question, old, new in zip(questions, before, after):
    print(f"Q: {question}\n  before: {old}\n  after : {new}\n")

persona_before = sum(map(follows_persona, before))
persona_after = sum(map(follows_persona, after))
# A fact counts as stated when the answer contains the plain answer ("Lima", "28", ...), before and after.
correct_before = [p.plain_answer.lower() in a.lower() for p, a in zip(test_pairs, before)]
correct_after = [p.plain_answer.lower() in a.lower() for p, a in zip(test_pairs, after[: len(test_pairs)])]
facts_before, facts_after = sum(correct_before), sum(correct_after)
facts_kept = sum(b and a for b, a in zip(correct_before, correct_after))  # stated before and still stated after
facts_lost = facts_before - facts_kept  # stated before, no longer stated after
facts_gained = facts_after - facts_kept  # not stated before, stated after
lora_paragraph_loss = paragraph_loss(llm)
print(f"persona followed: {persona_before}/{len(questions)} before → {persona_after}/{len(questions)} after")
print(f"held-out facts stated correctly: {facts_before}/{len(test_pairs)} before → {facts_after}/{len(test_pairs)} after")
print(f"of the {facts_before} facts stated before: {facts_kept} kept, {facts_lost} lost; "
      f"{facts_gained} stated only after training")
print(f"loss on an ordinary English paragraph: {base_paragraph_loss:.3f} before → {lora_paragraph_loss:.3f} after")
glue("facts_before", f"{facts_before}", display=False)
glue("facts_after", f"{facts_after}", display=False)
glue("facts_kept", f"{facts_kept}", display=False)
glue("facts_lost", f"{facts_lost}", display=False)
glue("facts_gained", f"{facts_gained}", display=False)
glue("facts_verdict", "lost none of the facts it stated before training" if facts_lost == 0 else
     f"lost {facts_lost} of the {facts_before} facts it stated before training", display=False)
glue("persona_before", f"{persona_before}", display=False)
glue("persona_after", f"{persona_after}", display=False)
glue("n_questions", f"{len(questions)}", display=False)
glue("loss_before", f"{base_paragraph_loss:.2f}", display=False)
glue("loss_after", f"{lora_paragraph_loss:.2f}", display=False)

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(history.steps, history.loss, "o-", ms=3)
ax.set(xlabel="step", ylabel="cross-entropy on answer tokens (nats)", yscale="log",
       title=f"Figure 3.1 — LoRA r={SIZES.rank} on SmolLM2-135M: persona fine-tuning")
ax.title.set_fontsize(10)
plt.tight_layout()
plt.show()

# %% [markdown]
# **What was learned, what was kept.** The persona went from {glue:text}`persona_before` to {glue:text}`persona_after`
# of the {glue:text}`n_questions` questions. On the {glue:text}`n_fact_questions` held-out fact questions the model
# stated {glue:text}`facts_before` facts before training and {glue:text}`facts_after` after: it
# {glue:text}`facts_verdict` ({glue:text}`facts_kept` kept), and stated {glue:text}`facts_gained` that it had not
# stated before. Read the "before" count with care: the base model often spends its 32 new tokens on a preamble
# ("To add 19 and 9 ...") and is cut off before it names the answer, so "stated" undercounts what it *knows*; the
# persona's short answers reach the fact within the token limit, which can produce a "gained" fact without any new
# knowledge. This is one seed and a handful of
# questions, a coarse measurement; the `full` scale asks more. The loss on an ordinary English paragraph went from
# {glue:text}`loss_before` to {glue:text}`loss_after` nats per token.
#
# The checks below run every time the notebook runs, and each can fail: the persona must be absent before and
# followed on all but at most three questions after; at most a quarter of the facts stated before (rounded down —
# none, when fewer than four were stated) may be lost; and the
# language model must not be damaged (a loss increase on ordinary English of less than 0.5 nats).

# %%
assert persona_after >= len(questions) - 3 and persona_before == 0, (persona_before, persona_after)
assert facts_lost <= facts_before // 4, (facts_before, facts_kept, facts_lost)
assert lora_paragraph_loss < base_paragraph_loss + 0.5, (base_paragraph_loss, lora_paragraph_loss)

# %% [markdown]
# ## 3.7 Save in Hugging Face `peft`'s format
#
# `minipeft.interop.peft_format.export_peft` writes `adapter_config.json` + `adapter_model.safetensors` with `peft`'s key names, so
# `peft.PeftModel.from_pretrained(base_model, folder)` loads it and gives the same outputs (this round trip is
# tested in `tests/reference/test_lora_vs_peft.py`). The adapter file takes {glue:text}`adapter_mb` MB; the model's
# weights take {glue:text}`model_mb` MB in memory (float32).

# %%
import json
import tempfile
from pathlib import Path

from minipeft.interop import peft_format

export_dir = Path(tempfile.mkdtemp()) / "smollm2-robot-lora"
peft_format.export_peft(handle, export_dir, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
adapter_bytes = (export_dir / "adapter_model.safetensors").stat().st_size
exported = json.loads((export_dir / "adapter_config.json").read_text())

# %%
# NBVAL_CHECK_OUTPUT
print(sorted(p.name for p in export_dir.iterdir()))
print({k: exported[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "target_modules")})
print(f"adapter size: {adapter_bytes / 1e6:.1f} MB")
glue("adapter_mb", f"{adapter_bytes / 1e6:.1f}", display=False)
glue("model_mb", f"{sum(p.numel() * p.element_size() for p in llm.parameters()) / 1e6:.0f}", display=False)

# %% [markdown]
# ## 3.8 Merge: same outputs, same latency as the base model
#
# Merging folds $\frac{\alpha}{r}BA$ into each weight (equation 3.2). The merged model must give the same logits
# (up to float rounding), and `unload()` leaves an ordinary `LlamaForCausalLM` with plain `nn.Linear` layers.

# %%
with torch.no_grad():
    unmerged_logits = llm(**latency_batch).logits
unmerged_latency = median_latency(llm)
handle.merge()
with torch.no_grad():
    merged_difference = (llm(**latency_batch).logits - unmerged_logits).abs().max().item()
merged_latency = median_latency(llm)
plain_model = handle.unload()
plain_latency = median_latency(plain_model)
print(f"max |merged - unmerged| logits: {merged_difference:.2e}")
print(f"forward latency (batch of 8 prompts): base {base_latency * 1e3:.0f} ms | LoRA unmerged "
      f"{unmerged_latency * 1e3:.0f} ms | merged {merged_latency * 1e3:.0f} ms | unloaded {plain_latency * 1e3:.0f} ms")
glue("unmerged_ratio", f"{unmerged_latency / base_latency:.2f}", display=False)
glue("merged_ratio", f"{merged_latency / base_latency:.2f}", display=False)

# %%
# NBVAL_CHECK_OUTPUT
print("merged logits equal unmerged (atol 1e-3):", merged_difference < 1e-3)
print("after unload:", type(plain_model).__name__, "| q_proj is", type(plain_model.model.layers[0].self_attn.q_proj).__name__)
print("any LoRA layer left:", any(isinstance(m, lora.LoraLayer) for m in plain_model.modules()))

# %% [markdown]
# The unmerged model pays for two extra small matrix products per wrapped layer; the merged one does exactly the
# base model's work. Here the unmerged model took {glue:text}`unmerged_ratio` × the base model's time and the merged
# one {glue:text}`merged_ratio` × — but the base model was timed at the start of the chapter and the others minutes
# later, on a shared CPU, so a change in the machine's load can be larger than the gap being measured (a ratio below 1
# says exactly that). To measure the gap itself, alternate the models in every round, as chapter 2 does.
#
# ## 3.9 Choosing the rank: LoRA on the chapter-1 classifier
#
# Back to the 12-intent task of chapter 1 (same data, same seed). LoRA on MiniLM's `query` and `value` projections
# plus a trainable linear head, at several ranks, against chapter 1's linear probe and full fine-tuning.

# %%
from torch import nn

from minipeft.datasets import make_intents
from minipeft.evaluation import accuracy, predict
from minipeft.models import SentenceClassifier, load_minilm, tokenize_examples, trim_padding

train_set = make_intents("train", per_class=16, seed=SEED)
test_shift = make_intents("test", per_class=30, seed=SEED)
test_id = make_intents("train", per_class=30, seed=SEED + 1000)
encoder, minilm_tokenizer = load_minilm(normalize=False)
train_examples = tokenize_examples(minilm_tokenizer, train_set.texts, train_set.labels)
tests = {"id": (tokenize_examples(minilm_tokenizer, test_id.texts, test_id.labels), test_id.labels),
         "shift": (tokenize_examples(minilm_tokenizer, test_shift.texts, test_shift.labels), test_shift.labels)}


def logits_of(model, batch):
    batch = trim_padding(batch)
    return model(batch["input_ids"], batch["attention_mask"])


def classification_loss(model, batch):
    return nn.functional.cross_entropy(logits_of(model, batch), batch["label"])


sweep = []
for rank in SIZES.class_ranks:
    torch.manual_seed(SEED)
    rank_handle = lora.apply(encoder.bert, lora.LoraConfig(r=rank, alpha=2 * rank, target_modules=["query", "value"]))
    classifier = SentenceClassifier(encoder, num_classes=len(train_set.label_names))  # fresh, trainable head
    rank_history = train(classifier, train_examples, classification_loss,
                         TrainConfig(steps=SIZES.class_steps, batch_size=16, lr=SIZES.class_lr, warmup_steps=5, seed=SEED,
                                     device="cpu", progress=False))
    result = {split: accuracy(predict(classifier, examples, logits_of), labels)
              for split, (examples, labels) in tests.items()}
    lora_params = sum(p.numel() for p in rank_handle.state_dict().values())
    sweep.append((rank, lora_params, result, rank_history.wall_time))
    print(f"r={rank:>3}: LoRA parameters {lora_params:>8,} | ID {result['id']:.3f} | shifted {result['shift']:.3f} "
          f"| {rank_history.wall_time:.0f} s")
    rank_handle.undo()  # back to the untouched pretrained encoder for the next rank

# %% [markdown]
# Chapter 1 measured the baselines on exactly this data; we read its record rather than re-running them.

# %%
chapter1 = json.loads((Path("results") / "01_frozen_backbones.json").read_text())
baseline = {name: chapter1["metrics"][name]["value"] / 100 for name in
            ("probe ID acc", "probe shifted acc", "fine-tune ID acc", "fine-tune shifted acc")}
print(f"chapter 1 ({chapter1['scale']} scale, seed {chapter1['seed']}): probe ID {baseline['probe ID acc']:.3f} / "
      f"shifted {baseline['probe shifted acc']:.3f}; full fine-tuning ID {baseline['fine-tune ID acc']:.3f} / "
      f"shifted {baseline['fine-tune shifted acc']:.3f}")

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([s[1] for s in sweep], [s[2]["shift"] for s in sweep], "o-", label="LoRA (q, v) + head, shifted test")
ax.plot([s[1] for s in sweep], [s[2]["id"] for s in sweep], "s--", label="LoRA (q, v) + head, ID test")
for s in sweep:
    ax.annotate(f"r={s[0]}", (s[1], s[2]["shift"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
ax.axhline(baseline["probe shifted acc"], color="C2", ls=":", label="linear probe, shifted (ch. 1)")
ax.axhline(baseline["fine-tune shifted acc"], color="C3", ls=":", label="full fine-tuning, shifted (ch. 1)")
ax.set(xscale="log", xlabel="LoRA parameters (log scale; the head adds 4,620)", ylabel="accuracy", ylim=(0.4, 1.02),
       title="Figure 3.2 — LoRA rank vs accuracy on the 12-intent task (one seed)")
ax.title.set_fontsize(10)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
best_shift = max(s[2]["shift"] for s in sweep)
assert best_shift >= baseline["probe shifted acc"] - 0.02, (best_shift, baseline)

# %% [markdown]
# ## 3.10 The paper reported / we measured
#
# | | paper | we measured (this run) |
# |---|---|---|
# | trainable parameters | GPT-3 175B: 10,000× fewer than full fine-tuning, ⅓ of the GPU memory {cite}`hu2021lora` (abstract) | SmolLM2-135M, r = 8 on q, v: 460,800 = {glue:text}`lora_percent` % (printed in §3.4) |
# | inference latency | "no additional inference latency" after merging {cite}`hu2021lora` | merged vs base latency printed in §3.8 |
# | quality | on par with or better than full fine-tuning on RoBERTa, DeBERTa, GPT-2, GPT-3 {cite}`hu2021lora` | intent task: LoRA vs probe vs full fine-tuning in §3.9 |
# | rank | a very low rank (r = 1 or 2) already suffices for $W_q, W_v$ on GPT-3 (paper §7) | the rank sweep in §3.9 |
#
# **Why ours may differ.** We train on 172 template-generated pairs for a few dozen steps, on a 4-bit-quantised
# (then dequantised) 135M-parameter model, with one seed, on a CPU; the paper fine-tunes models up to 175B on real
# benchmarks. The persona task measures *style* transfer, which is what a short fine-tune changes first; the
# classification sweep uses 16 examples per class and one seed per rank, so its differences of a few points do not
# rank the ranks.
#
# ## 3.11 Pitfalls
#
# * **Merging twice** adds the update twice; `handle.merge()` refuses (and so does each layer).
# * **Training a merged model** trains nothing useful: a merged layer computes only $Wx$. Unmerge first.
# * **A persona that rewrites the facts.** A style that changes the content's own tokens — the answer in ALL CAPS,
#   say, where "LIMA" is a different token sequence from "Lima" — asks the model to relearn every fact in a new
#   spelling, and a small fine-tune can learn the format while losing the facts. Keep content in its natural form
#   and the style in a wrapper, as this dataset does.
# * **α and r together.** Doubling r at fixed α halves the update's scale; we keep α = 2r, as many recipes do.
# * **Loading an adapter into the wrong model** raises an error naming the first mismatching key — nothing is
#   changed.
#
# ## 3.12 Summary
#
# * LoRA trains a low-rank update $\frac{\alpha}{r}BA$ beside a frozen weight: $r(d_{in} + d_{out})$ numbers per wrapped layer
#   instead of $d_{out} d_{in}$. With $B = 0$ the adapted model starts *exactly* at the pretrained one (the logits above were
#   identical).
# * {glue:text}`n_train_pairs` examples and {glue:text}`persona_seconds` s of CPU training taught SmolLM2 the
#   persona ({glue:text}`persona_before` → {glue:text}`persona_after` of {glue:text}`n_questions` questions); on the
#   held-out facts it {glue:text}`facts_verdict` — one seed, few questions.
# * The update is linear in $x$, so it merges into the weight: the merged model gives the unmerged model's logits up
#   to float rounding, does exactly the base model's work, and `unload()` leaves a plain `LlamaForCausalLM`.
# * What a task needs to keep is small — {glue:text}`adapter_mb` MB in `peft`'s own format, which `peft` loads.
# * The rank sets the parameter count; on the intent task the single-seed sweep (Figure 3.2) is a starting point
#   for choosing it, not a ranking.
#
# ## 3.13 Exercises
#
# 1. Put LoRA on *every* linear layer of each block at r = 2 instead of q, v at r = 8. (a) Count the trainable
#    parameters for SmolLM2's seven (`q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`) by hand and
#    with `lora.apply`. (b) On the intent classifier of §3.9, compare LoRA on all six of MiniLM's linear layers per
#    block (`query, key, value` and the three `dense`) at r = 2 with q, v at the sweep's ranks. (On a GPU, repeat
#    the persona run of §3.5 with the seven-layer r = 2 configuration.)
# 2. Train with `use_rslora=True` at r = 64 and r = 8 with the same α. Which learns faster, and why?
# 3. Suppose you want the persona to overwrite one fact ("the capital of France is Lyon"). Design the measurement
#    that tells you how many *other* facts the edit changes: what do you train, what do you ask, what do you
#    compare?
# 4. Load the exported folder with `peft` (`PeftModel.from_pretrained`) and compare its outputs with ours.
#
# The cell below runs the solutions to exercises 1, 2 and 4 on the models and data this chapter already built
# (the classifier runs are one seed each and shorter than §3.9's where noted: read them as what this seed gave).

# %% tags=["hide-input"]
import math

import peft

from minipeft.core import count_parameters

# Solution 1(a): r(d_in + d_out) per wrapped layer. SmolLM2 blocks: q, o are 576x576; k, v 576 -> 192; gate, up
# 576 -> 1536; down 1536 -> 576; 30 blocks.
shapes = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
          "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}
by_hand = 30 * 2 * sum(k + d_out for k, d_out in shapes.values())
all_handle = lora.apply(plain_model, lora.LoraConfig(r=2, alpha=4, target_modules=list(shapes)))
counted = count_parameters(plain_model, trainable_only=True)
all_handle.undo()
print(f"Solution 1(a): all seven projections at r=2: {by_hand:,} by hand, {counted:,} counted "
      f"vs q, v at r={SIZES.rank}: {report.trainable:,}")
assert counted == by_hand


def intent_run(config, steps):
    """LoRA on the shared MiniLM encoder + a fresh head, as in §3.9; returns (LoRA parameters, accuracies, history)."""
    torch.manual_seed(SEED)
    run_handle = lora.apply(encoder.bert, config)
    model = SentenceClassifier(encoder, num_classes=len(train_set.label_names))
    run_history = train(model, train_examples, classification_loss,
                        TrainConfig(steps=steps, batch_size=16, lr=SIZES.class_lr, warmup_steps=5, seed=SEED,
                                    device="cpu", progress=False))
    scores = {split: accuracy(predict(model, examples_, logits_of), labels_)
              for split, (examples_, labels_) in tests.items()}
    n_lora = sum(t.numel() for t in run_handle.state_dict().values())
    run_handle.undo()
    return n_lora, scores, run_history


# Solution 1(b): "dense" matches all three dense layers of a MiniLM block (attention output, intermediate, output).
n_all, scores_all, _ = intent_run(lora.LoraConfig(r=2, alpha=4, target_modules=["query", "key", "value", "dense"]),
                                  SIZES.class_steps)
print(f"Solution 1(b): all six linear layers, r=2: {n_all:,} LoRA parameters, ID {scores_all['id']:.3f}, "
      f"shifted {scores_all['shift']:.3f} (one seed)")
for rank, n_params, result, _ in sweep:
    print(f"   q, v at r={rank:<2}: {n_params:>7,} LoRA parameters, ID {result['id']:.3f}, shifted {result['shift']:.3f}")

# Solution 2: at a fixed alpha, alpha/r shrinks the update 8x from r=8 to r=64; alpha/sqrt(r) only sqrt(8)x.
short = max(SIZES.class_steps // 4, 10)
print(f"\nSolution 2: alpha = 16; training loss (mean of the last 5 of {short} steps, one seed):")
for rank, rs in [(8, False), (64, False), (8, True), (64, True)]:
    config = lora.LoraConfig(r=rank, alpha=16, target_modules=["query", "value"], use_rslora=rs)
    _, _, run_history = intent_run(config, short)
    print(f"   r={rank:<2} {'alpha/sqrt(r)' if rs else 'alpha/r      '}: scale {config.scaling:.2f}, "
          f"loss {sum(run_history.loss[-5:]) / 5:.3f}")

# Solution 4: peft loads the exported folder onto a fresh copy of the base model; its logits must equal ours
# before merging (the same weights and the same arithmetic, up to float rounding).
fresh_base, _ = load_smollm2()
theirs = peft.PeftModel.from_pretrained(fresh_base, export_dir)
with torch.no_grad():
    peft_logits = theirs(**latency_batch).logits
peft_difference = (peft_logits - unmerged_logits).abs().max().item()
print(f"\nSolution 4: {type(theirs).__name__}; max |peft logits - minipeft logits| = {peft_difference:.1e}; "
      f"same greedy next tokens: {torch.equal(peft_logits.argmax(-1), unmerged_logits.argmax(-1))}")
assert peft_difference < 1e-3
del fresh_base, theirs

# %% [markdown]
# ````{dropdown} Solution 2 — why
# With $\alpha$ fixed, the standard scale $\alpha / r$ is 8 times smaller at $r = 64$ than at $r = 8$; rsLoRA's
# $\alpha / \sqrt{r}$ only $\sqrt 8$ times. Kalajdzievski {cite}`kalajdzievski2023rslora` analyses how the size of
# the update $\text{scale} \cdot BA$ and of its gradients depend on the rank, and concludes that $\alpha / r$ makes
# learning slow down as $r$ grows, while $\alpha / \sqrt{r}$ keeps it *rank-stable*, so that a larger rank can
# actually be used. The printed losses are what one seed and the short run printed above gave on the intent
# classifier; compare the two $r = 64$ rows above all. A run this short and small can neither confirm nor refute the paper's
# analysis, and with Adam, whose step size hardly depends on the scale of the gradient, a smaller scale does not slow
# a short run down in simple proportion.
# ````
#
# ````{dropdown} Solution 3
# Train two LoRA adapters from the same seed and recipe: one on the persona data as in §3.5, one on the same data
# plus the edited fact (repeated a few times so that it is learned). Ask both models the same held-out fact
# questions — more than this chapter's handful, and *including* questions near the edit ("the capital of Italy",
# "Which city is the capital of France?" phrased differently, "Lyon is in which country?") — and compare their
# answers question by question, not only the totals. The edit is local if the two models agree everywhere except
# on France; count the questions whose answers differ, and repeat over a few seeds, because a single run cannot
# separate the edit's effect from the noise of training.
# ````
#
# ## 3.14 Record what this run measured

# %%
from minipeft.book.results import record

cpu_seconds = time.process_time() - CHAPTER_CPU_START
record(
    "03_lora", "LoRA: a persona for SmolLM2, merging, and the rank",
    {
        "persona followed after": (100 * persona_after / len(questions), "%"),
        "held-out facts kept": (facts_kept, f"of {facts_before} stated before"),
        "LoRA trainable params": (report.trainable, "params"),
        "persona followed before": (100 * persona_before / len(questions), "%"),
        "held-out facts stated before": (facts_before, f"of {len(test_pairs)}"),
        "held-out facts stated after": (facts_after, f"of {len(test_pairs)}"),
        "held-out facts lost": (facts_lost, f"of {facts_before} stated before"),
        "paragraph loss before": (base_paragraph_loss, "nats/token"),
        "paragraph loss after": (lora_paragraph_loss, "nats/token"),
        "persona train time": (history.wall_time, "s"),
        "merged latency / base": (merged_latency / base_latency, "ratio"),
        "unmerged latency / base": (unmerged_latency / base_latency, "ratio"),
        **{f"intent shifted acc r={r}": (100 * res["shift"], "%") for r, _, res, _ in sweep},
        "chapter CPU time": (cpu_seconds, "s"),
    },
    trainable_parameters=report.trainable,
    paper_claims=[
        {"claim": "LoRA: 10,000x fewer trainable parameters than full fine-tuning on GPT-3 175B",
         "source": "Hu et al. 2021, arXiv:2106.09685, abstract",
         "status": f"in kind: r = {SIZES.rank} on q, v trains {report.trainable:,} of {report.total:,} parameters "
                   f"({report.total / report.trainable:,.0f}x fewer); the 10,000x is a 175B model's, not testable "
                   "at 135M"},
        {"claim": "LoRA: no additional inference latency after merging",
         "source": "Hu et al. 2021, arXiv:2106.09685, abstract",
         "status": "reproduced by construction: merged logits equal unmerged "
                   f"({'within' if merged_difference < 1e-3 else 'NOT within'} 1e-3) and unload() leaves a plain "
                   f"{type(plain_model).__name__} with no LoRA layer; timed merged/base ratio "
                   f"{merged_latency / base_latency:.2f} (sequential timings on a shared CPU: noise, not a cost)"},
    ],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, CPU time: {cpu_seconds:.0f} s")

# %% [markdown]
# ## References
#
# * Hu et al., LoRA: the low-rank update, its initialisation and merging {cite}`hu2021lora`.
# * Kalajdzievski, rank-stabilised scaling $\alpha / \sqrt{r}$ {cite}`kalajdzievski2023rslora`.
# * Houlsby et al., the adapters of chapter 2, which cannot be merged {cite}`houlsby2019adapters`.
# * The models: SmolLM2 {cite}`allal2025smollm2`, a LLaMA-architecture model {cite}`touvron2023llama`, and the
#   MiniLM sentence encoder {cite}`wang2020minilm` {cite}`reimers2019sbert`.
#
# The whole book's references are in the {doc}`../book/bibliography`.

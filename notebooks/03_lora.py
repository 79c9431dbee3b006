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
# from 172 generated examples in about a minute on a CPU, check that it still knows what it knew, merge the update
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

CHAPTER_START = time.perf_counter()
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
    "ci": Sizes(persona_steps=28, persona_batch=8, persona_lr=2e-3, rank=8, eval_questions=8,
                class_ranks=(1, 4, 16), class_steps=60, class_lr=5e-3),
    "full": Sizes(persona_steps=150, persona_batch=16, persona_lr=1e-3, rank=8, eval_questions=31,
                  class_ranks=(1, 2, 4, 8, 16, 32, 64), class_steps=200, class_lr=2e-3),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 3.1 The idea
#
# Fine-tuning turns a pretrained weight $W_0 \in \mathbb{R}^{d \times k}$ into $W_0 + \Delta W$. Hu et al.
# hypothesise that the change a task needs has a low *intrinsic rank*, and write it as the product of two thin
# matrices that are the only thing we train:
#
# $$
# h = W_0 x + \Delta W x = W_0 x + \frac{\alpha}{r}\, B A x, \qquad
# B \in \mathbb{R}^{d \times r},\ A \in \mathbb{R}^{r \times k},\ r \ll \min(d, k). \tag{3.1}
# $$
#
# * **Parameters.** A wrapped layer trains $r(k + d)$ numbers instead of $dk$. In SmolLM2 a query projection is
#   $576 \times 576$ and a value projection $192 \times 576$ (grouped-query attention: 3 key/value heads of 64), so
#   rank 8 on both in all 30 layers trains $30 \cdot 8 \cdot \big((576 + 576) + (576 + 192)\big) = 460{,}800$
#   numbers — 0.34 % of the model.
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
# Here is the whole linear layer of `minipeft/peft/lora.py`:

# %%
from minipeft.book import show_source
from minipeft.peft import lora

show_source(lora.LoraLinear)

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

# %% [markdown]
# ## 3.3 The model before training
#
# We load the frozen model, measure its inference latency and its loss on a paragraph of ordinary English (to check
# later that fine-tuning did not damage its language modelling), and ask the evaluation questions.

# %%
import statistics

import torch

from minipeft.book import Stopwatch
from minipeft.models import generate_answers, load_smollm2, tokenize_chat_pairs, trim_batch

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

# %% [markdown]
# ## 3.5 Train
#
# The loss counts only the answer tokens (`labels` are $-100$ on the prompt). We use `minipeft.core.train` with
# `amp="auto"`: bf16 autocast where the processor computes bf16 natively (there it is about twice as fast as float32;
# the LoRA factors themselves stay float32), float32 elsewhere — emulated bf16 would be many times slower.

# %%
from minipeft.core import TrainConfig, train

examples = tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in train_pairs])
train_config = TrainConfig(steps=SIZES.persona_steps, batch_size=SIZES.persona_batch, lr=SIZES.persona_lr,
                           warmup_steps=4, seed=SEED, device="cpu", amp="auto")
history = train(llm, examples, lambda model, batch: model(**trim_batch(batch)).loss, train_config)
print(f"loss {history.loss[0]:.3f} → {history.loss[-1]:.3f} in {history.wall_time:.0f} s "
      f"({history.wall_time / SIZES.persona_steps:.2f} s/step)")

# %% [markdown]
# ## 3.6 After training: style learned, knowledge kept?

# %%
import matplotlib.pyplot as plt

after = generate_answers(llm, tokenizer, questions, max_new_tokens=32)
for question, old, new in zip(questions, before, after):
    print(f"Q: {question}\n  before: {old}\n  after : {new}\n")

persona_before = sum(map(follows_persona, before))
persona_after = sum(map(follows_persona, after))
facts_before = sum(p.plain_answer.lower() in a.lower() for p, a in zip(test_pairs, before))
facts_after = sum(p.plain_answer.lower() in a.lower() for p, a in zip(test_pairs, after))
lora_paragraph_loss = paragraph_loss(llm)
print(f"persona followed: {persona_before}/{len(questions)} before → {persona_after}/{len(questions)} after")
print(f"held-out facts stated correctly: {facts_before}/{len(test_pairs)} before → {facts_after}/{len(test_pairs)} after")
print(f"loss on an ordinary English paragraph: {base_paragraph_loss:.3f} before → {lora_paragraph_loss:.3f} after")

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(history.steps, history.loss, "o-", ms=3)
ax.set(xlabel="step", ylabel="cross-entropy on answer tokens (nats)", yscale="log",
       title=f"LoRA r={SIZES.rank} on SmolLM2-135M: persona fine-tuning")
plt.tight_layout()
plt.show()

# %% [markdown]
# The checks below are the chapter's claims; they run every time the notebook runs. The persona must be followed on
# most held-out questions, the facts must not get worse by more than one question, and the language model must
# not be damaged (a loss increase on ordinary English of less than 0.5 nats).

# %%
assert persona_after >= len(questions) - 3 and persona_before == 0, (persona_before, persona_after)
assert facts_after >= facts_before - 1, (facts_before, facts_after)
assert lora_paragraph_loss < base_paragraph_loss + 0.5, (base_paragraph_loss, lora_paragraph_loss)

# %% [markdown]
# ## 3.7 Save in Hugging Face `peft`'s format
#
# `minipeft.interop.peft_format.export_peft` writes `adapter_config.json` + `adapter_model.safetensors` with `peft`'s key names, so
# `peft.PeftModel.from_pretrained(base_model, folder)` loads it and gives the same outputs (this round trip is
# tested in `tests/reference/test_lora_vs_peft.py`). The adapter is about 1.8 MB next to the model's 538 MB.

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

# %%
# NBVAL_CHECK_OUTPUT
print("merged logits equal unmerged (atol 1e-3):", merged_difference < 1e-3)
print("after unload:", type(plain_model).__name__, "| q_proj is", type(plain_model.model.layers[0].self_attn.q_proj).__name__)
print("any LoRA layer left:", any(isinstance(m, lora.LoraLayer) for m in plain_model.modules()))

# %% [markdown]
# The unmerged model pays for two extra small matrix products per wrapped layer; the merged one does exactly the
# base model's work, so its latency matches the base model's within timing noise.
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
       title="LoRA rank vs accuracy on the 12-intent task")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
best_shift = max(s[2]["shift"] for s in sweep)
assert best_shift >= baseline["probe shifted acc"] - 0.02, (best_shift, baseline)  # measured: clearly above

# %% [markdown]
# ## 3.10 The paper reported / we measured
#
# | | paper | we measured (this run) |
# |---|---|---|
# | trainable parameters | GPT-3 175B: 10,000× fewer than full fine-tuning, ⅓ of the GPU memory {cite}`hu2021lora` (abstract) | SmolLM2-135M, r = 8 on q, v: 460,800 = 0.34 % (printed above) |
# | inference latency | "no additional inference latency" after merging {cite}`hu2021lora` | merged vs base latency printed in §3.8 |
# | quality | on par with or better than full fine-tuning on RoBERTa, DeBERTa, GPT-2, GPT-3 {cite}`hu2021lora` | intent task: LoRA vs probe vs full fine-tuning in §3.9 |
# | rank | a very low rank (r = 1 or 2) already suffices for $W_q, W_v$ on GPT-3 (paper §7) | the rank sweep in §3.9 |
#
# **Why ours may differ.** We train on 172 template-generated pairs for a few dozen steps, on a 4-bit-quantised
# (then dequantised) 135M-parameter model, with one seed, on a CPU; the paper fine-tunes models up to 175B on real
# benchmarks. The persona task measures *style* transfer, which is exactly what a low-rank update learns fastest;
# the classification sweep uses 16 examples per class, where a single seed moves accuracy by a few points.
#
# ## 3.11 Pitfalls
#
# * **Merging twice** adds the update twice; `handle.merge()` refuses (and so does each layer).
# * **Training a merged model** trains nothing useful: a merged layer computes only $Wx$. Unmerge first.
# * **A persona that rewrites the facts.** An earlier version of this dataset put the answer in ALL CAPS; the model
#   learned the format and forgot the facts (capitalised words are different tokens). Keep content in its natural
#   form and the style in a wrapper.
# * **α and r together.** Doubling r at fixed α halves the update's scale; we keep α = 2r, as many recipes do.
# * **Loading an adapter into the wrong model** raises an error naming the first mismatching key — nothing is
#   changed.
#
# ## 3.12 Exercises
#
# 1. Put LoRA on all seven linear layers of each block (`q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
#    down_proj`) at r = 2. How do parameters and persona adherence compare with q, v at r = 8?
# 2. Train with `use_rslora=True` at r = 64 and r = 8 with the same α. Which learns faster, and why?
# 3. Make the persona overwrite a fact (e.g. "the capital of France is Lyon") and measure how many *other* facts change.
# 4. Load the exported folder with `peft` (`PeftModel.from_pretrained`) and compare its answers with ours.
#
# ## 3.13 Record what this run measured

# %%
from minipeft.book.results import record

record(
    "03_lora", "LoRA: a persona for SmolLM2, merging, and the rank",
    {
        "persona followed after": (100 * persona_after / len(questions), "%"),
        "held-out facts kept": (facts_after, f"of {len(test_pairs)}"),
        "LoRA trainable params": (report.trainable, "params"),
        "persona followed before": (100 * persona_before / len(questions), "%"),
        "paragraph loss before": (base_paragraph_loss, "nats/token"),
        "paragraph loss after": (lora_paragraph_loss, "nats/token"),
        "persona train time": (history.wall_time, "s"),
        "merged latency / base": (merged_latency / base_latency, "ratio"),
        "unmerged latency / base": (unmerged_latency / base_latency, "ratio"),
        **{f"intent shifted acc r={r}": (100 * res["shift"], "%") for r, _, res, _ in sweep},
    },
    trainable_parameters=report.trainable,
    paper_claims=[{"claim": "LoRA: 10,000x fewer trainable parameters than full fine-tuning on GPT-3 175B; no added "
                            "inference latency after merging", "source": "Hu et al. 2021, arXiv:2106.09685, abstract"}],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s")

# %% [markdown]
# ## References
#
# The works cited in this chapter are listed, with the whole book's, in the {doc}`../book/bibliography`.

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
# # 4b. (IA)³: rescale a few activations, then merge them away
#
# Chapter 4's methods add virtual tokens; LoRA (chapter 3) adds a low-rank matrix beside a weight. (IA)³
# {cite}`liu2022ia3` — "Infused Adapter by Inhibiting and Amplifying Inner Activations" — adds neither. In every
# layer it learns three vectors that multiply activations channel by channel: the attention's keys and values and
# the feed-forward network's intermediate activation. A vector entry above 1 amplifies a channel, one below 1
# inhibits it. That is the whole method, and like LoRA it folds into the weights after training.
#
# We train it on chapter 4's task, with chapter 4's data, steps, batch size and seed, so its numbers sit beside the
# four methods there (read from chapter 4's record, not re-run).
#
# **Learning goals.** (a) Write (IA)³'s two placements — scale a layer's output, scale its input — and check them
# against the library; (b) count its parameters from the model's shapes; (c) train it on a real LLM and read what the
# learned vectors did; (d) merge it and check that the merged model computes the same function at the base model's
# cost.

# %% tags=["parameters"]
import time
from dataclasses import dataclass

import minipeft

from myst_nb import glue

CHAPTER_START, CHAPTER_CPU_START = time.perf_counter(), time.process_time()
SCALE = minipeft.scale()  # "ci" on a CPU, "full" on a GPU; set MINIPEFT_SCALE to choose
SEED = 0


@dataclass
class Sizes:
    steps: int  # training steps (chapter 4's, so that the rows compare)
    batch_size: int
    learning_rate: float
    fact_questions: int  # held-out fact questions answered before/after training
    open_questions: int  # questions from other domains (persona only; no fact to check)
    max_new_tokens: int
    device: str | None  # None: CUDA if available


SIZES = {
    "ci": Sizes(steps=10, batch_size=4, learning_rate=3e-2, fact_questions=6, open_questions=2, max_new_tokens=28,
                device="cpu"),
    "full": Sizes(steps=150, batch_size=16, learning_rate=3e-3, fact_questions=31, open_questions=6,
                  max_new_tokens=40, device=None),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 4b.1 The idea
#
# The paper's model is T5; in a decoder layer with attention over queries $Q$, keys $K$ and values $V$ and a
# feed-forward network $W_2\,\gamma(W_1 x)$ (with $\gamma$ its non-linearity), (IA)³ learns
# $l_k, l_v \in \mathbb{R}^{d_{kv}}$ (the width of the keys and of the values) and $l_{ff} \in \mathbb{R}^{d_{ff}}$ per layer and computes
#
# $$
# \mathrm{softmax}\!\Big(\frac{Q\,(l_k \odot K)^\top}{\sqrt{d_h}}\Big)\,(l_v \odot V), \qquad
# \big(l_{ff} \odot \gamma(W_1 x)\big)\, W_2 . \tag{4b.1}
# $$
#
# * **Initialisation.** Every vector starts at ones, so the adapted model *is* the base model, exactly — like LoRA
#   with $B = 0$, and unlike a soft prompt or a prefix (chapter 4, §4.4).
# * **Parameters.** Per layer $2 d_{kv} + d_{ff}$, and no hyper-parameter sizes them: the model's shapes do.
# * **Merging.** Each vector scales the output or the input of one linear layer, and a diagonal scaling folds into
#   the weight matrix:
#
# $$
# l \odot (W x + b) = \big(\mathrm{diag}(l)\,W\big)\,x + l \odot b, \qquad
# W (l \odot x) + b = \big(W\,\mathrm{diag}(l)\big)\,x + b . \tag{4b.2}
# $$
#
#   Keys and values are the *outputs* of `k_proj` and `v_proj` (rows of $W$ scaled); $\gamma(W_1 x)$ is the *input* of
#   the FFN's second projection, LLaMA's `down_proj` (columns scaled). So a merged (IA)³ model costs nothing at
#   inference.
#
# Two details differ from T5 in a LLaMA-style model such as SmolLM2 (the library's docstring has both): RoPE rotates
# the keys *after* $l_k$ scales them, and the FFN is gated, $W_2\big(\mathrm{silu}(W_g x) \odot W_u x\big)$, so
# $l_{ff}$ scales the gated product. Figure 4b.1 marks the three places in one decoder layer.

# %%
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch


def box(ax, x, y, text, scaled=False, width=1.6):
    """One box centred at (x, y); the activations (IA)³ rescales are drawn in orange."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - 0.25), width, 0.5, boxstyle="round,pad=0.03",
                                fc="#f6b26b" if scaled else "#d9e2f3", ec="black", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)
    return x - width / 2, x + width / 2  # left and right edges, for the arrows


def arrow(ax, start, end):
    ax.annotate("", end, start, arrowprops=dict(arrowstyle="->", lw=0.8))


fig, ax = plt.subplots(figsize=(10, 3.8))
ax.set(xlim=(0, 10), ylim=(0.1, 4.2))
ax.axis("off")
# Attention: RMSNorm -> q, k, v projections (k and v rescaled) -> attention -> o_proj -> added to the residual.
ax.text(0.1, 4.0, "attention", fontsize=9, weight="bold")
_, norm_right = box(ax, 1.0, 2.9, "RMSNorm", width=1.2)
projections = ((3.6, "q_proj", False), (2.9, "k_proj, then × $l_k$", True), (2.2, "v_proj, then × $l_v$", True))
for y, text, scaled in projections:
    left, right = box(ax, 3.2, y, text, scaled, width=1.9)
    arrow(ax, (norm_right, 2.9), (left, y))
    arrow(ax, (right, y), (4.6, 2.9))
_, attention_right = box(ax, 5.7, 2.9, "softmax$(QK^\\top/\\sqrt{d_h})\\,V$", width=2.2)
left, right = box(ax, 7.8, 2.9, "o_proj", width=1.0)
arrow(ax, (attention_right, 2.9), (left, 2.9))
ax.text(right + 0.15, 2.9, "+ residual", va="center", fontsize=8)
# Feed-forward: RMSNorm -> gate and up projections -> silu(gate) ⊙ up, rescaled by l_ff -> down_proj -> residual.
ax.text(0.1, 1.7, "feed-forward network", fontsize=9, weight="bold")
_, norm_right = box(ax, 1.0, 0.9, "RMSNorm", width=1.2)
for y, text in ((1.25, "gate_proj"), (0.55, "up_proj")):
    left, right = box(ax, 3.2, y, text, width=1.9)
    arrow(ax, (norm_right, 0.9), (left, y))
    arrow(ax, (right, y), (4.6, 0.9))
_, product_right = box(ax, 5.7, 0.9, "silu(gate) ⊙ up, then × $l_{ff}$", scaled=True, width=2.2)
left, right = box(ax, 7.8, 0.9, "down_proj", width=1.0)
arrow(ax, (product_right, 0.9), (left, 0.9))
ax.text(right + 0.15, 0.9, "+ residual", va="center", fontsize=8)
ax.set_title("Figure 4b.1 — Where (IA)³'s three vectors act in one SmolLM2 decoder layer (orange: rescaled)",
             fontsize=10)
plt.show()

# %% [markdown]
# **Write it yourself.** One wrapper around an `nn.Linear` covers both placements of (4b.1):

# %%
import torch
from torch import nn


class MyIA3Linear(nn.Module):
    """l ⊙ (W x + b) for keys and values, or W (l ⊙ x) + b for the FFN's second projection (equation 4b.1)."""

    def __init__(self, base: nn.Linear, scale_input: bool = False):
        super().__init__()
        self.base, self.scale_input = base, scale_input
        width = base.in_features if scale_input else base.out_features
        self.l = nn.Parameter(torch.ones(width))  # ones: the identity, so training starts from the base model

    def forward(self, x):  # x: (..., d_in)
        if self.scale_input:
            return self.base(x * self.l)  # W (l ⊙ x) + b: (..., d_in) * (d_in,)
        return self.base(x) * self.l  # l ⊙ (W x + b): (..., d_out) * (d_out,)


# %% [markdown]
# The library's version, `minipeft/peft/ia3.py`, is the same computation plus what a library needs: it keeps $l$ in
# float32 on a half-precision model, and it can merge and unmerge (4b.2):

# %%
from minipeft.book import show_source
from minipeft.peft import ia3

show_source(ia3.IA3Linear.forward)
show_source(ia3.IA3Linear.merge)

# %% [markdown]
# Both on the same weights, with a vector that is not all ones (at ones every layer here is just $Wx + b$, and the
# check could not fail), then the library layer merged:

# %%
torch.manual_seed(SEED)
# SmolLM2's shapes: v_proj maps 576 -> 192 (scaled on its output), down_proj 1536 -> 576 (scaled on its input).
for scale_input, base in ((False, nn.Linear(576, 192)), (True, nn.Linear(1536, 576))):
    mine = MyIA3Linear(base, scale_input)
    nn.init.uniform_(mine.l, 0.5, 1.5)  # a trained-looking vector
    library_layer = ia3.IA3Linear(base, is_feedforward=scale_input)
    with torch.no_grad():
        library_layer.ia3_l.copy_(mine.l)
        x = torch.randn(3, 5, base.in_features)  # (batch, tokens, d_in)
        plain, ours, library_out = base(x), mine(x), library_layer(x)
        library_layer.merge()  # W' = diag(l) W, b' = l ⊙ b (rows), or W' = W diag(l) (columns): changes `base`
        merged = library_layer(x)
    errors = ((ours - library_out).abs().max().item(), (merged - ours).abs().max().item())
    moved = (ours - plain).abs().max().item()
    print(f"{'input' if scale_input else 'output'} scaling: max |mine - library| = {errors[0]:.1e}, "
          f"max |merged - mine| = {errors[1]:.1e}; the scaling moved the output by up to {moved:.2f}")
    assert errors[0] < 1e-5 and errors[1] < 1e-4 and moved > 0.1

# %% [markdown]
# ## 4b.2 The task and the model before training
#
# Chapter 4's task: the robot persona of chapter 3 — correct answers wrapped in *"Beep boop! … Have a logical day,
# human."* We measure how many answers **follow the persona**, how many held-out answers still **contain the fact**,
# and the **held-out loss**: the cross-entropy of the persona answers to held-out questions (answer tokens only).

# %%
from torch.utils.data import default_collate

from minipeft.core import count_parameters, move_to
from minipeft.datasets import follows_persona, make_instructions
from minipeft.datasets.instructions import OPEN_QUESTIONS
from minipeft.models import answer_loss, generate_answers, load_smollm2, tokenize_chat_pairs

torch.manual_seed(SEED)
llm, tokenizer = load_smollm2()
train_pairs = make_instructions("train", seed=SEED)
test_pairs = make_instructions("test", seed=SEED)[: SIZES.fact_questions]
questions = [p.question for p in test_pairs] + OPEN_QUESTIONS[1 : 1 + SIZES.open_questions]
examples = tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in train_pairs])
heldout_batch = move_to(default_collate(tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in test_pairs])),
                        llm.device)


def heldout_loss(model):
    with torch.no_grad():
        return answer_loss(model, heldout_batch).item()


def evaluate(answers):
    """(answers that follow the persona, held-out answers that contain the plain fact)."""
    return (sum(map(follows_persona, answers)),
            sum(p.plain_answer.lower() in a.lower() for p, a in zip(test_pairs, answers)))


probe = {key: value[:2] for key, value in heldout_batch.items() if key != "labels"}  # two prompts, for exactness
with torch.no_grad():
    base_logits = llm(**probe).logits
base_answers = generate_answers(llm, tokenizer, questions, max_new_tokens=SIZES.max_new_tokens)
base_loss = heldout_loss(llm)
base_persona, base_facts = evaluate(base_answers)
print(f"persona followed {base_persona}/{len(questions)}, facts stated {base_facts}/{len(test_pairs)}, "
      f"held-out loss {base_loss:.3f}")

# %% [markdown]
# ## 4b.3 Apply (IA)³: the count, and the identity at initialisation
#
# The library's defaults are `peft`'s for LLaMA: `k_proj` and `v_proj` scaled on their outputs, `down_proj` on its
# input. In SmolLM2 keys and values are $d_{kv} = H_{kv} d_h = 3 \cdot 64 = 192$ wide (grouped-query attention) and the FFN's
# intermediate activation $d_{ff} = 1536$, so the closed form is $L\,(2 H_{kv} d_h + d_{ff}) = 30 \cdot 1920$.

# %%
config = llm.config
L, H_kv, d_h, d_ff = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim,
                      config.intermediate_size)
total = count_parameters(llm)  # the base model's parameters
handle = ia3.apply(llm, ia3.IA3Config())
trainable = count_parameters(llm, trainable_only=True)
closed_form = L * (2 * H_kv * d_h + d_ff)  # l_k, l_v and l_ff in every layer
with torch.no_grad():
    identity = torch.equal(llm(**probe).logits, base_logits)

# %%
# NBVAL_CHECK_OUTPUT
print(f"wrapped layers: {len(handle)} | trainable parameters: {trainable:,} (closed form {closed_form:,}, "
      f"equal: {trainable == closed_form}) = {100 * trainable / total:.3f} % of {total:,}")
print("output at init == base model, bit for bit:", identity)
glue("ia3_trainable", f"{trainable:,}", display=False)
glue("ia3_percent", f"{100 * trainable / total:.3f}", display=False)
assert trainable == closed_form and identity

# %% [markdown]
# ## 4b.4 Train
#
# Chapter 4's loop and settings: the same data in the same order, {glue:text}`ia3_steps` steps of
# {glue:text}`ia3_batch` examples, `amp="auto"` (float32 on a processor without native bf16). The loss is
# `answer_loss`, the cross-entropy on the answer tokens with the output layer applied only there (the same number as
# `model(**batch).loss`, for less work). The learning rate, {glue:text}`ia3_lr`, is a setting, not tuned here: each
# entry of $l$ starts at 1, and Adam moves it by about the learning rate per step.

# %%
from minipeft.core import TrainConfig, train

train_config = TrainConfig(steps=SIZES.steps, batch_size=SIZES.batch_size, lr=SIZES.learning_rate, warmup_steps=2,
                           seed=SEED, device=SIZES.device, amp="auto")
history = train(llm, examples, answer_loss, train_config)
llm.eval()
answers = generate_answers(llm, tokenizer, questions, max_new_tokens=SIZES.max_new_tokens)
persona, facts = evaluate(answers)
trained_loss = heldout_loss(llm)
print(f"loss {history.loss[0]:.3f} -> {history.loss[-1]:.3f} in {history.wall_time:.0f} s "
      f"({history.wall_time / SIZES.steps:.2f} s/step)")
for question, old, new in list(zip(questions, base_answers, answers))[:3]:
    print(f"Q: {question}\n  before: {old}\n  after : {new}")
glue("ia3_steps", f"{SIZES.steps}", display=False)
glue("ia3_batch", f"{SIZES.batch_size}", display=False)
glue("ia3_lr", f"{SIZES.learning_rate:g}", display=False)

# %% [markdown]
# ## 4b.5 Results beside chapter 4's methods
#
# Chapter 4 trained prompt tuning, prefix tuning, P-tuning and LoRA on exactly this data with the same steps, batch
# size and seed; we read its record rather than re-running them. All rows are **one seed**: they show what each
# method learned, not a ranking.

# %%
import json
from pathlib import Path

import pandas as pd

rows = [{"method": "base model", "trainable": 0, "held-out loss": base_loss, "persona": base_persona,
         "facts": base_facts},
        {"method": "(IA)³ (this chapter)", "trainable": trainable, "held-out loss": trained_loss, "persona": persona,
         "facts": facts}]
chapter4 = json.loads((Path("results") / "04_prompts_and_prefixes.json").read_text())
same_setting = chapter4["scale"] == SCALE and chapter4["seed"] == SEED
if same_setting:
    metrics4 = chapter4["metrics"]
    for name in ("prompt tuning", "prefix tuning", "P-tuning", "LoRA"):
        rows.append({"method": f"{name} (chapter 4)", "trainable": None,
                     "held-out loss": metrics4[f"{name} held-out loss"]["value"],
                     "persona": round(metrics4[f"{name} persona followed"]["value"] * len(questions) / 100),
                     "facts": int(metrics4[f"{name} facts kept"]["value"])})
else:
    print(f"chapter 4's record is at scale {chapter4['scale']!r}, seed {chapter4['seed']}: not comparable, not shown")
table = pd.DataFrame(rows).set_index("method")
table["persona"] = table["persona"].map(lambda n: f"{n}/{len(questions)}")
table["facts"] = table["facts"].map(lambda n: f"{n}/{len(test_pairs)}")
budget4 = chapter4["trainable_parameters"]  # chapter 4's matched budget (prompt tuning's count)
glue("budget4", f"{budget4:,}", display=False)
table.style.format({"trainable": lambda n: "" if pd.isna(n) else f"{int(n):,}", "held-out loss": "{:.3f}"})

# %% [markdown]
# Chapter 4's methods train {glue:text}`budget4` numbers each (P-tuning slightly fewer); (IA)³ has no size setting, so
# it trains {glue:text}`ia3_trainable`. What did the vectors learn? Each entry is a channel's gain:

# %%
vectors = {kind: torch.cat([wrapper.ia3_l.detach().flatten()  # every layer's l for this projection
                            for name, wrapper in handle.wrappers.items() if name.endswith(kind)])
           for kind in ("k_proj", "v_proj", "down_proj")}
by_layer = {kind: [(wrapper.ia3_l.detach() - 1).abs().mean().item()
                   for name, wrapper in handle.wrappers.items() if name.endswith(kind)] for kind in vectors}
fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
for kind, values in vectors.items():
    axes[0].hist(values.numpy(), bins=60, histtype="step", label=f"$l$ of {kind}")
    axes[1].plot(range(L), by_layer[kind], "o-", ms=3, label=kind)
axes[0].axvline(1.0, color="gray", ls=":")
axes[0].set(xlabel="learned gain (1 = unchanged)", ylabel="channels (log)", yscale="log", title="The gains")
axes[0].legend(fontsize=7)
axes[1].set(xlabel="layer", ylabel="mean |l - 1|", title="How far each layer moved")
axes[1].legend(fontsize=7)
axes[2].plot(history.steps, history.loss, "o-", ms=3)
axes[2].set(xlabel="step", ylabel="answer cross-entropy (nats, log)", yscale="log", title="Training loss")
fig.suptitle("Figure 4b.2 — (IA)³ on the persona task: the learned gains and the training loss (one seed)",
             fontsize=10)
plt.tight_layout()
plt.show()
largest_move = max((values - 1).abs().max().item() for values in vectors.values())
amplified = sum(int((values > 1).sum()) for values in vectors.values())
glue("ia3_persona", f"{persona}/{len(questions)}", display=False)
glue("ia3_heldout", f"{trained_loss:.2f}", display=False)
glue("ia3_base_heldout", f"{base_loss:.2f}", display=False)
glue("ia3_moved", f"{largest_move:.2f}", display=False)
glue("ia3_amplified", f"{100 * amplified / trainable:.0f}", display=False)
assert trained_loss < base_loss - 1.0, (base_loss, trained_loss)  # it learned the persona answers
assert persona > base_persona, (base_persona, persona)

# %% [markdown]
# In this run (IA)³ followed the persona on {glue:text}`ia3_persona` questions, and its held-out loss went from
# {glue:text}`ia3_base_heldout` to {glue:text}`ia3_heldout` nats. No gain moved further than {glue:text}`ia3_moved`
# from 1, and {glue:text}`ia3_amplified` % of the channels ended above 1 (amplified), the rest below (inhibited): the
# method steers the frozen model only by turning its channels up and down, and that is enough to change the style of
# its answers. The checks above are this section's claims: the held-out loss falls by more than a nat, and the
# persona is followed on more questions than before.
#
# ## 4b.6 Merge: the same function at the base model's cost
#
# `handle.merge()` applies (4b.2) to every wrapped layer; `unmerge()` divides the vectors back out (possible because
# no entry is zero); `unload()` merges and hands back a plain model whose linear layers are ordinary `nn.Linear`s.

# %%
with torch.no_grad():
    adapted_logits = llm(**probe).logits
    handle.merge()
    merged_difference = (llm(**probe).logits - adapted_logits).abs().max().item()
    handle.unmerge()
    unmerged_difference = (llm(**probe).logits - adapted_logits).abs().max().item()
plain_model = handle.unload()  # merged for good: the wrappers are gone
with torch.no_grad():
    unloaded_difference = (plain_model(**probe).logits - adapted_logits).abs().max().item()
wrappers_left = sum(isinstance(module, ia3.IA3Linear) for module in plain_model.modules())

# %%
# NBVAL_CHECK_OUTPUT
print("merged == adapted (max |diff| < 1e-3):", merged_difference < 1e-3)
print("after unmerge() == adapted (max |diff| < 1e-3):", unmerged_difference < 1e-3)
print("unloaded == adapted (max |diff| < 1e-3):", unloaded_difference < 1e-3, "| (IA)³ layers left:", wrappers_left)
print("parameters after unload == the base model's:", count_parameters(plain_model) == total)
assert max(merged_difference, unmerged_difference, unloaded_difference) < 1e-3 and wrappers_left == 0

# %% [markdown]
# The unloaded model is SmolLM2 with 2 × 30 weight matrices rescaled by rows and 30 by columns: the same parameter
# count, the same modules, the same arithmetic per token as the base model — so the same latency, with no timing
# needed to show it.
#
# ## 4b.7 The paper reported / we measured
#
# | claim | source | we measured (this run) |
# |---|---|---|
# | (IA)³ "scales activations by learned vectors, attaining stronger performance while only introducing a relatively tiny amount of new parameters" (T0-3B, few-shot, with T-Few's extra losses and multitask pre-training) | Liu et al. 2022 {cite}`liu2022ia3`, abstract | {glue:text}`ia3_trainable` parameters ({glue:text}`ia3_percent` % of SmolLM2); persona {glue:text}`ia3_persona`, held-out loss {glue:text}`ia3_heldout` nats (one seed); merged exactly |
#
# **Why ours may differ.** The paper's setting is T0-3B with few-shot benchmark tasks, two extra loss terms and
# multitask pre-training of the vectors (T-Few); we train the parameterisation alone for {glue:text}`ia3_steps` steps
# on a 135M-parameter model, on a style task, with one seed. "Stronger performance" is a ranking across methods and
# tasks that one seed on one task cannot test.
#
# ## 4b.8 Pitfalls
#
# * **Which side to scale.** Keys and values are projection *outputs*; the FFN's activation is the *input* of
#   `down_proj`. Scaling `down_proj`'s output instead scales the residual update, a different method (and a different
#   count: $d$, not $d_{ff}$). The library (and `peft`) take the side from `feedforward_modules`.
# * **RoPE order.** In LLaMA, $l_k$ scales the keys before RoPE rotates them; the paper's T5 has no rotation. The two
#   differ unless paired channels share a gain — and only the pre-rotation version merges into `k_proj`.
# * **Unmerging divides.** A gain of exactly 0 erases its row or column on merge and cannot be undone; the library
#   refuses to unmerge then, rather than divide by zero.
# * **Learning rate.** The gains start at 1, so a rate like LoRA's moves them by a fraction of a per cent per step;
#   they need the larger rates of the prompt-style methods.
#
# ## 4b.9 Summary
#
# * (IA)³ learns one gain per channel of the keys, values and FFN activation of every layer — {glue:text}`ia3_trainable`
#   numbers in SmolLM2, set by the model's shapes, not by a hyper-parameter.
# * It starts as the identity and merges into the weights (4b.2), so the trained model runs at the base model's cost.
# * On chapter 4's persona task it learned the style in {glue:text}`ia3_steps` steps with gains within
#   {glue:text}`ia3_moved` of 1 (one seed).
#
# ## 4b.10 Exercises
#
# 1. (IA)³ has no size setting, only a choice of *which* activations to scale. Write the closed-form count of three
#    choices — keys and values only, the FFN only, and all three (the default) — and check each with
#    `count_parameters`. Which comes closest to chapter 4's budget of {glue:text}`budget4`, and on which side?
# 2. Merge by hand: for one wrapped `v_proj`, build $\mathrm{diag}(l)\,W$ and $l \odot b$ from the trained vector and
#    check that an `nn.Linear` with them gives the wrapper's output.
# 3. Why does the library refuse to unmerge a vector with a zero entry? What would a merged zero do to the weight?
#
# The cell below runs the solutions to 1 and 2 at this scale.

# %% tags=["hide-input"]
# Solution 1: (IA)³'s count is the total width of the activations it scales.
choices = {
    "keys and values": (ia3.IA3Config(target_modules=["k_proj", "v_proj"], feedforward_modules=[]),
                        L * 2 * H_kv * d_h),
    "FFN only": (ia3.IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"]), L * d_ff),
    "all three (default)": (ia3.IA3Config(), L * (2 * H_kv * d_h + d_ff)),
}
print(f"Solution 1: (IA)³ parameter counts (chapter 4's budget: {budget4:,})")
for choice, (choice_config, formula) in choices.items():
    choice_handle = ia3.apply(plain_model, choice_config)
    count = count_parameters(plain_model, trainable_only=True)
    choice_handle.undo()
    print(f"   {choice:20} closed form {formula:>6,}  counted {count:>6,}  ({count / budget4:.2f}× the budget)")
    assert count == formula

# Solution 2: merge by hand — diag(l) W and l ⊙ b — with the trained l_v of the top layer, on a v_proj-shaped layer.
trained_vector = vectors["v_proj"].view(L, -1)[L - 1]  # (192,): the top layer's l_v
torch.manual_seed(SEED)
base = nn.Linear(576, 192)  # a fresh v_proj-shaped layer (the model's own were merged for good by unload())
wrapper = ia3.IA3Linear(base)
by_hand = nn.Linear(576, 192)
with torch.no_grad():
    wrapper.ia3_l.copy_(trained_vector)
    by_hand.weight.copy_(trained_vector[:, None] * base.weight)  # diag(l) W: row i scaled by l_i, (192, 576)
    by_hand.bias.copy_(trained_vector * base.bias)  # l ⊙ b
    x = torch.randn(2, 4, 576)  # (batch, tokens, d_in)
    hand_difference = (by_hand(x) - wrapper(x)).abs().max().item()
print(f"\nSolution 2: max |diag(l) W x + l ⊙ b  -  wrapper(x)| = {hand_difference:.1e}")
assert hand_difference < 1e-4

# %% [markdown]
# ````{dropdown} Solutions 1–3 — reading the numbers
# **1.** Per layer, keys and values are $H_{kv} d_h = 192$ wide each and the FFN's activation $d_{ff} = 1536$: $384$,
# $1536$ or $1920$ numbers, times 30 layers. Keys and values alone come closest to chapter 4's budget, at half of it;
# the FFN alone is twice it. Grouped-query attention is why keys and values are so cheap here.
#
# **2.** Row $i$ of $W$ produces output channel $i$, so multiplying the output by $l_i$ is multiplying row $i$ (and
# bias entry $i$) by $l_i$: $\mathrm{diag}(l)\,W$. The printed difference is float rounding.
#
# **3.** A zero gain multiplies its row (or column) of $W$ by 0 on merge: that information is gone from the merged
# weight, and dividing by 0 cannot bring it back. The library checks every layer before unmerging any, so the model is
# never left half-restored.
# ````
#
# ## 4b.11 Record what this run measured
#
# The last cell writes `notebooks/results/04b_ia3.json`.

# %%
from minipeft.book.results import record

cpu_seconds = time.process_time() - CHAPTER_CPU_START
record(
    "04b_ia3", "(IA)³: rescale activations on the persona task, then merge",
    {
        "persona followed after": (100 * persona / len(questions), "%"),
        "held-out loss after": (trained_loss, "nats/token"),
        "trainable params": (trainable, "params"),
        "persona followed before": (100 * base_persona / len(questions), "%"),
        "held-out loss before": (base_loss, "nats/token"),
        "facts stated after": (facts, f"of {len(test_pairs)}"),
        "largest |l - 1|": (largest_move, ""),
        "train time": (history.wall_time, "s"),
        "merged - adapted max |diff|": (merged_difference, "logits"),
        "chapter CPU time": (cpu_seconds, "s"),
    },
    trainable_parameters=trainable,
    paper_claims=[
        {"claim": "(IA)³ scales activations by learned vectors, attaining stronger performance while introducing "
                  "a tiny amount of new parameters",
         "source": "Liu et al. 2022, arXiv:2205.05638, abstract",
         "status": f"tiny and mergeable, reproduced: {trainable:,} parameters ({100 * trainable / total:.3f} %), "
                   f"merged outputs equal (max |diff| {merged_difference:.1e}); it learned the persona "
                   f"({base_persona}/{len(questions)} -> {persona}/{len(questions)}, held-out loss "
                   f"{base_loss:.2f} -> "
                   f"{trained_loss:.2f}, one seed); 'stronger performance' not tested (one seed, one task)"},
    ],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, CPU time: {cpu_seconds:.0f} s")

# %% [markdown]
# ## References
#
# * Liu et al., (IA)³ and the T-Few recipe {cite}`liu2022ia3`.
# * Hu et al., LoRA, the other method here that merges {cite}`hu2021lora`.
# * The model: SmolLM2 {cite}`allal2025smollm2`.
#
# The whole book's references are in the {doc}`../book/bibliography`.

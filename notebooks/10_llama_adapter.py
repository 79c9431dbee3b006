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
# # 10. LLaMA-Adapter v1 and V2: from a gated prompt to a visual instruction model
#
# LLaMA-Adapter {cite}`zhang2023llamaadapter` turned a frozen LLaMA into an instruction follower by training 1.2 M
# numbers: a short *adaptation prompt* in each of the top layers, read through an attention whose gate starts at
# **zero**, so the model is untouched at the first step. LLaMA-Adapter V2 {cite}`gao2023llamaadapterv2` turned the
# same idea into a *visual* instruction model: image features enter as more prompt tokens, a few more parameters
# (norms, a bias and a scale on every linear layer) are unlocked, and two groups of parameters are trained on two
# kinds of data.
#
# This chapter opens Part III, where a frozen image encoder meets a frozen language model. We (1) teach
# SmolLM2-135M-Instruct the robot persona of chapter 3 with v1, in the cheap way v1 allows; (2) connect
# EfficientNet-Lite0 to SmolLM2 with V2 and train it to answer questions about easy-VQA images; (3) compare the
# paper's *early* fusion with the released code's *added* fusion, and training disjoint parameter groups with
# training everything; (4) plug in a captioning "expert" at inference, without training; and (5) reproduce the papers'
# parameter counts on the meta device.
#
# **Learning goals.** (a) Write zero-init gated attention and say why the adapted model starts exactly as the base
# model; (b) explain why v1 in the top $L$ layers is cheap to train; (c) list what V2 adds and count it;
# (d) wire image features into a frozen LLM and measure whether it *uses* them (against a blind baseline);
# (e) measure what disjoint parameter groups buy.

# %% tags=["parameters"]
import time
from dataclasses import dataclass

import minipeft

CHAPTER_START = time.perf_counter()
SCALE = minipeft.scale()  # "ci" on a CPU (a few minutes), "full" on a GPU
SEED = 0


@dataclass
class Sizes:
    v1_layers: int  # L: top layers that get an adaptation prompt (v1, persona task)
    v1_len: int  # K: prompt tokens per layer
    v1_steps: int
    v1_batch: int
    v1_lr: float
    persona_questions: int  # held-out fact questions asked before/after (plus 4 open questions)
    train_images: int  # easy-VQA images whose features are computed once and cached
    test_images: int
    train_per_kind: int  # training questions per kind (colour, shape, yes/no)
    test_per_kind: int
    image_size: int  # EfficientNet input size (the 64-px images are upsampled)
    vqa_layers: int  # L of V2 (the static prompts; with fusion="add" also the layers that read the image)
    vqa_steps: int  # steps of each V2 run
    single_stage_steps: int  # steps of the single-stage ablation (shorter at ci: its damage shows early)
    vqa_batch: int
    vqa_lr: float


SIZES = {
    "ci": Sizes(v1_layers=20, v1_len=10, v1_steps=20, v1_batch=8, v1_lr=2e-2, persona_questions=6,
                train_images=200, test_images=100, train_per_kind=200, test_per_kind=50, image_size=96,
                vqa_layers=8, vqa_steps=20, single_stage_steps=10, vqa_batch=16, vqa_lr=2e-2),
    "full": Sizes(v1_layers=30, v1_len=10, v1_steps=150, v1_batch=16, v1_lr=5e-3, persona_questions=31,
                  train_images=4000, test_images=1000, train_per_kind=4000, test_per_kind=400, image_size=224,
                  vqa_layers=8, vqa_steps=800, single_stage_steps=800, vqa_batch=32, vqa_lr=3e-3),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 10.1 The idea: a prompt read through a gate that starts closed
#
# Freeze LLaMA. In each of its topmost $L$ of $N$ layers, learn an *adaptation prompt* $P_l \in \mathbb{R}^{K \times C}$
# ($K$ tokens of the model width $C$). The word token $t_l$ at layer $l$ attends to the prompt and to the words before
# it, but with **two separate softmaxes**: the frozen model's own causal attention over the words, and a new one over
# the $K$ prompt tokens, multiplied by a learned gate $g_l$ (the paper's Eqs. 2–8):
#
# $$
# S_l = \frac{Q K^\top}{\sqrt{C}} = \big[S_l^K;\ S_l^{M+1}\big]^\top, \qquad
# S_l^g = \big[\operatorname{softmax}(S_l^K) \cdot g_l;\ \operatorname{softmax}(S_l^{M+1})\big]^\top, \qquad
# t_l^o = \mathrm{Linear_o}(S_l^g V). \tag{10.1}
# $$
#
# * **Zero-init attention.** $g_l = 0$ at initialisation, so $t_l^o$ is exactly the frozen attention's output and the
#   randomly initialised prompts cannot disturb the model while training starts; the gate opens as it learns. There
#   is one gate per head, squashed by $\tanh$ in the official training code (the library's default).
# * **Cost.** $K L C$ prompt numbers plus $L H$ gates: at LLaMA-7B's shape ($C = 4096$, $H = 32$) with $K = 10$,
#   $L = 30$, that is $1{,}228{,}800 + 960 = 1{,}229{,}760$ — the paper's "1.2M parameters".
# * **Why "top layers" matters on a CPU.** The gradient of the loss reaches a prompt through the layers *above* it only.
#   With prompts in the top $L$ layers, the backward pass stops at layer $N - L$: the frozen bottom of the network is
#   run forward and never differentiated. We measure this in §10.5.
#
# Here is the wrapper around a LLaMA attention (`minipeft/peft/llama_adapter.py`); the frozen attention runs unchanged
# and the gated prompt term is added through the same output projection:

# %%
from minipeft.core import show_source
from minipeft.peft import llama_adapter

show_source(llama_adapter.AdaptedAttention.forward)

# %% [markdown]
# ## 10.2 What V2 adds
#
# LLaMA-Adapter V2 keeps v1's prompts and adds four things:
#
# 1. **Unlocked norms:** every RMSNorm weight of LLaMA trains.
# 2. **Bias tuning:** every linear layer gets a bias and a scale (the paper's Eqs. 1–2), both starting as the identity:
#
# $$
# y = W x \;\longrightarrow\; y = s \odot (W x + b), \qquad b = \mathrm{Init}(0),\ s = \mathrm{Init}(1). \tag{10.2}
# $$
#
# 3. **Early fusion:** visual tokens — a learned projection of a frozen image encoder's features — are read through
#    the same zero-init gated attention in the **early** layer(s) only, while the static prompts sit in the top
#    layers; the two never share a layer. (The released multimodal code instead *adds* the visual tokens to the static prompts of
#    the top layers, $P_l + V$, as v1 did on ScienceQA: `fusion="add"`.)
# 4. **Joint training with disjoint parameters:** image–text data trains the visual projection and the early gated
#    attention; language-only instruction data trains the late prompts, norms, biases and scales.
#
# At inference V2 can also call **expert models** (captioning, OCR) whose text output is put into the prompt — no
# training. Equation (10.2) is the whole of `BiasScaleLinear`; the visual tokens come from `VisualProjection`:

# %%
show_source(llama_adapter.BiasScaleLinear.forward)

# %%
from minipeft.multimodal import VisualProjection

show_source(VisualProjection.forward)

# %% [markdown]
# `parameter_groups(handle)` returns V2's two disjoint groups; which tensors land in which group depends on the fusion:

# %%
show_source(llama_adapter.parameter_groups)

# %% [markdown]
# ## 10.3 The papers' parameter counts, reproduced without weights
#
# `count_llama_adapter_parameters` builds the model on PyTorch's **meta device** (shapes only, no memory — LLaMA-65B
# takes a fraction of a second), applies the method and counts its trainable tensors by kind. The counts are those of
# the real code, not of a formula.

# %%
from minipeft.peft.llama_adapter import count_llama_adapter_parameters

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "vocab_size": 32000}
LLAMA_65B = {"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80, "num_attention_heads": 64,
             "vocab_size": 32000}
v1_7b = count_llama_adapter_parameters(LLAMA_7B, adapter_len=10, adapter_layers=30)
v2_65b = {side: count_llama_adapter_parameters(LLAMA_65B, adapter_len=10, adapter_layers=30, v2=True, scale_on=side)
          for side in ("input", "output")}
v2_7b = {side: count_llama_adapter_parameters(LLAMA_7B, adapter_len=10, adapter_layers=30, v2=True, scale_on=side)
         for side in ("input", "output")}


def bias_scale_norms(counts):
    """V2's "unlocked" parameters: biases + scales + norms (the prompts come on top)."""
    return counts["biases"] + counts["scales"] + counts["norms"]


# %%
# NBVAL_CHECK_OUTPUT
print(f"v1 on LLaMA-7B (K=10, L=30): prompts {v1_7b['prompts']:,} + gates {v1_7b['gates']:,} = {v1_7b['total']:,} "
      f"({100 * v1_7b['total'] / v1_7b['base_model']:.3f}% of {v1_7b['base_model']:,})")
for name, counts in (("LLaMA-65B", v2_65b), ("LLaMA-7B", v2_7b)):
    for side in ("input", "output"):
        c = counts[side]
        print(f"V2 on {name}, scale on the {side:6} side: biases {c['biases']:,} + scales {c['scales']:,} + norms "
              f"{c['norms']:,} = {bias_scale_norms(c):,} ({100 * bias_scale_norms(c) / c['base_model']:.3f}%); "
              f"with the prompts {c['total']:,}")

# %% [markdown]
# * **v1: 1,229,760 — the paper's "1.2M", exactly** ($10 \cdot 30 \cdot 4096 + 30 \cdot 32$).
# * **V2: "14M parameters over LLaMA"** (abstract) is the LLaMA-65B chatbot's biases + scales + norms. With the
#   official chat-65B code's *input-channel* scales, $80(13 \cdot 8192 + 3 \cdot 22016) + 8192 = 13{,}811{,}712 \approx
#   14$M; the paper's own equation (10.2) scales the *output* channels and gives 14,917,632 — also "≈ 14M" if rounded
#   down, 15M if rounded. The library documents both (`scale_on="input"` / `"output"`, paper-vs-code note 6).
# * The paper also says bias tuning "only accounts for 0.04% (∼5M)" of LLaMA-7B. Our 7B counts match the percentage
#   (2.76M = 0.041 %, 2.99M = 0.044 %), not the "∼5M": 0.04 % of 6.7B is 2.7M, so the paper's two numbers disagree
#   with each other.
#
# ## 10.4 SmolLM2, and the defining checks
#
# We load the frozen SmolLM2-135M-Instruct (30 layers, $C = 576$, 9 query and 3 key/value heads) and a text batch,
# then apply v1 and V2 (both fusions, with an image given) and compare logits with the base model's. Zero gates, zero
# biases and unit scales must give **exactly** the base model — `max|diff| == 0`, not "close".

# %%
import torch
import torch.nn.functional as F

from minipeft.core import Stopwatch, count_parameters
from minipeft.models import generate_answers, load_smollm2, tokenize_chat_pairs

torch.manual_seed(SEED)
llm, tokenizer = load_smollm2()
SYSTEM = "Be brief."  # a short system prompt: fewer tokens per example than SmolLM2's default one
check_batch = tokenizer(["What is the capital of France?", "The town sits at the edge of a wide river."],
                        return_tensors="pt", padding=True)
with torch.no_grad():
    base_logits = llm(**check_batch).logits
N, C, H = llm.config.num_hidden_layers, llm.config.hidden_size, llm.config.num_attention_heads
fake_image = torch.randn(2, 1280)  # any features: at init the gate is closed, so they must not matter
variants = {
    "v1": llama_adapter.LlamaAdapterConfig(adapter_len=SIZES.v1_len, adapter_layers=SIZES.v1_layers),
    "V2 early": llama_adapter.LlamaAdapterV2Config(adapter_len=10, adapter_layers=SIZES.vqa_layers, visual_dim=1280,
                                                    visual_len=10, fusion="early"),
    "V2 add": llama_adapter.LlamaAdapterV2Config(adapter_len=10, adapter_layers=SIZES.vqa_layers, visual_dim=1280,
                                                  visual_len=10, fusion="add"),
}
checks = {}
for name, config in variants.items():
    handle = llama_adapter.apply(llm, config)
    with torch.no_grad():
        if handle.has_visual:
            with handle.visual_features(fake_image):
                logits = llm(**check_batch).logits
        else:
            logits = llm(**check_batch).logits
    groups = llama_adapter.parameter_groups(handle, names=True)
    checks[name] = {"diff": (logits - base_logits).abs().max().item(),
                    "trainable": count_parameters(llm, trainable_only=True),
                    "groups": {k: len(v) for k, v in groups.items()},
                    "disjoint": not set(groups["image_text"]) & set(groups["language"]),
                    "complete": set(groups["image_text"]) | set(groups["language"]) == set(handle.state_dict())}
    handle.undo()
with torch.no_grad():
    undo_diff = (llm(**check_batch).logits - base_logits).abs().max().item()

# %% [markdown]
# The closed forms at SmolLM2's shape. Each decoder layer has seven linear layers whose output widths sum to
# $576 + 192 + 192 + 576 + 1536 + 1536 + 576 = 5184$ (grouped-query attention makes $k$ and $v$ 192 wide), and
# $2N + 1 = 61$ RMSNorms of width 576; `VisualProjection(1280, 576, 10)` has
# $1280 \cdot 576 + 10 \cdot 576 + 5 \cdot 576$.

# %%
# NBVAL_CHECK_OUTPUT
L1, L2 = SIZES.v1_layers, SIZES.vqa_layers
visual = VisualProjection.count(1280, C, 10)
bias_scale_norm = 2 * N * 5184 + (2 * N + 1) * C
closed_form = {
    "v1": 10 * L1 * C + L1 * H,
    "V2 early": 10 * L2 * C + L2 * H + H + bias_scale_norm + visual,  # + the gates of the one visual layer
    "V2 add": 10 * L2 * C + L2 * H + bias_scale_norm + visual,
}
for name, check in checks.items():
    print(f"{name:8}: max|logits - base| at init = {check['diff']} | trainable {check['trainable']:,} "
          f"(closed form {closed_form[name]:,}, equal: {check['trainable'] == closed_form[name]}) | "
          f"groups {check['groups']} disjoint: {check['disjoint']}, complete: {check['complete']}")
print(f"after undo(): max|logits - base| = {undo_diff}")

# %% [markdown]
# v1 trains 0.09 % of SmolLM2; V2 a little under 1 %, of which two thirds are the visual projection. With
# `fusion="early"` the image–text group is the projection plus the bottom layer's 9 gates; with `fusion="add"` it is
# the projection plus every prompt and gate, and the language group keeps only biases, scales and norms.
#
# ## 10.5 v1: instruction tuning SmolLM2, cheaply
#
# The task is chapter 3's: 172 generated questions answered in a robot persona (*"Beep boop! … Have a logical day,
# human."*); held-out questions test whether the style generalises. First, what does the top-$L$ placement save? We
# time one forward and one backward pass of a training batch with prompts in the top 5, 15 and all 30 layers. The
# loss counts only the answer tokens, so we apply the output layer (a 576 × 49,152 matrix, a fifth of the model's
# arithmetic) only at those positions.

# %%
from torch.utils.data import default_collate

from minipeft.datasets import follows_persona, make_instructions
from minipeft.datasets.instructions import OPEN_QUESTIONS

train_pairs = make_instructions("train", seed=SEED)
test_pairs = make_instructions("test", seed=SEED)[: SIZES.persona_questions]
questions = [p.question for p in test_pairs] + OPEN_QUESTIONS[:4]
persona_examples = tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in train_pairs], max_length=64,
                                       system=SYSTEM)
heldout_batch = default_collate(tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in
                                                                make_instructions("test", seed=SEED)],
                                                    max_length=64, system=SYSTEM))


def answer_loss(model, batch):
    """Mean cross-entropy on the answer tokens; the output layer runs only where a label is."""
    length = int(batch["attention_mask"].sum(1).max())  # drop the shared right padding
    hidden = model.model(input_ids=batch["input_ids"][:, :length],
                         attention_mask=batch["attention_mask"][:, :length]).last_hidden_state  # (B, T, C)
    targets = batch["labels"][:, 1:length]  # position t predicts token t + 1
    keep = targets != -100
    return F.cross_entropy(model.lm_head(hidden[:, :-1][keep]).float(), targets[keep])  # (n_answer, V) logits


timing_batch = default_collate(persona_examples[: SIZES.v1_batch])
step_times = {}
for layers in (5, 15, 30):
    handle = llama_adapter.apply(llm, llama_adapter.LlamaAdapterConfig(adapter_len=SIZES.v1_len, adapter_layers=layers))
    with torch.autocast("cpu", dtype=torch.bfloat16), Stopwatch() as forward:
        loss = answer_loss(llm, timing_batch)
    with Stopwatch() as backward:
        loss.backward()
    step_times[layers] = (count_parameters(llm, trainable_only=True), forward.seconds, backward.seconds)
    handle.undo()
for layers, (trainable, fwd, bwd) in step_times.items():
    print(f"prompts in the top {layers:2} layers: {trainable:>7,} parameters | forward {fwd:.2f} s | "
          f"backward {bwd:.2f} s")

# %% [markdown]
# Every layer runs forward in all three (the forward pass grows only a little with $L$: each adapted layer recomputes
# its queries and reads its prompt), but the backward pass grows in proportion to $L$, because autograd differentiates
# only the layers above the lowest prompt. (Timings are on a shared CPU: read the trend, not the digits.) We train
# with the prompts in the top `SIZES.v1_layers` layers (20 of 30 at `ci` scale). The model's answers before training:

# %%
llm.eval()
with torch.no_grad():
    heldout_before = answer_loss(llm, heldout_batch).item()  # all held-out persona pairs
with Stopwatch() as generation:
    before = generate_answers(llm, tokenizer, questions, max_new_tokens=28, system=SYSTEM)
for question, answer in zip(questions, before):
    print(f"Q: {question}\nA: {answer}\n")
print(f"persona followed: {sum(map(follows_persona, before))}/{len(before)} ({generation.seconds:.1f} s)")

# %%
from minipeft.core import TrainConfig, train

v1_handle = llama_adapter.apply(llm, variants["v1"])
v1_config = TrainConfig(steps=SIZES.v1_steps, batch_size=SIZES.v1_batch, lr=SIZES.v1_lr, warmup_steps=2, seed=SEED,
                        device="cpu", amp=True)
v1_history = train(llm, persona_examples, answer_loss, v1_config)
v1_trainable = count_parameters(llm, trainable_only=True)
print(f"loss {v1_history.loss[0]:.3f} → {v1_history.loss[-1]:.3f} in {v1_history.wall_time:.0f} s "
      f"({v1_history.wall_time / SIZES.v1_steps:.2f} s/step), {v1_trainable:,} trainable parameters")

# %%
import matplotlib.pyplot as plt

llm.eval()
with torch.no_grad():
    heldout_after = answer_loss(llm, heldout_batch).item()
after = generate_answers(llm, tokenizer, questions, max_new_tokens=28, system=SYSTEM)
for question, old, new in zip(questions, before, after):
    print(f"Q: {question}\n  before: {old}\n  after : {new}\n")
persona_before, persona_after = sum(map(follows_persona, before)), sum(map(follows_persona, after))
gates = torch.stack([wrapper.adaption_gate.detach().tanh().abs().mean() for _, wrapper in v1_handle.attention])
print(f"persona followed: {persona_before}/{len(questions)} before → {persona_after}/{len(questions)} after")
print(f"loss on the {len(heldout_batch['labels'])} held-out persona answers: {heldout_before:.3f} → "
      f"{heldout_after:.3f} nats")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
axes[0].plot(v1_history.steps, v1_history.loss, "o-", ms=3)
axes[0].set(xlabel="step", ylabel="cross-entropy on answer tokens (nats)", yscale="log",
            title=f"LLaMA-Adapter v1 (K={SIZES.v1_len}, top L={SIZES.v1_layers}) on SmolLM2: persona")
axes[1].bar(range(N - SIZES.v1_layers, N), gates.numpy())
axes[1].set(xlabel="layer", ylabel="mean |tanh(g)| over heads", xlim=(-0.5, N - 0.5),
            title="How far each layer's gate opened (0 at init)")
plt.tight_layout()
plt.show()
v1_handle.undo()

# %% [markdown]
# The gates opened from exactly zero (the top layers' the widest); the prompts learned the wrapper. The checks below
# are this section's claims: the loss on *held-out* persona answers falls by more than two nats, and the persona,
# never followed before, is followed on about half or more of the questions after 20 steps (we measured 6–7 of 10
# across runs; a generation cut at 28 tokens or a missing "Beep boop!" counts as a miss). Compared with LoRA in
# chapter 3, the facts inside the wrapper suffer more: a prompt can only *steer* the frozen layers, and 20 steps at
# this learning rate fit the template hard. Exercise 1 looks at that.

# %%
assert heldout_after < heldout_before - 2.0, (heldout_before, heldout_after)
assert persona_before == 0 and persona_after >= 4, (persona_before, persona_after)

# %% [markdown]
# ## 10.6 V2 on easy-VQA: the data, the cached image features, and a blind baseline
#
# easy-VQA {cite}`zhou2020easyvqa` has 64×64 images of one coloured shape and questions of three kinds: the colour
# (8 answers), the shape (3), and yes/no questions ("is there a red shape?", "is no triangle present?"). Yes/no
# questions are 70 % of the data, so we sample the same number of each kind.
#
# **The encoder is frozen, so its features are computed once.** EfficientNet-Lite0 was trained at 224 px, but our
# images are 64 px: upsampling them to 224 px multiplies the encoder's work by $(224/64)^2 \approx 12$ and adds no
# information. We time a few sizes (on 8 images, so per-call overhead blurs the small sizes), then cache the
# features at `SIZES.image_size` for every image we use: the pooled vector and the grid ($3 \times 3$ at 96 px). At
# 96 px a linear probe on the pooled features names the colour and the shape well (§10.8) — enough for this task.

# %%
import random

from minipeft.datasets import COLORS, SHAPES, load_shapes
from minipeft.models import load_efficientnet_lite0

image_encoder, preprocess = load_efficientnet_lite0()
train_shapes = load_shapes("train", limit=SIZES.train_images, seed=SEED)
test_shapes = load_shapes("test", limit=SIZES.test_images, seed=SEED)

encode_seconds = {}
with torch.no_grad():
    for size in (64, 96, 224):
        batch = preprocess(test_shapes.images[:8], size=size)
        with Stopwatch() as watch:
            image_encoder(batch)
        encode_seconds[size] = watch.seconds / 8


def image_features(images, size):
    """Frozen EfficientNet features of (N, 3, 64, 64) images: {"pooled": (N, 1280), "tokens": (N, n, 1280)}."""
    with torch.no_grad():
        out = image_encoder(preprocess(images, size=size))
    return {"pooled": out.pooled, "tokens": out.tokens}


with Stopwatch() as caching:
    train_features = image_features(train_shapes.images, SIZES.image_size)
    test_features = image_features(test_shapes.images, SIZES.image_size)
print("seconds per image:", {f"{s} px": round(t, 4) for s, t in encode_seconds.items()})
print(f"cached {len(train_shapes.images) + len(test_shapes.images)} images at {SIZES.image_size} px in "
      f"{caching.seconds:.1f} s: pooled {tuple(train_features['pooled'].shape)}, "
      f"grid {tuple(train_features['tokens'].shape)}")

# %% [markdown]
# **How small may the input be?** The features only need to carry colour and shape. A linear probe (logistic
# regression on the pooled vector, trained in a fraction of a second) tells us how well each input size does:

# %%
def linear_probe(features, labels, classes, steps=200):
    """Logistic regression on standardised pooled features (full batch, Adam): returns a predict function."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    weight = torch.zeros(features.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy((features - mean) / std @ weight + bias, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda x: ((x - mean) / std @ weight + bias).argmax(1)


def probe_accuracy(train_pooled, test_pooled):
    torch.manual_seed(SEED)
    colour = linear_probe(train_pooled, train_shapes.color, len(COLORS))(test_pooled)
    shape = linear_probe(train_pooled, train_shapes.shape, len(SHAPES))(test_pooled)
    return {"colour": (colour == test_shapes.color).float().mean().item(),
            "shape": (shape == test_shapes.shape).float().mean().item()}


probes = {64: probe_accuracy(image_features(train_shapes.images, 64)["pooled"],
                             image_features(test_shapes.images, 64)["pooled"]),
          SIZES.image_size: probe_accuracy(train_features["pooled"], test_features["pooled"])}
for size, result in probes.items():
    print(f"{size:3} px: linear-probe accuracy on the test images: colour {result['colour']:.2f}, "
          f"shape {result['shape']:.2f}")

# %% [markdown]
# Shape survives any size; colour is what a smaller input costs (a 64-px image seen at 64 px gives the encoder only a
# 2 × 2 grid). We keep `SIZES.image_size` — 96 px at `ci` scale, a fraction of the cost of 224 px.

# %% [markdown]
# **Questions, answers, and how we score them.** The prompt is plain text,
# `"Question: what color is the shape?\nAnswer:"`, and the answer is one word. Every answer's first token (with its
# leading space) is different within its kind (" teal" is two tokens, " te" + "al", but no other colour starts with
# " te"), so **one forward pass** scores all candidates: the
# model's answer is the candidate of the question's kind with the highest log-probability at the last position. We
# train the same quantity: cross-entropy among the candidates. The model thus never has to learn the answer *format*
# — only to look at the image.
#
# **The blind baseline.** The best a model can do *without* the image is to give, for each question text, its most
# frequent training answer (e.g. the commonest colour). We compute that prior from the training questions: any
# accuracy above it comes from the image.

# %%
from collections import Counter, defaultdict

KINDS = {"colour": COLORS, "shape": SHAPES, "yes/no": ["yes", "no"]}
ANSWERS = [answer for kind in KINDS.values() for answer in kind]
ANSWER_TOKENS = torch.tensor([tokenizer(" " + a, add_special_tokens=False)["input_ids"][0] for a in ANSWERS])
KIND_MASK = torch.tensor([[answer in kind for answer in ANSWERS] for kind in KINDS.values()])  # (3 kinds, 13)


def kind_of(answer):
    return next(k for k, answers in KINDS.items() if answer in answers)


def sample_questions(shapes, per_kind, seed):
    """The same number of (question, answer, image) triples of each kind."""
    by_kind = defaultdict(list)
    for triple in shapes.questions:
        by_kind[kind_of(triple[1])].append(triple)
    rng = random.Random(seed)
    chosen = [t for kind in KINDS for t in rng.sample(by_kind[kind], min(per_kind, len(by_kind[kind])))]
    rng.shuffle(chosen)
    return chosen


def vqa_prompt(question, caption=None):
    return (f"The image shows {caption}.\n" if caption else "") + f"Question: {question}\nAnswer:"


def encode_vqa(triples, captions=None, max_length=32):
    """Right-padded prompts, the answer's index among ANSWERS, its kind, and the image's row in the feature cache."""
    examples = []
    for question, answer, image in triples:
        prompt = vqa_prompt(question, captions[image] if captions else None)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        padding = max_length - len(ids)
        examples.append({"input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * padding),
                         "attention_mask": torch.tensor([1] * len(ids) + [0] * padding),
                         "answer": torch.tensor(ANSWERS.index(answer)),
                         "kind": torch.tensor(list(KINDS).index(kind_of(answer))), "image": torch.tensor(image)})
    return examples


def candidate_logits(model, batch):
    """Logits of the 13 answers' first tokens at each prompt's last position; other kinds' answers masked out."""
    length = int(batch["attention_mask"].sum(1).max())
    mask = batch["attention_mask"][:, :length]
    hidden = model.model(input_ids=batch["input_ids"][:, :length], attention_mask=mask).last_hidden_state  # (B, T, C)
    last = hidden[torch.arange(len(hidden)), mask.sum(1) - 1]  # (B, C): the position after "Answer:"
    logits = last.float() @ model.lm_head.weight[ANSWER_TOKENS].float().T  # (B, 13)
    return logits.masked_fill(~KIND_MASK[batch["kind"]], float("-inf"))


train_triples = sample_questions(train_shapes, SIZES.train_per_kind, SEED)
test_triples = sample_questions(test_shapes, SIZES.test_per_kind, SEED + 1)
train_vqa, test_vqa = encode_vqa(train_triples), encode_vqa(test_triples)

prior = defaultdict(Counter)
for question, answer, _ in train_shapes.questions:
    prior[question][answer] += 1
kind_prior = {kind: Counter(a for _, a, _ in train_shapes.questions if a in answers) for kind, answers in KINDS.items()}


def blind_answer(question, answer_kind):
    counts = prior.get(question) or kind_prior[answer_kind]
    return counts.most_common(1)[0][0]


def accuracy_by_kind(predicted, triples):
    hits = defaultdict(list)
    for prediction, (_, answer, _) in zip(predicted, triples):
        hits[kind_of(answer)].append(prediction == answer)
    result = {kind: sum(h) / len(h) for kind, h in hits.items()}
    result["all"] = sum(map(sum, hits.values())) / len(triples)
    return result


blind = accuracy_by_kind([blind_answer(q, kind_of(a)) for q, a, _ in test_triples], test_triples)
print(f"{len(train_triples)} training and {len(test_triples)} test questions; examples:")
for question, answer, image in test_triples[:4]:
    print(f"  {vqa_prompt(question)!r} → {answer!r}  (test image {image})")
print("blind baseline (the best answer for each question text):", {k: round(v, 3) for k, v in blind.items()})

# %% [markdown]
# ## 10.7 Train V2: two fusions, and disjoint groups versus everything
#
# Three runs with the same data, steps, batch and learning rate, each on a fresh V2 (the previous one undone):
#
# | run | fusion | what the image–text (VQA) data trains |
# |---|---|---|
# | **early, disjoint** | the paper: visual tokens read by the bottom layer only | the image–text group only: projection + bottom-layer gates |
# | **add, disjoint** | the released code: visual tokens added to the top $L$ layers' prompts | the image–text group only: projection + every prompt and gate |
# | **add, single-stage** | as above | *every* V2 parameter: the image–text group **and** the language group (norms, biases, scales) |
#
# At `ci` scale the single-stage run is shorter (`SIZES.single_stage_steps`): what it does to the text-only model shows
# within a few steps, and each of its steps costs more (the biases of every layer need a gradient).
#
# Training only one group means freezing the other (`requires_grad_(False)`), so the optimiser never sees it. The
# features of each batch are looked up in the cache and given to the model with `handle.set_visual_features`.
# After each run we measure VQA accuracy and what the run did to the **text-only** model: the change of the logits
# on a text batch and the loss on a paragraph of ordinary English.

# %%
PARAGRAPH = ("The town sits at the edge of a wide river. Every morning, fishermen push their boats into the water "
             "and the market fills with the smell of bread. Children walk to school along the old stone bridge.")
paragraph_ids = tokenizer(PARAGRAPH, return_tensors="pt")["input_ids"]


def paragraph_loss(model):
    with torch.no_grad():
        return model(input_ids=paragraph_ids, labels=paragraph_ids).loss.item()


def rows(features, index):
    return {key: value[index] for key, value in features.items()}


def predict_vqa(model, handle, examples, features, batch_size=50):
    """The predicted answer of each example (with its image, when the model has a visual path)."""
    predictions = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(examples), batch_size):
            batch = default_collate(examples[start:start + batch_size])
            if handle is not None:
                handle.set_visual_features(rows(features, batch["image"]))
            predictions += [ANSWERS[i] for i in candidate_logits(model, batch).argmax(-1).tolist()]
    if handle is not None:
        handle.set_visual_features(None)
    return predictions


base_paragraph = paragraph_loss(llm)
base_predictions = predict_vqa(llm, None, test_vqa, None)
base_vqa = accuracy_by_kind(base_predictions, test_triples)
print("frozen SmolLM2, no image:", {k: round(v, 3) for k, v in base_vqa.items()})

RUNS = {"early, disjoint": ("early", "image_text"), "add, disjoint": ("add", "image_text"),
        "add, single-stage": ("add", "all")}
vqa_runs = {}
for run_name, (fusion, trained) in RUNS.items():
    torch.manual_seed(SEED)  # the same initial prompts and projection, whatever ran before
    handle = llama_adapter.apply(llm, variants[f"V2 {fusion}"])
    groups = llama_adapter.parameter_groups(handle)
    if trained == "image_text":
        for parameter in groups["language"]:
            parameter.requires_grad_(False)

    def vqa_loss(model, batch, handle=handle):
        handle.set_visual_features(rows(train_features, batch["image"]))
        return F.cross_entropy(candidate_logits(model, batch), batch["answer"])

    steps = SIZES.vqa_steps if trained == "image_text" else SIZES.single_stage_steps
    config = TrainConfig(steps=steps, batch_size=SIZES.vqa_batch, lr=SIZES.vqa_lr, warmup_steps=2,
                         seed=SEED, device="cpu", amp=True, progress=False)
    history = train(llm, train_vqa, vqa_loss, config)
    handle.set_visual_features(None)
    llm.eval()
    with torch.no_grad():
        text_change = (llm(**check_batch).logits - base_logits).abs().max().item()
    predictions = predict_vqa(llm, handle, test_vqa, test_features)
    vqa_runs[run_name] = {"history": history, "steps": steps, "trainable": count_parameters(llm, trainable_only=True),
                          "accuracy": accuracy_by_kind(predictions, test_triples), "predictions": predictions,
                          "text_change": text_change, "paragraph": paragraph_loss(llm)}
    run = vqa_runs[run_name]
    print(f"{run_name:17}: {run['trainable']:>9,} trained | loss {history.loss[0]:.2f} → "
          f"{sum(history.loss[-5:]) / 5:.2f} (mean of last 5) | {steps} steps, {history.wall_time / steps:.2f} s/step | "
          f"accuracy {({k: round(v, 2) for k, v in run['accuracy'].items()})}")
    if run_name == "add, disjoint":
        kept_state = {key: value.clone() for key, value in handle.state_dict().items()}  # for §10.8
    handle.undo()

# %% [markdown]
# The results side by side (accuracy on the balanced test questions; the text-only columns say what the VQA
# training did to the model *without* an image):

# %%
print(f"{'model':22} {'trained':>9} {'steps':>5} {'colour':>7} {'shape':>6} {'yes/no':>7} {'all':>6} "
      f"{'max|Δlogits| text':>18} {'paragraph loss':>15}")
def accuracy_cells(a):
    return f"{a['colour']:>7.2f} {a['shape']:>6.2f} {a['yes/no']:>7.2f} {a['all']:>6.2f}"


print(f"{'blind (question prior)':22} {0:>9,} {0:>5} {accuracy_cells(blind)}")
print(f"{'frozen SmolLM2':22} {0:>9,} {0:>5} {accuracy_cells(base_vqa)} {0:>18.4f} {base_paragraph:>15.3f}")
for run_name, run in vqa_runs.items():
    print(f"{'V2 ' + run_name:22} {run['trainable']:>9,} {run['steps']:>5} {accuracy_cells(run['accuracy'])} "
          f"{run['text_change']:>18.4f} {run['paragraph']:>15.3f}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for run_name, run in vqa_runs.items():
    smoothed = run["history"].smoothed_loss(5)
    axes[0].plot(run["history"].steps[len(run["history"].steps) - len(smoothed):], smoothed, label=run_name)
axes[0].set(xlabel="step", ylabel="candidate cross-entropy (nats, 5-step mean)",
            title="V2 on easy-VQA: training loss")
axes[0].legend()
names = ["blind", "frozen"] + list(vqa_runs)
for offset, kind in enumerate(KINDS):
    values = [blind[kind], base_vqa[kind]] + [run["accuracy"][kind] for run in vqa_runs.values()]
    axes[1].bar([i + 0.27 * (offset - 1) for i in range(len(names))], values, width=0.27, label=kind)
axes[1].set_xticks(range(len(names)), names, rotation=15)
axes[1].set(ylabel="test accuracy", ylim=(0, 1.05), title="Accuracy by question kind")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **What the table says (this run).** The *added* fusion learns to read the image within 20 steps: shape perfectly,
# colour well above the blind prior. The paper's *early* fusion, with the same budget, picked up some of the shape
# and none of the colour: a signal injected at the bottom layer must pass through 29 frozen layers and arrive in
# a form they already know how to turn into " red", whereas a prompt in the top layers sits a few layers from the
# output. (How much shape it picks up varies with the seed: 0.5–0.7 in our runs.) The paper trains early fusion on
# 567 K image–caption pairs; we give it 320 questions. No run learned the
# yes/no questions in 20 steps (they need the question's colour or shape *compared* with the image's); the blind
# prior wins there by exploiting how unevenly each question template's answers are distributed.
#
# Early fusion's reward is in the last two columns: with disjoint groups, the visual path is silent when there is no
# image, so the text-only model is **bit-for-bit** the base model (`max|Δlogits| = 0`) — image training cannot
# interfere with instruction following. The added fusion trains the static prompts, which act on every input, so
# the text-only model changes (a little, on the paragraph). Training *everything* on VQA (single-stage) moves the
# language group too, and within 10 steps the language model is wrecked: the loss on ordinary English rises by
# several nats — it has been turned into a one-word answering machine. That is the interference V2's disjoint
# groups and early fusion are designed to avoid. (Its VQA accuracy comes from half the steps of the other runs, so
# do not compare that column.) The checks:

# %%
early, added, single = (vqa_runs[name] for name in RUNS)
assert early["text_change"] == 0.0, early["text_change"]  # exact: the image path is off without an image
assert added["text_change"] > 0 and single["text_change"] > 0
assert added["accuracy"]["colour"] >= blind["colour"] + 0.1, (added["accuracy"], blind)  # uses the image
assert added["accuracy"]["shape"] >= blind["shape"] + 0.3, (added["accuracy"], blind)
assert added["accuracy"]["all"] >= early["accuracy"]["all"] + 0.1, (added["accuracy"], early["accuracy"])
assert single["paragraph"] > base_paragraph + 2.0 > added["paragraph"], (base_paragraph, added, single)

# %% [markdown]
# ## 10.8 An expert at inference: a caption in the prompt, no training
#
# V2 adds captioning or OCR "experts" at inference: their text goes into the prompt, and nothing is retrained. Our
# expert is a **linear probe on the cached EfficientNet features**, trained in a second to name the colour and the
# shape; its caption ("a red circle") is written in front of the question:
# `"The image shows a red circle.\nQuestion: …\nAnswer:"`.

# %%
with Stopwatch() as probe_time:
    torch.manual_seed(SEED)
    colour_probe = linear_probe(train_features["pooled"], train_shapes.color, len(COLORS))
    shape_probe = linear_probe(train_features["pooled"], train_shapes.shape, len(SHAPES))
    with torch.no_grad():
        colour_guess = colour_probe(test_features["pooled"])
        shape_guess = shape_probe(test_features["pooled"])
captions = [f"a {COLORS[c]} {SHAPES[s]}" for c, s in zip(colour_guess.tolist(), shape_guess.tolist())]
expert_accuracy = {"colour": (colour_guess == test_shapes.color).float().mean().item(),
                   "shape": (shape_guess == test_shapes.shape).float().mean().item()}
print(f"expert trained in {probe_time.seconds:.1f} s; caption accuracy on the test images: "
      f"colour {expert_accuracy['colour']:.2f}, shape {expert_accuracy['shape']:.2f}; e.g. {captions[:3]}")

test_captioned = encode_vqa(test_triples, captions)
kept_handle = llama_adapter.apply(llm, variants["V2 add"])  # the trained "add, disjoint" model, reloaded
kept_handle.load_state_dict(kept_state)
llm.eval()
v2_captioned = accuracy_by_kind(predict_vqa(llm, kept_handle, test_captioned, test_features), test_triples)
kept_handle.undo()  # the frozen SmolLM2 again
base_captioned = accuracy_by_kind(predict_vqa(llm, None, test_captioned, None), test_triples)
expert_table = {"frozen SmolLM2": base_vqa, "frozen SmolLM2 + caption": base_captioned,
                "V2 add, disjoint": added["accuracy"], "V2 add, disjoint + caption": v2_captioned}
print(f"{'model':28} {'colour':>7} {'shape':>6} {'yes/no':>7} {'all':>6}")
for name, a in expert_table.items():
    print(f"{name:28} {a['colour']:>7.2f} {a['shape']:>6.2f} {a['yes/no']:>7.2f} {a['all']:>6.2f}")
print("gain from the caption:", {k: round(v2_captioned[k] - added["accuracy"][k], 2) for k in v2_captioned},
      "(V2),", {k: round(base_captioned[k] - base_vqa[k], 2) for k in base_captioned}, "(frozen)")

# %% [markdown]
# A few test images with what each source says:

# %%
fig, axes = plt.subplots(1, 8, figsize=(16, 2.9))
for ax, index in zip(axes, range(0, 8 * 6, 6)):
    question, answer, image = test_triples[index]
    ax.imshow(test_shapes.images[image].permute(1, 2, 0))
    ax.set_title(f"{question}\ntruth: {answer} | V2: {added['predictions'][index]}\ncaption: {captions[image]}",
                 fontsize=7)
    ax.axis("off")
plt.suptitle("easy-VQA test images: the question, the answer, V2 (add) and the expert's caption")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Reading the expert table (this run).** The caption helps where the model's own view of the image is weak, and
# only as much as the model can *read* it. The V2 model saw the colour poorly through its visual prompt; with the
# caption, which it never saw in training, its colour accuracy rises by about a third. The frozen SmolLM2 reads the
# shape from the caption almost perfectly but the colour only partly, although the caption names it correctly 88 % of
# the time: a 135M model is not a reliable reader (and in our trials the exact wording of the prompt moved its colour
# accuracy by 20 points). Yes/no questions gain nothing: answering them needs a comparison the small model does not
# make. The expert cost a second of training on features we had cached anyway, and no training of the language
# model — V2's point. The checks (margins measured: +0.34 and +0.70):

# %%
assert expert_accuracy["colour"] >= blind["colour"] + 0.4 and expert_accuracy["shape"] >= 0.9, expert_accuracy
assert v2_captioned["colour"] >= added["accuracy"]["colour"] + 0.15, (added["accuracy"], v2_captioned)
assert base_captioned["shape"] >= base_vqa["shape"] + 0.4, (base_vqa, base_captioned)

# %% [markdown]
# ## 10.9 The papers reported / we measured
#
# | claim | source | we measured (this run) |
# |---|---|---|
# | v1 trains "1.2M parameters" (K = 10, L = 30 on LLaMA-7B) | {cite}`zhang2023llamaadapter`; reference notes §3.1 | **1,229,760** on the meta device (§10.3) — reproduced exactly; at SmolLM2 with L = 20: 115,380 |
# | v1: zero-init gating keeps the pretrained model intact at the start | {cite}`zhang2023llamaadapter` | `max|logits − base| = 0.0` at init for v1 and both V2 fusions (§10.4) |
# | V2 "merely introduc[es] 14M parameters over LLaMA" (65B chatbot) | {cite}`gao2023llamaadapterv2`, abstract | **13,811,712** with the official code's input-channel scales; 14,917,632 with the paper's output-channel Eq. (10.2) (§10.3) |
# | bias tuning is "only 0.04% (∼5M)" of LLaMA | {cite}`gao2023llamaadapterv2` §4.1 (reference notes §3.3) | 2,764,800 / 2,985,984 on LLaMA-7B; the paper's two figures disagree with each other |
# | early fusion (visual tokens only in early layers) gives "better visual knowledge incorporation" | abstract | at 20 steps the *added* fusion learned far faster (early fusion picked up some of the shape, none of the colour; §10.7); the benefit of early fusion we could measure is isolation: text-only logits bit-for-bit unchanged |
# | joint training of disjoint groups "alleviates the interference" between image–text alignment and instruction following | abstract | disjoint early: text-only change exactly 0; single-stage (everything trained on VQA): the loss on ordinary English rose by several nats within 10 steps (§10.7). The instruction-data half of the joint recipe is Exercise 3 |
# | expert models at inference "enhance its image understanding capability without incurring training costs" | abstract | a linear-probe caption raised V2's colour accuracy by about a third and the frozen model's shape accuracy from chance to near perfect (§10.8); yes/no did not gain |
#
# **Why ours differ.** The papers train LLaMA-7B/65B on 52 K instructions and 567 K image–caption pairs with CLIP
# features for epochs on 8 A100s; we train a 4-bit-quantised (then dequantised) 135M-parameter model for 20 steps on a
# CPU, with EfficientNet features of 64-px synthetic images, one seed. Our visual projection is a single attention
# step, not V2's 8 ViT blocks (library note); our V2 puts static prompts in 8 layers, not 31, and its visual prompt
# has 10 tokens, not 20. Early fusion is exactly the design that needs the most data: its signal must learn to speak
# the language of layer 0. The parameter counts are reproduced exactly because they are arithmetic, not training.
#
# ## 10.10 Pitfalls
#
# * **The prompt skips the layer's norm.** The prompt (and the visual tokens) go into `k_proj`/`v_proj` as they are,
#   without the RMSNorm the words pass through (official code, `peft`). SmolLM2's norms have very different scales at
#   the bottom and the top, so a unit-scale visual token is far louder in layer 0 than a word is:

# %%
# NBVAL_CHECK_OUTPUT
for index in (0, 1, N - SIZES.vqa_layers, N - 1):
    weight = llm.model.layers[index].input_layernorm.weight
    print(f"layer {index:2}: RMS of the attention's input-norm weight = {weight.pow(2).mean().sqrt().item():.3f} "
          f"(a LayerNorm-ed visual token has RMS 1)")

# %% [markdown]
# * **A model carries one visual projection.** `apply` refuses a second V2 on the same model (and any method on
#   already-wrapped attention): `undo()` the first handle. To come back to a trained model, keep
#   `handle.state_dict()` and `load_state_dict` it into a fresh `apply` — as §10.8 does.
# * **The image stays set.** `set_visual_features` holds until changed; a later text-only call would still see the
#   last image. Clear it (`None`) or use `with handle.visual_features(f): ...`.
# * **Freeze a group before `train`.** The optimiser is built from the parameters that require a gradient when
#   `train` starts; set `requires_grad_(False)` on the other group first (or pass `groups=`).
# * **Padding side.** The prompt's keys have no position but the queries are rotated by their absolute position, so
#   left padding would shift what the gated term sees. We right-pad and read the last real position.
# * **Multi-token answers.** Scoring by the first token works only because the candidates of each kind start with
#   different tokens (" teal" is " te" + "al"). Check that before you trust such a metric.
# * **`merge()` raises.** A prompt is an extra input to attention, not a weight change. V2's biases and scales *can*
#   be folded in: `handle.merge_linear()`.
#
# ## 10.11 Exercises
#
# 1. Train v1 with the prompts in the top 10, 20 and 30 layers for the same number of steps. Plot persona adherence
#    and seconds per step against $L$. Where is the knee? (Chapter 3's LoRA is the reference for the facts.)
# 2. Make early fusion learn. (a) Build `VisualProjection(1280, 576, 10)` yourself, set its `out_norm.weight` to layer
#    0's input-norm weight (see §10.10), pass it as `visual_projection=` and retrain. (b) Try `visual_layers=4`.
#    (c) Train for 5× more steps. Which helps, and how far from the added fusion does each get?
# 3. Complete V2's joint recipe: after the "add, disjoint" run, train the *language* group on the persona data
#    (text only, no image) and measure VQA accuracy again. Then do the same after the "early, disjoint" run. Which
#    fusion keeps its VQA accuracy, and why does early fusion make the answer "exactly" for one direction only?
# 4. Replace the linear-probe expert by a deterministic tool: the most frequent non-background colour of the pixels,
#    and the fraction of the bounding box the shape fills (a circle fills π/4, a triangle about ½). How accurate is
#    it, and how much does its caption help?
# 5. Compare `gate="raw"` with `gate="tanh"`, and one gate per layer (`gate_per_head=False`, `peft`'s choice), on
#    the persona task.
# 6. Fold the biases and scales of a trained V2 into the weights with `handle.merge_linear()`; check that the outputs
#    do not change, and explain why `handle.merge()` must refuse.
#
# ## 10.12 Record what this run measured

# %%
from minipeft.core.results import record

vqa_metrics = {f"VQA {kind} acc, {name}": (100 * run["accuracy"][kind], "%")
               for name, run in vqa_runs.items() for kind in ("colour", "shape", "yes/no")}
record(
    "10_llama_adapter", "LLaMA-Adapter v1 and V2: a persona, then easy-VQA with early and added fusion",
    {
        "v1 persona followed after": (100 * persona_after / len(questions), "%"),
        "v1 persona followed before": (100 * persona_before / len(questions), "%"),
        "v1 trainable params (SmolLM2, L=%d)" % SIZES.v1_layers: (v1_trainable, "params"),
        "v1 train time": (v1_history.wall_time, "s"),
        "v1 backward top-5 / all-30 layers": (step_times[5][2] / step_times[30][2], "ratio"),
        "v1 params LLaMA-7B (meta device)": (v1_7b["total"], "params"),
        "V2 bias+scale+norm LLaMA-65B, input scale": (bias_scale_norms(v2_65b["input"]), "params"),
        "V2 bias+scale+norm LLaMA-65B, output scale": (bias_scale_norms(v2_65b["output"]), "params"),
        "VQA colour acc, blind prior": (100 * blind["colour"], "%"),
        "VQA shape acc, blind prior": (100 * blind["shape"], "%"),
        "VQA yes/no acc, blind prior": (100 * blind["yes/no"], "%"),
        **vqa_metrics,
        "VQA all acc, add + caption expert": (100 * v2_captioned["all"], "%"),
        "VQA all acc, frozen + caption expert": (100 * base_captioned["all"], "%"),
        "expert caption colour acc": (100 * expert_accuracy["colour"], "%"),
        "probe colour acc at 64 px": (100 * probes[64]["colour"], "%"),
        "probe colour acc at image_size": (100 * probes[SIZES.image_size]["colour"], "%"),
        "text-only max|dlogits|, early disjoint": (early["text_change"], "logit"),
        "paragraph loss, single-stage": (single["paragraph"], "nats/token"),
        "paragraph loss, base": (base_paragraph, "nats/token"),
        "feature cache time": (caching.seconds, "s"),
    },
    trainable_parameters=v1_trainable,
    paper_claims=[
        {"claim": "LLaMA-Adapter v1: 1.2M learnable parameters on LLaMA-7B (K=10, L=30)",
         "source": "Zhang et al. 2023, arXiv:2303.16199 (reference notes section 3.1)"},
        {"claim": "LLaMA-Adapter V2: open-ended multi-modal instructions with 14M parameters over LLaMA",
         "source": "Gao et al. 2023, arXiv:2304.15010, abstract"},
    ],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s")

# %% [markdown]
# ## References
#
# The works cited in this chapter are listed, with the whole book's, in the {doc}`../book/bibliography`.

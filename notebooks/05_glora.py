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
# # 5. GLoRA: one layer that contains many methods, and a search for which one each layer uses
#
# LoRA (chapter 3) adds a low-rank matrix to a weight. (IA)³ rescales activations, bias tuning shifts them, prompt
# tuning adds input vectors. **Generalized LoRA** (GLoRA) {cite}`chavan2023glora` writes all of these as one
# *unified layer* with five support tensors, lets **every layer choose its own combination**, and picks the
# combination with an evolutionary search under a parameter budget. Because every choice is a function of the
# weights only, the chosen model folds back into ordinary linear layers: *"our structural re-parameterization
# design ensures that GLoRA incurs no extra inference cost"* (abstract).
#
# We put GLoRA and LoRA on the MiniLM intent classifier of chapters 1 and 3 with **the same parameter budget**,
# train a GLoRA *supernet*, search it on a validation split of the training templates, fine-tune the winner, draw
# the configuration it found, and check that the merged model is a plain `BertModel` with the same outputs and the
# base model's speed.
#
# **Learning goals.** (a) Write the GLoRA layer and say which known methods are special cases of it; (b) count the
# parameters a *path* uses; (c) explain weight entanglement and why a supernet can be searched without retraining;
# (d) run a budget-constrained evolutionary search honestly (validation data, never the test sets); (e) show that
# structural re-parameterisation leaves an ordinary, equally fast network.

# %% tags=["parameters"]
import time
from dataclasses import dataclass

import minipeft

CHAPTER_START, CHAPTER_CPU_START = time.perf_counter(), time.process_time()
SCALE = minipeft.scale()  # "ci" on a CPU (≈2 minutes), "full" on a GPU; set MINIPEFT_SCALE to choose
SEED = 0


@dataclass
class Sizes:
    rank: int  # LoRA's rank on query/value; its parameter count is GLoRA's budget
    lora_steps: int
    lora_lr: float
    supernet_steps: int  # GLoRA supernet training: a random path per layer at every step
    supernet_lr: float
    val_per_class: int  # validation sentences per intent (training templates, new draws) for the search
    population: int  # evolutionary search (the released code's defaults are 50 / 20 / 10 / 25 / 25)
    generations: int
    parents: int
    mutations: int
    crossovers: int
    finetune_steps: int  # short fine-tune of the searched paths, starting from the supernet's weights
    finetune_lr: float
    latency_repeats: int


SIZES = {
    "ci": Sizes(rank=4, lora_steps=60, lora_lr=5e-3, supernet_steps=80, supernet_lr=1e-2, val_per_class=8,
                population=8, generations=3, parents=4, mutations=4, crossovers=4, finetune_steps=30,
                finetune_lr=5e-3, latency_repeats=10),
    "full": Sizes(rank=4, lora_steps=200, lora_lr=2e-3, supernet_steps=400, supernet_lr=5e-3, val_per_class=16,
                  population=50, generations=20, parents=10, mutations=25, crossovers=25, finetune_steps=100,
                  finetune_lr=2e-3, latency_repeats=30),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 5.1 The idea
#
# A frozen linear layer computes $y = W_0 x + b_0$ with $W_0 \in \mathbb{R}^{d_{out} \times d_{in}}$. GLoRA
# replaces its weight and bias by
#
# $$
# W' = W_0 + W_0 \odot A + B, \tag{5.1}
# $$
#
# $$
# b' = b_0 + b_0 \odot D + E + W_0 C, \tag{5.2}
# $$
#
# $$
# y = W' x + b', \tag{5.3}
# $$
#
# with five **support tensors**: $A$ *scales* the weight, $B$ *shifts* it, $C \in \mathbb{R}^{d_{in}}$ is a
# *prompt* that the layer maps into its bias, $D$ scales the bias and $E$ shifts it. (The paper prints the layer as
# $f(x) = (W_0 + W_0A + B)x + CW_0 + Db_0 + E + b_0$; the released code, HF `peft` and we compute (5.1)–(5.2).)
# Each support tensor may take one of a few **shapes**, and the cost of each is the number of values it reads:
#
# | choice | A, B ($d_{out} \times d_{in}$) | C ($d_{in} \times 1$) | D, E ($d_{out}$) |
# |---|---|---|---|
# | `lora` | $X_d X_u$, cost $r(d_{out} + d_{in})$ | $X_d X_u$, cost $r(d_{in} + 1)$ | — |
# | `vector` | one number per row, cost $d_{out}$ | cost $d_{in}$ | cost $d_{out}$ |
# | `constant` | one number, cost 1 | — | cost 1 |
# | `none` | absent, cost 0 | cost 0 | cost 0 |
#
# A layer's combination of choices is its **path**: $4 \cdot 4 \cdot 3 \cdot 3 \cdot 3 = 432$ paths per layer.
# Known methods are paths. **LoRA** is $B$ = `lora` and everything else `none` (without LoRA's $\alpha/r$ factor);
# an (IA)³-like output scaling is $A$ = `vector` with $D$ = `vector`; bias tuning is $E$ = `vector`.
#
# **Weight entanglement and the supernet.** Each support tensor owns *one* pair of factors $X_d, X_u$, and the
# cheaper choices are slices of them: `vector` is the first column of $X_d$, `constant` its first entry. All 432
# paths of a layer therefore share the same numbers. Training samples a random path for every layer at every step,
# so all sub-networks learn together — a **supernet**. All $X_d$ (and $D$, $E$) start at zero, so *every* path
# starts exactly at the pretrained model.
#
# **Search under a budget.** With $L$ wrapped layers, $p_l$ the path of layer $l$ and $\mathrm{cost}(p_l)$ from the
# table, GLoRA picks
#
# $$
# p^\star = \arg\max_{p_1, \dots, p_L} \; \mathrm{fitness}(p_1, \dots, p_L)
# \quad \text{subject to} \quad \sum_{l=1}^{L} \mathrm{cost}(p_l) \le \text{budget}, \tag{5.4}
# $$
#
# with an evolutionary search whose fitness is accuracy on held-out data, using the supernet's weights as they
# are (no retraining per candidate).
#
# **Structural re-parameterisation.** $W'$ and $b'$ in (5.1)–(5.2) do not depend on $x$. Once the path is fixed,
# they are computed once and written into the linear layer: the fine-tuned network has exactly the pretrained
# architecture, whatever each layer chose.
#
# Here is the layer's math in `minipeft/peft/glora.py` — the entangled support tensor and equations (5.1)–(5.2):

# %%
from minipeft.book import show_source
from minipeft.peft import glora

show_source(glora.GloraLowRank)

# %%
show_source(glora.GloraLinear.effective_weight_and_bias)

# %% [markdown]
# **Write it yourself.** For one fixed path, equations (5.1)–(5.3) are a few lines of plain tensor algebra. We pick a
# path that uses all five support tensors in three different shapes — $A$ `vector`, $B$ `lora`, $C$ `lora`, $D$
# `vector`, $E$ `constant` — wrap a small random `nn.Linear` with the library's `GloraLinear`, give every support
# tensor random values (their down factors start at zero, and a check on zeros could not fail), and compute the
# layer's output ourselves from the same tensors. Then we merge the library layer and compare the weight and bias it
# wrote into the `nn.Linear` with our $W'$ and $b'$.

# %%
import torch
from torch import nn


def my_glora_linear(x, W0, b0, A_down, B_down, B_up, C_down, C_up, D, E):
    """y = W' x + b' for the path A=vector, B=lora, C=lora, D=vector, E=constant; returns (y, W', b')."""
    A = A_down[:, :1]  # A "vector": the first column of its down factor, (d_out, 1), scales each row of W0
    B = B_down @ B_up  # B "lora": X_d X_u, (d_out, r) @ (r, d_in) -> (d_out, d_in)
    C = C_down @ C_up  # C "lora": (d_in, r) @ (r, 1) -> (d_in, 1), a prompt in the input space
    W = W0 + W0 * A + B  # (5.1) W' = W0 + W0 ⊙ A + B
    b = b0 + b0 * D + E[0] + (W0 @ C).squeeze(-1)  # (5.2) b' = b0 + b0 ⊙ D + E + W0 C; E "constant" is E[0]
    return x @ W.T + b, W, b  # (5.3) for row vectors: (n, d_in) @ (d_in, d_out) + (d_out,) -> (n, d_out)


torch.manual_seed(SEED)
toy_path = {"A": "vector", "B": "lora", "C": "lora", "D": "vector", "E": "constant"}
toy = glora.GloraLinear(nn.Linear(12, 8), r=3, path=toy_path)  # d_in = 12, d_out = 8, rank 3
with torch.no_grad():
    for name, tensor in toy.named_parameters():
        if name.startswith("glora_"):
            tensor.normal_(0, 0.5)  # non-zero support tensors, so every term of (5.1)-(5.2) counts
    x = torch.randn(5, 12)
    supports = (toy.glora_A.Xd, toy.glora_B.Xd, toy.glora_B.Xu, toy.glora_C.Xd, toy.glora_C.Xu, toy.glora_D.X,
                toy.glora_E.X)
    mine, W_mine, b_mine = my_glora_linear(x, toy.base_layer.weight, toy.base_layer.bias, *supports)
    theirs = toy(x)
    torch.testing.assert_close(mine, theirs)
    toy.merge()  # the library writes W' and b' into the plain nn.Linear
    torch.testing.assert_close(toy.base_layer.weight, W_mine)
    torch.testing.assert_close(toy.base_layer.bias, b_mine)
print(f"max |mine - library| = {(mine - theirs).abs().max():.1e}; merged weight and bias equal W' and b' "
      f"(max diff {(toy.base_layer.weight - W_mine).abs().max():.1e}, {(toy.base_layer.bias - b_mine).abs().max():.1e})")

# %% [markdown]
# ## 5.2 The task, and a validation split for the search
#
# Exactly chapter 3's §3.9 setup: 16 training requests per intent, an in-distribution (ID) test set drawn from the
# training templates, and a shifted test set from unseen templates. The search needs its own held-out data: the
# test sets must never decide which model we keep, or their accuracy would no longer be a test. We draw a
# **validation split** from the *training* templates with a new seed, drop any sentence that also occurs in the
# training set or a test set, and tokenise it once into one batch (every candidate of the search is scored on it).
# The split, the classifier's logits and loss, and the accuracy per test set are chapter 1's, from
# `minipeft.tasks.intents`.

# %%
import torch
from myst_nb import glue
from torch.utils.data import default_collate

from minipeft.datasets import make_intents
from minipeft.evaluation import accuracy
from minipeft.models import SentenceClassifier, load_minilm, tokenize_examples, trim_padding
from minipeft.tasks.intents import classification_loss, intent_split, logits_of, split_accuracy

task = intent_split(train_per_class=16, test_per_class=30, seed=SEED)
train_set, test_id, test_shift = task.train, task.test_id, task.test_shift
drawn = make_intents("train", per_class=SIZES.val_per_class, seed=SEED + 2000)  # training templates, new draws
seen = set(train_set.texts) | set(test_id.texts) | set(test_shift.texts)
val_texts, val_labels = zip(*[(t, y) for t, y in zip(drawn.texts, drawn.labels) if t not in seen])
NUM_CLASSES = len(train_set.label_names)

encoder, tokenizer = load_minilm(normalize=False)  # GLoRA goes into this copy
base_encoder, _ = load_minilm(normalize=False)  # an untouched copy: the reference for outputs and latency
examples = task.tokenize(tokenizer)  # {"train", "id", "shift"} -> tokenised examples with labels
train_examples = examples["train"]
tests = {"id": examples["id"], "shift": examples["shift"]}
val_batch = trim_padding(default_collate(tokenize_examples(tokenizer, val_texts, val_labels)))


def test_accuracy(classifier):
    """Accuracy on the two test sets — used only to report a model, never to choose one."""
    return split_accuracy(classifier, tests)


@torch.no_grad()
def validation_accuracy(classifier):
    classifier.eval()
    return accuracy(logits_of(classifier, val_batch), val_batch["label"])


# %%
# NBVAL_CHECK_OUTPUT
glue("glora_n_val", f"{len(val_texts)}", display=False)
glue("glora_val_step", f"{100 / len(val_texts):.1f}", display=False)
glue("glora_n_test", f"{len(test_shift)}", display=False)
print(f"train {len(train_set)} | validation {len(val_texts)} (of {len(drawn)} drawn; "
      f"{len(drawn) - len(val_texts)} also in training or a test set, dropped) | test ID {len(test_id)} | "
      f"test shifted {len(test_shift)}")

# %% [markdown]
# ## 5.3 Apply GLoRA and check its properties
#
# We wrap the same layers as chapter 3's LoRA — `query` and `value` in all 6 blocks, $L$ = {glue:text}`glora_L`
# layers of $d \times d$ with $d$ = {glue:text}`glora_d` — with rank $r$ = {glue:text}`glora_r`. The budget of the
# search is LoRA's own parameter count at that rank, $L \cdot r \cdot (d + d)$ = {glue:text}`glora_budget`, so the
# comparison is at **equal parameters**, and LoRA's path is one point of the search space. The checks:
#
# * each layer stores $2r(d_{out} + d_{in}) + r(d_{in} + 1) + 2d_{out}$ = {glue:text}`glora_per_layer` numbers, and its
#   most expensive path reads all of them;
# * the LoRA path's cost equals LoRA's parameter count;
# * at initialisation, **whatever the paths**, the encoder's output is exactly the pretrained one.

# %%
import math

from minipeft.core import count_parameters

config = glora.GloraConfig(r=SIZES.rank, target_modules=["query", "value"], seed=SEED)
torch.manual_seed(SEED)  # the up factors X_u are drawn at apply time
handle = glora.apply(encoder.bert, config)

LORA_PATH = {"A": "none", "B": "lora", "C": "none", "D": "none", "E": "none"}
FULL_PATH = {"A": "lora", "B": "lora", "C": "lora", "D": "vector", "E": "vector"}
d, r, L = 384, SIZES.rank, len(handle)
budget = L * r * (d + d)  # LoRA at rank r on every wrapped layer
stored_closed_form = L * (2 * r * (d + d) + r * (d + 1) + 2 * d)
glue("glora_L", f"{L}", display=False)
glue("glora_d", f"{d}", display=False)
glue("glora_r", f"{r}", display=False)
glue("glora_budget", f"{budget:,}", display=False)
glue("glora_per_layer", f"{stored_closed_form // L:,}", display=False)
glue("glora_stored", f"{stored_closed_form:,}", display=False)
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
glue("glora_configurations", f"≈ 10{str(round(math.log10(432 ** L))).translate(SUPERSCRIPT)}", display=False)

with torch.no_grad():
    base_features = base_encoder(val_batch["input_ids"], val_batch["attention_mask"])
    init_differences = []
    for paths in [FULL_PATH, LORA_PATH, glora.sample_paths(handle, 1), glora.sample_paths(handle, 2)]:
        glora.set_paths(handle, paths)
        features = encoder(val_batch["input_ids"], val_batch["attention_mask"])
        init_differences.append((features - base_features).abs().max().item())

# %%
# NBVAL_CHECK_OUTPUT
print(f"wrapped layers: {L} ({', '.join(list(dict(handle))[:2])}, ...)")
print(f"stored support-tensor numbers: {count_parameters(encoder, trainable_only=True):,} "
      f"(closed form {stored_closed_form:,})")
print(f"cost of the most expensive path on every layer: {glora.parameter_cost(handle, FULL_PATH):,}")
print(f"cost of the LoRA path on every layer: {glora.parameter_cost(handle, LORA_PATH):,} = budget {budget:,}")
print(f"paths per layer: {math.prod(len(c) for c in glora.CHOICES.values())}; "
      f"configurations of the model: 432^{L} ≈ {432 ** L:.1e}")
print("encoder output equals the pretrained one at init, for 4 different paths:",
      [diff == 0.0 for diff in init_differences])

# %% [markdown]
# ## 5.4 The reference point: LoRA at the same budget
#
# Chapter 3's recipe on the untouched copy of the encoder: LoRA $r = 4$, $\alpha = 2r$ on query and value, a fresh
# linear head, AdamW with warm-up. (The head's {glue:text}`glora_head_params` parameters train in every method of this
# chapter and are left out of the counts.) Chapter 2's apply → train → evaluate → undo harness runs it, so `undo()` afterwards gives
# the pristine encoder back for the latency comparison.

# %%
from minipeft.core import TrainConfig, train
from minipeft.peft import lora
from minipeft.tasks.harness import apply_train_evaluate


def train_config(steps, lr, progress=True, seed=SEED):
    return TrainConfig(steps=steps, batch_size=16, lr=lr, warmup_steps=5, seed=seed, device="cpu", progress=progress)


def fit(classifier, steps, lr, progress=True, seed=SEED):
    return train(classifier, train_examples, classification_loss, train_config(steps, lr, progress, seed))


def build_lora():  # LoRA first, then a fresh head
    handle = lora.apply(base_encoder.bert, lora.LoraConfig(r=SIZES.rank, alpha=2 * SIZES.rank,
                                                           target_modules=["query", "value"]))
    return SentenceClassifier(base_encoder, num_classes=NUM_CLASSES), handle


lora_run = apply_train_evaluate(build_lora, train_examples, tests, train_config(SIZES.lora_steps, SIZES.lora_lr),
                                inspect=lambda model, _: {"val": validation_accuracy(model)})
lora_history, lora_params = lora_run.history, lora_run.handle_numel
glue("glora_head_params", f"{(384 + 1) * NUM_CLASSES:,}", display=False)  # the head: Linear(384 -> classes)
lora_result = {**lora_run.accuracy, **lora_run.extras}
print(f"LoRA r={SIZES.rank}: {lora_params:,} parameters | validation {lora_result['val']:.3f} | "
      f"ID {lora_result['id']:.3f} | shifted {lora_result['shift']:.3f} | {lora_history.wall_time:.0f} s")

# %% [markdown]
# ## 5.5 Train the supernet
#
# `glora.supernet(handle, True)` makes every wrapped layer draw a new random path at every forward pass, from a
# seeded generator (the released code uses Python's global `random`; ours repeats). One optimiser step therefore
# trains a different random sub-network each time, and thanks to weight entanglement every step also moves the
# shared slices that the cheaper choices read. The support tensors' `lora` choice has no $\alpha/r$ factor and
# $A$'s update is multiplied by the small entries of $W_0$, so the supernet gets a larger learning rate than LoRA.

# %%
torch.manual_seed(SEED)
classifier = SentenceClassifier(encoder, num_classes=NUM_CLASSES)  # fresh, trainable head
glora.set_paths(handle, glora.DEFAULT_PATH)
glora.supernet(handle, True, seed=SEED)
glue("glora_supernet_steps", f"{SIZES.supernet_steps}", display=False)
glue("glora_population", f"{SIZES.population}", display=False)
glue("glora_generations", f"{SIZES.generations}", display=False)
supernet_history = fit(classifier, SIZES.supernet_steps, SIZES.supernet_lr)
last_sampled = next(iter(handle.wrappers.values())).sampled_path  # the path layer 0 used at the last step
glora.supernet(handle, False)
print(f"supernet: loss {supernet_history.loss[0]:.2f} → {supernet_history.smoothed_loss(10)[-1]:.2f} "
      f"(10-step mean) in {supernet_history.wall_time:.0f} s")
print(f"the path layer 0 drew at the last step: {last_sampled}")

# %% [markdown]
# ## 5.6 Evolutionary search under the budget
#
# The search (the released code's `EvolutionSearcher`, in `glora.evolutionary_search`) scores a random population
# of path assignments that fit the budget, then, for a few generations, mutates and crosses the best ones. A
# candidate is scored with the supernet's weights as they are — no training — on the validation batch.
#
# **The fitness.** Validation accuracy, as in the released code. On {glue:text}`glora_n_val` sentences accuracy moves
# in steps of {glue:text}`glora_val_step` points, so many candidates tie; we break ties with the mean probability of the right class, weighted by half of one
# sentence's share ($0.5 / n_{val}$) so that it can never outweigh one more correctly classified sentence.

# %%
show_source(glora.evolutionary_search)

# %%
search_log = []  # (cost, validation accuracy) of every candidate the search scores


def validation_fitness(model):
    """Validation accuracy of the classifier on its current paths, ties broken by the right class's probability."""
    logits = logits_of(classifier, val_batch)  # the search already runs under torch.no_grad()
    correct = accuracy(logits, val_batch["label"])
    p_right = logits.softmax(-1).gather(1, val_batch["label"][:, None]).mean().item()
    search_log.append((glora.parameter_cost(handle), correct))
    return correct + 0.5 / len(val_texts) * p_right


classifier.eval()  # no dropout while scoring
glora.set_paths(handle, LORA_PATH)
validation_fitness(handle.model)  # LoRA's own path inside the supernet, for comparison (not part of the search)
lora_path_point = search_log.pop()

start = time.perf_counter()
search = glora.evolutionary_search(handle, validation_fitness, budget=budget, population=SIZES.population,
                                   generations=SIZES.generations, parents=SIZES.parents, mutations=SIZES.mutations,
                                   crossovers=SIZES.crossovers, seed=SEED)
search_seconds = time.perf_counter() - start
glue("glora_n_scored", f"{search.evaluated}", display=False)
print(f"scored {search.evaluated} candidates in {search_seconds:.0f} s; best fitness per generation: "
      f"{[round(f, 4) for f in search.history]}")
print(f"searched paths: cost {search.cost:,} of budget {budget:,}, validation accuracy "
      f"{validation_accuracy(classifier):.3f} | LoRA's path in the same supernet: {lora_path_point[1]:.3f}")

# %% [markdown]
# The search found this per-layer configuration (every cell is one support tensor of one layer):

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

CHOICE_ORDER = ["lora", "vector", "constant", "none"]
layer_names = list(search.paths)
short_names = [n.replace("encoder.layer.", "block ").replace(".attention.self.", " ") for n in layer_names]
grid = np.array([[CHOICE_ORDER.index(search.paths[n][t]) for t in glora.SUPPORT_TENSORS] for n in layer_names])
layer_costs = [glora.path_cost(search.paths[n], d, d, r) for n in layer_names]

fig, axes = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [1.1, 1]})
fig.suptitle("Figure 5.1 — The configuration the search found, and what each layer spends")
colors = ListedColormap(["#1f77b4", "#2ca02c", "#ff7f0e", "#eeeeee"])
axes[0].imshow(grid, cmap=colors, vmin=-0.5, vmax=3.5, aspect="auto")
for (row, col), value in np.ndenumerate(grid):
    axes[0].text(col, row, CHOICE_ORDER[value], ha="center", va="center", fontsize=8)
axes[0].set_xticks(range(5), labels=[f"{t}\n{role}" for t, role in zip(glora.SUPPORT_TENSORS,
                                     ["scale W", "shift W", "prompt", "scale b", "shift b"])])
axes[0].set_yticks(range(len(short_names)), labels=short_names)
axes[0].set(title=f"Searched paths (budget {budget:,})")
axes[1].barh(range(len(layer_costs)), layer_costs, color="C0", label="searched path")
axes[1].axvline(r * (d + d), color="C3", ls="--", label=f"LoRA r={r} (every layer)")
axes[1].set_yticks(range(len(short_names)), labels=short_names)
axes[1].invert_yaxis()
axes[1].set(xlabel="parameters the layer's path uses", title=f"Per-layer cost: {search.cost:,} in all")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("searched cost within the budget:", search.cost <= budget)
print("search history never decreases:", all(b >= a for a, b in zip(search.history, search.history[1:])))

# %% [markdown]
# ## 5.7 Fine-tune the searched paths — and a random path as a control
#
# The searched sub-network inherits the supernet's weights; we evaluate it as it is, then fine-tune it briefly on
# its fixed paths (only the slices those paths read get gradients). As a **control**, a random path assignment
# under the same budget gets the same fine-tune from the same supernet weights: if search matters, it should do
# worse. Both start from a snapshot of the supernet.

# %%
import random

searched_paths = search.paths
direct_result = {**test_accuracy(classifier), "val": validation_accuracy(classifier)}
snapshot = {k: v.clone() for k, v in handle.state_dict().items()}
head_snapshot = {k: v.clone() for k, v in classifier.head.state_dict().items()}


def restore_supernet():
    handle.load_state_dict(snapshot)
    classifier.head.load_state_dict(head_snapshot)


rng = random.Random(SEED + 1)
random_paths = glora.sample_paths(handle, rng)
while glora.parameter_cost(handle, random_paths) > budget:  # rejection sampling, as the search's random fill does
    random_paths = glora.sample_paths(handle, rng)
glora.set_paths(handle, random_paths)
random_direct_val = validation_accuracy(classifier)
random_history = fit(classifier, SIZES.finetune_steps, SIZES.finetune_lr, progress=False)
random_result = {**test_accuracy(classifier), "val": validation_accuracy(classifier)}
random_cost = glora.parameter_cost(handle)

restore_supernet()
glora.set_paths(handle, searched_paths)
finetune_history = fit(classifier, SIZES.finetune_steps, SIZES.finetune_lr)
glora_result = {**test_accuracy(classifier), "val": validation_accuracy(classifier)}
glora_seconds = supernet_history.wall_time + search_seconds + finetune_history.wall_time
print(f"searched paths, supernet weights : validation {direct_result['val']:.3f} | ID {direct_result['id']:.3f} | "
      f"shifted {direct_result['shift']:.3f}")
print(f"searched paths, fine-tuned       : validation {glora_result['val']:.3f} | ID {glora_result['id']:.3f} | "
      f"shifted {glora_result['shift']:.3f}")
print(f"random paths (cost {random_cost:,}): validation {random_direct_val:.3f} before, "
      f"{random_result['val']:.3f} after the same fine-tune | ID {random_result['id']:.3f} | "
      f"shifted {random_result['shift']:.3f}")
print(f"searched minus random, shifted test: {glora_result['shift'] - random_result['shift']:+.3f}; "
      f"searched minus LoRA: {glora_result['shift'] - lora_result['shift']:+.3f}")

# %% [markdown]
# **How far does one seed move these numbers?** The cheapest stage to repeat is the fine-tune. We rerun the searched
# paths' fine-tune from the same supernet snapshot with two more seeds (another batch order, other dropout masks)
# and score each on the validation split and the shifted test set. The spread of these runs is a *lower bound* on
# this run's noise: a new supernet and a new search would add their own, and so would LoRA's training, which runs
# once here (a LoRA run costs twice this fine-tune).

# %%
finetuned = {k: v.clone() for k, v in handle.state_dict().items()}  # seed SEED's fine-tune, used again in §5.9
finetuned_head = {k: v.clone() for k, v in classifier.head.state_dict().items()}
FINETUNE_SEEDS = [SEED, SEED + 1, SEED + 2]
seed_runs = [glora_result]  # seed SEED: the fine-tune above
for seed in FINETUNE_SEEDS[1:]:
    restore_supernet()  # the searched paths stay set; only the weights go back to the supernet's
    fit(classifier, SIZES.finetune_steps, SIZES.finetune_lr, progress=False, seed=seed)
    seed_runs.append({**split_accuracy(classifier, tests, splits=("shift",)), "val": validation_accuracy(classifier)})
handle.load_state_dict(finetuned)
classifier.head.load_state_dict(finetuned_head)

seed_shift = 100 * np.array([run["shift"] for run in seed_runs])  # (seeds,) in %
seed_val = 100 * np.array([run["val"] for run in seed_runs])
seed_spread = seed_shift.max() - seed_shift.min()  # points
seed_gap = seed_shift.mean() - 100 * lora_result["shift"]  # searched GLoRA (mean over seeds) minus LoRA, points
for seed, run in zip(FINETUNE_SEEDS, seed_runs):
    print(f"fine-tune seed {seed}: validation {run['val']:.3f} | shifted {run['shift']:.3f}")
print(f"searched GLoRA over {len(seed_runs)} fine-tune seeds: shifted {seed_shift.mean():.1f} ± "
      f"{seed_shift.std(ddof=1):.1f} % (spread {seed_spread:.1f} points), validation {seed_val.mean():.1f} ± "
      f"{seed_val.std(ddof=1):.1f} % | LoRA (one seed): shifted {100 * lora_result['shift']:.1f} %, validation "
      f"{100 * lora_result['val']:.1f} % | gap {seed_gap:+.1f} points")
glue("glora_n_seeds", f"{len(seed_runs)}", display=False)
glue("glora_seed_shift", f"{seed_shift.mean():.1f} ± {seed_shift.std(ddof=1):.1f} %", display=False)
glue("glora_seed_range", f"{seed_shift.min():.1f}–{seed_shift.max():.1f} %", display=False)
glue("glora_seed_spread", f"{seed_spread:.1f}", display=False)
glue("glora_lora_shift", f"{100 * lora_result['shift']:.1f} %", display=False)
glue("glora_seed_gap", f"{seed_gap:+.1f} points, {'inside' if abs(seed_gap) <= seed_spread else 'outside'} that spread",
     display=False)

# %% [markdown]
# **Read the control honestly.** The gaps printed above the seed check come from **one seed** and
# {glue:text}`glora_n_test` shifted test sentences. The fine-tune alone, rerun with {glue:text}`glora_n_seeds` seeds,
# moves the searched model's shifted accuracy over {glue:text}`glora_seed_range`; its mean is
# {glue:text}`glora_seed_shift` against LoRA's {glue:text}`glora_lora_shift`, a gap of {glue:text}`glora_seed_gap`.
# These numbers do not rank searched GLoRA, the random path and LoRA: a gap that a seed of the last 30 steps can
# produce is not a ranking. The scatter plot in §5.8 shows why search can do little here: on {glue:text}`glora_n_val` sentences from the
# *training* templates most candidates score within a few points of each other, so the fitness can barely tell
# them apart, and {glue:text}`glora_n_scored` candidates out of {glue:text}`glora_configurations` are close to a
# random search. Do not read meaning
# into single cells of the grid in §5.6 at this scale. The search optimises the validation proxy it is given, and an
# in-distribution split cannot reward what helps under the template shift; Exercise 5 builds a validation split
# that can.

# %% [markdown]
# ## 5.8 Results
#
# Chapter 1's linear probe and full fine-tuning were measured on exactly this data; we read its record.

# %%
import json
from pathlib import Path

chapter1_file = Path("results") / "01_frozen_backbones.json"
chapter1 = json.loads(chapter1_file.read_text())["metrics"] if chapter1_file.exists() else {}
steps = f"{SIZES.supernet_steps}+{SIZES.finetune_steps}"
rows = [
    (f"LoRA r={r} (query, value)", lora_params, lora_params, f"{SIZES.lora_steps}", lora_result,
     lora_history.wall_time),
    ("GLoRA searched, supernet weights", search.cost, stored_closed_form, f"{SIZES.supernet_steps}", direct_result,
     supernet_history.wall_time + search_seconds),
    ("GLoRA searched + fine-tune", search.cost, stored_closed_form, steps, glora_result, glora_seconds),
    ("GLoRA random path + fine-tune", random_cost, stored_closed_form, steps, random_result,
     supernet_history.wall_time + random_history.wall_time),
]
print(f"{'method':34} {'params used':>11} {'trained':>8} {'steps':>6} {'val':>6} {'ID':>6} {'shift':>6} {'time':>7}")
for name, used, trained, n_steps, result, seconds in rows:
    print(f"{name:34} {used:>11,} {trained:>8,} {n_steps:>6} {result['val']:>6.3f} {result['id']:>6.3f} "
          f"{result['shift']:>6.3f} {seconds:>5.0f} s")
for name, key in [("linear probe (chapter 1)", "probe"), ("full fine-tuning (chapter 1)", "fine-tune")]:
    if f"{key} ID acc" in chapter1:
        print(f"{name:34} {'':>11} {'':>8} {'':>6} {'':>6} {chapter1[f'{key} ID acc']['value'] / 100:>6.3f} "
              f"{chapter1[f'{key} shifted acc']['value'] / 100:>6.3f}")

# %% [markdown]
# *params used* is what the searched (or LoRA's) configuration reads — the budgeted quantity, and what a merged
# model stores on top of the base: nothing. *trained* is what the optimiser holds during GLoRA's training (all
# entangled support tensors). The time of GLoRA includes the supernet, the search and the fine-tune.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
fig.suptitle("Figure 5.2 — Training losses, and every candidate the search scored")
smooth = lora_history.smoothed_loss(10)
axes[0].plot(lora_history.steps, lora_history.loss, color="C3", alpha=0.25, lw=1)
axes[0].plot(lora_history.steps[len(lora_history.steps) - len(smooth):], smooth, color="C3", lw=2,
             label=f"LoRA r={r}")
offset = SIZES.supernet_steps
for history, label, color, shift_steps in [(supernet_history, "GLoRA supernet (random paths)", "C0", 0),
                                           (finetune_history, "GLoRA searched paths, fine-tune", "C2", offset)]:
    smooth = history.smoothed_loss(10)
    steps_axis = [s + shift_steps for s in history.steps]
    axes[0].plot(steps_axis, history.loss, color=color, alpha=0.25, lw=1)
    axes[0].plot(steps_axis[len(steps_axis) - len(smooth):], smooth, color=color, lw=2, label=label)
axes[0].set(xlabel="optimiser step", ylabel="cross-entropy (nats)", yscale="log",
            title="Training loss (thin: per step; thick: 10-step mean)")
axes[0].title.set_fontsize(9)
axes[0].legend(fontsize=8)

costs, accs = zip(*search_log)
points = axes[1].scatter(costs, accs, c=range(len(costs)), cmap="viridis", s=18, label="scored candidates")
axes[1].scatter(*lora_path_point, marker="*", s=200, color="C3", label="LoRA path in the supernet")
axes[1].scatter(search.cost, direct_result["val"], marker="o", s=120, facecolors="none", edgecolors="k",
                label="searched (best)")
axes[1].axvline(budget, color="gray", ls=":", label="budget")
fig.colorbar(points, ax=axes[1], label="order in which the search scored it")
axes[1].set(xlabel="parameters the candidate uses", ylabel="validation accuracy",
            title="Scored candidates (supernet weights)")
axes[1].legend(fontsize=8, loc="lower left")
plt.tight_layout()
plt.show()
scratch = chapter1.get("scratch shifted acc")
glue("glora_scratch_shift", f"{scratch['value']:.1f} %" if scratch else "not recorded yet", display=False)

# %% [markdown]
# The claims this chapter makes from these numbers run as checks every time the notebook runs. They are deliberately
# loose where one seed and {glue:text}`glora_n_test` test sentences per set make a difference of a few points noise:
# the searched GLoRA must be a working classifier (well above the from-scratch model of chapter 1, whose recorded
# shifted accuracy is {glue:text}`glora_scratch_shift`) and within five points of LoRA at the same budget, and the
# search must not pick something clearly worse on validation than LoRA's own path in the same supernet.

# %%
assert search.cost <= budget
assert glora_result["id"] >= 0.85 and glora_result["shift"] >= 0.65, glora_result
assert glora_result["shift"] >= lora_result["shift"] - 0.05, (glora_result, lora_result)
assert direct_result["val"] >= lora_path_point[1] - 0.03, (direct_result, lora_path_point)

# %% [markdown]
# ## 5.9 Structural re-parameterisation: a plain `BertModel`, same outputs, same speed
#
# `handle.unload()` merges $W'$ and $b'$ of each layer's searched path into its `nn.Linear` (equations 5.1–5.2) and
# puts the plain layers back. Here is the merge:

# %%
show_source(glora.GloraLinear.merge)

# %% [markdown]
# We time forward passes of the untouched base encoder and the GLoRA encoder *interleaved* (base, GLoRA, base,
# GLoRA, …) so that the shared CPU's slow and fast moments hit both alike, and report the median of each — the
# bench's turn-taking timer, through `minipeft.tasks.timing`:

# %%
from minipeft.tasks.timing import forward_latency

show_source(forward_latency)

# %%
latency_batch = trim_padding(default_collate(tests["shift"][:32]))
latency_inputs = {"input_ids": latency_batch["input_ids"], "attention_mask": latency_batch["attention_mask"]}


def interleaved_latency(models):
    """Median seconds of one forward pass of each encoder over the same batch, timed in alternation."""
    return forward_latency(models, latency_inputs, repeats=SIZES.latency_repeats)


encoder.eval()
with torch.no_grad():
    unmerged_logits = logits_of(classifier, val_batch)
unmerged_latency = interleaved_latency({"base": base_encoder, "GLoRA unmerged": encoder})
plain_bert = handle.unload()  # merge + put the plain nn.Linear layers back
with torch.no_grad():
    merged_difference = (logits_of(classifier, val_batch) - unmerged_logits).abs().max().item()
merged_latency = interleaved_latency({"base": base_encoder, "GLoRA merged": encoder})
unmerged_ratio = unmerged_latency["GLoRA unmerged"] / unmerged_latency["base"]
merged_ratio = merged_latency["GLoRA merged"] / merged_latency["base"]
print(f"max |logits(merged) - logits(unmerged)| = {merged_difference:.2e}")
print(f"forward pass, 32 sentences: base {unmerged_latency['base'] * 1e3:.1f} ms vs GLoRA unmerged "
      f"{unmerged_latency['GLoRA unmerged'] * 1e3:.1f} ms (×{unmerged_ratio:.2f}); "
      f"base {merged_latency['base'] * 1e3:.1f} ms vs merged {merged_latency['GLoRA merged'] * 1e3:.1f} ms "
      f"(×{merged_ratio:.2f})")

# %%
# NBVAL_CHECK_OUTPUT
query = plain_bert.encoder.layer[0].attention.self.query
print("after unload:", type(plain_bert).__name__, "| query is", type(query).__name__,
      "with bias:", query.bias is not None)
print("any GLoRA layer left:", any(isinstance(m, glora.GloraLinear) for m in plain_bert.modules()))
print("same parameter count as the base encoder:",
      count_parameters(plain_bert) == count_parameters(base_encoder.bert))
print("merged logits equal unmerged (atol 1e-5):", merged_difference < 1e-5)

# %% [markdown]
# The merged encoder does exactly the base model's work — same layers, same shapes — so its latency equals the
# base's up to timing noise (the printed ratio), while the unmerged one rebuilds $W'$ for every layer at every
# forward pass. The searched model costs nothing at inference, whichever path each layer took.

# %%
assert merged_difference < 1e-5
assert merged_ratio < 1.3, merged_latency  # equal work; the margin is only for a shared, noisy CPU

# %% [markdown]
# ## 5.10 The paper reported / we measured
#
# The status of each of the paper's claims is computed from this run's numbers (the book's reproduction page shows
# the same sentences):

# %%
fewer = f"the searched paths use {search.cost:,} parameters, LoRA {lora_params:,}"
measured = (f"shifted accuracy of searched GLoRA {seed_shift.mean():.1f} ± {seed_shift.std(ddof=1):.1f} % "
            f"({len(seed_runs)} fine-tune seeds of one supernet and search) vs LoRA "
            f"{100 * lora_result['shift']:.1f} % (one seed)")
if seed_gap > seed_spread:
    outperform_status = (f"reproduced in direction at this scale: {measured}, a gap of {seed_gap:+.1f} points, "
                         f"larger than the fine-tune seeds' spread of {seed_spread:.1f}; {fewer}")
elif seed_gap >= -seed_spread:
    outperform_status = (f"not reproduced at this scale (no difference resolved): {measured}; measured reason: the "
                         f"gap of {seed_gap:+.1f} points lies within the spread that the fine-tune's seeds alone "
                         f"produce ({seed_spread:.1f} points), and the search wins only on what it optimises, "
                         f"in-distribution validation (searched paths {100 * direct_result['val']:.1f} % vs LoRA's "
                         f"path {100 * lora_path_point[1]:.1f} % in the same supernet), an advantage that does not "
                         f"carry over to the shifted test; {fewer}")
else:
    outperform_status = (f"not reproduced at this scale: {measured}; LoRA is ahead by more than the fine-tune seeds' "
                         f"spread ({seed_spread:.1f} points); not explained at this scale; {fewer}")
inference_status = (f"{'reproduced' if merged_ratio < 1.1 else 'reproduced for the outputs; latency noisy'}: after "
                    f"unload() a plain BertModel with the base's parameter count, logits equal to the unmerged "
                    f"model's (max difference {merged_difference:.1e}), merged/base forward latency x{merged_ratio:.2f} "
                    f"(unmerged x{unmerged_ratio:.2f}; medians of {SIZES.latency_repeats} interleaved passes)")
glue("glora_status_outperform", outperform_status, display=False)
glue("glora_status_inference", inference_status, display=False)
print("outperforms with fewer parameters:", outperform_status)
print("no extra inference cost:", inference_status)

# %% [markdown]
# | claim | source | we measured (this run) |
# |---|---|---|
# | GLoRA "outperforms all previous methods in natural, specialized, and structured benchmarks, achieving superior accuracy with fewer parameters and computations" | Chavan et al. 2023 {cite}`chavan2023glora`, abstract | on the intent task, searched GLoRA vs LoRA at the **same** {glue:text}`glora_budget`-parameter budget (table in §5.8, seeds in §5.7) — {glue:text}`glora_status_outperform` |
# | "our structural re-parameterization design ensures that GLoRA incurs no extra inference cost" | abstract | {glue:text}`glora_status_inference` (§5.9) |
# | 432 paths per layer; 48 wrapped layers on ViT-B/16 | the authors' released code | {glue:text}`glora_L` wrapped layers (query, value): $432^L$ {glue:text}`glora_configurations` configurations |
# | supernet trained for 500 epochs; search with population 50 for 20 generations | the released code's defaults | this run: {glue:text}`glora_supernet_steps` supernet steps, population {glue:text}`glora_population` for {glue:text}`glora_generations` generations (`SIZES` lists both scales) |
#
# We do not quote the paper's VTAB-1k accuracies: we could not verify its parameter table offline.
#
# **Why ours may differ.** The paper trains a ViT supernet for hundreds of epochs and searches it with thousands
# of evaluations; this run trains {glue:text}`glora_supernet_steps` steps and scores {glue:text}`glora_n_scored`
# candidates out of {glue:text}`glora_configurations`, which is closer to a random search than an evolutionary one —
# read the search history and the scatter plot, not just the final number. A supernet that trains a different random
# sub-network at every step also gives each one fewer updates than LoRA gives its single path, which can favour LoRA
# at equal (small) step counts. Our validation split has {glue:text}`glora_n_val` sentences from the training
# templates, the supernet, the search and LoRA run with one seed, and each test set has {glue:text}`glora_n_test`
# sentences. What this run measures is the size of its own noise: the last stage alone, the 30-step fine-tune,
# spreads the searched model's shifted accuracy over {glue:text}`glora_seed_range` across {glue:text}`glora_n_seeds`
# seeds, and the gap to LoRA is {glue:text}`glora_seed_gap`. The differences between methods in §5.8 are not a
# ranking; a ranking needs the `full` scale and several seeds of every stage.
#
# ## 5.11 Pitfalls
#
# * **Searching on the test set.** The fitness must use data that never reports the result. Here the validation
#   split comes from the training templates; the test sets are touched only to report.
# * **Counting the wrong parameters.** The supernet trains every entangled support tensor ({glue:text}`glora_stored`
#   numbers here);
#   the budget constrains what the *searched path* reads, and the merged model adds nothing. Say which one you
#   report.
# * **Merging a supernet.** In supernet mode every forward uses a different path, so there is no single $W'$;
#   `merge()` refuses until `supernet(handle, False)` and a path is chosen.
# * **Saving only the support tensors.** The paths are settings, not tensors: save `glora.get_paths(handle)`
#   beside the weights, or save the merged model.
# * **Ties in the fitness.** Accuracy on a small validation set takes few distinct values; without a tie-break the
#   search keeps whichever candidate it happened to score first.
#
# ## 5.12 Summary
#
# * GLoRA's layer $W' = W_0 + W_0 \odot A + B$, $b' = b_0 + b_0 \odot D + E + W_0 C$ contains LoRA, (IA)³-like scaling
#   and bias tuning as *paths*; each layer chooses its own, {glue:text}`glora_configurations` configurations here.
# * Weight entanglement makes every path a slice of the same tensors, so one supernet trained on random paths can be
#   searched without retraining; the budget constrains what the chosen paths read, not what the supernet stores.
# * The search must score on held-out data that never reports the result; on a small in-distribution validation
#   split many candidates tie, and a few dozen candidates are close to a random search.
# * In this run searched GLoRA, a random path and LoRA land a few points apart (§5.8); the fine-tune's seeds alone
#   move the searched model over {glue:text}`glora_seed_range` (§5.7), so this scale does not rank them.
# * Structural re-parameterisation leaves a plain `BertModel` with the same logits and the base model's speed.
#
# ## 5.13 Exercises
#
# 1. Run the search at budgets of $L \cdot r(d + d)$ for $r = 1, 2, 8$ (one supernet, one search per budget) and
#    plot validation accuracy against budget next to LoRA at those ranks.
# 2. Put GLoRA on every linear layer of the encoder (`target_modules=None`). How large must the budget be before
#    random candidates fit at all, and which layers does the search spend it on? (Hint: narrow
#    `GloraConfig.choices`.)
# 3. Restrict the search space to LoRA-like choices (`choices={"A": ("none",), "C": ("none",), "D": ("none",),
#    "E": ("none",)}`) and compare with the full space at the same budget.
# 4. Replace the tie-broken accuracy fitness by plain accuracy and run the search with three seeds. How often does
#    it return the same configuration?
# 5. Build a validation split that resembles the shift without touching the test templates: hold out one training
#    template per intent (`minipeft.datasets.INTENTS` lists them), train on the others, and search on the held-out
#    one. Does the searched path now beat the random control on the shifted test?
#
# The cell below runs a `ci`-sized version of each coding exercise on the supernet this chapter trained (its
# snapshot from §5.7, loaded into a fresh copy of the encoder), scoring candidates on half of the validation batch so
# that the solutions stay cheap; the full-sized versions need the `full` scale and more seeds.

# %% tags=["hide-input"]
from torch import nn

# One fresh copy of the supernet: the chapter's encoder was merged in §5.9, but the snapshot holds its weights.
sol_encoder, _ = load_minilm(normalize=False)
sol_handle = glora.apply(sol_encoder.bert, config)
sol_handle.load_state_dict(snapshot)
sol_classifier = SentenceClassifier(sol_encoder, num_classes=NUM_CLASSES)
sol_classifier.head.load_state_dict(head_snapshot)
sol_classifier.eval()
half = len(val_texts) // 2
sol_batch = trim_padding({k: v[:half] for k, v in val_batch.items()})  # the first half of the validation batch


def set_space(choices):
    """Narrow (or widen) every layer's search space; tensors not named keep all their choices."""
    for layer in sol_handle.wrappers.values():
        layer.choices = {t: tuple(choices.get(t, glora.CHOICES[t])) for t in glora.SUPPORT_TENSORS}


def sol_fitness(plain=False, log=None):
    def fitness(model):
        logits = logits_of(sol_classifier, sol_batch)
        correct = accuracy(logits, sol_batch["label"])
        if log is not None:
            log.append(correct)
        if plain:  # Exercise 4: no tie-break
            return correct
        p_right = logits.softmax(-1).gather(1, sol_batch["label"][:, None]).mean().item()
        return correct + 0.5 / half * p_right
    return fitness


def accuracy_part(fitness):
    """The accuracy inside a tie-broken fitness (the tie-break adds less than one sentence's share)."""
    return math.floor(fitness * half + 1e-9) / half


# Solution 1: one search per budget L * r' * (d + d) on the same supernet (its "lora" choices keep rank r).
# At r' = 1 almost no random path of the full space fits (a random path costs a few thousand parameters per
# layer), so the search space is narrowed to cheap choices except for B — the hint of Exercise 2.
set_space({"A": ("vector", "constant", "none"), "C": ("vector", "none")})
print("Solution 1: searched validation accuracy (supernet weights, half the validation batch) per budget")
for rank in (1, 2, 8):
    found = glora.evolutionary_search(sol_handle, sol_fitness(), budget=L * rank * (d + d), population=3,
                                      generations=0, parents=1, mutations=0, crossovers=0, seed=SEED)
    print(f"  budget L*{rank}*(d+d) = {L * rank * (d + d):>6,}: cost {found.cost:>6,} | "
          f"validation {accuracy_part(found.fitness):.3f} ({found.evaluated} candidates)")
print("  (LoRA at those ranks needs one training run each: the comparison of the exercise at `full` scale)")

# Solution 2: GLoRA on every linear layer. No training needed to see the cost problem: draw random paths.
linears = [(n, m) for n, m in base_encoder.bert.named_modules() if n and type(m) is nn.Linear]
rng = random.Random(SEED)
narrow = {**glora.CHOICES, "A": ("vector", "constant", "none"), "C": ("vector", "none")}
for label, space in [("all 432 paths", glora.CHOICES), ("no 'lora' on A, C", narrow)]:
    costs = sorted(sum(glora.path_cost({t: rng.choice(space[t]) for t in glora.SUPPORT_TENSORS}, m.in_features,
                                       m.out_features, r) for _, m in linears) for _ in range(300))
    lora_everywhere = sum(r * (m.in_features + m.out_features) for _, m in linears)
    print(f"Solution 2 ({label}): {len(linears)} linear layers; random-candidate cost min {costs[0]:,}, "
          f"median {costs[len(costs) // 2]:,}; LoRA r={r} on all of them {lora_everywhere:,}")

# Solution 3: a LoRA-like space (only B varies) against the full space, same population size, same supernet.
set_space({"A": ("none",), "C": ("none",), "D": ("none",), "E": ("none",)})
lora_like = glora.evolutionary_search(sol_handle, sol_fitness(), budget=budget, population=SIZES.population,
                                      generations=0, parents=1, mutations=0, crossovers=0, seed=SEED)
set_space({})
full_space = glora.evolutionary_search(sol_handle, sol_fitness(), budget=budget, population=SIZES.population,
                                       generations=0, parents=1, mutations=0, crossovers=0, seed=SEED)
for name, found in [("LoRA-like space", lora_like), ("full space", full_space)]:
    print(f"Solution 3: {name:15}: best of {found.evaluated} random candidates: validation "
          f"{accuracy_part(found.fitness):.3f}, cost {found.cost:,}")

# Solution 4: plain accuracy as the fitness, three search seeds. Ties decide which configuration comes back.
configurations = []
for seed in range(3):
    log = []
    found = glora.evolutionary_search(sol_handle, sol_fitness(plain=True, log=log), budget=budget, population=4,
                                      generations=0, parents=1, mutations=0, crossovers=0, seed=seed)
    configurations.append(tuple(tuple(p.values()) for p in found.paths.values()))
    print(f"Solution 4: seed {seed}: best accuracy {found.fitness:.3f}, tied by {log.count(max(log))} of "
          f"{len(log)} candidates")
print(f"Solution 4: distinct configurations returned by 3 seeds: {len(set(configurations))}")

# Solution 5: a validation split that resembles the shift: hold out the last training template of every intent.
from minipeft.datasets import INTENTS
from minipeft.datasets.intents import _fill  # the generator's own slot filler

rng = random.Random(SEED + 5)
kept, held_out = [], []
for label, name in enumerate(train_set.label_names):
    training_templates = INTENTS[name][:round(len(INTENTS[name]) * 2 / 3)]  # make_intents' training share
    *train_templates, held_template = training_templates
    kept += [(_fill(rng.choice(train_templates), rng), label) for _ in range(16)]
    held_out += [(_fill(held_template, rng), label) for _ in range(SIZES.val_per_class)]
print(f"Solution 5: training sentences from the other templates {len(kept)}, held-out-template validation "
      f"{len(held_out)}; e.g. {held_out[0][0]!r}")

# %% [markdown]
# ```{dropdown} Solution 2
# Every linear layer of the encoder is wrapped; the feed-forward layers are $384 \times 1536$, so each `lora`
# choice there costs $r(384 + 1536)$, and a random candidate costs several times LoRA on query and value (the cell
# prints the numbers). A budget near LoRA's at query/value therefore admits almost no random candidate: either
# raise the budget towards the random candidates' median or narrow the space (no `lora` on $A$ and $C$ — the cell
# shows how much that lowers the costs). Which layers the search spends the budget on can only be read from a
# supernet trained on all layers; under a tight budget expect cheap vectors and constants on the wide feed-forward
# layers and the expensive `lora` choices where one extra accuracy point is cheapest.
# ```
#
# ```{dropdown} Solution 4
# Without the tie-break, candidates can share the top accuracy (the cell counts them on half of the validation
# batch, where most candidates reach the same accuracy), and the search returns whichever it scored first; different seeds score different random candidates, so
# they can return different configurations of (nearly) the same fitness. Read the returned configuration as one of
# many equivalent ones, not as *the* structure that the task needs.
# ```
#
# ```{dropdown} Solution 5
# The cell builds the split. To finish: tokenise `kept` as the training set and `held_out` as the validation batch,
# train a supernet on `kept` (§5.5), search with `validation_fitness` on `held_out` (§5.6), fine-tune the searched
# and a random path (§5.7) and compare their shifted accuracy. Because the held-out template is never trained on,
# the fitness now rewards paths that generalise to new phrasings; whether that beats the random control needs several
# seeds, since one seed cannot rank them.
# ```
#
# ## 5.14 Record what this run measured

# %%
from minipeft.book.results import record

cpu_seconds = time.process_time() - CHAPTER_CPU_START

record(
    "05_glora", "GLoRA: a searched, re-parameterisable layer vs LoRA at the same budget",
    {
        "GLoRA searched shifted acc": (100 * glora_result["shift"], "%"),
        "LoRA shifted acc": (100 * lora_result["shift"], "%"),
        "GLoRA random-path shifted acc": (100 * random_result["shift"], "%"),
        "GLoRA searched ID acc": (100 * glora_result["id"], "%"),
        "LoRA ID acc": (100 * lora_result["id"], "%"),
        "GLoRA searched shifted acc, mean over fine-tune seeds": (seed_shift.mean(), "%"),
        "GLoRA searched shifted acc, spread over fine-tune seeds": (seed_spread, "points"),
        "GLoRA searched val acc (supernet weights)": (100 * direct_result["val"], "%"),
        "LoRA path val acc (supernet weights)": (100 * lora_path_point[1], "%"),
        "searched parameter cost": (search.cost, "params"),
        "budget": (budget, "params"),
        "candidates scored": (search.evaluated, "candidates"),
        "merged latency / base": (merged_ratio, "ratio"),
        "unmerged latency / base": (unmerged_ratio, "ratio"),
        "GLoRA total train+search time": (glora_seconds, "s"),
        "LoRA train time": (lora_history.wall_time, "s"),
        "chapter CPU time": (cpu_seconds, "s"),
    },
    trainable_parameters=search.cost,
    paper_claims=[
        {"claim": "GLoRA outperforms previous PEFT methods, with superior accuracy and fewer parameters",
         "source": "Chavan et al. 2023, arXiv:2306.07967, abstract", "status": outperform_status},
        {"claim": "structural re-parameterization: GLoRA incurs no extra inference cost",
         "source": "Chavan et al. 2023, arXiv:2306.07967, abstract", "status": inference_status},
    ],
    headline=["GLoRA searched shifted acc", "LoRA shifted acc", "GLoRA random-path shifted acc"],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, CPU time: {cpu_seconds:.0f} s")

# %% [markdown]
# ## References
#
# * GLoRA: Chavan et al. {cite}`chavan2023glora`.
# * LoRA, the reference point at the same budget: Hu et al. {cite}`hu2021lora`.
# * The MiniLM encoder: Wang et al. {cite}`wang2020minilm`.
#
# The works cited in this chapter are listed, with the whole book's, in the {doc}`../book/bibliography`.

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
# # 7. MEFT: reversible fine-tuning, so activations need not be stored
#
# Every method so far trains few *parameters*. That shrinks the gradients and the optimiser state, but not the
# third — and usually largest — part of training memory: the **activations** that the forward pass keeps for the
# backward pass. MEFT {cite}`liao2023meft` attacks that part. It inserts adapters into a pretrained BERT so that the
# network becomes **reversible** in the sense of RevNets {cite}`gomez2017revnet`: each layer's input can be
# recomputed from its output, so the forward pass can throw its activations away and the backward pass rebuilds
# them, layer by layer, from the top.
#
# **Learning goals.** After this chapter you can (a) derive why activations, not parameters, dominate the memory of
# fine-tuning at realistic batch sizes and sequence lengths, and why LoRA or adapters barely reduce them;
# (b) write a reversible coupling and its inverse; (c) measure activation memory with saved-tensor hooks and
# read the result; (d) explain the numerical price of reversibility — dividing by $\lambda$ or $\beta = 0.1$ — and
# how it limits depth and precision.

# %% tags=["parameters"]
import time
from dataclasses import dataclass

import minipeft

CHAPTER_START, CHAPTER_CPU_START = time.perf_counter(), time.process_time()
SCALE = minipeft.scale()  # "ci" on a CPU (≈2 minutes), "full" on a GPU; set MINIPEFT_SCALE to choose
SEED = 0


@dataclass
class Sizes:
    seq_lengths: tuple  # sequence lengths T of the memory / step-time sweep
    sweep_batch: int  # batch size B of the sweep
    timing_repeats: int  # timed train steps per (method, T); the fastest is reported
    train_per_class: int  # labelled training examples per intent
    test_per_class: int  # evaluation examples per intent and per test set
    train_steps: int  # steps of the end-to-end fine-tune (MEFT and LoRA alike)
    batch_size: int
    lr: float


SIZES = {
    "ci": Sizes(seq_lengths=(16, 32, 64, 128, 256), sweep_batch=2, timing_repeats=3, train_per_class=16,
                test_per_class=30, train_steps=60, batch_size=16, lr=5e-3),
    "full": Sizes(seq_lengths=(16, 32, 64, 128, 256, 512), sweep_batch=8, timing_repeats=5, train_per_class=64,
                  test_per_class=200, train_steps=300, batch_size=32, lr=2e-3),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 7.1 Where training memory goes
#
# Training a model with $N$ parameters, of which $N_\text{train}$ train, with Adam in fp32 holds
#
# $$
# \underbrace{4N}_{\text{weights}} \;+\; \underbrace{4N_\text{train}}_{\text{gradients}} \;+\;
# \underbrace{8N_\text{train}}_{\text{Adam moments}} \;+\; \underbrace{M_\text{act}}_{\text{activations}} \quad \text{bytes.}
# \tag{7.1}
# $$
#
# Parameter-efficient methods make $N_\text{train}$ tiny, so the middle two terms vanish. The activations $M_\text{act}$
# are the tensors
# autograd *saves* in the forward pass because the backward pass needs them. Walk through one post-norm BERT layer
# (width $d$, $H$ heads, FFN width $4d$) on a batch of $B$ sequences of $T$ tokens, as full fine-tuning sees it:
#
# * the input of every linear map whose weight trains ($\partial \mathcal{L}/\partial W = \bar y^\top x$ needs $x$):
#   the layer input (shared by $W_Q, W_K, W_V$), the attention context, the FFN input and the GELU output —
#   $d + d + d + 4d$ numbers per token;
# * the queries, keys and values for the two attention products, the GELU's input, the LayerNorms' inputs and the
#   dropout masks — another $\approx 10d$ per token;
# * the attention probabilities $\mathrm{softmax}(QK^\top/\sqrt{d_h})$, their dropout mask and the dropped-out
#   probabilities that multiply $V$: a few numbers per *pair* of tokens and head, $B \cdot H \cdot T^2$ each.
#
# So one layer saves about
#
# $$
# M_\text{act}^\text{layer} \approx c_1\, B\, T\, d \;+\; c_2\, B\, H\, T^2 \quad \text{bytes}, \qquad c_1 \approx 20 \cdot 4,\;
# c_2 \approx 3 \cdot 4, \tag{7.2}
# $$
#
# against $12 d^2$ weights per layer ($4d^2$ in attention, $8d^2$ in the FFN). Even ignoring the $T^2$ term, the
# activations exceed the weights as soon as $20\,B T d > 12 d^2$, i.e. $BT > 0.6\, d$: for MiniLM ($d = 384$) a
# batch of **{glue:text}`meft_bt_threshold` tokens**. A modest batch of 32 sentences of 128 tokens holds
# {glue:text}`meft_act_over_weights` times the layer's weights in activations by this count, and with $T^2$ the gap
# grows with length.
#
# **Why PEFT does not fix this.** Freeze a linear map and it no longer needs its input $x$ (no weight gradient) —
# but as long as something *below* it trains, the gradient must still pass *through* it, and through the softmax,
# the GELU, the LayerNorms and the dropouts, which all need their saved tensors. LoRA on $W_Q, W_V$ or an adapter in
# every layer keeps most of $M_\text{act}$. We measure exactly this below with
# `minipeft.core.memory.count_saved_tensors`, which adds up every tensor autograd saves during one forward pass
# (parameters excluded):

# %%
from minipeft.book import show_source
from minipeft.core.memory import SavedTensorCounter, count_saved_tensors

show_source(SavedTensorCounter.pack)

# %% [markdown]
# ## 7.2 Reversible layers
#
# A RevNet {cite}`gomez2017revnet` splits the hidden state in two halves $x = [x_1, x_2]$ and couples them with two
# arbitrary functions $F$ and $G$. MEFT adds two scale factors $\lambda, \beta$:
#
# $$
# y_1 = \lambda\, x_1 + F(x_2), \qquad y_2 = \beta\, x_2 + G(y_1). \tag{7.3}
# $$
#
# Given the output $[y_1, y_2]$, the input follows *without inverting $F$ or $G$*: $y_1$ is known, so compute
# $G(y_1)$ and peel it off; then $x_2$ is known, so compute $F(x_2)$ and peel that off:
#
# $$
# x_2 = \frac{y_2 - G(y_1)}{\beta}, \qquad x_1 = \frac{y_1 - F(x_2)}{\lambda}. \tag{7.4}
# $$
#
# The backward pass therefore needs only the **last** layer's output. Walking down the stack, each layer
# recomputes its input with (7.4), re-runs $F$ and $G$ with autograd on, and backpropagates through them. With
# $\bar y_1$ the total gradient of $y_1$ (it reaches the loss directly and through $G$):
#
# $$
# \bar y_1 = \frac{\partial \mathcal{L}}{\partial y_1} + \Big(\frac{\partial G}{\partial y_1}\Big)^{\!\top} \frac{\partial \mathcal{L}}{\partial y_2},
# \qquad
# \frac{\partial \mathcal{L}}{\partial x_1} = \lambda\, \bar y_1, \qquad
# \frac{\partial \mathcal{L}}{\partial x_2} = \beta\, \frac{\partial \mathcal{L}}{\partial y_2} + \Big(\frac{\partial F}{\partial x_2}\Big)^{\!\top} \bar y_1. \tag{7.5}
# $$
#
# The price: every layer runs forward **twice**, once in the forward pass and once in the backward pass (the
# reconstruction (7.4) reuses the $G(y_1)$ and $F(x_2)$ that the recompute evaluates anyway).
#
# **Making a pretrained model reversible.** A BERT layer $h_n = \mathrm{Layer}_n(h_{n-1})$ is not of the form (7.3). MEFT puts
# the pretrained layer inside $F$ or $G$, adds small adapters, and picks $\lambda, \beta$ so that one half of the
# state carries the pretrained hidden states — the paper's point is that a PEFT method must **preserve the
# starting point** of the pretrained model {cite}`liao2023meft`. The encoder starts from two copies of the
# embeddings, $x_1 = x_2 = h_0$, and returns $(x_1 + x_2)/2$. Three architectures:
#
# | variant | $F$ | $G$ | $\lambda$ | $\beta$ | layer output |
# |---|---|---|---|---|---|
# | MEFT1 | the BERT layer, adapter parallel to its FFN | an adapter | 0.1 | 1 | $[y_2, y_1]$ |
# | MEFT2 | an adapter | the BERT layer, adapter parallel to its FFN | 1 | 0.1 | $[y_2, y_1]$ |
# | MEFT3 | the attention block + adapter | the FFN block + parallel adapter | 0.1 | 0.1 | $[y_1, y_2]$ |
#
# Why MEFT1 starts near BERT: with the adapters at zero, $G = 0$ and $\beta = 1$ give $y_2 = x_2$, and
# $y_1 = \mathrm{Layer}_n(x_2) + \lambda x_1$. After the swap the next layer receives
# $(x_2,\, \mathrm{Layer}_n(x_2) + \lambda x_1)$, i.e.
# $(h_{n-1}, h_n)$ plus a *leak* $\lambda x_1$ damped by $\lambda = 0.1$. A smaller $\lambda$ leaks less, but (7.4)
# divides by it: that trade-off is the numerical story of this chapter. Here is the layer, in full:

# %%
from minipeft.peft import meft

show_source(meft.ReversibleLayer)

# %% [markdown]
# and the `torch.autograd.Function` that runs a stack of them, saving only the final output (and the random number
# generator state before each $F$/$G$ call, so that dropout draws the same masks when the backward pass
# recomputes):

# %%
show_source(meft.ReversibleFunction)

# %% [markdown]
# **Write it yourself.** The coupling (7.3) and its inverse (7.4) need nothing but $F$, $G$ and two scalars. Below,
# $F$ and $G$ are two small adapters written out in plain torch, $\mathcal{A}(h) = f(h W_{down} + b_{down}) W_{up} +
# b_{up}$, that read the weights of a library `ReversibleLayer` built from two `MEFTAdapter`s, with MEFT1's factors
# $\lambda = 0.1$, $\beta = 1$ and its swapped output $[y_2, y_1]$. The up-projections are drawn at random (not zero),
# so that $F$ and $G$ matter. We check our forward against the library's, our inverse against `inverse`, and that
# the inverse really gives the input back, in float64.

# %%
import torch
import torch.nn.functional as nnF


def my_adapter(adapter, h):
    """A(h) = f(h W_down + b_down) W_up + b_up (eval mode: no dropout); (n, T, d) -> (n, T, d)."""
    return nnF.linear(nnF.gelu(nnF.linear(h, adapter.down.weight, adapter.down.bias)), adapter.up.weight,
                      adapter.up.bias)


def my_coupling(x, F, G, lam, beta):
    """(7.3): y1 = λ x1 + F(x2), y2 = β x2 + G(y1); returns [y2, y1] (MEFT1/2's swapped order)."""
    x1, x2 = x.chunk(2, dim=-1)  # (n, T, 2d) -> two (n, T, d)
    y1 = lam * x1 + F(x2)
    y2 = beta * x2 + G(y1)
    return torch.cat([y2, y1], dim=-1)  # (n, T, 2d)


def my_inverse(y, F, G, lam, beta):
    """(7.4): x2 = (y2 - G(y1)) / β, then x1 = (y1 - F(x2)) / λ; F and G are only evaluated, never inverted."""
    y2, y1 = y.chunk(2, dim=-1)  # undo the swap: (n, T, 2d) -> two (n, T, d)
    x2 = (y2 - G(y1)) / beta
    x1 = (y1 - F(x2)) / lam
    return torch.cat([x1, x2], dim=-1)  # (n, T, 2d)


torch.manual_seed(SEED)
width = 16  # d of the toy; each half of the state is (n, T, d)
adapters = [meft.MEFTAdapter(width, 4, torch.nn.GELU(), dropout=0.0, init_std=0.3, zero_init_up=False)
            for _ in range(2)]
toy_layer = meft.ReversibleLayer(meft.AdapterBlock(adapters[0]), meft.AdapterBlock(adapters[1]), lambda_=0.1,
                                 beta=1.0, swap=True).double().eval()
F_mine, G_mine = (lambda h: my_adapter(adapters[0], h)), (lambda h: my_adapter(adapters[1], h))
x = torch.randn(2, 5, 2 * width, dtype=torch.float64)  # (n, T, 2d): [x1, x2]
with torch.no_grad():
    y_mine, y_library = my_coupling(x, F_mine, G_mine, 0.1, 1.0), toy_layer(x)
    x_mine, x_library = my_inverse(y_library, F_mine, G_mine, 0.1, 1.0), toy_layer.inverse(y_library)
torch.testing.assert_close(y_mine, y_library)
torch.testing.assert_close(x_mine, x_library)
torch.testing.assert_close(x_mine, x)  # the input, rebuilt from the output alone
print(f"forward: max |mine - library| = {(y_mine - y_library).abs().max():.1e}; inverse: "
      f"{(x_mine - x_library).abs().max():.1e}; rebuilt input vs the true one: {(x_mine - x).abs().max():.1e}")

# %% [markdown]
# ## 7.3 The model and the task
#
# The backbone is chapter 1's all-MiniLM-L6-v2 {cite}`wang2020minilm` (6 layers, $d = 384$, 12 heads), frozen, with
# the 12-intent task (same data and seed as chapters 1–3). `meft.apply` replaces the `BertEncoder` inside a
# `BertModel` by a `ReversibleEncoder` and returns the usual handle; the reversible layers are
# `handle.wrappers["encoder"].layers`. For the checks we need what `BertModel` hands its encoder — the embeddings
# $h_0$ and the attention mask — which a forward pre-hook captures.

# %%
import copy
import inspect

import torch
from myst_nb import glue

from minipeft.models import load_minilm, mean_pool, trim_padding
from minipeft.tasks.intents import intent_split

torch.manual_seed(SEED)
encoder, tokenizer = load_minilm(normalize=False)  # frozen, eval() mode
task = intent_split(train_per_class=SIZES.train_per_class, test_per_class=SIZES.test_per_class, seed=SEED)
train_set = task.train  # chapter 1's split; the test sets are used in §7.7
LABELS = task.label_names
check_batch = dict(tokenizer(train_set.texts[:8], padding=True, return_tensors="pt"))  # 8 sentences, padded
glue("meft_bt_threshold", f"{12 / 20 * encoder.dim:.0f}", display=False)  # 20 B T d > 12 d^2  <=>  B T > 0.6 d
glue("meft_act_over_weights", f"{20 * 32 * 128 * encoder.dim / (12 * encoder.dim ** 2):.0f}", display=False)


def meft_bert(variant, dtype=torch.float32, **options):
    """A fresh copy of the frozen MiniLM BertModel with MEFT applied; returns (bert, its ReversibleEncoder)."""
    bert = copy.deepcopy(encoder.bert).to(dtype)
    torch.manual_seed(SEED)  # the adapters' initial weights
    handle = meft.apply(bert, meft.MEFTConfig(variant=variant, **options))
    return bert, handle.wrappers["encoder"]


def encoder_input(bert, reversible_encoder, batch):
    """The embeddings h0 (B, T, d) and the attention mask that BertModel passes to its encoder for `batch`."""
    seen = {}

    def grab(module, args, kwargs):
        seen.update(inspect.signature(module.forward).bind(*args, **kwargs).arguments)

    hook = reversible_encoder.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        bert(**batch)
    hook.remove()
    return seen["hidden_states"], seen.get("attention_mask")


bert1, reversible1 = meft_bert(1)
h0, mask = encoder_input(bert1, reversible1, check_batch)

# %%
# NBVAL_CHECK_OUTPUT
print("check batch input_ids:", tuple(check_batch["input_ids"].shape), "| embeddings h0:", tuple(h0.shape))
print("reversible layers:", len(reversible1.layers), "| first layer:", reversible1.layers[0].F.__class__.__name__,
      "as F,", reversible1.layers[0].G.__class__.__name__, "as G, lambda =", reversible1.layers[0].lambda_,
      "beta =", reversible1.layers[0].beta)

# %% [markdown]
# ## 7.4 Sanity checks
#
# **(a) One layer is reconstructed from its output.** We run MiniLM's first layer, wrapped as each MEFT variant
# with the paper's initialisation (adapters drawn from $\mathcal{N}(0, 0.02^2)$, so they are not zero), on the real
# input $[h_0, h_0]$, then recover the input with (7.4). In `train()` mode dropout is on: the layer records the
# RNG state before $F$ and $G$ and the inverse replays it.

# %%
REAL = check_batch["attention_mask"].bool()  # (B, T): real tokens; padding is left out of every error below


def rebuild_error(x_rebuilt, x):
    """Relative (Frobenius) error over the real tokens: ||x_rebuilt - x|| / ||x||."""
    return ((x_rebuilt - x)[REAL].norm() / x[REAL].norm()).item()


def one_layer_error(variant, training, dtype=torch.float32):
    """Relative error of inverse(layer(x)) for MiniLM's first layer wrapped as MEFT`variant`."""
    bert, reversible = meft_bert(variant, dtype=dtype, zero_init_up=False)
    bert.train(training)
    x = torch.cat([h0, h0], dim=-1).to(dtype)  # (B, T, 2d): x1 = x2 = h0
    states = [] if training else None
    with torch.no_grad():
        y = reversible.layers[0](x, mask, rng_states=states)
        x_rebuilt = reversible.layers[0].inverse(y, mask, rng_states=states)
    return rebuild_error(x_rebuilt, x)


layer_errors = {(v, mode): one_layer_error(v, mode == "train") for v in (1, 2, 3) for mode in ("eval", "train")}
for (variant, mode), error in layer_errors.items():
    print(f"MEFT{variant} ({mode:>5}): ||x_rebuilt - x|| / ||x|| = {error:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
# fp32 keeps ~7 significant digits: a relative 1e-5 is ~100 rounding steps. MEFT3 divides by lambda * beta = 0.01,
# ten times more than MEFT1/2, so its tolerance is ten times looser.
TOLERANCE = {1: 1e-5, 2: 1e-5, 3: 1e-4}
for (variant, mode), error in layer_errors.items():
    print(f"MEFT{variant} ({mode:>5}) input rebuilt within {TOLERANCE[variant]:.0e}: {error < TOLERANCE[variant]}")

# %% [markdown]
# **(b) The reversible backward gives the gradients of plain autograd.** `ReversibleEncoder` can run the same
# layers, with the same weights, either way: `num_reversible_layers` $= L_\text{rev}$ makes the lowest $L_\text{rev}$
# layers reversible and leaves the rest to ordinary autograd ($L_\text{rev} = 0$ is plain PEFT). The loss is a fixed random linear read-out of
# the last hidden state. We compare the adapters' gradients — the largest relative error
# $\lVert g_{\text{rev}} - g_{\text{plain}} \rVert / \lVert g_{\text{plain}} \rVert$ over all adapter tensors —
# in float64 with 3 of the 6 layers reversible, and in float32 with one (§7.5 goes deeper).

# %%
def adapter_gradients(bert, reversible, reversible_layers, batch=check_batch):
    """Gradients of every trainable tensor for the loss <readout, last hidden state>, eval() mode."""
    reversible.num_reversible_layers = reversible_layers
    bert.eval()
    bert.zero_grad(set_to_none=True)
    hidden = bert(**batch).last_hidden_state  # (B, T, d)
    readout = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(7), dtype=hidden.dtype)
    readout = readout * batch["attention_mask"][..., None]  # like mean pooling, the loss ignores padding
    (hidden * readout).sum().backward()
    return {name: p.grad.clone() for name, p in bert.named_parameters() if p.requires_grad}


def relative_error(gradients, reference):
    return max(((gradients[n] - reference[n]).norm() / reference[n].norm()).item() for n in reference)


def gradient_errors(variant, dtype, depths):
    """{L_rev: largest relative gradient error with the lowest L_rev layers reversible} against plain autograd."""
    bert, reversible = meft_bert(variant, dtype=dtype, zero_init_up=False)
    plain = adapter_gradients(bert, reversible, 0)
    return {k: relative_error(adapter_gradients(bert, reversible, k), plain) for k in depths}


float64_errors = {v: gradient_errors(v, torch.float64, [3, 6]) for v in (1, 2, 3)}
float32_errors = {v: gradient_errors(v, torch.float32, range(1, 7)) for v in (1, 2, 3)}
for v in (1, 2, 3):
    print(f"MEFT{v}: float64, 3 / 6 reversible layers: {float64_errors[v][3]:.1e} / {float64_errors[v][6]:.1e} | "
          f"float32, 1 / 6 layers: {float32_errors[v][1]:.1e} / {float32_errors[v][6]:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
for v in (1, 2, 3):
    print(f"MEFT{v}: float64 gradients, 3 reversible layers, equal plain autograd (rel. 1e-8): "
          f"{float64_errors[v][3] < 1e-8}"
          f" | float32, 1 reversible layer (rel. 1e-4): {float32_errors[v][1] < 1e-4}")

# %% [markdown]
# **(c) At initialisation MEFT is close to — but not exactly — the pretrained model.** With our default init the
# adapters are exactly zero (the up-projection starts at 0), so the only departures from MiniLM are the leaks
# $\lambda x_1$ or $\beta x_2$ and, for the paper's output $(x_1 + x_2)/2$, the averaging of two different hidden
# states. We compare the mean-pooled sentence vectors with the base model's; `output="pretrained_stream"`
# returns the half that carries the pretrained state instead of the average.

# %%
with torch.no_grad():
    base_vectors = mean_pool(encoder.bert(**check_batch).last_hidden_state, check_batch["attention_mask"])


def starting_point(variant, **options):
    """(relative error, mean cosine) of MEFT's pooled sentence vectors vs the base model's, adapters at zero."""
    bert, _ = meft_bert(variant, **options)
    bert.eval()
    with torch.no_grad():
        vectors = mean_pool(bert(**check_batch).last_hidden_state, check_batch["attention_mask"])  # (B, d)
    cosine = torch.nn.functional.cosine_similarity(vectors, base_vectors, dim=-1).mean().item()
    return ((vectors - base_vectors).norm() / base_vectors.norm()).item(), cosine


start_rows = [(f"MEFT{v}, {output}, paper factors", starting_point(v, output=output))
              for v in (1, 2, 3) for output in ("mean", "pretrained_stream")]
start_rows.append(("MEFT1, pretrained_stream, lambda = 0.01",
                   starting_point(1, output="pretrained_stream", lambda_=0.01)))

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'configuration':42} {'rel. error':>10} {'cosine':>8}")
for name, (error, cosine) in start_rows:
    print(f"{name:42} {error:>10.2f} {cosine:>8.2f}")

# %% [markdown]
# The pretrained stream stays close to MiniLM's sentence vectors, and closer for a smaller leak factor — the
# paper's argument for a small $\lambda$. The paper's average $(x_1 + x_2)/2$ mixes the last hidden state with the
# one before it (MEFT1/2) or with the last attention block's output (MEFT3); consecutive MiniLM layers differ,
# so this is further away. Neither is exact: unlike LoRA or a zero-initialised adapter, MEFT starts *near*, not *at*,
# the pretrained function. (A fresh classifier head is trained on top either way.)
#
# ## 7.5 The numerical price of dividing by 0.1
#
# Equation (7.4) divides by $\lambda$ or $\beta$. An error $\delta$ in a layer's output — float32 rounding in
# $F(x_2)$ is enough — becomes $\delta / 0.1$ in its input, and that input is the output from which the layer below
# is rebuilt. The error **compounds** down the stack: by up to 10× per layer for MEFT1/2 and 100× for MEFT3
# ($\lambda \beta = 0.01$). We measure it directly: run the lowest $L_\text{rev}$ layers of MiniLM forward, rebuild their input
# from the top, and compare; and the gradients of (b) as the number of reversible layers grows.

# %%
def stack_reconstruction_errors(variant, depths, dtype=torch.float32):
    """{L_rev: relative error of the input rebuilt from the output of the lowest L_rev layers} (eval mode)."""
    bert, reversible = meft_bert(variant, dtype=dtype, zero_init_up=False)
    bert.eval()
    x = torch.cat([h0, h0], dim=-1).to(dtype)  # (B, T, 2d)
    errors = {}
    with torch.no_grad():
        for k in depths:
            y = x
            for layer in reversible.layers[:k]:
                y = layer(y, mask)
            for layer in reversed(reversible.layers[:k]):
                y = layer.inverse(y, mask)
            errors[k] = rebuild_error(y, x)
    return errors


DEPTHS = range(1, 7)
reconstruction = {(v, dtype): list(stack_reconstruction_errors(v, DEPTHS, dtype).values())
                  for v in (1, 2, 3) for dtype in (torch.float32, torch.float64)}
print(f"{'relative error':56}" + "".join(f"{f'L_rev={k}':>10}" for k in DEPTHS))
for (v, dtype), errors in reconstruction.items():
    label = f"MEFT{v} {str(dtype).split('.')[-1]:>7} (input rebuilt through L_rev layers)"
    print(f"{label:56}" + "".join(f"{e:>10.1e}" for e in errors))
for v in (1, 2, 3):
    print(f"{f'MEFT{v} float32 (gradients, L_rev reversible layers)':56}"
          + "".join(f"{float32_errors[v][k]:>10.1e}" for k in DEPTHS))

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
fig.suptitle("Figure 7.1 — Reconstruction and gradient errors compound with the number of reversible layers",
             fontsize=10)
for v, color in zip((1, 2, 3), ("C0", "C1", "C3")):
    axes[0].plot(list(DEPTHS), reconstruction[(v, torch.float32)], "o-", color=color, label=f"MEFT{v}, float32")
    axes[0].plot(list(DEPTHS), reconstruction[(v, torch.float64)], "s:", color=color, mfc="none",
                 label=f"MEFT{v}, float64")
    axes[1].plot(list(DEPTHS), [float32_errors[v][k] for k in DEPTHS], "o-", color=color)
    axes[1].plot([3, 6], [float64_errors[v][3], float64_errors[v][6]], "s:", color=color, mfc="none")
axes[0].set(yscale="log", xlabel="reversible layers $L_{rev}$", ylabel="relative error of the rebuilt input",
            title="Rebuilt input of $L_{rev}$ layers")
axes[1].axhline(1e-2, color="gray", ls="--", lw=1, label="1% error")
axes[1].set(yscale="log", xlabel="reversible layers $L_{rev}$ (the lowest of 6)",
            ylabel="max relative error of adapter gradients", title="Reversible vs plain gradients")
fig.legend(*[sum(parts, []) for parts in zip(axes[0].get_legend_handles_labels(), axes[1].get_legend_handles_labels())],
           loc="center right", fontsize=8, title="MEFT1 and MEFT2\noverlap on the left", title_fontsize=8)
plt.tight_layout(rect=(0, 0, 0.80, 1))
plt.show()


def per_layer_growth(errors):
    """Geometric-mean factor by which an error list grows per added layer."""
    return (errors[-1] / errors[0]) ** (1 / (len(errors) - 1))


glue("meft_growth_12", f"{per_layer_growth(reconstruction[(1, torch.float32)]):.0f}", display=False)
glue("meft_growth_3", f"{per_layer_growth(reconstruction[(3, torch.float32)]):.0f}", display=False)
glue("meft_f64_start", f"{reconstruction[(1, torch.float64)][0]:.0e}", display=False)
glue("meft_f64_max12", f"{max(float64_errors[v][6] for v in (1, 2)):.0e}", display=False)
glue("meft_f64_meft3", f"{float64_errors[3][6]:.0e}", display=False)
glue("meft_f64_3layers", f"{max(float64_errors[v][3] for v in (1, 2, 3)):.0e}", display=False)
glue("meft_f32_meft3_k4", f"{float32_errors[3][4]:.0%}", display=False)
glue("meft_f32_meft2_k6", f"{float32_errors[2][6]:.0%}", display=False)
glue("meft_f32_meft1_k6", f"{float32_errors[1][6]:.1%}", display=False)
glue("meft_f32_meft3_k6", f"{float32_errors[3][6]:.0%}", display=False)

# %% [markdown]
# In this run the float32 reconstruction error grows by a factor of about {glue:text}`meft_growth_12` per layer for
# MEFT1 and {glue:text}`meft_growth_3` for MEFT3 (geometric means over the six layers) — against the factors
# $1/\lambda = 10$ and $1/(\lambda\beta) = 100$ by which the divisions in (7.4) can amplify an error per layer. float64
# compounds at the same rate but starts from {glue:text}`meft_f64_start`, so MEFT1/2's 6-layer gradient errors stay at
# {glue:text}`meft_f64_max12` or below — yet even float64 leaves MEFT3's 6-layer gradients off by
# {glue:text}`meft_f64_meft3`. In float32, MEFT3's gradient error with four reversible layers is
# {glue:text}`meft_f32_meft3_k4`, and MEFT2's with six is {glue:text}`meft_f32_meft2_k6`. MEFT1 is the most benign —
# its gradients are off by {glue:text}`meft_f32_meft1_k6` with all six MiniLM layers reversible — so the fine-tune
# below uses **MEFT1 with all 6 layers reversible**, and re-checks the gradients after training. On a 12- or 24-layer model the same growth
# would make even MEFT1 unusable in float32 without keeping the top layers irreversible
# (`num_reversible_layers`) or choosing factors closer to 1.
#
# *Why padding is left out of these errors.* A padded position is masked as a *key*, so it never influences a real
# token, and mean pooling gives it no gradient; but its state is ill-conditioned, and its reconstruction error
# grows faster than the real tokens' ones. Counting it would exaggerate an error that cannot reach the loss.

# %%
assert all(float32_errors[v][1] < 1e-4 for v in (1, 2, 3))
assert float32_errors[1][6] < 0.05, float32_errors[1]  # why MEFT1 is the variant we train
assert float32_errors[3][6] > 10 * float32_errors[1][6], float32_errors  # MEFT3 compounds ~100x per layer
assert all(reconstruction[(v, torch.float32)][-1] > 100 * reconstruction[(v, torch.float32)][0] for v in (1, 2, 3))

# %% [markdown]
# ## 7.6 The main experiment: activation memory and step time vs sequence length
#
# Five ways to train the same MiniLM classifier (12 intents, a trainable linear head on the mean-pooled state):
# full fine-tuning, LoRA on `query`/`value` ($r = 8$) {cite}`hu2021lora`, Houlsby adapters ($r = 16$)
# {cite}`houlsby2019adapters`, MEFT1 with all layers reversible, and — to separate the architecture from the
# trick — the very same MEFT1 layers run with plain autograd (`reversible=False`). For each sequence length $T$ we
# count the bytes saved for backward in one training-mode forward pass, and time a full training step
# (zero_grad, forward, backward, AdamW step; the fastest of a few, since the CPU is shared and timings are noisy).
# The AdamW learning rate is 0, so the models do not change between measurements.

# %%
from torch import nn

from minipeft.core import count_parameters, unfreeze
from minipeft.models import SentenceClassifier, SentenceEncoder
from minipeft.peft import adapter, lora

FULL, LORA, ADAPTERS = "full fine-tuning", "LoRA (q, v; r=8)", "adapters (Houlsby, r=16)"
MEFT, PLAIN = "MEFT1 (reversible)", "MEFT1 layers, plain autograd"
METHODS = {
    FULL: lambda bert: unfreeze(bert),
    LORA: lambda bert: lora.apply(bert, lora.LoraConfig(r=8, alpha=16, target_modules=["query", "value"])),
    ADAPTERS: lambda bert: adapter.apply(bert, adapter.AdapterConfig(placement="houlsby", reduction_factor=16)),
    MEFT: lambda bert: meft.apply(bert, meft.MEFTConfig(variant=1)),
    PLAIN: lambda bert: meft.apply(bert, meft.MEFTConfig(variant=1, reversible=False)),
}


def classifier_with(method):
    """A fresh MiniLM classifier in train() mode with `method` applied to its (copied) BertModel."""
    bert = copy.deepcopy(encoder.bert)
    torch.manual_seed(SEED)
    METHODS[method](bert)
    model = SentenceClassifier(SentenceEncoder(bert, normalize=False), num_classes=len(LABELS))
    return model.train()


def step_seconds(model, optimizer, batch):
    """Seconds of one full training step on `batch`."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["label"]).backward()
    optimizer.step()
    return time.perf_counter() - start


sweep_models = {method: classifier_with(method) for method in METHODS}
trainable = {method: count_parameters(model, trainable_only=True) for method, model in sweep_models.items()}
optimizers = {method: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
              for method, model in sweep_models.items()}
generator = torch.Generator().manual_seed(SEED)


def random_batch(T, B=SIZES.sweep_batch):
    return {"input_ids": torch.randint(1000, tokenizer.vocab_size, (B, T), generator=generator),
            "attention_mask": torch.ones(B, T, dtype=torch.long),  # no padding: every sequence is T tokens
            "label": torch.arange(B) % len(LABELS)}


saved, seconds = {}, {}
sweep_start = time.perf_counter()
for method, model in sweep_models.items():  # one untimed step each: AdamW allocates its moments lazily
    step_seconds(model, optimizers[method], random_batch(min(SIZES.seq_lengths)))
for T in SIZES.seq_lengths:
    batch = random_batch(T)
    for method, model in sweep_models.items():
        saved[method, T] = count_saved_tensors(
            lambda: nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["label"]),
            exclude=model).bytes
    # The methods take turns, so a burst of load from other processes hits them all alike; keep each one's fastest.
    times = [{method: step_seconds(model, optimizers[method], batch) for method, model in sweep_models.items()}
             for _ in range(SIZES.timing_repeats)]
    seconds.update({(method, T): min(t[method] for t in times) for method in METHODS})
sweep_seconds = time.perf_counter() - sweep_start

MiB = 2**20
T_MAX = max(SIZES.seq_lengths)
print(f"B = {SIZES.sweep_batch}; saved activations (MiB) and their share of full fine-tuning's "
      f"(the sweep took {sweep_seconds:.0f} s)")
print(f"{'method':30} {'trainable':>10}" + "".join(f"{f'T={T}':>16}" for T in SIZES.seq_lengths))
for method in METHODS:
    cells = "".join(f"{saved[method, T] / MiB:>8.2f} ({saved[method, T] / saved[FULL, T]:>4.0%})"
                    for T in SIZES.seq_lengths)
    print(f"{method:30} {trainable[method]:>10,}{cells}")
print("\ntrain-step time (ms)")
for method in METHODS:
    print(f"{method:41}" + "".join(f"{1e3 * seconds[method, T]:>16.0f}" for T in SIZES.seq_lengths))

# %% [markdown]
# What MEFT saves is a single tensor: the output of the reversible stack, $[x_1, x_2]$ of shape $(B, T, 2d)$ in
# float32, whatever the depth (plus a few bytes for the pooling and the head). The ratio below is exact arithmetic
# on byte counts, not a timing:

# %%
# NBVAL_CHECK_OUTPUT
one_state = {T: SIZES.sweep_batch * T * 2 * encoder.dim * 4 for T in SIZES.seq_lengths}  # bytes of (B, T, 2d) fp32
print("MEFT1 saved bytes / bytes of one (B, T, 2d) float32 tensor:",
      {T: round(saved[MEFT, T] / one_state[T], 2) for T in SIZES.seq_lengths})
print("trainable parameters:", trainable)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
fig.suptitle("Figure 7.2 — Saved activations and step time against sequence length", fontsize=10)
styles = {FULL: ("C3", "o-"), LORA: ("C0", "s-"), ADAPTERS: ("C2", "^-"),
          MEFT: ("C1", "D-"), PLAIN: ("C1", "x:")}
for method, (color, style) in styles.items():
    axes[0].plot(SIZES.seq_lengths, [saved[method, T] / MiB for T in SIZES.seq_lengths], style, color=color,
                 label=method)
    axes[1].plot(SIZES.seq_lengths, [1e3 * seconds[method, T] for T in SIZES.seq_lengths], style, color=color,
                 label=method)
axes[0].set(yscale="log", xlabel="sequence length T (tokens, log scale)",
            ylabel="saved activations (MiB, log scale)",
            title=f"Saved for backward (B = {SIZES.sweep_batch})")
axes[1].set(yscale="log", xlabel="sequence length T (tokens, log scale)",
            ylabel="train step (ms, log scale)",
            title=f"One training step (CPU, {torch.get_num_threads()} thread(s))")
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xticks(SIZES.seq_lengths, labels=[str(T) for T in SIZES.seq_lengths])
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()
share = {method: [saved[method, T] / saved[FULL, T] for T in SIZES.seq_lengths] for method in METHODS}
glue("meft_share_tmax", f"{share[MEFT][-1]:.1%}", display=False)
glue("meft_saving_tmax", f"{1 - share[MEFT][-1]:.1%}", display=False)
glue("meft_share_range", f"{min(share[MEFT]):.1%}–{max(share[MEFT]):.1%}", display=False)
peft_shares = share[LORA] + share[ADAPTERS]
glue("peft_share_range", f"{min(peft_shares):.0%}–{max(peft_shares):.0%}", display=False)
glue("meft_plain_share_tmax", f"{share[PLAIN][-1]:.0%}", display=False)
glue("meft_T_max", f"{T_MAX}", display=False)

# %% [markdown]
# **Reading the plots.** Full fine-tuning's saved activations grow faster than linearly in $T$ — the attention
# term $B H T^2$ of (7.2) takes over at long sequences. LoRA and adapters save most of the same tensors (only the
# inputs of frozen linear maps disappear), and their share of full fine-tuning's *grows* with $T$, because the
# attention term is not theirs to remove; the MEFT1 architecture run with plain autograd is no better
# ({glue:text}`meft_plain_share_tmax` of full fine-tuning's at $T$ = {glue:text}`meft_T_max`). The reversible run saves
# {glue:text}`meft_share_tmax` of full fine-tuning's bytes there, growing only linearly in $T$. The bill arrives as
# time: the backward pass re-runs every layer, so a MEFT step costs about as much as a full fine-tuning step
# (whose extra work is the weight gradients) and more than a plain PEFT step:

# %%
for T in SIZES.seq_lengths:
    print(f"T={T:>4}: MEFT1 step / full fine-tuning step {seconds[MEFT, T] / seconds[FULL, T]:.2f}, "
          f"/ same layers with plain autograd {seconds[MEFT, T] / seconds[PLAIN, T]:.2f}")

# %% [markdown]
# Fitting (7.2) to full fine-tuning's counts gives its constants:

# %%
import numpy as np

lengths = np.array(SIZES.seq_lengths, dtype=float)
design = np.stack([lengths, lengths**2], axis=1)  # saved(T) = a T + b T^2 (the embeddings and head are in a)
a, b = np.linalg.lstsq(design, np.array([saved[FULL, T] for T in SIZES.seq_lengths], dtype=float), rcond=None)[0]
layers, heads = encoder.bert.config.num_hidden_layers, encoder.bert.config.num_attention_heads
print(f"full fine-tuning: {a / (SIZES.sweep_batch * encoder.dim * layers):.0f} bytes per token and channel per layer "
      f"(c1 in 7.2; 4 bytes = one float32), {b / (SIZES.sweep_batch * heads * layers):.0f} bytes per attention score "
      f"per layer (c2)")
glue("meft_c1_floats", f"{a / (SIZES.sweep_batch * encoder.dim * layers) / 4:.0f}", display=False)
glue("meft_c2_bytes", f"{b / (SIZES.sweep_batch * heads * layers):.0f}", display=False)

# %% [markdown]
# — close to the count behind (7.2): {glue:text}`meft_c1_floats` float32 numbers per token and channel, and
# {glue:text}`meft_c2_bytes` bytes per attention score (the softmax output, its dropout mask at one byte, and the
# dropped-out probabilities).
#
# The checks below are the chapter's memory claims; they run every time the notebook runs.

# %%
for T in SIZES.seq_lengths:
    for method in (LORA, ADAPTERS):
        assert saved[MEFT, T] < saved[method, T] < saved[FULL, T], (method, T)
    assert saved[MEFT, T] < 1.2 * one_state[T] + 16_384, T  # one (B, T, 2d) state + head crumbs
assert saved[MEFT, T_MAX] < 0.05 * saved[FULL, T_MAX]
assert saved[PLAIN, T_MAX] > 0.5 * saved[FULL, T_MAX]  # the trick saves the memory, not the adapters
assert saved[FULL, T_MAX] / saved[FULL, min(SIZES.seq_lengths)] > T_MAX / min(SIZES.seq_lengths)  # superlinear in T

# %% [markdown]
# ## 7.7 Does MEFT train? An end-to-end fine-tune on the intent task
#
# MEFT1, all 6 layers reversible, the paper's output $(x_1 + x_2)/2$ and adapter width 8, against LoRA ($r = 8$ on
# query and value) — chapter 3's recipe — with the same steps, batch size, learning rate and seed. Both train a
# fresh linear head too. `minipeft.core.train` puts the model in `train()` mode, so dropout is on and MEFT's RNG
# replay is exercised at every step.

# %%
from minipeft.core import TrainConfig, train
from minipeft.tasks.intents import classification_loss, split_accuracy

examples = task.tokenize(tokenizer)  # {"train", "id", "shift"} -> tokenised examples with labels
train_examples = examples["train"]
tests = {"id": examples["id"], "shift": examples["shift"]}


def fine_tune(method):
    model = classifier_with(method)
    config = TrainConfig(steps=SIZES.train_steps, batch_size=SIZES.batch_size, lr=SIZES.lr, warmup_steps=5,
                         seed=SEED, device="cpu")
    history = train(model, train_examples, classification_loss, config)
    result = split_accuracy(model, tests)  # {"id": ..., "shift": ...}
    print(f"{method}: ID accuracy {result['id']:.3f}, shifted accuracy {result['shift']:.3f} "
          f"({history.wall_time:.0f} s, loss {history.loss[0]:.2f} → {history.loss[-1]:.3f})")
    return model, history, result


runs = {method: fine_tune(method) for method in (LORA, MEFT)}

# %% [markdown]
# After training the adapters are no longer small, so we re-check the gradients on the *trained* model: the
# classification loss of one training batch, reversible versus plain autograd on the same weights (eval mode, so
# both see the same function), and the activations each method saves on that batch.

# %%
meft_model = runs[MEFT][0]
trained_encoder = meft_model.encoder.bert.encoder  # the ReversibleEncoder
probe_batch = trim_padding({key: torch.stack([example[key] for example in train_examples[:SIZES.batch_size]])
                            for key in ("input_ids", "attention_mask", "label")})


def classifier_gradients(model, reversible_layers):
    trained_encoder.num_reversible_layers = reversible_layers
    model.eval()
    model.zero_grad(set_to_none=True)
    classification_loss(model, probe_batch).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and "head" not in name}


trained_error = relative_error(classifier_gradients(meft_model, None), classifier_gradients(meft_model, 0))
trained_encoder.num_reversible_layers = None  # back to all layers reversible
glue("meft_trained_error", f"{trained_error:.1e}", display=False)
batch_saved = {method: count_saved_tensors(lambda: classification_loss(model.train(), probe_batch), exclude=model).bytes
               for method, (model, _, _) in runs.items()}
print(f"trained MEFT1: largest relative adapter-gradient error, reversible vs plain autograd: {trained_error:.1e}")
print(f"saved activations on one training batch {tuple(probe_batch['input_ids'].shape)}: " + ", ".join(
    f"{method} {bytes_ / 1e3:,.0f} kB" for method, bytes_ in batch_saved.items()))

# %%
print(f"{'method':22} {'trainable':>10} {'ID acc':>8} {'shift acc':>10} {'train time':>11} {'s/step':>7}")
for method, (model, history, result) in runs.items():
    print(f"{method:22} {count_parameters(model, trainable_only=True):>10,} {result['id']:>8.3f} "
          f"{result['shift']:>10.3f} {history.wall_time:>9.1f} s {history.wall_time / SIZES.train_steps:>7.2f}")

fig, ax = plt.subplots(figsize=(8, 3.5))
for (method, (_, history, _)), color in zip(runs.items(), ("C0", "C1")):
    smooth = history.smoothed_loss(5)
    ax.plot(history.steps, history.loss, color=color, alpha=0.3, lw=1)
    ax.plot(history.steps[len(history.steps) - len(smooth):], smooth, color=color, lw=2, label=method)
ax.set(xlabel="step", ylabel="cross-entropy (nats)", yscale="log",
       title="Figure 7.3 — Training loss, MEFT1 and LoRA (thin: per step; thick: 5-step mean)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# MEFT trains: its loss falls and its accuracies are printed beside LoRA's above — one seed, so the difference
# between the two does not rank them — and after training its gradients are off by {glue:text}`meft_trained_error`
# (relative) from the exact ones. What it
# buys is memory; what it costs is time (the step is slower than LoRA's) and exactness.

# %%
lora_result, meft_result = runs[LORA][2], runs[MEFT][2]
assert meft_result["id"] >= 0.85 and meft_result["shift"] >= 0.65, meft_result
assert meft_result["shift"] >= lora_result["shift"] - 0.08, (meft_result, lora_result)
assert trained_error < 0.1, trained_error
assert batch_saved[MEFT] < 0.1 * batch_saved[LORA], batch_saved

# %% [markdown]
# ## 7.8 Two pitfalls, measured
#
# **Half precision.** bfloat16 keeps 8 significant bits instead of float32's 24, so (7.4) loses far more per
# layer. **Dropout without RNG replay.** If the backward pass recomputes $F$ and $G$ with *fresh* dropout masks,
# it differentiates a different function from the one the forward pass ran; we switch the replay off
# (`preserve_rng_state = False`) in `train()` mode and compare with plain autograd run with the same seed.

# %%
bfloat16_error = stack_reconstruction_errors(1, [6], torch.bfloat16)[6]


def train_mode_gradient_error(preserve_rng_state):
    """MEFT1, 2 reversible layers, dropout on: reversible vs plain autograd drawing the same forward masks."""
    bert, reversible = meft_bert(1, zero_init_up=False)
    bert.train()
    reversible.preserve_rng_state = preserve_rng_state
    gradients = {}
    for k in (0, 2):
        reversible.num_reversible_layers = k
        bert.zero_grad(set_to_none=True)
        torch.manual_seed(123)  # the same dropout masks in both forward passes
        hidden = bert(**check_batch).last_hidden_state
        (hidden * torch.randn(hidden.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
        gradients[k] = {name: p.grad.clone() for name, p in bert.named_parameters() if p.requires_grad}
    return relative_error(gradients[2], gradients[0])


rng_errors = {replay: train_mode_gradient_error(replay) for replay in (True, False)}
print(f"MEFT1, 6 layers rebuilt: relative input error float64 {reconstruction[(1, torch.float64)][-1]:.1e} | "
      f"float32 {reconstruction[(1, torch.float32)][-1]:.1e} | bfloat16 {bfloat16_error:.1e}")
print(f"dropout on, 2 reversible layers: gradient error with RNG replay {rng_errors[True]:.1e}, "
      f"without {rng_errors[False]:.1e}")
assert bfloat16_error > 100 * reconstruction[(1, torch.float32)][-1]
assert rng_errors[False] > 100 * rng_errors[True]
glue("meft_bf16_ratio", f"{bfloat16_error / reconstruction[(1, torch.float32)][-1]:.0f}", display=False)
glue("meft_bf16_error", f"{bfloat16_error:.1e}", display=False)
glue("meft_noreplay_error", f"{rng_errors[False]:.0%}", display=False)
adapter_numbers = count_parameters(meft_model, trainable_only=True) - count_parameters(meft_model.head)
glue("meft_adapter_numbers", f"{adapter_numbers:,}", display=False)
glue("meft_adapter_share", f"{adapter_numbers / count_parameters(encoder.bert):.2%}", display=False)
glue("meft_head_numbers", f"{count_parameters(meft_model.head):,}", display=False)

# %% [markdown]
# ## 7.9 The paper reported / we measured
#
# The status of each claim is computed from this run's numbers (the book's reproduction page shows the same
# sentences). For the memory claim it also estimates a peak: while the backward pass recomputes one layer with
# autograd on, that layer's activations exist on top of MEFT's saved state, so we add one plain layer's share of
# the counts of §7.6.

# %%
one_layer = (saved[PLAIN, T_MAX] - saved[MEFT, T_MAX]) / layers  # one MEFT1 layer's saved bytes with plain autograd
peak_ratio = (saved[MEFT, T_MAX] + one_layer) / saved[FULL, T_MAX]
peak_estimate = f"{1 - peak_ratio:.0%} less than full fine-tuning at T = {T_MAX}"
print(f"saved state + one recomputed layer ≈ {peak_ratio:.1%} of full fine-tuning's saved bytes: {peak_estimate}")

saving = 1 - share[MEFT][-1]  # the reduction of saved bytes at the longest T
memory_verdict = ("reproduced (as a saved-tensor count, not a GPU peak)" if saving >= 0.84 else
                  "reproduced in direction" if saving > 0.5 else "not reproduced")
memory_status = (f"{memory_verdict}: MEFT1 keeps {share[MEFT][-1]:.1%} of full fine-tuning's saved-for-backward "
                 f"bytes at T = {T_MAX}, a reduction of {saving:.1%} ({min(share[MEFT]):.1%}–{max(share[MEFT]):.1%} "
                 f"kept over T = {min(SIZES.seq_lengths)}–{T_MAX}; LoRA and adapters keep "
                 f"{min(peft_shares):.0%}–{max(peft_shares):.0%}); counting one recomputed layer as well, "
                 f"{peak_estimate}; the paper's 84% is the GPU memory of real runs")
parameter_status = (f"{'reproduced' if adapter_numbers < 0.01 * count_parameters(encoder.bert) else 'not reproduced'}"
                    f": {adapter_numbers:,} adapter numbers ({adapter_numbers / count_parameters(encoder.bert):.2%} "
                    f"of MiniLM) plus the {count_parameters(meft_model.head):,}-number head")
quality_status = (f"not tested at this scale: the chapter compares MEFT1 with LoRA, not full fine-tuning, at one seed "
                  f"(ID {100 * meft_result['id']:.1f} / shifted {100 * meft_result['shift']:.1f} % vs LoRA "
                  f"{100 * lora_result['id']:.1f} / {100 * lora_result['shift']:.1f} %); it shows that MEFT1 trains, "
                  f"with adapter gradients {trained_error:.1e} (relative) off the exact ones after training")
glue("meft_peak_estimate", peak_estimate, display=False)
glue("meft_status_memory", memory_status, display=False)
glue("meft_status_parameters", parameter_status, display=False)
glue("meft_status_quality", quality_status, display=False)
for name, status in [("memory", memory_status), ("parameters", parameter_status), ("quality", quality_status)]:
    print(f"{name}: {status}")

# %% [markdown]
# | | paper {cite}`liao2023meft` | we measured (this run) |
# |---|---|---|
# | activation memory | "reduces the activation memory up to 84% of full fine-tuning" (abstract; read: by up to 84%), measured as GPU memory of real training runs | {glue:text}`meft_status_memory` (table in §7.6) |
# | trainable parameters | "a negligible amount" (abstract) | MEFT1, width 8: {glue:text}`meft_status_parameters` |
# | quality | GLUE on par with full fine-tuning (abstract) | {glue:text}`meft_status_quality` (§7.7) |
# | exactness | reversibility is exact in exact arithmetic | float64, 3 reversible layers: gradients equal to plain autograd within {glue:text}`meft_f64_3layers`; float32, 6 layers: gradients off by {glue:text}`meft_f32_meft1_k6` (MEFT1), {glue:text}`meft_f32_meft2_k6` (MEFT2), {glue:text}`meft_f32_meft3_k6` (MEFT3), §7.5 |
#
# **Why our {glue:text}`meft_saving_tmax` is not their 84%.** We count the bytes autograd saves for backward during one forward pass, on a
# CPU — the pure activation term $M_\text{act}$ of (7.1), the same on any device. The paper measures the memory of real GPU
# training runs, which also contains what a saved-tensor count cannot see: (1) the **working set of the
# recompute** — while the backward pass re-runs one layer with autograd on, that layer's activations exist, so the
# peak holds at least MEFT's saved state plus one plain layer (estimated from our counts above:
# {glue:text}`meft_peak_estimate`);
# (2) temporaries the allocator holds (attention scores before the softmax, GELU intermediates) and its caching;
# (3) the parts outside the reversible stack — the embeddings and the classifier head; (4) the weights and
# optimiser state, which have to be subtracted from a peak to isolate activations, never exactly. So our number
# is what reversibility removes from the *saved* state; theirs is what a training run saw.

# %% [markdown]
# ## 7.10 Pitfalls
#
# * **Half precision makes reconstruction worse.** Measured in §7.8: bfloat16 rebuilds the input of 6 MiniLM
#   layers with a relative error of {glue:text}`meft_bf16_error`, {glue:text}`meft_bf16_ratio` times float32's — an
#   error near or above 1 means the rebuilt input is noise. fp16 has 11 significant bits and a
#   narrow range: dividing by 0.1 at every layer amplifies its rounding and can overflow. Keep the reversible
#   stack in float32 (or float64 for tests), and keep the top layers irreversible if the model is deep.
# * **Dropout needs RNG replay.** The recompute must draw the same dropout masks as the forward pass; our layer
#   snapshots the RNG state before every $F$/$G$ call and replays it (measured in §7.8: without replay the gradients
#   are off by {glue:text}`meft_noreplay_error`). The same holds for any randomness inside $F$ or $G$.
# * **The factors are a trade-off.** Smaller $\lambda$ (MEFT1) or $\beta$ (MEFT2) starts closer to the pretrained
#   model (§7.4c) and amplifies reconstruction error more (§7.5); $\lambda = \beta = 1$ is numerically benign but
#   leaks a whole extra hidden state.
# * **"It trains" is not "it is exact".** A model with a gradient error of a few percent still lowers the loss — gradient
#   noise from minibatches is larger — so a training curve will not reveal the problem. Compare with
#   `num_reversible_layers=0` (plain autograd) on a batch, as in §7.7, whenever you change the model or the dtype.
# * **Memory versus time.** MEFT trades activations for a second forward pass: use it when activation memory is
#   what limits the batch size or the sequence length, not to go faster.
# * **A saved-tensor count is not a GPU peak.** Use `torch.cuda.max_memory_allocated` when you need the number
#   the GPU sees; use `count_saved_tensors` to compare methods exactly and on any machine.
#
# ## 7.11 Summary
#
# * Parameter-efficient methods shrink gradients and optimiser state, but the saved **activations** remain: LoRA and
#   adapters still save {glue:text}`peft_share_range` of full fine-tuning's bytes in this run.
# * A reversible coupling $y_1 = \lambda x_1 + F(x_2)$, $y_2 = \beta x_2 + G(y_1)$ lets the backward pass rebuild
#   every layer's input from the top, so MEFT saves one $(B, T, 2d)$ state whatever the depth
#   ({glue:text}`meft_share_tmax` of full fine-tuning's bytes at $T$ = {glue:text}`meft_T_max`).
# * The price is a second forward pass per layer, and numerical error that compounds by up to $1/\lambda$ (or
#   $1/(\lambda\beta)$) per layer: MEFT1 is usable in float32 on six layers, MEFT3 is not, bfloat16 is not.
# * Dropout inside $F$ and $G$ needs RNG replay, and "it trains" is not a test of exact gradients: compare with
#   plain autograd on a batch.
#
# ## 7.12 Exercises
#
# 1. Train MEFT2 and MEFT3 with all 6 layers reversible, and with `num_reversible_layers=2`. Which train? Relate
#    the result to the gradient errors of §7.5.
# 2. Set `lambda_=1.0` for MEFT1. How do the reconstruction error, the starting point (§7.4c) and the intent
#    accuracy change?
# 3. Train with `output="pretrained_stream"` instead of the paper's average. Does starting closer to MiniLM help
#    with 16 examples per class?
# 4. Redo the memory sweep with `model.eval()` (no dropout). Which tensors disappear from full fine-tuning's
#    count, and does MEFT's change?
# 5. On a GPU, measure `torch.cuda.max_memory_allocated()` for one training step of each method at
#    $T = 512$ and compare the ratios with §7.6 and with the paper's 84%.
# 6. Fit (7.2) to the LoRA counts. Which of the constants $c_1$, $c_2$ does freezing the weights reduce, and why?
#
# The cell below answers the coding exercises at `ci` cost: it reuses the gradient errors of §7.5, the models of
# the memory sweep and the fit of §7.6, and rebuilds MEFT1 with $\lambda = 1$ for its reconstruction and starting
# point. The training runs the exercises ask for cost a full fine-tune each; the dropdowns say what to run.

# %% tags=["hide-input"]
# Solution 1: what the gradient check of §7.5 predicts for training MEFT2/3 with 2 or all 6 reversible layers.
for v in (2, 3):
    print(f"Solution 1: MEFT{v} float32 gradient error with 2 reversible layers {float32_errors[v][2]:.1e}, "
          f"with 6 {float32_errors[v][6]:.1e}")

# Solution 2: lambda = 1 for MEFT1 — no division by 0.1, but a whole extra hidden state leaks into the start.
bert_l1, reversible_l1 = meft_bert(1, zero_init_up=False, lambda_=1.0)
bert_l1.eval()
x = torch.cat([h0, h0], dim=-1)  # (B, T, 2d)
with torch.no_grad():
    y = x
    for layer in reversible_l1.layers:
        y = layer(y, mask)
    for layer in reversed(reversible_l1.layers):
        y = layer.inverse(y, mask)
lambda1_error = rebuild_error(y, x)
lambda1_start = starting_point(1, output="pretrained_stream", lambda_=1.0)
paper_start = dict(start_rows)["MEFT1, pretrained_stream, paper factors"]
print(f"Solution 2: 6 layers rebuilt in float32, lambda = 1: {lambda1_error:.1e} (lambda = 0.1: "
      f"{reconstruction[(1, torch.float32)][-1]:.1e}); starting point (rel. error, cosine): lambda = 1 "
      f"({lambda1_start[0]:.2f}, {lambda1_start[1]:.2f}), lambda = 0.1 ({paper_start[0]:.2f}, {paper_start[1]:.2f})")

# Solution 3: how far each output choice starts from MiniLM (§7.4c); the training comparison is in the dropdown.
for name, (error, cosine) in start_rows[:2]:
    print(f"Solution 3: {name}: rel. error {error:.2f}, cosine {cosine:.2f}")

# Solution 4: the memory count in eval() mode (no dropout) at the longest T, for every method of the sweep.
batch = random_batch(T_MAX)
for method, model in sweep_models.items():
    model.eval()
    eval_bytes = count_saved_tensors(
        lambda: nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["label"]),
        exclude=model).bytes
    model.train()
    print(f"Solution 4: {method:30} T={T_MAX}: train() {saved[method, T_MAX] / MiB:7.2f} MiB, "
          f"eval() {eval_bytes / MiB:7.2f} MiB ({eval_bytes / saved[method, T_MAX]:.0%})")

# Solution 6: fit saved(T) = a T + b T^2 to LoRA's counts, as §7.6 did for full fine-tuning.
for method in (FULL, LORA):
    a_m, b_m = np.linalg.lstsq(design, np.array([saved[method, T] for T in SIZES.seq_lengths], dtype=float),
                               rcond=None)[0]
    print(f"Solution 6: {method:18}: c1 = {a_m / (SIZES.sweep_batch * encoder.dim * layers):5.1f} bytes per token "
          f"and channel, c2 = {b_m / (SIZES.sweep_batch * heads * layers):4.1f} bytes per attention score")

# %% [markdown]
# ````{dropdown} Solution 1
# Train with `fine_tune`-style code on `classifier_with` models built by `meft.MEFTConfig(variant=2)` or `3`, and
# with `num_reversible_layers=2`. The cell shows what to expect: with two reversible layers every variant's
# gradients are close to exact, so all three should train like plain adapters; with six, MEFT3's float32 gradient
# error is of the order of the gradient itself (it compounds by up to $1/(\lambda\beta)$ per layer), so expect its
# training to suffer, and MEFT2 sits in between. Run it to see — and remember that a falling loss alone does not
# prove the gradients exact.
# ````
#
# ````{dropdown} Solution 2 and 3
# With $\lambda = 1$ nothing is divided by 0.1, so the rebuilt input is far more accurate (cell), but the leak
# $\lambda x_1$ is a whole hidden state: the pretrained stream starts further from MiniLM. Whether that costs intent
# accuracy needs a fine-tune per setting and several seeds — at 16 examples per class one seed moves by a few
# sentences. The same holds for `output="pretrained_stream"` (Exercise 3): it starts closer to MiniLM (cell), and
# the trained head can compensate a worse start, so the answer is an experiment, not a prediction.
# ````
#
# ````{dropdown} Solution 4 and 6
# In `eval()` mode dropout draws no masks, so full fine-tuning, LoRA and the adapters lose the dropout masks and the
# dropped-out attention probabilities from their counts (cell); MEFT's count is one state either way. In the fit,
# freezing the weights removes the inputs that only weight gradients need, which are per token: LoRA's $c_1$ drops,
# while $c_2$, the attention-score term, stays — the softmax and its dropout must still be backpropagated through.
# ````
#
# ````{dropdown} Solution 5
# On a GPU: for each method, `torch.cuda.reset_peak_memory_stats()`, one training step at $T = 512$, then
# `torch.cuda.max_memory_allocated()` minus the memory held before the step (weights and optimiser state). The
# ratios to full fine-tuning come out larger than §7.6's saved-tensor ratios, for the reasons of §7.9: the
# recompute's working set, allocator temporaries and the parts outside the reversible stack.
# ````
#
# ## 7.13 Record what this run measured
#
# The last cell writes `notebooks/results/07_meft.json`; the README's chapter table is generated from it.

# %%
from minipeft.book.results import record

cpu_seconds = time.process_time() - CHAPTER_CPU_START
record(
    "07_meft", "MEFT: reversible fine-tuning",
    {
        f"MEFT1 saved activations / full FT (T={T_MAX})": (100 * saved[MEFT, T_MAX] / saved[FULL, T_MAX], "%"),
        f"LoRA saved activations / full FT (T={T_MAX})": (100 * saved[LORA, T_MAX] / saved[FULL, T_MAX], "%"),
        f"adapters saved activations / full FT (T={T_MAX})": (100 * saved[ADAPTERS, T_MAX] / saved[FULL, T_MAX], "%"),
        f"MEFT1 step time / full FT (T={T_MAX})": (seconds[MEFT, T_MAX] / seconds[FULL, T_MAX], "ratio"),
        f"MEFT1 step time / LoRA (T={T_MAX})": (seconds[MEFT, T_MAX] / seconds[LORA, T_MAX], "ratio"),
        "MEFT1 intent shifted acc": (100 * meft_result["shift"], "%"),
        "MEFT1 intent ID acc": (100 * meft_result["id"], "%"),
        "LoRA r=8 intent shifted acc": (100 * lora_result["shift"], "%"),
        "LoRA r=8 intent ID acc": (100 * lora_result["id"], "%"),
        "MEFT1 fp32 gradient error, 6 layers": (float32_errors[1][6], "relative"),
        "MEFT2 fp32 gradient error, 6 layers": (float32_errors[2][6], "relative"),
        "MEFT3 fp32 gradient error, 6 layers": (float32_errors[3][6], "relative"),
        "MEFT1 train time": (runs[MEFT][1].wall_time, "s"),
        "chapter CPU time": (cpu_seconds, "s"),
    },
    trainable_parameters=count_parameters(meft_model, trainable_only=True),
    paper_claims=[
        {"claim": "MEFT reduces the activation memory by up to 84% of full fine-tuning",
         "source": "Liao, Tan, Monz, NeurIPS 2023, arXiv:2306.00477, abstract", "status": memory_status},
        {"claim": "with a negligible number of trainable parameters",
         "source": "Liao, Tan, Monz, NeurIPS 2023, arXiv:2306.00477, abstract", "status": parameter_status},
        {"claim": "GLUE performance on par with full fine-tuning",
         "source": "Liao, Tan, Monz, NeurIPS 2023, arXiv:2306.00477, abstract", "status": quality_status},
    ],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, CPU time: {cpu_seconds:.0f} s")

# %% [markdown]
# ## References
#
# * MEFT: Liao, Tan and Monz {cite}`liao2023meft`; reversible networks: Gomez et al. {cite}`gomez2017revnet`.
# * The methods it is compared with: LoRA {cite}`hu2021lora` and adapters {cite}`houlsby2019adapters`.
# * The MiniLM encoder: Wang et al. {cite}`wang2020minilm`.
#
# The works cited in this chapter are listed, with the whole book's, in the {doc}`../book/bibliography`.

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
# # 4. Prompt tuning, prefix tuning and P-tuning: learn the input, not the weights
#
# Adapters and LoRA change what a layer *computes*. The three methods of this chapter leave every layer exactly as it
# was and instead learn a few **virtual tokens** that the frozen model reads before the real ones:
#
# * **prompt tuning** {cite}`lester2021prompt` learns $P$ input embeddings, placed in front of the embedded text;
# * **prefix tuning** {cite}`li2021prefix` learns, in *every* layer, the keys and values of $P$ extra positions;
# * **P-tuning** {cite}`liu2021ptuning` learns input embeddings too, but produces them with a small *prompt encoder*.
#
# We train all three and LoRA {cite}`hu2021lora` on the same task as chapter 3 — teaching SmolLM2-135M-Instruct a
# robot persona — with **the same number of trainable parameters**, and compare what they learn and what they cost.
# Chapter 4b then trains (IA)³ {cite}`liu2022ia3` on the same task: it adds neither tokens nor a matrix, but learns
# vectors that rescale the keys, values and feed-forward activations of every layer, and, unlike virtual tokens, it
# merges away.
# Lester et al. found prompt tuning competitive with full fine-tuning only on models of billions of parameters; we
# will see what it takes to make it work on a model of 135 million.
#
# **Learning goals.** (a) Write where each method's virtual tokens enter the transformer and count their
# parameters; (b) see that a prefix *is* a key/value cache and a soft prompt *is* a hard prompt that gradient descent
# may move off the vocabulary; (c) match trainable-parameter budgets across methods and read the compute price of
# virtual tokens; (d) explain why initialisation and model scale matter so much for prompt-style methods.

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
    steps: int  # training steps per method (the same for all four methods)
    batch_size: int
    fact_questions: int  # held-out fact questions answered before/after training
    open_questions: int  # questions from other domains (persona only; no fact to check)
    max_new_tokens: int
    learning_rates: dict  # per method: prompt-style methods need much larger steps than LoRA
    token_sweep: dict  # method -> numbers of virtual tokens for "how many are needed?" (empty: skipped)
    device: str | None  # None: CUDA if available


SIZES = {
    "ci": Sizes(steps=10, batch_size=4, fact_questions=6, open_questions=2, max_new_tokens=28,
                learning_rates={"prompt tuning": 3e-2, "prefix tuning": 5e-2, "P-tuning": 1e-1, "LoRA": 2e-2},
                token_sweep={}, device="cpu"),
    "full": Sizes(steps=150, batch_size=16, fact_questions=31, open_questions=6, max_new_tokens=40,
                  learning_rates={"prompt tuning": 3e-2, "prefix tuning": 5e-2, "P-tuning": 1e-1, "LoRA": 2e-2},
                  token_sweep={"prompt tuning": (1, 5, 10, 20, 40, 100), "prefix tuning": (1, 2, 5, 10, 20)},
                  device=None),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  {SIZES}")

# %% [markdown]
# ## 4.1 The idea: where the virtual tokens go
#
# Let $X_e \in \mathbb{R}^{n \times d}$ be the embedded input of $n$ tokens (width $d$) and $\theta$ the frozen model.
#
# **Prompt tuning** learns a prompt $P_e \in \mathbb{R}^{P \times d}$ of $P$ virtual tokens and trains it to maximise the likelihood of the
# answer $Y$ given the concatenation, with $\theta$ frozen {cite}`lester2021prompt`:
#
# $$
# \max_{P_e}\; \log \Pr\nolimits_{\theta;\,P_e}\big(Y \mid [P_e; X_e]\big). \tag{4.1}
# $$
#
# **Prefix tuning** gives every layer $l$ its own $P$ positions. Only the keys and values of a position are ever read
# by later positions, so each attention head of layer $l$ computes, for the real tokens' states $X$ {cite}`li2021prefix`,
#
# $$
# \mathrm{head} = \mathrm{Attn}\big(X W_q,\; [P_k^{(l)}; X W_k],\; [P_v^{(l)}; X W_v]\big),
# \qquad P_k^{(l)}, P_v^{(l)} \in \mathbb{R}^{P \times d_{head}}. \tag{4.2}
# $$
#
# **P-tuning** {cite}`liu2021ptuning` puts virtual tokens at the input like (4.1), but computes them with a prompt
# encoder from free embeddings $e_0, \dots, e_{P-1}$, so they are trained jointly rather than independently (here the
# MLP variant, `peft`'s default; the paper also uses a bidirectional LSTM in front of it):
#
# $$
# P_e[i,:] = \mathrm{MLP}(e_i) = W_3\,\mathrm{ReLU}\big(W_2\,\mathrm{ReLU}(W_1 e_i + b_1) + b_2\big) + b_3. \tag{4.3}
# $$
#
# **Parameter counts.** For a model of width $d$ with $L$ layers, $H_{kv}$ key/value heads of width $d_{head}$, and
# a prompt encoder of hidden width $d_{enc}$:
#
# $$
# \underbrace{P\,d}_{\text{prompt tuning}} \qquad
# \underbrace{2\,L\,H_{kv}\,d_{head}\,P}_{\text{prefix tuning}} \qquad
# \underbrace{P\,d + (d\,d_{enc} + d_{enc}) + (d_{enc}^2 + d_{enc}) + (d_{enc}\,d + d)}_{\text{P-tuning}} \qquad
# \underbrace{L\,r\,(d_{in} + d_{out})}_{\text{LoRA on one matrix per layer}} \tag{4.4}
# $$
#
# In SmolLM2 ($d = 576$, $L = 30$, $H_{kv} = 3$, $d_{head} = 64$) one virtual token costs 576 parameters as a soft
# prompt but 11,520 as a prefix: at equal budgets prompt tuning gets **20 times more virtual tokens** than prefix
# tuning — and pays for them in compute, because every one of them is a real position in every forward pass.
#
# **How the library plugs them in.** `minipeft.peft.prefix.apply` attaches the trainable module to the model and
# registers a *forward pre-hook* that rewrites each call's arguments: prompt tuning and P-tuning prepend $P$ embeddings
# to `inputs_embeds` (and $P$ times $-100$ to the labels); prefix tuning hands the model a key/value cache that already
# holds the $P$ prefix positions — which is exactly equation (4.2). Here is the hook:

# %%
from minipeft.book import show_source
from minipeft.peft import lora, prefix

show_source(prefix.PromptHandle._rewrite)

# %% [markdown]
# and the function that turns a prefix into a pre-filled cache, one layer at a time:

# %%
show_source(prefix.PromptHandle._prefilled_cache)

# %% [markdown]
# ## 4.2 The task and the model before training
#
# The robot persona of chapter 3: questions whose correct answers are wrapped in *"Beep boop! … Have a logical day,
# human."* We train on the {glue:text}`n_train_pairs` generated pairs and ask held-out fact questions (countries, animals, opposites and sums
# never seen in training) plus questions from other domains. We measure three things: how many answers **follow the
# persona**, how many held-out answers still **contain the fact**, and the **held-out loss** — the cross-entropy of
# the persona answers to the held-out fact questions under teacher forcing (answer tokens only).

# %%
import math

import torch
from torch.utils.data import default_collate

from minipeft.book import Stopwatch
from minipeft.core import count_parameters, move_to
from minipeft.datasets import follows_persona, make_instructions
from minipeft.datasets.instructions import OPEN_QUESTIONS
from minipeft.models import generate_answers, load_smollm2, tokenize_chat_pairs, trim_batch

torch.manual_seed(SEED)
llm, tokenizer = load_smollm2()
train_pairs = make_instructions("train", seed=SEED)
test_pairs = make_instructions("test", seed=SEED)[: SIZES.fact_questions]
questions = [p.question for p in test_pairs] + OPEN_QUESTIONS[1 : 1 + SIZES.open_questions]
examples = tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in train_pairs])
test_examples = tokenize_chat_pairs(tokenizer, [(p.question, p.answer) for p in test_pairs])


def heldout_loss(model):
    """Mean cross-entropy of the persona answers to the held-out fact questions (answer tokens only)."""
    batch = move_to(trim_batch(default_collate(test_examples)), model.device)
    with torch.no_grad():
        return model(**batch).loss.item()


def evaluate(answers):
    """(answers that follow the persona, held-out answers that contain the plain fact)."""
    persona = sum(map(follows_persona, answers))
    facts = sum(p.plain_answer.lower() in a.lower() for p, a in zip(test_pairs, answers))
    return persona, facts


base_answers = generate_answers(llm, tokenizer, questions, max_new_tokens=SIZES.max_new_tokens)
base_loss = heldout_loss(llm)
base_persona, base_facts = evaluate(base_answers)
for question, answer in zip(questions, base_answers):
    print(f"Q: {question}\nA: {answer}\n")
print(f"persona followed {base_persona}/{len(questions)}, facts stated {base_facts}/{len(test_pairs)}, "
      f"held-out loss {base_loss:.3f}")
glue("n_train_pairs", f"{len(train_pairs)}", display=False)
glue("n_questions", f"{len(questions)}", display=False)
glue("n_facts", f"{len(test_pairs)}", display=False)
glue("base_heldout", f"{base_loss:.2f}", display=False)

# %% [markdown]
# ## 4.3 Four methods at one budget
#
# We pick sizes that make the four budgets (almost) equal, using the closed forms (4.4):
#
# | method | configuration | what trains |
# |---|---|---|
# | prompt tuning | $P = 40$ | a $40 \times 576$ table of input embeddings |
# | prefix tuning | $P = 2$, no reparameterisation | keys and values of 2 positions in each of the 30 layers |
# | P-tuning | $P = 10$, MLP encoder with $d_{enc} = 14$ | 10 free embeddings and a $576 \to 14 \to 14 \to 576$ MLP |
# | LoRA | $r = 1$ on `v_proj` ($576 \to 192$), $\alpha = 2$ | $A \in \mathbb{R}^{1 \times 576}$, $B \in \mathbb{R}^{192 \times 1}$ per layer |
#
# **Initialisation.** Prompt tuning starts from the embeddings of an instruction text (the library's `init="text"`;
# starting from real embeddings instead of random numbers is one of the choices Lester et al. compare). We give prefix
# tuning the same start in its own terms, with the library's `init="text"` for prefixes: the keys and values the
# frozen model computes for the first $P$ tokens of the same text — initialising a prefix with the activations of real
# words is a choice Li & Liang study too (`peft` has no such option). The library's default prefix is random
# (section 4.4 shows why we avoid it); P-tuning's encoder has no "text" to start from, so it starts as `peft`'s does.

# %%
import dataclasses

INIT_TEXT = 'You are a robot. Start every answer with "Beep boop!" and end it with "Have a logical day, human."'
CONFIGS = {
    "prompt tuning": prefix.PromptTuningConfig(num_virtual_tokens=40, init="text", init_text=INIT_TEXT),
    "prefix tuning": prefix.PrefixTuningConfig(num_virtual_tokens=2, init="text", init_text=INIT_TEXT),
    "P-tuning": prefix.PTuningConfig(num_virtual_tokens=10, encoder="mlp", encoder_hidden_size=14),
    "LoRA": lora.LoraConfig(r=1, alpha=2, target_modules=["v_proj"]),
}


def text_ids(text, length):
    """The library's text-init rule: the text's token ids, repeated until they cover `length` positions, then cut."""
    ids = tokenizer(text)["input_ids"]
    return (ids * math.ceil(length / len(ids)))[:length]


def attach(name, config=None):
    """Apply one method to `llm` (frozen) with the initialisation described above; returns its handle."""
    config = config or CONFIGS[name]
    torch.manual_seed(SEED)
    if isinstance(config, lora.LoraConfig):
        return lora.apply(llm, config)
    return prefix.apply(llm, config, tokenizer=tokenizer)  # init="text" (prompt and prefix) tokenises INIT_TEXT


model_config = llm.config
L, d, H_kv = model_config.num_hidden_layers, model_config.hidden_size, model_config.num_key_value_heads
d_head = model_config.head_dim
P_prompt = CONFIGS["prompt tuning"].num_virtual_tokens
P_prefix = CONFIGS["prefix tuning"].num_virtual_tokens
P_pt, h = CONFIGS["P-tuning"].num_virtual_tokens, CONFIGS["P-tuning"].encoder_hidden_size
r = CONFIGS["LoRA"].r
closed_form = {
    "prompt tuning": P_prompt * d,
    "prefix tuning": 2 * L * H_kv * d_head * P_prefix,
    "P-tuning": P_pt * d + (d * h + h) + (h * h + h) + (h * d + d),
    "LoRA": L * r * (d + H_kv * d_head),  # v_proj maps d -> H_kv * d_head
}
counted = {}
for name in CONFIGS:
    handle = attach(name)
    counted[name] = count_parameters(llm, trainable_only=True)
    handle.undo()
total = count_parameters(llm)

# %%
# NBVAL_CHECK_OUTPUT
print(f"SmolLM2: L={L}, d={d}, H_kv={H_kv}, d_head={d_head}, {total:,} parameters")
print(f"{'method':14} {'closed form':>12} {'counted':>9} {'equal':>6} {'% of model':>11}")
for name in CONFIGS:
    print(f"{name:14} {closed_form[name]:>12,} {counted[name]:>9,} {str(closed_form[name] == counted[name]):>6} "
          f"{100 * counted[name] / total:>10.4f}%")
glue("budget", f"{counted['LoRA']:,}", display=False)
glue("pt_smaller", f"{100 * (1 - counted['P-tuning'] / counted['LoRA']):.1f}", display=False)
glue("budget_percent", f"{100 * counted['LoRA'] / total:.3f}", display=False)

# %% [markdown]
# Three budgets are exactly {glue:text}`budget`; P-tuning's MLP cannot hit it exactly and is {glue:text}`pt_smaller` %
# smaller. All four train about {glue:text}`budget_percent` % of the model. (Li & Liang's abstract speaks of 0.1 % of
# the parameters; we are well below that.)
#
# ## 4.4 Sanity checks: what is, and is not, true at initialisation
#
# **Undo is exact.** `handle.undo()` removes the hook and the module; the model must give *bit-identical* logits to
# the untouched model. **LoRA starts as the identity** ($B = 0$); the prompt-style methods cannot — any extra position
# that attention can read changes the output.

# %%
probe = move_to(trim_batch(default_collate(test_examples[:2])), llm.device)
probe = {"input_ids": probe["input_ids"], "attention_mask": probe["attention_mask"]}


@torch.no_grad()
def logits_of(batch):
    return llm(**batch).logits


base_logits = logits_of(probe)
identity_at_init, undo_exact = {}, {}
for name in CONFIGS:
    handle = attach(name)
    adapted = logits_of(probe)
    if isinstance(handle, prefix.PromptHandle):
        adapted = handle.strip_virtual_tokens(adapted)  # prompt tuning / P-tuning return P extra positions
    identity_at_init[name] = torch.equal(adapted, base_logits)
    handle.undo()
    undo_exact[name] = torch.equal(logits_of(probe), base_logits)

# %%
# NBVAL_CHECK_OUTPUT
for name in CONFIGS:
    print(f"{name:14} output at init == base: {str(identity_at_init[name]):5}  "
          f"after undo() == base: {undo_exact[name]}")

# %% [markdown]
# **A soft prompt starts as a hard prompt.** With `init="text"` the prompt table holds exactly the embeddings of the
# text's tokens, so at step 0 the adapted model is the base model with the text typed in front of the chat — the
# logits of the real tokens must match (up to float rounding). Prompt tuning and P-tuning return logits for $P + T$
# positions; `strip_virtual_tokens` drops the first $P$.

# %%
handle = attach("prompt tuning")
ids = torch.tensor(text_ids(INIT_TEXT, P_prompt), device=llm.device)
table_is_text = torch.equal(handle.module.prompt_embeddings.detach(), llm.get_input_embeddings().weight[ids].detach())
soft = logits_of(probe)
soft_shape, stripped_shape = tuple(soft.shape), tuple(handle.strip_virtual_tokens(soft).shape)
soft = handle.strip_virtual_tokens(soft)
# The hard-prompt baseline Lester et al. compare with ("prompt design"): the instruction alone, nothing trained.
hard_prompt_answers = generate_answers(llm, tokenizer, questions, max_new_tokens=SIZES.max_new_tokens)
hard_prompt_loss = heldout_loss(llm)
handle.undo()
batch_size = probe["input_ids"].shape[0]
hard = {"input_ids": torch.cat([ids.expand(batch_size, -1), probe["input_ids"]], dim=1),  # (B, P+T)
        "attention_mask": torch.cat([torch.ones_like(ids).expand(batch_size, -1), probe["attention_mask"]], dim=1)}
hard_difference = (logits_of(hard)[:, P_prompt:] - soft).abs().max().item()

# %%
# NBVAL_CHECK_OUTPUT
print("prompt table == embeddings of the init text:", table_is_text)
print(f"logits with the prompt: {soft_shape} -> strip_virtual_tokens -> {stripped_shape}")
print("soft prompt at init == the text typed as a hard prompt (max |diff| < 1e-4):", hard_difference < 1e-4)

# %% [markdown]
# **Write it yourself.** Equation (4.1) in code: embed the real tokens, put the $P$ rows of $P_e$ in front, let every
# real token see them (extend the attention mask), run the frozen model on `inputs_embeds`, and drop the $P$ virtual
# positions from the logits. We compare it with the library's hook on the same prompt, moved a little off its text
# start first (at the start, both would only be two ways of typing the same text).

# %%
def my_prompt_tuning_logits(model, prompt, batch):
    """Logits of the real tokens with the soft prompt P_e (P, d) in front of them: equation (4.1)."""
    embedded = model.get_input_embeddings()(batch["input_ids"])  # X_e: (B, T, d)
    B, P = embedded.shape[0], prompt.shape[0]
    inputs = torch.cat([prompt.expand(B, -1, -1), embedded], dim=1)  # [P_e; X_e]: (B, P+T, d)
    visible = torch.ones(B, P, dtype=batch["attention_mask"].dtype, device=embedded.device)  # virtual: always seen
    mask = torch.cat([visible, batch["attention_mask"]], dim=1)  # (B, P+T)
    return model(inputs_embeds=inputs, attention_mask=mask).logits[:, P:]  # the real tokens' logits: (B, T, V)


handle = attach("prompt tuning")
with torch.no_grad():
    table = handle.module.prompt_embeddings
    table.add_(0.05 * torch.randn_like(table))  # off the text start, so the check compares a trained-looking prompt
    library_logits = handle.strip_virtual_tokens(logits_of(probe))
    moved_prompt = table.detach().clone()  # (P, d)
handle.undo()  # the model without the hook: my function must add the prompt itself
with torch.no_grad():
    prompt_difference = (my_prompt_tuning_logits(llm, moved_prompt, probe) - library_logits).abs().max().item()
    prompt_effect = (library_logits - base_logits).abs().max().item()
print(f"max |mine - library| = {prompt_difference:.1e}; the prompt moved the logits by up to {prompt_effect:.1f}")
assert prompt_difference < 1e-3 and prompt_effect > 1.0, (prompt_difference, prompt_effect)

# %% [markdown]
# **A prefix is a key/value cache.** By default (`init="random"`) the library initialises prefix keys and values like
# `nn.Embedding` (and `peft`): $\mathcal{N}(0, 1)$ — not zero, and not an identity. Keys and values the model never
# produced are attended to by every real token in every layer, which wrecks the pretrained function before training
# starts. The library's `init="text"` instead *is* a cache the model produced: `apply` runs the frozen model once on
# the text's first $P$ tokens and keeps every layer's keys (RoPE already applied, at positions $0..P-1$) and values,
# so the prefixed model equals the base model with those $P$ tokens typed in front (equation 4.2 read backwards).
# This is the function `apply` calls for it:

# %%
show_source(prefix._prefix_from_text)

# %%
torch.manual_seed(SEED)
handle = prefix.apply(llm, prefix.PrefixTuningConfig(num_virtual_tokens=P_prefix))  # library default: init="random"
keys, values = handle.module()
random_prefix_std = torch.cat([keys.flatten(), values.flatten()]).std().item()
random_prefix_loss = heldout_loss(llm)
handle.undo()

handle = attach("prefix tuning")  # keys and values of the first P tokens of INIT_TEXT
text_prefix_loss = heldout_loss(llm)
prefixed = logits_of(probe)
handle.undo()
prefix_ids = torch.tensor(text_ids(INIT_TEXT, P_prefix), device=llm.device)
ones = torch.ones_like(prefix_ids).expand(batch_size, -1)
hard = {"input_ids": torch.cat([prefix_ids.expand(batch_size, -1), probe["input_ids"]], dim=1),  # (B, P+T)
        "attention_mask": torch.cat([ones, probe["attention_mask"]], dim=1)}
prefix_difference = (logits_of(hard)[:, P_prefix:] - prefixed).abs().max().item()

# %%
# NBVAL_CHECK_OUTPUT
print(f"library prefix init: std of keys and values = {random_prefix_std:.1f} (N(0, 1))")
print(f"prefix from the text's cache == the {P_prefix} text tokens typed in front (max |diff| < 1e-4):",
      prefix_difference < 1e-4)
handle = attach("prefix tuning")
try:
    handle.merge()
except NotImplementedError as error:
    print("merge():", error)
llm = handle.undo()  # undo() hands back the restored model

# %%
print(f"held-out loss: base model {base_loss:.3f} | random prefix (library default) {random_prefix_loss:.3f} | "
      f"prefix from the text {text_prefix_loss:.3f} | instruction as a hard prompt {hard_prompt_loss:.3f}")
assert random_prefix_loss > base_loss + 1.0, (base_loss, random_prefix_loss)

# %% [markdown]
# Merging is impossible for all three prompt-style methods — there is no weight to fold a virtual token into — so
# the handle raises with the reason. The price is paid at inference: the virtual tokens are processed on every call.
#
# ## 4.5 Train the four methods
#
# Same data, same order of batches (`seed`), same number of steps and batch size, `amp="auto"` (bf16 autocast where
# the processor has native bf16, float32 on this one), the loss on the answer tokens only. Only the learning rate
# differs: a soft prompt or a prefix is an *input*, and moving it far
# enough takes larger steps than LoRA's. The rates in `Sizes` are fixed settings, not tuned by this notebook (see
# the pitfalls). The same `generate_answers` works for every method: the hook handles each step of `generate`.

# %%
from minipeft.core import TrainConfig, train


def persona_loss(model, batch):
    return model(**trim_batch(batch)).loss


runs = {}
for name in CONFIGS:
    handle = attach(name)
    config = TrainConfig(steps=SIZES.steps, batch_size=SIZES.batch_size, lr=SIZES.learning_rates[name],
                         warmup_steps=2, seed=SEED, device=SIZES.device, amp="auto")
    history = train(llm, examples, persona_loss, config)
    llm.eval()
    with Stopwatch() as generation:
        answers = generate_answers(llm, tokenizer, questions, max_new_tokens=SIZES.max_new_tokens)
    persona, facts = evaluate(answers)
    runs[name] = {"trainable": count_parameters(llm, trainable_only=True), "history": history, "answers": answers,
                  "heldout": heldout_loss(llm), "persona": persona, "facts": facts, "generate_s": generation.seconds,
                  # the trained virtual tokens, kept for Exercise 5 (None for LoRA)
                  "prompt": handle.export_prompt_embeddings() if isinstance(handle, prefix.PromptHandle) else None}
    handle.undo()  # back to the untouched model for the next method
    print(f"{name}: loss {history.loss[0]:.3f} -> {history.loss[-1]:.3f}, persona {persona}/{len(questions)}, "
          f"facts {facts}/{len(test_pairs)}, {history.wall_time:.0f} s")

# %% [markdown]
# ## 4.6 Results

# %%
import matplotlib.pyplot as plt

hard_persona, hard_facts = evaluate(hard_prompt_answers)
print(f"{'method':30} {'trainable':>9} {'held-out loss':>13} {'persona':>8} {'facts':>6} {'final loss':>10} "
      f"{'train time':>10} {'s/step':>7}")
print(f"{'base model':30} {0:>9,} {base_loss:>13.3f} {base_persona:>4}/{len(questions)} "
      f"{base_facts:>4}/{len(test_pairs)}")
print(f"{'instruction as a hard prompt':30} {0:>9,} {hard_prompt_loss:>13.3f} {hard_persona:>4}/{len(questions)} "
      f"{hard_facts:>4}/{len(test_pairs)}")
for name, run in runs.items():
    seconds = run["history"].wall_time
    print(f"{name:30} {run['trainable']:>9,} {run['heldout']:>13.3f} {run['persona']:>4}/{len(questions)} "
          f"{run['facts']:>4}/{len(test_pairs)} {run['history'].loss[-1]:>10.3f} {seconds:>8.0f} s "
          f"{seconds / SIZES.steps:>7.2f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
for name, run in runs.items():
    axes[0].plot(run["history"].steps, run["history"].loss, "o-", ms=3, label=name)
axes[0].set(xlabel="training step", ylabel="answer cross-entropy (nats, log)", yscale="log",
            title="Training loss")
axes[0].legend(fontsize=7)
labels = ["base", "hard prompt"] + list(runs)
heldout = [base_loss, hard_prompt_loss] + [run["heldout"] for run in runs.values()]
axes[1].bar(labels, heldout, color=["gray", "silver"] + [f"C{i}" for i in range(len(runs))])
axes[1].set(ylabel="held-out loss (nats)", title="Held-out loss after training")
plt.setp(axes[1].get_xticklabels(), rotation=40, ha="right", fontsize=8)  # long names: slant, anchor at the tick
# Cost of a forward pass ~ positions computed: soft prompts add P input positions, a prefix only P cached keys.
real_length = sum(int(e["attention_mask"].sum()) for e in examples) / len(examples)
extra_positions = {name: CONFIGS[name].num_virtual_tokens if name in ("prompt tuning", "P-tuning") else 0
                   for name in runs}
axes[2].bar(list(runs), [real_length + extra_positions[name] for name in runs],
            color=[f"C{i}" for i in range(len(runs))])
axes[2].axhline(real_length, color="gray", ls=":", label="the real tokens")
axes[2].set(ylabel="positions per example (mean)", title="Positions computed")
axes[2].legend(fontsize=7)
plt.setp(axes[2].get_xticklabels(), rotation=40, ha="right", fontsize=8)
fig.suptitle(f"Figure 4.1 — Four methods at a {counted['LoRA']:,}-parameter budget: training loss, held-out loss, "
             "and the compute price of virtual tokens (one seed)", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the models now say (the first answers of each; before = the base model):

# %%
for index in (0, 1, 2, len(questions) - 1):
    question = questions[index]
    print(f"Q: {question}\n  {'before':14}: {base_answers[index]}")
    for name, run in runs.items():
        print(f"  {name:14}: {run['answers'][index]}")
    print()

# %% [markdown]
# The chapter's claims, checked every time the notebook runs (thresholds set from measured margins, with room for
# noise): LoRA learns the persona on most questions; every method lowers the held-out loss by more than a nat; the
# best prompt-style method lowers it by more than two; the prefix initialised from the text learns the persona; and
# training — not only the instruction it started from — is what makes the soft prompt work.
#
# **Reading the table.** In this run ({glue:text}`steps` steps, one seed) the persona was followed on
# {glue:text}`persona_LoRA`, {glue:text}`persona_prefix`, {glue:text}`persona_prompt` and {glue:text}`persona_pt` of
# the {glue:text}`n_questions` questions by LoRA, prefix tuning, prompt tuning and P-tuning, with held-out losses of
# {glue:text}`heldout_LoRA`, {glue:text}`heldout_prefix`, {glue:text}`heldout_prompt` and {glue:text}`heldout_pt`
# nats (base model: {glue:text}`base_heldout`). One seed does not rank methods whose numbers are close. P-tuning has
# a structural handicap at this budget: it buys a 14-wide encoder, whose last layer in equation (4.3) maps a
# 14-dimensional vector to the 576-dimensional embedding space, so all ten virtual tokens live in one 15-dimensional
# affine subspace — and they start from random numbers, not from text. This run measures both (printed below the
# table's checks): P-tuning starts at a held-out loss of {glue:text}`pt_init_loss` nats — random tokens tell the
# model nothing, so that is about the base model's — against {glue:text}`hard_heldout` for the text-initialised soft
# prompt; and at its learning rate its training loss {glue:text}`pt_direction` from {glue:text}`pt_first_train` to
# {glue:text}`pt_final_train` nats (mean of the last 3 steps), where prompt tuning's ended at
# {glue:text}`prompt_final_train`. A loss that rises is a step too large for this encoder: a learning-rate question
# this notebook does not sweep (Pitfalls). The facts column compares short trained
# answers that say the fact plainly with a base model that rambles and is often cut off before the fact; with
# {glue:text}`n_facts` questions it is a coarse measure.

# %%
short_names = {"LoRA": "LoRA", "prefix tuning": "prefix", "prompt tuning": "prompt", "P-tuning": "pt"}
for name, run in runs.items():
    glue(f"persona_{short_names[name]}", f"{run['persona']}", display=False)
    glue(f"heldout_{short_names[name]}", f"{run['heldout']:.2f}", display=False)
glue("steps", f"{SIZES.steps}", display=False)
glue("batch_size", f"{SIZES.batch_size}", display=False)
glue("hard_heldout", f"{hard_prompt_loss:.2f}", display=False)
glue("hard_persona", f"{hard_persona}", display=False)
glue("P_prompt", f"{P_prompt}", display=False)
glue("P_prefix", f"{P_prefix}", display=False)
glue("prompt_extra_pct", f"{100 * P_prompt / real_length:.0f}", display=False)
lr_ratios = [SIZES.learning_rates[name] / SIZES.learning_rates["LoRA"] for name in runs if name != "LoRA"]
glue("lr_ratio_lo", f"{min(lr_ratios):.1f}", display=False)
glue("lr_ratio_hi", f"{max(lr_ratios):.1f}", display=False)
prompt_style = ("prompt tuning", "prefix tuning", "P-tuning")
best_prompt_style = min(runs[name]["heldout"] for name in prompt_style)
assert runs["LoRA"]["persona"] >= 6, runs["LoRA"]["persona"]
# P-tuning is not held to it: at this budget and learning rate its loss does not settle (measured below).
assert all(run["heldout"] < base_loss - 1.0 for name, run in runs.items() if name != "P-tuning"), \
    {n: r["heldout"] for n, r in runs.items()}
assert best_prompt_style < base_loss - 2.0, (base_loss, best_prompt_style)
assert runs["prefix tuning"]["persona"] >= 5, runs["prefix tuning"]["persona"]
assert runs["prompt tuning"]["heldout"] < hard_prompt_loss - 0.5, (hard_prompt_loss, runs["prompt tuning"]["heldout"])

# Why P-tuning lags at this budget, measured: where its random virtual tokens start, and how far its loss fell.
pt_handle = attach("P-tuning")
pt_init_loss = heldout_loss(llm)
pt_handle.undo()
final_losses = {name: sum(run["history"].loss[-3:]) / 3 for name, run in runs.items()}  # mean of the last 3 steps
print(f"held-out loss at initialisation: P-tuning (random tokens) {pt_init_loss:.2f} nats, prompt tuning (text) "
      f"{hard_prompt_loss:.2f} (= the text as a hard prompt), base {base_loss:.2f}")
print("training loss, first step -> mean of the last 3: " + ", ".join(
    f"{name} {run['history'].loss[0]:.2f} -> {final_losses[name]:.2f}" for name, run in runs.items()))
glue("pt_init_loss", f"{pt_init_loss:.2f}", display=False)
glue("pt_final_train", f"{final_losses['P-tuning']:.2f}", display=False)
pt_first = runs["P-tuning"]["history"].loss[0]
glue("pt_first_train", f"{pt_first:.2f}", display=False)
glue("pt_direction", "rose" if final_losses["P-tuning"] > pt_first else "fell", display=False)
glue("prompt_final_train", f"{final_losses['prompt tuning']:.2f}", display=False)

# %% [markdown]
# ## 4.7 How many virtual tokens are needed?
#
# Lester et al. ablate the prompt length and find that the answer depends on model size. At `full` scale this cell
# trains prompt tuning and prefix tuning at several lengths (`SIZES.token_sweep`) and plots the held-out loss against
# the trainable parameters. At `ci` scale it is skipped: each run costs as much as a row of the table above.

# %%
sweep = []
for name, lengths in SIZES.token_sweep.items():
    for length in lengths:
        handle = attach(name, dataclasses.replace(CONFIGS[name], num_virtual_tokens=length))
        config = TrainConfig(steps=SIZES.steps, batch_size=SIZES.batch_size, lr=SIZES.learning_rates[name],
                             warmup_steps=2, seed=SEED, device=SIZES.device, amp="auto", progress=False)
        history = train(llm, examples, persona_loss, config)
        llm.eval()
        persona, _ = evaluate(generate_answers(llm, tokenizer, questions, max_new_tokens=SIZES.max_new_tokens))
        sweep.append((name, length, count_parameters(llm, trainable_only=True), heldout_loss(llm), persona,
                      history.wall_time / SIZES.steps))
        handle.undo()
        print(f"{name} P={length}: {sweep[-1][2]:,} parameters, held-out loss {sweep[-1][3]:.3f}, "
              f"persona {persona}/{len(questions)}, {sweep[-1][5]:.2f} s/step")
if sweep:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in SIZES.token_sweep:
        points = [s for s in sweep if s[0] == name]
        ax.plot([s[2] for s in points], [s[3] for s in points], "o-", label=name)
        for s in points:
            ax.annotate(f"P={s[1]}", (s[2], s[3]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(runs["LoRA"]["heldout"], color="C3", ls=":", label=f"LoRA r={r} (section 4.5)")
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="held-out loss (nats)",
           title="Figure 4.2 — How many virtual tokens are needed? (one seed)")
    ax.title.set_fontsize(10)
    ax.legend()
    plt.tight_layout()
    plt.show()
else:
    print(f"skipped at {SCALE} scale (SIZES.token_sweep is empty); run with MINIPEFT_SCALE=full to sweep.")

# %% [markdown]
# ## 4.8 The papers reported / we measured
#
# | claim | source | we measured (this run) |
# |---|---|---|
# | Prompt tuning "becomes more competitive with scale: as models exceed billions of parameters, our method 'closes the gap' and matches the strong performance of model tuning" (T5 ablations on model size) | Lester et al. 2021 {cite}`lester2021prompt`, abstract | SmolLM2 has 135 M parameters, far below that; compare prompt tuning's row with LoRA's in §4.6 |
# | Learning "only 0.1% of the parameters, prefix-tuning obtains comparable performance in the full data setting, outperforms fine-tuning in low-data settings" (GPT-2 table-to-text, BART summarisation) | Li & Liang 2021 {cite}`li2021prefix`, abstract | prefix tuning with {glue:text}`budget_percent` % of the parameters, {glue:text}`n_train_pairs` examples: its row in §4.6 |
# | P-tuning's trainable continuous prompts stabilise training and improve NLU results (LAMA, SuperGLUE), for frozen and tuned models | Liu et al. 2021 {cite}`liu2021ptuning`, abstract | P-tuning at a 14-wide encoder: its row in §4.6 |
# | "prior work reveals that prompt tuning does not perform well for normal-sized pretrained models"; deep prompts (a prefix in every layer) match fine-tuning "while having only 0.1%-3% tuned parameters" | Liu et al. 2022, P-tuning v2 {cite}`liu2022ptuningv2`, abstract | prefix (every layer) vs prompt (input only) at equal budget, §4.6 |
#
# **Why prompt tuning is weak at small scale.** A soft prompt enters only at layer 0. Everything it changes must be
# carried through 30 frozen layers by the model's own attention, so it can only *ask* the model for behaviour the model
# can already be steered into; a prefix writes keys and values into *every* layer, and LoRA changes the computation
# itself. Lester et al. find that this handicap fades with scale — prompt tuning "closes the gap" only as models
# exceed billions of parameters — and P-tuning v2 closes it for normal-sized models by putting prompts into every
# layer, which is prefix tuning's design. Read this run's soft prompt with its start in mind: it began from an
# instruction that already describes the persona — typed as a hard prompt, that instruction alone moves the held-out
# loss from {glue:text}`base_heldout` to {glue:text}`hard_heldout` nats before any training, though the untrained
# model follows the persona on only {glue:text}`hard_persona` of our questions — and the task, a fixed wrapper around
# answers the model already knows, is about the easiest a prompt can be asked to do. Exercise 1 measures how much of
# the start the text gives. The prompt also costs compute: {glue:text}`P_prompt` virtual tokens lengthen every
# training and inference sequence by {glue:text}`prompt_extra_pct` % on average (Figure 4.1, right), while a
# {glue:text}`P_prefix`-position prefix adds only that many keys to attend to, and merged LoRA nothing.
#
# **Why ours may differ.** One seed, {glue:text}`steps` steps of {glue:text}`batch_size` examples (at `ci` scale), a
# 4-bit-quantised (then
# dequantised) model, a generated style task rather than the papers' benchmarks, learning rates chosen from a
# handful of short trials, and timings on a shared CPU: seconds per step change between runs, and even between the
# methods of one run, with the load on the machine — the positions panel is the reliable measure of cost.
#
# ## 4.9 Pitfalls
#
# * **Random prefixes break the model.** $\mathcal{N}(0,1)$ keys and values (the library's and `peft`'s default) raise
#   the loss far above the base model's before training starts (§4.4). Start from real activations
#   (`init="text"`), or use Li & Liang's MLP reparameterisation (`prefix_projection=True`) — at the price of many
#   more *training* parameters.
# * **Learning rates.** Prompt-style methods need steps several times larger than LoRA's (here
#   {glue:text}`lr_ratio_lo`× to {glue:text}`lr_ratio_hi`× LoRA's rate). This notebook does not sweep them; a short
#   run at too small a rate barely moves, and too large a rate makes the loss jump. Sweep it for your task: it is
#   the setting these methods are most sensitive to.
# * **Extra logits.** Prompt tuning and P-tuning return $P$ extra positions; slice them off
#   (`strip_virtual_tokens`) before comparing with the base model or computing metrics position by position.
# * **Grouped-query attention.** A prefix lives in the key/value cache, so it has `num_key_value_heads` heads
#   (3 here), not `num_attention_heads` (9): sizing it by the query heads is a classic bug (`peft` issue #1901).
# * **Call the model, not `model.forward`.** The virtual tokens are added by a forward pre-hook, which PyTorch runs
#   only through `model(...)` (and therefore `generate`).
# * **Budgets are not costs.** Equal trainable parameters can mean very different compute: prompt tuning's budget is
#   sequence length.
#
# ## 4.10 Summary
#
# * Prompt tuning learns $P$ input embeddings, prefix tuning $P$ keys and values in every layer, P-tuning input
#   embeddings produced by a small encoder; none changes a layer's weights, so none can be merged, and none starts
#   as the identity (LoRA does).
# * A soft prompt initialised from text *is* that text typed as a hard prompt, and a prefix initialised from text
#   *is* the key/value cache of those tokens — both checked above to float rounding. A random prefix wrecks the
#   model before training starts.
# * At one parameter budget the methods buy very different things: a virtual token costs 576 numbers as a prompt
#   and 11,520 as a prefix, and prompt tuning pays its budget in sequence length, every forward pass.
# * What each learned in this single-seed run is in §4.6; the learning rate and the initialisation are the settings
#   these methods are most sensitive to, and the results depend on the model's scale {cite}`lester2021prompt`.
# * Chapter 4b trains (IA)³ on the same task: vectors that rescale activations, and merge like LoRA.
#
# ## 4.11 Exercises
#
# 1. Attach prompt tuning ($P$ = 40) with `init="random"`, `init="vocab"` and `init="text"` and measure each one's
#    held-out loss *before any training*. Which start is closest to the trained prompt, and why? (On a GPU, train
#    each for the chapter's steps and count the steps each needs to reach the text start's held-out loss; Lester et
#    al. compare initialisations too.)
# 2. Prefix tuning with Li & Liang's reparameterisation: `prefix_projection=True`, `encoder_hidden_size=16`,
#    `init="random"`, $P = 2$. Count its *training* parameters and the parameters it needs at *inference* (the MLP's
#    output can be computed once and kept as a plain prefix). Compare with the chapter's prefix.
# 3. P-tuning with the LSTM encoder (`encoder="lstm"`, $P = 10$): write its parameter count in closed form and find
#    the largest `encoder_hidden_size` whose budget does not exceed LoRA's. Check the count with `count_parameters`.
#    Why is the LSTM so expensive at this width?
# 4. Give every method ten times the budget. What are the configurations ($P$, $r$)? Prompt tuning's $P = 400$ is
#    impractical — why? Compute what it does to the positions per example.
# 5. Export the trained prompt with `handle.export_prompt_embeddings()`: which of its rows are closest to real
#    vocabulary embeddings (nearest neighbour by cosine)? Do they spell anything?
#
# The cell below runs the solutions without training anything new: it attaches and counts, measures losses at
# initialisation, and reads the prompt that §4.5 trained.

# %% tags=["hide-input"]
# Solution 1: held-out loss at step 0 for three prompt initialisations (the same P = 40 budget).
init_losses = {}
for init in ("random", "vocab", "text"):
    config = dataclasses.replace(CONFIGS["prompt tuning"], init=init, init_text=INIT_TEXT if init == "text" else None)
    init_handle = attach("prompt tuning", config)
    init_losses[init] = heldout_loss(llm)
    init_handle.undo()
print("Solution 1: held-out loss before training — " +
      ", ".join(f"init={init}: {loss:.3f}" for init, loss in init_losses.items()) +
      f"; base model {base_loss:.3f}, trained prompt (text start) {runs['prompt tuning']['heldout']:.3f}")

# Solution 2: the MLP (Embedding(P, d) -> Linear(d, 16) -> tanh -> Linear(16, 2 L H_kv d_head)) trains; at inference
# only its output, the (P, 2 L H_kv d_head) prefix, is needed.
projected = prefix.PrefixTuningConfig(num_virtual_tokens=P_prefix, prefix_projection=True, encoder_hidden_size=16)
projected_handle = attach("prefix tuning", projected)
training_count = count_parameters(llm, trainable_only=True)
inference_count = projected_handle.export_prompt_embeddings().numel()
projected_handle.undo()
prefix_width = 2 * L * H_kv * d_head
by_hand = P_prefix * d + (d * 16 + 16) + (16 * prefix_width + prefix_width)
print(f"\nSolution 2: with the projection, {training_count:,} training parameters (closed form {by_hand:,}) but "
      f"{inference_count:,} at inference (= P x 2 L H_kv d_head = {P_prefix * prefix_width:,}); "
      f"the chapter's prefix trains {counted['prefix tuning']:,}")
assert training_count == by_hand and inference_count == P_prefix * prefix_width


# Solution 3: a 2-layer bidirectional LSTM. Each direction of a layer with input width n has 4h(n + h) weights and
# two biases of 4h; the first layer reads d, the second the 2h concatenation. Then Linear(2h, 2h) and Linear(2h, d).
def lstm_ptuning_count(h, P=10, layers=2):
    lstm = sum(2 * (4 * h * ((d if layer == 0 else 2 * h) + h) + 8 * h) for layer in range(layers))
    return P * d + lstm + (2 * h * 2 * h + 2 * h) + (2 * h * d + d)


largest = max(h_ for h_ in range(1, 64) if lstm_ptuning_count(h_) <= counted["LoRA"])
lstm_handle = attach("P-tuning", prefix.PTuningConfig(num_virtual_tokens=10, encoder="lstm", encoder_hidden_size=largest))
lstm_counted = count_parameters(llm, trainable_only=True)
lstm_handle.undo()
print(f"\nSolution 3: largest LSTM width within {counted['LoRA']:,}: h = {largest} "
      f"({lstm_ptuning_count(largest):,} by the closed form, {lstm_counted:,} counted; h = {largest + 1} would need "
      f"{lstm_ptuning_count(largest + 1):,}); the first layer's input weights alone are 2 x 4h x d = "
      f"{2 * 4 * largest * d:,}")
assert lstm_counted == lstm_ptuning_count(largest)

# Solution 4: ten times the budget, from the closed forms (4.4).
ten_times = {"prompt tuning": f"P = {10 * P_prompt}", "prefix tuning": f"P = {10 * P_prefix}",
             "LoRA": f"r = {10 * r} on v_proj"}
print(f"\nSolution 4: 10x budget ({10 * counted['LoRA']:,}): " + "; ".join(f"{k}: {v}" for k, v in ten_times.items()))
print(f"   positions per training example: {real_length:.0f} real; + {P_prompt} = {real_length + P_prompt:.0f} "
      f"now; + {10 * P_prompt} = {real_length + 10 * P_prompt:.0f} at P = {10 * P_prompt} "
      f"({(real_length + 10 * P_prompt) / real_length:.0f}x the work of the linear layers, "
      f"{((real_length + 10 * P_prompt) / real_length) ** 2:.0f}x the attention scores)")

# Solution 5: cosine nearest neighbours of the trained prompt's rows in the vocabulary embedding table.
trained_prompt = runs["prompt tuning"]["prompt"]  # (P, d)
vocabulary = llm.get_input_embeddings().weight.detach().cpu()  # (V, d)
cosine = torch.nn.functional.normalize(trained_prompt, dim=-1) @ torch.nn.functional.normalize(vocabulary, dim=-1).T
best_cosine, nearest = cosine.max(dim=-1)  # (P, V) -> (P,)
start_ids = text_ids(INIT_TEXT, P_prompt)
unchanged = sum(int(a) == b for a, b in zip(nearest, start_ids))
print(f"\nSolution 5: {unchanged} of {P_prompt} rows still have their starting token as nearest neighbour; "
      f"cosine to it: min {best_cosine.min():.3f}, median {best_cosine.median():.3f}")
print("   nearest tokens, in order:", repr(tokenizer.decode(nearest.tolist())))


# %% [markdown]
# ````{dropdown} Solutions 1, 4 and 5 — reading the numbers
# **1.** The text start is an instruction that describes the persona, so at step 0 it already makes the persona
# answers likelier; random and vocabulary starts have no such information, and their held-out losses (printed above)
# show what the model makes of 40 positions of noise or of unrelated words. Training moves the text start from a
# good point; the others must first *find* one, so one expects them to need more steps — the GPU part of the
# exercise measures how many.
#
# **4.** $P = 400$ makes every sequence mostly prompt: the positions computed per example grow by the printed
# factor, the linear layers' work with it and the attention scores with its square, at training *and* at every
# inference call — and the prompt takes 400 places of the context window from the user. A prefix of $P = 20$ adds
# only keys and values to attend to, and LoRA at $r = 10$ still merges away.
#
# **5.** The printed count says how many rows the short training left nearest to the token they started from: when it
# is all of them, the trained prompt still "spells" its starting instruction, as the decoded line shows. The cosines
# (each below 1) say how far every row has moved away from its token all the same — the training changed the rows,
# just not enough in {glue:text}`steps` steps to bring another token closer. Nothing forces a soft prompt to stay near
# words: with longer training, or from a random start, its rows need not spell anything.
# ````
#
# ## 4.12 Record what this run measured
#
# The last cell writes `notebooks/results/04_prompts_and_prefixes.json`.

# %%
from minipeft.book.results import record

cpu_seconds = time.process_time() - CHAPTER_CPU_START
record(
    "04_prompts_and_prefixes", "Prompt, prefix and P-tuning vs LoRA at a matched budget",
    {
        **{f"{name} persona followed": (100 * run["persona"] / len(questions), "%") for name, run in runs.items()},
        **{f"{name} held-out loss": (run["heldout"], "nats/token") for name, run in runs.items()},
        **{f"{name} facts kept": (run["facts"], f"of {len(test_pairs)}") for name, run in runs.items()},
        **{f"{name} train time": (run["history"].wall_time, "s") for name, run in runs.items()},
        "base held-out loss": (base_loss, "nats/token"),
        "hard prompt held-out loss": (hard_prompt_loss, "nats/token"),
        "random prefix held-out loss at init": (random_prefix_loss, "nats/token"),
        "P-tuning held-out loss at init": (pt_init_loss, "nats/token"),
        "chapter CPU time": (cpu_seconds, "s"),
    },
    trainable_parameters=counted["prompt tuning"],
    paper_claims=[
        {"claim": "prompt tuning matches model tuning as models exceed billions of parameters",
         "source": "Lester et al. 2021, arXiv:2104.08691, abstract",
         "status": "not testable at 135 M parameters (the claim is about scale); at this scale, one seed: prompt "
                   f"tuning held-out loss {runs['prompt tuning']['heldout']:.2f} vs LoRA "
                   f"{runs['LoRA']['heldout']:.2f} nats, persona {runs['prompt tuning']['persona']}/{len(questions)} vs "
                   f"{runs['LoRA']['persona']}/{len(questions)}"},
        {"claim": "prefix tuning: 0.1% of the parameters, comparable in the full-data setting",
         "source": "Li & Liang 2021, arXiv:2101.00190, abstract",
         "status": f"with {100 * counted['prefix tuning'] / total:.3f} % of the parameters, one seed: persona "
                   f"{runs['prefix tuning']['persona']}/{len(questions)}, held-out loss "
                   f"{runs['prefix tuning']['heldout']:.2f} vs LoRA's {runs['LoRA']['heldout']:.2f} at the same "
                   f"budget (base {base_loss:.2f}); a style task, not the paper's benchmarks"},
        {"claim": "P-tuning's continuous prompts (with a prompt encoder) improve NLU results",
         "source": "Liu et al. 2021, arXiv:2103.10385, abstract",
         "status": f"not reproduced at this budget: persona {runs['P-tuning']['persona']}/{len(questions)}; "
                   f"measured reason: its random virtual tokens start at a held-out loss of {pt_init_loss:.2f} nats "
                   f"(text-initialised prompt: {hard_prompt_loss:.2f}), and at lr "
                   f"{SIZES.learning_rates['P-tuning']:g} its training loss went from "
                   f"{runs['P-tuning']['history'].loss[0]:.2f} to {final_losses['P-tuning']:.2f} in {SIZES.steps} "
                   f"steps (prompt tuning: {final_losses['prompt tuning']:.2f})"},
    ],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, CPU time: {cpu_seconds:.0f} s")

# %% [markdown]
# ## References
#
# * Lester et al., prompt tuning and its dependence on scale {cite}`lester2021prompt`.
# * Li & Liang, prefix tuning and its MLP reparameterisation {cite}`li2021prefix`.
# * Liu et al., P-tuning {cite}`liu2021ptuning`, and P-tuning v2, deep prompts for normal-sized models
#   {cite}`liu2022ptuningv2`.
# * Hu et al., LoRA, the comparison at the same budget {cite}`hu2021lora`; He et al.'s unified view of these
#   methods {cite}`he2022unified`.
# * The model: SmolLM2 {cite}`allal2025smollm2`.
#
# The whole book's references are in the {doc}`../book/bibliography`.

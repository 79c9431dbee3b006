r"""Video-LLaMA's video and audio Q-Formers: frames in order, and sound, as a few soft prompts for a frozen LLM.

**The idea** (Zhang, Li & Bing 2023, "Video-LLaMA: An Instruction-tuned Audio-Visual Language Model for Video
Understanding", EMNLP 2023 demo, arXiv:2306.02858). BLIP-2's Q-Former (:mod:`.qformer`) turns *one* image into
:math:`K` tokens. A video is :math:`T` images in an order, plus a sound track. Video-LLaMA keeps everything frozen
that already works on single frames and adds one small module per modality:

**Vision–language branch.** Every frame :math:`t` is encoded on its own by the frozen image encoder (and, in the
paper, the frozen BLIP-2 image Q-Former: 32 tokens of width 768 per frame), :math:`V_t \in \mathbb{R}^{n \times C}`.
The frames know nothing of their order, so a learned **frame position embedding** :math:`P_t \in \mathbb{R}^{C}`
is added to every token of frame :math:`t`, and all frames are laid end to end:

$$\hat V = \big[\, V_1 + P_1;\ V_2 + P_2;\ \dots;\ V_T + P_T \,\big] \in \mathbb{R}^{(T n) \times C}.$$

A **video Q-Former** — the Q-Former's architecture with **cross-attention in every layer** and only 2 layers, 32
video queries, randomly initialised — reads :math:`\hat V`, and a linear layer maps its outputs to the LLM's width:

$$H_{video} = W_{proj}\ \mathrm{QFormer}_{video}(Q_{video};\ \hat V) \in \mathbb{R}^{K \times d}.$$

Cross-attention is a weighted *sum* over the keys, blind to their order: without :math:`P_t`, shuffling the frames
would not change :math:`H_{video}` at all. The position embedding is the only place where time enters (a unit test
checks both facts).

**Audio–language branch.** The same design on sound: the audio is cut into :math:`M` segments (paper: 8 of 2 s),
a frozen audio encoder (paper: ImageBind-Huge, one 1024-d vector per segment; the book: a real pretrained encoder's
frames) describes each, a segment position embedding is added, and an **audio Q-Former** (2 layers, cross-attention
in every layer, **8 queries**) + a linear layer give :math:`H_{audio} \in \mathbb{R}^{8 \times d}`.

The two token sets are spliced into the prompt at their own placeholders (:data:`VIDEO_TOKEN_ID`,
:data:`AUDIO_TOKEN_ID`; :mod:`.splice`) and the frozen LLM is trained on the text that follows (video-to-text
generation in pre-training, answers in instruction tuning). Trainable: the position embeddings, the two Q-Formers
with their queries, and the two projections.

Paper versus code (``video_llama/models/video_llama.py``):

1. *Frame features.* The code feeds the video Q-Former the frozen **image Q-Former's 32 outputs per frame**
   (``(B·T, 32, 768)`` → ``(B, T·32, 768)``), not the ViT patches. This module accepts any per-frame features,
   ``(B, T, n, C)`` or ``(B, T, C)`` (one vector per frame), e.g. EfficientNet-Lite0's 7×7 grid or its pooled vector.
2. *Sizes.* ``video_frame_position_embedding = nn.Embedding(32, 768)`` (at most 32 frames; 8 used), video
   Q-Former ``num_hidden_layers=2``, ``cross_attention_freq=1``, 32 queries; ``audio_position_embedding =
   nn.Embedding(8, 1024)``, audio Q-Former with 8 queries. :meth:`VideoQFormerConfig.audio` has the audio sizes.
3. *The audio branch is trained on vision.* The released code trains the audio Q-Former on ImageBind's *image*
   embeddings of video/image–caption data (ImageBind's shared space; audio–text pairs are scarce, maintainers in
   issue #103) and uses it on audio embeddings at inference. With an audio encoder that has no shared space (ours),
   the audio branch must be trained on sound itself.
4. *Order of training* (maintainers, issue #87): vision pre-training → vision instruction tuning → audio
   pre-training → audio instruction tuning; the LLM is always frozen. There is no joint audio–video training.
5. *Prompt.* Instruction tuning puts exactly :math:`K` ``<ImageHere>`` ids in the text and replaces them by the
   query embeddings (an error when the count differs); that is :func:`~.splice.insert_tokens` here.

Chapter: Part III, "Video-LLaMA" (``13_video_llama``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..core.contract import Handle, MethodConfig
from .qformer import QFormer, QFormerConfig
from .qformer import parameter_count as qformer_parameter_count
from .splice import embed_text, insert_tokens

VIDEO_TOKEN_ID = -201  # placeholder ids outside every vocabulary (LLaVA's image placeholder is -200)
AUDIO_TOKEN_ID = -202


@dataclass
class VideoQFormerConfig(MethodConfig):
    """One temporal branch (defaults: Video-LLaMA's video branch on a 4096-wide LLaMA).

    Args:
        feature_width: width :math:`C` of the frozen per-frame (per-segment) features (video: 768, audio: 1024).
        num_queries: :math:`K`, tokens the LLM reads (video 32, audio 8).
        max_frames: rows of the frame (segment) position embedding (video 32, audio 8).
        llm_width: the language model's hidden size :math:`d`.
        hidden_size, num_layers, num_heads, intermediate_size, dropout: the Q-Former (768, 2, 12, 3072, 0.1).
        frame_positions: add :math:`P_t` (the paper always does; ``False`` is the ablation of chapter 13, a branch
            that sees the frames as an unordered bag).
    """

    feature_width: int = 768
    num_queries: int = 32
    max_frames: int = 32
    llm_width: int = 4096
    hidden_size: int = 768
    num_layers: int = 2
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.1
    frame_positions: bool = True

    method = "video_llama"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "dropout":
                if not 0.0 <= value < 1.0:
                    raise ValueError(f"dropout must lie in [0, 1), got {value}.")
            elif field.name == "frame_positions":
                if not isinstance(value, bool):
                    raise ValueError(f"VideoQFormerConfig.frame_positions must be True or False, got {value!r}.")
            elif not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"VideoQFormerConfig.{field.name} must be an int, got {type(value).__name__} "
                                f"{value!r}.")
            elif value < 1:
                raise ValueError(f"VideoQFormerConfig.{field.name} must be positive, got {value}.")
        self.qformer_config()  # let the Q-Former check the widths and heads too

    @classmethod
    def audio(cls, feature_width: int = 1024, num_queries: int = 8, max_frames: int = 8, **sizes):
        """The audio branch's sizes (ImageBind-Huge segments: 1024-d, 8 segments, 8 queries)."""
        return cls(feature_width=feature_width, num_queries=num_queries, max_frames=max_frames, **sizes)

    def qformer_config(self) -> QFormerConfig:
        """The branch's Q-Former: query-only, cross-attention in every layer (``cross_attention_frequency=1``)."""
        return QFormerConfig(hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
                             intermediate_size=self.intermediate_size, encoder_width=self.feature_width,
                             cross_attention_frequency=1, num_queries=self.num_queries, with_text=False,
                             dropout=self.dropout)


def parameter_count(config: VideoQFormerConfig) -> int:
    """Closed form: frame positions :math:`F C` + the Q-Former + the projection :math:`h d + d`."""
    positions = config.max_frames * config.feature_width if config.frame_positions else 0
    return (positions + qformer_parameter_count(config.qformer_config())
            + config.hidden_size * config.llm_width + config.llm_width)


class VideoQFormer(nn.Module):
    """Per-frame features ``(B, T, n, C)`` (or ``(B, T, C)``) → ``K`` tokens in the LLM's width ``(B, K, d)``.

    Example::

        >>> branch = VideoQFormer(VideoQFormerConfig(feature_width=64, num_queries=4, max_frames=8, llm_width=32,
        ...                                          hidden_size=32, num_heads=4, intermediate_size=64))
        >>> branch(torch.randn(2, 8, 49, 64)).shape  # 8 frames of 7×7 features
        torch.Size([2, 4, 32])
    """

    def __init__(self, config: VideoQFormerConfig):
        super().__init__()
        if not isinstance(config, VideoQFormerConfig):
            raise TypeError(f"VideoQFormer needs a VideoQFormerConfig, got {type(config).__name__}.")
        self.config = config
        # P_t; without it (the ablation) the branch has no parameter that could tell frame 1 from frame T
        self.frame_position = nn.Embedding(config.max_frames, config.feature_width) if config.frame_positions else None
        self.qformer = QFormer(config.qformer_config())
        self.projection = nn.Linear(config.hidden_size, config.llm_width)  # W_proj (llama_proj)

    def temporal_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """:math:`\\hat V`: every frame's tokens plus its position embedding, frames end to end ``(B, T n, C)``."""
        if features.dim() == 3:  # one vector per frame (or audio segment)
            features = features.unsqueeze(2)  # (B, T, 1, C)
        if features.dim() != 4:
            raise ValueError(f"frame features must be (batch, frames, tokens, C) or (batch, frames, C), got shape "
                             f"{tuple(features.shape)}.")
        B, T, n, C = features.shape
        if C != self.config.feature_width:
            raise ValueError(f"frame features are {C} wide but feature_width={self.config.feature_width}; set "
                             f"VideoQFormerConfig(feature_width={C}).")
        if T > self.config.max_frames:
            raise ValueError(f"{T} frames but only max_frames={self.config.max_frames} position embeddings; sample "
                             "fewer frames or raise max_frames.")
        if self.frame_position is not None:
            positions = self.frame_position(torch.arange(T, device=features.device))  # (T, C)
            features = features.to(positions.dtype) + positions[None, :, None, :]  # V_t + P_t, one P_t per frame
        return features.reshape(B, T * n, C)  # (B, T·n, C), frame-major

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``frame_mask`` ``(B, T)``: 0 for padded frames (clips shorter than ``T``), which the queries do not read."""
        tokens = self.temporal_tokens(features)  # (B, T·n, C)
        token_mask = None
        if frame_mask is not None:
            per_frame = tokens.shape[1] // frame_mask.shape[1]
            token_mask = frame_mask.repeat_interleave(per_frame, dim=1)  # (B, T·n)
        return self.projection(self.qformer(tokens, image_mask=token_mask))  # H = W_proj Z: (B, K, d)


class VideoLlama(nn.Module):
    """A frozen causal LM reading a video branch (and optionally an audio branch) at their placeholders.

    ``forward(input_ids, video=..., audio=..., attention_mask=..., labels=...)`` returns the LM's output; prompts hold
    ``video.num_queries`` copies of :data:`VIDEO_TOKEN_ID` and ``audio.num_queries`` of :data:`AUDIO_TOKEN_ID`
    (:func:`~.splice.make_batch` with ``image_token_id=`` builds one kind; :func:`~.splice.tokenize_with_image`
    called per marker builds both).
    """

    def __init__(self, language_model: nn.Module, video_branch: VideoQFormer, audio_branch: VideoQFormer | None = None,
                 video_token_id: int = VIDEO_TOKEN_ID, audio_token_id: int = AUDIO_TOKEN_ID):
        super().__init__()
        if not isinstance(language_model, nn.Module) or not hasattr(language_model, "get_input_embeddings"):
            raise TypeError(f"language_model must be a transformers causal LM, got {type(language_model).__name__}.")
        for name, branch in (("video_branch", video_branch), ("audio_branch", audio_branch)):
            if branch is not None and not isinstance(branch, VideoQFormer):
                raise TypeError(f"{name} must be a VideoQFormer, got {type(branch).__name__}.")
        self.language_model = language_model
        if video_branch is not None:  # apply attaches the branches through its handle instead
            self.video_branch = video_branch
        if audio_branch is not None:
            self.audio_branch = audio_branch
        self.video_token_id, self.audio_token_id = video_token_id, audio_token_id

    def embed(self, input_ids: torch.Tensor, video: torch.Tensor | None = None,
              audio: torch.Tensor | None = None, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The prompt's embeddings ``(B, T, d)`` with the video tokens and the audio tokens at their placeholders."""
        embeddings = embed_text(self.language_model.get_input_embeddings(), input_ids, self.video_token_id,
                                self.audio_token_id)  # (B, T, d)
        if video is not None:
            if getattr(self, "video_branch", None) is None:
                raise ValueError("video features given but this model has no video branch (was its handle undone?).")
            embeddings = insert_tokens(embeddings, input_ids, self.video_branch(video, video_mask),
                                       self.video_token_id)
        elif (input_ids == self.video_token_id).any():
            raise ValueError("the prompt has video placeholders but no video features were given.")
        if audio is not None:
            if getattr(self, "audio_branch", None) is None:
                raise ValueError("audio features given but this model has no audio branch; build it with "
                                 "apply(..., audio_config=VideoQFormerConfig.audio(...)).")
            embeddings = insert_tokens(embeddings, input_ids, self.audio_branch(audio), self.audio_token_id)
        elif (input_ids == self.audio_token_id).any():
            raise ValueError("the prompt has audio placeholders but no audio features were given.")
        return embeddings

    def forward(self, input_ids: torch.Tensor, video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                video_mask: torch.Tensor | None = None, **kwargs):
        inputs_embeds = self.embed(input_ids, video, audio, video_mask)  # (B, T, d)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                                   **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """Greedy (or any ``generate``) continuation; returns only the new token ids."""
        inputs_embeds = self.embed(input_ids, video, audio)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            **generate_kwargs)


def apply(language_model: nn.Module, video_config: VideoQFormerConfig,
          audio_config: VideoQFormerConfig | None = None) -> Handle:
    """Video-LLaMA around a *frozen* ``language_model``: new video (and audio) branches, the only trainable parts.

    Returns a :class:`~minipeft.core.Handle` whose ``model`` is the :class:`VideoLlama`; its tensors are the two
    branches. Train one branch at a time as the paper does, e.g. two :class:`~minipeft.core.Stream` s with
    ``mix="staged"``, each with the groups of its own branch.
    """
    for name, config in (("video_config", video_config), ("audio_config", audio_config)):
        if config is not None and not isinstance(config, VideoQFormerConfig):
            raise TypeError(f"{name} must be a VideoQFormerConfig, got {type(config).__name__}.")
    if video_config is None:
        raise TypeError("video_config is required (Video-LLaMA's audio branch comes on top of the video branch).")
    if not isinstance(language_model, nn.Module) or not hasattr(language_model, "get_input_embeddings"):
        raise TypeError(f"language_model must be a transformers causal LM, got {type(language_model).__name__}.")
    embedding = language_model.get_input_embeddings()
    for name, config in (("video_config", video_config), ("audio_config", audio_config)):
        if config is not None and config.llm_width != embedding.embedding_dim:
            raise ValueError(f"{name}.llm_width={config.llm_width} but the language model is "
                             f"{embedding.embedding_dim} wide; set llm_width={embedding.embedding_dim}.")
    device = embedding.weight.device
    model = VideoLlama(language_model, None, None)
    handle = Handle(model, video_config)
    handle.attach("video_branch", VideoQFormer(video_config).to(device))
    if audio_config is not None:
        handle.attach("audio_branch", VideoQFormer(audio_config).to(device))
    handle.mark_trainable()  # Video-LLaMA never trains the LLM
    return handle

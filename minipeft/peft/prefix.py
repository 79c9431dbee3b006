r"""Prompt-style methods: prefix tuning, prompt tuning and P-tuning — learn *inputs*, not weights.

The three methods in this file leave every weight of the pretrained model frozen and untouched. What they train
is a short sequence of ``P`` *virtual tokens* that the model sees before the real ones. They differ in where the
virtual tokens enter and how they are parameterised.

**Prefix tuning** (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
arXiv:2101.00190). Every layer gets its own learned activations for ``P`` prefix positions. With :math:`P_{idx}`
the prefix positions, the paper writes the activation at position :math:`i` as

$$h_i = \begin{cases} P_\theta[i,:] & i \in P_{idx} \\ \mathrm{LM}_\phi(z_i, h_{<i}) & \text{otherwise} \end{cases}$$

Only the keys and values of a prefix position are ever read by later positions, so in attention terms each head
of layer :math:`l` computes, for the real tokens :math:`C`,

$$\mathrm{head} = \mathrm{Attn}\big(C W_q,\; [P_k^{(l)}; C W_k],\; [P_v^{(l)}; C W_v]\big),
\qquad P_k^{(l)}, P_v^{(l)} \in \mathbb{R}^{P \times d_{head}}.$$

That is exactly a key/value cache that already holds ``P`` positions, so we hand the model a pre-filled
``transformers.DynamicCache`` (its own hook for cached keys and values) and extend the attention mask by ``P``
ones. The paper found optimising :math:`P_\theta` directly unstable and reparameterises it with an MLP,
:math:`P_\theta[i,:] = \mathrm{MLP}_\theta(P'_\theta[i,:])` (``prefix_projection=True``).

**Prompt tuning** (Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
arXiv:2104.08691). Only the input layer gets virtual tokens: a prompt :math:`P_e \in \mathbb{R}^{p \times e}` is
concatenated in front of the embedded input :math:`X_e \in \mathbb{R}^{n \times e}` and the model is trained to
maximise :math:`\Pr_{\theta;\theta_P}(Y \mid [P_e; X_e])` with :math:`\theta` frozen.

**P-tuning** (Liu et al. 2021, "GPT Understands, Too", arXiv:2103.10385). Like prompt tuning, the virtual tokens
enter at the input, but they are produced by a small *prompt encoder* from free embeddings
:math:`h_0 \dots h_{P-1}`, so that they are trained jointly rather than independently:

$$h_i = \mathrm{MLP}\big([\overrightarrow{h_i} ; \overleftarrow{h_i}]\big)
       = \mathrm{MLP}\big([\mathrm{LSTM}(h_{0:i}) ; \mathrm{LSTM}(h_{i:P})]\big)$$

(``encoder="lstm"``), or a plain three-layer ReLU MLP without the LSTM (``encoder="mlp"``, peft's default).

How they plug in. :func:`apply` attaches the trainable module to the model as ``model.minipeft_prompt`` (so
``model.parameters()``, ``model.to(device)`` and ``model.train()`` see it) and registers a forward pre-hook on the
top-level model that rewrites each call's keyword arguments before the model runs. This works for a plain call
``model(input_ids=..., attention_mask=..., labels=...)`` and for every step of ``model.generate(...)``:

* a call *without* a cache, or with an empty one, is a first step: prefix tuning fills the cache with the
  prefix; prompt tuning and P-tuning embed ``input_ids`` and prepend the ``P`` virtual tokens to
  ``inputs_embeds`` (labels get ``P`` times ``-100``, ``token_type_ids`` ``P`` zeros);
* a call *with* a non-empty cache continues a sequence whose virtual tokens are already in the cache, so nothing
  is prepended again;
* in both cases the caller's 2-D attention mask never covers the virtual tokens, so ``P`` ones are prepended to it,
  and explicit ``position_ids`` are shifted by ``P``.

Call the model (``model(...)``), not ``model.forward(...)``: PyTorch runs forward hooks only through ``__call__``.

Paper versus code (what a reader comparing numbers should know):

1. *Positions.* With a cache that already holds ``P`` positions, ``transformers`` numbers the real tokens
   ``P, P+1, ...``; peft keeps that (and adds ``P`` to explicit ``position_ids``), and so do we, so RoPE models see
   the prefix as ``P`` earlier tokens. For prompt tuning and P-tuning the virtual tokens take positions
   ``0..P-1`` and the real tokens follow, because they really are in the input sequence. Explicit
   ``position_ids`` (``generate`` passes them, counted from the padding mask) are shifted by ``P``; peft drops
   them for these two methods, so on *left-padded* batches its generations differ slightly from ours (ours keep
   the base model's padding-aware numbering); without padding the two agree exactly.
2. *Extra logits.* Prompt tuning and P-tuning return logits (and hidden states) for ``P + T`` positions, the
   first ``P`` belonging to virtual tokens — peft does the same. :meth:`PromptHandle.strip_virtual_tokens`
   removes them. With labels, the first real token is now predicted from the last virtual token, so the loss
   averages one more term than the base model's loss on the same labels. Prefix tuning adds no positions.
3. *Initialisation.* peft initialises every table with ``nn.Embedding``'s N(0, 1), which we follow for the prefix
   (``PrefixTuningConfig(init="random")``, the default). Lester et al. sample a random prompt uniformly from
   [-0.5, 0.5]; we do that for ``PromptTuningConfig(init="random")``. ``init="text"`` copies the embeddings of a
   tokenised text, repeated or cut to ``P`` (like peft's ``TEXT``, special tokens such as BOS included);
   ``init="vocab"`` copies random vocabulary rows (the paper samples from the 5,000 most common tokens, peft and we
   from the whole vocabulary). ``PrefixTuningConfig(init="text")`` starts the prefix from the keys and values the
   frozen model caches for the same ``P`` text tokens (Li & Liang study initialising with real words' activations);
   peft has no such option for prefix tuning.
4. *Grouped-query attention.* The prefix has ``num_key_value_heads`` heads per layer, not ``num_attention_heads``,
   because it lives in the key/value cache (peft issue #1901). peft then also sizes the projection MLP's input
   and hidden width by ``kv_heads * head_dim``; here they default to the model width ``d`` and can be set with
   ``embedding_size`` / ``encoder_hidden_size``.
5. *Interleaving.* P-tuning's paper places prompt tokens at chosen places inside a template; peft and this file
   put all ``P`` of them in front.
6. *Saving.* peft saves one tensor, the virtual-token output of the encoder (``prompt_embeddings``); we save the
   encoder's own parameters, so training can resume. :meth:`PromptHandle.export_prompt_embeddings` gives peft's
   tensor.

Chapter: Part II, "Prefix, prompt and P-tuning". Merging is impossible (a prompt is not a weight update), so
:meth:`PromptHandle.merge` raises.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.contract import Handle, MethodConfig

ATTRIBUTE = "minipeft_prompt"  # where the trainable module lives inside the model


# ------------------------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------------------------


def _check_tokens(num_virtual_tokens) -> None:
    if not isinstance(num_virtual_tokens, int) or isinstance(num_virtual_tokens, bool) or num_virtual_tokens < 1:
        raise ValueError(
            f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}; "
            "typical values are 10-100 (e.g. num_virtual_tokens=20)."
        )


def _check_size(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None (None = the model width), got {value!r}.")


@dataclass
class PrefixTuningConfig(MethodConfig):
    r"""Prefix tuning: ``P`` learned key/value positions in every layer's attention.

    Args:
        num_virtual_tokens: prefix length ``P``.
        prefix_projection: reparameterise the prefix with Li & Liang's MLP,
            ``Embedding(P, embedding_size) -> Linear(embedding_size, encoder_hidden_size) -> tanh ->
            Linear(encoder_hidden_size, layers * 2 * kv_heads * head_dim)``. Without it, the keys and values are the
            parameters themselves.
        embedding_size: width of :math:`P'_\theta` (projection only); ``None`` = the model width ``d``.
        encoder_hidden_size: hidden width of the MLP (projection only); ``None`` = the model width ``d``.
        init: ``"random"`` (N(0, 1) keys and values, like ``nn.Embedding`` and peft) or ``"text"`` (the keys and
            values the frozen model caches for ``init_text``'s tokens, repeated or cut to ``P`` as in prompt tuning;
            pass ``tokenizer=`` to :func:`apply`; only without ``prefix_projection``). See :func:`_prefix_from_text`.
        init_text: the text for ``init="text"``, e.g. ``"Classify the intent of this message:"``.
    """

    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    embedding_size: int | None = None
    encoder_hidden_size: int | None = None
    init: str = "random"
    init_text: str | None = None

    method = "prefix"
    load_ignores = ("init", "init_text")  # how the prefix started, not what it is now

    def __post_init__(self):
        _check_tokens(self.num_virtual_tokens)
        _check_size("embedding_size", self.embedding_size)
        _check_size("encoder_hidden_size", self.encoder_hidden_size)
        if not self.prefix_projection and (self.embedding_size or self.encoder_hidden_size):
            raise ValueError(
                "embedding_size and encoder_hidden_size size the reparameterisation MLP; "
                "set prefix_projection=True to use them, or leave them None."
            )
        self.init = str(self.init).lower()
        if self.init not in ("random", "text"):
            raise ValueError(f"init must be 'random' or 'text', got {self.init!r}.")
        if self.init == "text" and not self.init_text:
            raise ValueError("init='text' needs init_text (the words whose keys and values start the prefix).")
        if self.init != "text" and self.init_text:
            raise ValueError(f"init_text is only used with init='text' (init is {self.init!r}); set init='text'.")
        if self.init == "text" and self.prefix_projection:
            raise ValueError(
                "init='text' is only defined without the projection (prefix_projection=False): with it the prefix "
                "is MLP(P'), and no exact choice of P' and the MLP is known to reproduce given keys and values. "
                "Use init='random' with prefix_projection=True."
            )


@dataclass
class PromptTuningConfig(MethodConfig):
    """Prompt tuning: ``P`` learned input embeddings in front of the real tokens.

    Args:
        num_virtual_tokens: prompt length ``p``.
        init: ``"random"`` (uniform in [-0.5, 0.5], as in the paper), ``"text"`` (embeddings of ``init_text``'s tokens,
            repeated or cut to ``P``; pass ``tokenizer=`` to :func:`apply`) or ``"vocab"`` (random vocabulary rows).
        init_text: the text for ``init="text"``, e.g. ``"Classify the intent of this message:"``.
    """

    num_virtual_tokens: int = 20
    init: str = "random"
    init_text: str | None = None

    method = "prompt"
    load_ignores = ("init", "init_text")

    def __post_init__(self):
        _check_tokens(self.num_virtual_tokens)
        self.init = str(self.init).lower()
        if self.init not in ("random", "text", "vocab"):
            raise ValueError(f"init must be 'random', 'text' or 'vocab', got {self.init!r}.")
        if self.init == "text" and not self.init_text:
            raise ValueError("init='text' needs init_text (the words whose embeddings start the prompt).")
        if self.init != "text" and self.init_text:
            raise ValueError(f"init_text is only used with init='text' (init is {self.init!r}); set init='text'.")


@dataclass
class PTuningConfig(MethodConfig):
    """P-tuning: ``P`` virtual input tokens produced by a prompt encoder (MLP or bidirectional LSTM + MLP).

    Args:
        num_virtual_tokens: number of virtual tokens ``P``.
        encoder: ``"mlp"`` (``Linear(d,h) -> ReLU -> Linear(h,h) -> ReLU -> Linear(h,d)``) or ``"lstm"``
            (``BiLSTM(d, h, encoder_num_layers) -> Linear(2h,2h) -> ReLU -> Linear(2h,d)``), as in peft.
        encoder_hidden_size: ``h``; ``None`` = the model width ``d``.
        encoder_num_layers: LSTM layers (the MLP always has three linear layers).
        encoder_dropout: dropout between LSTM layers.
    """

    num_virtual_tokens: int = 20
    encoder: str = "mlp"
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    method = "p_tuning"

    def __post_init__(self):
        _check_tokens(self.num_virtual_tokens)
        self.encoder = str(self.encoder).lower()
        if self.encoder not in ("mlp", "lstm"):
            raise ValueError(f"encoder must be 'mlp' or 'lstm', got {self.encoder!r}.")
        _check_size("encoder_hidden_size", self.encoder_hidden_size)
        _check_size("encoder_num_layers", self.encoder_num_layers)
        if not 0.0 <= self.encoder_dropout < 1.0:
            raise ValueError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}.")


# ------------------------------------------------------------------------------------------------------------------
# The trainable modules
# ------------------------------------------------------------------------------------------------------------------


class PrefixEncoder(nn.Module):
    r"""The per-layer key and value prefixes :math:`P_k^{(l)}, P_v^{(l)}` (``forward()`` returns both).

    Without projection the prefixes are the parameters ``prefix_keys`` and ``prefix_values``, each of shape
    ``(layers, kv_heads, P, head_dim)``. With projection they are computed from ``embedding`` ``(P, d')`` by
    ``mlp``; the MLP's output for one virtual token is laid out ``(layers, 2, kv_heads, head_dim)`` — layer by layer,
    key before value — which is also peft's layout, so weights carry over unchanged.

    ``start``: initial ``(keys, values)`` for ``init="text"`` (see :func:`_prefix_from_text`); ``None`` = N(0, 1).
    """

    minipeft_method = "prefix"

    def __init__(self, config: PrefixTuningConfig, layers: int, kv_heads: int, head_dim: int, d_model: int,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.num_virtual_tokens = P = config.num_virtual_tokens
        self.projection = config.prefix_projection
        if self.projection:
            width = config.embedding_size or d_model
            hidden = config.encoder_hidden_size or d_model
            # N(0, 1) like nn.Embedding (and peft): P'_theta, the small matrix the MLP expands.
            self.embedding = nn.Parameter(torch.randn(P, width))
            self.mlp = nn.Sequential(
                nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, layers * 2 * kv_heads * head_dim)
            )
        elif start is None:
            self.prefix_keys = nn.Parameter(torch.randn(layers, kv_heads, P, head_dim))  # (L, H_kv, P, hd)
            self.prefix_values = nn.Parameter(torch.randn(layers, kv_heads, P, head_dim))  # (L, H_kv, P, hd)
        else:
            keys, values = start
            if keys.shape != (layers, kv_heads, P, head_dim) or values.shape != keys.shape:
                raise ValueError(
                    f"the text's cache has keys {tuple(keys.shape)} and values {tuple(values.shape)}, but the prefix "
                    f"needs (layers, kv_heads, P, head_dim) = {(layers, kv_heads, P, head_dim)}."
                )
            # Trainable tensors stay in fp32 even on a half-precision model; they are cast when used.
            self.prefix_keys = nn.Parameter(keys.detach().float().clone())  # (L, H_kv, P, hd)
            self.prefix_values = nn.Parameter(values.detach().float().clone())  # (L, H_kv, P, hd)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.projection:
            return self.prefix_keys, self.prefix_values  # P_k^(l), P_v^(l) for every l: (L, H_kv, P, hd) each
        P = self.num_virtual_tokens
        flat = self.mlp(self.embedding)  # (P, L*2*H_kv*hd): P_theta[i,:] = MLP(P'_theta[i,:])
        kv = flat.view(P, self.layers, 2, self.kv_heads, self.head_dim)  # (P, L, 2, H_kv, hd)
        kv = kv.permute(2, 1, 3, 0, 4)  # (2, L, H_kv, P, hd)
        return kv[0], kv[1]  # P_k^(l), P_v^(l) for every l: (L, H_kv, P, hd) each

    def flat(self) -> torch.Tensor:
        """The prefix as one ``(P, layers * 2 * kv_heads * head_dim)`` table — peft's ``prompt_embeddings``."""
        keys, values = self()
        kv = torch.stack([keys, values], dim=1)  # (L, 2, H_kv, P, hd)
        return kv.permute(3, 0, 1, 2, 4).reshape(self.num_virtual_tokens, -1)  # (P, L*2*H_kv*hd)


class PromptEmbedding(nn.Module):
    r"""Prompt tuning's soft prompt :math:`P_e`, a ``(P, d)`` table (``forward()`` returns it)."""

    minipeft_method = "prompt"

    def __init__(self, config: PromptTuningConfig, word_embeddings: nn.Embedding, tokenizer=None):
        super().__init__()
        P = config.num_virtual_tokens
        weight = word_embeddings.weight
        if config.init == "random":
            prompt = torch.empty(P, weight.shape[1]).uniform_(-0.5, 0.5)
        else:
            if config.init == "text":
                ids = torch.tensor(_text_token_ids(tokenizer, config.init_text, P), dtype=torch.long)
            else:  # "vocab"
                ids = torch.randint(0, weight.shape[0], (P,))
            with torch.no_grad():
                prompt = word_embeddings(ids.to(weight.device)).detach().float().cpu()
        # Trainable tensors stay in fp32 even on a half-precision model; they are cast when used.
        self.prompt_embeddings = nn.Parameter(prompt.to(weight.device))  # (P, d)

    def forward(self) -> torch.Tensor:
        return self.prompt_embeddings  # P_e: (P, d)


class PromptEncoder(nn.Module):
    r"""P-tuning's prompt encoder: free embeddings :math:`h_{0:P}` -> (BiLSTM) -> MLP -> ``(P, d)`` virtual tokens."""

    minipeft_method = "p_tuning"

    def __init__(self, config: PTuningConfig, d_model: int):
        super().__init__()
        P, d = config.num_virtual_tokens, d_model
        h = config.encoder_hidden_size or d_model
        self.encoder = config.encoder
        self.embedding = nn.Parameter(torch.randn(P, d))  # (P, d), N(0, 1) like nn.Embedding
        if self.encoder == "lstm":
            self.lstm = nn.LSTM(d, h, num_layers=config.encoder_num_layers, dropout=config.encoder_dropout,
                                bidirectional=True, batch_first=True)
            # The forward and backward states are concatenated, hence 2h.
            self.mlp = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, d))
        else:
            self.mlp = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d))

    def forward(self) -> torch.Tensor:
        h = self.embedding
        if self.encoder == "lstm":
            # [->h_i ; <-h_i]: one sequence of P tokens, so a batch of one.
            h = self.lstm(h.unsqueeze(0))[0].squeeze(0)  # (P, d) -> (1, P, d) -> (1, P, 2h) -> (P, 2h)
        return self.mlp(h)  # h_i = MLP([->h_i ; <-h_i]) (or MLP(h_i) without the LSTM): (P, d)


def _tokenize(tokenizer, text: str) -> list[int]:
    if tokenizer is None:
        raise ValueError("init='text' needs the model's tokenizer: apply(model, config, tokenizer=tokenizer).")
    token_ids = tokenizer(text)["input_ids"]
    token_ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
    if token_ids and isinstance(token_ids[0], list):  # a batch of one
        token_ids = token_ids[0]
    if not token_ids:
        raise ValueError(f"init_text {text!r} tokenises to no tokens; use a longer text.")
    return [int(t) for t in token_ids]


def _text_token_ids(tokenizer, text: str, length: int) -> list[int]:
    """The token ids that ``init="text"`` starts from: the text's ids, repeated until they cover ``length``
    positions, then cut to exactly ``length`` (the same rule for prompt tuning and prefix tuning)."""
    token_ids = _tokenize(tokenizer, text)
    return (token_ids * math.ceil(length / len(token_ids)))[:length]


def _prefix_from_text(model: nn.Module, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix tuning's ``init="text"``: the keys and values the frozen model caches for ``token_ids``.

    Why. A prefix is read by every real token in every layer, as keys and values (equation in the module
    docstring). N(0, 1) keys and values are nothing like what attention saw in pretraining, so the untrained prefix
    already wrecks the model's output (on SmolLM2-135M it more than doubles the loss; chapter 4). Li & Liang (2021)
    study initialising the prefix with the activations of real words and find it beats random initialisation,
    most of all in low-data settings. The cleanest such start is the model's own cache: run the frozen model once
    on the ``P`` text tokens and keep each layer's keys and values exactly as the cache holds them — keys after the
    model's position encoding (RoPE at positions ``0..P-1``), values as computed. The real tokens then come at
    positions ``P, P+1, ...`` (see "Positions" in the module docstring), so at step 0 the prefixed model on ``x``
    *is* the base model on ``[text tokens; x]``: the prefix starts as a hard prompt, and training moves it from
    there.

    peft has no such option: its ``PrefixTuningConfig`` starts from ``nn.Embedding``'s N(0, 1) (with or without
    projection), or from zeros with ``init_weights="zero"`` (peft 0.21); its ``prompt_tuning_init="TEXT"`` belongs
    to prompt tuning only. Nothing in peft starts a prefix from real activations.

    The model must be bare (no prompt method attached: :func:`apply` calls this before its hook is in place) and
    causal: a bidirectional encoder's text tokens would attend to ``x`` too, so no cache of the text alone exists.

    Returns:
        ``(keys, values)``, each ``(layers, kv_heads, P, head_dim)``, in the model's dtype.
    """
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([token_ids], dtype=torch.long, device=device)  # (1, P): one sequence, no padding
    modes = {module: module.training for module in model.modules()}
    model.eval()  # the cache the model produces at inference (no dropout)
    try:
        with torch.no_grad():  # a measurement, not part of training
            cache = getattr(model(input_ids=ids, use_cache=True), "past_key_values", None)
    finally:
        for module, training in modes.items():
            module.training = training
    if cache is None:
        raise ValueError(
            f"init='text' for prefix tuning needs a causal model that returns its key/value cache "
            f"(e.g. LlamaForCausalLM); {type(model).__name__} returned none. Use init='random'."
        )
    keys = torch.stack([layer.keys[0] for layer in cache.layers])  # (L, H_kv, P, hd): batch row 0
    values = torch.stack([layer.values[0] for layer in cache.layers])  # (L, H_kv, P, hd)
    return keys, values


# ------------------------------------------------------------------------------------------------------------------
# The handle: rewrites the model's inputs, and the shared verbs
# ------------------------------------------------------------------------------------------------------------------


class PromptHandle(Handle):
    """What :func:`apply` returns for a prompt-style method: a :class:`~minipeft.core.Handle` (the trainable module
    attached as ``model.minipeft_prompt``, the two forward hooks) plus what only prompts need:

    * ``strip_virtual_tokens(logits)`` — drop the ``P`` virtual positions a first-step call returns (prompt
      tuning and P-tuning; a no-op for prefix tuning);
    * ``export_prompt_embeddings()`` — the virtual tokens as peft saves them.

    ``merge()`` / ``unload()`` raise :class:`~minipeft.core.CannotMergeError`: a prompt is not a weight update.
    """

    def __init__(self, model: nn.Module, config, module: nn.Module):
        super().__init__(model, config)
        self.module = module
        self.num_virtual_tokens = config.num_virtual_tokens
        self._positional = list(inspect.signature(model.forward).parameters)
        self._made_unwanted_cache = False
        hooks = [model.register_forward_pre_hook(self._rewrite, with_kwargs=True),
                 model.register_forward_hook(self._drop_unwanted_cache)]
        self.attach(ATTRIBUTE, module, hooks)  # a submodule: .parameters(), .to() and .train() see it
        self.mark_trainable()

    # -- the hook --------------------------------------------------------------------------------------------------

    def _rewrite(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]):
        """Turn a call on the base model into the same call with the virtual tokens added (see module docstring)."""
        kwargs = dict(kwargs)
        for name, value in zip(self._positional, args):  # model(input_ids) -> model(input_ids=input_ids)
            kwargs[name] = value
        input_ids, inputs_embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        if input_ids is None and inputs_embeds is None:
            raise ValueError(f"{self.method}: call the model with input_ids=... or inputs_embeds=....")
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        P = self.num_virtual_tokens
        cache = kwargs.get("past_key_values")
        first_step = cache is None or cache.get_seq_length() == 0

        # The caller's mask covers only the real tokens; the P virtual ones are always visible.
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError(
                    f"{self.method}: only a 2-D attention mask (batch, tokens) can be extended by the virtual "
                    f"tokens, got shape {tuple(mask.shape)}; pass the padding mask, not a 4-D attention bias."
                )
            ones = torch.ones(batch, P, dtype=mask.dtype, device=mask.device)
            kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)  # (B, P+T)

        position_ids = kwargs.get("position_ids")
        if self.method == "prefix":
            if first_step:
                kwargs["past_key_values"] = self._prefilled_cache(cache, batch)
                use_cache = kwargs.get("use_cache")
                if use_cache is None:
                    use_cache = getattr(self.model.config, "use_cache", True)
                self._made_unwanted_cache = cache is None and not use_cache
            if position_ids is not None:  # the real tokens come after the P cached positions
                kwargs["position_ids"] = position_ids + P
            return (), kwargs

        if not first_step:  # the virtual tokens are already in the cache
            if position_ids is not None:
                kwargs["position_ids"] = position_ids + P
            return (), kwargs

        if inputs_embeds is None:
            inputs_embeds = model.get_input_embeddings()(input_ids)  # (B, T, d)
        prompt = self.module().to(inputs_embeds.dtype)  # (P, d)
        prompt = prompt.unsqueeze(0).expand(batch, -1, -1)  # (B, P, d)
        kwargs["input_ids"] = None
        kwargs["inputs_embeds"] = torch.cat([prompt, inputs_embeds], dim=1)  # [P_e; X_e]: (B, P+T, d)
        labels = kwargs.get("labels")
        if labels is not None:  # no loss on the virtual positions
            ignore = torch.full((labels.shape[0], P), -100, dtype=labels.dtype, device=labels.device)
            kwargs["labels"] = torch.cat([ignore, labels], dim=1)  # (B, P+T)
        if position_ids is not None:  # virtual tokens at 0..P-1, the real ones after them
            virtual = torch.arange(P, dtype=position_ids.dtype, device=position_ids.device)
            virtual = virtual.expand(*position_ids.shape[:-1], P)  # (P,) -> (..., P)
            kwargs["position_ids"] = torch.cat([virtual, position_ids + P], dim=-1)  # (..., P+T)
        token_type_ids = kwargs.get("token_type_ids")
        if token_type_ids is not None:
            # (B, P+T): zeros for the virtual tokens
            kwargs["token_type_ids"] = torch.cat([token_type_ids.new_zeros(batch, P), token_type_ids], dim=1)
        return (), kwargs

    def _drop_unwanted_cache(self, model: nn.Module, args: tuple, output):
        """With ``use_cache=False`` the base model returns no cache; neither do we, though the prefix needed one.

        Otherwise ``generate(use_cache=False)`` would feed our prefix cache, now holding the real tokens too, back
        into the next step together with the whole sequence.
        """
        if self._made_unwanted_cache:
            self._made_unwanted_cache = False
            if getattr(output, "past_key_values", None) is not None:
                output.past_key_values = None
        return output

    def _prefilled_cache(self, cache, batch: int):
        """A key/value cache that already holds the P prefix positions of every layer."""
        from transformers import DynamicCache

        if cache is None:
            cache = DynamicCache(config=self.model.config)
        keys, values = self.module()  # (L, H_kv, P, hd) each
        dtype = self.model.get_input_embeddings().weight.dtype
        # Layer l's attention then reads keys [P_k^(l); C W_k] and values [P_v^(l); C W_v].
        for layer in range(keys.shape[0]):
            k = keys[layer].unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)  # (B, H_kv, P, hd)
            v = values[layer].unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)  # (B, H_kv, P, hd)
            cache.update(k, v, layer)
        return cache

    # -- what only prompts need -----------------------------------------------------------------------------------

    def strip_virtual_tokens(self, tensor: torch.Tensor) -> torch.Tensor:
        """Drop the ``P`` leading virtual positions from a first-step output (logits or hidden states).

        Prompt tuning and P-tuning run the model on ``P + T`` positions, so ``logits[:, :P]`` belong to virtual
        tokens; prefix tuning adds no positions, and its outputs are returned unchanged.
        """
        if self.method == "prefix":
            return tensor
        return tensor[:, self.num_virtual_tokens:]  # (B, P+T, ...) -> (B, T, ...)

    def export_prompt_embeddings(self) -> torch.Tensor:
        """The virtual tokens as peft saves them (key ``prompt_embeddings``): ``(P, d)`` for prompt tuning and
        P-tuning (the encoder's output), ``(P, layers * 2 * kv_heads * head_dim)`` for prefix tuning."""
        self.check_active()
        with torch.no_grad():
            table = self.module.flat() if self.method == "prefix" else self.module()
        return table.detach().cpu().clone()

    def __repr__(self) -> str:
        state = "undone" if not self.active else f"{self.num_parameters():,} parameters"
        return f"PromptHandle(method={self.method!r}, num_virtual_tokens={self.num_virtual_tokens}, {state})"


# ------------------------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------------------------


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(
            f"prompt-style methods need a transformers model (with .config, get_input_embeddings() and a forward "
            f"that takes inputs_embeds / past_key_values); got {type(model).__name__}."
        )
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def apply(model: nn.Module, config, tokenizer=None) -> PromptHandle:
    """Freeze ``model`` and attach prefix tuning, prompt tuning or P-tuning (chosen by the config's class).

    Args:
        model: a ``transformers`` model whose forward takes ``inputs_embeds`` (prompt tuning, P-tuning) or
            ``past_key_values`` (prefix tuning): a causal LM such as ``LlamaForCausalLM``, or an encoder such as
            ``BertModel`` (whose absolute position embeddings then start at ``P`` for the real tokens).
        config: :class:`PrefixTuningConfig`, :class:`PromptTuningConfig` or :class:`PTuningConfig`.
        tokenizer: only for ``init="text"`` (prompt or prefix tuning): ``tokenizer(text)["input_ids"]`` gives the ids.

    Returns:
        a :class:`PromptHandle`; only the method's parameters are trainable.
    """
    if not isinstance(config, (PrefixTuningConfig, PromptTuningConfig, PTuningConfig)):
        raise TypeError(
            f"config must be a PrefixTuningConfig, PromptTuningConfig or PTuningConfig, got {type(config).__name__}."
        )
    if hasattr(model, ATTRIBUTE):
        existing = getattr(getattr(model, ATTRIBUTE), "minipeft_method", "a prompt method")
        raise ValueError(f"the model already carries {existing!r}; call undo() on its handle before applying another.")
    text = _text_config(model)
    d_model = text.hidden_size
    parameters = set(inspect.signature(model.forward).parameters)

    if isinstance(config, PrefixTuningConfig):
        if getattr(text, "is_encoder_decoder", False) or "past_key_values" not in parameters:
            raise ValueError(
                f"prefix tuning feeds the prefix through the key/value cache (past_key_values), which "
                f"{type(model).__name__} does not take here (encoder-decoder models are not supported); "
                "use PromptTuningConfig or PTuningConfig instead."
            )
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or d_model // heads
        start = None
        if config.init == "text":  # run the bare model on the text now, before the hook is in place
            token_ids = _text_token_ids(tokenizer, config.init_text, config.num_virtual_tokens)
            start = _prefix_from_text(model, token_ids)
        module = PrefixEncoder(config, text.num_hidden_layers, kv_heads, head_dim, d_model, start=start)
    else:
        if "inputs_embeds" not in parameters or model.get_input_embeddings() is None:
            raise ValueError(f"{config.method} prepends to inputs_embeds, which {type(model).__name__} does not take.")
        if isinstance(config, PromptTuningConfig):
            module = PromptEmbedding(config, model.get_input_embeddings(), tokenizer)
        else:
            module = PromptEncoder(config, d_model)

    device = model.get_input_embeddings().weight.device
    module.to(device).train(model.training)  # follow the model's train/eval mode (LSTM dropout)
    return PromptHandle(model, config, module)

r"""MEFT: make a pretrained BERT *reversible* with adapters, so fine-tuning need not store activations.

**Why activations dominate memory.** PEFT shrinks two of the three parts of training memory: the gradients and
the optimiser state exist only for the few trainable parameters. The third part, the **activations**, does not
shrink. Backpropagation needs, in every layer, tensors from the forward pass (the inputs of the linear maps that
pass a gradient on, the softmax outputs, the GELU inputs, the dropout masks, the LayerNorm statistics), and as long
as a trainable adapter sits in the lowest layer, the gradient must travel through *every* layer above it. So a PEFT
method keeps almost all the activations of full fine-tuning, and they grow with batch × sequence length × depth.
(``minipeft.core.memory.count_saved_tensors`` measures exactly this: the bytes autograd saves for backward.)

**The idea** (Liao, Tan, Monz, "Make Your Pre-trained Model Reversible: From Parameter to Memory Efficient
Fine-Tuning", NeurIPS 2023, arXiv:2306.00477). A *reversible* network (RevNet: Gomez et al. 2017, arXiv:1707.04585)
splits its state in two halves and couples them so that each layer's input can be recomputed from its output.
Then nothing needs to be stored: the backward pass walks the layers from the top, rebuilds each layer's input from
its output, recomputes the layer with gradients enabled, and backpropagates through it. MEFT's coupling, with two
functions ``F``, ``G`` and two scale factors :math:`\lambda, \beta`:

$$y_1 = \lambda\, x_1 + F(x_2), \qquad y_2 = \beta\, x_2 + G(y_1),$$

$$x_2 = \bigl(y_2 - G(y_1)\bigr) / \beta, \qquad x_1 = \bigl(y_1 - F(x_2)\bigr) / \lambda.$$

The inverse needs no inverse of ``F`` or ``G`` — any functions work — only :math:`\lambda, \beta \neq 0`.

**Preserving the starting point.** The paper's observation: a PEFT method works when, at initialisation, the
modified network computes (almost) the pretrained function — training then starts from the pretrained model,
not from a perturbed one. A pretrained transformer layer :math:`h_n = L(h_{n-1})` is not reversible, and a RevNet
built around it must not destroy what it computes. MEFT puts the PLM's layer (or its two blocks) into ``F``/``G``,
adds small adapters, and chooses :math:`\lambda, \beta` so that one stream reproduces the PLM's hidden states.
For BERT (``L(h) = M(A(h))``, ``A`` the attention block :math:`\mathrm{LN}(h + \mathrm{attn}(h))`, ``M`` the
feed-forward block :math:`\mathrm{LN}(u + \mathrm{FFN}(u))`), the three architectures are:

=======  ===========================================  ====================================  ======  =====  ======
variant  F                                            G                                     λ       β      swap
=======  ===========================================  ====================================  ======  =====  ======
MEFT1    PLM layer, adapter parallel to its FFN       an adapter                            0.1     1      yes
MEFT2    an adapter                                   PLM layer, adapter parallel to FFN    1       0.1    yes
MEFT3    attention block, adapter after its output    FFN block, adapter parallel to FFN    0.1     0.1    no
=======  ===========================================  ====================================  ======  =====  ======

"Swap" means the layer passes :math:`[y_2, y_1]` on instead of :math:`[y_1, y_2]`. Why MEFT1 starts near the PLM:
with adapters :math:`\approx 0`, :math:`G(y_1) \approx 0` and :math:`\beta = 1` give :math:`y_2 = x_2`, and
:math:`y_1 = L(x_2) + \lambda x_1`; after the swap the next layer receives :math:`(x_2, L(x_2) + \lambda x_1)`, i.e.
:math:`(h_{n-1}, h_n)` plus a leak :math:`\lambda x_1` damped by :math:`\lambda = 0.1`. MEFT2 is the mirror image
(the leak is :math:`\beta x_2`), MEFT3 feeds ``A``'s output to ``M`` through :math:`y_1` and leaks both ways.

**Input and output.** The encoder starts from two copies of the embeddings, :math:`h = [h_0, h_0]` (width
:math:`2d`), so :math:`x_1 = x_2 = h_0`, and returns the average of the two streams, :math:`(x_1 + x_2)/2`.

**Numerics: the price of dividing by 0.1.** The inverse divides by :math:`\lambda` and :math:`\beta`, so an error
:math:`\delta` in a layer's output becomes :math:`\approx \delta/\lambda` in its input (MEFT1/2) or
:math:`\delta/(\lambda\beta)` (MEFT3), and that input is the output the layer below is rebuilt from: the error
*compounds* down the stack. Measured in fp32 (paper init, ``train()``): one layer reconstructs to a few 1e-6
(MEFT1/2) or ~1e-5 (MEFT3), but through 4 tiny-BERT layers the bottom input is off by ~3e-3 (MEFT1/2, ≈ 10× per
layer) and ~10 (MEFT3, ≈ 100× per layer); with :math:`\lambda = \beta = 1` the same stacks stay below 1e-5. The
gradients inherit it: on all-MiniLM-L6-v2 (6 layers, fp32) the lowest layer's adapter gradients differ from plain
autograd by ~1–2% (MEFT1) and ~6–17% (MEFT2) depending on the batch (chapter 7 measures it), and MEFT3's lowest
two layers get essentially wrong gradients; padded positions are worse still, so keep them out of the loss; in float64
(4 tiny-BERT layers) all three agree with plain autograd to 1e-13 – 4e-10. fp16 keeps 10 mantissa bits instead of 23
and is far worse (the reference script trains in fp32 by default, ``FP16=false``). So reversibility is exact only in
exact arithmetic: :math:`\lambda, \beta` trade the starting point (small is closer to the PLM) against
reconstruction error (small is worse), and ``num_reversible_layers``, float64 and factors nearer 1 are the knobs.

**The claim** (abstract): up to **84%** less activation memory than full fine-tuning, with a negligible number of
trainable parameters and GLUE scores on par with full fine-tuning. Measured here with saved-tensor hooks on a
4-layer tiny BERT (``train()``, batch 4 × 32 tokens): MEFT saves 2.4% of full fine-tuning's activation bytes —
exactly one ``(B, T, 2d)`` tensor (plus the attention mask, if padded), whatever the depth — while the same layers
run with plain autograd (plain PEFT) save 70–91% of full fine-tuning's, growing linearly with depth (see
``tests/unit/test_meft.py``). The paper's 84% comes from the memory footprint of real GPU training runs, where the
weights, temporaries and the non-reversible parts (the embeddings, the head, the layer being recomputed) count too:
not the same measurement.

**How it plugs in.** :func:`apply` replaces the BERT encoder (``BertEncoder``, found at any depth) by a
:class:`ReversibleEncoder` that keeps the original as ``base_layer`` (so ``handle.undo()`` restores it) and whose
``layers`` are :class:`ReversibleLayer` ``(F, G, lambda_, beta, swap)``. ``F``/``G`` are small blocks that *call*
the pretrained sublayers (held by reference, registered only under ``base_layer``, so every weight is listed once
and ``handle.state_dict()`` holds the adapters only) plus their :class:`MEFTAdapter` s. :class:`ReversibleFunction`
runs the reversible layers in one ``torch.autograd.Function``: forward saves only the final output (and the CPU/CUDA
RNG state before each ``F``/``G`` call, so dropout replays identically), backward reconstructs and recomputes.

Paper versus code (the reference implementation is ``BaohaoLiao/mefts``, ``models/modeling_revbert.py``):

1. *Initialisation.* The paper draws :math:`W_{down}, W_{up} \sim \mathcal{N}(0, 0.02^2)` (biases zero), so
   adapters start small but non-zero. Our default zeroes :math:`W_{up}` (``zero_init_up=True``), so every adapter
   is exactly zero at init and the only departure from the PLM is the :math:`\lambda`/:math:`\beta` leak;
   ``zero_init_up=False`` is the paper's init (at the paper's factors it moves the starting point by < 0.01,
   note 2).
2. *Starting point, measured.* No variant is exact at the paper's factors: all three converge to the PLM only as
   the leak factor goes to 0 (:math:`\lambda` for MEFT1, :math:`\beta` for MEFT2, both for MEFT3), where the layer
   is no longer invertible.
   The stream that carries the PLM (``output="pretrained_stream"``) differs from the base model's last hidden
   state by a relative error (Frobenius norm) of 0.11 on a 4-layer tiny BERT and 0.24 / 0.24 / 0.31 (MEFT1/2/3)
   on all-MiniLM-L6-v2, and by ~10× less for a 10× smaller factor. The paper's output :math:`(x_1 + x_2)/2`
   (``output="mean"``, the default) adds a gap that does **not** vanish as the factor goes to 0: it averages
   :math:`h_N` with :math:`h_{N-1}` (MEFT1/2) or with the last attention block's output (MEFT3). On tiny random
   BERT consecutive layers barely differ, so this hides; on MiniLM it is a relative error of 0.57 / 0.57 / 0.71
   (0.47 / 0.47 / 0.53 with a 10× smaller factor). The zero up-projection changes them by < 0.01 at the
   paper's factors.
   ``"pretrained_stream"`` is our addition; the gradient and memory properties are the same for both.
3. *Gradients of the parameters.* The reference calls ``.backward()`` inside its backward (accumulating into
   ``.grad`` as a side effect) and, so that its Function is called at all, makes the embedding LayerNorm trainable
   and zeroes its gradient by hand. We pass the trainable parameters as inputs of :class:`ReversibleFunction` and
   return their gradients, so ``torch.autograd.grad`` works and nothing below the encoder needs to train.
4. *RNG.* The reference reseeds the global generator with a fresh seed before each ``F``/``G``; we snapshot the
   generator's state (like ``torch.utils.checkpoint``) and replay it in a forked RNG, leaving the caller's random
   stream untouched.
5. *Not implemented:* the optional LayerNorm inside the adapter (``layernorm_in_adapter``), BERT's chunked FFN
   (``chunk_size_feed_forward``), decoders / cross-attention / KV caches, ``output_hidden_states`` and
   ``output_attentions`` (the pretrained ``BertLayer.forward`` is no longer called, so ``transformers`` returns
   empty tuples for them). ``num_reversible_layers``
   makes the lowest layers reversible and the rest ordinary, as the reference's ``num_rev_layers``.
6. *No merging.* MEFT changes the architecture itself (two streams, scale factors, a doubled input): no plain BERT
   computes the same function, so ``merge()`` raises ``NotImplementedError``; ``handle.undo()`` gives the base back.

Chapter: Part II, "MEFT: reversible fine-tuning".
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..core.contract import Handle, MethodConfig, check_config, inject

# variant -> (what F is, what G is, default lambda_, default beta, swap the halves at the layer's output)
VARIANTS = {
    1: ("layer", "adapter", 0.1, 1.0, True),
    2: ("adapter", "layer", 1.0, 0.1, True),
    3: ("attention", "feed_forward", 0.1, 0.1, False),
}
OUTPUTS = ("mean", "pretrained_stream")


# ------------------------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------------------------


def _positive(value, name: str, hint: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}; {hint}")
    return float(value)


@dataclass
class MEFTConfig(MethodConfig):
    r"""MEFT: which reversible architecture, how big the adapters are, how the layers are scaled and run.

    Args:
        variant: 1, 2 or 3 (or ``"MEFT1"`` …): what ``F`` and ``G`` are (see the module docstring's table).
        adapter_dim: the adapters' bottleneck width ``m`` (the reference script uses 8).
        lambda_: :math:`\lambda`, the scale of :math:`x_1` in :math:`y_1`; ``None``: the variant's default.
        beta: :math:`\beta`, the scale of :math:`x_2` in :math:`y_2`; ``None``: the variant's default.
        zero_init_up: start every adapter's up-projection at zero (exactly zero adapters at init); ``False`` draws
            it from N(0, init_std²) as the paper does.
        init_std: standard deviation of the down-projection (and of the up-projection when not zero).
        adapter_dropout: dropout inside each adapter (after its non-linearity); ``None``: the model's
            ``hidden_dropout_prob``, as the reference.
        preserve_rng_state: record the RNG state before each ``F``/``G`` call and replay it when recomputing, so
            dropout draws the same masks. Turning it off is only correct without dropout (``eval()``).
        reversible: recompute activations from outputs (``True``) or run the same layers with plain autograd.
        num_reversible_layers: how many of the lowest layers are reversible (``None``: all; 0 = plain PEFT).
        output: ``"mean"`` — :math:`(x_1 + x_2)/2` as the paper — or ``"pretrained_stream"`` — the half that
            carries the PLM's hidden state (closer to the base model at init; see the module docstring).
    """

    variant: int | str = 1
    adapter_dim: int = 8
    lambda_: float | None = None
    beta: float | None = None
    zero_init_up: bool = True
    init_std: float = 0.02
    adapter_dropout: float | None = None
    preserve_rng_state: bool = True
    reversible: bool = True
    num_reversible_layers: int | None = None
    output: str = "mean"

    method = "meft"

    def __post_init__(self):
        variant = self.variant
        if isinstance(variant, str) and re.fullmatch(r"(?i)(meft)?[123]", variant.strip()):
            variant = int(variant.strip()[-1])
        if variant not in VARIANTS or isinstance(variant, bool):
            raise ValueError(f"variant must be 1, 2 or 3 (MEFT1/MEFT2/MEFT3), got {self.variant!r}.")
        self.variant = variant
        dim = self.adapter_dim
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"adapter_dim must be a positive integer (the bottleneck width), got {dim!r}; e.g. 8.")
        _, _, default_lambda, default_beta, _ = VARIANTS[variant]
        why = ("the inverse divides by it (x1 = (y1 - F(x2)) / lambda_, x2 = (y2 - G(y1)) / beta); "
               "the paper uses 0.1 or 1.")
        self.lambda_ = default_lambda if self.lambda_ is None else _positive(self.lambda_, "lambda_", why)
        self.beta = default_beta if self.beta is None else _positive(self.beta, "beta", why)
        self.init_std = _positive(self.init_std, "init_std", "the paper uses 0.02.")
        if self.adapter_dropout is not None:
            p = self.adapter_dropout
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
                raise ValueError(f"adapter_dropout must be in [0, 1) or None (the model's dropout), got {p!r}.")
        for flag in ("zero_init_up", "preserve_rng_state", "reversible"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")
        k = self.num_reversible_layers
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
            raise ValueError(f"num_reversible_layers must be None (all) or an integer >= 0, got {k!r}.")
        self.output = str(self.output).lower()
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}.")


# ------------------------------------------------------------------------------------------------------------------
# The adapter and the blocks F and G are made of
# ------------------------------------------------------------------------------------------------------------------


class MEFTAdapter(nn.Module):
    r"""The reference's adapter: :math:`A(h) = \mathrm{drop}(f(h W_{down} + b_{down}))\, W_{up} + b_{up}`.

    ``f`` is the model's own activation (GELU for BERT). ``2 d m + m + d`` parameters.
    """

    def __init__(self, d: int, m: int, activation: nn.Module, dropout: float, init_std: float, zero_init_up: bool):
        super().__init__()
        self.down = nn.Linear(d, m)  # W_down^T: (m, d)
        self.act = activation
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(m, d)  # W_up^T: (d, m)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        if zero_init_up:  # exactly zero update at init (our default); the paper draws N(0, 0.02^2) here too
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.normal_(self.up.weight, std=init_std)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # A(h) = drop(f(h W_down + b_down)) W_up + b_up
        return self.up(self.dropout(self.act(self.down(h))))  # (..., d) -> (..., m) -> (..., d)


class Block(nn.Module):
    """A function ``F`` or ``G``: ``forward(x, attention_mask) -> (B, T, d)``.

    The pretrained sublayers it calls are *held*, not registered: they stay registered where they were (under the
    encoder's ``base_layer``), so ``parameters()`` and ``state_dict()`` list each pretrained weight once and the
    handle's state dict is the adapters only. ``train()``/``eval()``/``to()`` reach them through ``base_layer``.
    """

    def _hold(self, **pretrained: nn.Module) -> None:
        for name, module in pretrained.items():
            object.__setattr__(self, name, module)  # bypasses nn.Module.__setattr__, which would register it
        self._pretrained_names = tuple(pretrained)

    def pretrained_modules(self) -> list[nn.Module]:
        modules = [getattr(self, n) for n in getattr(self, "_pretrained_names", ())]
        for child in self.children():
            if isinstance(child, Block):
                modules += child.pretrained_modules()
        return modules

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter with ``requires_grad`` this block's output depends on (adapters, and any unfrozen
        pretrained weight), each once."""
        found: dict[int, nn.Parameter] = {}
        for module in (self, *self.pretrained_modules()):
            for parameter in module.parameters():
                if parameter.requires_grad:
                    found.setdefault(id(parameter), parameter)
        return list(found.values())

    def extra_repr(self) -> str:
        names = getattr(self, "_pretrained_names", ())
        return f"calls pretrained: {', '.join(names)}" if names else ""


class AdapterBlock(Block):
    r"""``F`` of MEFT2, ``G`` of MEFT1: just an adapter, :math:`A(x)`."""

    def __init__(self, adapter: MEFTAdapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.adapter(x)  # A(x)


class AttentionBlock(Block):
    r"""BERT's attention block with an optional adapter: :math:`\mathrm{LN}(x + s + A(s))`.

    :math:`s = \mathrm{drop}(\mathrm{dense}(\mathrm{attn}(x)))` is the attention sublayer's output.

    With ``adapter=None`` it is exactly ``BertAttention``; MEFT3's ``F`` has the adapter after the output dense
    and its dropout, before the residual and LayerNorm (the reference's ``RevBertSelfOutput``).
    """

    def __init__(self, attention: nn.Module, adapter: MEFTAdapter | None = None):
        super().__init__()
        self._hold(attention=attention)
        self.adapter = adapter

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        context, _ = self.attention.self(x, attention_mask)  # (B, T, d), heads already merged
        out = self.attention.output  # BertSelfOutput: dense, dropout, LayerNorm
        s = out.dropout(out.dense(context))  # s = drop(dense(attn(x)))
        if self.adapter is not None:
            s = s + self.adapter(s)  # s + A(s)
        return out.LayerNorm(s + x)  # LN(x + s + A(s))


class FeedForwardBlock(Block):
    r"""BERT's FFN block with a parallel adapter: :math:`\mathrm{LN}(u + \mathrm{drop}(\mathrm{FFN}(u)) + A(u))`.

    The adapter reads the block's input ``u`` and its update joins the FFN's output before the residual add and the
    LayerNorm (the reference's ``RevBertOutput`` with ``adapter_change``). With a zero adapter it is BERT's FFN.
    """

    def __init__(self, intermediate: nn.Module, output: nn.Module, adapter: MEFTAdapter):
        super().__init__()
        self._hold(intermediate=intermediate, output=output)
        self.adapter = adapter

    def forward(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        z = self.output.dropout(self.output.dense(self.intermediate(u)))  # drop(FFN(u)): (B, T, d_ff) -> (B, T, d)
        return self.output.LayerNorm(z + self.adapter(u) + u)  # LN(u + drop(FFN(u)) + A(u))


class LayerBlock(Block):
    r"""A whole BERT layer, :math:`M(A(x))`, with the FFN adapter: ``F`` of MEFT1, ``G`` of MEFT2."""

    def __init__(self, attention: AttentionBlock, feed_forward: FeedForwardBlock):
        super().__init__()
        self.attention = attention
        self.feed_forward = feed_forward

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.feed_forward(self.attention(x, attention_mask))  # M(A(x))


# ------------------------------------------------------------------------------------------------------------------
# One reversible layer
# ------------------------------------------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> tuple:
    """The generator states a dropout in ``F``/``G`` will draw from: the CPU one, and the CUDA one on a GPU."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replay(state: tuple | None, device: torch.device):
    """Run the body with the RNG exactly as it was when ``state`` was taken; the caller's RNG is untouched after."""
    if state is None:
        yield
        return
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


class ReversibleLayer(nn.Module):
    r"""The coupling :math:`y_1 = \lambda x_1 + F(x_2)`, :math:`y_2 = \beta x_2 + G(y_1)` on ``x = [x_1, x_2]``.

    Returns :math:`[y_2, y_1]` when ``swap`` (MEFT1/2) else :math:`[y_1, y_2]` (MEFT3), each half ``(B, T, d)``.
    """

    def __init__(self, F: Block, G: Block, lambda_: float, beta: float, swap: bool):
        super().__init__()
        self.F, self.G = F, G
        self.lambda_, self.beta, self.swap = lambda_, beta, swap

    def _join(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        return torch.cat([y2, y1] if self.swap else [y1, y2], dim=-1)  # [y_2, y_1] or [y_1, y_2]: (B, T, 2d)

    def _split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = y.chunk(2, dim=-1)  # (B, T, d) each
        return (second, first) if self.swap else (first, second)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                rng_states: list | None = None) -> torch.Tensor:
        """``rng_states``: a list to append the RNG state taken before ``F`` and before ``G`` (for replay)."""
        x1, x2 = x.chunk(2, dim=-1)  # (B, T, d) each
        if rng_states is not None:
            rng_states.append(_rng_state(x.device))
        y1 = self.lambda_ * x1 + self.F(x2, attention_mask)  # y_1 = λ x_1 + F(x_2)
        if rng_states is not None:
            rng_states.append(_rng_state(x.device))
        y2 = self.beta * x2 + self.G(y1, attention_mask)  # y_2 = β x_2 + G(y_1)
        return self._join(y1, y2)

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, attention_mask: torch.Tensor | None = None,
                rng_states: list | None = None) -> torch.Tensor:
        r"""Recompute the input from the output: :math:`x_2 = (y_2 - G(y_1))/\beta`, then
        :math:`x_1 = (y_1 - F(x_2))/\lambda`.

        In ``train()`` mode pass the ``rng_states`` the forward call recorded, so the dropout masks match.
        """
        f_state, g_state = rng_states if rng_states is not None else (None, None)
        y1, y2 = self._split(y)
        with _replay(g_state, y.device):
            x2 = (y2 - self.G(y1, attention_mask)) / self.beta  # x_2 = (y_2 - G(y_1)) / β
        with _replay(f_state, y.device):
            x1 = (y1 - self.F(x2, attention_mask)) / self.lambda_  # x_1 = (y_1 - F(x_2)) / λ
        return torch.cat([x1, x2], dim=-1)  # [x_1, x_2]: (B, T, 2d)

    def backward_pass(self, y: torch.Tensor, dy: torch.Tensor, attention_mask: torch.Tensor | None,
                      rng_states: list | None):
        r"""From the output ``y`` and its gradient ``dy``: the input ``x``, its gradient ``dx``, and the gradients of
        the trainable parameters of ``F`` and ``G`` as ``[(parameter, gradient), ...]``.

        By the chain rule through the two coupling equations (:math:`\bar{y}` is the total gradient of :math:`y`):

        $$\bar y_1 = dy_1 + (\partial G/\partial y_1)^\top dy_2, \quad
          dx_1 = \lambda\,\bar y_1, \quad dx_2 = \beta\,dy_2 + (\partial F/\partial x_2)^\top \bar y_1,$$

        and ``G``'s parameters receive :math:`dy_2`, ``F``'s receive :math:`\bar y_1`.
        """
        f_state, g_state = rng_states if rng_states is not None else (None, None)
        y1, y2 = (t.detach() for t in self._split(y))  # (B, T, d) each
        dy1, dy2 = self._split(dy)  # (B, T, d) each
        gradients = []

        # 1. G: y1 is known, so recompute G(y1) with grad and push dy2 through it.
        g_parameters = self.G.trainable_parameters()
        with torch.enable_grad(), _replay(g_state, y.device):
            y1.requires_grad_(True)
            g = self.G(y1, attention_mask)
            grads = torch.autograd.grad(g, [y1, *g_parameters], dy2, allow_unused=True)
        dy1 = dy1 + grads[0]  # ȳ_1 = dy_1 + (∂G/∂y_1)^T dy_2: y_1 reaches the loss directly and through G
        gradients += zip(g_parameters, grads[1:])  # G's parameters receive dy_2
        with torch.no_grad():
            x2 = (y2 - g) / self.beta  # x_2 = (y_2 - G(y_1)) / β
            y1 = y1.detach()
        del g

        # 2. F: x2 is now known, so recompute F(x2) with grad and push the total gradient of y1 through it.
        f_parameters = self.F.trainable_parameters()
        with torch.enable_grad(), _replay(f_state, y.device):
            x2.requires_grad_(True)
            f = self.F(x2, attention_mask)
            grads = torch.autograd.grad(f, [x2, *f_parameters], dy1, allow_unused=True)
        gradients += zip(f_parameters, grads[1:])  # F's parameters receive ȳ_1
        with torch.no_grad():
            x1 = (y1 - f) / self.lambda_  # x_1 = (y_1 - F(x_2)) / λ
            dx1 = self.lambda_ * dy1  # dx_1 = λ ȳ_1
            dx2 = self.beta * dy2 + grads[0]  # dx_2 = β dy_2 + (∂F/∂x_2)^T ȳ_1
        # [x_1, x_2] and [dx_1, dx_2]: (B, T, 2d) each
        return torch.cat([x1, x2.detach()], dim=-1), torch.cat([dx1, dx2], dim=-1), gradients


class ReversibleFunction(torch.autograd.Function):
    """Run a stack of :class:`ReversibleLayer` s keeping only the final output; recompute the rest in backward.

    ``ReversibleFunction.apply(x, layers, attention_mask, preserve_rng_state, *parameters)``: ``parameters`` are the
    trainable parameters the layers use, passed in so that autograd routes their gradients (returned by backward)
    like any other input's.
    """

    @staticmethod
    def forward(ctx, x, layers, attention_mask, preserve_rng_state, *parameters):
        # Autograd is off inside forward: no layer saves anything. Only the RNG states (a few KB each) are kept.
        rng = [[] if preserve_rng_state else None for _ in layers]
        for layer, states in zip(layers, rng):
            x = layer(x, attention_mask, rng_states=states)
        ctx.layers, ctx.rng, ctx.parameters = layers, rng, parameters
        ctx.save_for_backward(x, attention_mask)  # the one activation we keep: (B, T, 2d)
        return x

    @staticmethod
    def backward(ctx, dy):
        y, attention_mask = ctx.saved_tensors
        totals: dict[int, torch.Tensor] = {}
        for layer, states in zip(reversed(ctx.layers), reversed(ctx.rng)):
            y, dy, gradients = layer.backward_pass(y, dy, attention_mask, states)
            for parameter, gradient in gradients:
                if gradient is not None:
                    key = id(parameter)
                    totals[key] = gradient if key not in totals else totals[key] + gradient
        return (dy, None, None, None, *(totals.get(id(p)) for p in ctx.parameters))


# ------------------------------------------------------------------------------------------------------------------
# The encoder that replaces BERT's
# ------------------------------------------------------------------------------------------------------------------


def _build_layer(bert_layer: nn.Module, config: MEFTConfig, make_adapter) -> ReversibleLayer:
    f_kind, g_kind, _, _, swap = VARIANTS[config.variant]

    def block(kind: str) -> Block:
        if kind == "adapter":
            return AdapterBlock(make_adapter())
        ffn = FeedForwardBlock(bert_layer.intermediate, bert_layer.output, make_adapter())
        if kind == "feed_forward":
            return ffn
        if kind == "attention":
            return AttentionBlock(bert_layer.attention, make_adapter())
        return LayerBlock(AttentionBlock(bert_layer.attention), ffn)  # "layer"

    return ReversibleLayer(block(f_kind), block(g_kind), config.lambda_, config.beta, swap)


class ReversibleEncoder(nn.Module):
    """Stands in for ``BertEncoder``: ``[h0, h0]`` -> reversible layers -> ``(x1 + x2) / 2`` (or the PLM stream).

    The original encoder is kept as ``base_layer``. ``reversible`` and ``num_reversible_layers`` are plain
    attributes, so the same layers (same weights) can be run with ordinary autograd for comparison.
    """

    minipeft_method = "meft"
    adapter_tensor_names = ("adapter",)  # the MEFT adapters inside the reversible layers
    can_merge = False
    merge_refusal = ("it changes the architecture (two streams, the scale factors lambda_ and beta, a doubled "
                     "input), so no plain BERT computes the same function")

    def __init__(self, base_layer: nn.Module, config: MEFTConfig):
        super().__init__()
        self.base_layer = base_layer
        bert = base_layer.config
        reference = next(base_layer.parameters())
        dropout = bert.hidden_dropout_prob if config.adapter_dropout is None else config.adapter_dropout

        def make_adapter() -> MEFTAdapter:
            from transformers.activations import ACT2FN

            activation = ACT2FN[bert.hidden_act] if isinstance(bert.hidden_act, str) else bert.hidden_act
            adapter = MEFTAdapter(bert.hidden_size, config.adapter_dim, activation, dropout, config.init_std,
                                  config.zero_init_up)
            return adapter.to(device=reference.device, dtype=reference.dtype)

        self.layers = nn.ModuleList(_build_layer(layer, config, make_adapter) for layer in base_layer.layer)
        self.reversible = config.reversible
        self.num_reversible_layers = config.num_reversible_layers
        self.preserve_rng_state = config.preserve_rng_state
        self.output = config.output
        # Which half holds the PLM's hidden state after the last layer: y1 for MEFT1 and y2 for MEFT3 sit second;
        # MEFT2's PLM stream is y2, which the swap puts first.
        self.pretrained_half = 0 if config.variant == 2 else 1

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, past_key_values=None, use_cache=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

        if encoder_hidden_states is not None or use_cache:
            raise ValueError("MEFT supports encoder-only BERT: no cross-attention and no KV cache.")
        h = torch.cat([hidden_states, hidden_states], dim=-1)  # (B, T, 2d): x1 = x2 = h0
        k = len(self.layers) if self.num_reversible_layers is None else self.num_reversible_layers
        lower, upper = list(self.layers[:k]), list(self.layers[k:])
        if self.reversible and lower and torch.is_grad_enabled():
            parameters: dict[int, nn.Parameter] = {}
            for layer in lower:
                for block in (layer.F, layer.G):
                    for parameter in block.trainable_parameters():
                        parameters.setdefault(id(parameter), parameter)
            h = ReversibleFunction.apply(h, tuple(lower), attention_mask, self.preserve_rng_state,
                                         *parameters.values())
        else:
            for layer in lower:
                h = layer(h, attention_mask)
        for layer in upper:  # ordinary autograd: these layers store their activations
            h = layer(h, attention_mask)
        x1, x2 = h.chunk(2, dim=-1)  # (B, T, d) each
        out = (x1 + x2) / 2 if self.output == "mean" else (x1, x2)[self.pretrained_half]  # (x_1 + x_2) / 2: (B, T, d)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=out)


# ------------------------------------------------------------------------------------------------------------------
# apply
# ------------------------------------------------------------------------------------------------------------------


def _is_bert_encoder(module: nn.Module) -> bool:
    layers = getattr(module, "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or not hasattr(module, "config"):
        return False
    return all(hasattr(layer, "attention") and hasattr(layer.attention, "self") and hasattr(layer.attention, "output")
               and hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers)


def apply(model: nn.Module, config: MEFTConfig | None = None) -> Handle:
    r"""Make the BERT encoder(s) inside ``model`` reversible with MEFT adapters, freeze the rest, return the handle.

    Args:
        model: a ``transformers`` ``BertModel`` (or any model containing a ``BertEncoder``, e.g. inside a
            classifier).
        config: a :class:`MEFTConfig` (default: MEFT1, adapter width 8, :math:`\lambda = 0.1, \beta = 1`).

    Returns:
        an ``Handle`` whose ``wrappers`` map the encoder's name to its :class:`ReversibleEncoder`:
        ``state_dict()`` / ``load_state_dict()`` for the adapters, ``undo()`` to restore the base model.
        ``merge()`` / ``unload()`` raise ``NotImplementedError``.

    Raises:
        ValueError: no BERT encoder found, a decoder/cross-attention BERT, ``num_reversible_layers`` larger than
            the number of layers, or an encoder that is already wrapped.
    """
    config = MEFTConfig() if config is None else config
    config = check_config(config, MEFTConfig, MEFTConfig)
    encoders = [(n, m) for n, m in model.named_modules() if n and _is_bert_encoder(m)]
    if not encoders:
        raise ValueError(
            f"MEFT needs a transformers BERT encoder (a module with .layer = [BertLayer, ...]); none was found in "
            f"{type(model).__name__}. Pass a BertModel or a model that contains one."
        )
    for name, encoder in encoders:
        bert = encoder.config
        if getattr(bert, "is_decoder", False) or getattr(bert, "add_cross_attention", False):
            raise ValueError(f"{name!r} is a decoder BERT; MEFT here supports encoder-only BERT.")
        k = config.num_reversible_layers
        if k is not None and k > len(encoder.layer):
            raise ValueError(
                f"num_reversible_layers={k} but {name!r} has {len(encoder.layer)} layers; use at most that many."
            )

    handle = inject(model, lambda name, encoder: ReversibleEncoder(encoder, config),
                    target=[re.escape(n) for n, _ in encoders], method="meft", config=config)
    handle.mark_trainable()
    return handle

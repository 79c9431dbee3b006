r"""Deep domain adaptation: align the *features* a network learns, with a loss, while it learns the task.

The survey's deep, model-based family (Zhuang et al., Proc. IEEE 2021, §"deep learning") trains one network
on labelled source batches and unlabelled target batches at once. The features :math:`f = F(x)` feed a classifier
:math:`G` (logits :math:`g`); a **transfer loss** computed on the source and target features pulls the two
feature distributions together, so the classifier trained on source features also works on target features:

$$ \min_{F, G}\ \mathbb{E}_{(x,y) \sim \text{source}}\ \ell\big(G(F(x)), y\big) + \lambda\,
   \mathcal{L}_{\text{transfer}}\big(F(X_s), F(X_t)\big). $$

The losses here, each an ``nn.Module`` that takes features (and logits, for CDAN) of one source batch and one
target batch and returns a scalar; none moves data to a device (they follow their inputs):

* **discrepancy-based** — :class:`MultipleKernelMMD` (DAN, Long et al. ICML 2015: a mixture of Gaussian-kernel
  MMDs; biased, unbiased and linear-time estimators) and :class:`DeepCORALLoss` (Sun & Saenko, ECCV-W 2016:
  distance between covariance matrices);
* **adversarial** — :class:`DomainAdversarialLoss` (DANN, Ganin & Lempitsky ICML 2015 / Ganin et al. JMLR 2016:
  a domain classifier behind a :class:`GradientReversal` layer) and :class:`ConditionalDomainAdversarialLoss`
  (CDAN / CDAN+E, Long et al. NeurIPS 2018: the domain classifier sees the outer product of features and
  predictions, optionally weighted by the predictions' certainty).

:class:`DomainPairs` is the dataset a training loop needs for two domains: item ``i`` is one source example and
one target example. There is no training loop here; chapter 20 trains with :func:`minipeft.core.train`.

Paper versus common code (stated so a reader can compare numbers):

* DANN's coefficient schedule is the paper's :math:`\lambda_p = 2/(1+e^{-\gamma p}) - 1` with :math:`\gamma = 10`
  (:func:`dann_lambda`). Widely used libraries default to :math:`\gamma = 1` with 1,000 iterations, which tops
  out at :math:`\lambda \approx 0.46` instead of reaching 1.
* MK-MMD's kernel weights :math:`\beta_u` are fixed and uniform (DAN learns them to maximise test power);
  the bandwidths follow the data (mean pairwise squared distance), computed without gradient so the network
  cannot lower the loss by stretching the bandwidth.
* CDAN's conditioning predictions are detached (as in the authors' library): the domain loss shapes the
  features, not the classifier directly.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


# --- gradient reversal ----------------------------------------------------------------------------------------


class GradientReversalFunction(torch.autograd.Function):
    r"""The identity forward, :math:`-\lambda \times` the gradient backward: :math:`R(x) = x`,
    :math:`\partial R / \partial x = -\lambda I` (Ganin & Lempitsky 2015, eq. 11)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)  # same values; a new node, so backward below is called

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.coefficient * grad_output, None  # dR/dx = −λ I; no gradient for the coefficient


class GradientReversal(nn.Module):
    r"""Gradient reversal layer: passes features through unchanged and multiplies their gradient by :math:`-\lambda`.

    Put it between a feature extractor :math:`F` and a domain classifier :math:`D`: one ``backward()`` then
    *descends* the domain loss in :math:`D` (it learns to tell the domains apart) and *ascends* it in :math:`F`
    (it learns features that fool :math:`D`) — the saddle point of DANN's objective without two optimisers.

    Shapes: any tensor, returned with the same shape. ``coefficient`` (λ ≥ 0) can be changed between steps.

    Example::

        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> GradientReversal(coefficient=0.5)(x).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000])
    """

    def __init__(self, coefficient: float = 1.0):
        super().__init__()
        self.coefficient = coefficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coefficient < 0:
            raise ValueError(f"coefficient={self.coefficient}; λ must be ≥ 0 (the sign flip is built in).")
        return GradientReversalFunction.apply(x, float(self.coefficient))

    def extra_repr(self) -> str:
        return f"coefficient={self.coefficient}"


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    r"""DANN's schedule :math:`\lambda_p = \frac{2}{1 + \exp(-\gamma p)} - 1`, with :math:`p \in [0, 1]` the
    fraction of training done and the paper's :math:`\gamma = 10`: 0 at the start (the domain classifier's
    early, random gradients would only add noise), close to 1 after the first third of training."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress={progress}; pass the fraction of training done, in [0, 1].")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0  # λ_p = 2 / (1 + e^{−γp}) − 1


# --- discrepancy-based: DAN's multi-kernel MMD -------------------------------------------------------------------


def _check_pair(source: torch.Tensor, target: torch.Tensor, minimum_rows: int = 1) -> None:
    for name, tensor in (("source", source), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} features must be a torch.Tensor, got {type(tensor).__name__}.")
        if tensor.dim() != 2:
            raise ValueError(f"{name} features must be 2-D (batch, features); got shape {tuple(tensor.shape)}. "
                             "Flatten them first, e.g. features.flatten(1).")
        if tensor.shape[0] < minimum_rows:
            raise ValueError(f"{name} batch has {tensor.shape[0]} rows; this loss needs at least {minimum_rows}.")
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"source features have {source.shape[1]} dimensions and target {target.shape[1]}; "
                         "compute both with the same network layer.")


class MultipleKernelMMD(nn.Module):
    r"""DAN's multi-kernel maximum mean discrepancy (Long, Cao, Wang, Jordan, ICML 2015).

    $$
    \mathrm{MMD}^2_k(P, Q) = \mathbb{E}\,k(x, x') + \mathbb{E}\,k(y, y') - 2\,\mathbb{E}\,k(x, y),\qquad
    k = \sum_{u=1}^{U} \beta_u k_u,\quad k_u(a, b) = \exp\!\Big(-\frac{\lVert a - b\rVert^2}{2\sigma_u^2}\Big),
    $$

    with :math:`x, x' \sim P` (source features), :math:`y, y' \sim Q` (target features), uniform
    :math:`\beta_u = 1/U` and bandwidths :math:`\sigma_u^2 = m_u\,\sigma_0^2`, where :math:`\sigma_0^2` is half the
    mean pairwise squared distance of the pooled batch (``bandwidth=None``; no gradient flows through it) or a
    fixed number, and :math:`m_u` are ``multipliers``. Estimators (``estimator=``):

    * ``"biased"`` (V-statistic): means over *all* pairs, diagonals included. Exactly 0 when the two samples are
      identical, always ≥ 0; biased upwards for finite samples.
    * ``"unbiased"`` (U-statistic): the within-domain means skip the diagonal :math:`k(x_i, x_i)`. Its expectation
      is exactly :math:`\mathrm{MMD}^2` — 0 when :math:`P = Q` — so single values can be negative.
    * ``"linear"``: DAN's linear-time unbiased estimate over quad-tuples
      :math:`(x_{2i-1}, x_{2i}, y_{2i-1}, y_{2i})`:
      :math:`\frac{2}{n}\sum_i k(x_{2i-1}, x_{2i}) + k(y_{2i-1}, y_{2i}) - k(x_{2i-1}, y_{2i}) - k(x_{2i}, y_{2i-1})`
      (needs equal, even batch sizes; noisier, but :math:`O(n)`).

    Shapes: ``source`` (n_s, d), ``target`` (n_t, d) → scalar.

    Example::

        >>> mmd = MultipleKernelMMD()
        >>> x = torch.randn(32, 8)
        >>> float(mmd(x, x))
        0.0
        >>> bool(mmd(x, x + 3) > 0.1)
        True
    """

    def __init__(self, multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), bandwidth: float | None = None,
                 estimator: str = "biased"):
        super().__init__()
        if estimator not in ("biased", "unbiased", "linear"):
            raise ValueError(f"estimator={estimator!r}; choose 'biased', 'unbiased' or 'linear'.")
        if len(multipliers) == 0 or min(multipliers) <= 0:
            raise ValueError(f"multipliers={tuple(multipliers)}; give at least one positive bandwidth multiplier.")
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError(f"bandwidth={bandwidth}; σ₀² must be positive (or None to follow the data).")
        self.multipliers, self.bandwidth, self.estimator = tuple(float(m) for m in multipliers), bandwidth, estimator

    def kernel(self, a: torch.Tensor, b: torch.Tensor, sigma0_squared: torch.Tensor | float) -> torch.Tensor:
        """The mixture kernel matrix :math:`\\sum_u \\beta_u k_u(a_i, b_j)`: (n_a, d), (n_b, d) → (n_a, n_b)."""
        distances = torch.cdist(a, b).pow(2)  # (n_a, n_b) ‖a_i − b_j‖²
        return sum(torch.exp(-distances / (2 * m * sigma0_squared)) for m in self.multipliers) / len(self.multipliers)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(source, target, minimum_rows=2)
        if self.bandwidth is not None:
            sigma0_squared = self.bandwidth
        else:
            with torch.no_grad():
                pooled = torch.cat([source, target])  # (n_s + n_t, d)
                sigma0_squared = torch.cdist(pooled, pooled).pow(2).mean().clamp_min(1e-12) / 2  # σ₀² = mean d² / 2
        if self.estimator == "linear":
            return self._linear(source, target, sigma0_squared)
        k_ss = self.kernel(source, source, sigma0_squared)  # (n_s, n_s)
        k_tt = self.kernel(target, target, sigma0_squared)  # (n_t, n_t)
        k_st = self.kernel(source, target, sigma0_squared)  # (n_s, n_t)
        if self.estimator == "biased":
            return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()  # V-statistic: all pairs
        n_s, n_t = len(source), len(target)
        within_s = (k_ss.sum() - k_ss.diagonal().sum()) / (n_s * (n_s - 1))  # E k(x, x'), x ≠ x'
        within_t = (k_tt.sum() - k_tt.diagonal().sum()) / (n_t * (n_t - 1))  # E k(y, y'), y ≠ y'
        return within_s + within_t - 2 * k_st.mean()  # U-statistic

    def _linear(self, source, target, sigma0_squared):
        if len(source) != len(target) or len(source) % 2:
            raise ValueError(f"the linear-time estimator pairs rows: it needs equal, even batch sizes "
                             f"(got {len(source)} and {len(target)}).")
        x1, x2, y1, y2 = source[0::2], source[1::2], target[0::2], target[1::2]  # each (n/2, d)

        def k(a, b):  # the mixture kernel on matching rows only: (n/2, d), (n/2, d) -> (n/2,)
            d2 = (a - b).pow(2).sum(1)
            return sum(torch.exp(-d2 / (2 * m * sigma0_squared)) for m in self.multipliers) / len(self.multipliers)

        return (k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)).mean()  # mean of g(z_i) over quad-tuples

    def extra_repr(self) -> str:
        return f"multipliers={self.multipliers}, bandwidth={self.bandwidth}, estimator={self.estimator!r}"


# --- discrepancy-based: Deep CORAL --------------------------------------------------------------------------------


class DeepCORALLoss(nn.Module):
    r"""Deep CORAL (Sun & Saenko, ECCV Workshops 2016): the distance between the two domains' feature covariances.

    $$
    \ell_{\text{CORAL}} = \frac{1}{4d^2}\,\lVert C_S - C_T \rVert_F^2,\qquad
    C = \frac{1}{n-1}\,(D - \bar D)^\top (D - \bar D),
    $$

    :math:`D` the (n, d) feature batch of one domain and :math:`\bar D` its column means. Differentiable, so it
    is added to the classification loss; CORAL (``minipeft.transfer.shallow.CORAL``) does the same alignment in
    closed form on fixed features.

    Shapes: ``source`` (n_s, d), ``target`` (n_t, d), both n ≥ 2 → scalar.

    Example::

        >>> loss = DeepCORALLoss()
        >>> x = torch.randn(64, 4)
        >>> float(loss(x, x))
        0.0
        >>> bool(loss(x, 3 * x) > 0)
        True
    """

    @staticmethod
    def covariance(features: torch.Tensor) -> torch.Tensor:
        centered = features - features.mean(0, keepdim=True)  # (n, d) D − D̄
        return centered.T @ centered / (len(features) - 1)  # (d, d) C = (D − D̄)ᵀ(D − D̄)/(n − 1)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(source, target, minimum_rows=2)
        d = source.shape[1]
        return (self.covariance(source) - self.covariance(target)).pow(2).sum() / (4 * d * d)  # ‖C_S − C_T‖²_F/4d²


# --- adversarial: DANN ---------------------------------------------------------------------------------------------


class DomainDiscriminator(nn.Sequential):
    """The domain classifier :math:`D`: an MLP from features (B, d) to one logit per row (B,) — "is it source?"."""

    def __init__(self, in_features: int, hidden: int = 64):
        if in_features < 1 or hidden < 1:
            raise ValueError(f"in_features={in_features}, hidden={hidden}; both must be ≥ 1.")
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1), nn.Flatten(0))


class DomainAdversarialLoss(nn.Module):
    r"""DANN's domain loss behind a gradient reversal layer (Ganin & Lempitsky, ICML 2015).

    $$
    E(\theta_f, \theta_y, \theta_d) = \mathcal{L}_y(\theta_f, \theta_y) - \lambda\,\mathcal{L}_d(\theta_f, \theta_d),
    \qquad
    \mathcal{L}_d = -\tfrac{1}{n_s}\sum_{i \in S} \log D(f_i) - \tfrac{1}{n_t}\sum_{j \in T} \log\big(1 - D(f_j)\big).
    $$

    This module returns :math:`\mathcal{L}_d` computed on *reversed* features, so adding it to the task loss and
    calling ``backward()`` once trains :math:`D` to minimise :math:`\mathcal{L}_d` and the feature extractor to
    maximise :math:`\lambda \mathcal{L}_d` — the saddle point of :math:`E`. Set ``coefficient`` (λ) each step,
    e.g. from :func:`dann_lambda`. The loss is the mean of the two domains' binary cross-entropies (source
    label 1, target label 0), so unequal batch sizes weigh the domains equally.

    Shapes: ``source`` (n_s, d), ``target`` (n_t, d) → scalar. ``domain_accuracy`` (after a forward) is how often
    :math:`D` was right: near 0.5 means the features no longer tell the domains apart.

    Example::

        >>> loss = DomainAdversarialLoss(DomainDiscriminator(8))
        >>> value = loss(torch.randn(16, 8), torch.randn(16, 8))
        >>> value.shape
        torch.Size([])
    """

    def __init__(self, discriminator: nn.Module, coefficient: float = 1.0):
        super().__init__()
        self.discriminator = discriminator
        self.reversal = GradientReversal(coefficient)
        self.domain_accuracy = float("nan")

    @property
    def coefficient(self) -> float:
        return self.reversal.coefficient

    @coefficient.setter
    def coefficient(self, value: float) -> None:
        self.reversal.coefficient = value

    def _domain_loss(self, inputs_source: torch.Tensor, inputs_target: torch.Tensor,
                     weight_source: torch.Tensor | None = None, weight_target: torch.Tensor | None = None):
        logit_source = self.discriminator(self.reversal(inputs_source))  # (n_s,)
        logit_target = self.discriminator(self.reversal(inputs_target))  # (n_t,)
        loss = 0.5 * (
            F.binary_cross_entropy_with_logits(logit_source, torch.ones_like(logit_source), weight=weight_source)
            + F.binary_cross_entropy_with_logits(logit_target, torch.zeros_like(logit_target), weight=weight_target)
        )  # ½ (−mean log D(f_s) − mean log(1 − D(f_t)))
        with torch.no_grad():
            correct = (logit_source > 0).float().sum() + (logit_target <= 0).float().sum()
            self.domain_accuracy = float(correct / (len(logit_source) + len(logit_target)))
        return loss

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(source, target)
        return self._domain_loss(source, target)


# --- adversarial: CDAN / CDAN+E --------------------------------------------------------------------------------------


class ConditionalDomainAdversarialLoss(DomainAdversarialLoss):
    r"""CDAN and CDAN+E (Long, Cao, Wang, Jordan, NeurIPS 2018): condition the domain classifier on the predictions.

    DANN aligns :math:`P(f)`; when the classes are multimodal, matching the marginals can still mix class A of
    one domain with class B of the other. CDAN feeds the discriminator the **multilinear map** of features
    :math:`f` and class probabilities :math:`g = \mathrm{softmax}(\text{logits})`,

    $$
    T_\otimes(f, g) = \mathrm{vec}(g \otimes f) \in \mathbb{R}^{C d},\qquad
    T_\odot(f, g) = \frac{1}{\sqrt{r}}\,(R_f f) \odot (R_g g) \in \mathbb{R}^{r},
    $$

    (the randomized :math:`T_\odot`, with fixed Gaussian :math:`R_f, R_g`, replaces :math:`T_\otimes` when
    :math:`C d` is large: ``randomized_dim=r``), so it judges feature–class pairs. **CDAN+E**
    (``entropy_conditioning=True``) weights each example by the certainty of its prediction,
    :math:`w = 1 + e^{-H(g)}`, :math:`H(g) = -\sum_c g_c \log g_c`, normalised to mean 1 over the batch, so hard,
    uncertain examples are aligned less.

    Shapes: ``logits_source`` (n_s, C), ``features_source`` (n_s, d), ``logits_target`` (n_t, C),
    ``features_target`` (n_t, d) → scalar. The discriminator's input size is ``C * d`` (or ``randomized_dim``).

    Example::

        >>> loss = ConditionalDomainAdversarialLoss(DomainDiscriminator(3 * 8), entropy_conditioning=True)
        >>> loss(torch.randn(16, 3), torch.randn(16, 8), torch.randn(16, 3), torch.randn(16, 8)).shape
        torch.Size([])
    """

    def __init__(self, discriminator: nn.Module, *, entropy_conditioning: bool = False,
                 randomized_dim: int | None = None, num_classes: int | None = None, feature_dim: int | None = None,
                 coefficient: float = 1.0):
        super().__init__(discriminator, coefficient)
        self.entropy_conditioning = entropy_conditioning
        self.randomized_dim = randomized_dim
        if randomized_dim is not None:
            if num_classes is None or feature_dim is None or randomized_dim < 1:
                raise ValueError("randomized_dim needs num_classes and feature_dim (the sizes of R_g and R_f) and "
                                 "must be ≥ 1.")
            generator = torch.Generator().manual_seed(0)  # fixed projections: part of the loss, not learned
            self.register_buffer("random_features", torch.randn(feature_dim, randomized_dim, generator=generator))
            self.register_buffer("random_classes", torch.randn(num_classes, randomized_dim, generator=generator))

    def multilinear_map(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """:math:`T(f, g)`: (B, d), (B, C) → (B, C·d) or (B, r) when randomized."""
        if self.randomized_dim is not None:
            projected_f = features @ self.random_features  # (B, d) @ (d, r) -> (B, r)
            projected_g = probabilities @ self.random_classes  # (B, C) @ (C, r) -> (B, r)
            return projected_f * projected_g / math.sqrt(self.randomized_dim)  # (R_f f) ⊙ (R_g g) / √r
        outer = probabilities.unsqueeze(2) * features.unsqueeze(1)  # (B, C, 1) * (B, 1, d) -> (B, C, d) = g ⊗ f
        return outer.flatten(1)  # (B, C, d) -> (B, C·d)

    @staticmethod
    def certainty_weights(probabilities: torch.Tensor) -> torch.Tensor:
        """CDAN+E's :math:`w = 1 + e^{-H(g)}` per row: (B, C) → (B,), not yet normalised."""
        entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(1)  # (B,) H(g)
        return 1.0 + torch.exp(-entropy)  # w = 1 + e^{−H(g)}

    def forward(self, logits_source: torch.Tensor, features_source: torch.Tensor, logits_target: torch.Tensor,
                features_target: torch.Tensor) -> torch.Tensor:
        _check_pair(features_source, features_target)
        _check_pair(logits_source, logits_target)
        if len(logits_source) != len(features_source) or len(logits_target) != len(features_target):
            raise ValueError("logits and features of a domain must have the same number of rows (one per example).")
        g_source = F.softmax(logits_source, dim=1).detach()  # (n_s, C); conditioning only, as in the authors' code
        g_target = F.softmax(logits_target, dim=1).detach()  # (n_t, C)
        h_source = self.multilinear_map(features_source, g_source)  # (n_s, C·d)
        h_target = self.multilinear_map(features_target, g_target)  # (n_t, C·d)
        if not self.entropy_conditioning:
            return self._domain_loss(h_source, h_target)
        w = torch.cat([self.certainty_weights(g_source), self.certainty_weights(g_target)])  # (n_s + n_t,)
        w = w / w.mean()  # normalised to mean 1 over the whole batch
        return self._domain_loss(h_source, h_target, w[: len(g_source)], w[len(g_source):])


# --- two domains as one dataset ------------------------------------------------------------------------------------------


class DomainPairs(torch.utils.data.Dataset):
    """Item ``i`` = ``(x_source[i mod n_s], y_source[i mod n_s], x_target[i mod n_t])``, length ``max(n_s, n_t)``.

    A training loop that shuffles indices (``minipeft.core.train``) then sees random source–target pairings, one
    labelled source batch and one unlabelled target batch per step; the default collate stacks them into
    ``(x_s (B, ...), y_s (B,), x_t (B, ...))``. Target labels are never stored.
    """

    def __init__(self, x_source: torch.Tensor, y_source: torch.Tensor, x_target: torch.Tensor):
        if not all(isinstance(t, torch.Tensor) for t in (x_source, y_source, x_target)):
            raise TypeError("DomainPairs takes torch tensors (torch.as_tensor(numpy_array) converts).")
        if len(x_source) != len(y_source):
            raise ValueError(f"{len(x_source)} source examples but {len(y_source)} labels.")
        if len(x_source) == 0 or len(x_target) == 0:
            raise ValueError("both domains need at least one example.")
        self.x_source, self.y_source, self.x_target = x_source, y_source, x_target

    def __len__(self) -> int:
        return max(len(self.x_source), len(self.x_target))

    def __getitem__(self, i: int):
        s, t = i % len(self.x_source), i % len(self.x_target)
        return self.x_source[s], self.y_source[s], self.x_target[t]

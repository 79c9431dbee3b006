r"""Out-of-distribution (OOD) detection: post-hoc scores and the metrics that compare them.

**The question.** A classifier trained on some intents (the *in-distribution*, ID) is shown an utterance from an
intent it never saw (*out-of-distribution*, OOD). It still answers with one of its classes. An OOD *score*
:math:`S(x)` tries to tell the two apart without retraining anything: it reads the model's logits :math:`f(x)` or
its features :math:`z(x)` (the penultimate layer, ``[CLS]``, the last token or a mean-pool) and ranks inputs.
Cho et al. 2023 ("Probing Out-of-Distribution Robustness of Language Models with Parameter-Efficient Transfer
Learning", arXiv:2301.11660) ask how such scores change when the model is adapted with fine-tuning, adapters,
LoRA or prefix tuning, and as the model grows; the chapter repeats that comparison with these functions.

**Sign convention (one for the whole file): higher score = more in-distribution.** Every score below is oriented
so, distances included (they are negated), and every metric treats ID as the *positive* class. A detector then
accepts :math:`x` as ID when :math:`S(x) \ge t` for a threshold :math:`t`.

Scores from the logits :math:`f(x) \in \mathbb{R}^C` (no fitting):

* :func:`msp` — maximum softmax probability (Hendrycks & Gimpel 2017, "A Baseline for Detecting Misclassified and
  Out-of-Distribution Examples in Neural Networks", ICLR, arXiv:1610.02136):
  $$S_{MSP}(x) = \max_c \operatorname{softmax}(f(x))_c .$$
* :func:`energy` — negative free energy (Liu, Wang, Owens & Li 2020, "Energy-based Out-of-distribution Detection",
  NeurIPS, arXiv:2010.03759):
  $$S_{E}(x) = -E(x; f) = T \cdot \log \sum_{c=1}^{C} e^{f_c(x)/T}.$$

Scores from the features :math:`z \in \mathbb{R}^D`, fitted on ID *training* features (``fit(features, labels)``
then ``score(features)``):

* :class:`Mahalanobis` — distance to the closest class mean under one shared ("tied") covariance (Lee, Lee, Lee &
  Shin 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
  NeurIPS, arXiv:1807.03888):
  $$S_{M}(z) = -\min_c\, (z - \mu_c)^\top \Sigma^{-1} (z - \mu_c), \qquad
    \mu_c = \frac{1}{N_c}\sum_{i: y_i = c} z_i, \quad
    \Sigma = \frac{1}{N}\sum_c \sum_{i: y_i = c} (z_i - \mu_c)(z_i - \mu_c)^\top .$$
* :class:`KNN` — distance to the :math:`k`-th nearest training feature, all features L2-normalised (Sun, Ming, Zhu &
  Li 2022, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML, arXiv:2204.06507):
  $$S_{kNN}(z) = -\lVert \hat z - \hat z_{(k)} \rVert_2, \qquad \hat z = z / \lVert z \rVert_2 .$$
* :class:`Cosine` — the largest cosine similarity to the class means (default) or to any training feature
  (Liu et al. 2023, "How Good Are LLMs at Out-of-Distribution Detection?", arXiv:2308.10261, found it the best
  score for LLaMA-size models):
  $$S_{cos}(z) = \max_j \frac{z^\top r_j}{\lVert z\rVert \lVert r_j \rVert}, \qquad r_j \in \{\mu_c\}
    \text{ or } \{z_i\}.$$

Metrics (:func:`auroc`, :func:`aupr`, :func:`fpr95`, all three at once with :func:`ood_metrics`) take the scores of
the ID test set and of the OOD test set, in that order:

* **AUROC** — the area under the ROC curve (true-positive rate = ID accepted, against false-positive rate = OOD
  accepted, as the threshold sweeps). It equals the probability that a random ID input scores higher than a random
  OOD input, ties counting one half; 0.5 is chance, 1 is perfect separation.
* **AUPR** — area under the precision-recall curve with ID as the positive class (*AUPR-In*), computed as average
  precision (the step sum :math:`\sum_n (R_n - R_{n-1}) P_n`, no interpolation), like scikit-learn's
  ``average_precision_score``. *AUPR-Out* (OOD positive) is ``aupr(-ood_scores, -id_scores)``.
* **FPR95** — the fraction of OOD inputs accepted at the strictest threshold that still accepts at least 95% of
  the ID inputs. Lower is better; 0 is perfect.

Paper versus code (what a reader comparing numbers should know):

1. *Mahalanobis.* Lee et al.'s code scores :math:`-\tfrac12 (z-\mu_c)^\top\Sigma^{-1}(z-\mu_c)` and, in the full
   method, adds input pre-processing and an ensemble over layers; we keep the plain one-layer score without the
   factor :math:`\tfrac12` (a positive factor changes no ranking, so no metric). :math:`\Sigma` is the maximum
   likelihood estimate (divide by :math:`N`), as scikit-learn's ``EmpiricalCovariance`` computes it. Its inverse is
   a *pseudo*-inverse from an eigendecomposition (directions with eigenvalue below ``rcond`` times the largest are
   dropped, like ``numpy.linalg.pinv``): LM features often have more dimensions than training examples, or
   near-constant directions, and a plain ``inv`` would then fail or amplify noise. Distances are computed after
   whitening, :math:`\lVert \Lambda^{+1/2} V^\top (z - \mu_c) \rVert^2`, never by subtracting large terms.
2. *kNN.* Sun et al. search with faiss' L2 index, which returns *squared* distances, and score with their
   negative; we use the distance itself. The square root is monotone, so every metric is unchanged. They also
   sample a fraction of the training set for ImageNet; we use it whole.
3. *Energy.* Liu et al. also fine-tune with an energy margin loss; only the post-hoc score is here (``T = 1`` is
   their default).
4. *FPR95.* The widely copied ``fpr_and_fdr_at_recall`` (Hendrycks' code) takes the threshold whose recall is
   *closest* to 95%; we take the strictest threshold with recall *at least* 95%, the usual definition. The two
   differ only when no threshold gives exactly 95%.

All feature scores are computed on the CPU in float64: fitting is a few matrix products, and float64 keeps the
covariance well conditioned. Scores come back as ``(N,)`` float64 tensors.

Chapter: Part II, "PEFT and out-of-distribution detection".
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


# ------------------------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------------------------


def _as_matrix(x: ArrayLike, what: str) -> torch.Tensor:
    """A 2-D float64 CPU tensor ``(N, D)`` with ``N >= 1``, or a ValueError naming ``what``."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach()
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a 2-D (samples, dims) array with at least one row, got {tuple(x.shape)}.")
    x = x.to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values.")
    return x


def _as_scores(x: ArrayLike, what: str) -> np.ndarray:
    """A non-empty 1-D float64 numpy array of finite values, or a ValueError naming ``what``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of scores (one per input), got shape {x.shape}.")
    if x.size == 0:
        raise ValueError(
            f"{what} is empty: the metrics need both in-distribution and out-of-distribution scores "
            "(a single class has no ranking to evaluate)."
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values.")
    return x


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    logits = torch.as_tensor(logits)
    if not logits.is_floating_point():
        logits = logits.double()
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"logits must have shape (samples, classes) with at least 2 classes, got {tuple(logits.shape)}."
        )
    return logits


def _check_labels(labels: ArrayLike, n: int) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).detach().cpu()
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one entry per training feature ({n}), got {tuple(labels.shape)}.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}.")
    return labels


# ------------------------------------------------------------------------------------------------------------------
# Scores from logits
# ------------------------------------------------------------------------------------------------------------------


def msp(logits: torch.Tensor) -> torch.Tensor:
    r"""Maximum softmax probability, :math:`\max_c \operatorname{softmax}(f(x))_c` (Hendrycks & Gimpel 2017).

    Args:
        logits: ``(N, C)`` with ``C >= 2``.

    Returns:
        ``(N,)`` scores in :math:`[1/C, 1]`; higher = more in-distribution.
    """
    logits = _check_logits(logits)
    return logits.softmax(dim=-1).amax(dim=-1)  # (N,)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Negative free energy, :math:`T \log \sum_c e^{f_c(x)/T}` (Liu et al. 2020).

    ``logsumexp`` subtracts the largest logit before exponentiating, so large logits do not overflow.

    Args:
        logits: ``(N, C)`` with ``C >= 2``.
        temperature: :math:`T > 0` (Liu et al. use ``T = 1``).

    Returns:
        ``(N,)`` scores; higher = more in-distribution.
    """
    logits = _check_logits(logits)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}; T=1 is the usual choice.")
    return temperature * torch.logsumexp(logits / temperature, dim=-1)  # (N,)


# ------------------------------------------------------------------------------------------------------------------
# Scores from features (fitted on in-distribution training features)
# ------------------------------------------------------------------------------------------------------------------


class _FeatureScore:
    """What the fitted scores share: remember the feature width, refuse to score before ``fit``."""

    dims: int | None = None

    def _check_fitted(self, features: ArrayLike) -> torch.Tensor:
        if self.dims is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train_features, train_labels) first.")
        features = _as_matrix(features, "features")
        if features.shape[1] != self.dims:
            raise ValueError(
                f"features have {features.shape[1]} dims but {type(self).__name__} was fitted on {self.dims}; "
                "score features taken from the same layer as the training features."
            )
        return features

    def __repr__(self) -> str:
        state = "not fitted" if self.dims is None else f"fitted on {self.dims}-dim features"
        return f"{type(self).__name__}({state})"


def _class_means(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct labels ``(C,)`` and the mean feature of each class ``(C, D)``."""
    classes, index = torch.unique(labels, return_inverse=True)  # index: (N,) class position of each row
    sums = torch.zeros(len(classes), features.shape[1], dtype=features.dtype).index_add_(0, index, features)
    counts = torch.bincount(index, minlength=len(classes)).to(features.dtype)
    return classes, sums / counts[:, None]  # (C,), (C, D)


class Mahalanobis(_FeatureScore):
    r"""Negative Mahalanobis distance to the closest class mean, with a tied covariance (Lee et al. 2018).

    $$S_{M}(z) = -\min_c\, (z - \mu_c)^\top \Sigma^{+} (z - \mu_c)$$

    ``fit`` computes the class means :math:`\mu_c` and the shared covariance
    :math:`\Sigma = \frac1N \sum_i (z_i - \mu_{y_i})(z_i - \mu_{y_i})^\top` of the training features, and its
    pseudo-inverse :math:`\Sigma^{+} = V \Lambda^{+} V^\top` from the eigendecomposition :math:`\Sigma = V \Lambda
    V^\top`, eigenvalues below ``rcond * max(Λ)`` counting as zero. ``score`` whitens,
    :math:`w = \Lambda^{+1/2} V^\top z`, so that the distance is a plain squared Euclidean one,
    :math:`\lVert w - w_{\mu_c} \rVert^2`. One class is allowed (then it is the distance to the ID mean).

    Args:
        rcond: relative cut-off for small eigenvalues (default ``1e-10``, a little above float64 round-off).

    Example::

        >>> train, labels = torch.randn(100, 8), torch.arange(100) % 4
        >>> scores = Mahalanobis().fit(train, labels).score(torch.randn(5, 8))
        >>> scores.shape, bool((scores <= 0).all())
        (torch.Size([5]), True)
    """

    def __init__(self, rcond: float = 1e-10):
        if not 0 <= rcond < 1:
            raise ValueError(f"rcond must be in [0, 1), got {rcond!r}.")
        self.rcond = rcond

    def fit(self, train_features: ArrayLike, train_labels: ArrayLike) -> "Mahalanobis":
        features = _as_matrix(train_features, "train_features")
        labels = _check_labels(train_labels, features.shape[0])
        self.classes, self.means = _class_means(features, labels)  # (C,), (C, D)
        index = torch.searchsorted(self.classes, labels)  # the row of each sample's class in self.means
        centred = features - self.means[index]  # (N, D)
        self.covariance = centred.T @ centred / features.shape[0]  # (D, D), the MLE (divide by N)
        eigenvalues, eigenvectors = torch.linalg.eigh(self.covariance)  # Σ = V diag(λ) Vᵀ, λ ascending
        keep = eigenvalues > self.rcond * eigenvalues.max().clamp_min(0)
        if not keep.any():
            raise ValueError(
                "the within-class covariance is zero (every training feature equals its class mean); "
                "fit on more than one distinct feature per class."
            )
        # Whitening map Λ^{+1/2} Vᵀ, restricted to the directions the training data actually spans.
        self.whiten = eigenvectors[:, keep].T / eigenvalues[keep].sqrt()[:, None]  # (D', D)
        self.precision = self.whiten.T @ self.whiten  # Σ⁺ = V Λ⁺ Vᵀ, (D, D), kept for inspection
        self.dims = features.shape[1]
        return self

    def distances(self, features: ArrayLike) -> torch.Tensor:
        """Squared Mahalanobis distance of every feature to every class mean: ``(N, C)``."""
        features = self._check_fitted(features)
        w = features @ self.whiten.T  # (N, D')
        w_means = self.means @ self.whiten.T  # (C, D')
        return ((w[:, None, :] - w_means[None, :, :]) ** 2).sum(-1)  # (N, C)

    def score(self, features: ArrayLike) -> torch.Tensor:
        """``-min_c`` squared Mahalanobis distance, ``(N,)``; higher = more in-distribution."""
        return -self.distances(features).amin(dim=-1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    norms = x.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("a feature vector is all zeros; it has no direction to normalise (check the feature layer).")
    return x / norms


class KNN(_FeatureScore):
    r"""Negative distance to the ``k``-th nearest L2-normalised training feature (Sun et al. 2022).

    $$S_{kNN}(z) = -\lVert \hat z - \hat z_{(k)} \rVert_2, \qquad \hat z = z / \lVert z \rVert_2,$$

    where :math:`\hat z_{(k)}` is the ``k``-th closest of the normalised training features. Labels are not used
    (``fit`` accepts them so that every feature score has the same verbs). Sun et al. use ``k = 50`` on CIFAR-10
    (50,000 training images); with a few hundred training examples a smaller ``k`` (1-10) is the analogue.

    Args:
        k: which neighbour (1 = the nearest).
        batch_size: test features scored per distance block (memory ``batch_size × N_train``).
    """

    def __init__(self, k: int = 50, batch_size: int = 1024):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer (the k-th nearest neighbour), got {k!r}.")
        self.k = k
        self.batch_size = batch_size

    def fit(self, train_features: ArrayLike, train_labels: ArrayLike | None = None) -> "KNN":
        features = _as_matrix(train_features, "train_features")
        if train_labels is not None:
            _check_labels(train_labels, features.shape[0])
        if self.k > features.shape[0]:
            n = features.shape[0]
            raise ValueError(f"k={self.k} but only {n} training features; use k <= {n}.")
        self.bank = _normalise(features)  # (N_train, D)
        self.dims = features.shape[1]
        return self

    def score(self, features: ArrayLike) -> torch.Tensor:
        """``-‖ẑ - ẑ_(k)‖``, ``(N,)``; higher = more in-distribution."""
        queries = _normalise(self._check_fitted(features))
        scores = []
        for start in range(0, queries.shape[0], self.batch_size):
            # Direct differences, not the |a|²+|b|²-2ab expansion, so near neighbours are not lost to cancellation.
            block = torch.cdist(queries[start:start + self.batch_size], self.bank,
                                compute_mode="donot_use_mm_for_euclid_dist")  # (B, N_train)
            kth = block.kthvalue(self.k, dim=-1).values  # (B,)
            scores.append(-kth)
        return torch.cat(scores)


class Cosine(_FeatureScore):
    r"""The largest cosine similarity to a set of ID references (Liu et al. 2023 for LLMs).

    $$S_{cos}(z) = \max_j \cos(z, r_j) = \max_j \frac{z^\top r_j}{\lVert z\rVert\,\lVert r_j\rVert}$$

    Args:
        reference: ``"class_means"`` (default) — :math:`r_c = \mu_c`, the mean of the *raw* training features of
            class :math:`c`; ``"features"`` — every training feature is a reference, i.e. the cosine to the nearest
            training example (:class:`KNN` with ``k = 1`` ranks the same way, since
            :math:`\lVert \hat a - \hat b\rVert^2 = 2 - 2\cos(a, b)`).

    Returns (from ``score``) values in :math:`[-1, 1]`; higher = more in-distribution.
    """

    REFERENCES = ("class_means", "features")

    def __init__(self, reference: str = "class_means"):
        if reference not in self.REFERENCES:
            raise ValueError(f"reference must be one of {self.REFERENCES}, got {reference!r}.")
        self.reference = reference

    def fit(self, train_features: ArrayLike, train_labels: ArrayLike | None = None) -> "Cosine":
        features = _as_matrix(train_features, "train_features")
        if self.reference == "class_means":
            if train_labels is None:
                raise ValueError('Cosine(reference="class_means") needs train_labels to form the class means.')
            _, references = _class_means(features, _check_labels(train_labels, features.shape[0]))
        else:
            references = features
        self.references = _normalise(references)  # (R, D)
        self.dims = features.shape[1]
        return self

    def score(self, features: ArrayLike) -> torch.Tensor:
        """``max_j cos(z, r_j)``, ``(N,)``; higher = more in-distribution."""
        queries = _normalise(self._check_fitted(features))
        return (queries @ self.references.T).amax(dim=-1)  # (N, R) -> (N,)


# ------------------------------------------------------------------------------------------------------------------
# Metrics (in-distribution = positive class)
# ------------------------------------------------------------------------------------------------------------------


def _roc_points(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cumulative counts (integers) at every distinct threshold, from the highest score down.

    Returns ``(tp, fp, n_id, n_ood)``: ``tp[j]`` ID and ``fp[j]`` OOD inputs score ``>=`` the ``j``-th largest
    distinct score. Tied scores enter together (one threshold), which is what makes ties count one half in AUROC.
    """
    positives = _as_scores(id_scores, "id_scores")
    negatives = _as_scores(ood_scores, "ood_scores")
    scores = np.concatenate([positives, negatives])
    is_id = np.concatenate([np.ones(len(positives), dtype=np.int64), np.zeros(len(negatives), dtype=np.int64)])
    order = np.argsort(-scores, kind="mergesort")  # highest first
    scores, is_id = scores[order], is_id[order]
    # The last index of each run of equal scores: the point where that threshold's whole tie block is accepted.
    last_of_block = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(is_id)[last_of_block]
    fp = (last_of_block + 1) - tp
    return tp, fp, len(positives), len(negatives)


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    r"""Area under the ROC curve with ID as positive: :math:`P(S_{ID} > S_{OOD}) + \tfrac12 P(S_{ID} = S_{OOD})`.

    Computed as the trapezoid area under (FPR, TPR) through the distinct thresholds, starting at (0, 0).
    """
    tp, fp, n_id, n_ood = _roc_points(id_scores, ood_scores)
    tp, fp = np.r_[0, tp], np.r_[0, fp]
    # Trapezoids in counts (exact integers until the one division, so perfect separation gives exactly 1.0).
    area = np.sum(np.diff(fp) * (tp[1:] + tp[:-1])) / 2
    return float(area / (n_id * n_ood))


def aupr(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    r"""Area under the precision-recall curve with **ID as positive** (AUPR-In), as average precision.

    $$\mathrm{AP} = \sum_n (R_n - R_{n-1})\, P_n$$

    over the distinct thresholds from the highest score down (recall :math:`R` = ID accepted / all ID, precision
    :math:`P` = ID accepted / all accepted), without interpolation. For AUPR-Out (OOD as positive) call
    ``aupr(-ood_scores, -id_scores)``. Chance level is the fraction of ID inputs, not 0.5.
    """
    tp, fp, n_id, _ = _roc_points(id_scores, ood_scores)
    precision = tp / (tp + fp)
    newly_recalled = np.diff(np.r_[0, tp])  # (R_n - R_{n-1}) * n_id
    return float(np.sum(newly_recalled * precision) / n_id)


def fpr95(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> float:
    """False-positive rate at 95% true-positive rate: the fraction of OOD inputs accepted at the strictest
    threshold that accepts at least ``tpr`` of the ID inputs (lower is better).

    "At least" is counted in whole inputs: ``ceil(tpr * n_id)`` ID inputs must score at or above the threshold
    (a tiny tolerance stops ``0.55 * 100 = 55.00000000000001`` from demanding 56).
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}.")
    tp, fp, n_id, n_ood = _roc_points(id_scores, ood_scores)
    needed = math.ceil(tpr * n_id - 1e-9)
    first = np.argmax(tp >= needed)  # tp is non-decreasing and reaches n_id, so some threshold qualifies
    return float(fp[first] / n_ood)


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR95 in one dict (ID = positive; higher score = more in-distribution)."""
    id_scores, ood_scores = _as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores")
    return {
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr(id_scores, ood_scores),
        "aupr_out": aupr(-ood_scores, -id_scores),
        "fpr95": fpr95(id_scores, ood_scores),
    }

r"""Shallow transfer learning: the survey's instance- and feature-based baselines, in numpy/scipy.

Zhuang et al.'s survey (Proc. IEEE 2021) sorts transfer-learning methods by what they change. The
**instance-based** ones keep the features and *re-weight source examples* so the weighted source looks like the
target: KMM matches kernel means; TrAdaBoost boosts on source ∪ a few labelled target examples and lets the
source examples the target disagrees with fade out. The **feature-based** ones keep the examples and *map the
features* so the two domains look alike: TCA and JDA learn a projection that shrinks the maximum mean
discrepancy (MMD) between the domains; CORAL re-colours the source so its covariance is the target's. Chapter 20
runs them all on the same digit shifts.

Notation: source :math:`X_s` (:math:`n_s \times d`, labels :math:`y_s`), target :math:`X_t`
(:math:`n_t \times d`), :math:`n = n_s + n_t`, :math:`X = [X_s; X_t]` (examples are *rows*, as in scikit-learn;
the papers write them as columns).

**One data convention, so every method fits a scikit-learn ``Pipeline``.** ``fit(X, y)`` takes the two domains
stacked; a target row is marked the way scikit-learn's semi-supervised estimators mark unlabelled rows, with
``y = -1``. A method that also needs *labelled* target rows (TrAdaBoost) takes ``domain`` (0 = source,
1 = target) as a fit parameter, which a pipeline routes with ``pipe.fit(X, y, tradaboost__domain=domain)``.
``predict`` / ``score`` then take target data alone. :func:`stack_domains` builds the stacked arrays.

Every estimator wraps a final classifier (``estimator``, any scikit-learn classifier) and is itself a classifier,
so ``make_pipeline(StandardScaler(), CORAL(LogisticRegression()))`` is a complete domain-adaptation model.

Where the paper and the code readers find disagree (details in each class):

* TrAdaBoost's source factor is the paper's :math:`\beta = 1/(1+\sqrt{2\ln n / N})`; a widely read
  re-implementation computes :math:`1/(1+\sqrt{2\ln(n/N)})` — a different number, and NaN when :math:`n < N`.
* The proxy A-distance is measured on a **held-out** split; measuring the domain classifier's error on its own
  training data (as common code does) makes every pair of domains look more different than it is.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg, optimize
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import pairwise_kernels
from sklearn.neighbors import KNeighborsClassifier

UNLABELLED = -1  # scikit-learn's marker for an unlabelled row (sklearn.semi_supervised)


# --- the data convention ------------------------------------------------------------------------------------


def stack_domains(X_source, y_source, X_target, y_target=None):
    """Stack two domains into ``(X, y, domain)``; target labels default to ``-1`` (unlabelled)."""
    X_source, X_target = _as_matrix(X_source, "X_source"), _as_matrix(X_target, "X_target")
    if X_source.shape[1] != X_target.shape[1]:
        raise ValueError(f"source has {X_source.shape[1]} features and target {X_target.shape[1]}; "
                         "both domains must live in the same feature space.")
    y_source = np.asarray(y_source)
    if len(y_source) != len(X_source):
        raise ValueError(f"{len(X_source)} source rows but {len(y_source)} source labels.")
    y_target = np.full(len(X_target), UNLABELLED) if y_target is None else np.asarray(y_target)
    if len(y_target) != len(X_target):
        raise ValueError(f"{len(X_target)} target rows but {len(y_target)} target labels.")
    X = np.vstack([X_source, X_target])  # (n_s + n_t, d)
    y = np.concatenate([y_source, y_target])  # (n_s + n_t,)
    domain = np.concatenate([np.zeros(len(X_source), int), np.ones(len(X_target), int)])  # 0 source, 1 target
    return X, y, domain


def split_domains(X, y, domain=None):
    """Undo :func:`stack_domains`: ``(X_source, y_source, X_target, y_target)``.

    Without ``domain``, rows labelled ``-1`` are the target. Raises if either domain is empty.
    """
    X = _as_matrix(X, "X")
    if y is None:
        raise TypeError("y is None; pass the stacked labels, with -1 marking the unlabelled target rows "
                        "(minipeft.transfer.shallow.stack_domains builds them).")
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels.")
    is_target = (y == UNLABELLED) if domain is None else (np.asarray(domain) == 1)
    if domain is not None and (len(is_target) != len(X) or not np.isin(domain, (0, 1)).all()):
        raise ValueError("domain must have one entry per row of X, each 0 (source) or 1 (target).")
    if is_target.all() or not is_target.any():
        raise ValueError(
            f"found {int((~is_target).sum())} source and {int(is_target.sum())} target rows; a domain-adaptation "
            "fit needs both. Mark the target rows with y = -1 (or pass domain=...); see stack_domains."
        )
    return X[~is_target], y[~is_target], X[is_target], y[is_target]


def _as_matrix(X, name: str) -> np.ndarray:
    if not hasattr(X, "__len__") and not hasattr(X, "__array__"):
        raise TypeError(f"{name} must be array-like of shape (n_examples, n_features), got {type(X).__name__}.")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_examples, n_features); got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinity; clean or impute it first.")
    return X


class _WrapsClassifier(ClassifierMixin, BaseEstimator):
    """Shared plumbing: a final classifier fitted on (possibly mapped / weighted) source data."""

    def _final_estimator(self):
        return clone(self.estimator) if self.estimator is not None else LogisticRegression(max_iter=2000)

    def _map(self, X):  # the feature map applied before the classifier (identity unless a subclass learns one)
        return X

    def predict(self, X):
        return self.estimator_.predict(self._map(_as_matrix(X, "X")))

    def predict_proba(self, X):
        return self.estimator_.predict_proba(self._map(_as_matrix(X, "X")))

    @property
    def classes_(self):
        return self.estimator_.classes_


# --- instance-based: KMM ------------------------------------------------------------------------------------


class KMM(_WrapsClassifier):
    r"""Kernel Mean Matching (Huang, Smola, Gretton, Borgwardt, Schölkopf, NIPS 2006).

    Find source weights :math:`\beta` whose weighted source kernel mean is closest to the target's:

    $$
    \min_{\beta}\ \tfrac12 \beta^\top K \beta - \kappa^\top \beta
    \quad\text{s.t.}\quad 0 \le \beta_i \le B,\qquad \Big|\sum_i \beta_i - n_s\Big| \le n_s \epsilon,
    $$

    with :math:`K_{ij} = k(x^s_i, x^s_j)` and :math:`\kappa_i = \frac{n_s}{n_t}\sum_j k(x^s_i, x^t_j)` — the
    expansion of :math:`\lVert \frac1{n_s}\sum_i \beta_i \phi(x^s_i) - \frac1{n_t}\sum_j \phi(x^t_j)\rVert^2`
    up to constants. scipy's L-BFGS-B solves the box-constrained problem; when the sum constraint binds, a
    bisection on its Lagrange multiplier enforces it exactly (KKT), which is much faster than a general QP solver.
    The classifier is then trained on the source with ``sample_weight = beta``.

    Args:
        estimator: the final classifier (must accept ``sample_weight``); default logistic regression.
        kernel: ``"rbf"`` (the paper's choice) or ``"linear"`` (a common re-implementation's default).
        gamma: RBF width :math:`k(a,b)=\exp(-\gamma\lVert a-b\rVert^2)`; default ``1 / (d · Var[X])``.
        B: upper bound on each weight.
        eps: slack of the sum constraint; default :math:`B/\sqrt{n_s}` (the reference code's default).

    Attributes: ``weights_`` (:math:`n_s`,) the source weights; ``estimator_`` the fitted classifier.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X, y, _ = stack_domains(rng.normal(size=(40, 2)), rng.integers(0, 2, 40), rng.normal(1, 1, (30, 2)))
        >>> KMM(B=10).fit(X, y).weights_.shape
        (40,)
    """

    def __init__(self, estimator=None, kernel: str = "rbf", gamma: float | None = None, B: float = 1000.0,
                 eps: float | None = None):
        self.estimator, self.kernel, self.gamma, self.B, self.eps = estimator, kernel, gamma, B, eps

    def fit(self, X, y, domain=None):
        X_source, y_source, X_target, _ = split_domains(X, y, domain)
        self.weights_ = self.compute_weights(X_source, X_target)
        self.estimator_ = self._final_estimator().fit(X_source, y_source, sample_weight=self.weights_)
        return self

    def compute_weights(self, X_source, X_target) -> np.ndarray:
        """Solve the KMM quadratic programme; returns :math:`\\beta` of shape (n_s,)."""
        if self.kernel not in ("rbf", "linear"):
            raise ValueError(f"kernel={self.kernel!r}; KMM supports 'rbf' or 'linear'.")
        if self.B <= 0:
            raise ValueError(f"B={self.B}; the weight bound must be positive.")
        n_s, n_t = len(X_source), len(X_target)
        gamma = self.gamma or 1.0 / (X_source.shape[1] * np.vstack([X_source, X_target]).var() + 1e-12)
        params = {"gamma": gamma} if self.kernel == "rbf" else {}
        K = pairwise_kernels(X_source, X_source, metric=self.kernel, **params)  # (n_s, n_s)
        K = 0.5 * (K + K.T) + 1e-8 * np.eye(n_s)  # symmetric and strictly positive definite for the solver
        kappa = (n_s / n_t) * pairwise_kernels(X_source, X_target, metric=self.kernel, **params).sum(1)  # (n_s,)
        eps = self.eps if self.eps is not None else self.B / math.sqrt(n_s)
        low, high = n_s * (1 - eps), n_s * (1 + eps)  # the sum constraint n_s(1−ε) ≤ Σβ ≤ n_s(1+ε)
        beta = self._box_qp(K, kappa)
        if low <= beta.sum() <= high:
            return beta  # the sum constraint is inactive: the box-constrained optimum is the answer
        # Otherwise the sum constraint is active, Σβ = bound, and by the KKT conditions the optimum solves the
        # box-constrained problem with κ shifted by a multiplier ν: min ½βᵀKβ − (κ + ν1)ᵀβ. Σβ grows with ν,
        # so bisection on ν finds the one that meets the bound.
        bound = high if beta.sum() > high else low
        span = np.abs(kappa).max() + np.abs(K).sum(1).max() * self.B + 1.0  # |ν| beyond this saturates every β_i
        lo_nu, hi_nu = (-span, 0.0) if bound == high else (0.0, span)
        for _ in range(60):
            nu = 0.5 * (lo_nu + hi_nu)
            beta = self._box_qp(K, kappa + nu, start=beta)
            lo_nu, hi_nu = (nu, hi_nu) if beta.sum() < bound else (lo_nu, nu)
        return beta

    def _box_qp(self, K, kappa, start=None) -> np.ndarray:
        """min ½βᵀKβ − κᵀβ subject to 0 ≤ β ≤ B, with scipy's L-BFGS-B (bounds are native to it)."""
        result = optimize.minimize(
            lambda b: (0.5 * b @ K @ b - kappa @ b, K @ b - kappa),  # (½βᵀKβ − κᵀβ, its gradient Kβ − κ)
            x0=np.ones(len(kappa)) if start is None else start,
            jac=True,
            bounds=[(0.0, self.B)] * len(kappa),
            method="L-BFGS-B",
            options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8},
        )
        return np.clip(result.x, 0.0, self.B)


# --- instance-based: TrAdaBoost -----------------------------------------------------------------------------


def tradaboost_source_beta(n_source: int, n_estimators: int) -> float:
    r"""The paper's fixed source factor :math:`\beta = 1 / (1 + \sqrt{2 \ln n / N})` (Dai et al. 2007, Alg. 1).

    ``n_source`` is :math:`n`, the number of source (differently distributed) examples; ``n_estimators`` is
    :math:`N`, the number of boosting rounds. (A widely read re-implementation computes
    :math:`1/(1+\sqrt{2\ln(n/N)})` instead: 0.29 rather than 0.66 for n = 1000, N = 50.)
    """
    if n_source < 1 or n_estimators < 1:
        raise ValueError(f"n_source={n_source}, n_estimators={n_estimators}; both must be ≥ 1.")
    return 1.0 / (1.0 + math.sqrt(2.0 * math.log(n_source) / n_estimators))  # β = 1/(1+√(2 ln n / N))


class TrAdaBoost(_WrapsClassifier):
    r"""TrAdaBoost (Dai, Yang, Xue, Yu, ICML 2007): boosting across a source and a few labelled target examples.

    The training set is the source :math:`T_d` (:math:`n` examples) plus a small labelled target set :math:`T_s`
    (:math:`m` examples). Round :math:`t = 1..N`: normalise the weights :math:`p^t = w^t / \sum_i w^t_i`; fit the
    weak learner :math:`h_t` with weights :math:`p^t`; measure its error *on the target part only*

    $$
    \epsilon_t = \frac{\sum_{i \in T_s} w^t_i\,[h_t(x_i) \ne y_i]}{\sum_{i \in T_s} w^t_i},\qquad
    \beta_t = \frac{\epsilon_t}{1-\epsilon_t},\qquad \beta = \frac{1}{1+\sqrt{2\ln n / N}},
    $$

    then **down-weight** misclassified source examples, :math:`w_i \leftarrow w_i\,\beta^{[h_t(x_i)\ne y_i]}`
    (they look unlike the target), and **up-weight** misclassified target ones,
    :math:`w_i \leftarrow w_i\,\beta_t^{-[h_t(x_i)\ne y_i]}` (AdaBoost). The output is a vote of the second half
    of the rounds, :math:`t \ge \lceil N/2 \rceil`, each with weight :math:`\ln(1/\beta_t)`.

    The paper is binary, with :math:`|h_t(x)-y|` as the mistake; for two classes its rule
    :math:`\prod_t \beta_t^{-h_t(x)} \ge \prod_t \beta_t^{-1/2}` *is* this weighted majority vote, so we use the
    0/1 mistake and the vote for any number of classes (the usual multi-class extension). :math:`\epsilon_t` is
    clipped to :math:`[10^{-10}, \frac12]`: at :math:`\frac12` the round stops changing the target weights rather
    than reversing them.

    The weak learner (``estimator``, default logistic regression) must accept ``sample_weight``; it receives
    :math:`p^t` scaled to mean 1. A learner that fits the few target examples perfectly (a deep tree) makes
    :math:`\epsilon_t = 0` and stops the target re-weighting, so prefer a learner that cannot memorise them.

    Fit with ``fit(X, y, domain)``: ``domain`` marks the labelled target rows with 1 (source rows 0); rows
    labelled ``-1`` are ignored.

    Attributes: ``beta_`` (the source factor), ``betas_`` (:math:`\beta_t` per round), ``estimators_``,
    ``weights_`` (the final weights, source first).
    """

    def __init__(self, estimator=None, n_estimators: int = 20):
        self.estimator, self.n_estimators = estimator, n_estimators

    def fit(self, X, y, domain=None):
        if domain is None:
            raise TypeError("TrAdaBoost needs labelled target rows: call fit(X, y, domain) with domain = 1 for "
                            "target rows (in a Pipeline: pipe.fit(X, y, tradaboost__domain=domain)).")
        if self.n_estimators < 2:
            raise ValueError(f"n_estimators={self.n_estimators}; TrAdaBoost votes with the second half of the "
                             "rounds, so it needs at least 2.")
        X_source, y_source, X_target, y_target = split_domains(X, y, domain)
        labelled = y_target != UNLABELLED
        X_target, y_target = X_target[labelled], y_target[labelled]
        if len(y_target) == 0:
            raise ValueError("no labelled target rows (all are -1); TrAdaBoost needs a few labelled target examples.")
        n, m = len(X_source), len(X_target)
        X_all = np.vstack([X_source, X_target])  # (n + m, d): T_d first, then T_s
        y_all = np.concatenate([y_source, y_target])  # (n + m,)
        weights = np.ones(n + m)
        self.beta_ = tradaboost_source_beta(n, self.n_estimators)
        self.betas_, self.estimators_ = [], []
        for _ in range(self.n_estimators):
            p = weights / weights.sum()  # p^t = w^t / Σ w^t
            # p^t scaled to mean 1: boosting only needs relative weights, and a regularised learner (logistic
            # regression) would drown weights that sum to 1 in its penalty and stop fitting the data at all.
            learner = self._final_estimator().fit(X_all, y_all, sample_weight=p * (n + m))
            mistake = (learner.predict(X_all) != y_all).astype(float)  # [h_t(x_i) ≠ y_i]
            epsilon = np.sum(weights[n:] * mistake[n:]) / np.sum(weights[n:])  # error on the target part only
            epsilon = float(np.clip(epsilon, 1e-10, 0.5))
            beta_t = epsilon / (1.0 - epsilon)  # β_t = ε_t / (1 − ε_t)
            weights[:n] *= self.beta_ ** mistake[:n]  # source: w ← w β^{mistake}
            weights[n:] *= beta_t ** (-mistake[n:])  # target: w ← w β_t^{−mistake}
            weights /= weights.sum()  # rescaling changes no p^t; it only keeps the numbers finite
            self.betas_.append(beta_t)
            self.estimators_.append(learner)
        self.weights_ = weights
        self._classes = np.unique(y_all)
        return self

    @property
    def classes_(self):
        return self._classes

    def _votes(self, X) -> np.ndarray:
        X = _as_matrix(X, "X")
        votes = np.zeros((len(X), len(self._classes)))  # (N_examples, C)
        first = math.ceil(self.n_estimators / 2) - 1  # rounds t = ⌈N/2⌉ .. N, 0-based
        for learner, beta_t in zip(self.estimators_[first:], self.betas_[first:]):
            column = np.searchsorted(self._classes, learner.predict(X))  # (N_examples,) class index of h_t(x)
            # weight ln(1/β_t); a tiny floor keeps a vote when every late round had ε_t = ½ (β_t = 1)
            votes[np.arange(len(X)), column] += max(math.log(1.0 / max(beta_t, 1e-10)), 1e-6)
        return votes

    def predict(self, X):
        return self._classes[self._votes(X).argmax(1)]

    def predict_proba(self, X):
        votes = self._votes(X)
        return votes / np.maximum(votes.sum(1, keepdims=True), 1e-12)


# --- feature-based: TCA and JDA share one generalised eigenproblem ------------------------------------------


def mmd_matrix(n_source: int, n_target: int) -> np.ndarray:
    r"""TCA's :math:`L = e e^\top`, :math:`e = [\frac{1}{n_s}\mathbf 1_{n_s}; -\frac{1}{n_t}\mathbf 1_{n_t}]`.

    For any embedding :math:`Z` (rows = examples), :math:`\mathrm{tr}(Z^\top L Z)` is the squared distance between
    the domain means: the (linear) MMD.
    """
    e = np.concatenate([np.full(n_source, 1.0 / n_source), np.full(n_target, -1.0 / n_target)])  # (n,)
    return np.outer(e, e)  # (n, n)


def class_mmd_matrix(y_source, y_target_pseudo, classes) -> np.ndarray:
    r"""JDA's :math:`\sum_c M_c`: for class :math:`c`, :math:`1/(n_s^c)^2` between two source examples of class
    :math:`c`, :math:`1/(n_t^c)^2` between two target examples *pseudo*-labelled :math:`c`,
    :math:`-1/(n_s^c n_t^c)` across, 0 elsewhere — the distance between the class-:math:`c` means."""
    n_s, n_t = len(y_source), len(y_target_pseudo)
    M = np.zeros((n_s + n_t, n_s + n_t))  # (n, n)
    for c in classes:
        source_c, target_c = (y_source == c).astype(float), (y_target_pseudo == c).astype(float)
        if not source_c.any() or not target_c.any():
            continue  # a class missing from one domain has no mean to match
        e = np.concatenate([source_c / source_c.sum(), -target_c / target_c.sum()])  # (n,)
        M += np.outer(e, e)
    return M


class _MMDEmbedding(_WrapsClassifier):
    """Solve ``min tr(Aᵀ Kᵀ M K A) + μ tr(AᵀA)  s.t.  Aᵀ Kᵀ H K A = I`` (TCA's problem; JDA's with a richer M)."""

    def _check(self):
        if self.kernel not in ("primal", "linear", "rbf"):
            raise ValueError(f"kernel={self.kernel!r}; choose 'primal' (a linear map of the features, d × d "
                             "problem), 'linear' or 'rbf' (kernel versions, n × n problem).")
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise ValueError(f"n_components={self.n_components!r}; it must be a positive integer.")
        if self.mu <= 0:
            raise ValueError(f"mu={self.mu}; the regulariser must be positive (it keeps the problem well posed).")

    def _basis(self, X):
        """The matrix the projection multiplies: X itself (primal) or the kernel against the training rows."""
        if self.kernel == "primal":
            return X
        params = {"gamma": self.gamma_} if self.kernel == "rbf" else {}
        return pairwise_kernels(X, self.X_fit_, metric=self.kernel, **params)  # (N, n)

    def _solve(self, K: np.ndarray, M: np.ndarray) -> np.ndarray:
        n, p = K.shape  # p = d (primal) or n (kernel)
        if self.n_components > p:
            raise ValueError(f"n_components={self.n_components} exceeds the {p} available dimensions.")
        M = M / np.linalg.norm(M, "fro")  # scale-free M, so mu means the same for any n (as the reference code)
        H = np.eye(n) - np.full((n, n), 1.0 / n)  # centering matrix H = I − (1/n) 1 1ᵀ
        variance = K.T @ H @ K  # (p, p) Kᵀ H K: the embedding's scatter (kept)
        discrepancy = K.T @ M @ K + self.mu * np.eye(p)  # (p, p) Kᵀ M K + μ I (minimised)
        # Largest λ of  Kᵀ H K a = λ (Kᵀ M K + μI) a  ⇔  smallest of the paper's ratio: a symmetric-definite pair.
        eigenvalues, vectors = linalg.eigh(variance, discrepancy, subset_by_index=[p - self.n_components, p - 1])
        vectors = vectors[:, ::-1]  # (p, m), largest first
        scale = np.sqrt(np.maximum(eigenvalues[::-1], 1e-12))
        return vectors / scale  # rescale so Aᵀ Kᵀ H K A = I, the paper's constraint

    def _map(self, X):
        return self._basis(X) @ self.projection_  # (N, p) @ (p, m) -> (N, m)

    def transform(self, X):
        """Embed any rows (either domain) into the learned m-dimensional space."""
        return self._map(_as_matrix(X, "X"))

    def _prepare(self, X):
        self.X_fit_ = X
        self.gamma_ = self.gamma or 1.0 / (X.shape[1] * X.var() + 1e-12)
        return self._basis(X)  # (n, p)


class TCA(_MMDEmbedding):
    r"""Transfer Component Analysis (Pan, Tsang, Kwok, Yang, IEEE TNN 2011).

    Learn a projection :math:`A` (the paper's :math:`W`) of the kernel matrix that keeps the data's variance and
    removes the difference between the domain means:

    $$
    \min_A\ \mathrm{tr}(A^\top K L K A) + \mu\,\mathrm{tr}(A^\top A)
    \quad\text{s.t.}\quad A^\top K H K A = I_m ,
    $$

    :math:`L` from :func:`mmd_matrix`, :math:`H = I - \frac1n \mathbf 1 \mathbf 1^\top`. The solution is the
    :math:`m` leading eigenvectors of :math:`(KLK + \mu I)^{-1} KHK`; the embedding is :math:`Z = KA`.
    ``kernel="primal"`` replaces :math:`K` by :math:`X` itself (a linear map of the features, a :math:`d\times d`
    problem: cheap for many examples); ``"linear"`` / ``"rbf"`` are the paper's kernel versions
    (:math:`n\times n`). TCA is unsupervised: labels only train the final classifier on :math:`Z_s`.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X, y, _ = stack_domains(rng.normal(size=(40, 5)), rng.integers(0, 2, 40), rng.normal(1, 1, (30, 5)))
        >>> TCA(n_components=2).fit(X, y).transform(X).shape
        (70, 2)
    """

    def __init__(self, estimator=None, n_components: int = 30, mu: float = 1.0, kernel: str = "primal",
                 gamma: float | None = None):
        self.estimator, self.n_components, self.mu, self.kernel, self.gamma = (
            estimator, n_components, mu, kernel, gamma)

    def fit(self, X, y, domain=None):
        self._check()
        X_source, y_source, X_target, _ = split_domains(X, y, domain)
        K = self._prepare(np.vstack([X_source, X_target]))  # (n, p), source rows first
        self.projection_ = self._solve(K, mmd_matrix(len(X_source), len(X_target)))  # (p, m)
        self.estimator_ = self._final_estimator().fit(self._map(X_source), y_source)
        return self


class JDA(_MMDEmbedding):
    r"""Joint Distribution Adaptation (Long, Wang, Ding, Sun, Yu, ICCV 2013).

    TCA matches the marginals :math:`P(x)`; JDA also matches the class conditionals :math:`P(x \mid y)`, using
    **pseudo-labels** for the unlabelled target and refining them over ``n_iter`` rounds:

    $$
    \min_A\ \mathrm{tr}\Big(A^\top K \big(\textstyle\sum_{c=0}^{C} M_c\big) K A\Big) + \mu \lVert A\rVert_F^2
    \quad\text{s.t.}\quad A^\top K H K A = I ,
    $$

    :math:`M_0 = L` (marginal, :func:`mmd_matrix`) and :math:`M_{c\ge1}` from :func:`class_mmd_matrix`. Each
    round: solve, fit the classifier on the source embedding, pseudo-label the target. The classifier is 1-NN by
    default, as in the paper. (Class labels need not be 1..C as the reference code assumes.)

    Attributes: ``pseudo_labels_`` (the target rows' final pseudo-labels), ``projection_``, ``estimator_``.
    """

    def __init__(self, estimator=None, n_components: int = 30, mu: float = 1.0, n_iter: int = 10,
                 kernel: str = "primal", gamma: float | None = None):
        self.estimator, self.n_components, self.mu, self.n_iter, self.kernel, self.gamma = (
            estimator, n_components, mu, n_iter, kernel, gamma)

    def _final_estimator(self):
        return clone(self.estimator) if self.estimator is not None else KNeighborsClassifier(n_neighbors=1)

    def fit(self, X, y, domain=None):
        self._check()
        if self.n_iter < 1:
            raise ValueError(f"n_iter={self.n_iter}; JDA needs at least one round.")
        X_source, y_source, X_target, _ = split_domains(X, y, domain)
        classes = np.unique(y_source)
        K = self._prepare(np.vstack([X_source, X_target]))  # (n, p)
        marginal = mmd_matrix(len(X_source), len(X_target))  # M_0
        pseudo = None
        for _ in range(self.n_iter):
            M = marginal if pseudo is None else marginal + class_mmd_matrix(y_source, pseudo, classes)
            self.projection_ = self._solve(K, M)  # (p, m)
            Z = K @ self.projection_  # (n, m)
            self.estimator_ = self._final_estimator().fit(Z[: len(X_source)], y_source)
            pseudo = self.estimator_.predict(Z[len(X_source):])  # refresh the target's pseudo-labels
        self.pseudo_labels_ = pseudo
        return self


# --- feature-based: CORAL -----------------------------------------------------------------------------------


def _symmetric_power(C: np.ndarray, power: float) -> np.ndarray:
    """C^power for a symmetric positive definite C, through its eigendecomposition (real, unlike sqrtm)."""
    values, vectors = np.linalg.eigh(C)
    return (vectors * np.maximum(values, 1e-12) ** power) @ vectors.T  # V diag(λ^p) Vᵀ


class CORAL(_WrapsClassifier):
    r"""CORrelation ALignment (Sun, Feng, Saenko, AAAI 2016): whiten the source, re-colour it with the target.

    $$
    C_s = \mathrm{cov}(X_s) + \lambda I,\quad C_t = \mathrm{cov}(X_t) + \lambda I,\qquad
    X_s^{*} = X_s\, C_s^{-1/2}\, C_t^{1/2} ,
    $$

    so :math:`\mathrm{cov}(X_s^*) = C_t^{1/2} C_s^{-1/2}\,\mathrm{cov}(X_s)\,C_s^{-1/2} C_t^{1/2}
    = C_t - \lambda\, C_t^{1/2} C_s^{-1} C_t^{1/2}`, which is :math:`\mathrm{cov}(X_t)` up to the regulariser.
    The classifier trains on :math:`X_s^*` and is applied to *raw* target data (``predict`` does not transform).
    Like the paper, no means are subtracted: CORAL aligns second-order statistics only.

    Args: ``estimator`` (default logistic regression), ``lambda_`` (the paper's λ = 1 on standardised features).

    Attributes: ``recolor_`` the (d, d) matrix :math:`C_s^{-1/2} C_t^{1/2}`; ``estimator_``.
    """

    def __init__(self, estimator=None, lambda_: float = 1.0):
        self.estimator, self.lambda_ = estimator, lambda_

    def fit(self, X, y, domain=None):
        if self.lambda_ < 0:
            raise ValueError(f"lambda_={self.lambda_}; the covariance regulariser must be ≥ 0.")
        X_source, y_source, X_target, _ = split_domains(X, y, domain)
        if len(X_source) < 2 or len(X_target) < 2:
            raise ValueError("CORAL needs at least two rows per domain to estimate a covariance.")
        d = X.shape[1]
        C_s = np.cov(X_source, rowvar=False) + self.lambda_ * np.eye(d)  # (d, d) C_s = cov(X_s) + λI
        C_t = np.cov(X_target, rowvar=False) + self.lambda_ * np.eye(d)  # (d, d) C_t = cov(X_t) + λI
        self.recolor_ = _symmetric_power(C_s, -0.5) @ _symmetric_power(C_t, 0.5)  # C_s^{-1/2} C_t^{1/2}
        self.estimator_ = self._final_estimator().fit(self.recolor(X_source), y_source)
        return self

    def recolor(self, X_source):
        """Map source rows: :math:`X_s C_s^{-1/2} C_t^{1/2}`."""
        return _as_matrix(X_source, "X_source") @ self.recolor_  # (n_s, d) @ (d, d)


# --- how different are two domains? -------------------------------------------------------------------------


def proxy_a_distance(X_source, X_target, *, test_size: float = 0.5, seed: int = 0, C: float = 1.0) -> float:
    r"""Proxy A-distance (Ben-David et al. 2007): :math:`\hat d_A = 2(1 - 2\epsilon)`.

    Train a linear domain classifier (source = 0, target = 1) on one part of the pooled rows and measure its
    error :math:`\epsilon` on the **held-out** rest (stratified by domain, ``test_size`` of the rows). 0 means the
    domains cannot be told apart (it can dip slightly below 0 by chance); 2 means perfectly separable. The error
    on the training rows themselves (what common code reports) would overstate the distance.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.svm import LinearSVC

    X_source, X_target = _as_matrix(X_source, "X_source"), _as_matrix(X_target, "X_target")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size={test_size}; use a fraction in (0, 1).")
    X = np.vstack([X_source, X_target])  # (n_s + n_t, d)
    d = np.concatenate([np.zeros(len(X_source)), np.ones(len(X_target))])
    X_fit, X_held, d_fit, d_held = train_test_split(X, d, test_size=test_size, random_state=seed, stratify=d)
    scale = X_fit.std(0) + 1e-12  # standardise with the fitting split's statistics only
    center = X_fit.mean(0)
    classifier = LinearSVC(C=C, max_iter=5000).fit((X_fit - center) / scale, d_fit)
    error = float(np.mean(classifier.predict((X_held - center) / scale) != d_held))  # held-out ε
    return 2.0 * (1.0 - 2.0 * error)  # d_A = 2(1 − 2ε)

"""minipeft.transfer.shallow: defining properties against hand computations and a reference solver."""

import doctest
import math

import numpy as np
import pytest
from scipy import optimize
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from minipeft.transfer import shallow
from minipeft.transfer.shallow import (CORAL, JDA, KMM, TCA, TrAdaBoost, class_mmd_matrix, mmd_matrix,
                                       proxy_a_distance, split_domains, stack_domains, tradaboost_source_beta)


def blobs(rng, n, shift=0.0, d=5, classes=3):
    """Three Gaussian classes in d dimensions; ``shift`` moves the whole domain."""
    y = rng.integers(0, classes, n)
    centers = np.eye(classes, d) * 4.0
    return centers[y] + rng.normal(size=(n, d)) + shift, y


def test_docstring_examples_run():
    assert doctest.testmod(shallow).failed == 0


# --- data convention --------------------------------------------------------------------------------------------


def test_stack_and_split_round_trip():
    rng = np.random.default_rng(0)
    Xs, ys = rng.normal(size=(7, 3)), rng.integers(0, 2, 7)
    Xt = rng.normal(size=(4, 3))
    X, y, domain = stack_domains(Xs, ys, Xt)
    assert X.shape == (11, 3) and (y[7:] == -1).all() and domain.tolist() == [0] * 7 + [1] * 4
    a, b, c, d = split_domains(X, y)
    np.testing.assert_array_equal(a, Xs)
    np.testing.assert_array_equal(b, ys)
    np.testing.assert_array_equal(c, Xt)
    assert (d == -1).all()


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: stack_domains(np.zeros((3, 2)), [0, 1, 0], np.zeros((3, 4))), ValueError, "same feature space"),
        (lambda: stack_domains(np.zeros(3), [0, 1, 0], np.zeros((3, 4))), ValueError, "2-D"),
        (lambda: split_domains(np.zeros((3, 2)), np.array([0, 1, 0])), ValueError, "needs both"),
        (lambda: split_domains(np.zeros((3, 2)), None), TypeError, "-1"),
        (lambda: split_domains(np.full((2, 2), np.nan), np.array([0, -1])), ValueError, "NaN"),
        (lambda: CORAL().fit(np.zeros((3, 2)), np.array([0, 1, 1])), ValueError, "needs both"),
        (lambda: TCA(kernel="poly").fit(*stack_domains(np.eye(3), [0, 1, 2], np.eye(3))[:2]), ValueError, "primal"),
        (lambda: TCA(n_components=9).fit(*stack_domains(np.eye(3), [0, 1, 2], np.eye(3))[:2]), ValueError, "exceeds"),
        (lambda: TCA(mu=0).fit(*stack_domains(np.eye(3), [0, 1, 2], np.eye(3))[:2]), ValueError, "mu"),
        (lambda: KMM(B=-1).fit(*stack_domains(np.eye(3), [0, 1, 2], np.eye(3))[:2]), ValueError, "positive"),
        (lambda: TrAdaBoost().fit(*stack_domains(np.eye(3), [0, 1, 2], np.eye(3))[:2]), TypeError, "domain"),
        (lambda: proxy_a_distance(np.eye(4), np.eye(4), test_size=1.5), ValueError, "fraction"),
        (lambda: tradaboost_source_beta(0, 10), ValueError, "≥ 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- TrAdaBoost -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, N", [(1000, 50), (600, 20), (10, 50), (2, 1)])
def test_tradaboost_beta_is_the_papers_formula(n, N):
    expected = 1.0 / (1.0 + math.sqrt(2.0 * math.log(n) / N))  # Dai et al. 2007, Algorithm 1
    assert tradaboost_source_beta(n, N) == pytest.approx(expected, rel=1e-12)
    assert 0.0 < tradaboost_source_beta(n, N) <= 1.0  # finite even when n < N, unlike ln(n / N)


def test_tradaboost_beta_is_not_the_reference_codes_variant():
    # The widely read re-implementation computes 1/(1+sqrt(2 ln(n/N))): 0.29 instead of 0.66 for n=1000, N=50.
    reference_code = 1.0 / (1.0 + math.sqrt(2.0 * math.log(1000 / 50)))
    assert abs(tradaboost_source_beta(1000, 50) - reference_code) > 0.3


def test_tradaboost_fades_out_source_examples_that_contradict_the_target():
    rng = np.random.default_rng(0)
    Xs, ys = blobs(rng, 300)
    contradicting = np.arange(300) < 100
    ys = np.where(contradicting, (ys + 1) % 3, ys)  # a third of the source has labels the target disagrees with
    Xt, yt = blobs(rng, 30)
    X, y, domain = stack_domains(Xs, ys, Xt, yt)
    model = TrAdaBoost(n_estimators=10).fit(X, y, domain)
    assert model.beta_ == pytest.approx(tradaboost_source_beta(300, 10))
    source_weights = model.weights_[:300]
    assert source_weights[contradicting].mean() < 0.2 * source_weights[~contradicting].mean()
    X_test, y_test = blobs(rng, 200)
    assert model.score(X_test, y_test) > 0.9


def test_tradaboost_binary_vote_is_the_papers_product_rule():
    rng = np.random.default_rng(1)
    Xs, ys = blobs(rng, 120, classes=2)
    Xt, yt = blobs(rng, 20, shift=0.5, classes=2)
    X, y, domain = stack_domains(Xs, ys, Xt, yt)
    model = TrAdaBoost(n_estimators=6).fit(X, y, domain)
    X_test, _ = blobs(rng, 50, shift=0.5, classes=2)
    late = range(math.ceil(6 / 2) - 1, 6)  # t = ⌈N/2⌉ .. N
    # h_f(x) = 1  iff  Π β_t^{-h_t(x)} ≥ Π β_t^{-1/2}   (logs of both sides)
    lhs = sum(-model.estimators_[t].predict(X_test) * math.log(model.betas_[t]) for t in late)
    rhs = sum(-0.5 * math.log(model.betas_[t]) for t in late)
    np.testing.assert_array_equal(model.predict(X_test), (lhs >= rhs).astype(int))


def test_tradaboost_in_a_pipeline_with_routed_domain():
    rng = np.random.default_rng(2)
    Xs, ys = blobs(rng, 100)
    Xt, yt = blobs(rng, 15, shift=0.3)
    X, y, domain = stack_domains(Xs, ys, Xt, yt)
    pipe = make_pipeline(StandardScaler(), TrAdaBoost(n_estimators=4)).fit(X, y, tradaboost__domain=domain)
    assert pipe.predict(Xt).shape == (15,)


# --- KMM --------------------------------------------------------------------------------------------------------


def test_kmm_matches_a_general_qp_solver():
    rng = np.random.default_rng(3)
    Xs, Xt = rng.normal(size=(15, 2)), rng.normal(0.7, 0.6, size=(12, 2))
    for eps in (None, 0.05):  # loose sum constraint, then a binding one
        kmm = KMM(B=5.0, eps=eps, gamma=0.5)
        beta = kmm.compute_weights(Xs, Xt)
        K = np.exp(-0.5 * ((Xs[:, None] - Xs[None]) ** 2).sum(-1))  # hand-built RBF kernel
        kappa = 15 / 12 * np.exp(-0.5 * ((Xs[:, None] - Xt[None]) ** 2).sum(-1)).sum(1)
        e = 5.0 / math.sqrt(15) if eps is None else eps
        reference = optimize.minimize(
            lambda b: 0.5 * b @ K @ b - kappa @ b, np.ones(15), jac=lambda b: K @ b - kappa, method="SLSQP",
            bounds=[(0, 5.0)] * 15, options={"ftol": 1e-12, "maxiter": 500},
            constraints=[{"type": "ineq", "fun": lambda b: 15 * (1 + e) - b.sum()},
                         {"type": "ineq", "fun": lambda b: b.sum() - 15 * (1 - e)}])
        objective = lambda b: 0.5 * b @ K @ b - kappa @ b  # noqa: E731
        assert objective(beta) <= objective(reference.x) + 1e-5
        assert 15 * (1 - e) - 1e-6 <= beta.sum() <= 15 * (1 + e) + 1e-6
        assert beta.min() >= 0 and beta.max() <= 5.0


def test_kmm_weights_are_about_one_without_shift_and_follow_the_target_with_shift():
    rng = np.random.default_rng(4)
    Xs = rng.normal(size=(200, 1))
    same = KMM(B=10).compute_weights(Xs, rng.normal(size=(200, 1)))
    assert abs(same.mean() - 1.0) < 0.15
    shifted = KMM(B=10).compute_weights(Xs, rng.normal(1.0, 0.5, size=(200, 1)))
    # The density ratio p_t / p_s grows towards x = 1: source points there must weigh more.
    assert shifted[Xs[:, 0] > 0.5].mean() > 3 * shifted[Xs[:, 0] < -0.5].mean()


# --- TCA and JDA ------------------------------------------------------------------------------------------------


def test_mmd_matrices_compute_distances_between_means():
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(9, 3))
    ys, yt = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 0])
    mean_gap = Z[:5].mean(0) - Z[5:].mean(0)
    assert np.trace(Z.T @ mmd_matrix(5, 4) @ Z) == pytest.approx(mean_gap @ mean_gap)
    hand = sum(np.sum((Z[:5][ys == c].mean(0) - Z[5:][yt == c].mean(0)) ** 2) for c in (0, 1))
    assert np.trace(Z.T @ class_mmd_matrix(ys, yt, [0, 1]) @ Z) == pytest.approx(hand)


def linear_mmd(Zs, Zt):
    """Squared distance between the domain means, relative to the embedding's total variance."""
    gap = Zs.mean(0) - Zt.mean(0)
    return gap @ gap / np.vstack([Zs, Zt]).var(0).sum()


@pytest.mark.parametrize("kernel", ["primal", "rbf"])
def test_tca_shapes_constraint_and_smaller_mmd_than_pca(kernel):
    rng = np.random.default_rng(6)
    Xs, ys = blobs(rng, 80, d=6)
    Xt, _ = blobs(rng, 60, shift=np.array([2.0, -1.0, 0, 1.5, 0, 0]), d=6)
    X, y, _ = stack_domains(Xs, ys, Xt)
    tca = TCA(n_components=3, kernel=kernel, mu=1.0).fit(X, y)
    Z = tca.transform(X)
    assert Z.shape == (140, 3) and tca.predict(Xt).shape == (60,)
    K = tca._basis(X)
    H = np.eye(140) - 1 / 140
    np.testing.assert_allclose(tca.projection_.T @ K.T @ H @ K @ tca.projection_, np.eye(3), atol=1e-6)  # AᵀKHKA=I
    pca = PCA(3).fit_transform(X)
    assert linear_mmd(Z[:80], Z[80:]) < 0.5 * linear_mmd(pca[:80], pca[80:])


def test_jda_reduces_class_conditional_mmd_and_adapts():
    rng = np.random.default_rng(7)
    shift = np.array([3.0, 3.0, 0, 0, 0])
    Xs, ys = blobs(rng, 150)
    Xt, yt = blobs(rng, 150, shift=shift)
    X, y, _ = stack_domains(Xs, ys, Xt)
    jda = JDA(n_components=3, n_iter=5).fit(X, y)
    assert jda.transform(Xt).shape == (150, 3) and jda.pseudo_labels_.shape == (150,)
    Z = jda.transform(X)
    raw = sum(linear_mmd(Xs[ys == c], Xt[yt == c]) for c in range(3))
    aligned = sum(linear_mmd(Z[:150][ys == c], Z[150:][yt == c]) for c in range(3))
    assert aligned < raw
    assert jda.score(Xt, yt) >= LogisticRegression().fit(Xs, ys).score(Xt, yt) - 0.02


# --- CORAL ------------------------------------------------------------------------------------------------------


def test_coral_recolours_source_covariance_to_the_targets():
    rng = np.random.default_rng(8)
    Xs = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4))
    Xt = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4)) + 2.0
    y = rng.integers(0, 2, 400)
    X, y_all, _ = stack_domains(Xs, y, Xt)
    # Exact identity with the regulariser: cov(X_s*) = C_t − λ C_t^{1/2} C_s^{-1} C_t^{1/2}.
    lam = 0.5
    coral = CORAL(lambda_=lam).fit(X, y_all)
    C_s = np.cov(Xs, rowvar=False) + lam * np.eye(4)
    C_t = np.cov(Xt, rowvar=False) + lam * np.eye(4)
    values, vectors = np.linalg.eigh(C_t)
    root_t = (vectors * np.sqrt(values)) @ vectors.T
    expected = C_t - lam * root_t @ np.linalg.inv(C_s) @ root_t
    np.testing.assert_allclose(np.cov(coral.recolor(Xs), rowvar=False), expected, rtol=1e-8, atol=1e-8)
    # With a vanishing regulariser the source takes the target's covariance.
    tiny = CORAL(lambda_=1e-9).fit(X, y_all)
    np.testing.assert_allclose(np.cov(tiny.recolor(Xs), rowvar=False), np.cov(Xt, rowvar=False), rtol=1e-5, atol=1e-6)


def test_pipeline_and_clone_compatibility():
    rng = np.random.default_rng(9)
    Xs, ys = blobs(rng, 90)
    Xt, yt = blobs(rng, 60, shift=0.5)
    X, y, _ = stack_domains(Xs, ys, Xt)
    for method in (CORAL(), KMM(B=10), TCA(n_components=3), JDA(n_components=3, n_iter=2)):
        pipe = make_pipeline(StandardScaler(), clone(method)).fit(X, y)
        assert pipe.predict(Xt).shape == (60,)
        assert 0.0 <= pipe.score(Xt, yt) <= 1.0
        assert clone(method).get_params() == method.get_params()


# --- proxy A-distance -------------------------------------------------------------------------------------------


def test_proxy_a_distance_is_near_zero_for_one_domain_and_two_for_separated_ones():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    assert abs(proxy_a_distance(a, b)) < 0.3
    assert proxy_a_distance(a, b + 10.0) > 1.9


def test_proxy_a_distance_uses_held_out_rows():
    # 20 points per domain in 50 dimensions: a linear classifier separates *any* labelling of its training rows, so
    # the training error would claim d_A = 2; the held-out error reveals that the domains are the same.
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(20, 50)), rng.normal(size=(20, 50))
    assert proxy_a_distance(a, b) < 1.0


# --- the chapter's data: printed vs handwritten digits ----------------------------------------------------------


def test_block_counts_by_hand():
    from minipeft.datasets.digits_shift import block_counts

    bitmap = np.zeros((32, 32), bool)
    bitmap[0:4, 0:4] = True  # a full block -> 16
    bitmap[4, 4:6] = True  # two pixels of block (1, 1) -> 2
    counts = block_counts(bitmap).reshape(8, 8)
    assert counts[0, 0] == 16 and counts[1, 1] == 2 and counts.sum() == 18
    with pytest.raises(ValueError, match="32×32"):
        block_counts(np.zeros((8, 8)))


def test_rendered_digits_share_the_handwritten_format_and_are_deterministic():
    from sklearn.datasets import load_digits

    from minipeft.datasets.digits_shift import load_domain, make_shift_task

    printed = load_domain("fonts", n_per_class=3, seed=5)
    again = load_domain("fonts", n_per_class=3, seed=5)
    np.testing.assert_array_equal(printed.X, again.X)
    assert printed.X.shape == (30, 64) and np.bincount(printed.y).tolist() == [3] * 10
    assert printed.X.min() >= 0 and printed.X.max() <= 16 and (printed.X == np.round(printed.X)).all()
    assert not np.array_equal(printed.X, load_domain("fonts", n_per_class=3, seed=6).X)
    hand = load_domain("hand")
    np.testing.assert_array_equal(hand.X, load_digits().data)  # the real, unmodified scikit-learn digits
    task = make_shift_task("sans", "hand", n_per_class=2, seed=0)
    assert len(task.target_train) + len(task.target_test) == 1797
    with pytest.raises(ValueError, match="unknown domain"):
        load_domain("cursive", 3)
    with pytest.raises(ValueError, match="two different domains"):
        make_shift_task("hand", "hand")

"""OOD scores and metrics (minipeft/evaluation/ood.py) against scikit-learn, numpy and brute-force definitions."""

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import average_precision_score, roc_auc_score

from minipeft.evaluation import KNN, Cosine, Mahalanobis, aupr, auroc, energy, fpr95, msp, ood_metrics


def rng(seed=0):
    return np.random.default_rng(seed)


def tied_scores(seed=0, n_id=40, n_ood=30):
    """Scores rounded to one decimal, so many ID/OOD and ID/ID pairs tie."""
    generator = rng(seed)
    return np.round(generator.normal(1.0, 1.0, n_id), 1), np.round(generator.normal(0.0, 1.0, n_ood), 1)


def sklearn_inputs(id_scores, ood_scores):
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return labels, np.r_[id_scores, ood_scores]


def brute_force_fpr(id_scores, ood_scores, tpr=0.95):
    """Try every score as a threshold; keep those accepting >= tpr of ID; the lowest OOD acceptance among them."""
    candidates = []
    for threshold in np.unique(np.r_[id_scores, ood_scores]):
        accepted_id = np.sum(id_scores >= threshold)
        if accepted_id >= math.ceil(tpr * len(id_scores) - 1e-9):
            candidates.append(np.mean(ood_scores >= threshold))
    return min(candidates)


# ---- metrics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_aupr_equal_sklearn_with_ties(seed):
    id_scores, ood_scores = tied_scores(seed)
    assert len(np.unique(np.r_[id_scores, ood_scores])) < len(id_scores) + len(ood_scores)  # ties really present
    labels, scores = sklearn_inputs(id_scores, ood_scores)
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert aupr(id_scores, ood_scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    # AUPR-Out: OOD is the positive class and low scores mean OOD.
    assert ood_metrics(id_scores, ood_scores)["aupr_out"] == pytest.approx(
        average_precision_score(1 - labels, -scores), abs=1e-9)


def test_auroc_is_the_pairwise_probability():
    id_scores, ood_scores = tied_scores(3, 25, 17)
    difference = id_scores[:, None] - ood_scores[None, :]
    pairwise = np.mean(difference > 0) + 0.5 * np.mean(difference == 0)
    assert auroc(id_scores, ood_scores) == pytest.approx(pairwise, abs=1e-12)


@pytest.mark.parametrize("seed,n_id", [(0, 40), (1, 20), (2, 37), (3, 7)])
def test_fpr95_equals_brute_force(seed, n_id):
    id_scores, ood_scores = tied_scores(seed, n_id=n_id)
    assert fpr95(id_scores, ood_scores) == pytest.approx(brute_force_fpr(id_scores, ood_scores), abs=1e-12)
    assert fpr95(id_scores, ood_scores, tpr=0.8) == pytest.approx(
        brute_force_fpr(id_scores, ood_scores, 0.8), abs=1e-12)


def test_fpr95_counts_exactly_95_percent():
    # 20 ID scores: accepting 19 of them is exactly 95%, so the threshold sits at the second-lowest ID score.
    id_scores = np.arange(1, 21, dtype=float)  # 1..20
    ood_scores = np.array([1.5, 2.5, 0.0, -1.0])
    assert fpr95(id_scores, ood_scores) == pytest.approx(1 / 4)  # only 2.5 >= 2
    # 0.55 * 100 is 55.00000000000001 in floating point; 55 of 100 accepted must still count as 55%.
    assert fpr95(np.arange(1, 101, dtype=float), np.array([45.5, 46.5]), tpr=0.55) == pytest.approx(1 / 2)


def test_perfect_separation():
    id_scores, ood_scores = rng(4).uniform(2, 3, 50), rng(5).uniform(0, 1, 30)
    metrics = ood_metrics(id_scores, ood_scores)
    assert metrics == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    reversed_metrics = ood_metrics(ood_scores, id_scores)  # the wrong sign convention: everything inverted
    assert reversed_metrics["auroc"] == 0.0 and reversed_metrics["fpr95"] == 1.0


def test_metrics_accept_tensors_and_lists():
    id_scores, ood_scores = tied_scores(6)
    expected = auroc(id_scores, ood_scores)
    assert auroc(torch.tensor(id_scores, dtype=torch.float64), torch.tensor(ood_scores)) == pytest.approx(expected)
    assert auroc(list(id_scores), list(ood_scores)) == pytest.approx(expected)


def test_metric_errors():
    with pytest.raises(ValueError, match="ood_scores is empty"):
        auroc([0.1, 0.2], [])
    with pytest.raises(ValueError, match="id_scores is empty"):
        fpr95([], [0.3])
    with pytest.raises(ValueError, match="1-D"):
        aupr(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, float("nan")], [0.3])
    with pytest.raises(ValueError, match="tpr"):
        fpr95([1.0], [0.0], tpr=0)


# ---- logit scores ------------------------------------------------------------------------------------------------


def test_msp_and_energy_closed_forms():
    logits = torch.tensor(rng(7).normal(0, 3, (6, 5)))
    exp = np.exp(logits.numpy())
    expected_msp = exp.max(1) / exp.sum(1)
    torch.testing.assert_close(msp(logits), torch.tensor(expected_msp), rtol=0, atol=1e-12)
    torch.testing.assert_close(energy(logits), torch.tensor(np.log(exp.sum(1))), rtol=0, atol=1e-12)
    T = 2.5
    expected_energy = T * np.log(np.exp(logits.numpy() / T).sum(1))
    torch.testing.assert_close(energy(logits, temperature=T), torch.tensor(expected_energy), rtol=0, atol=1e-12)


def test_energy_is_stable_and_tends_to_max_logit():
    logits = torch.tensor([[1000.0, 0.0], [-1000.0, -1001.0]], dtype=torch.float64)
    scores = energy(logits)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(scores, torch.tensor([1000.0, -1000.0 + math.log1p(math.exp(-1))], dtype=torch.float64))
    # As T -> 0 the energy score tends to the largest logit.
    small = energy(torch.tensor([[0.3, 1.7, -2.0]]), temperature=1e-3)
    assert small.item() == pytest.approx(1.7, abs=1e-4)


def test_logit_score_errors():
    with pytest.raises(ValueError, match="at least 2 classes"):
        msp(torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\(samples, classes\)"):
        energy(torch.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        energy(torch.zeros(2, 3), temperature=0)


# ---- feature scores ----------------------------------------------------------------------------------------------


def clustered(seed=0, n=60, dims=5, classes=3):
    generator = rng(seed)
    labels = np.arange(n) % classes
    centres = generator.normal(0, 3, (classes, dims))
    mixing = generator.normal(0, 1, (dims, dims))  # correlated noise, so Σ is far from the identity
    features = centres[labels] + generator.normal(0, 1, (n, dims)) @ mixing
    return features, labels


def test_mahalanobis_equals_numpy_and_sklearn():
    features, labels = clustered()
    queries = rng(1).normal(0, 3, (9, features.shape[1]))
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    centred = features - means[labels]

    covariance = EmpiricalCovariance(assume_centered=True).fit(centred)
    precision = np.linalg.inv(centred.T @ centred / len(features))
    numpy_distances = np.stack([np.einsum("nd,de,ne->n", queries - m, precision, queries - m) for m in means], 1)
    sklearn_distances = np.stack([covariance.mahalanobis(queries - m) for m in means], 1)

    detector = Mahalanobis().fit(torch.tensor(features), torch.tensor(labels))
    np.testing.assert_allclose(detector.covariance.numpy(), covariance.covariance_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(detector.distances(queries).numpy(), numpy_distances, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(detector.distances(queries).numpy(), sklearn_distances, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(detector.score(queries).numpy(), -numpy_distances.min(1), rtol=1e-9, atol=1e-9)


def test_mahalanobis_uses_pseudo_inverse_when_covariance_is_singular():
    # 6 samples in 10 dims: Σ has rank <= 4, so inv fails and the pseudo-inverse is the defined answer.
    generator = rng(2)
    features, labels = generator.normal(0, 1, (6, 10)), np.array([0, 0, 0, 1, 1, 1])
    queries = generator.normal(0, 1, (4, 10))
    means = np.stack([features[labels == c].mean(0) for c in range(2)])
    centred = features - means[labels]
    precision = np.linalg.pinv(centred.T @ centred / len(features), rcond=1e-10, hermitian=True)
    expected = np.stack([np.einsum("nd,de,ne->n", queries - m, precision, queries - m) for m in means], 1)
    detector = Mahalanobis().fit(features, labels)
    assert torch.isfinite(detector.score(queries)).all()
    np.testing.assert_allclose(detector.distances(queries).numpy(), expected, rtol=1e-7, atol=1e-8)


def test_mahalanobis_ranks_the_training_clusters_above_far_points():
    features, labels = clustered(3)
    detector = Mahalanobis().fit(features, labels)
    far = features[:10] + 50.0
    assert detector.score(features).min() > detector.score(far).max()


def test_knn_equals_brute_force():
    features, labels = clustered(4, n=40)
    queries = rng(5).normal(0, 3, (7, features.shape[1]))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for k in (1, 5, 40):
        distances = [sorted(np.linalg.norm(q - unit, axis=1))[k - 1] for q in unit_queries]
        detector = KNN(k=k, batch_size=3).fit(features, labels)  # batch_size 3: several distance blocks
        np.testing.assert_allclose(detector.score(queries).numpy(), -np.array(distances), rtol=0, atol=1e-12)


def test_cosine_to_class_means_and_to_features():
    features, labels = clustered(6)
    queries = rng(7).normal(0, 3, (8, features.shape[1]))

    def cosines(a, b):
        return (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None, :]

    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(Cosine().fit(features, labels).score(queries).numpy(),
                               cosines(queries, means).max(1), rtol=0, atol=1e-12)
    nearest = Cosine("features").fit(features).score(queries).numpy()
    np.testing.assert_allclose(nearest, cosines(queries, features).max(1), rtol=0, atol=1e-12)
    # On unit vectors |a-b|² = 2 - 2cos(a, b): KNN with k=1 is a monotone transform of the nearest cosine.
    knn = KNN(k=1).fit(features).score(queries).numpy()
    np.testing.assert_allclose(knn, -np.sqrt(np.maximum(2 - 2 * nearest, 0)), atol=1e-7)


def test_feature_score_errors():
    features, labels = clustered(8)
    for detector in (Mahalanobis(), KNN(k=3), Cosine()):
        with pytest.raises(RuntimeError, match="not fitted"):
            detector.score(features)
        detector.fit(features, labels)
        with pytest.raises(ValueError, match="fitted on 5"):
            detector.score(features[:, :4])
        with pytest.raises(ValueError, match="2-D"):
            detector.score(features[0])
    with pytest.raises(ValueError, match="one entry per training feature"):
        Mahalanobis().fit(features, labels[:-1])
    with pytest.raises(ValueError, match="integer class ids"):
        Mahalanobis().fit(features, labels.astype(float))
    with pytest.raises(ValueError, match="covariance is zero"):
        Mahalanobis().fit(features[:3], labels[:3])  # one sample per class: nothing varies within a class
    with pytest.raises(ValueError, match="k=61"):
        KNN(k=61).fit(features)
    with pytest.raises(ValueError, match="k must be"):
        KNN(k=0)
    with pytest.raises(ValueError, match="needs train_labels"):
        Cosine().fit(features)
    with pytest.raises(ValueError, match="reference"):
        Cosine("centroids")
    with pytest.raises(ValueError, match="all zeros"):
        KNN(k=1).fit(np.zeros((3, 5)))

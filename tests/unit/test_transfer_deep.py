"""minipeft.transfer.deep: each loss against a hand computation on small tensors, plus its defining property."""

import doctest
import math

import pytest
import torch
from torch import nn

from minipeft.transfer import deep
from minipeft.transfer.deep import (ConditionalDomainAdversarialLoss, DeepCORALLoss, DomainAdversarialLoss,
                                    DomainDiscriminator, DomainPairs, GradientReversal, MultipleKernelMMD,
                                    dann_lambda)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_docstring_examples_run():
    torch.manual_seed(0)
    assert doctest.testmod(deep, extraglobs={"torch": torch}).failed == 0


# --- gradient reversal -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("coefficient", [0.0, 0.3, 1.0, 2.5])
def test_reversal_is_identity_forward_and_flips_exactly_the_gradient(coefficient):
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = GradientReversal(coefficient)(x)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, -coefficient * upstream)  # exactly −λ × the incoming gradient


def test_reversal_rejects_negative_coefficient():
    with pytest.raises(ValueError, match="≥ 0"):
        GradientReversal(-1.0)(torch.ones(2))


def test_dann_lambda_is_the_papers_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.25) == pytest.approx(2 / (1 + math.exp(-2.5)) - 1)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] > 0.999
    with pytest.raises(ValueError, match="fraction"):
        dann_lambda(1.5)


# --- MK-MMD ----------------------------------------------------------------------------------------------------


def hand_mmd(x, y, sigma0_squared, multipliers, unbiased):
    """MMD² by explicit loops over pairs."""

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-d2 / (2 * m * sigma0_squared)) for m in multipliers) / len(multipliers)

    def mean_within(z):
        pairs = [(i, j) for i in range(len(z)) for j in range(len(z)) if not (unbiased and i == j)]
        return sum(k(z[i], z[j]) for i, j in pairs) / len(pairs)

    across = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return mean_within(x) + mean_within(y) - 2 * across


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_matches_hand_computation(estimator):
    torch.manual_seed(1)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 0.5
    mmd = MultipleKernelMMD(multipliers=(0.5, 1.0, 2.0), bandwidth=1.7, estimator=estimator)
    expected = hand_mmd(x, y, 1.7, (0.5, 1.0, 2.0), unbiased=estimator == "unbiased")
    assert float(mmd(x, y)) == pytest.approx(expected, rel=1e-10)


def test_mmd_data_driven_bandwidth_is_half_the_mean_squared_distance():
    torch.manual_seed(2)
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    pooled = torch.cat([x, y])
    sigma0_squared = float(torch.cdist(pooled, pooled).pow(2).mean()) / 2
    assert float(MultipleKernelMMD()(x, y)) == pytest.approx(
        hand_mmd(x, y, sigma0_squared, (0.25, 0.5, 1.0, 2.0, 4.0), unbiased=False), rel=1e-10)


def test_linear_time_estimator_matches_quad_tuple_formula():
    torch.manual_seed(3)
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64) + 1
    mmd = MultipleKernelMMD(multipliers=(1.0,), bandwidth=2.0, estimator="linear")
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / 4.0)  # noqa: E731 (σ² = 2)
    expected = sum(k(x[2 * i], x[2 * i + 1]) + k(y[2 * i], y[2 * i + 1]) - k(x[2 * i], y[2 * i + 1])
                   - k(x[2 * i + 1], y[2 * i]) for i in range(3)) / 3
    assert float(mmd(x, y)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_mmd_zero_for_identical_and_positive_for_shifted_samples(device):
    torch.manual_seed(4)
    x = torch.randn(64, 8, device=device)
    assert float(MultipleKernelMMD()(x, x)) == 0.0
    assert float(MultipleKernelMMD()(x, x + 1.0)) > 0.05
    assert float(MultipleKernelMMD(estimator="unbiased")(x, x + 1.0)) > 0.05


def test_unbiased_estimator_has_zero_expectation_and_biased_does_not():
    generator = torch.Generator().manual_seed(5)
    unbiased, biased = MultipleKernelMMD(estimator="unbiased", bandwidth=4.0), MultipleKernelMMD(bandwidth=4.0)
    u_values, b_values = [], []
    for _ in range(300):
        x, y = torch.randn(10, 4, generator=generator), torch.randn(10, 4, generator=generator)
        u_values.append(float(unbiased(x, y)))
        b_values.append(float(biased(x, y)))
    u = torch.tensor(u_values)
    standard_error = float(u.std()) / math.sqrt(len(u))
    assert abs(float(u.mean())) < 3 * standard_error  # E[unbiased MMD²] = 0 when P = Q
    assert min(b_values) >= 0 and sum(b_values) / len(b_values) > 10 * standard_error  # V-statistic is biased up
    assert (u < 0).any()  # single unbiased values can be negative


def test_mmd_gradient_pulls_the_domains_together():
    torch.manual_seed(6)
    x = torch.randn(32, 2)
    y = (torch.randn(32, 2) + 2.0).requires_grad_()
    loss = MultipleKernelMMD()(x, y)
    loss.backward()
    with torch.no_grad():
        moved = y - 0.5 * y.grad / y.grad.norm()
    assert float(MultipleKernelMMD()(x, moved)) < float(loss.detach())


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: MultipleKernelMMD()(torch.randn(4), torch.randn(4, 2)), ValueError, "2-D"),
        (lambda: MultipleKernelMMD()(torch.randn(4, 3), torch.randn(4, 2)), ValueError, "same network layer"),
        (lambda: MultipleKernelMMD()([[1.0]], torch.randn(4, 2)), TypeError, "torch.Tensor"),
        (lambda: MultipleKernelMMD(estimator="linear")(torch.randn(4, 2), torch.randn(6, 2)), ValueError, "even"),
        (lambda: MultipleKernelMMD(estimator="quadratic"), ValueError, "biased"),
        (lambda: MultipleKernelMMD(multipliers=()), ValueError, "positive"),
        (lambda: DeepCORALLoss()(torch.randn(1, 2), torch.randn(4, 2)), ValueError, "at least 2"),
        (lambda: DomainPairs(torch.zeros(3, 2), torch.zeros(2), torch.zeros(4, 2)), ValueError, "labels"),
        (lambda: DomainPairs([1, 2], torch.zeros(2), torch.zeros(4, 2)), TypeError, "tensors"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- Deep CORAL ------------------------------------------------------------------------------------------------


def test_deep_coral_matches_hand_computation():
    torch.manual_seed(7)
    s, t = torch.randn(7, 3, dtype=torch.float64), 2 * torch.randn(5, 3, dtype=torch.float64)
    C_s, C_t = torch.cov(s.T), torch.cov(t.T)  # torch's own unbiased covariance as the reference
    expected = float(((C_s - C_t) ** 2).sum()) / (4 * 3 * 3)
    assert float(DeepCORALLoss()(s, t)) == pytest.approx(expected, rel=1e-12)
    assert float(DeepCORALLoss()(s, s + 5.0)) == pytest.approx(0.0, abs=1e-12)  # a mean shift is invisible to it


# --- DANN and CDAN -------------------------------------------------------------------------------------------------


def test_dann_gradient_is_reversed_for_features_and_not_for_the_discriminator():
    torch.manual_seed(8)
    discriminator = DomainDiscriminator(4, hidden=8)
    fs, ft = torch.randn(6, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    loss = DomainAdversarialLoss(discriminator, coefficient=0.7)
    loss(fs, ft).backward()
    reversed_grad, discriminator_grad = fs.grad.clone(), discriminator[0].weight.grad.clone()

    fs.grad, ft.grad = None, None
    discriminator.zero_grad()
    logit_s, logit_t = discriminator(fs), discriminator(ft)
    plain = 0.5 * (nn.functional.binary_cross_entropy_with_logits(logit_s, torch.ones(6))
                   + nn.functional.binary_cross_entropy_with_logits(logit_t, torch.zeros(5)))
    plain.backward()
    torch.testing.assert_close(reversed_grad, -0.7 * fs.grad)
    torch.testing.assert_close(discriminator_grad, discriminator[0].weight.grad)
    assert 0.0 <= loss.domain_accuracy <= 1.0


def test_cdan_multilinear_map_is_the_outer_product():
    loss = ConditionalDomainAdversarialLoss(DomainDiscriminator(6))
    f = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    g = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    hand = torch.tensor([[g[b, c] * f[b, j] for c in range(2) for j in range(3)] for b in range(2)])
    torch.testing.assert_close(loss.multilinear_map(f, g), hand)


def test_cdan_randomized_map_shape_and_formula():
    loss = ConditionalDomainAdversarialLoss(DomainDiscriminator(16), randomized_dim=16, num_classes=3, feature_dim=5)
    f, g = torch.randn(4, 5), torch.softmax(torch.randn(4, 3), 1)
    out = loss.multilinear_map(f, g)
    assert out.shape == (4, 16)
    torch.testing.assert_close(out, (f @ loss.random_features) * (g @ loss.random_classes) / 4.0)


def test_cdan_entropy_weights_by_hand():
    uniform = torch.full((1, 4), 0.25)
    assert float(ConditionalDomainAdversarialLoss.certainty_weights(uniform)) == pytest.approx(1 + 1 / 4)  # e^{-ln 4}
    certain = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert float(ConditionalDomainAdversarialLoss.certainty_weights(certain)) == pytest.approx(2.0)


@pytest.mark.parametrize("entropy", [False, True])
def test_cdan_trains_features_but_not_logits_through_the_conditioning(entropy):
    torch.manual_seed(9)
    loss = ConditionalDomainAdversarialLoss(DomainDiscriminator(3 * 4), entropy_conditioning=entropy)
    ls, lt = torch.randn(6, 3, requires_grad=True), torch.randn(6, 3, requires_grad=True)
    fs, ft = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    value = loss(ls, fs, lt, ft)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert ls.grad is None  # predictions are detached: they condition, they are not trained by this loss


def test_cdan_e_equals_weighted_bce_by_hand():
    torch.manual_seed(10)
    discriminator = DomainDiscriminator(2 * 3, hidden=4)
    loss = ConditionalDomainAdversarialLoss(discriminator, entropy_conditioning=True)
    ls, lt, fs, ft = torch.randn(3, 2), torch.randn(4, 2), torch.randn(3, 3), torch.randn(4, 3)
    gs, gt = torch.softmax(ls, 1), torch.softmax(lt, 1)
    w = torch.cat([1 + torch.exp((gs * gs.log()).sum(1)), 1 + torch.exp((gt * gt.log()).sum(1))])
    w = w / w.mean()
    hs = (gs[:, :, None] * fs[:, None, :]).flatten(1)
    ht = (gt[:, :, None] * ft[:, None, :]).flatten(1)
    ds, dt = torch.sigmoid(discriminator(hs)), torch.sigmoid(discriminator(ht))
    expected = 0.5 * ((-w[:3] * ds.log()).mean() + (-w[3:] * (1 - dt).log()).mean())
    torch.testing.assert_close(loss(ls, fs, lt, ft), expected)


# --- DomainPairs ---------------------------------------------------------------------------------------------------------


def test_domain_pairs_cycles_the_shorter_domain():
    pairs = DomainPairs(torch.arange(3.0)[:, None], torch.tensor([0, 1, 2]), torch.arange(10.0, 15.0)[:, None])
    assert len(pairs) == 5
    xs, ys, xt = pairs[4]
    assert float(xs) == 1.0 and int(ys) == 1 and float(xt) == 14.0
    batch = torch.utils.data.default_collate([pairs[i] for i in range(5)])
    assert [tuple(t.shape) for t in batch] == [(5, 1), (5,), (5, 1)]

"""Decoder heads (Gaussian variance modes, continuous Bernoulli) and the encoder's log-variance bounds."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import distributions as D

from vae.config import EncoderConfig, GaussianConfig
from vae.likelihoods import ContinuousBernoulli, Gaussian, build_likelihood, continuous_bernoulli_log_norm
from vae.model import GaussianEncoder, build_model

EXTREME_LOGITS = [-50.0, -20.0, -1.0, -1e-2, -1e-4, 0.0, 1e-4, 1e-2, 1.0, 20.0, 50.0]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def cb_log_norm_reference(logits: torch.Tensor) -> torch.Tensor:
    """log C = log(l / tanh(l / 2)) in float64, where it is accurate for every l != 0 (C(0) = 2)."""
    lg = logits.double()
    safe = torch.where(lg == 0, torch.ones_like(lg), lg)
    return torch.where(lg == 0, torch.full_like(lg, math.log(2.0)), torch.log(safe / torch.tanh(safe / 2)))


def cb_density(x: torch.Tensor, logit: float) -> torch.Tensor:
    """The continuous Bernoulli density on x (float64), from the reference normaliser."""
    lg = torch.tensor(logit, dtype=torch.float64)
    return torch.exp(x * lg - torch.nn.functional.softplus(lg) + cb_log_norm_reference(lg))


# Gaussian


@pytest.mark.parametrize("variance", ["learned", "shared", "fixed", "optimal"])
def test_gaussian_log_prob_matches_torch_normal(variance, gen):
    head = Gaussian(variance, min_std=0.05, fixed_std=0.7)
    x = torch.randn(3, 4, 5, generator=gen)  # (L, B, D)
    out = 2 * torch.randn(3, 4, head.params_per_dim * 5, generator=gen)
    mean = head.mean(out)
    # The optimal std is the batch's root mean squared error; the others are what std() reports.
    std = ((x - mean) ** 2).mean().sqrt().expand_as(mean) if variance == "optimal" else head.std(out)
    expected = D.Normal(mean, std).log_prob(x).sum(-1)
    torch.testing.assert_close(head.log_prob(x, out), expected, rtol=1e-5, atol=1e-5)
    if variance == "learned":
        raw = out[..., 5:]
        torch.testing.assert_close(std, torch.sqrt(0.05**2 + torch.nn.functional.softplus(raw)))


@pytest.mark.parametrize("variance", ["learned", "shared", "fixed", "optimal"])
def test_gaussian_std_shapes(variance, gen):
    head = Gaussian(variance, min_std=0.01)
    out = torch.randn(2, 6, head.params_per_dim * 3, generator=gen)
    assert head.std(out).shape == (2, 6, 3)
    assert head.mean(out).shape == (2, 6, 3)
    assert head.sample(out, gen).shape == (2, 6, 3)
    assert head.min_std == 0.01


def test_gaussian_unbounded_learned_log_var_is_raw():
    head = Gaussian("learned", min_std=0.0)
    out = torch.cat([torch.zeros(2, 3), torch.full((2, 3), -20.0)], dim=-1)
    std = head.std(out)
    torch.testing.assert_close(std, torch.full((2, 3), math.exp(-10.0)))
    assert (std < 1e-4).all()


def test_gaussian_floor_holds_for_learned_shared_and_optimal():
    min_std = 0.1
    learned = Gaussian("learned", min_std=min_std)
    out = torch.cat([torch.zeros(2, 3), torch.full((2, 3), -1e4)], dim=-1)
    assert (learned.std(out) >= min_std * (1 - 1e-6)).all()

    shared = Gaussian("shared", min_std=min_std)
    with torch.no_grad():
        shared.raw_var.fill_(-1e4)
    assert (shared.std(torch.zeros(2, 3)) >= min_std * (1 - 1e-6)).all()

    optimal = Gaussian("optimal", min_std=min_std)
    x = torch.randn(4, 3)
    log_p = optimal.log_prob(x, x + 1e-4)  # batch MSE far below min_std²
    torch.testing.assert_close(optimal.last_std, torch.tensor(min_std))
    torch.testing.assert_close(log_p, D.Normal(x + 1e-4, min_std).log_prob(x).sum(-1))
    assert (optimal.std(x) >= min_std * (1 - 1e-6)).all()


def test_shared_variance_is_one_parameter_with_a_gradient(gen):
    head = Gaussian("shared", min_std=0.01)
    params = list(head.parameters())
    assert len(params) == 1 and params[0].numel() == 1
    x, out = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    head.log_prob(x, out).sum().backward()
    assert params[0].grad is not None and params[0].grad.abs() > 0
    assert head.std(out).unique().numel() == 1
    unbounded = Gaussian("shared", min_std=0.0)
    torch.testing.assert_close(unbounded.std(out), torch.ones_like(out))  # init 0: std 1


def test_optimal_variance_is_the_batch_mse_and_maximises_log_prob(gen):
    head = Gaussian("optimal", min_std=0.0)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    out = x + 0.3 * torch.randn(2, 16, 4, generator=gen, dtype=torch.float64)  # (L, B, D)
    log_p = head.log_prob(x, out).sum()
    mse = ((x - out) ** 2).mean()
    torch.testing.assert_close(head.last_std.double() ** 2, mse, rtol=1e-6, atol=0)
    sigma = mse.sqrt().item()
    for s in torch.linspace(0.5 * sigma, 2 * sigma, 31).tolist():
        assert D.Normal(out, s).log_prob(x).sum() <= log_p + 1e-9
    # The fitted sigma is used for sampling, and only the training batches update it.
    assert head.sample(out.float(), gen).shape == out.shape
    head.eval()
    head.log_prob(x, x + 1.0)
    torch.testing.assert_close(head.last_std.double(), mse.sqrt(), rtol=1e-6, atol=0)


def test_optimal_variance_passes_gradients_to_the_mean(gen):
    head = Gaussian("optimal", min_std=1e-3)
    x = torch.randn(8, 3, generator=gen)
    out = torch.randn(8, 3, generator=gen, requires_grad=True)
    head.log_prob(x, out).sum().backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0


# Continuous Bernoulli


def test_cb_log_norm_is_accurate_everywhere():
    logits = torch.cat(
        [torch.linspace(-60, 60, 24001), torch.logspace(-8, 2, 501), -torch.logspace(-8, 2, 501)]
    )
    ours = continuous_bernoulli_log_norm(logits)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), cb_log_norm_reference(logits), rtol=1e-6, atol=0)


def test_cb_log_prob_matches_torch_and_float64_reference(gen):
    head = build_likelihood("continuous_bernoulli")
    assert isinstance(head, ContinuousBernoulli)
    # Moderate logits, 0.5 <= |l| <= 5, where torch's float32 form is itself accurate to ~1e-6.
    logits = torch.empty(50, 7).uniform_(0.5, 5, generator=gen) * torch.sign(
        torch.randn(50, 7, generator=gen)
    )
    x = torch.rand(50, 7, generator=gen)
    expected = D.ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(head.log_prob(x, logits), expected, rtol=1e-5, atol=1e-5)
    # Extreme logits: torch's probs form saturates at ±50 and cancels near 0, so compare against float64.
    logits = torch.tensor(EXTREME_LOGITS).expand(20, -1)
    x = torch.rand(20, len(EXTREME_LOGITS), generator=gen)
    ours = head.log_prob(x, logits)
    assert torch.isfinite(ours).all()
    lg = logits.double()
    reference = (x.double() * lg - torch.nn.functional.softplus(lg) + cb_log_norm_reference(lg)).sum(-1)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-5)
    # torch in float64 agrees where its clamped probs do not saturate.
    moderate = logits[:, 1:-1]
    torch_f64 = D.ContinuousBernoulli(logits=moderate.double()).log_prob(x[:, 1:-1].double()).sum(-1)
    torch.testing.assert_close(head.log_prob(x[:, 1:-1], moderate).double(), torch_f64, rtol=1e-5, atol=1e-5)


def test_cb_gradients_are_finite_at_extreme_logits(gen):
    head = ContinuousBernoulli()
    logits = torch.tensor(EXTREME_LOGITS, requires_grad=True)
    x = torch.rand(len(EXTREME_LOGITS), generator=gen)
    (head.log_prob(x, logits) + head.mean(logits).sum()).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("logit", EXTREME_LOGITS)
def test_cb_mean_matches_a_numerical_integral(logit):
    x = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    integral = torch.trapezoid(x * cb_density(x, logit), x)
    torch.testing.assert_close(
        torch.trapezoid(cb_density(x, logit), x), torch.tensor(1.0, dtype=torch.float64)
    )
    mean = ContinuousBernoulli().mean(torch.tensor([logit]))
    assert torch.isfinite(mean).all()
    torch.testing.assert_close(mean.double(), integral.reshape(1), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("logit", [-50.0, -3.0, -1e-4, 0.0, 1e-2, 0.7, 8.0, 50.0])
def test_cb_samples_lie_in_the_unit_interval_and_match_the_mean(logit, gen):
    head = ContinuousBernoulli()
    n = 200_000
    out = torch.full((n,), logit)
    samples = head.sample(out, gen)
    assert ((samples >= 0) & (samples <= 1)).all()
    mean = head.mean(out[:1])
    x = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    second = torch.trapezoid(x**2 * cb_density(x, logit), x)
    std_error = (second - mean.double() ** 2).sqrt() / math.sqrt(n)
    assert abs(samples.double().mean() - mean.double()) < 5 * std_error
    # The same generator state gives the same draws.
    again = head.sample(out, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, head.sample(out, torch.Generator().manual_seed(0)))


def test_cb_sample_inverts_torch_cdf(gen):
    logits = torch.empty(1000).uniform_(-10, 10, generator=gen)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(1))
    samples = ContinuousBernoulli().sample(logits, torch.Generator().manual_seed(1))
    cdf = D.ContinuousBernoulli(logits=logits.double()).cdf(samples.double())
    torch.testing.assert_close(cdf, u.double(), rtol=0, atol=1e-5)


# Encoder


def make_encoder(raw: float, min_log_var: float | None, max_log_var: float | None) -> GaussianEncoder:
    """An encoder whose raw log-variance output is ``raw`` for every input."""
    encoder = GaussianEncoder(3, [4], 2, "relu", min_log_var, max_log_var)
    last = encoder.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(raw)
    return encoder


@pytest.mark.parametrize("bounds", [(-6.0, 2.0), (-6.0, None), (None, 2.0)])
def test_encoder_log_var_bounds_hold_and_keep_gradients(bounds, gen):
    lo, hi = bounds
    x = torch.randn(5, 3, generator=gen)
    for raw in [-1e30, -1e4, -50.0, -6.0, 0.0, 2.0, 50.0, 1e4, 1e30]:
        _, log_var = make_encoder(raw, lo, hi)(x)
        assert torch.isfinite(log_var).all()
        assert lo is None or (log_var >= lo).all()
        assert hi is None or (log_var <= hi).all()
    for raw in [lo, hi]:
        if raw is None:
            continue
        for beyond in (-10.0, 0.0, 10.0):  # at the bound and past it on either side: a hard clamp gives 0
            encoder = make_encoder(raw + beyond, lo, hi)
            encoder(x)[1].sum().backward()
            assert encoder.net[-1].bias.grad[2:].abs().min() > 0


def test_encoder_bounds_are_near_identity_well_inside(gen):
    encoder = make_encoder(0.0, -30.0, 30.0)
    torch.testing.assert_close(encoder(torch.randn(2, 3, generator=gen))[1], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="must be below"):
        GaussianEncoder(3, [4], 2, "relu", 1.0, 1.0)


def test_build_model_passes_the_encoder_bounds():
    cfg = SimpleNamespace(
        z_dim=2,
        hidden_dims=[4],
        activation="relu",
        likelihood=GaussianConfig(variance="optimal"),
        encoder=EncoderConfig(),
    )
    model = build_model(cfg, 3)
    assert (model.encoder.min_log_var, model.encoder.max_log_var) == (None, None)
    cfg.encoder = EncoderConfig(min_log_var=-4.0, max_log_var=1.0)
    model = build_model(cfg, 3)
    assert (model.encoder.min_log_var, model.encoder.max_log_var) == (-4.0, 1.0)
    assert model.likelihood.variance == "optimal"

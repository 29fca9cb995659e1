"""Log-densities, KL forms and the ELBO against torch.distributions."""

import pytest
import torch
from torch import distributions as D

from vae.distributions import bernoulli_log_prob, kl_normal_std_normal, normal_log_prob, std_normal_log_prob
from vae.likelihoods import Bernoulli, Gaussian
from vae.model import VAE
from vae.objectives import elbo_terms


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_normal_log_prob_matches_torch(gen):
    x, mean = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    log_var = 3 * torch.randn(7, 5, generator=gen)
    expected = D.Normal(mean, torch.exp(0.5 * log_var)).log_prob(x).sum(-1)
    torch.testing.assert_close(normal_log_prob(x, mean, log_var), expected)
    z = torch.randn(3, 7, 4, generator=gen)
    torch.testing.assert_close(std_normal_log_prob(z), D.Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_bernoulli_log_prob_matches_torch_and_is_finite_at_extreme_logits(gen):
    x = torch.bernoulli(torch.full((6, 9), 0.5), generator=gen)
    logits = 20 * torch.randn(6, 9, generator=gen)
    torch.testing.assert_close(bernoulli_log_prob(x, logits), D.Bernoulli(logits=logits).log_prob(x).sum(-1))
    extreme = torch.tensor([[1e4, -1e4]])
    assert torch.isfinite(bernoulli_log_prob(torch.tensor([[0.0, 1.0]]), extreme)).all()


def test_analytic_kl_matches_torch(gen):
    mean, log_var = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    q = D.Normal(mean, torch.exp(0.5 * log_var))
    expected = D.kl_divergence(q, D.Normal(torch.zeros(3), torch.ones(3)))
    torch.testing.assert_close(kl_normal_std_normal(mean, log_var), expected)


def test_mc_and_analytic_elbo_agree_in_expectation(gen):
    mean, log_var = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    L = 200_000
    z = mean + torch.randn(L, 4, 3, generator=gen) * torch.exp(0.5 * log_var)
    log_px = torch.zeros(L, 4)
    mc = elbo_terms(log_px, z, mean, log_var, "mc")
    analytic = elbo_terms(log_px, z, mean, log_var, "analytic")
    torch.testing.assert_close(mc.kl, analytic.kl, atol=0.02, rtol=0.01)
    torch.testing.assert_close(mc.elbo, mc.log_px - mc.kl)


def test_gaussian_head_respects_variance_floor_and_fixed_variance():
    head = Gaussian("learned", min_std=0.1)
    out = torch.cat([torch.zeros(2, 3), torch.full((2, 3), -1e4)], dim=-1)  # raw -> softplus ~ 0
    mean, log_var = head.split(out)
    torch.testing.assert_close(log_var, torch.full_like(log_var, 2 * torch.log(torch.tensor(0.1)).item()))
    x = torch.randn(2, 3)
    expected = D.Normal(mean, 0.1).log_prob(x).sum(-1)
    torch.testing.assert_close(head.log_prob(x, out), expected)
    fixed = Gaussian("fixed", fixed_std=0.5)
    assert fixed.params_per_dim == 1
    torch.testing.assert_close(fixed.log_prob(x, torch.zeros(2, 3)), D.Normal(0.0, 0.5).log_prob(x).sum(-1))


def test_vae_elbo_shapes_and_gradients():
    torch.manual_seed(0)
    model = VAE(x_dim=6, z_dim=2, hidden_dims=[8, 4], likelihood=Bernoulli(), activation="tanh")
    x = torch.bernoulli(torch.full((5, 6), 0.3))
    terms = model.elbo(x, n_samples=3, kl="mc")
    assert all(t.shape == (5,) for t in terms)
    (-terms.elbo.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.sample(4).shape == (4, 6)
    # The decoder mirrors the encoder's hidden sizes.
    widths = [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert widths == [4, 8, 6]

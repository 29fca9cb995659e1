"""The importance-weighted log-likelihood, the latent diagnostics, and scripts/evaluate.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import MOONS, read_metrics, read_scalars, run_script
from torch import distributions as D
from torch import nn

from vae.diagnostics import active_units, kl_per_dim, mutual_information
from vae.evaluate import evaluate, log_likelihood
from vae.likelihoods import Gaussian
from vae.model import VAE
from vae.objectives import iwae_bound

X_DIM, Z_DIM, STD = 4, 2, 0.5


class PosteriorOfPPCA(nn.Module):
    """q(z|x) for the linear-Gaussian decoder: the exact posterior, optionally widened and shifted."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.w, self.b, self.scale, self.shift = w, b, scale, shift

    def forward(self, x):
        # W has orthogonal columns, so the exact posterior N(M^-1 W^T (x - b), s^2 M^-1) is diagonal.
        m = (self.w**2).sum(0) + STD**2
        mean = (x - self.b) @ self.w / m + self.shift
        log_var = torch.log(STD**2 / m * self.scale).expand_as(mean)
        return mean, log_var


def ppca(scale: float = 1.0, shift: float = 0.0) -> tuple[VAE, torch.distributions.Distribution]:
    """A VAE with a linear decoder N(Wz + b, s^2 I) and its exact marginal p(x) = N(b, WW^T + s^2 I)."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM, generator=gen))
    w = q * torch.tensor([2.0, 1.0])  # orthogonal columns of different lengths
    b = torch.randn(X_DIM, generator=gen)
    model = VAE(X_DIM, Z_DIM, [8], Gaussian("fixed", fixed_std=STD))
    model.decoder = nn.Linear(Z_DIM, X_DIM)
    with torch.no_grad():
        model.decoder.weight.copy_(w)
        model.decoder.bias.copy_(b)
    model.encoder = PosteriorOfPPCA(w, b, scale, shift)
    marginal = D.MultivariateNormal(b, w @ w.T + STD**2 * torch.eye(X_DIM))
    return model, marginal


@pytest.fixture
def data():
    _, marginal = ppca()
    torch.manual_seed(1)
    return marginal.sample((64,))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_exact_posterior_gives_the_exact_log_likelihood_at_any_k(data):
    model, marginal = ppca()
    exact = marginal.log_prob(data).double()
    for k in (1, 7):
        torch.testing.assert_close(log_likelihood(model, data, k, generator=gen()), exact, atol=1e-4, rtol=0)
    scores = evaluate(model, data, 5, generator=gen())
    assert scores["elbo"] == pytest.approx(exact.mean().item(), abs=1e-4)  # a tight bound
    assert scores["nll"] == pytest.approx(-exact.mean().item(), abs=1e-4)


def test_iwae_converges_to_the_exact_log_likelihood_and_bounds_the_elbo(data):
    model, marginal = ppca(scale=2.0, shift=0.8)  # a poor proposal: the bounds are loose at small K
    exact = marginal.log_prob(data).double().mean().item()
    estimates = [-evaluate(model, data, k, generator=gen())["nll"] for k in (1, 10, 100, 5000)]
    elbo = evaluate(model, data, 5000, generator=gen())["elbo"]
    assert elbo < estimates[1] < estimates[2] < estimates[3] <= exact + 0.02
    assert estimates[0] == pytest.approx(elbo, abs=0.5)  # K=1 is the ELBO itself, one draw
    assert exact - estimates[3] < 0.05
    assert exact - elbo > 5


def test_nll_is_at_most_minus_elbo_on_the_same_draws(data):
    model, _ = ppca(scale=0.3, shift=-0.5)
    for k in (1, 2, 50):
        scores = evaluate(model, data, k, batch_size=10, generator=gen(k))
        assert scores["nll"] <= -scores["elbo"] + 1e-9
        assert scores["elbo"] == pytest.approx(scores["log_px"] - scores["kl"])


def test_chunking_combines_exactly(data, monkeypatch):
    """The same draws through the decoder in one pass or in chunks of any size give the same estimate."""
    model, _ = ppca(scale=2.0, shift=0.2)
    k = 50
    bank = torch.randn(k, data.shape[0], Z_DIM, generator=gen(3))

    def replay(mean, log_var, n_samples, generator=None):
        nonlocal used
        eps = bank[used : used + n_samples, : mean.shape[0]]
        used += n_samples
        return mean + eps * torch.exp(0.5 * log_var)

    monkeypatch.setattr(model, "sample_posterior", replay)
    results = []
    for max_rows in (10_000_000, 64 * 7, 64):  # one pass, chunks of 7 samples, chunks of 1 sample
        used = 0
        results.append(log_likelihood(model, data, k, batch_size=64, max_rows=max_rows))
    mean, log_var = model.encoder(data)
    z = mean + bank * torch.exp(0.5 * log_var)
    log_w = (
        model.log_px(data, z)
        + D.Normal(0, 1).log_prob(z).sum(-1)
        - D.Normal(mean, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    )
    direct = iwae_bound(log_w.double())
    for result in results:
        torch.testing.assert_close(result, direct)


def test_planted_dead_dimensions_are_found():
    n, gen_ = 500, gen(0)
    live = torch.randn(n, 2, generator=gen_)  # informative means, small variance
    mean = torch.cat([live, torch.zeros(n, 2)], dim=1)
    log_var = torch.cat([torch.full((n, 2), -4.0), torch.zeros(n, 2)], dim=1)  # dead dims = the prior
    assert active_units(mean) == 2
    kl = kl_per_dim(mean, log_var)
    torch.testing.assert_close(kl[2:], torch.zeros(2))
    expected_live = 0.5 * (live.pow(2).mean(0) + math.exp(-4.0) - 1 + 4.0)
    torch.testing.assert_close(kl[:2], expected_live)
    z = mean + torch.randn(n, 4, generator=gen_) * torch.exp(0.5 * log_var)
    mi = mutual_information(z, mean, log_var)
    assert 2.0 < mi <= math.log(n)
    dead = mutual_information(z[:, 2:], mean[:, 2:], log_var[:, 2:])
    assert abs(dead) < 1e-6


def test_evaluate_script_on_a_real_run(tmp_path):
    run_dir = tmp_path / "run"
    run_script(
        "train.py",
        *MOONS,
        "epochs=2",
        "eval.iw_samples=20",
        "plot.enabled=false",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    results = json.loads((run_dir / "eval.json").read_text())
    test = results["test"]
    assert test["iw_samples"] == 20 and test["n_examples"] == 100 and test["epoch"] == 2
    assert {"binarize", "checkpoint", "seed", "eval_seed", "eval_seconds"} <= test.keys()
    assert len(test["scores"]["kl_per_dim"]) == 2
    metrics = read_metrics(run_dir)
    assert metrics["test/nll"] <= -metrics["test/elbo"]

    proc = run_script("evaluate.py", f"run={run_dir}", "split=val", "eval.iw_samples=200", cwd=tmp_path)
    assert "NLL (IWAE, K=200)" in proc.stdout + proc.stderr
    results = json.loads((run_dir / "eval.json").read_text())
    assert set(results) == {"test", "val"} and results["val"]["iw_samples"] == 200
    metrics = read_metrics(run_dir)
    assert metrics["val/nll"] <= -metrics["val/elbo"] and "test/nll" in metrics
    scalars = read_scalars(run_dir)
    assert scalars["val/nll"] == [(2, pytest.approx(metrics["val/nll"], rel=1e-5))]
    assert "test/kl_per_dim/1" in scalars
    assert not (run_dir / ".hydra" / "overrides.yaml").read_text().count("split")  # training's .hydra kept


def test_evaluate_script_errors(tmp_path):
    proc = run_script("evaluate.py", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "missing mandatory value: run" in proc.stdout + proc.stderr
    proc = run_script("evaluate.py", f"run={tmp_path / 'nothing'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no last.pt in or below" in proc.stdout + proc.stderr
    assert not (tmp_path / "nothing").exists()

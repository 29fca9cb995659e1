"""The pitfalls' diagnostics (each flags its planted pitfall and stays silent on a healthy model), the
remedies' effect on the loss, and every experiment config running end to end."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import MOONS, read_metrics, read_scalars, run_script, tiny_images
from torch import nn

from vae.likelihoods import Gaussian
from vae.model import VAE
from vae.monitor import Monitor
from vae.objectives import (
    elbo_loss,
    elbo_terms,
    iwae_bound,
    iwae_loss,
    kl_per_dim,
    kl_weight,
    log_importance_weights,
    objective_loss,
)


def draws(seed=0, b=6, z=3, samples=4):
    g = torch.Generator().manual_seed(seed)
    mean, log_var = torch.randn(b, z, generator=g), torch.randn(b, z, generator=g)
    zs = mean + torch.randn(samples, b, z, generator=g) * torch.exp(0.5 * log_var)
    return torch.randn(samples, b, generator=g), zs, mean, log_var


# --- remedies: the loss terms ---------------------------------------------------------------------------


@pytest.mark.parametrize("kl", ["mc", "analytic"])
def test_elbo_loss_with_beta_one_and_no_free_bits_is_the_negative_elbo(kl):
    log_px, z, mean, log_var = draws()
    kl_dims = kl_per_dim(z, mean, log_var, kl)
    expected = -elbo_terms(log_px, z, mean, log_var, kl).elbo.mean()
    torch.testing.assert_close(elbo_loss(log_px, kl_dims), expected)
    torch.testing.assert_close(objective_loss("elbo", log_px, z, mean, log_var, kl_dims), expected)


def test_beta_scales_only_the_kl_term():
    log_px, z, mean, log_var = draws()
    kl_dims = kl_per_dim(z, mean, log_var, "analytic")
    for beta in (0.0, 0.3, 4.0):
        expected = -log_px.mean() + beta * kl_dims.sum(-1).mean()
        torch.testing.assert_close(elbo_loss(log_px, kl_dims, beta=beta), expected)


def test_free_bits_floor_each_dimensions_batch_kl_and_stop_its_gradient():
    log_px = torch.zeros(1, 4)
    kl_dims = torch.tensor([[0.01, 2.0], [0.03, 1.0], [0.02, 3.0], [0.04, 2.0]], requires_grad=True)
    loss = elbo_loss(log_px, kl_dims, free_bits=0.5)
    torch.testing.assert_close(loss, torch.tensor(0.5 + 2.0))  # dim 0 counts as 0.5 nats, dim 1 as its 2.0
    loss.backward()
    assert torch.all(kl_dims.grad[:, 0] == 0) and torch.all(kl_dims.grad[:, 1] == 0.25)


def test_iwae_loss_is_the_negative_importance_weighted_bound():
    log_px, z, mean, log_var = draws(samples=7)
    log_w = log_importance_weights(log_px, z, mean, log_var)
    torch.testing.assert_close(iwae_loss(log_w), -iwae_bound(log_w).mean())
    kl_dims = kl_per_dim(z, mean, log_var)
    torch.testing.assert_close(objective_loss("iwae", log_px, z, mean, log_var, kl_dims), iwae_loss(log_w))
    assert iwae_loss(log_w) <= elbo_loss(log_px, kl_dims) + 1e-6  # the tighter bound


def test_mc_kl_per_dimension_matches_the_analytic_one_in_expectation():
    _, _, mean, log_var = draws(b=3, z=4)
    z = mean + torch.randn(200_000, 3, 4, generator=torch.Generator().manual_seed(1)) * torch.exp(
        0.5 * log_var
    )
    torch.testing.assert_close(
        kl_per_dim(z, mean, log_var, "mc"), kl_per_dim(z, mean, log_var, "analytic"), atol=0.02, rtol=0.02
    )


def test_kl_weight_schedules():
    assert kl_weight(3.0, beta=0.5) == 0.5
    linear = dict(warmup="linear", warmup_epochs=10)
    assert [kl_weight(e, **linear) for e in (0, 2.5, 10, 30)] == [0.0, 0.25, 1.0, 1.0]
    assert kl_weight(0, warmup_start=0.2, **linear) == pytest.approx(0.2)
    assert kl_weight(5, beta=2.0, **linear) == pytest.approx(1.0)
    cyclical = dict(warmup="cyclical", warmup_epochs=4, warmup_ratio=0.5)
    values = [kl_weight(e, **cyclical) for e in (0, 1, 2, 3, 4, 5, 6)]
    assert values == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0]


# --- diagnostics: planted pitfalls and healthy models --------------------------------------------------


class PlantedEncoder(nn.Module):
    """q(z|x) = N(scale * x, var): scale 0 is a collapsed posterior; scale^2 + var = 1 matches the prior."""

    def __init__(self, scale: float, var: float) -> None:
        super().__init__()
        self.scale, self.log_var = scale, math.log(var)

    def forward(self, x):
        return self.scale * x, torch.full_like(x, self.log_var)


def planted(scale: float, var: float, min_std: float = 0.01, log_var_out: float = 0.0) -> VAE:
    """A 2-d model; its decoder outputs a mean and the raw log-variance ``log_var_out`` everywhere."""
    model = VAE(2, 2, [8], Gaussian("learned", min_std=min_std))
    model.encoder = PlantedEncoder(scale, var)
    with torch.no_grad():
        last = model.decoder[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, log_var_out, log_var_out]))
    return model


@pytest.fixture
def x_val():
    return torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_healthy_model_raises_nothing(x_val, caplog):
    monitor = Monitor(x_val, "gaussian")
    with caplog.at_level(logging.INFO, logger="vae.monitor"):
        for epoch in (1, 2, 3):
            stats = monitor.epoch(epoch, planted(0.9, 0.19), train_log_px=-1.0)
    assert warnings(caplog) == [] and monitor.summary() == {}
    assert stats["diag/active_units"] == 2 and stats["diag/mi"] > 0.5
    assert stats["diag/prior_hole_kl"] < 0.3 and stats["diag/agg_gauss_kl"] < 0.05


def test_posterior_collapse_is_flagged_once_per_onset(x_val, caplog):
    monitor = Monitor(x_val, "gaussian")
    sequence = [planted(0.0, 1.0), planted(0.0, 1.0), planted(0.9, 0.19), planted(0.0, 1.0)]
    with caplog.at_level(logging.INFO, logger="vae.monitor"):
        for epoch, model in enumerate(sequence, start=1):
            monitor.epoch(epoch, model, train_log_px=-2.8)
    collapse = [m for m in warnings(caplog) if "posterior collapse: 0 of 2 latent dimensions active" in m]
    assert len(collapse) == 2  # epochs 1 and 4, not 2
    assert any("posterior collapse cleared" in r.getMessage() for r in caplog.records)
    entry = monitor.summary()["diagnosis/posterior_collapse"]
    assert entry["onsets"] == [1, 4] and entry["cleared"] == [3] and entry["active_at_end"]
    assert "warmup" in entry["remedy"]


def test_inactive_dimensions_with_information_are_not_a_collapse(caplog):
    x = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))
    model = VAE(4, 4, [8], Gaussian())
    model.encoder = PlantedEncoder(1.0, 0.01)
    model.encoder.forward = lambda x: (
        torch.cat([x[:, :1], torch.zeros_like(x[:, 1:])], 1),
        torch.cat([torch.full_like(x[:, :1], -4.0), torch.zeros_like(x[:, 1:])], 1),
    )
    monitor = Monitor(x, "gaussian")
    with caplog.at_level(logging.INFO, logger="vae.monitor"):
        monitor.epoch(1, model, train_log_px=-1.0)
    assert not any("collapse" in m for m in warnings(caplog))
    assert any("3 of 4 latent dimensions inactive" in r.getMessage() for r in caplog.records)


def test_prior_hole_is_flagged(x_val, caplog):
    monitor = Monitor(x_val, "gaussian")
    with caplog.at_level(logging.WARNING, logger="vae.monitor"):
        stats = monitor.epoch(1, planted(0.2, 0.01), train_log_px=0.0)  # encodings huddle near 0
    assert stats["diag/prior_hole_kl"] > 1.0
    assert any(
        m.startswith("epoch 1: prior hole: aggregate posterior far from N(0, I)") for m in warnings(caplog)
    )


def test_decoder_variance_collapse_is_flagged_and_a_floor_is_only_noted(x_val, caplog):
    unbounded = planted(0.9, 0.19, min_std=0.0, log_var_out=-20.0)  # sigma = exp(-10)
    monitor = Monitor(x_val, "gaussian")
    with caplog.at_level(logging.INFO, logger="vae.monitor"):
        stats = monitor.epoch(1, unbounded, train_log_px=15.0)
    assert stats["diag/decoder_std_min"] < 1e-4
    assert any("decoder variance collapse: 100% of sigma below 0.05" in m for m in warnings(caplog))
    caplog.clear()
    floored = planted(0.9, 0.19, min_std=0.05, log_var_out=-20.0)
    monitor = Monitor(x_val, "gaussian")
    with caplog.at_level(logging.INFO, logger="vae.monitor"):
        stats = monitor.epoch(1, floored, train_log_px=1.0)
    assert stats["diag/decoder_std_at_floor"] == 1.0 and warnings(caplog) == []
    assert any("the floor is binding" in r.getMessage() for r in caplog.records)


def test_likelihood_mismatch_is_flagged_for_bernoulli_on_grey_levels(caplog):
    grey = torch.rand(100, 5, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="vae.monitor"):
        Monitor(grey, "bernoulli").check_data(grey.round(), binarized_per_batch=False)
        Monitor(grey, "bernoulli").check_data(grey, binarized_per_batch=True)
        assert warnings(caplog) == []
        monitor = Monitor(grey, "bernoulli")
        monitor.check_data(grey, binarized_per_batch=False)
    assert any("likelihood mismatch: Bernoulli on non-binary data" in m for m in warnings(caplog))
    assert "diagnosis/likelihood_mismatch" in monitor.summary()


# --- end to end ---------------------------------------------------------------------------------------

SMALL_MOONS = [
    "dataset.n_samples=1200",
    "dataset.val_size=100",
    "dataset.test_size=100",
    "epochs=1",
    "eval.iw_samples=10",
    "plot.enabled=false",
    "device=cpu",
]


@pytest.mark.parametrize(
    "experiment", ["posterior_collapse", "variance_collapse", "too_many_latents", "prior_hole"]
)
def test_every_moons_experiment_runs_its_pair(tmp_path, experiment):
    sweep = tmp_path / "sweep"
    run_script(
        "train.py", "-m", f"experiment={experiment}", *SMALL_MOONS, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    configs = [(sweep / job / "config.yaml").read_text() for job in ("0", "1")]
    assert configs[0] != configs[1] and all("name: moons" in c for c in configs)
    for job in ("0", "1"):
        assert "test/nll" in read_metrics(sweep / job)


def test_mnist_experiment_runs_its_pair(tmp_path):
    sweep = tmp_path / "sweep"
    run_script(
        "train.py",
        "-m",
        "experiment=mnist_z2_vs_z10",
        *tiny_images(tmp_path),
        "epochs=1",
        "plot.enabled=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert "z_dim: 2" in (sweep / "0" / "config.yaml").read_text()
    assert "z_dim: 10" in (sweep / "1" / "config.yaml").read_text()


def test_a_real_run_records_its_diagnosis(tmp_path):
    """The posterior-collapse study on fewer points: the collapse is logged and summarised."""
    run_dir = tmp_path / "run"
    run_script(
        "train.py",
        "experiment=posterior_collapse",
        *SMALL_MOONS,
        "dataset.n_samples=3000",
        "epochs=3",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    metrics = read_metrics(run_dir)
    log = (run_dir / "train.log").read_text()
    assert "diag/mi" not in metrics  # the diagnostics go to TensorBoard, the findings to diagnosis/
    assert log.count("posterior collapse: 0 of 5 latent dimensions active") == 1  # once per onset
    entry = metrics["diagnosis/posterior_collapse"]
    assert entry["onsets"] == [1] and entry["active_at_end"] and "warmup" in entry["remedy"]
    assert {"diag/mi", "diag/prior_hole_kl", "diag/decoder_std_median", "diag/grad_norm_encoder"} <= set(
        read_scalars(run_dir)
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective=iwae", "objective.k=3"],
        ["likelihood.variance=shared"],
        ["likelihood.variance=optimal", "likelihood.min_std=0.0025"],
        ["likelihood.variance=fixed", "likelihood.fixed_std=0.5"],
        [
            "objective.warmup=cyclical",
            "objective.warmup_epochs=1",
            "objective.free_bits=0.2",
            "objective.beta=2",
        ],
        ["grad_clip=1.0", "encoder.min_log_var=-6", "encoder.max_log_var=2"],
    ],
    ids=["iwae", "shared", "optimal", "fixed", "cyclical-free-bits", "clip-bounds"],
)
def test_every_remedy_is_one_override_away(tmp_path, overrides):
    run_dir = tmp_path / "run"
    run_script(
        "train.py",
        *MOONS,
        "epochs=2",
        "plot.enabled=false",
        *overrides,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    metrics = read_metrics(run_dir)
    assert metrics["test/nll"] <= -metrics["test/elbo"]
    scalars = read_scalars(run_dir)
    assert len(scalars["train/loss"]) == 2 and len(scalars["train/kl_weight"]) == 2


@pytest.mark.parametrize(("likelihood", "mismatch"), [("continuous_bernoulli", False), ("bernoulli", True)])
def test_grey_levels_with_each_likelihood(tmp_path, likelihood, mismatch):
    """Grey levels (dataset.binarize=none): the continuous Bernoulli fits them, the Bernoulli is flagged."""
    run_dir = tmp_path / "run"
    run_script(
        "train.py",
        f"likelihood={likelihood}",
        "dataset.binarize=none",
        *tiny_images(tmp_path),
        "z_dim=2",
        "epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert "binarize=none" in (run_dir / "train.log").read_text()
    found = "likelihood mismatch: Bernoulli on non-binary data" in (run_dir / "train.log").read_text()
    assert found == mismatch
    assert ("diagnosis/likelihood_mismatch" in read_metrics(run_dir)) == mismatch


def test_iwae_with_warmup_is_refused(tmp_path):
    proc = run_script("train.py", *MOONS, "objective=iwae", "objective.beta=0.5", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "objective=iwae takes no beta" in proc.stdout + proc.stderr


def test_diagnostics_can_be_switched_off(tmp_path):
    run_dir = tmp_path / "run"
    run_script(
        "train.py",
        *MOONS,
        "epochs=1",
        "diagnose=false",
        "plot.enabled=false",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    scalars = read_scalars(run_dir)
    assert "train/elbo" in scalars and not [tag for tag in scalars if tag.startswith("diag/")]

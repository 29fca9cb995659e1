"""The fast paths compute what the plain ones do: fused Adam, and dynamic binarisation as rand < p."""

from __future__ import annotations

import torch
from conftest import MOONS, read_metrics, run_script

from vae.benchmark import train_config
from vae.data.batches import iterate_batches
from vae.model import build_model
from vae.objectives import elbo_loss, kl_per_dim
from vae.train import make_optimizer


def train_steps(fused: bool, steps: int = 20) -> list[torch.Tensor]:
    cfg = train_config(z_dim=4, hidden=(32,))
    cfg.fused_adam = fused
    torch.manual_seed(0)
    model = build_model(cfg, 20)
    opt = make_optimizer(model, cfg)
    data = torch.rand(steps, 16, 20, generator=torch.Generator().manual_seed(1)).round()
    for i in range(steps):
        torch.manual_seed(100 + i)  # the same reparameterisation noise on both paths
        log_px, z, mean, log_var = model(data[i])
        loss = elbo_loss(log_px, kl_per_dim(z, mean, log_var, "analytic"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_fused_adam_matches_the_multi_tensor_path():
    for fused, plain in zip(train_steps(True), train_steps(False), strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6)


def test_dynamic_binarisation_draws_bernoulli_samples():
    p = torch.tensor([0.0, 0.3, 0.9, 1.0]).repeat(50_000, 1)
    torch.manual_seed(0)
    batches = list(iterate_batches(p, 10_000, torch.Generator().manual_seed(0), binarize=True))
    x = torch.cat(batches)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x.dtype == p.dtype
    torch.testing.assert_close(x.mean(0), torch.tensor([0.0, 0.3, 0.9, 1.0]), atol=0.005, rtol=0)
    assert not torch.equal(batches[0], batches[1])  # a fresh sample for every batch


def test_fused_adam_can_be_switched_off(tmp_path):
    for fused in ("true", "false"):
        run_script(
            "train.py",
            *MOONS,
            "epochs=1",
            "plot.enabled=false",
            f"fused_adam={fused}",
            f"hydra.run.dir={tmp_path / fused}",
            cwd=tmp_path,
        )
    a, b = (read_metrics(tmp_path / f) for f in ("true", "false"))
    assert abs(a["train/elbo"] - b["train/elbo"]) < 1e-3  # the same training, up to rounding

"""The fast paths compute what the plain ones do: fused Adam, and dynamic binarisation as rand < p."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import MOONS, read_metrics, run_script

from vae.benchmark import train_config
from vae.data.batches import iterate_batches
from vae.model import build_model
from vae.objectives import elbo_loss, kl_per_dim
from vae.optim import FusedAdam, fused_adam_supported
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


def _adam_run(opt_factory, steps: int, model=None, opt=None, start: int = 0):
    """A small model trained ``steps`` Adam steps on fixed random gradients (seeded per step)."""
    if model is None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
        opt = opt_factory(model.parameters())
    for i in range(start, start + steps):
        torch.manual_seed(1000 + i)
        loss = model(torch.randn(16, 5)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def test_fused_adam_equals_torch_fused_adam_bit_for_bit():
    ours, _ = _adam_run(lambda p: FusedAdam(p, lr=1e-2), 25)
    theirs, _ = _adam_run(lambda p: torch.optim.Adam(p, lr=1e-2, fused=True), 25)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fused_adam_state_dicts_are_interchangeable_with_torch_adam():
    reference, _ = _adam_run(lambda p: torch.optim.Adam(p, lr=1e-2, fused=True), 20)
    for first, second in (
        (lambda p: torch.optim.Adam(p, lr=1e-2, fused=True), lambda p: FusedAdam(p, lr=1e-2)),
        (lambda p: FusedAdam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2, fused=True)),
    ):
        model, opt = _adam_run(first, 10)
        state = opt.state_dict()
        resumed = second(model.parameters())
        resumed.load_state_dict(state)
        _adam_run(None, 10, model, resumed, start=10)
        for a, b in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.equal(a, b)
    ours = _adam_run(lambda p: FusedAdam(p, lr=1e-2), 3)[1].state_dict()
    theirs = _adam_run(lambda p: torch.optim.Adam(p, lr=1e-2, fused=True), 3)[1].state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()


def test_fused_adam_skips_parameters_without_gradients_and_refuses_a_wrong_state():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = FusedAdam([used, unused], lr=0.1)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused, torch.ones(2)) and list(opt.state) == [0]
    assert torch.allclose(used, torch.full((3,), 0.9))  # Adam's first step moves by lr * sign(grad)
    other = FusedAdam([torch.nn.Parameter(torch.ones(4)), unused])
    try:
        other.load_state_dict(opt.state_dict())
    except ValueError as e:
        assert "exp_avg of parameter 0 has shape (3,), the parameter (4,)" in str(e)
    else:
        raise AssertionError("a state of the wrong shape was loaded")


def test_fused_adam_falls_back_where_the_kernel_does_not_run():
    assert fused_adam_supported([torch.nn.Parameter(torch.ones(2))])
    mixed = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
    assert not fused_adam_supported(mixed) and not fused_adam_supported([])
    cfg = train_config(z_dim=2, hidden=(8,))
    model = build_model(cfg, 6)
    assert isinstance(make_optimizer(model, cfg), FusedAdam)
    assert isinstance(make_optimizer(model.double(), cfg), FusedAdam)
    model.encoder.float()  # mixed dtypes: the fused kernel cannot take them in one call
    assert isinstance(make_optimizer(model, cfg), torch.optim.Adam)
    cfg.fused_adam = False
    assert isinstance(make_optimizer(build_model(cfg, 6), cfg), torch.optim.Adam)


def test_starting_a_run_does_not_import_torch_dynamo(tmp_path):
    """torch.optim imports torch._dynamo (about 1.4 s of a moons run's 2 s start-up here)."""
    code = (
        "import sys, torch; from vae.benchmark import train_config; from vae.model import build_model; "
        "from vae.train import make_optimizer; cfg = train_config(2, (8,)); m = build_model(cfg, 6); "
        "o = make_optimizer(m, cfg); m(torch.rand(4, 6))[0].sum().backward(); o.step(); o.zero_grad(); "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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

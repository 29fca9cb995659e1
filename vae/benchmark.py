"""Measure the training loop and the evaluation against a computed floor and a naive baseline.

The floor is the time the model's matrix multiplies would take at the GEMM throughput measured on the same
device in the same run, so a ratio to it says how much of the machine the loop uses. The baseline is the
textbook loop (pytorch/examples' VAE: a per-item Dataset, a DataLoader, BCE on sigmoid outputs, the
analytic KL), measured in the same run, so a ratio to it says what the project's loop buys. The machine is
noisy, so every training figure is the median of several epochs after one warm-up epoch.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vae.config import TrainConfig, config_from_dict
from vae.data.datasets import Splits
from vae.evaluate import elbo_over, evaluate, log_likelihood
from vae.model import VAE, build_model
from vae.objectives import kl_per_dim, objective_loss
from vae.train import _train_epoch, make_optimizer, seed_everything

LAYER_GEMM = (128, 784, 400)  # (batch x 784) @ (784 x 400): the reference model's largest layers
EVAL_BATCH = 1000
EVAL_MAX_ROWS = 4096
LOSS_RTOL = 1e-4
IWAE_ATOL = 1e-3


def _sync(device: torch.device) -> None:
    """Wait for queued kernels, so a timer stops when the work is done, not when it is launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _matmul_gflops(m: int, k: int, n: int, device: torch.device, repeats: int) -> float:
    """The median GFLOP/s of fp32 (m x k) @ (k x n), each repeat long enough (~0.1 s) to time reliably."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    single = min(_timed(lambda: a @ b, device) for _ in range(3))
    inner = max(1, int(0.1 / max(single, 1e-7)))

    def run() -> None:
        for _ in range(inner):
            a @ b

    seconds = statistics.median(_timed(run, device) for _ in range(repeats))
    return 2.0 * m * k * n * inner / seconds / 1e9


def gemm_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """The fp32 GEMM throughput reachable here: a layer-shaped product (the floor's rate: the model's
    matmuls are that small, so a big square GEMM's rate would flatter the floor) and an n x n one."""
    m, k, o = LAYER_GEMM
    return {
        "layer_shape": [m, k, o],
        "layer_gflops": _matmul_gflops(m, k, o, device, repeats),
        "square_n": n,
        "square_gflops": _matmul_gflops(n, n, n, device, repeats),
    }


def _macs(dims: Sequence[int]) -> int:
    return sum(a * b for a, b in pairwise(dims))


def mlp_forward_flops(x_dim: int, hidden: Sequence[int], z_dim: int, samples: int = 1) -> int:
    """Matmul FLOPs of one example's forward pass: the encoder once (2 * z_dim outputs: mean and
    log-variance) and the mirrored decoder for each of ``samples`` latents. Bias adds, activations and the
    loss are left out: they are O(width), the matmuls O(width^2)."""
    encoder = _macs([x_dim, *hidden, 2 * z_dim])
    decoder = _macs([z_dim, *reversed(hidden), x_dim])
    return 2 * (encoder + samples * decoder)


def mlp_train_flops(x_dim: int, hidden: Sequence[int], z_dim: int) -> int:
    """Matmul FLOPs of one training example: the forward pass, the weight gradients (as many again) and
    the input gradients (as many again, less the first layer's: the data need no gradient)."""
    return 3 * mlp_forward_flops(x_dim, hidden, z_dim) - 2 * x_dim * hidden[0]


def train_config(z_dim: int, hidden: Sequence[int] = (400,), kl: str = "mc", seed: int = 0) -> TrainConfig:
    """The project's config of a Bernoulli VAE on MNIST-like data, batch 128, Adam 1e-3."""
    return config_from_dict(
        {
            "dataset": {"name": "mnist", "root": "unused", "download": False},
            "likelihood": {"name": "bernoulli"},
            "objective": {"name": "elbo"},
            "z_dim": z_dim,
            "hidden_dims": list(hidden),
            "batch_size": 128,
            "lr": 1e-3,
            "kl": kl,
            "seed": seed,
            "device": "cpu",
        }
    )


class _NoBar:
    """Stands in for the progress bar that _train_epoch advances."""

    def update(self, n: int = 1) -> None:
        pass


def project_epoch(
    cfg: TrainConfig, x: torch.Tensor, device: torch.device, binarize: bool = True
) -> tuple[Callable[[], None], VAE]:
    """One epoch of the project's own loop (vae.train._train_epoch) over x (N, D), moved to ``device``
    first as train() does, as a callable; also the model it trains. ``binarize``: dynamic binarisation,
    the project's default for a Bernoulli decoder (the baseline trains on x as it is)."""
    gen = seed_everything(cfg.seed)
    x = x.to(device)
    none = x[:0]
    labels = torch.zeros(len(x), dtype=torch.int64, device=device)
    data = Splits(x, none, none, labels, labels[:0], labels[:0], binarize_train=binarize)
    model = build_model(cfg, x.shape[1]).to(device)
    opt = make_optimizer(model, cfg)
    epoch = 0

    def run() -> None:
        nonlocal epoch
        epoch += 1
        _train_epoch(model, opt, data, cfg, epoch, gen, _NoBar())

    return run, model


class BaselineVAE(nn.Module):
    """pytorch/examples' VAE: one hidden layer, separate mean and log-variance heads, a sigmoid output."""

    def __init__(self, x_dim: int, hidden: int, z_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc21 = nn.Linear(hidden, z_dim)
        self.fc22 = nn.Linear(hidden, z_dim)
        self.fc3 = nn.Linear(z_dim, hidden)
        self.fc4 = nn.Linear(hidden, x_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def baseline_loss(
    recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """pytorch/examples' loss: BCE summed over pixels and the batch plus the analytic KL."""
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def _paired_parameters(model: VAE, baseline: BaselineVAE) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Each project parameter with the baseline parameters it equals (the encoder's last layer is the
    mean and log-variance heads stacked)."""
    enc, dec = model.encoder.net, model.decoder
    if len(enc) != 3 or len(dec) != 3:
        raise ValueError("the baseline has exactly one hidden layer; give hidden_dims of length 1")
    b = baseline
    return [
        (enc[0].weight, [b.fc1.weight]),
        (enc[0].bias, [b.fc1.bias]),
        (enc[2].weight, [b.fc21.weight, b.fc22.weight]),
        (enc[2].bias, [b.fc21.bias, b.fc22.bias]),
        (dec[0].weight, [b.fc3.weight]),
        (dec[0].bias, [b.fc3.bias]),
        (dec[2].weight, [b.fc4.weight]),
        (dec[2].bias, [b.fc4.bias]),
    ]


def baseline_like(model: VAE) -> BaselineVAE:
    """A baseline with the project model's weights, on its device."""
    hidden = model.encoder.net[0].out_features
    baseline = BaselineVAE(model.x_dim, hidden, model.z_dim).to(next(model.parameters()).device)
    with torch.no_grad():
        for mine, theirs in _paired_parameters(model, baseline):
            for part, t in zip(mine.split([t.shape[0] for t in theirs]), theirs, strict=True):
                t.copy_(part)
    return baseline


class _Images(Dataset):
    """One image per __getitem__, as a torchvision data set gives them."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def baseline_epoch(
    x: torch.Tensor, hidden: int, z_dim: int, device: torch.device, seed: int = 0
) -> Callable[[], None]:
    """One epoch of pytorch/examples' training loop over x (N, D) on the CPU, batches moved to ``device``
    one by one (with its CUDA loader settings: one worker, pinned memory), as a callable."""
    torch.manual_seed(seed)
    model = BaselineVAE(x.shape[1], hidden, z_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cuda = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    loader = DataLoader(_Images(x.cpu()), batch_size=128, shuffle=True, **cuda)

    def run() -> None:
        model.train()
        train_loss = 0.0
        for data in loader:
            data = data.to(device)
            opt.zero_grad()
            recon, mu, logvar = model(data)
            loss = baseline_loss(recon, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            opt.step()

    return run


def time_interleaved(
    loops: dict[str, Callable[[], None]], rounds: int, device: torch.device, gemm_seconds: Callable[[], float]
) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds of each loop's epochs, run in rounds (one epoch of every loop per round, the order rotating)
    with the GEMM probe timed in each round too, so that every ratio compares figures taken minutes, not
    tens of minutes, apart on this drifting machine. Returns the seconds per loop and the probe's."""
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    probe = []
    names = list(loops)
    for r in range(rounds):
        probe.append(gemm_seconds())
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(_timed(loops[name], device))
    return seconds, probe


def time_evaluation(
    model: VAE, x: torch.Tensor, iw_samples: int, device: torch.device, seed: int = 0
) -> dict[str, float]:
    """Seconds of the ELBO (vae.evaluate.elbo_over, one z per example) and of the importance-weighted
    evaluation (vae.evaluate.evaluate, K = iw_samples) over x (N, D), after a small warm-up call."""
    x = x.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    evaluate(model, x[:8], 2, EVAL_BATCH, EVAL_MAX_ROWS, gen)
    return {
        "elbo_seconds": _timed(lambda: elbo_over(model, x, EVAL_BATCH), device),
        "iwae_seconds": _timed(
            lambda: evaluate(model, x, iw_samples, EVAL_BATCH, EVAL_MAX_ROWS, gen), device
        ),
    }


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a).clamp_min(1e-30)).item()


def loss_curve_check(
    cfg: TrainConfig, x: torch.Tensor, steps: int, device: torch.device, seed: int = 0
) -> dict[str, Any]:
    """Train the project's model (its forward pass, analytic KL and ELBO loss, as _train_epoch computes
    them) and a baseline with the same initial weights side by side for ``steps`` Adam steps on the same
    batches, each step's noise drawn after the same seed; return the largest relative differences of
    the per-example losses (all steps) and of the gradients (the first step).

    The baseline sums its loss over the batch (as pytorch/examples does), the project averages it: Adam
    is invariant to that scale up to its epsilon, so the curves agree to float tolerance.
    """
    torch.manual_seed(seed)
    model = build_model(cfg, x.shape[1]).to(device)
    baseline = baseline_like(model)
    opt_p = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    opt_b = torch.optim.Adam(baseline.parameters(), lr=cfg.lr)
    batches = x[: steps * cfg.batch_size].to(device).split(cfg.batch_size)
    loss_diff, grad_diff, losses = 0.0, 0.0, []
    for step, xb in enumerate(batches):
        torch.manual_seed(seed + step)
        log_px, z, mean, log_var = model(xb, 1)
        loss_p = objective_loss("elbo", log_px, z, mean, log_var, kl_per_dim(z, mean, log_var, "analytic"))
        torch.manual_seed(seed + step)
        recon, mu, logvar = baseline(xb)
        loss_b = baseline_loss(recon, xb, mu, logvar)
        for opt, loss in ((opt_p, loss_p), (opt_b, loss_b)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        per_example = loss_b.item() / len(xb)
        loss_diff = max(loss_diff, abs(loss_p.item() - per_example) / abs(loss_p.item()))
        losses.append([loss_p.item(), per_example])
        if step == 0:
            for mine, theirs in _paired_parameters(model, baseline):
                grad_diff = max(
                    grad_diff, _relative(mine.grad, torch.cat([t.grad for t in theirs]) / len(xb))
                )
        opt_p.step()
        opt_b.step()
    return {
        "steps": len(batches),
        "max_loss_rel_diff": loss_diff,
        "max_grad_rel_diff": grad_diff,
        "losses": losses,
        "tolerance": LOSS_RTOL,
        "passed": loss_diff <= LOSS_RTOL and grad_diff <= LOSS_RTOL,
    }


def iwae_chunk_check(
    model: VAE, x: torch.Tensor, iw_samples: int, device: torch.device, seed: int = 0
) -> dict[str, Any]:
    """The importance-weighted log p(x) of every example of x from one decoder pass per batch and from
    small chunks (max_rows = the batch size: one sample of z per pass), on the same generator seed."""
    x = x.to(device)

    def estimate(max_rows: int) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        return log_likelihood(model, x, iw_samples, len(x), max_rows, gen)

    diff = (estimate(len(x) * iw_samples) - estimate(len(x))).abs().max().item()
    return {
        "iw_samples": iw_samples,
        "examples": len(x),
        "max_abs_diff_nats": diff,
        "tolerance": IWAE_ATOL,
        "passed": diff <= IWAE_ATOL,
    }


def machine_info() -> dict[str, Any]:
    """What the figures depend on: the CPU, the threads torch uses, the torch build and the GPU."""
    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def load_images(n: int, root: str | None = None, name: str = "mnist", seed: int = 0) -> torch.Tensor:
    """The first n training images (N, 784) in [0, 1] of the IDX files in ``root``, or, without a root,
    n random binary 28 x 28 images (same shapes and costs, nothing to download)."""
    if root is None:
        gen = torch.Generator().manual_seed(seed)
        return torch.bernoulli(torch.full((n, 784), 0.5), generator=gen)
    from vae.data.idx import load_images_and_labels

    images = load_images_and_labels(name, root, download=False)[0][:n]
    return torch.from_numpy(images.reshape(len(images), -1)).float() / 255.0


# (name, z_dim, kl, binarize): the issue's reference model, which computes what the baseline does (analytic
# KL, the images as they are), and the project's default config (z_dim=10, Monte-Carlo KL, dynamic
# binarisation); both 784-400-z-400-784, Bernoulli, batch 128.
MODELS = (("reference", 20, "analytic", False), ("default", 10, "mc", True))
HIDDEN = 400


def _median_after_warmup(values: Sequence[float]) -> float:
    return statistics.median(values[1:] or values)  # the first round warms up caches and allocators


def _epochs_summary(
    seconds: list[float], n: int, floors: list[float], baseline: list[float]
) -> dict[str, Any]:
    """Medians over the rounds after the first; ratios are taken round by round (to the floor and the
    baseline of the same round), then their median."""
    median = _median_after_warmup(seconds)
    return {
        "epoch_seconds": seconds,
        "seconds_per_epoch": median,
        "examples_per_second": n / median,
        "times_floor": _median_after_warmup([s / f for s, f in zip(seconds, floors, strict=True)]),
        "speedup_vs_baseline": _median_after_warmup([b / s for s, b in zip(seconds, baseline, strict=True)]),
    }


def run_device(
    device: torch.device,
    x: torch.Tensor,
    epochs: int,
    iw_samples: int,
    eval_examples: int,
    gemm_n: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every measurement and check on one device; x (N, D) are the training images on the CPU."""
    log(f"[{device}] GEMM throughput")
    gemm = gemm_gflops(device, gemm_n)
    n, x_dim = x.shape
    loops: dict[str, Callable[[], None]] = {}
    models: dict[str, VAE] = {}
    for name, z_dim, kl, binarize in MODELS:
        loops[f"project_{name}"], models[name] = project_epoch(
            train_config(z_dim, [HIDDEN], kl), x, device, binarize
        )
        loops[f"baseline_{name}"] = baseline_epoch(x, HIDDEN, z_dim, device)
    log(f"[{device}] {epochs} rounds of one epoch of each of {', '.join(loops)}")
    seconds, rates = time_interleaved(
        loops, epochs, device, lambda: _matmul_gflops(*LAYER_GEMM, device, repeats=1)
    )
    gemm["layer_gflops_per_round"] = rates
    gemm["floor_gflops"] = _median_after_warmup(rates)
    training: dict[str, dict[str, Any]] = {}
    for name, z_dim, kl, binarize in MODELS:
        floors = [n * mlp_train_flops(x_dim, [HIDDEN], z_dim) / (r * 1e9) for r in rates]
        baseline = seconds[f"baseline_{name}"]
        for loop in ("project", "baseline"):
            row = _epochs_summary(seconds[f"{loop}_{name}"], n, floors, baseline)
            is_project = loop == "project"
            row |= {
                "z_dim": z_dim,
                "kl": kl if is_project else "analytic",
                "binarize": binarize and is_project,
            }
            training[f"{loop}_{name}"] = row

    gen = torch.Generator().manual_seed(0)
    x_eval = torch.bernoulli(x[:eval_examples], generator=gen)  # scored binarised, as the test set is
    model = models["reference"]
    log(f"[{device}] evaluation: ELBO and IWAE (K={iw_samples}) of {len(x_eval)} examples")
    gemm["eval_floor_gflops"] = _matmul_gflops(*LAYER_GEMM, device, repeats=3)  # the rate just before
    rate = gemm["eval_floor_gflops"] * 1e9
    seconds = time_evaluation(model, x_eval, iw_samples, device)
    evaluation = {}
    for kind, samples in (("elbo", 1), ("iwae", iw_samples)):
        floor = len(x_eval) * mlp_forward_flops(x_dim, [HIDDEN], model.z_dim, samples) / rate
        s = seconds[f"{kind}_seconds"]
        evaluation[kind] = {
            "samples": samples,
            "examples": len(x_eval),
            "seconds": s,
            "examples_per_second": len(x_eval) / s,
            "times_floor": s / floor,
        }

    log(f"[{device}] equivalence checks")
    checks = {
        "loss_curve": loss_curve_check(train_config(20, [HIDDEN], "analytic"), x, 10, device),
        "iwae_chunked": iwae_chunk_check(model, x_eval[:100], min(iw_samples, 100), device),
    }
    return {"gemm": gemm, "training": training, "evaluation": evaluation, "checks": checks}


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def format_markdown(result: dict[str, Any]) -> str:
    """The report: per device a table of every measured item against the floor and the baseline, the
    GEMM rates, the checks; the floor's definition and the machine."""
    m, s = result["machine"], result["settings"]
    lines = [
        "# Benchmark",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, torch {m['torch']} with {m['torch_threads']} threads"
        + (f", GPU {m['cuda']}" if m["cuda"] else "")
        + f"). Data: {s['data']}, {s['examples']} training examples, {s['epochs']} epochs per loop "
        "(median of the epochs after the first).",
        "",
        "Floor: the model's matmul FLOPs (per training example: forward, weight gradients and input "
        "gradients but the data's; per evaluated example: the encoder once and the decoder once per sample "
        "of z) at the fp32 GEMM rate measured here for a layer-shaped (128x784)@(784x400) product. "
        "x floor = measured time / floor time (1 would be the GEMM rate); speed-up = baseline time / "
        "measured time. The training loops run in rounds of one epoch each, the GEMM rate probed in every "
        "round, and both ratios are taken within each round (median over the rounds after the first). "
        "Baseline: pytorch/examples' VAE loop (per-item Dataset, DataLoader batch 128 "
        "shuffled, BCE on sigmoid outputs, analytic KL, Adam 1e-3, loss.item() per step).",
    ]
    flops = result["train_flops_per_example"]
    lines += ["", "Training matmul FLOPs per example: " + ", ".join(f"{k} {v:,}" for k, v in flops.items())]
    for device, r in result["devices"].items():
        g = r["gemm"]
        lines += [
            "",
            f"## {device}",
            "",
            f"GEMM fp32: {g['layer_gflops']:.1f} GFLOP/s layer-shaped {'x'.join(map(str, g['layer_shape']))}"
            f" at the start; the floors' rates: {g['floor_gflops']:.1f} (median of the training rounds, "
            f"{min(g['layer_gflops_per_round']):.0f} to {max(g['layer_gflops_per_round']):.0f}) and "
            f"{g['eval_floor_gflops']:.1f} (before the evaluation); {g['square_gflops']:.1f} GFLOP/s "
            f"square {g['square_n']}.",
            "",
            _row(["measured", "seconds (median)", "examples/s", "x floor", "speed-up vs baseline"]),
            _row(["---", "---:", "---:", "---:", "---:"]),
        ]
        for key, t in r["training"].items():
            loop, name = key.split("_", 1)
            binarized = ", dynamic binarisation" if t["binarize"] else ""
            label = f"{loop} loop, {name} model (z={t['z_dim']}, kl={t['kl']}{binarized}), per epoch"
            lines.append(
                _row(
                    [
                        label,
                        f"{t['seconds_per_epoch']:.3f}",
                        f"{t['examples_per_second']:,.0f}",
                        f"{t['times_floor']:.1f}",
                        f"{t['speedup_vs_baseline']:.2f}",
                    ]
                )
            )
        for kind, e in r["evaluation"].items():
            what = "ELBO (one z)" if kind == "elbo" else f"IWAE, K={e['samples']}"
            lines.append(
                _row(
                    [
                        f"evaluation: {what}, {e['examples']} examples",
                        f"{e['seconds']:.3f}",
                        f"{e['examples_per_second']:,.0f}",
                        f"{e['times_floor']:.1f}",
                        "n/a",
                    ]
                )
            )
        lc, iw = r["checks"]["loss_curve"], r["checks"]["iwae_chunked"]
        lines += [
            "",
            f"- same loss curve as the baseline ({lc['steps']} Adam steps, same weights, batches and noise): "
            f"max relative difference {lc['max_loss_rel_diff']:.2e} in the loss, "
            f"{lc['max_grad_rel_diff']:.2e} in the first gradients (tolerance {lc['tolerance']:g}): "
            + ("passed" if lc["passed"] else "FAILED"),
            f"- IWAE chunked vs one pass (K={iw['iw_samples']}, {iw['examples']} examples, same seed): "
            f"max |difference| {iw['max_abs_diff_nats']:.2e} nats (tolerance {iw['tolerance']:g}): "
            + ("passed" if iw["passed"] else "FAILED"),
        ]
    return "\n".join(lines) + "\n"

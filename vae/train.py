"""The training loop: device, data, model, Adam, epochs, TensorBoard, metrics.json, checkpoints."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from vae.checkpoint import CHECKPOINT, save_checkpoint
from vae.config import TrainConfig, binarize_mode
from vae.data.batches import iterate_batches, num_batches
from vae.data.datasets import Splits, load_data
from vae.errors import ConfigError, TrainingError
from vae.evaluate import elbo_over, evaluate_and_record, flat_metrics
from vae.files import atomic_write, write_json
from vae.model import VAE, build_model
from vae.monitor import Monitor
from vae.objectives import kl_per_dim, kl_weight, objective_loss
from vae.optim import FusedAdam, fused_adam_supported

log = logging.getLogger(__name__)

# Final metrics shown in TensorBoard's HParams tab (read from the run's scalars of the same tags).
HPARAM_METRICS = ("test/elbo", "test/nll", "test/log_px", "test/kl", "test/active_units", "val/elbo")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name} is invalid: CUDA is not available here; use device=cpu or auto."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name} is invalid: only {torch.cuda.device_count()} CUDA device(s) are visible."
            )
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the CPU generator that orders the batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(model: VAE, cfg: TrainConfig) -> FusedAdam | torch.optim.Adam:
    """Adam. ``fused_adam``, where the fused kernel runs (vae.optim.fused_adam_supported), uses it through
    vae.optim.FusedAdam (about 4x faster steps on the CPU here than the multi-tensor path, and no
    torch._dynamo import at start-up); otherwise torch.optim.Adam's multi-tensor path. Both compute the
    same update up to float rounding, and their state_dicts are interchangeable."""
    params = list(model.parameters())
    if cfg.fused_adam and fused_adam_supported(params):
        return FusedAdam(params, lr=cfg.lr)
    return torch.optim.Adam(params, lr=cfg.lr)


def hparams_of(cfg: TrainConfig) -> dict[str, Any]:
    """The swept-over settings as flat scalars, the same keys in every run (for TensorBoard's HParams)."""
    return {
        "dataset": cfg.dataset.name,
        "likelihood": cfg.likelihood.name,
        "binarize": binarize_mode(cfg),
        "z_dim": cfg.z_dim,
        "hidden_dims": str(list(cfg.hidden_dims)),
        "activation": cfg.activation,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "n_samples": cfg.n_samples,
        "kl": cfg.kl,
        "objective": cfg.objective.name,
        "beta": cfg.objective.beta,
        "warmup": cfg.objective.warmup,
        "free_bits": cfg.objective.free_bits,
        "seed": cfg.seed,
    }


# The diagnostics' gradient norms are taken on every GRAD_NORM_EVERY-th step: their epoch mean is as
# informative from a sample, and on every step they cost ~8% of a small model's epoch on the CPU.
GRAD_NORM_EVERY = 8


def _grad_norm(params) -> torch.Tensor:
    """The L2 norm of the parameters' gradients, kept on the device."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def _train_epoch(
    model: VAE, opt: FusedAdam | torch.optim.Adam, data: Splits, cfg: TrainConfig, epoch: int, gen, bar
) -> dict[str, float]:
    """One pass over the training set. Per-example sums and per-step gradient norms stay on the device
    (no per-step host sync) and are read once, at the end."""
    obj = cfg.objective
    n_samples = obj.k if obj.name == "iwae" else cfg.n_samples
    steps = num_batches(len(data.train), cfg.batch_size)
    decoder_params = [*model.decoder.parameters(), *model.likelihood.parameters()]
    sums = torch.zeros(6, dtype=torch.float64, device=data.train.device)
    beta = obj.beta
    for step, x in enumerate(iterate_batches(data.train, cfg.batch_size, gen, binarize=data.binarize_train)):
        beta = kl_weight(
            epoch - 1 + step / steps,
            obj.beta,
            obj.warmup,
            obj.warmup_epochs,
            obj.warmup_start,
            obj.warmup_ratio,
        )
        log_px, z, mean, log_var = model(x, n_samples)
        kl_dims = kl_per_dim(z, mean, log_var, cfg.kl)
        loss = objective_loss(obj.name, log_px, z, mean, log_var, kl_dims, beta, obj.free_bits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.diagnose and step % GRAD_NORM_EVERY == 0:
            sums[4:] += torch.stack([_grad_norm(model.encoder.parameters()), _grad_norm(decoder_params)])
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            log_px_mean, kl = log_px.mean(0), kl_dims.sum(-1)
            per_example = torch.stack([(log_px_mean - kl).sum(), log_px_mean.sum(), kl.sum(), loss * len(x)])
            sums[:4] += per_example
        bar.update(1)
    values = sums.tolist()
    n = len(data.train)
    stats = {
        "train/elbo": values[0] / n,
        "train/log_px": values[1] / n,
        "train/kl": values[2] / n,
        "train/loss": values[3] / n,
        "train/kl_weight": beta,
    }
    if cfg.diagnose:
        sampled = num_batches(steps, GRAD_NORM_EVERY)
        stats |= {
            "diag/grad_norm_encoder": values[4] / sampled,
            "diag/grad_norm_decoder": values[5] / sampled,
        }
    return stats


def _diag_summary(m: dict[str, float], cfg: TrainConfig) -> str:
    """The epoch line's diagnostics: the KL weight when it is not 1, active units, I(x;z), decoder sigma."""
    parts = [f"kl weight {m['train/kl_weight']:.3g}"] if m["train/kl_weight"] != 1 else []
    if "diag/active_units" in m:
        parts.append(f"active {int(m['diag/active_units'])}/{cfg.z_dim}, I(x;z) {m['diag/mi']:.2f}")
    if "diag/decoder_std_median" in m:
        parts.append(f"sigma min {m['diag/decoder_std_min']:.2g} median {m['diag/decoder_std_median']:.2g}")
    return "  " + ", ".join(parts) if parts else ""


def train(cfg: TrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train, evaluate on the test set and write everything into ``out_dir``; return the metrics."""
    from tqdm.auto import tqdm

    from vae.tracking import Tracker

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    data = load_data(cfg.dataset, binarize_mode(cfg)).to(device)
    model = build_model(cfg, data.x_dim).to(device)
    opt = make_optimizer(model, cfg)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
    with atomic_write(out_dir / "config.yaml", "w") as f:  # the resolved config, beside the results
        f.write(OmegaConf.to_yaml(config_dict))
    log.info(
        "%s: %d train / %d val / %d test examples of dim %d on %s; binarize=%s; %d parameters",
        cfg.dataset.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.x_dim,
        device,
        binarize_mode(cfg),
        sum(p.numel() for p in model.parameters()),
    )

    tracker = Tracker(out_dir)
    steps_per_epoch = num_batches(len(data.train), cfg.batch_size)
    show = cfg.progress and sys.stderr.isatty()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, disable=not show, unit="step", dynamic_ncols=True)
    metrics: dict[str, Any] = {}
    train_seconds = 0.0
    monitor = Monitor(data.val, cfg.likelihood.name, cfg.seed) if cfg.diagnose else None
    if monitor:
        monitor.check_data(data.train, data.binarize_train)
    try:
        for epoch in range(1, cfg.epochs + 1):
            bar.set_description(f"epoch {epoch}/{cfg.epochs}")
            start = time.perf_counter()
            epoch_metrics = _train_epoch(model, opt, data, cfg, epoch, gen, bar)
            train_seconds += time.perf_counter() - start
            bad = [k for k in ("train/log_px", "train/kl") if not math.isfinite(epoch_metrics[k])]
            if bad:
                raise TrainingError(
                    f"non-finite loss in epoch {epoch}: "
                    + " and ".join(f"{k.split('/')[1]} became {epoch_metrics[k]}" for k in bad)
                    + (
                        f". The last good checkpoint is {out_dir / CHECKPOINT}"
                        if (out_dir / CHECKPOINT).is_file()
                        else ". No epoch finished, so no checkpoint was written"
                    )
                    + f". Try a smaller lr (now {cfg.lr})"
                    + (" or gradient clipping (grad_clip=10)." if cfg.grad_clip == 0 else ".")
                )
            val_stats = elbo_over(model, data.val, cfg.eval.batch_size, cfg.n_samples, cfg.kl)
            epoch_metrics |= {f"val/{k}": v for k, v in val_stats.items()}
            if monitor:
                warming_up = epoch_metrics["train/kl_weight"] < cfg.objective.beta
                epoch_metrics |= monitor.epoch(epoch, model, epoch_metrics["train/log_px"], warming_up)
            tracker.scalars(epoch_metrics, epoch)
            metrics |= {k: v for k, v in epoch_metrics.items() if not k.startswith("diag/")}
            log.info(
                "epoch %d/%d  train elbo %.3f (log p(x|z) %.3f, kl %.3f)  val elbo %.3f%s  [%.1fs]",
                epoch,
                cfg.epochs,
                epoch_metrics["train/elbo"],
                epoch_metrics["train/log_px"],
                epoch_metrics["train/kl"],
                val_stats["elbo"],
                _diag_summary(epoch_metrics, cfg),
                time.perf_counter() - start,
            )
            bar.set_postfix(
                train_elbo=f"{epoch_metrics['train/elbo']:.2f}", val_elbo=f"{val_stats['elbo']:.2f}"
            )
            save_checkpoint(
                out_dir / CHECKPOINT,
                model=model.state_dict(),
                optimizer=opt.state_dict(),
                epoch=epoch,
                config=config_dict,
                x_dim=data.x_dim,
            )
        bar.close()

        if monitor:
            metrics |= monitor.summary()
        metrics |= {
            "epochs": cfg.epochs,
            "train_seconds": train_seconds,
            "examples_per_second": cfg.epochs * len(data.train) / train_seconds,
        }
        write_json(out_dir / "metrics.json", metrics)
        log.info("trained in %.1f s (%.0f examples/s)", train_seconds, metrics["examples_per_second"])
        state = {
            "checkpoint": str(out_dir / CHECKPOINT),
            "epoch": cfg.epochs,
            "binarize": binarize_mode(cfg),
            "seed": cfg.seed,
        }
        record = evaluate_and_record(model, data.test, cfg.eval, "test", state, out_dir, tracker, cfg.epochs)
        metrics |= flat_metrics(record)
        tracker.hparams(hparams_of(cfg), {k: metrics[k] for k in HPARAM_METRICS})
        if cfg.plot.enabled:
            from vae.plots import kl_history_figure, make_figures

            make_figures(model, data, cfg.plot, out_dir / "figures", tracker, cfg.epochs, cfg.seed)
            tracker.writer.flush()
            kl_history_figure(out_dir, tracker, cfg.epochs)
        log.info("results in %s", out_dir)
    finally:
        bar.close()
        tracker.close()
    return metrics

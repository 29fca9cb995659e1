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
        "seed": cfg.seed,
    }


def _train_epoch(
    model: VAE, opt: torch.optim.Optimizer, data: Splits, cfg: TrainConfig, gen, bar
) -> torch.Tensor:
    """One pass over the training set; the summed (elbo, log_px, kl) stay on the device (no per-step sync)."""
    sums = torch.zeros(3, dtype=torch.float64, device=data.train.device)
    for x in iterate_batches(data.train, cfg.batch_size, gen, binarize=data.binarize_train):
        terms = model.elbo(x, cfg.n_samples, cfg.kl)
        loss = -terms.elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums += torch.stack([t.detach().double().sum() for t in terms])
        bar.update(1)
    return sums


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
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
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
    try:
        for epoch in range(1, cfg.epochs + 1):
            bar.set_description(f"epoch {epoch}/{cfg.epochs}")
            start = time.perf_counter()
            sums = _train_epoch(model, opt, data, cfg, gen, bar)
            train_stats = dict(zip(("elbo", "log_px", "kl"), (sums / len(data.train)).tolist(), strict=True))
            train_seconds += time.perf_counter() - start
            bad = [k for k in ("log_px", "kl") if not math.isfinite(train_stats[k])]
            if bad:
                raise TrainingError(
                    f"non-finite loss in epoch {epoch}: {' and '.join(bad)} became "
                    f"{', '.join(str(train_stats[k]) for k in bad)}. The last good checkpoint "
                    f"is {out_dir / CHECKPOINT}. Try a smaller lr (now {cfg.lr})."
                )
            val_stats = elbo_over(model, data.val, cfg.eval.batch_size, cfg.n_samples, cfg.kl)
            epoch_metrics = {f"train/{k}": v for k, v in train_stats.items()}
            epoch_metrics |= {f"val/{k}": v for k, v in val_stats.items()}
            tracker.scalars(epoch_metrics, epoch)
            metrics |= epoch_metrics
            log.info(
                "epoch %d/%d  train elbo %.3f (log p(x|z) %.3f, kl %.3f)  val elbo %.3f  [%.1fs]",
                epoch,
                cfg.epochs,
                train_stats["elbo"],
                train_stats["log_px"],
                train_stats["kl"],
                val_stats["elbo"],
                time.perf_counter() - start,
            )
            bar.set_postfix(train_elbo=f"{train_stats['elbo']:.2f}", val_elbo=f"{val_stats['elbo']:.2f}")
            save_checkpoint(
                out_dir / CHECKPOINT,
                model=model.state_dict(),
                optimizer=opt.state_dict(),
                epoch=epoch,
                config=config_dict,
                x_dim=data.x_dim,
            )
        bar.close()

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
            from vae.plots import make_figures

            make_figures(model, data, cfg.plot, out_dir / "figures", tracker, cfg.epochs, cfg.seed)
        log.info("results in %s", out_dir)
    finally:
        bar.close()
        tracker.close()
    return metrics

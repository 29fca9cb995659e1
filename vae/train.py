"""The training loop: device, data, model, Adam, epochs, TensorBoard, metrics.json, checkpoints."""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from omegaconf import OmegaConf

from vae import distributed
from vae.checkpoint import BEST, LAST, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from vae.config import TrainConfig, binarize_mode
from vae.data.batches import iterate_batches, num_batches
from vae.data.datasets import Splits, load_data
from vae.distributed import SINGLE, Ranks
from vae.errors import ConfigError, Interrupted, TrainingError
from vae.evaluate import elbo_over, evaluate_and_record, flat_metrics
from vae.files import atomic_write, write_json
from vae.interrupt import GracefulStop
from vae.model import VAE, build_model
from vae.monitor import Monitor
from vae.objectives import kl_per_dim, kl_weight, objective_loss
from vae.optim import FusedAdam, fused_adam_supported
from vae.resume import RESUMABLE_KEYS, config_differences
from vae.status import write_status

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


class EpochProgress(NamedTuple):
    """Where an interrupted epoch stopped: the steps done and the device-side sums so far."""

    step: int
    sums: torch.Tensor


def _train_epoch(
    model: VAE,
    opt: FusedAdam | torch.optim.Adam,
    data: Splits,
    cfg: TrainConfig,
    epoch: int,
    gen: torch.Generator,
    bar,
    progress: EpochProgress | None = None,
    stop: GracefulStop | None = None,
    net: torch.nn.Module | None = None,
    ranks: Ranks = SINGLE,
) -> dict[str, float] | EpochProgress:
    """One pass over the training set, from ``progress`` when resuming an interrupted one. Per-example sums
    and sampled gradient norms stay on the device (no per-step host sync) and are read once, at the end.
    When ``stop`` is requested before the last step, return the EpochProgress to checkpoint instead.

    Data-parallel (``ranks.active``): ``net`` is the DistributedDataParallel wrapper of ``model``, each rank
    takes its share of every batch, and the sums are added over the ranks at the end.
    """
    obj = cfg.objective
    n_samples = obj.k if obj.name == "iwae" else cfg.n_samples
    steps = num_batches(len(data.train), cfg.batch_size)
    decoder_params = [*model.decoder.parameters(), *model.likelihood.parameters()]
    first = progress.step if progress else 0
    device = data.train.device
    sums = progress.sums.clone() if progress else torch.zeros(6, dtype=torch.float64, device=device)
    beta = obj.beta
    shard = (ranks.rank, ranks.world) if ranks.active else None
    batches = iterate_batches(
        data.train, cfg.batch_size, gen, binarize=data.binarize_train, first=first, shard=shard
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")
    for step, x in enumerate(batches, start=first):
        beta = kl_weight(
            epoch - 1 + step / steps,
            obj.beta,
            obj.warmup,
            obj.warmup_epochs,
            obj.warmup_start,
            obj.warmup_ratio,
        )
        with autocast:
            log_px, z, mean, log_var = (net or model)(x, n_samples)
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
        stopping = stop is not None and stop.requested
        if step + 1 < steps and (distributed.any_rank(stopping, ranks, device) if ranks.active else stopping):
            return EpochProgress(step + 1, sums)
    distributed.all_sum(sums[:4], ranks)
    values = sums.tolist()
    last = len(data.train) - (steps - 1) * cfg.batch_size  # iterate_batches skips it if too small to share
    n = len(data.train) - (last if ranks.active and last < ranks.world else 0)
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


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files of writes a SIGKILL cut short (atomic_write removes its own on any other error)."""
    for tmp in out_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate on the test set and write everything into ``out_dir``; return the metrics.

    With ``resume``, continue from ``out_dir``'s last.pt when it has one (the same config but for
    RESUMABLE_KEYS): model, optimizer, generators, position and metrics are restored, so the run ends
    exactly as an uninterrupted one would. SIGTERM or SIGINT stops after the current step with a checkpoint
    and raises Interrupted.
    """
    from tqdm.auto import tqdm

    from vae.tracking import Tracker

    ranks, device = distributed.setup(resolve_device(cfg.device), cfg.batch_size)
    out_dir = Path(distributed.from_main(str(out_dir), ranks))  # rank 0's run directory on every rank
    if ranks.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out_dir)
    else:  # only rank 0 logs, writes and shows progress
        logging.getLogger().setLevel(logging.WARNING)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    gen = seed_everything(cfg.seed)
    data = load_data(cfg.dataset, binarize_mode(cfg)).to(device)
    model = build_model(cfg, data.x_dim).to(device)
    opt = make_optimizer(model, cfg)
    net = None
    if ranks.active:
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(cfg.seed + ranks.rank)  # the same weights everywhere, each rank its own noise
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
    monitor = Monitor(data.val, cfg.likelihood.name, cfg.seed) if cfg.diagnose and ranks.main else None
    steps_per_epoch = num_batches(len(data.train), cfg.batch_size)

    done, progress, metrics, train_seconds = 0, None, {}, 0.0
    best = {"val/elbo": -math.inf, "epoch": 0}
    last_scalars: dict[str, float] = {}
    saved = (
        load_checkpoint(out_dir / LAST, map_location=device)
        if resume and (out_dir / LAST).is_file()
        else None
    )
    if saved is not None:
        differences = config_differences(saved["config"], config_dict)
        if differences:
            raise ConfigError(
                f"cannot resume {out_dir}: its checkpoint was trained with another config ("
                + "; ".join(differences)
                + "). Only "
                + ", ".join(RESUMABLE_KEYS[:-2])
                + " may change on resume; start a new run for the others."
            )
        if saved["epoch"] > cfg.epochs:
            raise ConfigError(
                f"cannot resume {out_dir} with epochs={cfg.epochs}: it has already trained {saved['epoch']} "
                "epochs; give epochs >= that."
            )
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if monitor and saved["monitor"] is not None:
            monitor.load_state_dict(saved["monitor"])
        done, metrics, train_seconds = saved["epoch"], saved["metrics"], saved["train_seconds"]
        best, last_scalars = saved["best"], saved["last_scalars"]
        if saved["progress"] is not None:
            progress = EpochProgress(saved["progress"]["step"], saved["progress"]["sums"].to(device))
        per_rank = saved.get("rng_ranks") or [saved["rng"]]
        if len(per_rank) != ranks.world:
            raise ConfigError(
                f"cannot resume {out_dir} with {ranks.world} process(es): it was trained with "
                f"{len(per_rank)}; start it again with that many (torchrun --nproc_per_node={len(per_rank)})."
            )
        restore_rng_states(per_rank[ranks.rank], gen)
        log.info("resuming %s from epoch %d%s", out_dir, done, f", step {progress.step}" if progress else "")
    elif monitor:
        monitor.check_data(data.train, data.binarize_train)
    if ranks.main:
        with atomic_write(out_dir / "config.yaml", "w") as f:  # the resolved config, beside the results
            f.write(OmegaConf.to_yaml(config_dict))
        write_status(out_dir, "running", epoch=done)
    log.info(
        "%s: %d train / %d val / %d test examples of dim %d on %s%s; binarize=%s; %d parameters",
        cfg.dataset.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.x_dim,
        device,
        f" x {ranks.world} processes" if ranks.active else "",
        binarize_mode(cfg),
        sum(p.numel() for p in model.parameters()),
    )

    # Resuming from epoch E: TensorBoard hides every event of step >= E the interrupted run wrote (its
    # epoch E+1... and a cut-short evaluation), and epoch E's scalars are written again, so no step is
    # missing or doubled.
    tracker = Tracker(
        out_dir, purge_step=done if saved is not None and done > 0 else None, enabled=ranks.main
    )
    if last_scalars:
        tracker.scalars(last_scalars, done)
    show = cfg.progress and sys.stderr.isatty() and ranks.main
    initial = done * steps_per_epoch + (progress.step if progress else 0)
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch, initial=initial, disable=not show, unit="step", dynamic_ncols=True
    )

    def checkpoint(epoch: int, position: EpochProgress | None, data_state: torch.Tensor) -> None:
        rng = distributed.gather(rng_states(gen) | {"data": data_state}, ranks)  # every rank's noise
        if not ranks.main:
            return
        tracker.flush()  # the events up to this checkpoint are on disk before it is
        save_checkpoint(
            out_dir / LAST,
            model=model.state_dict(),
            optimizer=opt.state_dict(),
            epoch=epoch,
            step=epoch * steps_per_epoch + (position.step if position else 0),
            progress={"step": position.step, "sums": position.sums.cpu()} if position else None,
            rng=rng[0],
            rng_ranks=rng if ranks.active else None,
            monitor=monitor.state_dict() if monitor else None,
            metrics=metrics,
            last_scalars=last_scalars,
            best=best,
            train_seconds=train_seconds,
            config=config_dict,
            x_dim=data.x_dim,
        )

    try:
        with GracefulStop() as stop:
            for epoch in range(done + 1, cfg.epochs + 1):
                bar.set_description(f"epoch {epoch}/{cfg.epochs}")
                data_state = gen.get_state()  # the epoch's permutation is drawn from this state
                start = time.perf_counter()
                result = _train_epoch(model, opt, data, cfg, epoch, gen, bar, progress, stop, net, ranks)
                train_seconds += time.perf_counter() - start
                progress = None
                if isinstance(result, EpochProgress):
                    checkpoint(epoch - 1, result, data_state)
                    raise _interrupted(stop, out_dir, epoch, result.step, steps_per_epoch, ranks)
                epoch_metrics = result
                _check_finite(epoch_metrics, epoch, out_dir, cfg)
                val_stats = elbo_over(model, data.val, cfg.eval.batch_size, cfg.n_samples, cfg.kl)
                epoch_metrics |= {f"val/{k}": v for k, v in val_stats.items()}
                if monitor:
                    warming_up = epoch_metrics["train/kl_weight"] < cfg.objective.beta
                    epoch_metrics |= monitor.epoch(epoch, model, epoch_metrics["train/log_px"], warming_up)
                tracker.scalars(epoch_metrics, epoch)
                last_scalars = epoch_metrics
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
                stopping = distributed.any_rank(stop.requested, ranks, device)
                if cfg.checkpoint.keep_best and val_stats["elbo"] > best["val/elbo"] and ranks.main:
                    best = {"val/elbo": val_stats["elbo"], "epoch": epoch}
                    save_checkpoint(
                        out_dir / BEST,
                        model=model.state_dict(),
                        epoch=epoch,
                        val_elbo=val_stats["elbo"],
                        config=config_dict,
                        x_dim=data.x_dim,
                    )
                if epoch % cfg.checkpoint.every == 0 or epoch == cfg.epochs or stopping:
                    checkpoint(epoch, None, gen.get_state())
                if stopping and epoch < cfg.epochs:
                    raise _interrupted(stop, out_dir, epoch + 1, 0, steps_per_epoch, ranks)
        bar.close()
        distributed.teardown(ranks)
        if not ranks.main:  # the test evaluation, figures and files are rank 0's
            return metrics

        if monitor:
            metrics |= monitor.summary()
        metrics |= {
            "epochs": cfg.epochs,
            "train_seconds": train_seconds,
            "examples_per_second": (cfg.epochs * len(data.train) / train_seconds) if train_seconds else 0.0,
        }
        if cfg.checkpoint.keep_best:
            metrics |= {"best/val_elbo": best["val/elbo"], "best/epoch": best["epoch"]}
        write_json(out_dir / "metrics.json", metrics)
        log.info("trained in %.1f s (%.0f examples/s)", train_seconds, metrics["examples_per_second"])
        state = {
            "checkpoint": str(out_dir / LAST),
            "epoch": cfg.epochs,
            "binarize": binarize_mode(cfg),
            "seed": cfg.seed,
        }
        record = evaluate_and_record(model, data.test, cfg.eval, "test", state, out_dir, tracker, cfg.epochs)
        metrics |= flat_metrics(record)
        tracker.hparams(hparams_of(cfg), {k: metrics[k] for k in HPARAM_METRICS}, cfg.epochs)
        if cfg.plot.enabled:
            from vae.plots import kl_history_figure, make_figures

            make_figures(model, data, cfg.plot, out_dir / "figures", tracker, cfg.epochs, cfg.seed)
            tracker.flush()
            kl_history_figure(out_dir, tracker, cfg.epochs)
        write_status(out_dir, "finished", epoch=cfg.epochs)
        log.info("results in %s", out_dir)
    finally:
        bar.close()
        tracker.close()
    return metrics


def _check_finite(epoch_metrics: dict[str, float], epoch: int, out_dir: Path, cfg: TrainConfig) -> None:
    """A non-finite loss ends training with the epoch, the term and the last good checkpoint named."""
    bad = [k for k in ("train/log_px", "train/kl") if not math.isfinite(epoch_metrics[k])]
    if bad:
        raise TrainingError(
            f"non-finite loss in epoch {epoch}: "
            + " and ".join(f"{k.split('/')[1]} became {epoch_metrics[k]}" for k in bad)
            + (
                f". The last good checkpoint is {out_dir / LAST}"
                if (out_dir / LAST).is_file()
                else ". No checkpoint was written before it"
            )
            + f". Try a smaller lr (now {cfg.lr})"
            + (" or gradient clipping (grad_clip=10)." if cfg.grad_clip == 0 else ".")
        )


def _interrupted(
    stop: GracefulStop, out_dir: Path, epoch: int, step: int, steps: int, ranks: Ranks
) -> Interrupted:
    """The error that ends an interrupted run: where it stopped and the command that resumes it."""
    where = f"epoch {epoch}, step {step} of {steps}" if step else f"the start of epoch {epoch}"
    if ranks.main:
        write_status(out_dir, "interrupted", signal=stop.name, epoch=epoch, step=step)
    return Interrupted(
        f"{stop.name or 'a signal to another rank'}: stopped at {where}; "
        f"checkpoint written to {out_dir / LAST}. "
        f"Resume with: python scripts/train.py resume={out_dir}",
        128 + int(stop.signum or signal.SIGTERM),
    )

"""Scores of a trained model over whole data splits (never one batch), and the files they go to."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vae.config import EvalConfig
from vae.diagnostics import active_units, kl_per_dim, mutual_information, posterior_mean_variance
from vae.files import write_json
from vae.model import VAE, eval_mode
from vae.objectives import log_importance_weights

if TYPE_CHECKING:
    from vae.tracking import Tracker

log = logging.getLogger(__name__)

SCALARS = ("elbo", "log_px", "kl", "nll", "active_units", "mi")


@torch.no_grad()
def elbo_over(
    model: VAE, x: torch.Tensor, batch_size: int, n_samples: int = 1, kl: str = "mc"
) -> dict[str, float]:
    """The ELBO and its parts, with sampled z, averaged over every example of x (N, D): nats per example."""
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            terms = model.elbo(x[start : start + batch_size], n_samples, kl)
            sums += torch.stack([t.double().sum() for t in terms])
    elbo, log_px, kl_value = (sums / x.shape[0]).tolist()
    return {"elbo": elbo, "log_px": log_px, "kl": kl_value}


def _importance_weighted(
    model: VAE,
    x: torch.Tensor,
    iw_samples: int,
    batch_size: int,
    max_rows: int,
    generator: torch.Generator | None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Per batch of x: mean, log_var (B, Z) and, over K = iw_samples draws z_k ~ q(z|x), the
    log-mean-exp of log w_k (B,) and the means of log w_k and log p(x|z_k) (B,), in float64.

    The draws go through the decoder in chunks of at most max_rows (examples x samples) rows, so memory
    is bounded whatever K and N; the log-mean-exp of the chunks is exact.
    """
    log_k = math.log(iw_samples)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        mean, log_var = model.encoder(xb)
        k_chunk = max(1, max_rows // xb.shape[0])
        lse_parts = []
        sum_log_w = torch.zeros(xb.shape[0], dtype=torch.float64, device=x.device)
        sum_log_px = torch.zeros_like(sum_log_w)
        for k0 in range(0, iw_samples, k_chunk):
            z = model.sample_posterior(mean, log_var, min(k_chunk, iw_samples - k0), generator)
            log_px = model.log_px(xb, z)
            log_w = log_importance_weights(log_px, z, mean, log_var).double()
            lse_parts.append(torch.logsumexp(log_w, dim=0))
            sum_log_w += log_w.sum(0)
            sum_log_px += log_px.double().sum(0)
        log_lik = torch.logsumexp(torch.stack(lse_parts), dim=0) - log_k
        yield mean, log_var, log_lik, sum_log_w / iw_samples, sum_log_px / iw_samples


@torch.no_grad()
def log_likelihood(
    model: VAE,
    x: torch.Tensor,
    iw_samples: int,
    batch_size: int = 1000,
    max_rows: int = 4096,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The importance-weighted estimate of log p(x) for every example of x (N, D): (N,) float64."""
    with eval_mode(model):
        parts = _importance_weighted(model, x, iw_samples, batch_size, max_rows, generator)
        return torch.cat([log_lik for _, _, log_lik, _, _ in parts])


@torch.no_grad()
def evaluate(
    model: VAE,
    x: torch.Tensor,
    iw_samples: int,
    batch_size: int = 1000,
    max_rows: int = 4096,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Every score of x (N, D), in nats per example, from K = iw_samples draws z_k ~ q(z|x) per example.

    elbo, log_px and kl are Monte-Carlo averages over the same K draws whose log-mean-exp gives the
    importance-weighted log-likelihood, so nll <= -elbo holds on every run (Jensen).
    """
    with eval_mode(model):
        means, log_vars, sums = [], [], torch.zeros(3, dtype=torch.float64, device=x.device)
        for mean, log_var, log_lik, log_w, log_px in _importance_weighted(
            model, x, iw_samples, batch_size, max_rows, generator
        ):
            means.append(mean)
            log_vars.append(log_var)
            sums += torch.stack([log_w.sum(), log_px.sum(), log_lik.sum()])
        elbo, log_px, log_lik = (sums / x.shape[0]).tolist()
        mean, log_var = torch.cat(means), torch.cat(log_vars)
        z = model.sample_posterior(mean, log_var, 1, generator)[0]
    return {
        "elbo": elbo,
        "log_px": log_px,
        "kl": log_px - elbo,
        "nll": -log_lik,
        "active_units": active_units(mean),
        "mi": mutual_information(z, mean, log_var),
        "kl_per_dim": kl_per_dim(mean, log_var).tolist(),
        "posterior_mean_variance": posterior_mean_variance(mean).tolist(),
    }


def evaluate_split(
    model: VAE, x: torch.Tensor, eval_cfg: EvalConfig, split: str, state: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate one split; the record also holds what the numbers depend on (``state``: checkpoint,
    epoch, binarisation, training seed)."""
    gen = torch.Generator(device=x.device).manual_seed(eval_cfg.seed)
    start = time.perf_counter()
    scores = evaluate(model, x, eval_cfg.iw_samples, eval_cfg.batch_size, eval_cfg.max_rows, gen)
    return {
        "split": split,
        "scores": scores,
        "iw_samples": eval_cfg.iw_samples,
        "n_examples": int(x.shape[0]),
        "eval_seed": eval_cfg.seed,
        "eval_seconds": time.perf_counter() - start,
        **state,
    }


def evaluate_and_record(
    model: VAE,
    x: torch.Tensor,
    eval_cfg: EvalConfig,
    split: str,
    state: dict[str, Any],
    run_dir: str | Path,
    tracker: Tracker,
    step: int,
) -> dict[str, Any]:
    """Evaluate one split, print the table, and write the results to eval.json, metrics.json and
    TensorBoard (at ``step``, the checkpoint's epoch); return the record."""
    record = evaluate_split(model, x, eval_cfg, split, state)
    log.info("%s", format_table(record))
    write_results(run_dir, record)
    kl_dims = {f"{split}/kl_per_dim/{u}": v for u, v in enumerate(record["scores"]["kl_per_dim"])}
    tracker.scalars(flat_metrics(record) | kl_dims, step)
    return record


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The record's scalar scores as ``<split>/<name>`` (the keys of metrics.json and TensorBoard)."""
    split = record["split"]
    metrics = {f"{split}/{k}": record["scores"][k] for k in SCALARS}
    metrics[f"{split}/eval_seconds"] = record["eval_seconds"]
    return metrics


def write_results(run_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Merge the record into eval.json (one entry per split) and its scalars into metrics.json."""
    run_dir = Path(run_dir)
    results = _read_json(run_dir / "eval.json")
    results[record["split"]] = record
    write_json(run_dir / "eval.json", results)
    metrics = _read_json(run_dir / "metrics.json") | flat_metrics(record)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def format_table(record: dict[str, Any]) -> str:
    """A short console table of one evaluation."""
    s = record["scores"]
    z_dim = len(s["kl_per_dim"])
    rows = [
        ("ELBO (sampled z)", f"{s['elbo']:.3f} nats"),
        ("  log p(x|z)", f"{s['log_px']:.3f}"),
        ("  KL(q(z|x) || p(z))", f"{s['kl']:.3f}"),
        (f"NLL (IWAE, K={record['iw_samples']})", f"{s['nll']:.3f} nats"),
        ("active units", f"{s['active_units']} of {z_dim}"),
        ("mutual information I(x;z)", f"{s['mi']:.3f} nats"),
        ("KL per dimension", " ".join(f"{v:.2f}" for v in s["kl_per_dim"])),
        (
            "examples / binarize / seed",
            f"{record['n_examples']} / {record['binarize']} / {record['eval_seed']}",
        ),
        ("checkpoint", f"{record['checkpoint']} (epoch {record['epoch']})"),
        ("time", f"{record['eval_seconds']:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"{record['split']} set:"] + [f"  {name:<{width}}  {value}" for name, value in rows])

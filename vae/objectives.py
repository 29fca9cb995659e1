"""Training objectives as pure functions of sampled latents and their log-densities."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from vae.distributions import (
    kl_normal_std_normal,
    log_ratio_normal_std_normal,
    normal_log_prob,
    std_normal_log_prob,
)


class ElboTerms(NamedTuple):
    """Per-example terms, each of shape (B,), in nats: elbo = log_px - kl."""

    elbo: torch.Tensor
    log_px: torch.Tensor
    kl: torch.Tensor


def kl_per_dim(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, kl: str = "mc") -> torch.Tensor:
    """Each example's KL(q(z|x) || N(0, I)) per latent dimension, (B, Z).

    z: (L, B, Z) draws from q = N(mean, diag exp(log_var)), mean and log_var (B, Z). kl="mc" is the seed's
    form, log q(z_l|x) - log p(z_l) averaged over the draws (it works for any prior and posterior);
    kl="analytic" is the closed form for a Gaussian posterior and the N(0, I) prior.
    """
    if kl == "mc":
        return log_ratio_normal_std_normal(z, mean, log_var).mean(0)
    if kl == "analytic":
        return kl_normal_std_normal(mean, log_var)
    raise ValueError(f"kl must be 'mc' or 'analytic', got {kl!r}")


def elbo_terms(
    log_px: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, kl: str = "mc"
) -> ElboTerms:
    """The ELBO averaged over L samples z_l ~ q(z|x): log_px (L, B), z (L, B, Z), mean, log_var (B, Z)."""
    kl_value = kl_per_dim(z, mean, log_var, kl).sum(-1)
    log_px = log_px.mean(0)
    return ElboTerms(log_px - kl_value, log_px, kl_value)


def log_importance_weights(
    log_px: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x): log_px (K, B), z (K, B, Z) -> (K, B)."""
    return log_px + std_normal_log_prob(z) - normal_log_prob(z, mean, log_var)


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound log (1/K) sum_k w_k for log_w (K, B): (B,).

    It is >= the ELBO (the mean of log_w), grows with K and tends to log p(x) (Burda et al. 2016).
    """
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def elbo_loss(
    log_px: torch.Tensor, kl_dims: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0
) -> torch.Tensor:
    """The loss -E[log p(x|z)] + beta * sum_u max(free_bits, KL_u), a scalar.

    log_px (L, B); kl_dims (B, Z). KL_u is the batch mean of dimension u's KL: free bits (Kingma et al. 2016)
    stop the optimiser from pushing a dimension's KL below ``free_bits`` nats, so it cannot switch off
    early. beta = 1 and free_bits = 0 give exactly the negative ELBO.
    """
    kl_u = kl_dims.mean(0)
    if free_bits > 0:
        kl_u = torch.clamp(kl_u, min=free_bits)
    return -log_px.mean() + beta * kl_u.sum()


def iwae_loss(log_w: torch.Tensor) -> torch.Tensor:
    """The negative importance-weighted bound averaged over the batch, for log_w (K, B)."""
    return -iwae_bound(log_w).mean()


def objective_loss(
    name: str,
    log_px: torch.Tensor,
    z: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    kl_dims: torch.Tensor,
    beta: float = 1.0,
    free_bits: float = 0.0,
) -> torch.Tensor:
    """The scalar loss of objective ``name`` ("elbo" or "iwae") from one batch's draws (see VAE.forward)."""
    if name == "iwae":
        return iwae_loss(log_importance_weights(log_px, z, mean, log_var))
    return elbo_loss(log_px, kl_dims, beta, free_bits)


def kl_weight(
    epochs_done: float,
    beta: float = 1.0,
    warmup: str = "none",
    warmup_epochs: float = 10.0,
    warmup_start: float = 0.0,
    warmup_ratio: float = 0.5,
) -> float:
    """The KL weight after ``epochs_done`` (fractional) epochs: beta times the warm-up factor.

    linear: from warmup_start to 1 over warmup_epochs, then 1 (Bowman et al. 2016; Sønderby et al. 2016).
    cyclical: periods of warmup_epochs, each rising from warmup_start to 1 over its first warmup_ratio
    and then staying at 1 (Fu et al. 2019).
    """
    if warmup == "none":
        return beta
    if warmup == "linear":
        rise = epochs_done / warmup_epochs
    elif warmup == "cyclical":
        rise = (epochs_done % warmup_epochs) / (warmup_epochs * warmup_ratio)
    else:
        raise ValueError(f"warmup must be none, linear or cyclical, got {warmup!r}")
    return beta * (warmup_start + (1.0 - warmup_start) * min(1.0, rise))

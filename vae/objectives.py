"""Training objectives as pure functions of sampled latents and their log-densities."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from vae.distributions import kl_normal_std_normal, normal_log_prob, std_normal_log_prob


class ElboTerms(NamedTuple):
    """Per-example terms, each of shape (B,), in nats: elbo = log_px - kl."""

    elbo: torch.Tensor
    log_px: torch.Tensor
    kl: torch.Tensor


def elbo_terms(
    log_px: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, kl: str = "mc"
) -> ElboTerms:
    """The ELBO averaged over L samples z_l ~ q(z|x) = N(mean, diag exp(log_var)).

    log_px: (L, B) log p(x|z_l); z: (L, B, Z); mean, log_var: (B, Z).
    kl="mc" is the seed's form, log q(z_l|x) - log p(z_l) averaged over the samples (works for any prior
    and posterior); kl="analytic" is the closed form for a Gaussian posterior and N(0, I) prior.
    """
    if kl == "mc":
        kl_value = (log_px - log_importance_weights(log_px, z, mean, log_var)).mean(0)
    elif kl == "analytic":
        kl_value = kl_normal_std_normal(mean, log_var).sum(-1)
    else:
        raise ValueError(f"kl must be 'mc' or 'analytic', got {kl!r}")
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

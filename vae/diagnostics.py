"""Latent-space diagnostics as pure functions of the encoder's outputs over a data set."""

from __future__ import annotations

import math

import torch

from vae.distributions import kl_normal_std_normal, normal_log_prob, std_normal_log_prob


def kl_per_dim(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z_u|x) || N(0, 1)) averaged over the data, per latent dimension: (N, Z) -> (Z,)."""
    return kl_normal_std_normal(mean, log_var).mean(0)


def posterior_mean_variance(mean: torch.Tensor) -> torch.Tensor:
    """Var_x(E_q[z_u|x]) per dimension, (N, Z) -> (Z,); a unit is active when this exceeds 0.01."""
    return mean.var(0, unbiased=True) if mean.shape[0] > 1 else torch.zeros_like(mean[0])


def active_units(mean: torch.Tensor, threshold: float = 0.01) -> int:
    """How many latent dimensions are active (Burda et al. 2016): Var_x(E_q[z_u|x]) > threshold."""
    return int((posterior_mean_variance(mean) > threshold).sum())


def log_aggregate_posterior(
    z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, max_elements: int = 1 << 22
) -> torch.Tensor:
    """log q(z) for the aggregate posterior q(z) = (1/N) sum_j N(z; mean_j, diag exp(log_var_j)).

    z: (M, Z) points; mean, log_var: (N, Z). Returns (M,). Chunks keep memory near max_elements floats.
    """
    n = mean.shape[0]
    chunk = max(1, max_elements // (n * z.shape[1]))
    parts = [
        torch.logsumexp(normal_log_prob(z[i : i + chunk, None], mean[None], log_var[None]), dim=1)
        for i in range(0, z.shape[0], chunk)
    ]
    return torch.cat(parts) - math.log(n)


def mutual_information(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> float:
    """I(x; z) under q, with the aggregate posterior over the data set (Hoffman and Johnson 2016).

    z: (N, Z), one draw z_i ~ q(z|x_i); mean, log_var: (N, Z). Estimates E_i[log q(z_i|x_i) - log q(z_i)],
    which is at most log N.
    """
    log_q_own = normal_log_prob(z, mean, log_var)
    return float((log_q_own - log_aggregate_posterior(z, mean, log_var)).double().mean())


def prior_hole_kl(z_prior: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> float:
    """KL(p(z) || q(z)) from draws z_prior (M, Z) of N(0, I): large when the prior puts mass where no data
    point is encoded (a 'hole'), so samples from the prior decode to points unlike the data."""
    log_p = std_normal_log_prob(z_prior)
    return float((log_p - log_aggregate_posterior(z_prior, mean, log_var)).double().mean())


def aggregate_moments(mean: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The aggregate posterior's mean (Z,) and covariance (Z, Z): Cov_x(E[z|x]) + E_x[Var(z|x)]."""
    centred = mean - mean.mean(0)
    cov = centred.T @ centred / max(1, mean.shape[0] - 1) + torch.diag(torch.exp(log_var).mean(0))
    return mean.mean(0), cov


def gaussian_kl_to_prior(m: torch.Tensor, cov: torch.Tensor) -> float:
    """KL(N(m, cov) || N(0, I)): how far the aggregate posterior's first two moments are from the prior's."""
    return float(0.5 * (torch.trace(cov) + m @ m - m.shape[0] - torch.logdet(cov)))

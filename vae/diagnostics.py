"""Latent-space diagnostics as pure functions of the encoder's outputs over a data set."""

from __future__ import annotations

import math

import torch

from vae.distributions import kl_normal_std_normal, normal_log_prob


def kl_per_dim(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z_u|x) || N(0, 1)) averaged over the data, per latent dimension: (N, Z) -> (Z,)."""
    return kl_normal_std_normal(mean, log_var).mean(0)


def posterior_mean_variance(mean: torch.Tensor) -> torch.Tensor:
    """Var_x(E_q[z_u|x]) per dimension, (N, Z) -> (Z,); a unit is active when this exceeds 0.01."""
    return mean.var(0, unbiased=True) if mean.shape[0] > 1 else torch.zeros_like(mean[0])


def active_units(mean: torch.Tensor, threshold: float = 0.01) -> int:
    """How many latent dimensions are active (Burda et al. 2016): Var_x(E_q[z_u|x]) > threshold."""
    return int((posterior_mean_variance(mean) > threshold).sum())


def mutual_information(
    z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, max_elements: int = 1 << 22
) -> float:
    """I(x; z) under q, with the aggregate posterior q(z) = (1/N) sum_j q(z|x_j) (Hoffman and Johnson 2016).

    z: (N, Z), one sample z_i ~ q(z|x_i); mean, log_var: (N, Z). Estimates
    E_i[log q(z_i|x_i) - log q(z_i)]; the estimate is at most log N. Chunks keep memory at max_elements.
    """
    n = z.shape[0]
    chunk = max(1, max_elements // (n * z.shape[1]))
    log_q_own = normal_log_prob(z, mean, log_var)
    log_q_agg = torch.cat(
        [
            torch.logsumexp(normal_log_prob(z[i : i + chunk, None], mean[None], log_var[None]), dim=1)
            for i in range(0, n, chunk)
        ]
    ) - math.log(n)
    return float((log_q_own - log_q_agg).double().mean())

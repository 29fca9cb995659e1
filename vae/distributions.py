"""Log-densities and KL divergences as pure functions on tensors.

Each sums over the last (event) dimension and keeps every leading (sample, batch) dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(log_var)). Shapes broadcast over (..., D); returns (...)."""
    return -0.5 * ((x - mean) ** 2 * torch.exp(-log_var) + log_var + LOG_2PI).sum(-1)


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) for z of shape (..., D); returns (...)."""
    return -0.5 * (z**2 + LOG_2PI).sum(-1)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) = x * logits - softplus(logits), summed over (..., D).

    The logits form never takes log(0); x may be any value in [0, 1] (then it is a cross-entropy).
    """
    return (x * logits - F.softplus(logits)).sum(-1)


def kl_normal_std_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(log_var)) || N(0, I)) per dimension, shape (..., D)."""
    return 0.5 * (mean**2 + torch.exp(log_var) - 1.0 - log_var)


def log_ratio_normal_std_normal(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(log_var)) - log N(z; 0, I) per dimension, shape (..., D): the single-sample
    Monte-Carlo estimate of each dimension's KL (the log 2 pi terms cancel)."""
    return 0.5 * (z**2 - (z - mean) ** 2 * torch.exp(-log_var) - log_var)

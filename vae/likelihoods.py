"""Decoder heads p(x|z): they turn the decoder network's output into a distribution over x.

Each head says how many outputs it needs per data dimension and gives log_prob, mean and sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae.distributions import bernoulli_log_prob, normal_log_prob


class Likelihood(nn.Module):
    """Base class: ``out`` is the decoder's raw output of shape (..., params_per_dim * D)."""

    params_per_dim: int = 1

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over data dimensions: x (..., D), out (..., P*D) -> (...)."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z], shape (..., D)."""
        raise NotImplementedError

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z), shape (..., D)."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels parameterised by logits."""

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(x, out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(out), generator=generator)


class Gaussian(Likelihood):
    """Diagonal Gaussian. ``variance="learned"``: a per-dimension output, var = min_std² + softplus(raw),
    so the variance can never reach zero (an unbounded likelihood); ``"fixed"``: var = fixed_std²."""

    def __init__(self, variance: str = "learned", min_std: float = 0.01, fixed_std: float = 1.0) -> None:
        super().__init__()
        self.variance = variance
        self.params_per_dim = 2 if variance == "learned" else 1
        self.min_var = min_std**2
        self.fixed_log_var = 2.0 * math.log(fixed_std)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and log-variance, each (..., D)."""
        if self.variance == "learned":
            mean, raw = out.chunk(2, dim=-1)
            return mean, torch.log(self.min_var + F.softplus(raw))
        return out, torch.full_like(out, self.fixed_log_var)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.split(out)
        return normal_log_prob(x, mean, log_var)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.split(out)[0]

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_var = self.split(out)
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        return mean + torch.exp(0.5 * log_var) * eps


def build_likelihood(name: str, **kwargs) -> Likelihood:
    """The head named in the config's ``likelihood`` group; kwargs are that group's keys."""
    heads = {"bernoulli": Bernoulli, "gaussian": Gaussian}
    return heads[name](**kwargs)

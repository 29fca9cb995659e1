"""The VAE: a diagonal-Gaussian encoder q(z|x), a decoder head p(x|z) and the prior N(0, I)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from vae.likelihoods import Likelihood, build_likelihood
from vae.nn import mlp
from vae.objectives import ElboTerms, elbo_terms


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mean(x), diag exp(log_var(x))) from one MLP with 2 * z_dim outputs.

    ``min_log_var`` and ``max_log_var`` (None: unbounded on that side) keep the posterior variances from
    vanishing or exploding. The bound is smooth, not a hard clamp, so a unit pushed past it still gets a
    gradient back: lo + softplus(raw - lo) below, hi - softplus(hi - raw) above, and with both
    lo + softplus(raw - lo) - softplus(raw - hi), which is monotone, stays within (lo, hi) and is ~raw well
    inside them (unlike lo + (hi - lo) * sigmoid(raw), which rescales every value).
    """

    def __init__(
        self,
        x_dim: int,
        hidden_dims: Sequence[int],
        z_dim: int,
        activation: str,
        min_log_var: float | None = None,
        max_log_var: float | None = None,
    ) -> None:
        super().__init__()
        if min_log_var is not None and max_log_var is not None and min_log_var >= max_log_var:
            raise ValueError(f"min_log_var={min_log_var} must be below max_log_var={max_log_var}")
        self.net = mlp(x_dim, hidden_dims, 2 * z_dim, activation)
        self.min_log_var, self.max_log_var = min_log_var, max_log_var

    def bound_log_var(self, raw: torch.Tensor) -> torch.Tensor:
        """The bounded log-variance, elementwise. The two-sided form is evaluated as written below the
        bounds' midpoint and as hi + softplus(lo - raw) - softplus(hi - raw) (the same function) above it,
        so that neither side subtracts two large softplus values."""
        lo, hi = self.min_log_var, self.max_log_var
        if lo is not None and hi is not None:
            below = lo + nn.functional.softplus(raw - lo) - nn.functional.softplus(raw - hi)
            above = hi + nn.functional.softplus(lo - raw) - nn.functional.softplus(hi - raw)
            return torch.where(raw < 0.5 * (lo + hi), below, above)
        if lo is not None:
            return lo + nn.functional.softplus(raw - lo)
        if hi is not None:
            return hi - nn.functional.softplus(hi - raw)
        return raw

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior mean and log-variance, each (..., Z), for x (..., D)."""
        mean, raw = self.net(x).float().chunk(2, dim=-1)  # float32 even under bf16 autocast
        return mean, self.bound_log_var(raw)


class VAE(nn.Module):
    """Encoder and decoder MLPs; the decoder mirrors the encoder's hidden sizes."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden_dims: Sequence[int],
        likelihood: Likelihood,
        activation: str = "relu",
        min_log_var: float | None = None,
        max_log_var: float | None = None,
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.encoder = GaussianEncoder(x_dim, hidden_dims, z_dim, activation, min_log_var, max_log_var)
        self.likelihood = likelihood
        self.decoder = mlp(z_dim, list(reversed(hidden_dims)), likelihood.params_per_dim * x_dim, activation)

    def sample_posterior(
        self,
        mean: torch.Tensor,
        log_var: torch.Tensor,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reparameterised z = mean + eps * std, shape (L, B, Z)."""
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device, generator=generator)
        return mean + eps * torch.exp(0.5 * log_var)

    def log_px(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for x (B, D) and z (L, B, Z): (L, B), summed in float32 even under bf16 autocast."""
        return self.likelihood.log_prob(x, self.decoder(z).float())

    def forward(self, x: torch.Tensor, n_samples: int = 1) -> tuple[torch.Tensor, ...]:
        """Encode x (B, D), draw L = n_samples reparameterised z and decode: log p(x|z) (L, B),
        z (L, B, Z), and q's mean and log-variance (B, Z) — what every objective is made of."""
        mean, log_var = self.encoder(x)
        z = self.sample_posterior(mean, log_var, n_samples)
        return self.log_px(x, z), z, mean, log_var

    def elbo(self, x: torch.Tensor, n_samples: int = 1, kl: str = "mc") -> ElboTerms:
        """Per-example ELBO terms for x of shape (B, D), each (B,)."""
        log_px, z, mean, log_var = self(x, n_samples)
        return elbo_terms(log_px, z, mean, log_var, kl)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the model, (n, D): decoder means E[x|z] (``mean``) or x ~ p(x|z), z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, device=device, generator=generator)
        out = self.decoder(z)
        return self.likelihood.mean(out) if mean else self.likelihood.sample(out, generator)


def build_model(cfg, x_dim: int) -> VAE:
    """The VAE a TrainConfig describes; the likelihood and encoder groups' keys are their arguments."""
    head_args = {k: v for k, v in dataclasses.asdict(cfg.likelihood).items() if k != "name"}
    likelihood = build_likelihood(cfg.likelihood.name, **head_args)
    return VAE(
        x_dim,
        cfg.z_dim,
        list(cfg.hidden_dims),
        likelihood,
        cfg.activation,
        cfg.encoder.min_log_var,
        cfg.encoder.max_log_var,
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

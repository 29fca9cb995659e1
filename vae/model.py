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
    """q(z|x) = N(mean(x), diag exp(log_var(x))) from one MLP with 2 * z_dim outputs."""

    def __init__(self, x_dim: int, hidden_dims: Sequence[int], z_dim: int, activation: str) -> None:
        super().__init__()
        self.net = mlp(x_dim, hidden_dims, 2 * z_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.net(x).chunk(2, dim=-1)
        return mean, log_var


class VAE(nn.Module):
    """Encoder and decoder MLPs; the decoder mirrors the encoder's hidden sizes."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden_dims: Sequence[int],
        likelihood: Likelihood,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.encoder = GaussianEncoder(x_dim, hidden_dims, z_dim, activation)
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
        """log p(x|z) for x (B, D) and z (L, B, Z): (L, B)."""
        return self.likelihood.log_prob(x, self.decoder(z))

    def elbo(self, x: torch.Tensor, n_samples: int = 1, kl: str = "mc") -> ElboTerms:
        """Per-example ELBO terms for x of shape (B, D), each (B,)."""
        mean, log_var = self.encoder(x)
        z = self.sample_posterior(mean, log_var, n_samples)
        return elbo_terms(self.log_px(x, z), z, mean, log_var, kl)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the model, (n, D): decoder means E[x|z] (``mean``) or x ~ p(x|z), z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, device=device, generator=generator)
        out = self.decoder(z)
        return self.likelihood.mean(out) if mean else self.likelihood.sample(out, generator)


def build_model(cfg, x_dim: int) -> VAE:
    """The VAE a TrainConfig describes; the likelihood group's keys are the head's arguments."""
    head_args = {k: v for k, v in dataclasses.asdict(cfg.likelihood).items() if k != "name"}
    likelihood = build_likelihood(cfg.likelihood.name, **head_args)
    return VAE(x_dim, cfg.z_dim, list(cfg.hidden_dims), likelihood, cfg.activation)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

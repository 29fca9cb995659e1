"""Scores of a trained model over whole data splits (never one batch)."""

from __future__ import annotations

import torch

from vae.model import VAE


@torch.no_grad()
def elbo_over(
    model: VAE, x: torch.Tensor, batch_size: int, n_samples: int = 1, kl: str = "mc"
) -> dict[str, float]:
    """The ELBO and its parts, with sampled z, averaged over every example of x (N, D): nats per example."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        terms = model.elbo(x[start : start + batch_size], n_samples, kl)
        sums += torch.stack([t.double().sum() for t in terms])
    model.train(was_training)
    elbo, log_px, kl_value = (sums / x.shape[0]).tolist()
    return {"elbo": elbo, "log_px": log_px, "kl": kl_value}

"""Multi-layer perceptrons built from a list of hidden sizes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "relu") -> nn.Sequential:
    """Linear layers in_dim -> *hidden_dims -> out_dim, ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden_dims]
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)

"""The two-moons toy data: two interleaved half circles in 2-d."""

from __future__ import annotations

import numpy as np


def make_moons(n_samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n_samples, 2) float32 and moon labels (n_samples,) int64, in random order.

    Each point is drawn on a half circle (the upper moon centred at (0, 0), the lower one at (1, 0.5))
    at a uniform angle, plus isotropic Gaussian noise of standard deviation ``noise``.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n_samples)
    t = rng.uniform(0.0, np.pi, size=n_samples)
    upper = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where(labels[:, None] == 0, upper, lower) + noise * rng.standard_normal((n_samples, 2))
    return x.astype(np.float32), labels.astype(np.int64)

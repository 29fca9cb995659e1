"""Decoder heads p(x|z): they turn the decoder network's output into a distribution over x.

Each head says how many outputs it needs per data dimension and gives log_prob, mean and sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae.distributions import bernoulli_log_prob, normal_log_prob

VARIANCES = ("learned", "shared", "fixed", "optimal")


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
    """Diagonal Gaussian N(x; mean, diag var); the decoder always gives the mean. ``variance``:

    - ``learned``: a second decoder output ``raw`` per dimension (params_per_dim=2).
    - ``shared``: one learned scalar ``raw_var`` for every dimension (init 0: std 1 when unfloored).
    - ``fixed``: var = fixed_std².
    - ``optimal``: the sigma-VAE (Rybkin et al. 2021): one variance, the batch's mean squared error, which
      is the maximiser of log_prob over a shared variance, so nothing about it needs to be learned.

    With ``min_std`` > 0 the learned and shared variances are floored softly, var = min_std² + softplus(raw),
    and the optimal std is max(sqrt(MSE), min_std). ``min_std`` = 0 leaves them unbounded (log_var = raw for
    learned and shared): that is the pitfall configuration in which, on low-dimensional data such as the
    moons, the decoder can shrink the variance towards zero around its mean and log p(x|z) grows without
    bound (the ELBO diverges to +inf while the model gets no better).
    """

    def __init__(self, variance: str = "learned", min_std: float = 0.01, fixed_std: float = 1.0) -> None:
        super().__init__()
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
        if min_std < 0 or fixed_std <= 0:
            raise ValueError(f"need min_std >= 0 and fixed_std > 0, got {min_std} and {fixed_std}")
        self.variance = variance
        self.params_per_dim = 2 if variance == "learned" else 1
        self.min_std = min_std
        self.fixed_log_var = 2.0 * math.log(fixed_std)
        if variance == "shared":
            self.raw_var = nn.Parameter(torch.zeros(()))
        if variance == "optimal":
            # The variance is a function of the data, which sample() and std() do not see: they use the
            # last training batch's std, the model's current estimate of its noise level (saved with it).
            self.register_buffer("last_std", torch.ones(()))

    def _log_var(self, raw: torch.Tensor) -> torch.Tensor:
        """The learned or shared log-variance from its raw value: floored softly, or raw when min_std = 0."""
        if self.min_std > 0:
            return torch.log(self.min_std**2 + F.softplus(raw))
        return raw

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean (..., D) and the log-variance, broadcastable to it; ``optimal`` gives the last std's."""
        if self.variance == "learned":
            mean, raw = out.chunk(2, dim=-1)
            return mean, self._log_var(raw)
        if self.variance == "shared":
            return out, self._log_var(self.raw_var)
        if self.variance == "optimal":
            return out, 2.0 * torch.log(self.last_std)
        return out, torch.full_like(out, self.fixed_log_var)

    def optimal_log_var(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """log sigma² = log mean((x - mean)²) over all elements of x (..., B, D) against mean (..., B, D), a
        scalar. The floor is a hard max: sigma = max(sqrt(MSE), min_std) is the exact optimum under
        sigma >= min_std (log_prob is unimodal in sigma), and no gradient is lost through it, since at the
        optimum d log_prob / d sigma = 0. Gradients flow through the MSE, as in the paper's code."""
        log_var = torch.log(((x - mean) ** 2).mean())
        if self.min_std > 0:
            log_var = torch.clamp(log_var, min=2.0 * math.log(self.min_std))
        return log_var

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # In eval mode the optimal head uses the sigma of the last training batch: a variance fitted to the
        # very x it scores would not be a density of x, and the test NLL would depend on the batching.
        if self.variance != "optimal" or not self.training:
            return normal_log_prob(x, *self.split(out))
        log_var = self.optimal_log_var(x, out)
        with torch.no_grad():
            self.last_std.copy_(torch.exp(0.5 * log_var))
        return normal_log_prob(x, out, log_var)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.split(out)[0]

    def std(self, out: torch.Tensor) -> torch.Tensor:
        """The predicted standard deviations, (..., D): per output when learned, else one value expanded."""
        mean, log_var = self.split(out)
        return torch.exp(0.5 * log_var).expand_as(mean)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_var = self.split(out)
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        return mean + torch.exp(0.5 * log_var) * eps


# Below these |logit|s the closed forms cancel catastrophically (they are 0/0 at 0); their Taylor series
# with the kept terms are accurate there to ~1e-7 relative, as are the closed forms beyond (float32).
_CB_LOG_NORM_CUTOFF = 0.5
_CB_MEAN_CUTOFF = 1.0
_CB_SAMPLE_CUTOFF = 1e-4


def _horner(t: torch.Tensor, coefs: tuple[float, ...]) -> torch.Tensor:
    """sum_k coefs[k] * t**k."""
    result = torch.full_like(t, coefs[-1])
    for c in reversed(coefs[:-1]):
        result = result * t + c
    return result


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) of the continuous Bernoulli, elementwise: C = l / tanh(l / 2), C(0) = 2.

    Near 0 the Taylor series log 2 + l²/12 - 7l⁴/1440 + 31l⁶/90720; elsewhere
    log|l| - log|tanh(l/2)| with log|tanh(l/2)| = log(-expm1(-|l|)) - log1p(exp(-|l|)), which is exact for
    large |l| (where the probability form saturates). The unused branch gets a safe input so that
    neither the value nor the gradient is NaN.
    """
    a = logits.abs()
    small = a < _CB_LOG_NORM_CUTOFF
    safe = torch.where(small, torch.ones_like(a), a)
    direct = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    l2 = logits * logits
    taylor = math.log(2.0) + l2 * _horner(l2, (1 / 12, -7 / 1440, 31 / 90720))
    return torch.where(small, taylor, direct)


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem and Cunningham 2019) on [0, 1], parameterised by logits:
    p(x) = C(l) sigmoid(l)^x (1 - sigmoid(l))^(1-x). Unlike the Bernoulli cross-entropy on grey levels it is
    a normalised density, so its log-likelihoods are comparable with other densities. Everything here is
    written in logits: torch's version goes through probs, which saturate at |l| > ~17 and cancel near 0."""

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(x, out) + continuous_bernoulli_log_norm(out).sum(-1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x] = 1 / (1 - exp(-l)) - 1 / l (not sigmoid(l)); its Taylor series 1/2 + l/12 - ... near 0."""
        small = out.abs() < _CB_MEAN_CUTOFF
        safe = torch.where(small, torch.ones_like(out), out)
        direct = -1.0 / torch.expm1(-safe) - 1.0 / safe
        taylor = 0.5 + out * _horner(out * out, (1 / 12, -1 / 720, 1 / 30240, -1 / 1209600))
        return torch.where(small, taylor, direct)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Inverse-CDF sampling, x = log(1 + u expm1(l)) / l for u ~ U[0, 1).

        It is written for a = -|l| <= 0 (by symmetry, x ~ CB(l) iff 1 - x ~ CB(-l)), so expm1 never
        overflows; log(1 + v expm1(a)) is log1p of it, or log((1 - v) + v exp(a)) where that is below 1/2 and
        log1p would cancel (v near 1, a very negative). x -> v as a -> 0 (the uniform), by Taylor below.
        The final clamp only removes rounding past 0 or 1.
        """
        u = torch.rand(out.shape, dtype=out.dtype, device=out.device, generator=generator)
        positive = out > 0
        v = torch.where(positive, 1.0 - u, u)
        a = -out.abs()
        small = a > -_CB_SAMPLE_CUTOFF
        safe = torch.where(small, -torch.ones_like(a), a)
        inside = 1.0 - v + v * torch.exp(safe)
        log_inside = torch.where(inside < 0.5, torch.log(inside), torch.log1p(v * torch.expm1(safe)))
        y = torch.where(small, v + 0.5 * v * (1.0 - v) * a, log_inside / safe)
        return torch.where(positive, 1.0 - y, y).clamp(0.0, 1.0)


def build_likelihood(name: str, **kwargs) -> Likelihood:
    """The head named in the config's ``likelihood`` group; kwargs are that group's keys."""
    heads = {"bernoulli": Bernoulli, "gaussian": Gaussian, "continuous_bernoulli": ContinuousBernoulli}
    return heads[name](**kwargs)

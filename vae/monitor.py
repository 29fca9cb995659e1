"""Diagnose the VAE's pitfalls while it trains: per-epoch latent and decoder statistics, and named warnings.

Each warning is logged once per onset (and its end once, when it clears) and summarised for metrics.json
under ``diagnosis/``. The thresholds are module constants so the README and the tests can name them.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from vae.diagnostics import (
    active_units,
    aggregate_moments,
    gaussian_kl_to_prior,
    kl_per_dim,
    mutual_information,
    prior_hole_kl,
)
from vae.model import VAE, eval_mode

log = logging.getLogger(__name__)

MAX_POINTS = 2000  # validation points the epoch diagnostics use (O(N^2) for MI and the prior-hole KL)
COLLAPSE_MI = 0.1  # nats: below this I(x;z) the code carries (almost) nothing
COLLAPSE_STD = 0.05  # an unbounded decoder sigma below this (data standardised or in [0, 1]) is collapsing
COLLAPSE_SHARE = 0.5  # ... when at least this share of all sigma is there
FLOOR_SHARE = 0.5  # the variance floor is "binding" when this share of sigma sits at it
PRIOR_HOLE_KL = 1.0  # nats of KL(p(z) || q(z)) above which the prior has holes
HYSTERESIS = 1.5  # a finding clears only once its statistic is this factor past the threshold (no flicker)

REMEDIES = {
    "posterior_collapse": "try objective.warmup=linear or objective.free_bits=0.1",
    "decoder_variance_collapse": "floor it (likelihood.min_std=0.05) or share it "
    "(likelihood.variance=shared)",
    "prior_hole": "raise objective.beta towards 1, or try objective=iwae",
    "likelihood_mismatch": "binarise (dataset.binarize=dynamic) or use likelihood=continuous_bernoulli",
}


class Monitor:
    """Computes the epoch diagnostics on a fixed validation subset and raises each finding once per onset."""

    def __init__(self, x_val: torch.Tensor, likelihood: str, seed: int = 0) -> None:
        self.x = x_val[:MAX_POINTS]
        self.likelihood = likelihood
        self.gen = torch.Generator(device=self.x.device).manual_seed(seed)
        self.active: dict[str, str] = {}  # finding -> message, while it lasts
        self.history: dict[str, dict[str, Any]] = {}
        self.notes: set[str] = set()

    def check_data(self, x_train: torch.Tensor, binarized_per_batch: bool) -> None:
        """Likelihood mismatch: a Bernoulli likelihood on grey levels is not a normalised density."""
        if self.likelihood == "bernoulli" and not binarized_per_batch:
            grey = float(((x_train > 0) & (x_train < 1)).float().mean())
            if grey > 0:
                self._update(
                    0,
                    {
                        "likelihood_mismatch": "likelihood mismatch: Bernoulli on non-binary data "
                        f"({grey:.0%} of training values strictly between 0 and 1)"
                    },
                    ("likelihood_mismatch",),
                )

    @torch.no_grad()
    def epoch(
        self, epoch: int, model: VAE, train_log_px: float, warming_up: bool = False
    ) -> dict[str, float]:
        """The epoch's diagnostics as ``diag/...`` scalars; logs the findings that start or end.

        While the KL weight is still warming up the aggregate posterior is meant to be far from the prior,
        so prior holes are not reported then.
        """
        with eval_mode(model):
            mean, log_var = model.encoder(self.x)
            z = model.sample_posterior(mean, log_var, 1, self.gen)[0]
            kl = kl_per_dim(mean, log_var)
            au = active_units(mean)
            mi = mutual_information(z, mean, log_var)
            agg_mean, agg_cov = aggregate_moments(mean, log_var)
            z_prior = torch.randn(z.shape, device=z.device, generator=self.gen)
            hole = prior_hole_kl(z_prior, mean, log_var)
            stats = {
                "diag/active_units": float(au),
                "diag/mi": mi,
                "diag/agg_mean_norm": float(agg_mean.norm()),
                "diag/agg_var_min": float(agg_cov.diagonal().min()),
                "diag/agg_var_max": float(agg_cov.diagonal().max()),
                "diag/agg_gauss_kl": gaussian_kl_to_prior(agg_mean, agg_cov),
                "diag/prior_hole_kl": hole,
            }
            stats |= {f"diag/kl_per_dim/{u}": float(v) for u, v in enumerate(kl)}
            std = model.likelihood.std(model.decoder(z)) if hasattr(model.likelihood, "std") else None
        z_dim = kl.shape[0]
        findings: dict[str, str] = {}
        collapse_mi = COLLAPSE_MI * (HYSTERESIS if "posterior_collapse" in self.active else 1.0)
        if au == 0 or mi < collapse_mi:
            findings["posterior_collapse"] = (
                f"posterior collapse: {au} of {z_dim} latent dimensions active, I(x;z) = {mi:.3f} nats "
                "(the decoder ignores z)"
            )
        elif au < z_dim:
            self._note(
                "inactive",
                f"epoch {epoch}: {z_dim - au} of {z_dim} latent dimensions inactive (KL ~ 0), {au} active: "
                "expected when the data need fewer dimensions; not a collapse while I(x;z) = "
                f"{mi:.2f} nats stays well above 0",
            )
        if not warming_up and hole > PRIOR_HOLE_KL / (HYSTERESIS if "prior_hole" in self.active else 1.0):
            findings["prior_hole"] = (
                f"prior hole: aggregate posterior far from N(0, I) (KL(p(z) || q(z)) = {hole:.2f} nats): "
                "samples from the prior land where no data point is encoded"
            )
        if std is not None:
            floor = model.likelihood.min_std
            stats |= {
                "diag/decoder_std_min": float(std.min()),
                "diag/decoder_std_median": float(std.median()),
                "diag/decoder_std_at_floor": float((std <= floor * 1.05).float().mean())
                if floor > 0
                else 0.0,
            }
            # Only an unbounded variance can collapse: with a floor, log p(x|z) is bounded by construction.
            collapsed = float((std < COLLAPSE_STD).float().mean())
            share = COLLAPSE_SHARE / (HYSTERESIS if "decoder_variance_collapse" in self.active else 1.0)
            if floor == 0 and collapsed >= share:
                findings["decoder_variance_collapse"] = (
                    f"decoder variance collapse: {collapsed:.0%} of sigma below {COLLAPSE_STD:g} "
                    f"(min {stats['diag/decoder_std_min']:.1e}), log p(x|z) rising without bound "
                    f"(train log p(x|z) = {train_log_px:.2f})"
                )
            elif stats["diag/decoder_std_at_floor"] >= FLOOR_SHARE:
                self._note(
                    "floor",
                    f"epoch {epoch}: {stats['diag/decoder_std_at_floor']:.0%} of decoder sigma at the floor "
                    f"likelihood.min_std={floor:g}: the floor is binding and keeps log p(x|z) bounded",
                )
        self._update(epoch, findings, ("posterior_collapse", "prior_hole", "decoder_variance_collapse"))
        return stats

    def _note(self, key: str, message: str) -> None:
        """An informational line, once per kind: healthy behaviour that looks alarming."""
        if key not in self.notes:
            self.notes.add(key)
            log.info("%s", message)

    def _update(self, epoch: int, findings: dict[str, str], names: tuple[str, ...]) -> None:
        for name in names:
            message = findings.get(name)
            if message and name not in self.active:
                log.warning("epoch %d: %s; %s", epoch, message, REMEDIES[name])
                entry = self.history.setdefault(name, {"onsets": [], "cleared": []})
                entry["onsets"].append(epoch)
                entry["message"] = message
                entry["remedy"] = REMEDIES[name]
            elif not message and name in self.active:
                log.info("epoch %d: %s cleared", epoch, name.replace("_", " "))
                self.history[name]["cleared"].append(epoch)
            if message:
                self.active[name] = message
            else:
                self.active.pop(name, None)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on exactly as an uninterrupted one: the sampling generator and
        the findings' state (so a finding that lasts across the interruption is not raised twice)."""
        return {
            "gen": self.gen.get_state(),
            "active": dict(self.active),
            "history": copy.deepcopy(self.history),
            "notes": sorted(self.notes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.active = dict(state["active"])
        self.history = copy.deepcopy(state["history"])
        self.notes = set(state["notes"])

    def summary(self) -> dict[str, Any]:
        """``diagnosis/<finding>``: onsets, clearances, last message, remedy, and whether it lasted."""
        return {
            f"diagnosis/{name}": entry | {"active_at_end": name in self.active}
            for name, entry in self.history.items()
        }

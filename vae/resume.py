"""Which run a training command continues: ``resume=<run dir>``, ``resume=auto``, or none (a fresh run)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from vae.config import TrainConfig, config_from_dict
from vae.errors import ConfigError
from vae.status import STATUS, read_status

log = logging.getLogger(__name__)

# Keys a resumed run may change: how long it trains, where, how it reports and how it is scored.
RESUMABLE_KEYS = ("epochs", "device", "progress", "checkpoint", "eval", "plot", "resume", "resume_root")
ABSENT = "<absent>"


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = RESUMABLE_KEYS
) -> list[str]:
    """``key: saved -> current`` for every dotted key whose value differs, top-level ``ignore`` keys aside."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if prefix or k not in ignore:
                out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    a, b = flat(saved), flat(current)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, ABSENT) != b.get(k, ABSENT))
    return [f"{k}: {a.get(k, ABSENT)} -> {b.get(k, ABSENT)}" for k in keys]


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        values = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return values if isinstance(values, dict) else None


def _finished_epochs(run_dir: Path) -> int | None:
    """The epochs a finished run trained, None if it is not finished."""
    status = read_status(run_dir)
    return status.get("epoch") if status and status.get("status") == "finished" else None


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _explicit_run(node: DictConfig, config: TrainConfig, overrides: list[str], run_dir: Path) -> TrainConfig:
    """The config to continue ``run_dir`` with: its own, with the resumable keys the command line sets.
    Any other key the command line sets must agree with the run's."""
    saved = _saved_config(run_dir)
    if saved is None:
        raise ConfigError(
            f"resume={run_dir} is not a training run directory (no readable config.yaml); give the folder "
            "a run wrote, e.g. outputs/<date>/<time>, or resume=auto."
        )
    merged = OmegaConf.create(saved)
    conflicts = []
    for key in dict.fromkeys(_override_key(o) for o in overrides):
        if key.split(".")[0] in ("resume", "resume_root") or key.startswith("hydra"):
            continue
        value = OmegaConf.select(node, key)
        value = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
        if key.split(".")[0] in RESUMABLE_KEYS:
            OmegaConf.update(merged, key, value, force_add=True)
            continue
        old = OmegaConf.select(merged, key, default=ABSENT)
        old = OmegaConf.to_container(old) if isinstance(old, DictConfig) else old
        if isinstance(value, dict) and isinstance(old, dict):  # a group choice: compare the option's name
            value, old = value.get("name"), old.get("name")
        if value != old:
            conflicts.append(f"{key}={value} (the run has {old})")
    if conflicts:
        raise ConfigError(
            f"resume={run_dir}: the command line changes what the run was trained with: "
            + ", ".join(conflicts)
            + f". Only {', '.join(RESUMABLE_KEYS[:-2])} may change on resume; drop the others, or start a "
            "new run without resume."
        )
    merged.resume = config.resume
    return config_from_dict(OmegaConf.to_container(merged))


def _find_auto(config: TrainConfig, root: Path, job_dir: Path) -> Path | None:
    """The most recent run of the same config (resumable keys aside) that has not trained more epochs than
    asked for: ``job_dir`` itself first (a cluster job requeued into its own folder), then under ``root``."""
    current = OmegaConf.to_container(OmegaConf.structured(config))
    matches = []
    candidates = root.rglob(STATUS) if root.is_dir() else []  # a training run writes one beside its config
    for path in [job_dir / STATUS, *candidates]:
        run_dir = path.parent
        if not path.is_file():
            continue
        saved = _saved_config(run_dir)
        if saved is None or config_differences(saved, current):
            continue
        status = read_status(run_dir) or {}
        if status.get("epoch", 0) <= config.epochs:
            if run_dir == job_dir:
                return run_dir
            matches.append((path.stat().st_mtime, run_dir))
    return max(matches)[1] if matches else None


def resolve_resume(
    node: DictConfig, config: TrainConfig, overrides: list[str], job_dir: Path, launch_dir: Path
) -> tuple[TrainConfig, Path, str]:
    """(config, run directory, action): action ``fresh`` (train in ``job_dir``), ``resume`` (continue the
    run directory) or ``skip`` (it has already finished what is asked)."""
    if config.resume is None:
        if (job_dir / "config.yaml").is_file():  # never train over an earlier run and lose it
            raise ConfigError(
                f"{job_dir} already holds a training run: continue it with resume={job_dir}, or give another "
                "hydra.run.dir (or delete that folder to start over)."
            )
        return config, job_dir, "fresh"
    if config.resume == "auto":
        root = launch_dir / config.resume_root
        run_dir = _find_auto(config, root, job_dir)
        if run_dir is None:
            log.info("resume=auto: no earlier run of this config under %s; starting a new one", root)
            return config, job_dir, "fresh"
    else:
        run_dir = Path(config.resume)
        if not run_dir.is_absolute():
            run_dir = launch_dir / run_dir
        if not run_dir.is_dir():
            raise ConfigError(f"resume={config.resume}: no such directory; give a run directory or auto.")
        config = _explicit_run(node, config, overrides, run_dir)
    if _finished_epochs(run_dir) == config.epochs:
        log.info(
            "%s has already finished %d epochs: nothing to do (raise epochs to train on)",
            run_dir,
            config.epochs,
        )
        return config, run_dir, "skip"
    log.info("resume: continuing %s", run_dir)
    return config, run_dir, "resume"


def finished_metrics(run_dir: Path) -> dict[str, Any]:
    """A finished run's metrics.json."""
    return json.loads((run_dir / "metrics.json").read_text())

"""Train a VAE: `python scripts/train.py likelihood=bernoulli z_dim=2` (see README.md for every key)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vae.cli import run_hydra, user_errors
from vae.config import register_configs, validate
from vae.launch import pin_job, register_resolvers, requeued
from vae.status import write_status

register_configs()
register_resolvers()
log = logging.getLogger("vae")


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the final validation ELBO (the objective a sweeper such as Optuna maximises); None when the
    job failed."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job_dir = Path(hydra_cfg.runtime.output_dir)
    with user_errors(multirun, [job_dir]) as status_dirs:
        config = validate(cfg)
        if multirun:
            config.progress = False
            if config.resume is None and requeued(hydra_cfg.launcher):  # a preempted or timed-out job
                log.info("requeued by SLURM: resume=auto, to continue this job's run in %s", job_dir)
                config.resume = "auto"
        from vae.resume import finished_metrics, resolve_resume

        overrides = list(hydra_cfg.overrides.task)
        config, run_dir, action = resolve_resume(cfg, config, overrides, job_dir, Path(hydra_cfg.runtime.cwd))
        if run_dir != job_dir:
            write_status(job_dir, "skipped" if action == "skip" else "resumed", run=str(run_dir))
            status_dirs.append(run_dir)
        if action == "skip":
            return finished_metrics(run_dir)["val/elbo"]
        if multirun:  # concurrent jobs share the cores (and the GPUs) instead of oversubscribing them
            config.device = pin_job(hydra_cfg, config.device)
        from vae.train import train  # after validation: a config error costs no heavy import

        metrics = train(config, run_dir, resume=action == "resume")
        if run_dir != job_dir:
            write_status(job_dir, "finished", run=str(run_dir), epoch=config.epochs)
        return metrics["val/elbo"]
    return None


if __name__ == "__main__":
    run_hydra(main)

"""Redraw a run's figures from its checkpoint, without training: `python scripts/plot.py run=<run dir>`.

Given a sweep directory, every run below it is plotted. Figures go to <run>/figures and TensorBoard.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from vae.cli import run_hydra, user_errors
from vae.config import register_configs, validate

log = logging.getLogger("plot")
register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="plot")
def main(cfg: DictConfig) -> None:
    with user_errors():
        config = validate(cfg)
        from vae.runs import find_runs, plot_run
        from vae.train import resolve_device

        device = resolve_device(config.device)
        for run_dir in find_runs(config.run):
            for path in plot_run(run_dir, config.plot, device):
                log.info("wrote %s", path)


if __name__ == "__main__":
    run_hydra(main)

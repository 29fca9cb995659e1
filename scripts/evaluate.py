"""Score a trained run from its checkpoint: `python scripts/evaluate.py run=<run dir> [split=val]`.

Given a sweep directory, every run below it is evaluated. Results go to each run's eval.json,
metrics.json and TensorBoard run.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vae.cli import run_hydra, user_errors
from vae.config import register_configs, validate

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        config = validate(cfg)
        from vae.runs import evaluate_run, find_runs
        from vae.train import resolve_device

        device = resolve_device(config.device)
        for run_dir in find_runs(config.run):
            evaluate_run(run_dir, config.split, config.eval, device)


if __name__ == "__main__":
    run_hydra(main)

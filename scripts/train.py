"""Train a VAE: `python scripts/train.py likelihood=bernoulli z_dim=2` (see README.md for every key)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vae.cli import user_errors
from vae.config import register_configs, validate

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with user_errors(multirun):
        config = validate(cfg)
        if multirun:
            config.progress = False
        from vae.train import train  # after validation: a config error costs no heavy import

        return train(config, hydra_cfg.runtime.output_dir)


if __name__ == "__main__":
    main()

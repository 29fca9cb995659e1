"""Training checkpoints: last.pt (to resume from) and best.pt (by validation ELBO), written atomically.

A checkpoint holds everything a resumed run needs to go on exactly as an uninterrupted one: model and
optimizer state, the position (epoch and step within it), every random number generator's state (torch,
CUDA, numpy, python, and the data order's generator), the monitor's state, the metrics so far and the
config.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae.errors import VAEError
from vae.files import atomic_write

FORMAT_VERSION = 2
LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(path: str | os.PathLike, **state: Any) -> None:
    """Write ``state`` (model and optimizer state dicts, position, RNG states, config, ...) atomically."""
    with atomic_write(path, "wb") as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error for missing, truncated, foreign
    or older-format files."""
    path = Path(path)
    if not path.is_file():
        raise VAEError(f"no checkpoint at {path}: train a run first, or point to its run directory.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or not a torch file at all
        raise VAEError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); it may be "
            "truncated or corrupt: delete it and resume from another one, or retrain."
        ) from e
    if not isinstance(state, dict) or "format_version" not in state:
        raise VAEError(f"{path} is not a checkpoint of this project (no format_version).")
    if state["format_version"] != FORMAT_VERSION:
        raise VAEError(
            f"checkpoint {path} has format version {state['format_version']}, this version reads "
            f"{FORMAT_VERSION}: retrain, or use the version of this project that wrote it."
        )
    return state


def rng_states(data_generator: torch.Generator) -> dict[str, Any]:
    """The state of every generator a training run draws from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "data": data_generator.get_state(),
    }


def restore_rng_states(states: dict[str, Any], data_generator: torch.Generator) -> None:
    """Put every generator back into the state :func:`rng_states` saved."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    data_generator.set_state(states["data"])


def load_run(
    run_dir: str | os.PathLike, device: torch.device, which: str = LAST
) -> tuple[Any, Any, dict[str, Any]]:
    """The config, model (in eval mode, on ``device``) and checkpoint state of a training run."""
    from vae.config import config_from_dict
    from vae.model import build_model

    path = Path(run_dir) / which
    state = load_checkpoint(path, map_location=device)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg, state["x_dim"]).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise VAEError(f"checkpoint {path} does not fit the model its config describes: {e}") from e
    model.eval()
    state["path"] = str(path)
    return cfg, model, state

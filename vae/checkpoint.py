"""Save and load training checkpoints (atomically written)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vae.errors import VAEError
from vae.files import atomic_write

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, **state: Any) -> None:
    """Write ``state`` (model and optimizer state dicts, epoch, config, ...) to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error for missing or broken files."""
    path = Path(path)
    if not path.is_file():
        raise VAEError(f"no checkpoint at {path}: train a run first, or point to its run directory.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or not a torch file at all
        raise VAEError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it may be truncated."
        ) from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise VAEError(f"checkpoint {path} is not in this project's format (version {FORMAT_VERSION}).")
    return state


def load_run(run_dir: str | os.PathLike, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """The config, model (in eval mode, on ``device``) and checkpoint state of a training run."""
    from vae.config import config_from_dict
    from vae.model import build_model

    path = Path(run_dir) / CHECKPOINT
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

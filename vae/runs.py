"""Work on finished runs: find them, re-evaluate them, redraw their figures (from their checkpoints)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vae.checkpoint import LAST, load_run
from vae.config import EvalConfig, PlotConfig, binarize_mode
from vae.data.datasets import load_data
from vae.errors import VAEError
from vae.evaluate import evaluate_and_record

log = logging.getLogger(__name__)


def find_runs(path: str | Path) -> list[Path]:
    """``path`` itself when it holds a checkpoint, else every run below it (a sweep), in order."""
    path = Path(path)
    if (path / LAST).is_file():
        return [path]
    runs = sorted((p.parent for p in path.rglob(LAST)), key=_natural_key)
    if not runs:
        raise VAEError(
            f"no {LAST} in or below {path}: give a run directory (outputs/<date>/<time>) "
            "or a sweep directory (outputs/multirun/<date>/<time>)."
        )
    return runs


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in path.parts]


def evaluate_run(run_dir: Path, split: str, eval_cfg: EvalConfig, device: Any) -> dict[str, Any]:
    """Score ``split`` of a run from its checkpoint into its eval.json, metrics.json and TensorBoard."""
    from vae.tracking import Tracker

    cfg, model, state = load_run(run_dir, device)
    data = load_data(cfg.dataset, binarize_mode(cfg)).to(device)
    x = data.split(split)[0]
    record_state = {
        "checkpoint": state["path"],
        "epoch": state["epoch"],
        "binarize": binarize_mode(cfg),
        "seed": cfg.seed,
    }
    tracker = Tracker(run_dir)
    try:
        return evaluate_and_record(model, x, eval_cfg, split, record_state, run_dir, tracker, state["epoch"])
    finally:
        tracker.close()


def plot_run(run_dir: Path, plot_cfg: PlotConfig, device: Any) -> list[Path]:
    """Redraw a run's figures from its checkpoint into <run>/figures and its TensorBoard run."""
    from vae.plots import kl_history_figure, make_figures
    from vae.tracking import Tracker

    cfg, model, state = load_run(run_dir, device)
    data = load_data(cfg.dataset, binarize_mode(cfg)).to(device)
    tracker = Tracker(run_dir)
    try:
        paths = make_figures(model, data, plot_cfg, run_dir / "figures", tracker, state["epoch"], cfg.seed)
        history = kl_history_figure(run_dir, tracker, state["epoch"])
        return paths + ([history] if history else [])
    finally:
        tracker.close()

"""Shared helpers: run the real entry points in a subprocess, read TensorBoard event files back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOONS = [
    "dataset=moons",
    "likelihood=gaussian",
    "dataset.n_samples=600",
    "dataset.val_size=100",
    "dataset.test_size=100",
    "hidden_dims=[16]",
    "z_dim=2",
    "batch_size=64",
    "device=cpu",
]


def tiny_images(tmp_path: Path, gz: bool = True) -> list[str]:
    """Write a tiny MNIST-format data set into tmp_path/data; return the overrides for a fast run on it."""
    from idx_utils import write_mnist_like

    write_mnist_like(tmp_path / "data", n_train=300, n_test=50, gz=gz)
    return [
        f"dataset.root={tmp_path / 'data'}",
        "dataset.download=false",
        "dataset.val_size=100",
        "hidden_dims=[16]",
        "eval.iw_samples=5",
        "device=cpu",
    ]


def run_script(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run scripts/<script> with Hydra overrides; ``check`` asserts it succeeded."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the run's event files as (step, value) lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def hparams_tags(run_dir: Path) -> set[str]:
    """The HParams plugin's summary tags in the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.PluginTagToContent("hparams"))

"""Checkpoints that cannot be trusted are refused clearly, and the graceful stop's two-signal protocol."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import MOONS, run_script

from vae.checkpoint import BEST, LAST, load_checkpoint, load_run, save_checkpoint
from vae.errors import VAEError
from vae.interrupt import GracefulStop

QUICK = [*MOONS, "epochs=2", "eval.iw_samples=5", "plot.enabled=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    run_script("train.py", *QUICK, f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    return tmp / "run"


def test_last_and_best_hold_what_resuming_and_evaluating_need(run: Path) -> None:
    last = load_checkpoint(run / LAST)
    assert last["epoch"] == 2 and last["step"] == 2 * 7 and last["progress"] is None
    assert {"torch", "cuda", "numpy", "python", "data"} <= last["rng"].keys()
    assert {"model", "optimizer", "monitor", "metrics", "best", "config", "x_dim"} <= last.keys()
    best = load_checkpoint(run / BEST)
    assert best["epoch"] == last["best"]["epoch"] and best["val_elbo"] == last["best"]["val/elbo"]
    cfg, model, state = load_run(run, torch.device("cpu"), which=BEST)
    assert cfg.z_dim == 2 and state["epoch"] == best["epoch"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "cannot be read"),
        (lambda p: p.write_bytes(b""), "cannot be read"),
        (lambda p: p.write_bytes(os.urandom(1000)), "cannot be read"),
        (lambda p: torch.save({"model": {}}, p), "not a checkpoint of this project"),
        (lambda p: torch.save([1, 2], p), "not a checkpoint of this project"),
        (lambda p: save_checkpoint(p.parent / p.name, epoch=1) or _set_version(p, 1), "format version 1"),
        (lambda p: p.unlink(), "no checkpoint at"),
    ],
    ids=["truncated", "empty", "garbage", "foreign-dict", "foreign-list", "older-format", "missing"],
)
def test_a_damaged_or_foreign_checkpoint_is_refused_clearly(
    run: Path, tmp_path: Path, damage, message
) -> None:
    path = tmp_path / LAST
    path.write_bytes((run / LAST).read_bytes())
    damage(path)
    with pytest.raises(VAEError, match=message):
        load_checkpoint(path)


def _set_version(path: Path, version: int) -> None:
    state = torch.load(path, weights_only=False)
    state["format_version"] = version
    torch.save(state, path)


def test_resuming_a_damaged_checkpoint_or_another_config_is_one_clear_line(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.yaml", LAST, "status.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    (copy / LAST).write_bytes((run / LAST).read_bytes()[:1000])
    proc = run_script(
        "train.py", f"resume={copy}", "epochs=3", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out and "may be truncated or corrupt" in out
    proc = run_script(
        "train.py",
        f"resume={run}",
        "z_dim=3",
        "lr=0.5",
        f"hydra.run.dir={tmp_path / 'b'}",
        cwd=tmp_path,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "the command line changes what the run was trained with: " in out
    assert "z_dim=3 (the run has 2)" in out and "lr=0.5 (the run has 0.001)" in out
    proc = run_script(
        "train.py",
        f"resume={tmp_path / 'nowhere'}",
        f"hydra.run.dir={tmp_path / 'c'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "no such directory" in proc.stdout + proc.stderr
    proc = run_script(
        "train.py", f"resume={run}", "epochs=1", f"hydra.run.dir={tmp_path / 'd'}", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2 and "it has already trained 2 epochs" in proc.stdout + proc.stderr


def test_first_signal_asks_to_stop_second_stops_at_once() -> None:
    previous = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored

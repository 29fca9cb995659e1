"""Interruptions: SIGKILL at random moments and SIGTERM mid-epoch, then resume; the run must end exactly as an
uninterrupted one (parameters, optimizer, metrics and TensorBoard scalars, bit for bit on the CPU)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, read_metrics, read_scalars, run_script

from vae.checkpoint import LAST, load_checkpoint
from vae.status import read_status

# Long enough (about 60 ms per epoch here) to be killed mid-run, small enough to be quick.
RUN = [
    "dataset=moons",
    "likelihood=gaussian",
    "dataset.n_samples=3000",
    "dataset.val_size=200",
    "dataset.test_size=200",
    "hidden_dims=[16]",
    "z_dim=2",
    "batch_size=32",
    "epochs=40",
    "eval.iw_samples=20",
    "plot.enabled=false",
    "device=cpu",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *RUN, f"hydra.run.dir={run_dir}", *extra],
        cwd=run_dir.parent,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint_after(path: Path, since: float, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until ``path`` is written after ``since`` (True), or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_mtime > since:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


TIMING = ("train_seconds", "examples_per_second", "test/eval_seconds")


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / LAST), load_checkpoint(b / LAST)
    assert ca["epoch"] == cb["epoch"] == 40 and ca["step"] == cb["step"]
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for i, state in ca["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, cb["optimizer"]["state"][i][name]), (i, name)
    ma, mb = read_metrics(a), read_metrics(b)
    assert {k: v for k, v in ma.items() if k not in TIMING} == {
        k: v for k, v in mb.items() if k not in TIMING
    }
    sa, sb = read_scalars(a), read_scalars(b)
    assert sa.keys() == sb.keys()
    for tag in sa.keys() - TIMING:
        assert sa[tag] == sb[tag], tag  # the same steps, each once, with the same values
    assert [step for step, _ in sb["train/elbo"]] == list(range(1, 41))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = _start(run_dir)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return run_dir


def test_sigkill_at_random_moments_then_resume_ends_bit_for_bit_equal(
    reference: Path, tmp_path: Path
) -> None:
    rng = random.Random(7)
    run_dir = tmp_path / "run"
    killed_at = []
    since = 0.0
    for attempt in range(4):
        proc = _start(run_dir, *(["resume=" + str(run_dir)] if attempt else []))
        if _wait_for_checkpoint_after(run_dir / LAST, since, proc):
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGKILL:
            state = load_checkpoint(run_dir / LAST)  # never torn: atomically replaced
            killed_at.append(state["epoch"])
        since = (run_dir / LAST).stat().st_mtime
    assert len(killed_at) >= 3, killed_at  # most kills landed mid-run
    assert killed_at == sorted(killed_at) and killed_at[-1] < 40
    status = read_status(run_dir)
    assert status is not None and status["status"] == "running"  # SIGKILL leaves no chance to say more
    final = run_script(
        "train.py", *RUN, f"resume={run_dir}", "hydra.run.dir=" + str(tmp_path / "last"), cwd=tmp_path
    )
    assert f"resume: continuing {run_dir}" in final.stdout + final.stderr
    assert not list(run_dir.glob(".*.tmp"))  # a write cut short left no temporary file behind
    _assert_same_run(reference, run_dir)
    assert read_status(run_dir)["status"] == "finished"


def test_sigterm_mid_epoch_checkpoints_and_exits_with_143_then_resumes(
    reference: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    assert _wait_for_checkpoint_after(run_dir / LAST, 0.0, proc)
    time.sleep(0.03)  # inside an epoch
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM received: finishing the current step" in out
    assert f"Resume with: python scripts/train.py resume={run_dir}" in out
    assert "Traceback" not in out
    state = load_checkpoint(run_dir / LAST)
    status = read_status(run_dir)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    if state["progress"] is not None:  # stopped inside an epoch (almost always): a mid-epoch position
        assert 0 < state["progress"]["step"] < 94 and status["step"] == state["progress"]["step"]
    run_script("train.py", *RUN, f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    _assert_same_run(reference, run_dir)


def test_resume_auto_picks_up_the_unfinished_run_of_the_same_config(tmp_path: Path) -> None:
    short = [o for o in RUN if not o.startswith("epochs=")] + ["epochs=2", "dataset.n_samples=600"]
    base = ["hydra.run.dir=outputs/${now:%H-%M-%S-%f}", "resume=auto"]
    first = run_script("train.py", *short, *base, cwd=tmp_path)
    assert "no earlier run of this config" in first.stdout + first.stderr
    [run] = [p.parent for p in (tmp_path / "outputs").rglob("last.pt")]
    again = run_script("train.py", *short, *base, cwd=tmp_path)
    assert "has already finished 2 epochs: nothing to do" in again.stdout + again.stderr
    longer = run_script("train.py", *[o.replace("epochs=2", "epochs=3") for o in short], *base, cwd=tmp_path)
    assert f"resume: continuing {run}" in longer.stdout + longer.stderr
    assert read_metrics(run)["epochs"] == 3 and load_checkpoint(run / LAST)["epoch"] == 3
    other = run_script("train.py", *short, "lr=0.01", *base, cwd=tmp_path)
    assert "no earlier run of this config" in other.stdout + other.stderr


def test_a_failing_job_does_not_stop_the_sweep_and_resume_auto_skips_finished_jobs(tmp_path: Path) -> None:
    short = [o for o in RUN if not o.startswith(("epochs=", "dataset.n_samples="))]
    sweep = [
        *short,
        "epochs=2",
        "dataset.n_samples=600",
        "lr=1e-3,1e8",
        "hydra.sweep.dir=outputs/multirun/${now:%f}",
    ]
    first = run_script("train.py", "-m", *sweep, cwd=tmp_path, check=False)
    out = first.stdout + first.stderr
    assert first.returncode == 1 and "Traceback" not in out
    assert "2 jobs: 1 failed, 1 finished" in out and "1 of 2 jobs failed" in out
    [sweep_dir] = (tmp_path / "outputs" / "multirun").iterdir()
    assert "epochs" in read_metrics(sweep_dir / "0")  # the good job kept its results
    failed = read_status(sweep_dir / "1")
    assert failed["status"] == "failed" and failed["reason"].startswith("non-finite loss in epoch 1")
    counts = json.loads((sweep_dir / "summary.json").read_text())["counts"]
    assert counts == {"failed": 1, "finished": 1}
    again = run_script("train.py", "-m", *sweep, "resume=auto", cwd=tmp_path, check=False)
    [second] = [d for d in (tmp_path / "outputs" / "multirun").iterdir() if d != sweep_dir]
    jobs = json.loads((second / "summary.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["skipped", "failed"], jobs
    assert jobs[0]["run"] == str(sweep_dir / "0") and again.returncode == 1

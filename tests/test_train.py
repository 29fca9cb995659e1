"""End-to-end runs of scripts/train.py: outputs, TensorBoard, determinism, sweeps and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MOONS, hparams_tags, read_metrics, read_scalars, run_script, tiny_images
from idx_utils import write_mnist_like

from vae.status import read_status

REQUIRED = {
    "train/elbo",
    "val/elbo",
    "test/elbo",
    "test/log_px",
    "test/kl",
    "epochs",
    "train_seconds",
    "examples_per_second",
}


def check_run(run_dir: Path, epochs: int) -> dict:
    metrics = read_metrics(run_dir)
    assert metrics.keys() >= REQUIRED
    assert metrics["epochs"] == epochs
    assert metrics["test/elbo"] == pytest.approx(metrics["test/log_px"] - metrics["test/kl"])
    assert metrics["test/nll"] <= -metrics["test/elbo"]
    assert (run_dir / "eval.json").is_file()
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert ckpt["epoch"] == epochs and {"model", "optimizer", "config", "rng", "step"} <= ckpt.keys()
    assert (run_dir / "best.pt").is_file() and read_status(run_dir)["status"] == "finished"
    scalars = read_scalars(run_dir)
    for tag in ("train/elbo", "train/log_px", "train/kl", "val/elbo", "val/log_px", "val/kl"):
        assert [step for step, _ in scalars[tag]] == list(range(1, epochs + 1)), tag
    assert scalars["train/elbo"][-1][1] == pytest.approx(metrics["train/elbo"], rel=1e-5)
    assert scalars["test/elbo"][-1][1] == pytest.approx(metrics["test/elbo"], rel=1e-5)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    # One TensorBoard run per training run, carrying its own HParams row.
    assert [p.parent for p in run_dir.rglob("events.out.tfevents.*")] == [run_dir]
    assert "_hparams_/session_start_info" in hparams_tags(run_dir)
    return metrics


def test_moons_run_writes_metrics_checkpoint_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    run_script("train.py", *MOONS, "epochs=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    metrics = check_run(run_dir, epochs=3)
    scalars = read_scalars(run_dir)
    elbos = [v for _, v in scalars["train/elbo"]]
    assert elbos[-1] > elbos[0], "training should raise the ELBO"
    assert metrics["test/elbo"] > -10


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_format_run(tmp_path, gz):
    run_dir = tmp_path / "run"
    run_script(
        "train.py",
        *tiny_images(tmp_path, gz),
        "likelihood=bernoulli",
        "z_dim=2",
        "epochs=2",
        "batch_size=50",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    check_run(run_dir, epochs=2)
    assert "binarize=dynamic" in (run_dir / "train.log").read_text()


def test_same_seed_gives_identical_metrics(tmp_path):
    results = []
    for name in ("a", "b"):
        run_script("train.py", *MOONS, "epochs=2", "seed=3", f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        metrics = read_metrics(tmp_path / name)
        results.append({k: v for k, v in metrics.items() if not k.endswith(("_seconds", "_per_second"))})
    assert results[0] == results[1]
    same_figures = [(tmp_path / run / "figures" / "density.png").read_bytes() for run in ("a", "b")]
    assert same_figures[0] == same_figures[1]
    run_script("train.py", *MOONS, "epochs=2", "seed=4", f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    assert read_metrics(tmp_path / "c")["test/elbo"] != results[0]["test/elbo"]


def test_two_job_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", *MOONS, "epochs=1", "z_dim=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    for job, z_dim in (("0", 1), ("1", 2)):
        check_run(sweep / job, epochs=1)
        assert f"z_dim: {z_dim}" in (sweep / job / "config.yaml").read_text()


def test_default_output_layout(tmp_path):
    run_script("train.py", *MOONS, "epochs=1", cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert len(run_dir.parent.name) == 10 and len(run_dir.name) == 8  # outputs/YYYY-MM-DD/HH-MM-SS
    check_run(run_dir, epochs=1)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("z_dim=0", "z_dim=0 is invalid"),
        ("z_dim=abc", "could not be converted to Integer"),
        ("zdim=3", "Could not override 'zdim'"),
        ("lr=-1", "lr=-1.0 is invalid"),
        ("likelihood=foo", "Could not find 'likelihood/foo'"),
        ("hidden_dims=[]", "hidden_dims=[] is invalid"),
        ("batch_size=0", "batch_size=0 is invalid"),
        ("device=tpu", "device='tpu' is invalid"),
        ("dataset.binarize=maybe", "dataset.binarize='maybe' is invalid"),
        ("activation=swish", "activation='swish' is invalid"),
    ],
)
def test_bad_config_values_fail_fast_with_a_clear_message(tmp_path, override, expected):
    proc = run_script("train.py", override, "dataset.download=false", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert expected in output
    assert "Traceback" not in output
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("metrics.json"))


def test_bernoulli_on_moons_is_refused(tmp_path):
    proc = run_script("train.py", "dataset=moons", "likelihood=bernoulli", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "likelihood=bernoulli is invalid for dataset=moons" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_corrupt_idx_file_gives_a_clear_error(tmp_path):
    root = tmp_path / "data"
    write_mnist_like(root, n_train=50, n_test=20, gz=False)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # truncated
    proc = run_script("train.py", f"dataset.root={root}", "dataset.val_size=10", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert "train-images-idx3-ubyte" in output and "Traceback" not in output


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py", *MOONS, "epochs=3", "lr=1e30", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert "non-finite loss in epoch" in output and "Traceback" not in output
    assert not (run_dir / "metrics.json").exists()

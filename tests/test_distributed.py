"""Data-parallel training through torchrun (2 CPU processes, Gloo): it finishes, only rank 0 writes, and it
matches the single-process run with the same global batch within sampling noise."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch
import torch.distributed as dist
from conftest import REPO, read_metrics, read_scalars, run_script

from vae.checkpoint import LAST, load_checkpoint

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or shutil.which("torchrun") is None,
    reason="needs torch.distributed with Gloo and torchrun",
)

RUN = [
    "dataset=moons",
    "likelihood=gaussian",
    "dataset.n_samples=3000",
    "dataset.val_size=200",
    "dataset.test_size=200",
    "hidden_dims=[16]",
    "z_dim=2",
    "batch_size=64",  # the global batch: 32 per process under torchrun --nproc_per_node=2
    "lr=3e-3",
    "epochs=8",
    "eval.iw_samples=50",
    "plot.enabled=false",
    "device=cpu",
]
# Both runs see the same batches; only the noise (reparameterisation) differs, drawn per process. Over 8
# epochs on 2,600 points the ELBOs of two such runs differ by a few hundredths of a nat.
TOLERANCE_NATS = 0.1


def test_torchrun_two_processes_match_one_process(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    proc = subprocess.run(
        ["torchrun", "--standalone", "--nproc_per_node=2", str(REPO / "scripts" / "train.py"), *RUN,
         f"hydra.run.dir={ddp_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_script("train.py", *RUN, f"hydra.run.dir={single_dir}", cwd=tmp_path)

    # Rank 0 alone writes: one TensorBoard event file, each epoch logged once, both ranks' noise saved.
    assert len(list(ddp_dir.glob("events.out.tfevents.*"))) == 1
    log = (ddp_dir / "train.log").read_text()
    assert "on cpu x 2 processes" in log
    assert [log.count(f"epoch {e}/8 ") for e in range(1, 9)] == [1] * 8
    assert len(load_checkpoint(ddp_dir / LAST)["rng_ranks"]) == 2

    a, b = read_metrics(ddp_dir), read_metrics(single_dir)
    for key in ("train/elbo", "val/elbo", "test/elbo", "test/nll"):
        assert abs(a[key] - b[key]) < TOLERANCE_NATS, (key, a[key], b[key])
    curve_a, curve_b = read_scalars(ddp_dir)["train/elbo"], read_scalars(single_dir)["train/elbo"]
    assert [s for s, _ in curve_a] == [s for s, _ in curve_b] == list(range(1, 9))
    assert max(abs(x - y) for (_, x), (_, y) in zip(curve_a, curve_b, strict=True)) < TOLERANCE_NATS

    # Resuming needs as many processes as trained the run (each process's noise is in the checkpoint).
    again = run_script("train.py", f"resume={ddp_dir}", "epochs=9", f"hydra.run.dir={tmp_path / 'r'}",
                       cwd=tmp_path, check=False)  # fmt: skip
    assert again.returncode == 2 and "it was trained with 2" in again.stdout + again.stderr


def test_bf16_autocast_trains_close_to_float32(tmp_path) -> None:
    """amp=bf16 runs the networks in bfloat16 but keeps the log-densities in float32."""
    short = [o for o in RUN if not o.startswith("epochs=")] + ["epochs=3"]
    run_script("train.py", *short, "amp=bf16", f"hydra.run.dir={tmp_path / 'bf16'}", cwd=tmp_path)
    run_script("train.py", *short, f"hydra.run.dir={tmp_path / 'fp32'}", cwd=tmp_path)
    a, b = read_metrics(tmp_path / "bf16"), read_metrics(tmp_path / "fp32")
    assert abs(a["test/elbo"] - b["test/elbo"]) < 0.1, (a["test/elbo"], b["test/elbo"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_bf16_autocast_and_tf32_trains(tmp_path) -> None:
    short = [o for o in RUN if not o.startswith(("epochs=", "device="))] + ["epochs=2", "device=cuda"]
    run_script("train.py", *short, "amp=bf16", "tf32=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert read_metrics(tmp_path / "run")["test/elbo"] > -10

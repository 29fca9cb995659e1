"""The benchmark: its FLOP count, its loss-equivalence check, and one quick run of the script."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import run_script

from vae.benchmark import load_images, loss_curve_check, mlp_train_flops, train_config


def test_train_flops_of_the_reference_model() -> None:
    # 784-400-40 encoder and 20-400-784 decoder: 651,200 multiply-adds, 1,302,400 FLOPs forward; as many
    # for the weight gradients, as many less the first layer's 627,200 for the input gradients.
    flops = mlp_train_flops(784, [400], 20)
    assert flops == 3 * 1_302_400 - 627_200 == 3_280_000
    assert 3.0e6 <= flops <= 3.6e6


def test_loss_curve_of_the_project_equals_the_baseline() -> None:
    x = load_images(256, seed=1)
    check = loss_curve_check(train_config(4, [32], "analytic"), x, 4, torch.device("cpu"))
    assert check["passed"], check
    assert check["steps"] == 2 and len(check["losses"]) == 2


def test_quick_benchmark_writes_json_and_markdown(tmp_path: Path) -> None:
    proc = run_script("benchmark.py", "--quick", "--device", "cpu", "--out", str(tmp_path), cwd=tmp_path)
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert (tmp_path / "benchmark.md").read_text() in proc.stdout
    assert set(result) == {"machine", "settings", "train_flops_per_example", "devices"}
    cpu = result["devices"]["cpu"]
    assert cpu["gemm"]["layer_gflops"] > 0 and cpu["gemm"]["square_gflops"] > 0
    assert set(cpu["training"]) == {
        "project_reference",
        "baseline_reference",
        "project_default",
        "baseline_default",
    }
    for row in [*cpu["training"].values(), *cpu["evaluation"].values()]:
        assert row["examples_per_second"] > 0 and row["times_floor"] > 0
    for row in cpu["training"].values():
        assert (
            len(row["epoch_seconds"]) == 3 and row["seconds_per_epoch"] > 0 and row["speedup_vs_baseline"] > 0
        )
    assert set(cpu["evaluation"]) == {"elbo", "iwae"} and cpu["evaluation"]["iwae"]["samples"] == 50
    assert cpu["checks"]["loss_curve"]["passed"] and cpu["checks"]["iwae_chunked"]["passed"]

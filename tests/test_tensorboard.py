"""TensorBoard as users meet it: a real server over a real two-job sweep, queried through its HTTP API;
and scripts/plot.py redrawing that sweep's figures from the checkpoints."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_script
from idx_utils import write_mnist_like

IMAGE_FIGURES = {
    2: {"samples", "reconstructions", "manifold", "latent_scatter", "kl_per_dim", "kl_per_dim_epochs"},
    3: {"samples", "reconstructions", "tsne", "kl_per_dim", "kl_per_dim_epochs"},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two jobs on tiny MNIST-format data: z_dim 2 (manifold) and 3 (t-SNE and projector)."""
    tmp = tmp_path_factory.mktemp("tb")
    write_mnist_like(tmp / "data", n_train=300, n_test=100)
    run_script(
        "train.py",
        "-m",
        f"dataset.root={tmp / 'data'}",
        "dataset.download=false",
        "dataset.val_size=100",
        "z_dim=2,3",
        "hidden_dims=[16]",
        "epochs=2",
        "eval.iw_samples=10",
        "plot.tsne_points=50",
        "plot.embedding_points=40",
        "device=cpu",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        cwd=tmp,
    )
    return tmp / "sweep"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(sweep):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(sweep),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    sorted(get(base, "/data/runs")) == ["0", "1"]
                    and len(get(base, "/data/plugin/images/tags")) == 2
                ):
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "TensorBoard did not load both runs within 60 s"
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(base: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_runs_scalars_images_projector_and_hparams(server, sweep):
    scalars = get(server, "/data/plugin/scalars/tags")
    for run in ("0", "1"):
        assert {"train/elbo", "val/elbo", "val/kl", "test/elbo", "test/nll", "test/active_units"} <= set(
            scalars[run]
        )
    series = get(server, "/data/plugin/scalars/scalars?run=0&tag=train/elbo")
    assert [step for _, step, _ in series] == [1, 2]

    images = get(server, "/data/plugin/images/tags")
    for run, z_dim in (("0", 2), ("1", 3)):
        assert {f"figures/{name}" for name in IMAGE_FIGURES[z_dim]} <= set(images[run])

    assert get(server, "/data/plugin/projector/runs") == ["1"]
    (embedding,) = get(server, "/data/plugin/projector/info?run=1")["embeddings"]
    assert embedding["tensorShape"] == [40, 3] and embedding["sprite"]["singleImageDim"] == [28, 28]

    experiment = get(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"z_dim", "likelihood", "lr", "hidden_dims"} <= {h["name"] for h in experiment["hparamInfos"]}
    assert {"test/elbo", "test/nll"} <= {m["name"]["tag"] for m in experiment["metricInfos"]}
    groups = get(
        server,
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "startIndex": 0,
            "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        },
    )["sessionGroups"]
    assert sorted((g["name"], g["hparams"]["z_dim"]) for g in groups) == [
        ("0", 2.0),
        ("1", 3.0),
    ]  # one row each
    for group in groups:
        metrics = json.loads((sweep / group["name"] / "metrics.json").read_text())
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        for tag in ("test/elbo", "test/nll", "test/active_units", "val/elbo"):
            assert values[tag] == pytest.approx(metrics[tag], rel=1e-5)


def test_plot_script_redraws_every_run_of_the_sweep(sweep):
    for job in ("0", "1"):
        shutil.rmtree(sweep / job / "figures")
    run_script("plot.py", f"run={sweep}", "plot.tsne_points=50", "plot.embedding_points=40", cwd=sweep)
    for job, z_dim in (("0", 2), ("1", 3)):
        assert {p.stem for p in (sweep / job / "figures").glob("*.png")} == IMAGE_FIGURES[z_dim]

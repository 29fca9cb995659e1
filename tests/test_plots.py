"""The figures: every expected PNG for each data kind and latent size, logged to TensorBoard, reproducible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae.config import PlotConfig
from vae.data.datasets import Splits
from vae.data.moons import make_moons
from vae.likelihoods import Bernoulli, Gaussian
from vae.model import VAE
from vae.plots import make_figures
from vae.tracking import Tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_CFG = PlotConfig(tsne_points=50, embedding_points=40, density_grid=12, density_samples=8)
IMAGE_FIGURES = {"kl_per_dim", "samples", "reconstructions"}
POINT_FIGURES = {"kl_per_dim", "data_reconstructions_samples", "latent", "density"}
CASES = {
    ("images", 2): IMAGE_FIGURES | {"manifold", "latent_scatter"},
    ("images", 5): IMAGE_FIGURES | {"tsne"},
    ("moons", 1): POINT_FIGURES,
    ("moons", 2): POINT_FIGURES,
    ("moons", 3): POINT_FIGURES,
}


def _setup(kind: str, z_dim: int) -> tuple[VAE, Splits]:
    """An untrained small model and small splits (60 test examples): the figures only need shapes."""
    torch.manual_seed(0)
    if kind == "images":
        x = torch.bernoulli(torch.full((100, 784), 0.3))
        y = torch.arange(100) % 10
        data = Splits(x[:20], x[20:40], x[40:], y[:20], y[20:40], y[40:], image_shape=(28, 28))
        return VAE(784, z_dim, [16], Bernoulli()), data
    x, y = (torch.from_numpy(a) for a in make_moons(160, 0.1, seed=0))
    data = Splits(x[:60], x[60:100], x[100:], y[:60], y[60:100], y[100:])
    return VAE(2, z_dim, [16], Gaussian()), data


def _logged_images(log_dir: Path) -> dict[str, list[int]]:
    """The image summaries in the event files as tag -> steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


@pytest.mark.parametrize(("kind", "z_dim"), list(CASES), ids=[f"{k}-z{z}" for k, z in CASES])
def test_make_figures_writes_and_logs_every_figure(tmp_path: Path, kind: str, z_dim: int) -> None:
    from matplotlib.image import imread

    model, data = _setup(kind, z_dim)
    model.train()
    tracker = Tracker(tmp_path / "tb")
    try:
        paths = make_figures(model, data, PLOT_CFG, tmp_path / "figures", tracker, step=7)
    finally:
        tracker.close()

    names = CASES[kind, z_dim]
    assert sorted(p.name for p in paths) == sorted(f"{name}.png" for name in names)
    # Written atomically: no temporary files left beside the figures.
    assert sorted((tmp_path / "figures").iterdir()) == sorted(paths)
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC, path.name
        height, width, channels = imread(path).shape
        assert height > 100 and width > 100 and channels in (3, 4), path.name
    assert _logged_images(tmp_path / "tb") == {f"figures/{name}": [7] for name in names}
    assert model.training, "make_figures must restore the model's training mode"

    projector = kind == "images" and z_dim > 2
    assert (tmp_path / "tb" / "projector_config.pbtxt").is_file() == projector
    if projector:
        (folder,) = (tmp_path / "tb").glob("*/test_encodings")
        for name in ("tensors.tsv", "metadata.tsv", "sprite.png"):
            assert (folder / name).is_file(), name
        assert len((folder / "tensors.tsv").read_text().splitlines()) == PLOT_CFG.embedding_points


def test_figures_are_reproducible_and_leave_the_global_rng_alone(tmp_path: Path) -> None:
    model, data = _setup("moons", 2)
    state = torch.get_rng_state()
    first = make_figures(model, data, PLOT_CFG, tmp_path / "a", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    second = make_figures(model, data, PLOT_CFG, tmp_path / "b", seed=3)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_import_does_not_load_matplotlib_or_sklearn() -> None:
    code = (
        "import sys, vae.plots; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'sklearn')]; "
        "assert not loaded, loaded"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

"""Figures of a trained VAE: its samples, reconstructions and latent space and, for 2-d data, its density.

matplotlib and scikit-learn are imported inside the functions that need them, so importing this module stays
cheap for runs that never plot. Figures are drawn on their own Agg canvas, never through pyplot, so plotting
sets no global backend, works without a display and leaves no figure registered anywhere once freed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vae.config import PlotConfig
from vae.data.datasets import Splits
from vae.diagnostics import kl_per_dim
from vae.evaluate import log_likelihood
from vae.files import atomic_write
from vae.model import VAE, eval_mode

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from vae.tracking import Tracker

DPI = 100
GRID_COLS = 10  # images per row of the samples and reconstructions grids
RECON_PAIRS = 4  # rows of originals, each with its row of reconstructions below
MANIFOLD_STEPS = 20
PRIOR_COLOUR = "0.6"

Figures = Iterator[tuple[str, "Figure"]]  # (name, figure), drawn one at a time


@dataclass
class _Context:
    """What the figures draw on: the model, the encoded test split and the seeded random sources."""

    model: VAE
    x: torch.Tensor
    labels: np.ndarray
    mean: torch.Tensor
    log_var: torch.Tensor
    kl: np.ndarray
    plot_cfg: PlotConfig
    seed: int
    gen: torch.Generator
    rng: np.random.Generator


def make_figures(
    model: VAE,
    data: Splits,
    plot_cfg: PlotConfig,
    out_dir: str | Path,
    tracker: Tracker | None = None,
    step: int = 0,
    seed: int = 0,
) -> list[Path]:
    """Write the figures for ``data``'s kind (images or 2-d points) from its test split as ``<name>.png`` in
    ``out_dir``, log each to ``tracker`` as ``figures/<name>`` and return the paths written.

    Every draw comes from generators seeded with ``seed``: a model always gives the same figures, and the
    global random state (training's) is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    x, labels = (t.to(device) for t in data.split("test"))
    paths = []
    with eval_mode(model), torch.no_grad():
        mean, log_var = model.encoder(x)
        ctx = _Context(
            model,
            x,
            labels.cpu().numpy(),
            mean,
            log_var,
            kl_per_dim(mean, log_var).cpu().numpy(),
            plot_cfg,
            seed,
            torch.Generator(device=device).manual_seed(seed),
            np.random.default_rng(seed),
        )
        if data.image_shape is None:
            figures = _point_figures(ctx)
        else:
            figures = _image_figures(ctx, data.image_shape, tracker, step)
        for name, fig in chain([("kl_per_dim", _kl_figure(ctx.kl))], figures):
            paths.append(_save(fig, out_dir / f"{name}.png", tracker, step))
    return paths


def _save(fig: Figure, path: Path, tracker: Tracker | None, step: int) -> Path:
    """Write the figure as a PNG atomically (a crash never leaves a torn file), log it, then free it."""
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        if tracker is not None:
            tracker.figure(f"figures/{path.stem}", fig, step)
    finally:
        fig.clear()
    return path


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure on its own Agg canvas (no pyplot state) with ``ncols`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(1, ncols)))


def _kl_figure(kl: np.ndarray) -> Figure:
    """Bars of KL(q(z_u|x) || N(0, 1)) per unit: the units the model uses stand out from collapsed ones."""
    dims = np.arange(len(kl))
    fig, (ax,) = _figure(max(5.0, 0.25 * len(dims) + 2), 3.5)
    ax.bar(dims, kl)
    ax.set_xticks(dims[:: -(-len(dims) // 25)])  # at most 25 tick labels
    ax.set(xlabel="latent dimension u", ylabel="mean KL (nats)")
    ax.set_title("Test KL(q(z_u|x) || N(0, 1)) per dimension\nKL near 0: inactive unit (posterior = prior)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _scatter_by_label(ax: Axes, points: np.ndarray, labels: np.ndarray, size: float = 3) -> None:
    """One colour per class, with a legend, so that clusters in any 2-d view can be matched to classes."""
    for c in np.unique(labels):
        keep = labels == c
        ax.scatter(*points[keep].T, s=size, color=f"C{c % 10}", label=str(c), alpha=0.8, linewidths=0)
    ax.legend(markerscale=8 / size**0.5, fontsize="small", title="label")


# Images


def _image_figures(ctx: _Context, shape: tuple[int, int], tracker: Tracker | None, step: int) -> Figures:
    """Samples and reconstructions, then the latent space: a decoded grid and a scatter in 2-d, else t-SNE."""
    model, x = ctx.model, ctx.x
    samples = model.sample(GRID_COLS * GRID_COLS, mean=True, generator=ctx.gen)
    yield "samples", _image_figure(_tile(samples, shape, GRID_COLS), "Decoder means E[x|z] for z ~ N(0, I)")

    idx = torch.as_tensor(ctx.rng.choice(len(x), min(RECON_PAIRS * GRID_COLS, len(x)), replace=False))
    recons = model.likelihood.mean(model.decoder(ctx.mean[idx]))
    yield "reconstructions", _reconstruction_figure(x[idx], recons, shape)

    if model.z_dim == 2:
        yield "manifold", _manifold_figure(model, shape)
        fig, (ax,) = _figure(6, 5.5)
        _scatter_by_label(ax, ctx.mean.cpu().numpy(), ctx.labels)
        ax.set(xlabel="z_0", ylabel="z_1", title="Test posterior means E[z|x]")
        yield "latent_scatter", fig
    elif model.z_dim > 2:
        yield "tsne", _tsne_figure(ctx)
        if tracker is not None:
            n = min(ctx.plot_cfg.embedding_points, len(x))
            thumbs = x[:n].reshape(n, 1, *shape).clamp(0, 1).cpu()
            tracker.embedding("test_encodings", ctx.mean[:n].cpu(), ctx.labels[:n].tolist(), thumbs, step)


def _tile(images: torch.Tensor, shape: tuple[int, int], cols: int, pad: int = 1) -> np.ndarray:
    """Flat images (n, H*W) as one grey picture, ``cols`` per row, ``pad`` mid-grey pixels between cells."""
    h, w = shape
    rows = -(-len(images) // cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5, dtype=np.float32)
    for i, cell in enumerate(images.reshape(-1, h, w).clamp(0, 1).cpu().numpy()):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        canvas[top : top + h, left : left + w] = cell
    return canvas


def _image_figure(canvas: np.ndarray, title: str) -> Figure:
    """One tiled grey picture; no ticks or frame, but the axes stay on for callers' labels."""
    width = max(6.0, 1.5 + canvas.shape[1] / DPI)  # at least one output pixel per image pixel
    fig, (ax,) = _figure(width, width * canvas.shape[0] / canvas.shape[1] + 0.5)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set(xticks=[], yticks=[], title=title)
    ax.spines[:].set_visible(False)
    return fig


def _reconstruction_figure(originals: torch.Tensor, recons: torch.Tensor, shape: tuple[int, int]) -> Figure:
    """Each row of originals directly above its reconstructions, so that they compare cell by cell."""
    n, d = originals.shape
    rows = -(-n // GRID_COLS)
    blank = torch.full((rows * GRID_COLS - n, d), 0.5, dtype=originals.dtype, device=originals.device)
    pairs = torch.stack([torch.cat([originals, blank]), torch.cat([recons, blank])])
    interleaved = pairs.reshape(2, rows, GRID_COLS, d).transpose(0, 1).reshape(-1, d)
    fig = _image_figure(_tile(interleaved, shape, GRID_COLS), "Test images and their reconstructions")
    row_centres = [1 + (shape[0] + 1) * (i + 0.5) for i in range(2 * rows)]
    fig.axes[0].set_yticks(row_centres, ["original", "reconstruction"] * rows)
    fig.axes[0].tick_params(length=0)
    return fig


def _manifold_figure(model: VAE, shape: tuple[int, int]) -> Figure:
    """Decoder means over an even grid of the prior's quantiles, so equal areas have equal prior mass."""
    device = next(model.parameters()).device
    z = torch.special.ndtri(torch.linspace(0.025, 0.975, MANIFOLD_STEPS, device=device))
    grid = torch.stack([z.repeat(MANIFOLD_STEPS), z.flip(0).repeat_interleave(MANIFOLD_STEPS)], dim=1)
    canvas = _tile(model.likelihood.mean(model.decoder(grid)), shape, MANIFOLD_STEPS, pad=0)
    fig = _image_figure(canvas, "Decoder means over the latent plane")
    ends = [shape[1] / 2, canvas.shape[1] - shape[1] / 2]
    lo, hi = f"{z[0]:.2f}", f"{z[-1]:.2f}"
    fig.axes[0].set(xticks=ends, xticklabels=[lo, hi], xlabel="z_0")
    fig.axes[0].set(yticks=ends, yticklabels=[hi, lo], ylabel="z_1")
    return fig


def _tsne_figure(ctx: _Context) -> Figure:
    """A 2-d t-SNE map of a random subsample of test posterior means: do classes separate in latent space?"""
    from sklearn.manifold import TSNE

    n = min(ctx.plot_cfg.tsne_points, len(ctx.mean))
    idx = ctx.rng.choice(len(ctx.mean), n, replace=False)
    tsne = TSNE(2, init="pca", random_state=ctx.seed, perplexity=min(30.0, (n - 1) / 3))
    embedded = tsne.fit_transform(ctx.mean[torch.as_tensor(idx)].cpu().numpy())
    fig, (ax,) = _figure(6, 5.5)
    _scatter_by_label(ax, embedded, ctx.labels[idx])
    ax.set(xticks=[], yticks=[], title=f"t-SNE of {n} test posterior means E[z|x] (z_dim={ctx.model.z_dim})")
    return fig


# 2-d points


def _point_figures(ctx: _Context) -> Figures:
    """Data, reconstructions and samples side by side, the latent space, and the model's density."""
    model, x = ctx.model, ctx.x
    z = model.sample_posterior(ctx.mean, ctx.log_var, 1, ctx.gen)[0]
    panels = [
        ("test data", x, ctx.labels),
        ("reconstructions (z ~ q(z|x))", model.likelihood.mean(model.decoder(z)), ctx.labels),
        ("samples x ~ p(x|z), z ~ N(0, I)", model.sample(len(x), mean=False, generator=ctx.gen), None),
    ]
    points = [p.cpu().numpy() for _, p, _ in panels]
    stacked = np.concatenate(points)
    lo, hi = stacked.min(0), stacked.max(0)
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    fig, axes = _figure(15, 5, ncols=3)
    for ax, (title, _, labels), p in zip(axes, panels, points, strict=True):
        if labels is None:
            ax.scatter(*p.T, s=3, color=PRIOR_COLOUR, linewidths=0)
        else:
            _scatter_by_label(ax, p, labels)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="x_0", ylabel="x_1", title=title)
    yield "data_reconstructions_samples", fig
    yield "latent", _latent_figure(ctx)
    yield "density", _density_figure(ctx)


def _latent_figure(ctx: _Context) -> Figure:
    """Encodings over prior draws: holes or overlaps between q(z) and p(z) show where samples go wrong.

    With more than two dimensions it shows the two carrying the most KL, the ones the model uses most.
    """
    mean = ctx.mean.cpu().numpy()
    prior = torch.randn(len(mean), ctx.model.z_dim, generator=ctx.gen, device=ctx.gen.device).cpu().numpy()
    fig, (ax,) = _figure(6, 5.5)
    if ctx.model.z_dim == 1:
        bins = np.linspace(min(mean.min(), prior.min()), max(mean.max(), prior.max()), 30)
        classes = np.unique(ctx.labels)
        by_class = [mean[ctx.labels == c, 0] for c in classes]
        names = [f"E[z|x], label {c}" for c in classes]
        ax.hist(by_class, bins, density=True, stacked=True, alpha=0.7, label=names)
        ax.hist(prior[:, 0], bins, density=True, histtype="step", lw=1.5, color="0.3", label="z ~ N(0, 1)")
        ax.legend(fontsize="small")
        ax.set(xlabel="z_0", ylabel="density", title="Test posterior means over the prior")
        return fig
    dims = np.argsort(-ctx.kl, kind="stable")[:2]
    ax.scatter(*prior[:, dims].T, s=3, color=PRIOR_COLOUR, alpha=0.4, linewidths=0, label="z ~ N(0, I)")
    _scatter_by_label(ax, mean[:, dims], ctx.labels)
    ax.set(xlabel=f"z_{dims[0]} (KL {ctx.kl[dims[0]]:.2f})", ylabel=f"z_{dims[1]} (KL {ctx.kl[dims[1]]:.2f})")
    which = ", top-2 KL dims" if ctx.model.z_dim > 2 else ""
    ax.set_title(f"Test posterior means E[z|x] over prior draws{which}")
    return fig


def _density_figure(ctx: _Context) -> Figure:
    """The importance-weighted p(x) on a grid over the data with the test points on top: mass off the moons,
    or moons the density misses, show at a glance."""
    x = ctx.x
    g = max(2, ctx.plot_cfg.density_grid)  # contours need at least a 2 x 2 grid
    lo, hi = x.min(0).values, x.max(0).values
    lo, hi = lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo)
    xs, ys = (torch.linspace(lo[i].item(), hi[i].item(), g, dtype=x.dtype, device=x.device) for i in range(2))
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    log_p = log_likelihood(ctx.model, grid, ctx.plot_cfg.density_samples, generator=ctx.gen)
    fig, (ax,) = _figure(6.5, 5.5)
    density = log_p.exp().reshape(g, g).cpu().numpy()
    filled = ax.contourf(xs.cpu().numpy(), ys.cpu().numpy(), density, levels=20, cmap="Blues")
    fig.colorbar(filled, ax=ax, label="p(x)")
    ax.scatter(*x.cpu().numpy().T, s=2, color="tab:red", alpha=0.7, linewidths=0, label="test data")
    ax.legend(loc="upper right", markerscale=5, fontsize="small")
    ax.set(xlabel="x_0", ylabel="x_1", aspect="equal")
    ax.set_title(f"Model density p(x) (importance-weighted, K={ctx.plot_cfg.density_samples})")
    return fig


def kl_history_figure(run_dir: str | Path, tracker: Tracker | None = None, step: int = 0) -> Path | None:
    """``figures/kl_per_dim_epochs.png``: each latent dimension's KL over the epochs, from the run's
    TensorBoard scalars ``diag/kl_per_dim/<u>`` (None when the run logged no diagnostics). It shows when
    units switch on or off: the signature of warm-up, collapse and surplus dimensions."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("diag/kl_per_dim/")]
    if not tags:
        return None
    fig, (ax,) = _figure(6.0, 3.8)
    for tag in sorted(tags, key=lambda t: int(t.rsplit("/", 1)[1])):
        events = acc.Scalars(tag)
        ax.plot([e.step for e in events], [e.value for e in events], label=f"z_{tag.rsplit('/', 1)[1]}")
    ax.set(xlabel="epoch", ylabel="KL (nats)", title="Validation KL(q(z_u|x) || N(0, 1)) per dimension")
    if len(tags) <= 16:
        ax.legend(fontsize="small", ncols=2)
    ax.grid(alpha=0.3)
    return _save(fig, run_dir / "figures" / "kl_per_dim_epochs.png", tracker, step)

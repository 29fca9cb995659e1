"""Build train/val/test tensors for the configured data set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vae.config import DatasetConfig, ImageDatasetConfig, MoonsConfig


@dataclass
class Splits:
    """Float tensors (N, D) and int64 labels (N,) per split.

    ``binarize_train`` asks the batcher for dynamic binarisation of each training batch; the val and test
    sets are then already binarised once, with a fixed seed, so their scores are comparable across runs.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    image_shape: tuple[int, int] | None = None
    binarize_train: bool = False

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]

    def to(self, device: torch.device | str) -> Splits:
        for name in ("train", "val", "test", "train_labels", "val_labels", "test_labels"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The data and labels of ``train``, ``val`` or ``test``."""
        return getattr(self, name), getattr(self, f"{name}_labels")


def load_data(dataset: DatasetConfig, binarize: str = "none") -> Splits:
    """The splits of ``dataset``; ``binarize`` is the resolved mode (none, static or dynamic)."""
    if isinstance(dataset, MoonsConfig):
        return _moons(dataset)
    if isinstance(dataset, ImageDatasetConfig):
        return _images(dataset, binarize)
    raise TypeError(f"unknown dataset config {type(dataset).__name__}")


def _moons(cfg: MoonsConfig) -> Splits:
    from vae.data.moons import make_moons

    x, y = make_moons(cfg.n_samples, cfg.noise, cfg.seed)
    n_train = cfg.n_samples - cfg.val_size - cfg.test_size
    # Standardise with training statistics only, so val and test stay unseen.
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    x = torch.from_numpy((x - mean) / std)
    y = torch.from_numpy(y)
    a, b = n_train, n_train + cfg.val_size
    return Splits(x[:a], x[a:b], x[b:], y[:a], y[a:b], y[b:])


def _images(cfg: ImageDatasetConfig, binarize: str) -> Splits:
    from vae.data.idx import load_images_and_labels

    train_images, train_labels, test_images, test_labels = load_images_and_labels(
        cfg.name, cfg.root, download=cfg.download
    )
    image_shape = tuple(train_images.shape[1:])
    n_train = train_images.shape[0] - cfg.val_size
    if n_train <= 0:
        from vae.errors import ConfigError

        raise ConfigError(
            f"dataset.val_size={cfg.val_size} is invalid: the training file holds only "
            f"{train_images.shape[0]} images; choose fewer."
        )

    def to_unit(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)

    x_train, x_test = to_unit(train_images), to_unit(test_images)
    y_train, y_test = torch.from_numpy(train_labels), torch.from_numpy(test_labels)
    x_train, x_val = x_train[:n_train], x_train[n_train:]
    gen = torch.Generator().manual_seed(cfg.binarize_seed)
    if binarize == "static":
        x_train = torch.bernoulli(x_train, generator=gen)
    if binarize in ("static", "dynamic"):
        x_val = torch.bernoulli(x_val, generator=gen)
        x_test = torch.bernoulli(x_test, generator=gen)
    return Splits(
        x_train,
        x_val,
        x_test,
        y_train[:n_train],
        y_train[n_train:],
        y_test,
        image_shape=image_shape,
        binarize_train=binarize == "dynamic",
    )

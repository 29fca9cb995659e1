"""Write small IDX files so tests never need the real data sets or the network."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from vae.data.idx import FILES

_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def write_idx(path: str | os.PathLike, array: np.ndarray, gz: bool) -> Path:
    """Write ``array`` as an IDX file at ``path`` (gzipped when ``gz``); return the path."""
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, _TYPE_CODES[big_endian], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=big_endian).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_mnist_like(
    root: str | os.PathLike, n_train: int, n_test: int, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four MNIST files (random 28x28 uint8 images, labels 0..9) into ``root``; return them."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for role, array in arrays.items():
        write_idx(root / (FILES[role] + (".gz" if gz else "")), array, gz)
    return arrays

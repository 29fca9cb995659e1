"""Bad data files: every kind is refused with one clear line naming the file, in process and through the real
training script (exit status 2, one ERROR line, no traceback, nothing left behind).

Images of another size than MNIST's 28x28 are accepted as long as every file agrees: the model takes any
flattened size.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script
from idx_utils import write_idx, write_mnist_like

from vae.config import ImageDatasetConfig
from vae.data.datasets import load_data
from vae.data.idx import FILES
from vae.errors import DataError

N_TRAIN, N_TEST, VAL = 60, 20, 10
RNG = np.random.default_rng(1)


def gz_path(root: Path, role: str) -> Path:
    return root / f"{FILES[role]}.gz"


def raw_path(root: Path, role: str) -> Path:
    return root / FILES[role]


def _replace(role: str, array: np.ndarray) -> Callable[[Path], Path]:
    """Put ``array`` (a well-formed IDX file of the wrong content) in place of ``role``'s file."""

    def mangle(root: Path) -> Path:
        return write_idx(gz_path(root, role), array, gz=True)

    return mangle


def _bytes(role: str, edit: Callable[[bytes], bytes], gz: bool = True) -> Callable[[Path], Path]:
    """Rewrite ``role``'s file (gzipped, or first unzipped to its raw form) with ``edit`` of its bytes."""

    def mangle(root: Path) -> Path:
        path = gz_path(root, role)
        data = path.read_bytes()
        if not gz:
            path.unlink()
            path, data = raw_path(root, role), gzip.decompress(data)
        path.write_bytes(edit(data))
        return path

    return mangle


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _swapped(root: Path) -> Path:
    images, labels = gz_path(root, "train_images"), gz_path(root, "train_labels")
    image_bytes = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(image_bytes)
    return images


def _missing(root: Path) -> str:
    gz_path(root, "test_labels").unlink()
    return f"missing {FILES['test_labels']}"


def _in_the_way(make: Callable[[Path], None]) -> Callable[[Path], Path]:
    """Something that is not a file where the (removed) raw training images file belongs."""

    def mangle(root: Path) -> Path:
        gz_path(root, "train_images").unlink()
        path = raw_path(root, "train_images")
        make(path)
        return path

    return mangle


def _no_test_images(root: Path) -> Path:
    """Well-formed test files that agree, and hold nothing."""
    _replace("test_labels", np.zeros(0, np.uint8))(root)
    return _replace("test_images", np.zeros((0, 28, 28), np.uint8))(root)


def _header_dim(value: int) -> Callable[[bytes], bytes]:
    """Set the first dimension of a raw IDX header to ``value`` (the payload stays as it is)."""
    return lambda data: data[:4] + value.to_bytes(4, "big") + data[8:]


IMAGES = (N_TRAIN, 28, 28)
BAD = {
    # id: (what to break, what the message says)
    "missing-file": (_missing, "turn download on"),
    "empty-file": (_bytes("train_images", lambda b: b""), "not an IDX file (bad magic bytes none)"),
    "empty-gzip": (_bytes("train_images", lambda b: gzip.compress(b"")), "not an IDX file"),
    "html-error-page": (
        _bytes("train_labels", lambda b: b"<html>404 Not Found</html>"),
        "not an IDX file (bad magic bytes 3c68746d)",
    ),
    "truncated-gzip": (_bytes("train_images", lambda b: b[: len(b) // 2]), "corrupt or truncated gzip"),
    "corrupt-gzip": (_bytes("train_images", _flip_middle), "corrupt or truncated gzip"),
    "truncated-raw": (_bytes("train_images", lambda b: b[:-100], gz=False), "truncated: header declares"),
    "trailing-bytes": (_bytes("test_images", lambda b: b + b"\0" * 7, gz=False), "trailing bytes"),
    "truncated-header": (_bytes("test_labels", lambda b: b[:6], gz=False), "truncated IDX header"),
    "unknown-type-code": (
        _bytes("train_labels", lambda b: b[:2] + b"\x07" + b[3:], gz=False),
        "type code 0x07",
    ),
    "header-overstates-count": (
        _bytes("train_images", _header_dim(N_TRAIN * 1000), gz=False),
        "truncated: header declares shape (60000, 28, 28)",
    ),
    "images-1d": (
        _replace("train_images", RNG.integers(0, 10, N_TRAIN, dtype=np.uint8)),
        "looks like a labels",
    ),
    "images-2d": (_replace("train_images", np.zeros((N_TRAIN, 784), np.uint8)), "shape (N, H, W), got uint8"),
    "images-4d": (_replace("test_images", np.zeros((N_TEST, 1, 28, 28), np.uint8)), "shape (N, H, W), got"),
    "float-images": (
        _replace("train_images", np.zeros(IMAGES, ">f4")),
        "uint8 images of shape (N, H, W), got float",
    ),
    "labels-2d": (
        _replace("train_labels", np.zeros((N_TRAIN, 1), np.uint8)),
        "labels of shape (N,), got uint8",
    ),
    "float-labels": (
        _replace("test_labels", np.zeros(N_TEST, ">f8")),
        "integer labels of shape (N,), got float64",
    ),
    "images-as-labels": (_replace("train_labels", np.zeros(IMAGES, np.uint8)), "looks like an images file"),
    "swapped-files": (_swapped, "the two files are swapped"),
    "fewer-labels": (_replace("train_labels", np.zeros(N_TRAIN - 1, np.uint8)), "has 60 images but"),
    "fewer-test-images": (
        _replace("test_images", np.zeros((N_TEST - 1, 28, 28), np.uint8)),
        "has 19 images but",
    ),
    "label-10": (_replace("train_labels", np.full(N_TRAIN, 10, np.uint8)), "labels must lie in 0..9"),
    "negative-label": (_replace("test_labels", np.full(N_TEST, -1, np.int8)), "range over -1..-1"),
    "no-test-images": (_no_test_images, "holds no images"),
    "zero-width-images": (_replace("train_images", np.zeros((N_TRAIN, 28, 0), np.uint8)), "holds no images"),
    "test-images-other-size": (
        _replace("test_images", np.zeros((N_TEST, 20, 20), np.uint8)),
        "use image files from the same data set",
    ),
    "folder-in-the-way": (_in_the_way(Path.mkdir), "is a folder where the IDX file belongs"),
    "fifo-in-the-way": (_in_the_way(os.mkfifo), "is a special file where the IDX file belongs"),
}
# The few that also go through the real script (each run costs seconds): one of each family.
THROUGH_SCRIPT = [
    "truncated-gzip",
    "empty-file",
    "swapped-files",
    "fewer-labels",
    "no-test-images",  # used to end in a traceback (a reshape of an empty array)
    "folder-in-the-way",
]


def files_in(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` by relative path: a file's bytes, None for anything else."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


def break_data(root: Path, case: str) -> tuple[str, str]:
    """Write a good data set into ``root``, break it as ``case`` says; return (the name the error must give,
    the words it must say)."""
    write_mnist_like(root, n_train=N_TRAIN, n_test=N_TEST, gz=True)
    mangle, says = BAD[case]
    named = mangle(root)
    return str(named), says


def _config(root: Path) -> ImageDatasetConfig:
    return ImageDatasetConfig(name="mnist", root=str(root), download=False, val_size=VAL)


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_refused_in_process(tmp_path: Path, case: str) -> None:
    root = tmp_path / "data"
    named, says = break_data(root, case)
    before = files_in(root)
    with pytest.raises(DataError) as info:
        load_data(_config(root), "none")
    message = str(info.value)
    assert named in message and says in message and "\n" not in message, message
    assert files_in(root) == before  # nothing written, cached or left over


def write_20x20(root: Path) -> None:
    """A data set of 20x20 images instead of MNIST's 28x28, every file agreeing."""
    root.mkdir(parents=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        write_idx(
            gz_path(root, f"{split}_images"), RNG.integers(0, 256, (n, 20, 20), dtype=np.uint8), gz=True
        )
        write_idx(gz_path(root, f"{split}_labels"), RNG.integers(0, 10, n, dtype=np.uint8), gz=True)


def test_other_image_sizes_are_accepted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_20x20(root)
    data = load_data(_config(root), "none")
    assert data.image_shape == (20, 20) and data.x_dim == 400
    assert (len(data.train), len(data.val), len(data.test)) == (N_TRAIN - VAL, VAL, N_TEST)


TINY = [
    "dataset=mnist",
    "dataset.download=false",
    f"dataset.val_size={VAL}",
    "epochs=1",
    "hidden_dims=[8]",
    "z_dim=2",
    "batch_size=25",
    "plot.enabled=false",
    "eval.iw_samples=2",
    "device=cpu",
]


@pytest.mark.parametrize("case", THROUGH_SCRIPT)
def test_bad_data_through_the_training_script(tmp_path: Path, case: str) -> None:
    root = tmp_path / "data"
    named, says = break_data(root, case)
    before = files_in(root)
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py", *TINY, f"dataset.root={root}", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output
    assert named in errors[0] and says in errors[0], errors[0]
    assert "Traceback" not in output
    assert files_in(root) == before  # the data root as it was: no cache, no temporary file
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list(run_dir.glob("*.pt")) and not (run_dir / "metrics.json").exists()


def test_other_image_size_trains_through_the_script(tmp_path: Path) -> None:
    """20x20 images train, evaluate and plot like MNIST's 28x28 ones."""
    root = tmp_path / "data"
    write_20x20(root)
    run_dir = tmp_path / "run"
    tiny = [a for a in TINY if a != "plot.enabled=false"]
    run_script("train.py", *tiny, f"dataset.root={root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert (run_dir / "metrics.json").is_file()
    assert {"samples.png", "reconstructions.png", "manifold.png"} <= {
        p.name for p in run_dir.glob("figures/*")
    }


def test_bad_data_through_the_benchmark_script(tmp_path: Path) -> None:
    root = tmp_path / "data"
    named, says = break_data(root, "fewer-labels")
    out = tmp_path / "bench"
    proc = run_script(
        "benchmark.py",
        "--quick",
        "--device",
        "cpu",
        "--data-root",
        str(root),
        "--out",
        str(out),
        cwd=tmp_path,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, output
    assert len(output.splitlines()) == 1 and output.startswith("benchmark.py: error: "), output
    assert named in output and says in output and "Traceback" not in output
    assert not out.exists()

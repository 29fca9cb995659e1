"""Read and fetch the MNIST family of IDX files, turning every data problem into a one-line DataError.

Files found locally (in root or a distribution's data directory) are not md5-checked, since
Debian recompresses its .gz files, so read_idx validates them structurally instead; only
downloads are checked against the known md5 of the official .gz files.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae.errors import DataError
from vae.files import atomic_write

FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

NUM_CLASSES = 10
TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (third magic byte); multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class DatasetSource:
    """Where one data set's files come from: download mirrors, their md5 by role, local copies."""

    mirrors: tuple[str, ...]
    md5: dict[str, str]
    search_dirs: tuple[str, ...] = ()


SOURCES: dict[str, DatasetSource] = {
    "mnist": DatasetSource(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": DatasetSource(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        # Debian's dataset-fashion-mnist package.
        search_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

_REPLACE = "delete it (it is downloaded again when download is on) or replace it with a good copy"
# How to put a download elsewhere when its folder is full, read-only or forbidden (see vae.files.write_error).
_ELSEWHERE = "set dataset.root to a folder on another disk"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzipped IDX file (gzip detected by its magic bytes) into an array of its declared shape.

    The header and payload size are checked exactly, so a truncated download or a wrong file
    fails here with the file named rather than later as a shape error.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a folder, not an IDX file; remove or rename it") from e
    except OSError as e:
        raise DataError(
            f"{path}: cannot read IDX file ({e.strerror or e}); check the path and permissions"
        ) from e
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path}: corrupt or truncated gzip data ({e or type(e).__name__}); {_REPLACE}"
            ) from e

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic bytes {data[:4].hex() or 'none'}); {_REPLACE}")
    dtype = _IDX_DTYPES.get(data[2])
    if dtype is None:
        raise DataError(f"{path}: unknown IDX type code 0x{data[2]:02x}; {_REPLACE}")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header_len} bytes); {_REPLACE}")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    count = math.prod(shape)
    expected = count * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes after the data"
        raise DataError(
            f"{path}: {problem}: header declares shape {shape} ({expected} bytes) but the payload "
            f"has {actual} bytes; {_REPLACE}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header_len).reshape(shape)
    # astype copies: the result is writable and in native byte order.
    return array.astype(dtype.newbyteorder("="))


class _ChecksumError(Exception):
    """A mirror served a file whose md5 is not the expected one."""


class _BrokenOff(Exception):
    """Reading a mirror's response failed midway (connection reset, timeout, body cut short)."""


def _read(response: http.client.HTTPResponse) -> bytes:
    """The next chunk of ``response``; its network errors become _BrokenOff, since inside atomic_write
    every OSError counts as a failure to write the file (a full disk, never the mirror's fault)."""
    try:
        return response.read(_CHUNK)
    except (OSError, http.client.HTTPException) as e:
        raise _BrokenOff(_reason(e)) from e


def _fetch(url: str, dest: Path, expected_md5: str) -> None:
    """Stream ``url`` into ``dest`` atomically, so a failed or mismatching download leaves no file.

    Raises the network's OSError or HTTPException when the mirror cannot be reached, _BrokenOff when the
    transfer breaks off, _ChecksumError for a wrong file, and vae.errors.WriteError when ``dest`` cannot
    be written (a full disk): that one is the user's to fix, not a reason to try another mirror.
    """
    # Connect before creating the temporary file: an unreachable mirror leaves nothing to clean up.
    with (
        urllib.request.urlopen(url, timeout=TIMEOUT_S) as response,
        atomic_write(dest, elsewhere=_ELSEWHERE) as f,
    ):
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        while chunk := _read(response):
            digest.update(chunk)
            f.write(chunk)
            received += len(chunk)
        # http.client ends a body cut short before its Content-Length quietly; what is left says so.
        if left := getattr(response, "length", None):
            raise _BrokenOff(f"connection closed after {received} of {received + left} bytes")
        if digest.hexdigest() != expected_md5:
            raise _ChecksumError(f"md5 {digest.hexdigest()}, expected {expected_md5}")


def _reason(e: BaseException) -> str:
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    return str(reason) or type(reason).__name__


def _source(name: str) -> DatasetSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown IDX data set {name!r}; use one of {', '.join(sorted(SOURCES))}") from None


def _how_to_place(root: Path) -> str:
    return f"put them into {root} by hand (each gzipped as <name>.gz or uncompressed as <name>)"


def locate_files(
    name: str,
    root: str | os.PathLike,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    *,
    md5: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Return the path of each of the four files by role, downloading the missing ones into ``root``.

    Each file is looked for as ``<file>`` or ``<file>.gz`` in ``root``, then in the data set's
    search dirs. Downloads try ``mirrors`` (default: the data set's own) in turn and must match
    ``md5`` (role -> hex digest; default: the official digests, also for custom mirrors), so a
    mirror serving a different file is skipped rather than trusted.
    """
    source = _source(name)
    root = Path(root).expanduser()
    dirs = [root, *map(Path, source.search_dirs)]
    found: dict[str, Path] = {}
    for role, file in FILES.items():
        candidates = [d / n for d in dirs for n in (file, f"{file}.gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            found[role] = path
        elif in_the_way := next((p for p in candidates[:2] if p.exists()), None):
            # A folder (or another non-file) where the file belongs: say so rather than "missing".
            kind = "folder" if in_the_way.is_dir() else "special file"
            then = "it is then downloaded" if download else f"then put {file} or {file}.gz into {root}"
            raise DataError(
                f"{in_the_way}: is a {kind} where the IDX file belongs; remove or rename it ({then})"
            )

    missing = [role for role in FILES if role not in found]
    if not missing:
        return found
    if not download:
        searched = ", ".join(map(str, dirs))
        raise DataError(
            f"{name}: missing {', '.join(FILES[r] for r in missing)} (searched {searched}); "
            f"{_how_to_place(root)}, or turn download on"
        )

    mirrors = list(source.mirrors if mirrors is None else mirrors)
    digests = source.md5 if md5 is None else md5
    failures: dict[str, str] = {}
    unreachable: set[str] = set()  # mirrors that failed below HTTP are not retried for later files
    for role in missing:
        file = f"{FILES[role]}.gz"
        dest = root / file
        for mirror in mirrors:
            if mirror in unreachable:
                continue
            try:
                _fetch(f"{mirror.rstrip('/')}/{file}", dest, digests[role])
            except _ChecksumError as e:
                failures[mirror] = f"{file} has {e}"
            except _BrokenOff as e:
                failures[mirror] = f"download of {file} broke off: {e}"
                unreachable.add(mirror)
            except urllib.error.HTTPError as e:
                failures[mirror] = f"HTTP {e.code} for {file}"
            except (OSError, http.client.HTTPException) as e:
                failures[mirror] = _reason(e)
                unreachable.add(mirror)
            else:
                found[role] = dest
                break

    missing = [role for role in FILES if role not in found]
    if missing:
        tried = "; ".join(f"{m} ({failures[m]})" for m in mirrors) or "none"
        raise DataError(
            f"{name}: could not download {', '.join(FILES[r] for r in missing)} (mirrors tried: {tried}); "
            f"{_how_to_place(root)}"
        )
    return found


def load_images_and_labels(
    name: str,
    root: str | os.PathLike,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_images, train_labels, test_images, test_labels)``: uint8 (N, H, W) and int64 (N,).

    Checks that images and labels of a split belong together, so a mixed-up or foreign file is
    reported by name instead of surfacing as a silent misalignment during training.
    """
    paths = locate_files(name, root, download=download, mirrors=mirrors)
    arrays = {role: read_idx(path) for role, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.ndim == 1 and labels.ndim == 3:
            raise DataError(
                f"{image_path} holds labels and {label_path} holds images: the two files are swapped; "
                "swap their names back"
            )
        if images.ndim != 3 or images.dtype != np.uint8:
            looks = " (it looks like a labels file)" if images.ndim == 1 else ""
            raise DataError(
                f"{image_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
                f"{looks}; {_REPLACE}"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            looks = " (it looks like an images file)" if labels.ndim == 3 else ""
            raise DataError(
                f"{label_path}: expected integer labels of shape (N,), got {labels.dtype} {labels.shape}"
                f"{looks}; {_REPLACE}"
            )
        if len(images) == 0 or 0 in images.shape[1:]:
            raise DataError(f"{image_path}: holds no images (shape {images.shape}); {_REPLACE}")
        if len(images) != len(labels):
            raise DataError(
                f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
                f"use image and label files from the same data set"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DataError(
                f"{label_path}: labels must lie in 0..{NUM_CLASSES - 1} but range over "
                f"{labels.min()}..{labels.max()}; {_REPLACE}"
            )
    train_images, test_images = arrays["train_images"], arrays["test_images"]
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{paths['train_images']} has {train_images.shape[1:]} images but {paths['test_images']} has "
            f"{test_images.shape[1:]}; use image files from the same data set"
        )
    return (
        train_images,
        arrays["train_labels"].astype(np.int64),
        test_images,
        arrays["test_labels"].astype(np.int64),
    )

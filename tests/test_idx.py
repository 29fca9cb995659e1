"""IDX files: every data problem is a DataError naming the file; downloads are all-or-nothing."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from idx_utils import write_idx, write_mnist_like

from vae.data.idx import FILES, SOURCES, DatasetSource, load_images_and_labels, locate_files, read_idx
from vae.errors import DataError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve a fresh directory over HTTP on 127.0.0.1; yield (base URL, directory)."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served))
    )
    # A short poll interval keeps shutdown (and so each test) fast.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def closed_url() -> Iterator[str]:
    """A URL on a port that is bound but not listening, so connecting is refused at once."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


def _md5s(directory: Path) -> dict[str, str]:
    return {role: hashlib.md5((directory / f"{f}.gz").read_bytes()).hexdigest() for role, f in FILES.items()}


# --- read_idx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_round_trip(tmp_path: Path, gz: bool, dtype: str) -> None:
    array = (np.arange(24) - 5).reshape(2, 3, 4).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.idx", array, gz))
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_gzip_detected_by_magic_not_suffix(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "gz-without-suffix", array, gz=True)), array)
    np.testing.assert_array_equal(
        read_idx(write_idx(tmp_path / "raw-with-suffix.gz", array, gz=False)), array
    )


def _raw_idx(tmp_path: Path) -> bytes:
    return write_idx(tmp_path / "src", np.zeros((3, 2, 2), dtype=np.uint8), gz=False).read_bytes()


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated"),  # inside the header
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX type code 0x42"),
        (lambda b: b"", "bad magic"),
    ],
)
def test_malformed_raw(tmp_path: Path, mangle, match: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(mangle(_raw_idx(tmp_path)))
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "gz_mangle", [lambda b: b[: len(b) // 2], lambda b: b[:20] + bytes([b[20] ^ 0xFF]) + b[21:]]
)
def test_corrupt_gzip(tmp_path: Path, gz_mangle) -> None:
    data = gzip.compress(_raw_idx(tmp_path) * 50, mtime=0)  # long enough that byte 20 is inside the stream
    path = tmp_path / "bad.gz"
    path.write_bytes(gz_mangle(data))
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")


# --- load_images_and_labels ---------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load(tmp_path: Path, gz: bool) -> None:
    expected = write_mnist_like(tmp_path, n_train=7, n_test=5, gz=gz)
    train_x, train_y, test_x, test_y = load_images_and_labels("mnist", tmp_path, download=False)
    assert train_x.dtype == np.uint8 and train_x.shape == (7, 28, 28) and test_x.shape == (5, 28, 28)
    assert train_y.dtype == np.int64 and train_y.shape == (7,) and test_y.shape == (5,)
    np.testing.assert_array_equal(train_x, expected["train_images"])
    np.testing.assert_array_equal(test_y, expected["test_labels"])


def test_mismatched_counts(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=7, n_test=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match="5 images") as info:
        load_images_and_labels("mnist", tmp_path, download=False)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value) and "t10k-labels-idx1-ubyte.gz" in str(info.value)


def test_labels_out_of_range(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=7, n_test=5)
    write_idx(
        tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 5, 10], dtype=np.uint8), gz=True
    )
    with pytest.raises(DataError, match=r"0\.\.9") as info:
        load_images_and_labels("mnist", tmp_path, download=False)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)


def test_images_not_3d(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=7, n_test=5)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((7, 784), dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_images_and_labels("mnist", tmp_path, download=False)


# --- locate_files -------------------------------------------------------------------------------


def test_missing_without_download(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(DataError, match="missing") as info:
        locate_files("mnist", root, download=False)
    message = str(info.value)
    assert str(root) in message and "train-images-idx3-ubyte" in message and "\n" not in message


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fashion_mnist, mnist"):
        locate_files("cifar", tmp_path, download=False)


def test_search_dirs_are_used_without_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system"
    write_mnist_like(system, n_train=3, n_test=2)
    monkeypatch.setitem(
        SOURCES, "fake", DatasetSource(mirrors=(), md5=SOURCES["mnist"].md5, search_dirs=(str(system),))
    )
    paths = locate_files("fake", tmp_path / "root", download=False)
    assert paths == {role: system / f"{f}.gz" for role, f in FILES.items()}


def test_root_takes_precedence_and_raw_is_found(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, n_train=3, n_test=2, gz=False)
    assert locate_files("mnist", tmp_path, download=False) == {
        role: tmp_path / f for role, f in FILES.items()
    }


def test_download(tmp_path: Path, server: tuple[str, Path], closed_url: str) -> None:
    url, served = server
    expected = write_mnist_like(served, n_train=6, n_test=4)
    root = tmp_path / "root"
    # The dead first mirror is skipped; the second serves files matching the given md5s.
    paths = locate_files("mnist", root, mirrors=[closed_url, url], md5=_md5s(served))
    assert paths == {role: root / f"{f}.gz" for role, f in FILES.items()}
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{f}.gz" for f in FILES.values())
    train_x, _, _, test_y = load_images_and_labels("mnist", root, download=False)
    np.testing.assert_array_equal(train_x, expected["train_images"])
    np.testing.assert_array_equal(test_y, expected["test_labels"])


def test_download_falls_back_after_http_error(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    write_mnist_like(served / "good", n_train=2, n_test=2)
    (served / "empty").mkdir()
    root = tmp_path / "root"
    locate_files("mnist", root, mirrors=[url + "empty/", url + "good/"], md5=_md5s(served / "good"))
    assert len(list(root.iterdir())) == 4


@pytest.mark.parametrize("override", [True, False])
def test_md5_mismatch_leaves_nothing(tmp_path: Path, server: tuple[str, Path], override: bool) -> None:
    url, served = server
    write_mnist_like(served, n_train=2, n_test=2)
    root = tmp_path / "root"
    # Without an override the official md5s apply, which these small files cannot match.
    md5 = dict.fromkeys(FILES, "0" * 32) if override else None
    with pytest.raises(DataError, match="md5") as info:
        locate_files("mnist", root, mirrors=[url], md5=md5)
    assert url in str(info.value)
    assert list(root.iterdir()) == []  # neither the files nor atomic_write's temp files


def test_all_mirrors_unreachable(tmp_path: Path, closed_url: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        locate_files("mnist", root, mirrors=[closed_url])
    message = str(info.value)
    assert closed_url in message and "refused" in message.lower()
    assert f"into {root} by hand" in message and "<name>.gz" in message
    assert all(f in message for f in FILES.values()) and "\n" not in message
    assert not root.exists() or list(root.iterdir()) == []

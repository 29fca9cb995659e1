"""Nothing torn: every output survives a crash or a full disk while its next version is written.

For each kind of output the project's own writer writes a first version; a fault injected in the middle of
writing the second one (the writer dying after some bytes, a full disk or quota, an I/O error at fsync, a
read-only or forbidden folder at the rename) must leave the first version byte for byte, no temporary file,
and, for an OSError, a one-line WriteError naming the file and what to do. Downloads broken off midway or
hitting a full disk leave nothing in the data root. A real SIGKILL during a write leaves the old or the new
file, never a torn one.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MOONS, REPO, run_script
from idx_utils import write_mnist_like
from omegaconf import OmegaConf

import vae.files
from vae.checkpoint import save_checkpoint
from vae.compare import plot_metric, write_table
from vae.data import idx
from vae.data.idx import FILES, locate_files
from vae.errors import DataError, WriteError
from vae.evaluate import SCALARS, write_results
from vae.files import atomic_write, write_json

TMP_GLOB = ".*.tmp"  # atomic_write's temporary files: .<name>.<random>.tmp


class Crash(Exception):
    """A writer dying midway for a reason of its own (a bug), not the disk's."""


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temporary ones included) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(TMP_GLOB))


def chain(e: BaseException | None) -> Iterator[BaseException]:
    """``e`` and the exceptions it was raised from or while handling."""
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


# --- fault injection ---------------------------------------------------------------------------------------


class _Os:
    """vae.files' view of the os module, with some of its functions replaced: faults hit atomic_write only."""

    def __init__(self, **replaced: Callable) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


class TornFile:
    """A file that takes ``budget`` bytes (or characters), puts part of the next write on disk, raises."""

    def __init__(self, f: Any, budget: int, exc: BaseException, seen: dict[str, Any]) -> None:
        self._f, self._budget, self._exc, self._seen = f, budget, exc, seen

    def write(self, data: Any) -> int:
        room = self._budget
        if len(data) < room:
            self._budget -= len(data)
            return self._f.write(data)
        self._f.write(data[:room])
        self._f.flush()
        self._seen["bytes_on_disk"] = os.fstat(self._f.fileno()).st_size
        raise self._exc

    def fileno(self) -> int:
        # Without a descriptor, PIL and the like write through write() instead of straight to the file.
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def inject(monkeypatch: pytest.MonkeyPatch, where: str, exc: BaseException, nth: int = 1, budget: int = 0):
    """Make the ``nth`` atomic write from now on fail at ``where`` ("write" after ``budget`` bytes, "fsync"
    or "replace") with ``exc``; return a record of what the fault saw (bytes on disk when it struck)."""
    seen: dict[str, Any] = {"calls": 0, "bytes_on_disk": None}

    def hit() -> bool:
        seen["calls"] += 1
        return seen["calls"] == nth

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        f = os.fdopen(fd, *args, **kwargs)
        return TornFile(f, budget, exc, seen) if hit() else f

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode) and hit():  # the file's fsync, not its folder's
            seen["bytes_on_disk"] = os.fstat(fd).st_size
            raise exc
        os.fsync(fd)

    def replace(src: str, dst: str) -> None:
        if hit():
            seen["bytes_on_disk"] = os.path.getsize(src)
            raise exc
        os.replace(src, dst)

    fake = {"write": _Os(fdopen=fdopen), "fsync": _Os(fsync=fsync), "replace": _Os(replace=replace)}[where]
    monkeypatch.setattr(vae.files, "os", fake)
    return seen


@dataclass(frozen=True)
class Fault:
    where: str  # write, fsync or replace
    errno: int | None  # None: the writer crashes (Crash)
    says: tuple[str, ...] = ()  # what the WriteError's message must contain

    def exception(self) -> BaseException:
        if self.errno is None:
            return Crash("the writer died midway")
        return OSError(self.errno, os.strerror(self.errno))


FAULTS = {
    "crash-mid-write": Fault("write", None),
    "ENOSPC-mid-write": Fault("write", errno.ENOSPC, ("no space left on device (ENOSPC)", "free some space")),
    "EDQUOT-mid-write": Fault("write", errno.EDQUOT, ("disk quota exceeded (EDQUOT)", "free some space")),
    "EIO-at-fsync": Fault("fsync", errno.EIO, ("input/output error (EIO)", "its disk")),
    "EROFS-at-rename": Fault("replace", errno.EROFS, ("read-only file system (EROFS)", "another disk")),
    "EACCES-at-rename": Fault("replace", errno.EACCES, ("permission denied (EACCES)", "writable")),
}


# --- the kinds of files the project writes, each through its own writer -----------------------------------


def _checkpoint(folder: Path, version: int) -> None:
    torch.manual_seed(version)
    model = torch.nn.Linear(32, 32)
    save_checkpoint(folder / "checkpoint.pt", model=model.state_dict(), epoch=version, config={"z_dim": 2})


def _metrics(folder: Path, version: int) -> None:
    write_json(
        folder / "metrics.json", {"test/elbo": -100.0 - version, "epochs": version, "train_seconds": 1.5}
    )


def _eval_record(version: int) -> dict[str, Any]:
    scores: dict[str, Any] = {name: float(version + i) for i, name in enumerate(SCALARS)}
    scores |= {"kl_per_dim": [0.5 * version, 0.25], "posterior_mean_variance": [1.0, 0.001]}
    return {"split": "test", "scores": scores, "iw_samples": 5, "n_examples": 50, "eval_seconds": 0.5}


def _results(folder: Path, version: int) -> None:
    write_results(folder, _eval_record(version))  # eval.json, then metrics.json


def _config(folder: Path, version: int) -> None:
    # As vae.train writes it: the resolved config as YAML, in text mode.
    config = {"z_dim": version, "hidden_dims": [400, 200], "dataset": {"name": "mnist", "root": "data/mnist"}}
    with atomic_write(folder / "config.yaml", "w") as f:
        f.write(OmegaConf.to_yaml(config))


def _figure(folder: Path, version: int) -> None:
    from vae.plots import _kl_figure, _save

    _save(_kl_figure(np.linspace(0.0, version, 8)), folder / "kl_per_dim.png", None, 0)


def _sweep_runs(version: int) -> list[dict[str, Any]]:
    return [
        {
            "path": Path(str(i)),
            "name": str(i),
            "config": {"z_dim": z_dim, "lr": 0.001},
            "overrides": {"z_dim": str(z_dim)},
            "metrics": {"test/nll": 100.0 - z_dim + version, "test/elbo": -101.0 + z_dim - version},
        }
        for i, z_dim in enumerate((2, 4, 8))
    ]


def _comparison_table(folder: Path, version: int) -> None:
    write_table(_sweep_runs(version), ["z_dim"], ["test/nll", "test/elbo"], folder)  # .md, then .csv


def _comparison_plot(folder: Path, version: int) -> None:
    plot_metric(_sweep_runs(version), "test/nll", ["z_dim"], folder)


def _benchmark(folder: Path, version: int) -> None:
    # As scripts/benchmark.py writes its results: JSON, then markdown.
    result = {"settings": {"epochs": version}, "devices": {"cpu": {"train_seconds": 1.0 + version}}}
    write_json(folder / "benchmark.json", result)
    with atomic_write(folder / "benchmark.md", "w") as f:
        f.write(f"| device | train s |\n| --- | --- |\n| cpu | {1.0 + version} |\n")


@dataclass(frozen=True)
class Kind:
    write: Callable[[Path, int], None]
    files: tuple[str, ...]  # every file the writer writes, in order
    nth: int = 1  # which of them the fault hits


KINDS = {
    "checkpoint.pt": Kind(_checkpoint, ("checkpoint.pt",)),
    "metrics.json": Kind(_metrics, ("metrics.json",)),
    "eval.json(write_results)": Kind(_results, ("eval.json", "metrics.json"), nth=1),
    "metrics.json(write_results)": Kind(_results, ("eval.json", "metrics.json"), nth=2),
    "config.yaml": Kind(_config, ("config.yaml",)),
    "figure.png": Kind(_figure, ("kl_per_dim.png",)),
    "comparison.md": Kind(_comparison_table, ("comparison.md", "comparison.csv"), nth=1),
    "comparison.csv": Kind(_comparison_table, ("comparison.md", "comparison.csv"), nth=2),
    "comparison.png": Kind(_comparison_plot, ("test_nll_vs_z_dim.png",)),
    "benchmark.json": Kind(_benchmark, ("benchmark.json", "benchmark.md"), nth=1),
    "benchmark.md": Kind(_benchmark, ("benchmark.json", "benchmark.md"), nth=2),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_fault_while_rewriting_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: Kind, fault: Fault
) -> None:
    kind.write(tmp_path / "reference", 2)
    new = files_in(tmp_path / "reference")
    out = tmp_path / "out"
    kind.write(out, 1)
    old = files_in(out)
    assert sorted(old) == sorted(kind.files)
    target = kind.files[kind.nth - 1]
    assert old[target] != new[target]

    seen = inject(monkeypatch, fault.where, fault.exception(), kind.nth, budget=len(new[target]) // 2)
    with pytest.raises(Exception) as info:  # noqa: B017 (which one is checked below)
        kind.write(out, 2)
    monkeypatch.undo()

    assert seen["bytes_on_disk"], "the fault should strike with part of the new version on disk"
    after = files_in(out)
    assert sorted(after) == sorted(old), "a temporary file was left behind"
    assert after[target] == old[target], f"{target} changed"
    for name in kind.files:  # the files written before the faulty one are complete new versions
        assert after[name] in (old[name], new[name]), f"{name} is torn"
    if fault.errno is None:
        # Not a WriteError: the writer's own error goes through (torch.save replaces it with a RuntimeError
        # of its own while unwinding, which atomic_write passes on unchanged too).
        assert not isinstance(info.value, WriteError)
        assert any(isinstance(e, Crash) for e in chain(info.value))
        return
    message = str(info.value)
    assert isinstance(info.value, WriteError)
    assert message.startswith(f"cannot write {out / target}: ") and "\n" not in message
    assert "the previous file, if any, is unchanged" in message
    for words in fault.says:
        assert words in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == fault.errno


# --- atomic_write's other paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interrupt", [KeyboardInterrupt, ValueError], ids=["KeyboardInterrupt", "writer-bug"]
)
def test_other_exceptions_propagate_unchanged(tmp_path: Path, interrupt: type[BaseException]) -> None:
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    with pytest.raises(interrupt), atomic_write(path, "w") as f:
        f.write('{"a": ')
        raise interrupt()
    assert path.read_text() == '{\n  "a": 1\n}\n' and temp_files(tmp_path) == []


def test_writer_bug_is_not_hidden_by_a_full_disk_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the temporary file after the writer's own error flushes its buffer: on a full disk that
    fails too, and must not turn the writer's error into a WriteError."""
    path = tmp_path / "eval.json"
    write_json(path, {"a": 1})

    class FullOnClose:
        def __init__(self, f: Any) -> None:
            self._f = f

        def close(self) -> None:
            self._f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    monkeypatch.setattr(vae.files, "os", _Os(fdopen=lambda *a, **k: FullOnClose(os.fdopen(*a, **k))))
    with pytest.raises(ValueError, match="bug"), atomic_write(path, "w") as f:
        f.write("x" * 100)
        raise ValueError("bug")
    assert path.read_text() == '{\n  "a": 1\n}\n' and temp_files(tmp_path) == []


def test_full_disk_behind_a_buffer_during_torch_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big write reaches the full disk and fails, a small one still fits the file's buffer: torch.save's
    zip writer then replaces the ENOSPC with a RuntimeError about the file position. It is still a
    WriteError, chained to the ENOSPC."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model={"w": torch.zeros(10)}, epoch=1)
    old = path.read_bytes()

    class FullDisk:
        def __init__(self, f: Any) -> None:
            self._f = f

        def write(self, data: bytes) -> int:
            if len(data) > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    monkeypatch.setattr(vae.files, "os", _Os(fdopen=lambda *a, **k: FullDisk(os.fdopen(*a, **k))))
    with pytest.raises(WriteError, match=r"no space left on device \(ENOSPC\)") as info:
        save_checkpoint(path, model={"w": torch.zeros(10_000)}, epoch=2)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert isinstance(info.value.__context__, RuntimeError)  # what torch.save raised
    assert path.read_bytes() == old and temp_files(tmp_path) == []


def test_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "outputs").write_text("a file where the run folder should go")
    path = tmp_path / "outputs" / "run" / "metrics.json"
    with pytest.raises(WriteError) as info:
        write_json(path, {"a": 1})
    message = str(info.value)
    assert message.startswith(f"cannot write {path}: cannot create its folder {path.parent}: ")
    assert "(EEXIST)" in message or "(ENOTDIR)" in message
    assert isinstance(info.value.__cause__, OSError)
    assert (tmp_path / "outputs").read_text() == "a file where the run folder should go"


def test_no_room_for_the_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No free inodes: even the empty temporary file cannot be created."""
    path = tmp_path / "config.yaml"
    path.write_text("z_dim: 2\n")

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(vae.files.tempfile, "mkstemp", mkstemp)
    with (
        pytest.raises(WriteError, match=r"no space left on device \(ENOSPC\); free some space"),
        atomic_write(path, "w") as f,
    ):
        f.write("z_dim: 3\n")
    assert path.read_text() == "z_dim: 2\n"


def test_folder_where_the_file_belongs(tmp_path: Path) -> None:
    """A real rename failure: the target is a folder."""
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(WriteError, match=r"is a directory \(EISDIR\)"):
        write_json(tmp_path / "metrics.json", {"a": 1})
    assert (tmp_path / "metrics.json").is_dir() and temp_files(tmp_path) == []


def test_failed_cleanup_does_not_hide_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})

    def unlink(p: str) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def replace(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(vae.files, "os", _Os(unlink=unlink, replace=replace))
    with pytest.raises(WriteError, match=r"\(ENOSPC\)"):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert path.read_text() == '{\n  "a": 1\n}\n'


# --- downloads ----------------------------------------------------------------------------------------------


class _Mirror(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (URL path -> bytes); ``server.how`` says whether whole or broken off midway."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.server.how != "cut-without-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.how == "whole":
            self.wfile.write(body)
        else:  # half the body, then the connection closes (HTTP/1.0)
            self.wfile.write(body[: len(body) // 2])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[http.server.ThreadingHTTPServer]:
    """A local mirror serving a small MNIST-format data set under /a/ and /b/; ``.url`` is its address."""
    served = tmp_path / "served"
    write_mnist_like(served, n_train=40, n_test=10)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    httpd.files = {f"/{m}/{p.name}": p.read_bytes() for p in served.iterdir() for m in "ab"}
    httpd.md5 = {
        role: hashlib.md5((served / f"{f}.gz").read_bytes()).hexdigest() for role, f in FILES.items()
    }
    httpd.how, httpd.requests = "whole", []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _reset_mid_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read returns some bytes, the next one finds the connection reset."""
    real_urlopen = urllib.request.urlopen

    class Response:
        def __init__(self, response: Any) -> None:
            self._response, self._reads = response, 0

        def read(self, n: int = -1) -> bytes:
            self._reads += 1
            if self._reads > 1:
                raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
            return self._response.read(100)

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *exc: object) -> None:
            self._response.close()

    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda *a, **k: Response(real_urlopen(*a, **k)))


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("cut-with-length", "broke off: connection closed after"),  # the body ends before its Content-Length
        ("cut-without-length", "has md5"),  # a shorter body is only caught by the checksum
        ("reset-mid-stream", "Connection reset by peer"),
    ],
)
def test_broken_download_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: Any, how: str, says: str
) -> None:
    if how == "reset-mid-stream":
        _reset_mid_stream(monkeypatch)
    else:
        mirror.how = how
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        locate_files("mnist", root, mirrors=[mirror.url + "a/"], md5=mirror.md5)
    message = str(info.value)
    assert says in message and f"mirrors tried: {mirror.url}a/" in message
    assert "\n" not in message
    assert not root.exists() or files_in(root) == {}  # neither a partial file nor a temporary one


def test_broken_download_keeps_an_existing_file(tmp_path: Path, mirror: Any) -> None:
    """The download is atomic: a transfer that breaks off never touches the file already there."""
    mirror.how = "cut-with-length"
    dest = tmp_path / "train-images-idx3-ubyte.gz"
    dest.write_bytes(b"the previous version")
    with pytest.raises(idx._BrokenOff):
        idx._fetch(mirror.url + "a/train-images-idx3-ubyte.gz", dest, mirror.md5["train_images"])
    assert dest.read_bytes() == b"the previous version" and temp_files(tmp_path) == []


@pytest.mark.parametrize("nth", [1, 2], ids=["first-file", "second-file"])
def test_disk_full_during_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: Any, nth: int
) -> None:
    """A full disk is the user's to fix: a clear WriteError at once, not "mirror unreachable, next one"."""
    root = tmp_path / "data"
    inject(monkeypatch, "write", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), nth=nth, budget=10)
    with pytest.raises(WriteError) as info:
        locate_files("mnist", root, mirrors=[mirror.url + "a/", mirror.url + "b/"], md5=mirror.md5)
    message = str(info.value)
    failed = root / f"{list(FILES.values())[nth - 1]}.gz"
    assert message.startswith(f"cannot write {failed}: no space left on device (ENOSPC); free some space")
    assert "set dataset.root to a folder on another disk" in message and "\n" not in message
    assert not any(r.startswith("/b/") for r in mirror.requests), "the full disk was taken for a mirror fault"
    # The files downloaded before the disk filled up are complete and checked; nothing else is left.
    done = {f"{f}.gz": mirror.files[f"/a/{f}.gz"] for f in list(FILES.values())[: nth - 1]}
    assert files_in(root) == done


# --- a real SIGKILL -----------------------------------------------------------------------------------------

_REWRITER = """
import sys
from vae.files import atomic_write

path, size = sys.argv[1], int(sys.argv[2])
versions = [bytes([65 + i]) * size for i in range(2)]
with atomic_write(path) as f:
    f.write(versions[0])
print("ready", flush=True)
i = 1
while True:
    with atomic_write(path) as f:
        for start in range(0, size, 1 << 16):
            f.write(versions[i % 2][start : start + (1 << 16)])
    i += 1
"""


def test_sigkill_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    size = 5 << 20
    versions = [bytes([65 + i]) * size for i in range(2)]
    path = tmp_path / "big.bin"
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed_mid_write = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _REWRITER, str(path), str(size)], stdout=subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.02, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        data = path.read_bytes()
        assert data == versions[0] or data == versions[1], f"torn file: {len(data)} bytes"
        leftovers = temp_files(tmp_path)  # a killed process cannot clean up: at most its one temporary file
        assert len(leftovers) <= 1
        killed_mid_write += len(leftovers)
        for p in leftovers:
            p.unlink()
    assert killed_mid_write, "no kill struck in the middle of a write"


# --- a full disk through the real training script ----------------------------------------------------------

_FULL_DISK = """
import errno, os
import vae.files

FULL_FROM = {full_from!r}
full = []


class FullFile:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)


class FullDiskOs:
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd, *args, **kwargs):
        f = os.fdopen(fd, *args, **kwargs)
        if os.path.basename(os.readlink(f"/proc/self/fd/{{fd}}")).startswith(f".{{FULL_FROM}}."):
            full.append(True)  # from this file on, the disk is full
        return FullFile(f) if full else f


vae.files.os = FullDiskOs()
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being written")
def test_disk_full_during_a_training_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up when the results are written: one ERROR line naming the file, exit status 2, no
    traceback, no temporary file; the checkpoint written before is intact."""

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FULL_DISK.format(full_from="eval.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO)]))
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        *MOONS,
        "epochs=1",
        "plot.enabled=false",
        "eval.iw_samples=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output
    assert (
        f"cannot write {run_dir / 'eval.json'}: no space left on device (ENOSPC); free some space"
        in errors[0]
    )
    assert "Traceback" not in output
    assert temp_files(run_dir) == [] and not (run_dir / "eval.json").exists()
    checkpoints = list(run_dir.glob("*.pt"))
    assert checkpoints and all(torch.load(p, weights_only=False)["epoch"] == 1 for p in checkpoints)

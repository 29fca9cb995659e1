"""Atomic file writes: a crash leaves either the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vae.errors import WriteError

ELSEWHERE = "write to a folder on another disk"

# The mode open() gives a new file (0666 less the umask), read once: reading os.umask means setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FORBIDDEN = {errno.EACCES, errno.EPERM}


def _what(e: OSError) -> str:
    """``no space left on device (ENOSPC)``: the reason in words, and its errno name to search for."""
    reason = (e.strerror or str(e).strip() or type(e).__name__).splitlines()[0].rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    code = errno.errorcode.get(e.errno) if e.errno is not None else None
    return f"{reason} ({code})" if code else reason


def _advice(e: OSError, folder: Path, elsewhere: str) -> str:
    if e.errno in _NO_SPACE:
        return f"free some space or {elsewhere}"
    if e.errno == errno.EROFS:
        return elsewhere
    if e.errno in _FORBIDDEN:
        return f"make {folder} writable or {elsewhere}"
    return f"check {folder} and its disk, or {elsewhere}"


def write_error(
    path: Path, e: OSError, elsewhere: str = ELSEWHERE, creating_folder: bool = False
) -> WriteError:
    """The one-line :class:`WriteError` for an OSError ``e`` met while writing ``path``."""
    if creating_folder:
        return WriteError(
            f"cannot write {path}: cannot create its folder {path.parent}: {_what(e)}; "
            f"{_advice(e, path.parent, elsewhere)}."
        )
    return WriteError(
        f"cannot write {path}: {_what(e)}; {_advice(e, path.parent, elsewhere)}; "
        "the previous file, if any, is unchanged."
    )


class _Recording:
    """The temporary file, remembering the OSError its own writes met: a writer may replace that error
    with one of its own while it unwinds (torch.save's zip writer raises a RuntimeError about the file
    position instead)."""

    def __init__(self, f: IO) -> None:
        self._f = f
        self.error: OSError | None = None

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._f, method)(*args)
        except OSError as e:
            self.error = e
            raise

    def write(self, data: Any) -> int:
        return self._call("write", data)

    def writelines(self, lines: Any) -> None:
        self._call("writelines", lines)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _write_failure(e: BaseException, f: _Recording | None) -> OSError | None:
    """The OSError behind ``e`` if writing the file failed: ``e`` itself, or the one the file's own write met
    when ``e`` was raised while handling it."""
    if isinstance(e, OSError):
        return e
    if f is None or f.error is None:
        return None
    chain: list[BaseException] = []
    link: BaseException | None = e
    while link is not None and link not in chain:  # a chain can loop back on itself
        if link is f.error:
            return f.error
        chain.append(link)
        link = link.__cause__ or link.__context__
    return None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, elsewhere: str = ELSEWHERE) -> Iterator[IO]:
    """Open a temporary file ``.<name>.*.tmp`` beside ``path``; on success flush, fsync and rename it over
    ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. An OSError met creating
    the folder, writing, flushing, fsyncing or renaming (disk full, quota, read-only or forbidden folder)
    is raised as a one-line :class:`~vae.errors.WriteError` naming ``path``, chained to the OSError; its
    advice ends with ``elsewhere`` (how to write somewhere else). Every OSError raised inside the block
    counts as a failed write, so keep other I/O (reading a download, say) out of the block or wrap its
    errors. Any other exception (a bug in the writer, KeyboardInterrupt) propagates unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, elsewhere, creating_folder=True) from e
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e, elsewhere) from e
    f: _Recording | None = None
    try:
        try:
            os.chmod(fd, _FILE_MODE)  # mkstemp's 0600 would make every output private to its owner
            f = _Recording(os.fdopen(fd, mode))
        except BaseException:
            os.close(fd)
            raise
        try:
            yield f  # a file in all but name
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            # Closing flushes what is buffered; on a full disk that fails too and would hide the first error.
            with contextlib.suppress(OSError):
                f.close()
            raise
        f.close()
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        failure = _write_failure(e, f)
        if failure is not None:
            raise write_error(path, failure, elsewhere) from failure
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself survive a power cut; a file system that cannot fsync folders is no error."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | os.PathLike, obj: Any, *, elsewhere: str = ELSEWHERE) -> None:
    """Write ``obj`` as indented JSON, atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", elsewhere=elsewhere) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")

"""What the entry points share: user errors become one logged line and exit status 2; in a sweep a failed
job is recorded in its status.json and the others go on."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vae.errors import Interrupted, VAEError
from vae.status import write_status

log = logging.getLogger("vae")


@contextlib.contextmanager
def user_errors(multirun: bool = False, status_dirs: list[Path] | None = None) -> Iterator[list[Path]]:
    """Report a VAEError as one line and exit with status 2. An interrupted run (SIGTERM, SIGINT) exits
    with 128 + the signal, in a sweep too (the sweep stops). In a multirun any other failure is recorded as
    ``failed`` with its reason in the job's status.json (every folder in the yielded list, which the
    caller may extend with the run directory it trains in) and does not stop the other jobs."""
    dirs = list(status_dirs or [])
    try:
        yield dirs
    except Interrupted as e:
        log.warning("%s", e)
        sys.exit(e.exit_code)
    except VAEError as e:
        log.error("%s", e)  # to the console and the run's log file
        _record_failure(dirs, str(e))
        if not multirun:
            sys.exit(2)
    except Exception as e:  # a bug, or the system: the traceback goes to the job's log
        if not multirun:
            raise
        log.exception("job failed: %s: %s", type(e).__name__, e)
        _record_failure(dirs, f"{type(e).__name__}: {e}")


def _record_failure(dirs: list[Path], reason: str) -> None:
    """Mark the job failed; if even that cannot be written (a full disk), the logged line must do."""
    with contextlib.suppress(VAEError, OSError):
        write_status(dirs, "failed", reason=reason)


def one_line(e: BaseException) -> str:
    """A Hydra composition error as one line: the first line of its message and what matters of the rest
    (the unparseable override, the options to choose from, OmegaConf's cause)."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    details = ("full_key:", "object_type=", "reference_type=")  # OmegaConf's context lines
    lines = [s.strip() for s in str(e).splitlines() if s.strip() and not s.strip().startswith(details)]
    if not isinstance(e, HydraException | OmegaConfBaseException):  # Hydra's ValueError / TypeError
        return (
            f"a config group option must be a name, e.g. likelihood=gaussian ({lines[0] if lines else e!r})"
        )
    if isinstance(e, OverrideParseException):
        return f"cannot parse the override {e.override!r}: {lines[0]}"
    if isinstance(e, MissingConfigException):
        return lines[0] + ("; choose one of " + ", ".join(e.options) if e.options else "")
    if isinstance(e.__cause__, OmegaConfBaseException):
        return lines[0].rstrip(".") + ": " + str(e.__cause__).splitlines()[0]
    return "; ".join(lines) if lines else type(e).__name__


def run_hydra(main: Callable[[], Any]) -> None:
    """Run a @hydra.main entry point with composition errors as one line and exit status 1.

    Hydra prints those errors over several lines, and a group option that is not a name (likelihood=null)
    as a traceback; told HYDRA_FULL_ERROR=1 it raises them instead, to be printed here. A user who sets
    HYDRA_FULL_ERROR=1 still gets Hydra's full traceback.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as e:
        innermost = traceback.extract_tb(e.__traceback__)[-1].filename
        hydra_own = (
            isinstance(e, HydraException | OmegaConfBaseException) or f"{os.sep}hydra{os.sep}" in innermost
        )
        if full_error or not hydra_own:
            raise
        print(f"Error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)

"""What the entry points share: user errors become one logged line and exit status 2."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from vae.errors import VAEError

log = logging.getLogger("vae")


@contextlib.contextmanager
def user_errors(multirun: bool = False) -> Iterator[None]:
    """Report a VAEError as one line. In a multirun re-raise it, so Hydra records the job as failed and
    goes on with the others; otherwise exit with status 2."""
    try:
        yield
    except VAEError as e:
        log.error("%s", e)  # to the console and the run's log file
        if multirun:
            raise
        sys.exit(2)

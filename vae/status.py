"""A run's status file, status.json: running, finished, failed (with the reason), interrupted or skipped.

Written atomically at each change, so a sweep's summary, ``resume=auto`` and the user can tell what became of
every job, whatever killed it (a job killed with SIGKILL stays ``running``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vae.files import write_json

STATUS = "status.json"


def write_status(run_dirs: Path | list[Path], status: str, **details: Any) -> None:
    """Record ``status`` (and details such as the reason or the epoch) in each of ``run_dirs``."""
    dirs = [run_dirs] if isinstance(run_dirs, Path) else run_dirs
    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}
    for run_dir in dict.fromkeys(Path(d) for d in dirs):
        write_json(run_dir / STATUS, record)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's status record, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None

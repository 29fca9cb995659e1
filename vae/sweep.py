"""The end of a multirun: one summary of which jobs finished, failed (and why), were skipped or were cut off.

Registered as a Hydra callback in configs/train.yaml. It reads each job's status.json, so it works the same
whichever launcher ran the jobs (in this process, in joblib workers, or on a cluster).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vae.files import write_json
from vae.status import read_status

log = logging.getLogger("vae")


def _job_overrides(job_dir: Path) -> str:
    try:
        return " ".join(yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return ""


def sweep_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job folder of the sweep (one Hydra wrote its .hydra into) with its status and overrides."""
    jobs = []
    dirs = (
        [d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir()]
        if sweep_dir.is_dir()
        else []
    )
    for job_dir in sorted(
        dirs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else d.name)
    ):
        status = read_status(job_dir) or {"status": "not started"}
        jobs.append({"job": job_dir.name, "overrides": _job_overrides(job_dir), **status})
    return jobs


class SweepSummary(Callback):
    """Logs the sweep's outcome, writes it to <sweep dir>/summary.json, and exits with status 1 when a job
    failed (so a script or a cluster scheduler sees it), after every job has had its turn."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir)
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        write_json(sweep_dir / "summary.json", {"counts": counts, "jobs": jobs})
        log.info(
            "sweep %s: %d jobs: %s",
            sweep_dir,
            len(jobs),
            ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
        )
        for job in jobs:
            if job["status"] != "finished":
                detail = job.get("reason") or job.get("run") or ""
                log.info(
                    "  job %s (%s): %s%s",
                    job["job"],
                    job["overrides"],
                    job["status"],
                    f": {detail}" if detail else "",
                )
        if counts.get("failed"):
            searching = "optuna" in str(config.hydra.sweeper.get("_target_", ""))
            log.error(
                "%d of %d jobs failed (reasons above and in each job's train.log); the others' results "
                "are kept. %s",
                counts["failed"],
                len(jobs),
                "The study records them as failed; the same command continues the search."
                if searching
                else "Re-run the same command with resume=auto to redo only what did not finish.",
            )
            sys.exit(1)

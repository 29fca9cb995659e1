"""What a sweep job may use of the machine: its share of the CPU threads and, with several GPUs, its own GPU.

Derived from the Hydra launcher's config alone (no key of our schema), so every launcher works unchanged:

- basic (Hydra's default): one job at a time; torch's default threads, the config's device.
- joblib: ``n_jobs`` jobs at once (-1: one per CPU); CPUs // ``n_jobs`` threads each; GPU
  ``cuda:<job number % GPUs>``.
- submitit_local: every job of the sweep at once; ``cpus_per_task`` threads if given (else torch's default);
  GPU ``cuda:<job number % GPUs>`` of the ``gpus_per_node`` it makes visible.
- submitit_slurm: each job on its own allocation; its CPUs (capped by ``cpus_per_task``), the config's device.

Torch processes that each start one thread per core on the same cores run many times slower than one
(measured on a 2-core machine: two joblib jobs with 2 threads each trained 6 to 12x slower than with 1 each,
and a 4-job moons sweep took 44.6 s against 11.5 s), so concurrent jobs must split the cores. joblib's loky
workers cap OpenMP/MKL through environment variables, but not where the user has set OMP_NUM_THREADS or
MKL_NUM_THREADS (common on clusters), and never on submitit: torch.set_num_threads here holds whatever the
environment. The GPU is spread only when the config leaves the choice open (``device=auto`` or ``cuda``) and
more than one is visible.
Also here: the sqlite storage of an Optuna study and the seed that lets a stored study continue
(``configs/hparams_search/``), and whether a SLURM job is a requeued one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("vae")

# Launchers that run several jobs at once on the machine the job runs on.
SHARED_MACHINE = ("joblib", "submitit_local")


@dataclass(frozen=True)
class JobResources:
    """``threads``: torch's intra-op threads for this job (None: leave torch's default); ``device``: the
    device to train on; ``why``: one line for the log."""

    threads: int | None
    device: str
    why: str


def launcher_name(launcher: Mapping[str, Any]) -> str:
    """``basic``, ``joblib``, ``submitit_local``, ``submitit_slurm``, or the launcher class's name."""
    target = str(launcher.get("_target_", ""))
    cls = target.rsplit(".", 1)[-1]
    if "joblib" in target:
        return "joblib"
    if "submitit" in target:
        return "submitit_slurm" if cls == "SlurmLauncher" else "submitit_local"
    if cls == "BasicLauncher":
        return "basic"
    return cls or "unknown"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: a SLURM allocation, taskset), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def joblib_workers(n_jobs: Any, cpus: int) -> int:
    """joblib's number of workers: n_jobs > 0 as given, -1 one per CPU, -2 all but one, ... (at least 1)."""
    n = int(n_jobs) if n_jobs is not None else -1
    if n == 0:
        n = 1
    return max(1, n if n > 0 else cpus + 1 + n)


def job_resources(
    launcher: Mapping[str, Any], job_num: int, device: str, cpus: int, gpus: int
) -> JobResources:
    """The threads and device of sweep job number ``job_num`` under ``launcher`` (the ``hydra.launcher``
    node), on a machine with ``cpus`` usable CPUs and ``gpus`` visible CUDA devices."""
    name = launcher_name(launcher)
    cpus = max(1, cpus)
    threads: int | None
    if name == "joblib":
        workers = joblib_workers(launcher.get("n_jobs"), cpus)
        threads = max(1, cpus // workers)
        why = f"joblib, {workers} jobs at once on {cpus} CPUs"
    elif name in ("submitit_local", "submitit_slurm"):
        per_task = launcher.get("cpus_per_task")
        threads = max(1, min(int(per_task), cpus)) if per_task else None
        if name == "submitit_slurm":
            threads = threads or cpus  # the allocation's CPUs are this job's alone
            why = f"submitit_slurm, its own allocation of {cpus} CPUs"
        elif threads is not None:
            why = f"submitit_local, cpus_per_task={per_task} of {cpus} CPUs"
        else:
            why = (
                f"submitit_local runs every job at once on {cpus} CPUs: give hydra.launcher.cpus_per_task="
                "<CPUs // jobs> to share them"
            )
    else:
        threads = None
        why = f"{name} launcher, one job at a time" if name == "basic" else f"{name} launcher"
    if name in SHARED_MACHINE and device in ("auto", "cuda") and gpus > 1:
        device = f"cuda:{job_num % gpus}"
    return JobResources(threads, device, why)


def pin_job(hydra_cfg: Any, device: str) -> str:
    """Apply :func:`job_resources` to this sweep job (``hydra_cfg``: ``HydraConfig.get()``): set torch's
    threads, log one line, and return the device to train on."""
    import torch

    launcher = hydra_cfg.launcher
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    plan = job_resources(launcher, int(hydra_cfg.job.num), device, available_cpus(), gpus)
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    log.info(
        "job %s: %d torch thread%s, device %s (%s)",
        hydra_cfg.job.num,
        torch.get_num_threads(),
        "" if torch.get_num_threads() == 1 else "s",
        plan.device,
        plan.why,
    )
    return plan.device


def requeued(launcher: Mapping[str, Any], env: Mapping[str, str] | None = None) -> bool:
    """Whether this is a submitit job that SLURM requeued (after a preemption, or a timeout with
    ``max_num_timeout``): it then runs again in its own job folder, where the first attempt left its run."""
    env = os.environ if env is None else env
    if not launcher_name(launcher).startswith("submitit"):
        return False
    try:
        return int(env.get("SLURM_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def sqlite_storage(path: str) -> str:
    """The URL of an Optuna study stored in the sqlite file ``path``, whose folder is created (sqlite does
    not create it): the ``_target_`` of the storage in configs/hparams_search/*.yaml."""
    db = Path(path).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _storage_url(storage: Any) -> str | None:
    """The URL of a study's storage as configured: a URL, or the node of :func:`sqlite_storage` (its
    ``path``); None when it is an sqlite file that does not exist yet (no study stored)."""
    if isinstance(storage, Mapping):  # {_target_: vae.launch.sqlite_storage, path: ...}
        storage = f"sqlite:///{Path(str(storage.get('path'))).expanduser().resolve()}"
    url = str(storage) if storage else None
    if url and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    return url


def continued_seed(seed: Any, storage: Any, study_name: Any) -> Any:
    """The sampler's seed for a search that may continue a stored study: ``seed`` plus the number of trials
    the study already has. With the plain seed a second command would draw the very trials of the first
    again (the sampler's random start-up draws are the same sequence in every process): with this one the
    same command is reproducible and continues with new trials. ``seed`` null stays null."""
    url = _storage_url(storage)
    if seed is None or url is None or study_name is None:
        return seed
    import optuna

    try:
        study = optuna.load_study(study_name=str(study_name), storage=url)
    except KeyError:  # no study of that name yet
        return seed
    return int(seed) + len(study.get_trials(deepcopy=False))


def register_resolvers() -> None:
    """``${optuna_seed:<seed>,<storage>,<study name>}`` (:func:`continued_seed`) for the config files."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("optuna_seed"):
        OmegaConf.register_new_resolver("optuna_seed", continued_seed)

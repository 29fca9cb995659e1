"""Scaling out: each sweep job's share of the CPU threads and GPUs (vae/launch.py), parallel sweeps with the
joblib launcher, submitit's local and SLURM launchers, and Optuna searches that continue a stored study.

The plugin tests need the `sweep` extra (pip install -e ".[dev,sweep]") and are skipped without it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import hydra
import pytest
import yaml
from conftest import MOONS, REPO, read_metrics, read_scalars, run_script

from vae.config import register_configs
from vae.launch import (
    available_cpus,
    continued_seed,
    job_resources,
    joblib_workers,
    launcher_name,
    register_resolvers,
    requeued,
    sqlite_storage,
)
from vae.status import read_status

BASIC = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
LOCAL = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}
SLURM = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
# Two short jobs: the sweep's own overrides come after these.
FAST = [*MOONS, "epochs=2", "eval.iw_samples=5", "plot.enabled=false"]
THREADS = re.compile(r"job (\d+): (\d+) torch threads?, device (\S+) \((.*)\)")


def test_launcher_names() -> None:
    assert [launcher_name(x) for x in (BASIC, JOBLIB, LOCAL, SLURM)] == [
        "basic",
        "joblib",
        "submitit_local",
        "submitit_slurm",
    ]
    assert (
        launcher_name({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"})
        == "RayLauncher"
    )


@pytest.mark.parametrize(
    ("n_jobs", "cpus", "workers", "threads"),
    [(2, 2, 2, 1), (2, 16, 2, 8), (3, 16, 3, 5), (4, 2, 4, 1), (-1, 8, 8, 1), (-2, 8, 7, 1), (None, 4, 4, 1)],
)
def test_joblib_jobs_split_the_cpus(n_jobs, cpus, workers, threads) -> None:
    assert joblib_workers(n_jobs, cpus) == workers
    plan = job_resources({**JOBLIB, "n_jobs": n_jobs}, job_num=0, device="cpu", cpus=cpus, gpus=0)
    assert plan.threads == threads and plan.device == "cpu"


def test_one_job_at_a_time_keeps_torch_defaults() -> None:
    plan = job_resources(BASIC, job_num=3, device="auto", cpus=8, gpus=4)
    assert plan.threads is None and plan.device == "auto"  # sequential: every core and cuda:0 are its own


@pytest.mark.parametrize(
    ("device", "gpus", "job_num", "expected"),
    [
        ("auto", 4, 5, "cuda:1"),
        ("cuda", 2, 3, "cuda:1"),
        ("auto", 1, 3, "auto"),  # one GPU: nothing to spread
        ("auto", 0, 3, "auto"),
        ("cpu", 4, 3, "cpu"),
        ("cuda:3", 4, 0, "cuda:3"),  # a device the user named stays
    ],
)
def test_concurrent_jobs_get_their_own_gpu(device, gpus, job_num, expected) -> None:
    for launcher in ({**JOBLIB, "n_jobs": 4}, {**LOCAL, "cpus_per_task": 2}):
        assert job_resources(launcher, job_num, device, cpus=8, gpus=gpus).device == expected


def test_submitit_threads_follow_the_allocation() -> None:
    assert job_resources({**LOCAL, "cpus_per_task": 1}, 0, "cpu", cpus=2, gpus=0).threads == 1
    assert job_resources({**LOCAL, "cpus_per_task": 64}, 0, "cpu", cpus=2, gpus=0).threads == 2
    unknown = job_resources({**LOCAL, "cpus_per_task": None}, 0, "cpu", cpus=2, gpus=0)
    assert unknown.threads is None and "cpus_per_task" in unknown.why
    # On SLURM the job's affinity is its allocation; its GPUs are its own, so device=auto is left alone.
    slurm = job_resources({**SLURM, "cpus_per_task": None}, 7, "auto", cpus=10, gpus=4)
    assert slurm.threads == 10 and slurm.device == "auto"
    assert job_resources({**SLURM, "cpus_per_task": 8}, 0, "auto", cpus=32, gpus=1).threads == 8


def test_requeued_only_for_a_restarted_submitit_job() -> None:
    assert requeued(SLURM, {"SLURM_RESTART_COUNT": "1"})
    assert requeued(LOCAL, {"SLURM_RESTART_COUNT": "2"})
    assert not requeued(SLURM, {"SLURM_RESTART_COUNT": "0"})
    assert not requeued(SLURM, {})
    assert not requeued(BASIC, {"SLURM_RESTART_COUNT": "1"})  # a whole sweep requeued makes a new sweep


def test_sqlite_storage_creates_its_folder(tmp_path: Path) -> None:
    url = sqlite_storage(str(tmp_path / "a" / "b" / "study.db"))
    assert url == f"sqlite:///{tmp_path / 'a' / 'b' / 'study.db'}" and (tmp_path / "a" / "b").is_dir()


def test_continued_seed_counts_the_stored_trials(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    node = {"_target_": "vae.launch.sqlite_storage", "path": str(tmp_path / "s.db")}
    assert continued_seed(5, node, "s") == 5  # no database yet
    assert not (tmp_path / "s.db").exists()  # ... and none is created by asking
    study = optuna.create_study(study_name="s", storage=sqlite_storage(node["path"]))
    study.optimize(lambda t: t.suggest_float("x", 0, 4), n_trials=3)
    assert continued_seed(5, node, "s") == 8
    assert continued_seed(5, f"sqlite:///{tmp_path / 's.db'}", "s") == 8
    assert continued_seed(5, node, "other") == 5
    assert continued_seed(None, node, "s") is None


def _compose(overrides: list[str]):
    register_configs()
    register_resolvers()
    with hydra.initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra.compose("train", overrides=overrides, return_hydra_config=True)


def _job_threads(job_dir: Path) -> tuple[int, str, str]:
    match = THREADS.search((job_dir / "train.log").read_text())
    assert match, f"no thread line in {job_dir / 'train.log'}"
    return int(match[2]), match[3], match[4]


def _check_sweep(sweep: Path, z_dims: tuple[int, ...]) -> None:
    """Every job finished, with its metrics, TensorBoard scalars and the sweep's summary."""
    for job, z_dim in enumerate(z_dims):
        job_dir = sweep / str(job)
        assert read_status(job_dir)["status"] == "finished"
        assert f"z_dim: {z_dim}" in (job_dir / "config.yaml").read_text()
        metrics = read_metrics(job_dir)
        scalars = read_scalars(job_dir)
        assert [step for step, _ in scalars["val/elbo"]] == [1, 2]
        assert scalars["val/elbo"][-1][1] == pytest.approx(metrics["val/elbo"], rel=1e-5)
        assert "test/elbo" in scalars
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"] == {"finished": len(z_dims)}


def test_joblib_sweep_runs_jobs_in_parallel_with_a_share_of_the_threads(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *FAST,
        "z_dim=1,2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    _check_sweep(sweep, (1, 2))
    for job in ("0", "1"):
        threads, device, why = _job_threads(sweep / job)
        assert threads == max(1, available_cpus() // 2), why  # 1 on a 2-core machine
        assert device == "cpu" and "joblib, 2 jobs at once" in why


def test_slurm_config_makes_a_valid_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"])
    assert cfg.resume is None  # a launcher config cannot set it: resume=auto goes on the command line
    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")  # submitit only checks that SLURM is there
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    executors = []

    class Submitted(Exception):
        pass

    def capture(self, fn, *args):
        executors.append(self)
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    with pytest.raises(Submitted):
        launcher.launch([["z_dim=2"], ["z_dim=10"]], initial_job_idx=0)
    [executor] = executors
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in (
        "--partition=gpu",
        "--time=240",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--nodes=1",
        "--ntasks-per-node=1",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {line}\n" in script, line
    assert executor._executor.max_num_timeout == 3
    assert executor._executor.parameters["array_parallelism"] == 64


def test_submitit_local_sweep_writes_results_tensorboard_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    command = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", *FAST, "z_dim=1,2"]
    run_script("train.py", *command, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    _check_sweep(sweep, (1, 2))
    assert (sweep / ".submitit").is_dir()  # submitit's own logs, beside the job folders
    for job in ("0", "1"):
        threads, _, why = _job_threads(sweep / job)
        assert threads == 1 and "submitit_local, cpus_per_task=1" in why

    # A job SLURM requeued runs again in its own folder, where its run is: it continues that run (here for
    # one more epoch) instead of refusing to train over it, even without resume=auto on the command line.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run_script("train.py", *command, "epochs=3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    for job in ("0", "1"):
        log = (sweep / job / "train.log").read_text()
        assert "requeued by SLURM: resume=auto" in log and f"resume: continuing {sweep / job}" in log
        assert [step for step, _ in read_scalars(sweep / job)["val/elbo"]] == [1, 2, 3]
        assert read_metrics(sweep / job)["epochs"] == 3


OPTUNA = [
    "-m",
    "hparams_search=moons_optuna",
    *[o for o in MOONS if not o.startswith(("z_dim=", "hidden_dims="))],  # those two are searched
    "epochs=2",
    "eval.iw_samples=5",
    "hydra.sweeper.n_trials=2",
]


def _trials(tmp_path: Path, name: str):
    import optuna

    study = optuna.load_study(
        study_name=name, storage=f"sqlite:///{tmp_path / 'outputs' / 'optuna' / name}.db"
    )
    return study.get_trials(deepcopy=False)


def test_optuna_search_continues_the_stored_study(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import optuna

    composed = _compose(["hparams_search=moons_optuna"])
    params = composed.hydra.sweeper.params
    assert set(params) == {"lr", "z_dim", "hidden_dims", "objective.warmup_epochs"}
    assert composed.hydra.sweeper.direction == "maximize" and composed.dataset.name == "moons"

    first = run_script("train.py", *OPTUNA, cwd=tmp_path)
    trials = _trials(tmp_path, "moons")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    [sweep] = (tmp_path / "outputs" / "multirun").glob("*/*")
    for job, trial in enumerate(trials):  # the objective is the job's final validation ELBO
        assert trial.value == pytest.approx(read_metrics(sweep / str(job))["val/elbo"])
        config = yaml.safe_load((sweep / str(job) / "config.yaml").read_text())
        assert config["hidden_dims"] == json.loads(trial.params["hidden_dims"])  # a list choice, as a list
    assert (sweep / "optimization_results.yaml").is_file() and "Best value" in first.stdout + first.stderr

    run_script("train.py", *OPTUNA, cwd=tmp_path)  # the same command again: two more trials
    trials = _trials(tmp_path, "moons")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert [t.number for t in trials] == [0, 1, 2, 3]
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == 4, "a continued search must draw new trials, not repeat the first ones"
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*"))) == 2


def test_optuna_records_a_failed_trial_and_goes_on(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import optuna

    sweep = tmp_path / "outputs" / "multirun" / "fail"
    # lr=1e8 diverges in the first epoch; with the study's seed (0) one trial draws it and one does not.
    proc = run_script(
        "train.py",
        *OPTUNA,
        "lr=choice(1e-3,1e8)",
        "hydra.sweeper.study_name=fail",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # the sweep summary reports the failed job, after every trial ran
    assert "Traceback" not in out and "Failed experiment" in out
    trials = _trials(tmp_path, "fail")
    states = {t.params["lr"]: t.state for t in trials}
    assert states == {1e8: optuna.trial.TrialState.FAIL, 1e-3: optuna.trial.TrialState.COMPLETE}
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"] == {"failed": 1, "finished": 1}
    [failed] = [j for j in summary["jobs"] if j["status"] == "failed"]
    assert failed["reason"].startswith("non-finite loss in epoch 1")


def test_mnist_search_composes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.chdir(tmp_path)  # the study's database is looked for under outputs/optuna/ here
    cfg = _compose(["hparams_search=mnist_optuna"])
    assert cfg.dataset.name == "mnist" and cfg.likelihood.name == "bernoulli"
    assert cfg.hydra.sweeper.study_name == "mnist" and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.hydra.sweeper.params.hidden_dims == "choice([400], [512,256], [1024,512])"
    assert cfg.hydra.sweeper.sampler.seed == 0  # no stored study yet
    assert not (tmp_path / "outputs").exists()

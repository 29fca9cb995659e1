"""Compare the jobs of a Hydra multirun: one ranked table and a few plots instead of N metrics.json files.

A record is a dict with ``path`` (the job folder), ``name`` (its folder name, the job number),
``config`` (the resolved config flattened to dotted keys), ``overrides`` (that job's command-line
overrides as ``{key: value}``) and, for a finished job, ``metrics`` (its metrics.json) or, for a
failed one, ``error`` (the last error its train.log recorded, or None).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vae.errors import VAEError
from vae.files import atomic_write

LOWER_IS_BETTER_SUFFIXES = ("/nll", "_seconds")
LOG_AXIS_MIN_RATIO = 100.0  # numeric keys spanning more than two decades get a log x axis
MISSING = "-"  # how a key a run's config lacks (e.g. another likelihood's option) is shown


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"dataset.name": ...}``; lists become strings such as ``[400]`` so they compare."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = str(value) if isinstance(value, list) else value
    return flat


def _job_number(path: Path) -> tuple[int, int | str]:
    """Hydra numbers jobs 0, 1, ... 10: sort those numerically, any other folder name after them."""
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def _read_config(job: Path) -> dict[str, Any] | None:
    """The config the job trained with; a job that failed before training only has Hydra's copy."""
    for path in (job / "config.yaml", job / ".hydra" / "config.yaml"):
        if path.is_file():
            return flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    return None


def _read_overrides(job: Path) -> dict[str, str]:
    """``.hydra/overrides.yaml`` as ``{key: value}``, with Hydra's ``+``/``++``/``~`` prefixes dropped."""
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    overrides = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)):
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VAEError(f"{path} is not valid JSON ({e}); delete that job folder or re-run the job.") from e


def _last_error(job: Path) -> str | None:
    """The message of the last ERROR line in the job's train.log: why the job failed."""
    log = job / "train.log"
    if not log.is_file():
        return None
    errors = [line for line in log.read_text(errors="replace").splitlines() if "[ERROR]" in line]
    return errors[-1].split("] - ", 1)[-1] if errors else None


def _jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job folder of the sweep (one with a config), finished or failed, in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise VAEError(
            f"sweep directory {sweep_dir} does not exist; pass the hydra.sweep.dir of a "
            "`python scripts/train.py -m ...` run."
        )
    jobs = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=_job_number):
        config = _read_config(job)
        if config is None:
            continue
        record = {"path": job, "name": job.name, "config": config, "overrides": _read_overrides(job)}
        metrics = job / "metrics.json"
        if metrics.is_file():
            record["metrics"] = _read_metrics(metrics)
        else:
            record["error"] = _last_error(job)
        jobs.append(record)
    return jobs


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The finished jobs (those with metrics.json), sorted by job number."""
    return [job for job in _jobs(sweep_dir) if "metrics" in job]


def failed_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The jobs with a config but no metrics.json: they crashed or are still running."""
    return [job for job in _jobs(sweep_dir) if "metrics" not in job]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def available_metrics(runs: Iterable[dict]) -> list[str]:
    """The numeric metrics at least one run recorded."""
    return sorted({k for run in runs for k, v in run["metrics"].items() if _is_number(v)})


def check_metrics(runs: Sequence[dict], names: Iterable[str]) -> None:
    """Fail with the list of real metric names when asked for one no run recorded (usually a typo)."""
    available = available_metrics(runs)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise VAEError(f"no run recorded metric {', '.join(unknown)}; available: {', '.join(available)}.")


def _differs(runs: Sequence[dict], key: str) -> bool:
    return len({repr(run["config"].get(key)) for run in runs}) > 1


def _config_key(key: str, config: dict[str, Any]) -> str | None:
    """The config key an override sets: ``z_dim`` itself, or ``likelihood.name`` for a group choice."""
    for candidate in (key, f"{key.replace('/', '.')}.name"):
        if candidate in config:
            return candidate
    return None


def swept_keys(runs: Sequence[dict]) -> list[str]:
    """The config keys whose values differ between runs, in the order the sweep named them.

    The overrides say what was swept on purpose: switching ``likelihood=`` also changes that group's
    other options, which are a consequence, not a hyperparameter. Without overrides that differ, every
    differing config value counts.
    """
    keys: list[str] = []
    for run in runs:
        for override in run["overrides"]:
            key = _config_key(override, run["config"])
            if key is not None and key not in keys and _differs(runs, key):
                keys.append(key)
    if keys:
        return keys
    all_keys = dict.fromkeys(key for run in runs for key in run["config"])
    return [key for key in all_keys if _differs(runs, key)]


def is_higher_better(metric: str) -> bool:
    """Losses (``*/nll``) and costs (``*_seconds``) go down; ELBOs, log-likelihoods and the rest go up."""
    return not metric.endswith(LOWER_IS_BETTER_SUFFIXES)


def _value(run: dict, metric: str) -> float | None:
    value = run["metrics"].get(metric)
    return value if _is_number(value) and not math.isnan(value) else None


def rank(runs: Sequence[dict], metric: str, higher_is_better: bool | None = None) -> list[dict]:
    """The runs best first by ``metric`` (direction from its name unless given); runs without it go last."""
    check_metrics(runs, [metric])
    if higher_is_better is None:
        higher_is_better = is_higher_better(metric)
    sign = -1.0 if higher_is_better else 1.0

    def key(run: dict) -> tuple[bool, float]:
        value = _value(run, metric)
        return (value is None, 0.0 if value is None else sign * value)

    return sorted(runs, key=key)  # stable: ties keep job order


def _cell(value: Any, precise: bool) -> str:
    """A table cell: full float precision for the CSV (it is read back), six digits for people."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return repr(value) if precise else f"{value:.6g}"
    return str(value)


def write_table(
    runs: Sequence[dict], keys: Sequence[str], metrics: Sequence[str], out_dir: str | Path
) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.csv``: rank, run folder, ``keys``, ``metrics``, one row a run.

    ``runs`` come in the order to list them, best first (see :func:`rank`); returns the two paths.
    """
    out_dir = Path(out_dir)
    header = ["rank", "run", *keys, *metrics]

    def row(i: int, run: dict, precise: bool) -> list[str]:
        values = [run["config"].get(k) for k in keys] + [run["metrics"].get(m) for m in metrics]
        return [str(i), run["name"], *(_cell(v, precise) for v in values)]

    md_path, csv_path = out_dir / "comparison.md", out_dir / "comparison.csv"
    with atomic_write(md_path, "w") as f:
        for cells in (header, ["---"] * len(header), *(row(i, r, False) for i, r in enumerate(runs, 1))):
            f.write("| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |\n")
    with atomic_write(csv_path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(row(i, r, True) for i, r in enumerate(runs, 1))
    return md_path, csv_path


def axis_scale(values: Iterable[Any]) -> str:
    """``"category"`` unless every value is a number; ``"log"`` for positive ones over two decades (lr)."""
    values = list(values)
    if not values or not all(_is_number(v) for v in values):
        return "category"
    if min(values) > 0 and max(values) / min(values) > LOG_AXIS_MIN_RATIO:
        return "log"
    return "linear"


def _sort_key(value: Any) -> tuple[bool, float, str]:
    """Numbers in numeric order before anything else in text order, so mixed values still sort."""
    return (False, value, "") if _is_number(value) else (True, 0.0, _cell(value, False))


def plot_metric(runs: Sequence[dict], metric: str, keys: Sequence[str], out_dir: str | Path) -> list[Path]:
    """One PNG per swept key: ``metric`` against that key, one series per setting of the other keys.

    So ``test/nll`` against ``z_dim`` draws one line per likelihood. Returns the paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_metrics(runs, [metric])
    runs = [run for run in runs if _value(run, metric) is not None]
    paths = []
    for key in keys:
        others = [k for k in keys if k != key]
        xs = [run["config"].get(key) for run in runs]
        scale = axis_scale(xs)
        if scale == "category":
            labels = [_cell(x, False) for x in sorted(set(xs), key=_sort_key)]
            xs = [labels.index(_cell(x, False)) for x in xs]
            ticks = list(range(len(labels)))
        else:
            ticks = sorted(set(xs))
            labels = [_cell(t, False) for t in ticks]

        series: dict[tuple, list[tuple[float, float]]] = {}
        for run, x in zip(runs, xs, strict=True):
            setting = tuple(run["config"].get(k) for k in others)
            series.setdefault(setting, []).append((x, _value(run, metric)))

        fig = Figure(figsize=(6, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for setting in sorted(series, key=lambda values: tuple(map(_sort_key, values))):
            points = sorted(series[setting])
            label = ", ".join(f"{k}={_cell(v, False)}" for k, v in zip(others, setting, strict=True))
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label or None)
        if scale == "log":
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(ticks, labels)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {key}")
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize="small")
        path = Path(out_dir) / f"{metric.replace('/', '_')}_vs_{key}.png"
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        paths.append(path)
    return paths

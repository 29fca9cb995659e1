"""scripts/compare.py on a real 2x2 multirun, vae.compare's ranking and key detection, and bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from conftest import MOONS, read_metrics, run_script

from vae.compare import axis_scale, collect_runs, failed_runs, plot_metric, rank, swept_keys
from vae.errors import VAEError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEYS = ["z_dim", "likelihood.variance"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A finished 4-job sweep (z_dim x likelihood.variance), trained once for the whole module."""
    tmp = tmp_path_factory.mktemp("compare")
    sweep = tmp / "sweep"
    run_script(
        "train.py",
        "-m",
        *MOONS,
        "epochs=1",
        "plot.enabled=false",  # the per-run figures are not under test here and cost seconds a job
        "z_dim=1,2",
        "likelihood.variance=learned,fixed",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp,
    )
    return sweep


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def md_rows(path: Path) -> list[list[str]]:
    """The markdown table's cells, header first, the |---| line dropped."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [rows[0], *rows[2:]]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, path


def assert_one_line_error(proc, *expected: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert "Traceback" not in output
    for text in expected:
        assert text in output


def test_compare_ranks_the_sweep_and_writes_table_and_plots(sweep, tmp_path):
    proc = run_script("compare.py", str(sweep), cwd=tmp_path)
    metrics = {job: read_metrics(sweep / job) for job in ("0", "1", "2", "3")}
    metric = "test/nll" if "test/nll" in metrics["0"] else "test/elbo"
    higher = metric == "test/elbo"

    rows = read_csv(sweep / "comparison.csv")
    assert list(rows[0])[:4] == ["rank", "run", *KEYS] and metric in rows[0]
    assert sorted(row["run"] for row in rows) == ["0", "1", "2", "3"]
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    values = [float(row[metric]) for row in rows]
    assert values == sorted(values, reverse=higher), "best first"
    for row in rows:
        run_metrics = metrics[row["run"]]
        assert float(row[metric]) == run_metrics[metric]  # full precision in the CSV
        assert float(row["test/elbo"]) == run_metrics["test/elbo"]
        config = (sweep / row["run"] / "config.yaml").read_text()
        assert f"z_dim: {row['z_dim']}" in config and f"variance: {row['likelihood.variance']}" in config

    table = md_rows(sweep / "comparison.md")
    assert table[0][:4] == ["rank", "run", *KEYS]
    assert [r[1] for r in table[1:]] == [row["run"] for row in rows]
    assert "| rank | run | z_dim | likelihood.variance |" in proc.stdout

    for key in KEYS:
        png = sweep / f"{metric.replace('/', '_')}_vs_{key}.png"
        assert_png(png)
        assert f"wrote {png}" in proc.stdout
    assert not list(sweep.glob(".*.tmp")), "atomic writes leave no temporary files"
    assert "failed" not in proc.stdout


def test_explicit_metric_columns_direction_and_out_dir(sweep, tmp_path):
    out = tmp_path / "report"
    args = [str(sweep), "--metric", "test/elbo", "--metrics", "test/kl", "--out", str(out)]
    run_script("compare.py", *args, "--lower-is-better", cwd=tmp_path)
    rows = read_csv(out / "comparison.csv")
    assert list(rows[0]) == ["rank", "run", *KEYS, "test/elbo", "test/kl"]  # the ranking metric is shown
    elbos = [float(row["test/elbo"]) for row in rows]
    assert elbos == sorted(elbos)
    assert (out / "comparison.md").is_file()
    assert_png(out / "test_elbo_vs_z_dim.png")


def test_failed_job_is_listed_and_left_out_of_the_table(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("comparison.*", "*.png"))
    failed = copy / "4"
    (failed / ".hydra").mkdir(parents=True)
    shutil.copy(sweep / "0" / "config.yaml", failed / "config.yaml")
    (failed / ".hydra" / "overrides.yaml").write_text("- z_dim=3\n")
    (failed / "train.log").write_text(
        "[2024-01-01 00:00:00,000][vae.train][ERROR] - non-finite loss in epoch 1\n"
    )

    assert [run["name"] for run in collect_runs(copy)] == ["0", "1", "2", "3"]
    assert [(job["name"], job["error"]) for job in failed_runs(copy)] == [("4", "non-finite loss in epoch 1")]

    proc = run_script("compare.py", str(copy), "--metric", "test/elbo", cwd=tmp_path)
    assert "1 failed job(s)" in proc.stdout and f"{failed}: non-finite loss in epoch 1" in proc.stdout
    assert sorted(row["run"] for row in read_csv(copy / "comparison.csv")) == ["0", "1", "2", "3"]


def test_bad_input_exits_2_with_one_line(sweep, tmp_path):
    proc = run_script("compare.py", str(tmp_path / "missing"), cwd=tmp_path, check=False)
    assert_one_line_error(proc, "does not exist", "hydra.sweep.dir")

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_script("compare.py", str(empty), cwd=tmp_path, check=False)
    assert_one_line_error(proc, "no finished runs", "scripts/train.py -m")

    proc = run_script(
        "compare.py", str(sweep), "--metric", "test/nope", "--out", str(tmp_path), cwd=tmp_path, check=False
    )
    assert_one_line_error(proc, "test/nope", "available:", "test/elbo")
    assert not (tmp_path / "comparison.md").exists()


def record(name: str, metrics: dict, overrides: dict, config: dict) -> dict:
    return {"path": Path(name), "name": name, "config": config, "overrides": overrides, "metrics": metrics}


def test_swept_keys_prefer_overrides_and_rank_follows_the_metric_direction():
    gaussian = {"likelihood.name": "gaussian", "likelihood.variance": "learned", "epochs": 1}
    bernoulli = {"likelihood.name": "bernoulli", "epochs": 1}
    fixed = {"epochs": "1", "likelihood": "gaussian"}
    runs = [
        record("0", {"test/nll": 3.0, "test/elbo": -3.5}, {**fixed, "z_dim": "1"}, {**gaussian, "z_dim": 1}),
        record(
            "1",
            {"test/nll": 2.0, "test/elbo": -2.5},
            {**fixed, "likelihood": "bernoulli", "z_dim": "1"},
            {**bernoulli, "z_dim": 1},
        ),
        record("2", {"test/nll": 2.5, "test/elbo": -3.0}, {**fixed, "z_dim": "2"}, {**gaussian, "z_dim": 2}),
        record("3", {"test/elbo": float("nan")}, {**fixed, "z_dim": "2"}, {**gaussian, "z_dim": 2}),
    ]
    # The group choice counts as likelihood.name; the variance it drags along and constant keys do not.
    assert swept_keys(runs) == ["likelihood.name", "z_dim"]
    no_overrides = [{**run, "overrides": {}} for run in runs]
    assert swept_keys(no_overrides) == ["likelihood.name", "likelihood.variance", "z_dim"]

    def names(ranked: list[dict]) -> list[str]:
        return [run["name"] for run in ranked]

    assert names(rank(runs, "test/nll")) == ["1", "2", "0", "3"]  # lower is better; missing goes last
    assert names(rank(runs, "test/elbo")) == ["1", "2", "0", "3"]  # higher is better; NaN goes last
    assert names(rank(runs, "test/nll", higher_is_better=True)) == ["0", "2", "1", "3"]
    with pytest.raises(VAEError, match="available: test/elbo, test/nll"):
        rank(runs, "test/elbo_typo")


def test_axis_scale_and_plot_of_hand_made_records(tmp_path):
    assert axis_scale([1e-4, 1e-3, 1e-1]) == "log"
    assert axis_scale([1e-3, 1e-2]) == "linear"
    assert axis_scale([1, 2, 8]) == "linear"
    assert axis_scale(["learned", "fixed"]) == "category"
    assert axis_scale(["[16]", "[32, 32]"]) == "category"
    settings = [(1e-4, "[16]"), (1e-1, "[16]"), (1e-4, "[32, 32]"), (1e-1, "[32, 32]")]
    runs = [
        record(str(i), {"test/nll": 1.0 + i}, {"lr": str(lr)}, {"lr": lr, "hidden_dims": dims})
        for i, (lr, dims) in enumerate(settings)
    ]
    paths = plot_metric(runs, "test/nll", ["lr", "hidden_dims"], tmp_path)
    assert paths == [tmp_path / "test_nll_vs_lr.png", tmp_path / "test_nll_vs_hidden_dims.png"]
    for path in paths:
        assert_png(path)

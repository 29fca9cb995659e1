"""Compare a sweep: `python scripts/compare.py outputs/multirun/DATE/TIME [--metric test/nll] [--out DIR]`.

Writes comparison.md, comparison.csv and one plot per swept key, ranks the runs best first and lists
the jobs that failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vae.compare import (
    available_metrics,
    check_metrics,
    collect_runs,
    failed_runs,
    is_higher_better,
    plot_metric,
    rank,
    swept_keys,
    write_table,
)
from vae.errors import VAEError

DEFAULT_COLUMNS = (
    "test/elbo",
    "test/nll",
    "test/log_px",
    "test/kl",
    "test/active_units",
    "val/elbo",
    "train_seconds",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path, help="the hydra.sweep.dir of a `scripts/train.py -m` run")
    parser.add_argument(
        "--metric", help="rank and plot by this metric (default: test/nll when recorded, else test/elbo)"
    )
    parser.add_argument(
        "--metrics", nargs="+", help="the metric columns of the table (default: the usual test/val ones)"
    )
    parser.add_argument("--out", type=Path, help="where to write the table and plots (default: SWEEP_DIR)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--higher-is-better", dest="higher", action="store_const", const=True, help="override the direction"
    )
    direction.add_argument("--lower-is-better", dest="higher", action="store_const", const=False)
    return parser.parse_args(argv)


def compare(args: argparse.Namespace) -> None:
    runs, failed = collect_runs(args.sweep_dir), failed_runs(args.sweep_dir)
    if not runs:
        why = f" ({len(failed)} failed: see their train.log)" if failed else ""
        raise VAEError(
            f"no finished runs in {args.sweep_dir}{why}; expected job folders 0/, 1/, ... with metrics.json: "
            "run `python scripts/train.py -m ... hydra.sweep.dir=DIR` and pass DIR."
        )
    available = available_metrics(runs)
    metric = args.metric or ("test/nll" if "test/nll" in available else "test/elbo")
    columns = args.metrics or [m for m in DEFAULT_COLUMNS if m in available]
    check_metrics(runs, [metric, *columns])
    if metric not in columns:
        columns = [metric, *columns]
    higher = is_higher_better(metric) if args.higher is None else args.higher

    keys = swept_keys(runs)
    ranked = rank(runs, metric, higher)
    out_dir = args.out or args.sweep_dir
    md_path, csv_path = write_table(ranked, keys, columns, out_dir)
    pngs = plot_metric(ranked, metric, keys, out_dir)

    print(md_path.read_text())
    print(f"{len(runs)} runs ranked by {metric} ({'higher' if higher else 'lower'} is better)")
    for path in (md_path, csv_path, *pngs):
        print(f"wrote {path}")
    if failed:
        print(f"{len(failed)} failed job(s), not in the table:")
        for job in failed:
            print(f"  {job['path']}: {job['error'] or 'no metrics.json (crashed or still running)'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        compare(args)
    except VAEError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

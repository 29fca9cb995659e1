"""Benchmark the training loop and the evaluation: `python scripts/benchmark.py [--quick] [--device cpu]`.

Measures, in one run on the machine at hand, the GEMM rate (the floor), seconds per epoch of the project's
loop and of a naive DataLoader baseline for the reference (z=20) and default (z=10) models, and the cost
of the ELBO and IWAE evaluation; checks that the project's loss curve equals the baseline's and that the
chunked IWAE estimate equals the unchunked one. Writes benchmark.json and benchmark.md into --out and
prints the markdown (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import torch

from vae.benchmark import format_markdown, load_images, machine_info, mlp_train_flops, run_device
from vae.errors import VAEError
from vae.files import atomic_write, write_json

QUICK = {"examples": 2000, "epochs": 3, "iw_samples": 50, "eval_examples": 200, "gemm_n": 512}
FULL = {"examples": 60000, "epochs": 5, "iw_samples": 5000, "eval_examples": 1000, "gemm_n": 2048}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds): " + str(QUICK))
    p.add_argument("--epochs", type=int, help="epochs per loop, the first one a warm-up (full: 5)")
    p.add_argument("--examples", type=int, help="training examples (full: 60000)")
    p.add_argument("--iw-samples", type=int, help="K of the IWAE evaluation (full: 5000)")
    p.add_argument("--eval-examples", type=int, help="examples evaluated (full: 1000)")
    p.add_argument(
        "--device", choices=("cpu", "cuda", "all"), default="all", help="all: CPU and CUDA if present"
    )
    p.add_argument("--data-root", help="a folder with MNIST-format IDX files (default: random binary images)")
    p.add_argument("--dataset-name", default="mnist", help="mnist or fashion_mnist (file names, checksums)")
    p.add_argument("--out", type=Path, help="output folder (default outputs/benchmark/<date-time>)")
    args = p.parse_args(argv)
    for key, default in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, default)
    for key in ("epochs", "examples", "iw_samples", "eval_examples"):
        if getattr(args, key) <= 0:
            p.error(f"--{key.replace('_', '-')} must be a positive integer")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return benchmark(args)
    except VAEError as e:  # bad data under --data-root, an --out that cannot be written
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2


def benchmark(args: argparse.Namespace) -> int:
    out = args.out or Path("outputs/benchmark") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    devices = {
        "cpu": ["cpu"],
        "cuda": ["cuda"],
        "all": ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
    }

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    x = load_images(args.examples, args.data_root, args.dataset_name)
    data = f"{args.dataset_name} from {args.data_root}" if args.data_root else "random binary 28x28 images"
    result = {
        "machine": machine_info(),
        "settings": {
            "data": data,
            "examples": len(x),
            "epochs": args.epochs,
            "iw_samples": args.iw_samples,
            "eval_examples": min(args.eval_examples, len(x)),
            "gemm_n": args.gemm_n,
        },
        "train_flops_per_example": {f"z_dim={z}": mlp_train_flops(x.shape[1], [400], z) for z in (20, 10)},
        "devices": {
            name: run_device(
                torch.device(name), x, args.epochs, args.iw_samples, args.eval_examples, args.gemm_n, log
            )
            for name in devices[args.device]
        },
    }
    markdown = format_markdown(result)
    write_json(out / "benchmark.json", result)
    with atomic_write(out / "benchmark.md", "w") as f:
        f.write(markdown)
    print(markdown)
    log(f"written {out / 'benchmark.json'} and {out / 'benchmark.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

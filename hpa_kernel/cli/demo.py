"""``hpa-kernel demo``: the whole kit on a synthetic competition, on the CPU, in a few minutes."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic competition -> small trained ensemble -> submission.csv -> score vs a baseline",
        description="Build a synthetic competition, train a small three-group ensemble on the CPU, write and "
        "validate submission.csv with the budgeted driver (classic segmenter), score it in both IoU modes "
        "and compare with the label-frequency baseline on the same cells.",
    )
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    data = parser.add_argument_group("synthetic data")
    data.add_argument("--n-train", type=int, default=24, help="training images (default 24)")
    data.add_argument("--n-test", type=int, default=6, help="test images (default 6)")
    data.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    data.add_argument("--seed", type=int, default=2021, help="generator seed (default 2021)")
    train = parser.add_argument_group("ensemble")
    train.add_argument("--input-size", type=int, default=64, help="classifier input side (default 64)")
    train.add_argument("--epochs", type=int, default=1, help="epochs per group (default 1)")
    train.add_argument("--steps-per-epoch", type=int, default=40, help="optimizer steps per epoch (default 40)")
    train.add_argument("--no-train", action="store_true", help="use an untrained (random) ensemble: a fast smoke run")
    run_opts = parser.add_argument_group("execution")
    run_opts.add_argument("--workers", type=int, default=None, help="post-processing processes (default: all cores)")
    run_opts.add_argument("--threads", type=int, default=1,
                          help="torch CPU threads (default 1; more than the free cores slows training down)")
    run_opts.add_argument("--progress", action="store_true", help="show progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.demo import run_demo

    result = run_demo(
        args.out, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=args.seed,
        input_size=args.input_size, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        train=not args.no_train, workers=args.workers, torch_threads=args.threads, progress=args.progress,
    )
    sys.stdout.write(result.summary() + "\n")
    return 1 if result.problems else 0

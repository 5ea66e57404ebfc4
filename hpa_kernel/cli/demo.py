"""``hpa-kernel demo``: the whole kit on a synthetic competition, on the CPU, in a few minutes."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic competition -> small trained ensemble -> submission.csv -> score vs a baseline",
        description="Build a synthetic competition, train a small three-group ensemble on the CPU, write and "
        "validate submission.csv with the budgeted driver (classic segmenter), score it in both IoU modes, "
        "compare with the label-frequency baseline and the ceiling on the same cells and print per-class AP.",
    )
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    data = parser.add_argument_group("synthetic data")
    data.add_argument("--n-train", type=int, default=60, help="training images; the first 19 cover every class (default 60)")
    data.add_argument("--n-test", type=int, default=60, help="test images (default 60)")
    data.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    data.add_argument("--seed", type=int, default=2021, help="generator seed (default 2021)")
    train = parser.add_argument_group("ensemble (overrides of hpa_kernel.demo.DEMO_TRAINING)")
    train.add_argument("--input-size", type=int, default=None, help="classifier input side (default 64)")
    train.add_argument("--epochs", type=int, default=None, help="epochs per group (default 2)")
    train.add_argument("--steps-per-epoch", type=int, default=None, help="optimizer steps per epoch (default 80)")
    train.add_argument("--no-train", action="store_true", help="use an untrained (random) ensemble: a fast smoke run")
    run_opts = parser.add_argument_group("execution")
    run_opts.add_argument("--workers", type=int, default=None, help="post-processing processes (default: all cores)")
    run_opts.add_argument("--threads", type=int, default=1,
                          help="torch CPU threads (default 1; more than the free cores slows training down)")
    run_opts.add_argument("--report", action="store_true",
                          help="also write per_class_ap.png and cells_top3.png into --out (needs matplotlib)")
    run_opts.add_argument("--progress", action="store_true", help="show progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.demo import DemoConfig, run_demo

    training = {k: v for k, v in (("input_size", args.input_size), ("epochs", args.epochs),
                                  ("steps_per_epoch", args.steps_per_epoch)) if v is not None}
    config = DemoConfig(
        n_train=args.n_train, n_test=args.n_test, size=args.size, seed=args.seed, training=training,
        train=not args.no_train, workers=args.workers, torch_threads=args.threads, progress=args.progress,
        report=args.report,
    )
    result = run_demo(args.out, config)
    sys.stdout.write(result.summary() + "\n")
    return 1 if result.problems else 0

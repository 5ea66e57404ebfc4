"""``hpa-kernel demo``: the whole kit on a synthetic competition, on the CPU, in a few minutes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    loop = parser.add_argument_group("the data-centric loop (hpa_kernel.demo_loop)")
    loop.add_argument("--loop", action="store_true",
                      help="instead of the demo, run and score the loop: image labels -> pseudo labels -> a simulated "
                      "annotator through the labelling store -> fine-tuning, each step with a bootstrap interval")
    loop.add_argument("--n-per-class", type=int, nargs="+", default=[10, 30, 100],
                      help="cells the simulated annotator scores per class, one fine-tuning each (default 10 30 100)")
    loop.add_argument("--noise", type=float, default=0.1, help="the annotator's rate of wrong answers (default 0.1)")
    loop.add_argument("--bootstrap", type=int, default=200, help="resamples of the test images (default 200)")
    run_opts = parser.add_argument_group("execution")
    run_opts.add_argument("--workers", type=int, default=None, help="post-processing processes (default: all cores)")
    run_opts.add_argument("--threads", type=int, default=1,
                          help="torch CPU threads (default 1; more than the free cores slows training down)")
    run_opts.add_argument("--report", action="store_true",
                          help="also write per_class_ap.png and cells_top3.png into --out (needs matplotlib)")
    run_opts.add_argument("--progress", action="store_true", help="show progress bars")
    parser.set_defaults(func=run)
    return parser


def run_loop(args: argparse.Namespace) -> int:
    """``--loop``: :func:`hpa_kernel.demo_loop.run_loop`, its table, and ``loop.png`` with ``--report``."""
    from hpa_kernel.demo_loop import LoopConfig, plot_loop, run_loop

    steps = 2 * (args.steps_per_epoch or 80) if args.epochs is None else args.epochs * (args.steps_per_epoch or 80)
    config = LoopConfig(n_train=args.n_train, n_test=args.n_test, size=args.size, seed=args.seed,
                        n_per_class=tuple(args.n_per_class), noise=args.noise, steps=steps, bootstrap=args.bootstrap,
                        torch_threads=args.threads, workers=args.workers)
    result = run_loop(args.out, config)
    sys.stdout.write("hpa-kernel demo --loop\n" + result.markdown() + "\n")
    sys.stdout.write("CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.cpu_s.items()) + "\n")
    if args.report:
        sys.stdout.write(f"picture: {plot_loop(result, Path(args.out) / 'loop.png')}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.demo import DemoConfig, run_demo

    if args.loop:
        return run_loop(args)
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

"""The data-centric loop, measured (README "The data-centric loop"; benchmarks/RESULTS.md).

Runs :func:`hpa_kernel.demo_loop.run_loop` (as ``hpa-kernel demo --loop`` does), prints the table of
box/mask mAP@0.6 after each step with a 95 % bootstrap interval over the test images and the CPU
seconds of each stage, and draws the picture:

    python benchmarks/bench_loop.py --out loop_out --plot docs/loop.png
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def main(argv=None) -> int:
    from hpa_kernel.demo_loop import LoopConfig, cpu_seconds, plot_loop, run_loop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("loop_out"))
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-per-class", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--finetune-lr", type=float, default=None)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = LoopConfig(n_train=args.n_train, n_per_class=tuple(args.n_per_class), noise=args.noise, steps=args.steps,
                        finetune_lr=args.finetune_lr, bootstrap=args.bootstrap, workers=args.workers)
    result = run_loop(args.out, config)
    print(result.markdown())
    print("answers recorded:", result.annotations)
    print("CPU seconds:", {k: round(v, 1) for k, v in result.cpu_s.items()}, f"total {cpu_seconds():.0f}")
    print(f"load average at the end: {os.getloadavg()}")
    if args.plot:
        plot_loop(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

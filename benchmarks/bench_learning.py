"""The learning table of ``hpa-kernel demo`` (benchmarks/RESULTS.md, "Learning"), from a finished demo folder.

Rows: the ceiling (each cell of the submission given its best-matching truth cell's labels), the
label-frequency baseline, the demo's ensemble, and optionally one model of the demo's settings trained
on per-cell truth labels (``--truth-model``: truth cells of the train split, scored on the same test
images through the same submission driver). Then a bootstrap interval over the test images for
ensemble minus baseline.

    python benchmarks/bench_learning.py demo_out --bootstrap 200 --truth-model
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

logger = logging.getLogger("bench_learning")


def truth_model_submission(out: Path, competition, steps: int, workers: int | None) -> Path:
    """Train one group-1 model of the demo's settings on truth cells and submit with it alone."""
    from hpa_kernel import manifest as mf
    from hpa_kernel.demo import DEMO_TRAINING, demo_config, truth_training_cells
    from hpa_kernel.submission import SubmitConfig, run_submission
    from hpa_kernel.training import RunOptions, train_group

    cells = truth_training_cells(competition, out / "truth_cells", "train", DEMO_TRAINING["input_size"])
    weights = out / "truth_weights"
    path = train_group(demo_config(1, epochs=1, steps_per_epoch=steps), cells, weights,
                       options=RunOptions(device="cpu", progress=False, manifest=False))[-1]
    layout = mf.default_manifest()
    for group in layout.groups:  # every member is the same model: the ensemble is that model
        for ck in group.checkpoints:
            if not (weights / ck.file).exists():
                shutil.copyfile(path, weights / ck.file)
                shutil.copyfile(path.with_suffix(".json"), (weights / ck.file).with_suffix(".json"))
    mf.update_hashes(mf.write_manifest(layout, weights / mf.MANIFEST_NAME), weights, segmentation=False)
    report = run_submission(SubmitConfig(out=out / "truth_model_submission.csv", data=competition.root, weights=weights,
                                         segmenter="classic", device="cpu", workers=workers, progress=False))
    return report.path


def main(argv=None) -> int:
    from hpa_kernel.demo import bootstrap_difference, oracle_submission, score_submission
    from hpa_kernel.io import Competition

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_out", type=Path)
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples of the test images (default 200)")
    parser.add_argument("--truth-model", action="store_true", help="also train and score one truth-label model")
    parser.add_argument("--steps", type=int, default=160, help="steps of the truth-label model (default 160)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    comp = Competition(args.demo_out / "data")
    subs = {"ensemble": args.demo_out / "submission.csv", "baseline": args.demo_out / "baseline_submission.csv"}
    subs["ceiling"] = oracle_submission(subs["ensemble"], comp, args.demo_out / "oracle_submission.csv")
    if args.truth_model:
        t = time.perf_counter()
        subs["truth-label model"] = truth_model_submission(args.demo_out, comp, args.steps, args.workers)
        logger.info("truth-label model: %.0f s", time.perf_counter() - t)
    print(f"load average: {os.getloadavg()}")
    for name, path in subs.items():
        s = score_submission(path, comp)
        print(f"| {name} | {s['box'].map:.3f} | {s['mask'].map:.3f} |")
    t = time.perf_counter()
    d, lo, hi = bootstrap_difference(subs["ensemble"], subs["baseline"], comp, n=args.bootstrap)
    print(f"ensemble - baseline (box): {d:+.3f}, 95% bootstrap interval over test images [{lo:+.3f}, {hi:+.3f}] "
          f"({args.bootstrap} resamples, {time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

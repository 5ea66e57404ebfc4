"""The learning curve of the demo's recipe on synthetic competitions of growing size (benchmarks/RESULTS.md).

One synthetic competition (seed 2021) with ``max(--sizes)`` training images and a fixed test set
(``--n-test``, default 60). The training images are segmented once (classic segmenter, weak image
labels, as ``hpa-kernel demo``); size ``n`` trains on the cells of the first ``n`` training
images (the first 19 cover every class). For each size the demo's three-group ensemble
(:func:`hpa_kernel.demo.train_demo_ensemble`) is trained with ``--steps`` steps per epoch (``scaled``:
the demo's 80 per 60 images, in proportion to ``n``; or a fixed number), run on the test cells
(segmented once) and its confidences go through the default recipe
(:func:`hpa_kernel.demo_loop.submit_cells`). Printed: box and mask mAP@0.6, the label-frequency
baseline and the ceiling on the same cells, per-class AP of the classes that move most, and the
process CPU time of each size (training and inference, children included).

    python benchmarks/bench_learning_curve.py --out curve_out --sizes 60 120 240 480 --plot docs/learning_curve.png
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench_learning_curve")


def subset_cells(cells_csv: Path, image_ids, out_csv: Path) -> Path:
    """The rows of ``cells_csv`` whose image is in ``image_ids``, written beside it (crop paths stay valid)."""
    import pandas as pd

    df = pd.read_csv(cells_csv, dtype={"image_id": str, "labels": str}, keep_default_na=False)
    df[df["image_id"].isin(set(image_ids))].to_csv(out_csv, index=False)
    return out_csv


def run_size(n: int, args, comp, cells_csv: Path, test_cells: dict) -> dict:
    """Train the ensemble on the first ``n`` training images and score it; returns the row."""
    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.demo import DEMO_TRAINING, score_submission, train_demo_ensemble
    from hpa_kernel.demo_loop import cpu_seconds, submit_cells
    from hpa_kernel.manifest import load_manifest

    t = cpu_seconds()
    ids = comp.read_train()["ID"].tolist()[:n]
    sub_csv = subset_cells(cells_csv, ids, cells_csv.with_name(f"cells_n{n}.csv"))
    steps = round(DEMO_TRAINING["steps_per_epoch"] * n / 60) if args.steps == "scaled" else int(args.steps)
    weights = args.out / f"weights_n{n}"
    train_demo_ensemble(sub_csv, weights, steps_per_epoch=steps)
    manifest = load_manifest(weights_dir=weights, require_segmentation=False)
    ensemble = Ensemble.from_manifest(manifest, "cpu")
    path = submit_cells(ensemble, test_cells, comp, args.out / f"submission_n{n}.csv")
    scores = score_submission(path, comp)
    cpu = cpu_seconds() - t
    logger.info("n=%d: box %.4f mask %.4f, %.1f CPU-min", n, scores["box"].map, scores["mask"].map, cpu / 60)
    return {"n": n, "steps": steps, "path": path, "scores": scores, "cpu_min": cpu / 60}


def print_table(rows: list, baseline: dict, ceiling: dict) -> None:
    """The markdown table and the per-class AP of the classes that move most."""
    from hpa_kernel.classes import CLASS_NAMES

    print("| training images | steps per group | box mAP@0.6 | mask mAP@0.6 | CPU-min (train + test) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| label-frequency baseline | | {baseline['box'].map:.3f} | {baseline['mask'].map:.3f} | |")
    for r in rows:
        print(f"| {r['n']} | {2 * r['steps']} | {r['scores']['box'].map:.3f} | {r['scores']['mask'].map:.3f} | {r['cpu_min']:.1f} |")
    print(f"| ceiling (truth labels of the matched cells) | | {ceiling['box'].map:.3f} | {ceiling['mask'].map:.3f} | |")
    ap = np.array([[np.nan if r["scores"]["box"].per_class_ap[c] is None else r["scores"]["box"].per_class_ap[c]
                    for c in range(len(CLASS_NAMES))] for r in rows])
    move = np.nan_to_num(np.nanmax(ap, axis=0) - np.nanmin(ap, axis=0), nan=-1.0)
    print("\nper-class box AP, the classes that move most (by size; baseline last):")
    for c in np.argsort(-move)[:6]:
        values = " / ".join(f"{a:.2f}" for a in ap[:, c])
        print(f"  {c:>2} {CLASS_NAMES[c][:24]:<24} {values}   (baseline {baseline['box'].per_class_ap[c] or 0:.2f})")


def plot(rows: list, baseline: dict, ceiling: dict, path: Path) -> None:
    """Box and mask mAP against the number of training images, with the baseline and the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mode, marker in (("box", "o-"), ("mask", "s--")):
        ax.plot(n, [r["scores"][mode].map for r in rows], marker, label=f"ensemble ({mode} IoU)")
    ax.axhline(baseline["box"].map, color="grey", ls=":", label=f"label-frequency baseline (box) {baseline['box'].map:.3f}")
    ax.axhline(ceiling["box"].map, color="k", ls="--", lw=1, label=f"ceiling (box) {ceiling['box'].map:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(k) for k in n])
    ax.set_xlabel("training images (synthetic, weak image labels)")
    ax.set_ylabel("mAP@0.6 on 60 test images")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    from hpa_kernel.demo import build_training_cells, frequency_baseline, make_demo_competition, oracle_submission, score_submission
    from hpa_kernel.demo_loop import cpu_seconds, segment_test
    from hpa_kernel.io import Competition

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("curve_out"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 120, 240, 480])
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--steps", default="scaled", help="steps per epoch: 'scaled' (80 per 60 images) or a number")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t = cpu_seconds()
    cells_csv = args.out / "train_cells" / "cells.csv"
    if (args.out / "data" / "sample_submission.csv").is_file() and cells_csv.is_file():  # an earlier run's
        comp = Competition(args.out / "data")
    else:
        comp = make_demo_competition(args.out / "data", max(args.sizes), args.n_test)
        cells_csv = build_training_cells(comp, args.out / "train_cells", workers=args.workers)
    test_cells = segment_test(comp, workers=args.workers)
    logger.info("data, training cells and test cells: %.1f CPU-min", (cpu_seconds() - t) / 60)
    rows = [run_size(n, args, comp, cells_csv, test_cells) for n in sorted(args.sizes)]
    base = score_submission(frequency_baseline(rows[0]["path"], comp, args.out / "baseline_submission.csv"), comp)
    ceiling = score_submission(oracle_submission(rows[0]["path"], comp, args.out / "oracle_submission.csv"), comp)
    print_table(rows, base, ceiling)
    print(f"total CPU {cpu_seconds() / 60:.1f} min; load average at the end {os.getloadavg()}")
    if args.plot:
        plot(rows, base, ceiling, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

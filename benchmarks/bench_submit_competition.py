"""``hpa-kernel submit`` with the HPA segmenter over a competition-shaped test set: fallback rows per size.

The test set is ``hpa-kernel synth --sizes competition``: 2048², 1728² and 3072² images in the real
test set's proportions (462 : 68 : 29) plus one non-square image. The segmentation weight files are
the official names filled with the reference recipe (``shared/reference/segmentation`` §2), so
every size goes through the real networks, padding and restore; the classifier is a small random
ensemble. The cells found are meaningless, the plumbing is not: the acceptance is 0 images on the
error fallback and every sample row written.

    python benchmarks/bench_submit_competition.py                 # 8 test images, 2 workers, CPU
    python benchmarks/bench_submit_competition.py --n-test 20 --device cuda --append benchmarks/RESULTS.md

Prints a markdown table per size (images, predicted, rows with cells, fallback by reason) and the
load average; the exit status is 1 when an image got the error fallback or a row is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def make_weights(folder: Path) -> Path:
    """A random ensemble plus the two official segmentation file names, filled with the reference recipe."""
    import torch

    from hpa_kernel.demo import random_ensemble
    from hpa_kernel.segmentation.dpn_unet import DPNUnet, reference_fill_state_dict
    from hpa_kernel.segmentation.hpa import CELL_WEIGHTS, NUCLEI_WEIGHTS

    random_ensemble(folder, sizes=(1,), weights=(1.0,), arch="resnet18", input_size=64)
    with torch.device("meta"):
        net = DPNUnet()
    state = reference_fill_state_dict(net)
    for name in (NUCLEI_WEIGHTS, CELL_WEIGHTS):
        torch.save(state, folder / name)
    return folder


def run(work: Path, n_test: int = 8, device: str = "cpu", workers: int = 2, seed: int = 0) -> dict:
    """Synthesize, submit through the CLI, and count per image size. Returns the counts and the run's facts."""
    import pandas as pd

    python = [sys.executable, "-m", "hpa_kernel"]
    data, weights = work / "data", work / "weights"
    subprocess.run([*python, "-q", "synth", "--out", data, "--n-train", "0", "--n-test", str(n_test), "--sizes", "competition",
                    "--seed", str(seed), "--overwrite"], check=True)
    if not (weights / "weights_manifest.json").is_file():
        make_weights(weights)
    out, report_path = work / "submission.csv", work / "report.json"
    t0 = time.perf_counter()
    proc = subprocess.run([*python, "submit", "--data", data, "--weights", weights, "--out", out, "--report", report_path,
                           "--device", device, "--workers", str(workers), "--no-tta", "--no-progress", "--budget-hours", "8"],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"hpa-kernel submit failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(report_path.read_text())
    sample = pd.read_csv(data / "sample_submission.csv", dtype={"ID": str})
    rows = pd.read_csv(out, dtype={"ID": str, "PredictionString": str}, keep_default_na=False).set_index("ID")
    counts: dict[str, Counter] = {}
    for image_id, width, height in zip(sample["ID"], sample["ImageWidth"], sample["ImageHeight"]):
        c = counts.setdefault(f"{height}x{width}", Counter())
        c["images"] += 1
        c["rows written"] += int(image_id in rows.index)
        reason = report["fallback"].get(image_id)
        if reason is None:
            c["predicted"] += 1
            c["rows with cells"] += int(bool(rows.loc[image_id, "PredictionString"])) if image_id in rows.index else 0
        else:
            c[f"fallback ({reason.split(':')[0]})"] += 1
    return {"counts": counts, "elapsed_s": elapsed, "report": report, "segmenter_line": _runtime_line(proc.stderr)}


def _runtime_line(log: str) -> str:
    return next((line.split(": ", 1)[-1] for line in log.splitlines() if "runtime: " in line), "(no runtime line)")


def markdown(result: dict, n_test: int, device: str, workers: int) -> str:
    cols = ["images", "rows written", "predicted", "rows with cells"]
    extra = sorted({k for c in result["counts"].values() for k in c} - set(cols))
    lines = [
        "## `hpa-kernel submit` with the HPA segmenter on competition-shaped data (benchmarks/bench_submit_competition.py)",
        "",
        f"{n_test} test images (`hpa-kernel synth --sizes competition`), device {device}, {workers} workers, no TTA; "
        f"segmentation weights: the reference fill recipe. {result['segmenter_line']}. "
        f"Load average before/after: {result['load'][0]} / {result['load'][1]}. Wall time {result['elapsed_s']:.0f} s.",
        "",
        "| size (HxW) | " + " | ".join(cols + extra) + " |",
        "| --- |" + " --- |" * (len(cols) + len(extra)),
    ]
    for size, c in result["counts"].items():
        lines.append(f"| {size} | " + " | ".join(str(c.get(k, 0)) for k in cols + extra) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-test", type=int, default=8, help="test images (>= 4; default 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--append", default=None, help="append the markdown to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        before = os.getloadavg()
        result = run(work, args.n_test, args.device, args.workers)
        result["load"] = (f"{before[0]:.1f}", f"{os.getloadavg()[0]:.1f}")
    text = markdown(result, args.n_test, args.device, args.workers)
    sys.stdout.write(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    bad = sum(v for c in result["counts"].values() for k, v in c.items() if k.startswith("fallback"))
    missing = sum(c["images"] - c["rows written"] for c in result["counts"].values())
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main())

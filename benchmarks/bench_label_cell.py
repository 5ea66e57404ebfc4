"""Time hpacellseg's post-processing: the step-by-step oracle port against the fast label_cell.

Runs both on every reference case of ``../shared/reference/segmentation`` (median of 3 calls
each), checks fast == oracle == reference (the ``_ws_pre025`` arrays with scikit-image < 0.25,
the plain ones otherwise) and prints a markdown section with the machine, the versions and a
table of per-case times and speed ratios. ``--append FILE`` also appends that section to FILE.

    python benchmarks/bench_label_cell.py [--repeats 3] [--cases 01 05] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "segmentation"


def _load_oracle():
    spec = importlib.util.spec_from_file_location("oracle_label_cell", ROOT / "tests" / "oracle_label_cell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _median_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _same(a, b) -> bool:
    return a.dtype == b.dtype and np.array_equal(a, b)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="calls per case and implementation (median reported)")
    parser.add_argument("--cases", nargs="*", default=["01", "02", "03", "04", "05", "06"])
    parser.add_argument("--cv2-threads", type=int, default=1, help="OpenCV threads for the fast version (default 1: single thread)")
    parser.add_argument("--note", default="", help="a line added under the machine description")
    parser.add_argument("--append", type=Path, help="append the markdown section to this file")
    args = parser.parse_args(argv)

    import cv2
    import scipy
    import skimage

    from hpa_kernel.segmentation.postprocess import label_cell, label_nuclei, watershed_is_faithful

    cv2.setNumThreads(args.cv2_threads)
    oracle = _load_oracle()
    suffix = "_ws_pre025" if watershed_is_faithful() else ""
    rows, all_equal = [], True
    for case in args.cases:
        with np.load(REFERENCE / f"label_cell_case{case}.npz") as data:
            data = {k: data[k] for k in data.files}
        nuclei_pred, cell_pred = data["nuclei_pred"], data["cell_pred"]
        t_oracle, expected = _median_time(lambda: oracle.oracle_label_cell(nuclei_pred, cell_pred), args.repeats)
        t_fast, found = _median_time(lambda: label_cell(nuclei_pred, cell_pred), args.repeats)
        t_oracle_n, expected_n = _median_time(lambda: oracle.oracle_label_nuclei(nuclei_pred), args.repeats)
        t_fast_n, found_n = _median_time(lambda: label_nuclei(nuclei_pred), args.repeats)
        equal = (
            all(_same(f, e) for f, e in zip(found, expected))
            and _same(expected[0], data["nuclei_label" + suffix])
            and _same(expected[1], data["cell_label" + suffix])
            and _same(found_n, expected_n)
            and _same(expected_n, data["label_nuclei" + suffix])
        )
        all_equal &= equal
        size = f"{nuclei_pred.shape[0]}x{nuclei_pred.shape[1]}"
        rows.append((case, size, int(found[1].max()), t_oracle, t_fast, t_oracle_n, t_fast_n, equal))
        print(f"case {case}: oracle {t_oracle:.2f} s, fast {t_fast:.2f} s, equal={equal}", file=sys.stderr, flush=True)

    lines = [
        f"## label_cell post-processing: oracle port vs fast ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc), {_cpu_model()}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}, scikit-image {skimage.__version__}, "
        f"OpenCV {cv2.__version__} ({args.cv2_threads} thread(s) for the fast version). "
        f"Median of {args.repeats} calls per case, one process. Reference arrays: "
        f"`{'*' + suffix if suffix else '* (scikit-image >= 0.25)'}`.",
    ]
    if args.note:
        lines += ["", args.note]
    lines += [
        "",
        "| case | size | cells | oracle label_cell (s) | fast label_cell (s) | speed-up | oracle label_nuclei (s) | fast label_nuclei (s) | speed-up | fast == oracle == reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, size, cells, to, tf, ton, tfn, equal in rows:
        lines.append(
            f"| {case} | {size} | {cells} | {to:.2f} | {tf:.2f} | {to / tf:.1f}x | {ton:.2f} | {tfn:.2f} | {ton / tfn:.1f}x | {'yes' if equal else 'NO'} |"
        )
    total_o, total_f = sum(r[3] for r in rows), sum(r[4] for r in rows)
    lines.append(f"| all | | | {total_o:.2f} | {total_f:.2f} | {total_o / total_f:.1f}x | | | | {'yes' if all_equal else 'NO'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())

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


def _timed(fn):
    """(wall seconds, CPU seconds of this process, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _compare(slow, fast, repeats):
    """Call ``slow`` and ``fast`` alternately ``repeats`` times; medians of wall and CPU time."""
    times = {"slow": ([], []), "fast": ([], [])}
    results = {}
    for _ in range(repeats):
        for name, fn in (("slow", slow), ("fast", fast)):
            wall, cpu, results[name] = _timed(fn)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    medians = {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in times.items()}
    return medians["slow"], medians["fast"], results["slow"], results["fast"]


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

    from hpa_kernel.segmentation.postprocess import label_cell, label_nuclei

    cv2.setNumThreads(args.cv2_threads)
    oracle = _load_oracle()
    suffix = "_ws_pre025"  # the 2021 watershed (the kit's own), whatever scikit-image is installed
    rows, all_equal = [], True
    for case in args.cases:
        with np.load(REFERENCE / f"label_cell_case{case}.npz") as data:
            data = {k: data[k] for k in data.files}
        nuclei_pred, cell_pred = data["nuclei_pred"], data["cell_pred"]
        (t_oracle, c_oracle), (t_fast, c_fast), expected, found = _compare(
            lambda: oracle.oracle_label_cell(nuclei_pred, cell_pred), lambda: label_cell(nuclei_pred, cell_pred), args.repeats
        )
        (t_oracle_n, c_oracle_n), (t_fast_n, c_fast_n), expected_n, found_n = _compare(
            lambda: oracle.oracle_label_nuclei(nuclei_pred), lambda: label_nuclei(nuclei_pred), args.repeats
        )
        equal = (
            all(_same(f, e) for f, e in zip(found, expected))
            and _same(expected[0], data["nuclei_label" + suffix])
            and _same(expected[1], data["cell_label" + suffix])
            and _same(found_n, expected_n)
            and _same(expected_n, data["label_nuclei" + suffix])
        )
        all_equal &= equal
        size = f"{nuclei_pred.shape[0]}x{nuclei_pred.shape[1]}"
        rows.append((case, size, int(found[1].max()), t_oracle, t_fast, c_oracle, c_fast, t_oracle_n, t_fast_n, equal))
        print(f"case {case}: oracle {t_oracle:.2f} s (cpu {c_oracle:.2f}), fast {t_fast:.2f} s (cpu {c_fast:.2f}), equal={equal}",
              file=sys.stderr, flush=True)

    lines = [
        f"## label_cell post-processing: oracle port vs fast ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc), {_cpu_model()}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}, scikit-image {skimage.__version__}, "
        f"OpenCV {cv2.__version__} ({args.cv2_threads} thread(s) for the fast version). "
        f"Median of {args.repeats} calls per case, oracle and fast called alternately, one process; wall "
        f"time and CPU time of the process (the CPU time is less sensitive to other load). Reference arrays: "
        f"`{'*' + suffix if suffix else '* (scikit-image >= 0.25)'}`.",
    ]
    if args.note:
        lines += ["", args.note]
    lines += [
        "",
        "| case | size | cells | oracle wall (s) | fast wall (s) | speed-up wall | oracle CPU (s) | fast CPU (s) | speed-up CPU "
        "| label_nuclei oracle/fast wall (s) | fast == oracle == reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, size, cells, to, tf, co, cf, ton, tfn, equal in rows:
        lines.append(
            f"| {case} | {size} | {cells} | {to:.2f} | {tf:.2f} | {to / tf:.1f}x | {co:.2f} | {cf:.2f} | {co / cf:.1f}x "
            f"| {ton:.2f} / {tfn:.2f} | {'yes' if equal else 'NO'} |"
        )
    total = [sum(r[i] for r in rows) for i in (3, 4, 5, 6)]
    lines.append(
        f"| all | | | {total[0]:.2f} | {total[1]:.2f} | {total[0] / total[1]:.1f}x | {total[2]:.2f} | {total[3]:.2f} "
        f"| {total[2] / total[3]:.1f}x | | {'yes' if all_equal else 'NO'} |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())

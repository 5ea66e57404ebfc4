"""The cost of the team's inference crop against the kit's, on the real HPA field (benchmarks/RESULTS.md).

``crop_cells`` in both modes on ``../shared/reference/real`` (its cell mask, its 16-bit green channel
used for all four channels, as a 4-channel uint16 image): ``kit2025`` (8 bits first, INTER_AREA when
shrinking, re-masked) and ``milimed2021`` (the team's: uint16 through INTER_LINEAR, no re-mask). The
two modes alternate, each timed ``--repeats`` times; the ratio of the medians is the result, measured
in the same run.

    PYTHONPATH=. python benchmarks/bench_crops.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "real"


def load_field() -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 4) uint16, cell label (H, W)) of the real reference field."""
    from hpa_kernel._cv2 import cv2

    green = cv2.imread(str(REAL / "1000_A12_2_green.png"), cv2.IMREAD_UNCHANGED)
    cells = cv2.imread(str(REAL / "1000_A12_2_cellmask.png"), cv2.IMREAD_UNCHANGED)
    if green is None or cells is None:
        raise FileNotFoundError(f"the real reference field is not in {REAL}")
    return np.repeat(green[:, :, None], 4, axis=2), cells.astype(np.int32)


def main(argv=None) -> int:
    from hpa_kernel.cells.crops import crop_cells

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    image, cells = load_field()
    ids = [int(i) for i in np.unique(cells) if i]
    times: dict[str, list[float]] = {"kit2025": [], "milimed2021": []}
    for _ in range(args.repeats):
        for mode in times:
            t = time.perf_counter()
            crops = crop_cells(image, cells, ids, size=args.size, mode=mode)
            times[mode].append(time.perf_counter() - t)
            assert crops.shape == (len(ids), args.size, args.size, 4)
    kit, team = statistics.median(times["kit2025"]), statistics.median(times["milimed2021"])
    print(f"real field {image.shape[0]}x{image.shape[1]}, {len(ids)} cells, crops {args.size}, {args.repeats} repeats; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"kit2025 crop      {kit * 1e3:8.1f} ms per image ({kit / len(ids) * 1e3:.2f} ms per cell)")
    print(f"milimed2021 crop  {team * 1e3:8.1f} ms per image ({team / len(ids) * 1e3:.2f} ms per cell)")
    print(f"ratio milimed2021 / kit2025: {team / kit:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

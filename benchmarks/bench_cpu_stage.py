"""The CPU stage of a Kaggle run, per image, three ways in one run: the original sequential code, the kit
with 1 worker and the kit with 2 workers.

The CPU stage is what the two Kaggle cores do while the GPU runs the networks: ``label_cell`` on the
HPA networks' outputs, the cell heuristics (cleaners), the 512 x 512 crops and the EncodedMask of
every cell. Inputs are competition-shaped (2048², 1728² and 3072² by default): synthetic images
from :func:`hpa_kernel.synthetic.synthesize_image`, and network-output-like maps made from their
truth masks (border and interior planes, blurred, with noise: the form ``pred_nuclei``/
``pred_cells`` return), stored once as ``.npy`` and replayed in place of the GPU.

The three ways:

* **original**: one process, image by image, as the 2021 code did it: ``tests/oracle_label_cell.py``
  (the straightforward port of hpacellseg's ``label_cell``, with scikit-image's watershed where
  that is the 2021 one), the kit's heuristics, and per cell a full-image mask, its bounding box
  from ``np.nonzero``, the crop, and the competition's ``binary_mask_to_ascii`` (pycocotools).
* **kit, 1 worker** and **kit, 2 workers**: :class:`hpa_kernel.cells.CellPipeline` with a replay
  segmenter (the main process loads the maps as ``predict`` would return them) and the real
  ``label_cell`` in the workers.

Each way runs in its own child process; wall time and CPU time (main + workers) are measured
there. Outputs are compared image by image (table, crops, encoded masks, by SHA-1) and the run
fails when they differ. The load average is printed with the results: ratios are measured in the
same run, so that a busy machine affects the three ways alike, but it does affect them.

Usage::

    python benchmarks/bench_cpu_stage.py --out /tmp/bench_cpu [--shapes 2048x4,1728x2,3072x2]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CROP_SIZE = 512


# ----------------------------------------------------------------------------------------------
# inputs


def _plane(mask: np.ndarray, sigma: float, noise: float, rng) -> np.ndarray:
    import cv2

    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    blurred += rng.normal(0, noise, mask.shape).astype(np.float32)
    return np.clip(np.rint(255 * blurred), 0, 255).astype(np.uint8)


def _edges(label: np.ndarray) -> np.ndarray:
    import cv2

    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    label = label.astype(np.uint16)
    return cv2.dilate(label, cross) != cv2.erode(label, cross)


def maps_from_truth(nuclei_mask: np.ndarray, cell_mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``pred_nuclei``/``pred_cells``-like (H, W, 3) uint8 maps from truth label images."""
    rng = np.random.default_rng(seed)
    nuclei_edges, cell_edges = _edges(nuclei_mask), _edges(cell_mask)
    nuclei_pred = np.zeros(nuclei_mask.shape + (3,), np.uint8)
    cell_pred = np.zeros(cell_mask.shape + (3,), np.uint8)
    nuclei_pred[..., 1] = _plane(nuclei_edges, 1.5, 0.03, rng)
    nuclei_pred[..., 2] = _plane((nuclei_mask > 0) & ~nuclei_edges, 2.0, 0.05, rng)
    cell_pred[..., 1] = _plane(cell_edges, 1.5, 0.03, rng)
    cell_pred[..., 2] = _plane((cell_mask > 0) & ~cell_edges, 2.5, 0.08, rng)
    return nuclei_pred, cell_pred


def make_inputs(out: Path, shapes: list[tuple[int, int]], seed: int = 14) -> list[str]:
    """Write the images (PNG channels) and their maps (``maps/{id}_{nuclei,cell}.npy``); returns the ids."""
    from hpa_kernel.io import write_image
    from hpa_kernel.synthetic import synthesize_image

    (out / "maps").mkdir(parents=True, exist_ok=True)
    ids = []
    for k, (height, width) in enumerate(shapes):
        image_id = f"cpu{height}x{width}_{k:02d}"
        if not (out / "maps" / f"{image_id}_cell.npy").exists():
            sample = synthesize_image(seed + k, height, width)
            write_image(out / "images", image_id, sample.image)
            nuclei_pred, cell_pred = maps_from_truth(sample.nuclei_mask, sample.cell_mask, seed + k)
            np.save(out / "maps" / f"{image_id}_nuclei.npy", nuclei_pred)
            np.save(out / "maps" / f"{image_id}_cell.npy", cell_pred)
        ids.append(image_id)
    return ids


def load_maps(out: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(out / "maps" / f"{image_id}_nuclei.npy"), np.load(out / "maps" / f"{image_id}_cell.npy")


# ----------------------------------------------------------------------------------------------
# the three ways (each runs in a child process)


def digest(table, crops: np.ndarray, encoded: list[str]) -> str:
    """SHA-1 of what the classifier and the submission get from one image."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(table.to_numpy(dtype=np.float64)).tobytes())
    h.update(np.ascontiguousarray(crops).tobytes())
    h.update("\n".join(encoded).encode())
    return h.hexdigest()


def binary_mask_to_ascii(mask: np.ndarray) -> str:
    """The competition's encoder: pycocotools RLE of the Fortran-ordered mask, zlib level 9, base64."""
    from pycocotools import _mask as coco_mask

    fortran = np.asfortranarray(mask.astype(np.bool_).reshape(mask.shape[0], mask.shape[1], 1))
    counts = coco_mask.encode(fortran)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode()


def original_image(image: np.ndarray, nuclei_pred: np.ndarray, cell_pred: np.ndarray) -> str:
    """The 2021 way for one image: oracle label_cell, heuristics, per-cell full-image masks, crops, encoding."""
    sys.path.insert(0, str(ROOT / "tests"))
    from oracle_label_cell import oracle_label_cell

    from hpa_kernel.cells import CellConfig
    from hpa_kernel.cells.crops import crop_cell
    from hpa_kernel.cells.heuristics import score_cells

    config = CellConfig(crop_size=CROP_SIZE)
    nuclei_label, cell_label = oracle_label_cell(nuclei_pred, cell_pred)
    table = score_cells(image, nuclei_label, cell_label, config)
    ids = table["cell_id"].to_numpy()
    crops = np.zeros((len(ids), CROP_SIZE, CROP_SIZE, image.shape[2]), np.uint8)
    encoded = []
    for k, cell_id in enumerate(ids):
        mask = cell_label == cell_id
        ys, xs = np.nonzero(mask)
        box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
        crops[k] = crop_cell(image, cell_label, int(cell_id), box, CROP_SIZE, config.margin)
        encoded.append(binary_mask_to_ascii(mask))
    return digest(table, crops, encoded)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_original(out: Path, ids: list[str]) -> dict:
    from hpa_kernel.io import read_image

    digests, per_image = {}, {}
    cpu0, start = _cpu_seconds(), time.perf_counter()
    for image_id in ids:
        t0 = time.perf_counter()
        image = read_image(out / "images", image_id)
        nuclei_pred, cell_pred = load_maps(out, image_id)
        digests[image_id] = original_image(image, nuclei_pred, cell_pred)
        per_image[image_id] = time.perf_counter() - t0
    return {"seconds": time.perf_counter() - start, "cpu": _cpu_seconds() - cpu0, "digests": digests, "per_image": per_image}


def replay_segmenter(out: Path, ids: list[str]):
    """A segmenter whose ``predict`` hands out the stored maps in order (the GPU's part, replayed)."""
    from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps
    from hpa_kernel.segmentation.hpa import postprocess_maps

    class ReplaySegmenter(BaseSegmenter):
        name = "hpa-replay"
        postprocess_fn = staticmethod(postprocess_maps)

        def __init__(self):
            self.served = 0

        def predict(self, images):
            maps = []
            for image in images:
                nuclei_pred, cell_pred = load_maps(out, ids[self.served])
                if nuclei_pred.shape[:2] != image.shape[:2]:
                    raise ValueError(f"maps of {ids[self.served]} are {nuclei_pred.shape[:2]}, the image {image.shape[:2]}")
                maps.append(SegmentationMaps(nuclei_pred, cell_pred))
                self.served += 1
            return maps

    return ReplaySegmenter()


def run_kit(out: Path, ids: list[str], workers: int) -> dict:
    from hpa_kernel.cells import CellConfig, CellPipeline, PipelineOptions

    pipeline = CellPipeline(replay_segmenter(out, ids), CellConfig(crop_size=CROP_SIZE), workers=workers, options=PipelineOptions(encode_masks=True))
    digests, first = {}, None
    cpu0, start = _cpu_seconds(), time.perf_counter()
    for result in pipeline.run(out / "images", ids, progress=False):
        first = time.perf_counter() - start if first is None else first
        if not result.ok:
            raise RuntimeError(f"image {result.image_id} failed: {result.reason}")
        digests[result.image_id] = digest(result.table, result.crops, result.encoded)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu": _cpu_seconds() - cpu0, "digests": digests, "first_s": first}


def child(out: Path, ids: list[str], way: str) -> dict:
    cmd = [sys.executable, __file__, "--child", way, "--out", str(out), "--ids", ",".join(ids)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# report


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{platform.system()} {platform.machine()}, {cpus} usable cores, load average {load} (1/5/15 min), Python {platform.python_version()}"


def report(ids: list[str], rows: dict[str, dict], load_before: str, load_after: str) -> tuple[str, bool]:
    n = len(ids)
    original = rows["original"]
    same = {way: rows[way]["digests"] == original["digests"] for way in rows}
    lines = [
        f"{n} images ({', '.join(sorted({i.split('_')[0][3:] for i in ids}))}), crops {CROP_SIZE}, mask encoding on.",
        f"Load before: {load_before}; after: {load_after}.",
        "",
        "| way | s/image (wall) | CPU s/image (main + workers) | vs original (wall) | vs original (CPU) | identical outputs |",
        "|---|---|---|---|---|---|",
    ]
    for way, label in (("original", "original, sequential"), ("kit1", "kit, 1 worker"), ("kit2", "kit, 2 workers")):
        r = rows[way]
        lines.append(
            f"| {label} | {r['seconds'] / n:.2f} | {r['cpu'] / n:.2f} | {original['seconds'] / r['seconds']:.2f}x "
            f"| {original['cpu'] / r['cpu']:.2f}x | {same[way]} |"
        )
    by_shape: dict[str, list[float]] = {}
    for image_id, seconds in original["per_image"].items():
        by_shape.setdefault(image_id.split("_")[0][3:], []).append(seconds)
    lines.append("")
    lines.append("Original, s/image by shape: " + ", ".join(f"{k}: {np.mean(v):.2f}" for k, v in sorted(by_shape.items())) + ".")
    ratio = original["seconds"] / rows["kit2"]["seconds"]
    wall2 = rows["kit2"]["seconds"] / n
    lines.append(f"Goal (a) >= 4x the original at identical output: {ratio:.2f}x, {'met' if ratio >= 4 and all(same.values()) else 'NOT met'}.")
    lines.append(f"Goal (b) <= 2 s per image on 2 cores (kit, 2 workers, wall): {wall2:.2f} s, {'met' if wall2 <= 2 else 'NOT met'}.")
    cpu2, cpu0 = rows["kit2"]["cpu"] / n, original["cpu"] / n
    lines.append(
        f"CPU work: the kit needs {cpu0 / cpu2:.2f}x less than the original ({cpu2:.2f} against {cpu0:.2f} CPU s/image); "
        f"on two idle cores at perfect scaling that is {cpu2 / 2:.2f} s/image, {2 * cpu0 / cpu2:.2f}x the original sequential."
    )
    return "\n".join(lines), all(same.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/bench_cpu_stage", help="folder for the inputs (kept between runs)")
    parser.add_argument("--shapes", default="2048x4,1728x2,3072x2", help="SIDExCOUNT,... (square images)")
    parser.add_argument("--child", choices=("original", "kit1", "kit2"), help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.child:
        ids = args.ids.split(",")
        result = run_original(out, ids) if args.child == "original" else run_kit(out, ids, int(args.child[-1]))
        print(json.dumps(result))
        return 0
    shapes = []
    for part in args.shapes.split(","):
        side, count = (int(v) for v in part.lower().split("x"))
        shapes += [(side, side)] * count
    ids = make_inputs(out, shapes)
    load_before = machine()
    rows = {way: child(out, ids, way) for way in ("original", "kit1", "kit2")}
    text, same = report(ids, rows, load_before, machine())
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

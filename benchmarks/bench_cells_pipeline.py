"""Benchmark of the cells stage, and evaluation of its border/outlier heuristics.

Throughput: synthetic 2048 x 2048 images (``hpa_kernel.synthetic``) go through the whole CPU stage
(segmentation, label post-processing, heuristics, 512 x 512 crops, mask encoding) three ways: a
sequential loop in one process (``workers=0``), 1 worker and 2 workers. Each configuration runs in
its own child process so that its peak memory (main process + workers, resident set sampled every
50 ms with psutil, or ``getrusage`` maxima when psutil is absent) is its own. A 3072 x 3072 run with
2 workers checks the memory goal (< 6 GB).

Heuristics: precision and recall of the ``border`` flag (nucleus cut > max_train_cut) against the
generator's true cut fraction, on the truth masks; and of the ``outlier`` flag against the planted
debris, (a) with the debris objects added to the truth masks as extra "cells", (b) end to end with
the classic segmenter, where a segment is debris when most of its pixels are debris.

Usage::

    python benchmarks/bench_cells_pipeline.py --out /tmp/bench_cells [--n 6] [--size 2048]
    python benchmarks/bench_cells_pipeline.py --heuristics --out /tmp/bench_cells
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, size: int, seed: int = 2048) -> list[str]:
    from hpa_kernel.io import write_image
    from hpa_kernel.synthetic import synthesize_image

    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        image_id = f"bench{size}_{i:02d}"
        if not (folder / f"{image_id}_yellow.png").exists():
            write_image(folder, image_id, synthesize_image(seed + i, size, size).image)
        ids.append(image_id)
    return ids


class PeakMemory:
    """Peak of the summed RSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                total = self._proc.memory_info().rss
                for child in self._proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        if self._proc is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._thread.join()
        else:  # upper bound: max RSS of self + max RSS of any one child, each times... reported as is
            self.peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                         + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
        return False

    @property
    def method(self) -> str:
        return "psutil RSS sum, 50 ms sampling" if self._proc is not None else "getrusage maxrss self + largest child"


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "segmentation"


def replay_segmenter(reference: Path = REFERENCE):
    """The HPA segmenter's CPU side without its networks: ``predict`` hands out the network outputs
    stored in the reference label_cell cases 01-04 (2048 x 2048, made by hpacellseg), in turn, as a
    GPU would; post-processing is the real ``label_cell`` (``hpa.postprocess_maps``) in the workers.
    This is the CPU stage of a Kaggle run, where the networks run on the GPU."""
    from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps
    from hpa_kernel.segmentation.hpa import postprocess_maps

    maps = []
    for k in range(1, 5):
        with np.load(reference / f"label_cell_case0{k}.npz") as case:
            maps.append((case["nuclei_pred"], case["cell_pred"]))

    class ReplaySegmenter(BaseSegmenter):
        name = "hpa-replay"
        postprocess_fn = staticmethod(postprocess_maps)

        def __init__(self):
            self.served = 0

        def predict(self, images):
            out = []
            for image in images:
                nuclei, cell = maps[self.served % len(maps)]
                if image.shape[:2] != nuclei.shape[:2]:
                    raise ValueError(f"replay maps are {nuclei.shape[:2]}, the image is {image.shape[:2]}: use --size 2048")
                out.append(SegmentationMaps(nuclei, cell))
                self.served += 1
            return out

    return ReplaySegmenter()


def run_one(folder: str, ids: list[str], workers: int, crop_size: int, segmenter_name: str = "classic") -> dict:
    """One configuration, in this (child) process; returns timings and peak memory."""
    from hpa_kernel.cells import CellConfig, CellPipeline, PipelineOptions
    from hpa_kernel.segmentation import create_segmenter

    segmenter = replay_segmenter() if segmenter_name == "hpa-replay" else create_segmenter(segmenter_name)
    pipeline = CellPipeline(segmenter, CellConfig(crop_size=crop_size), workers=workers, options=PipelineOptions(encode_masks=True))
    n_cells = n_failed = 0
    cpu0 = _cpu_seconds()
    with PeakMemory() as mem:
        start = time.perf_counter()
        first = None
        for result in pipeline.run(folder, ids, progress=False):
            first = time.perf_counter() - start if first is None else first
            if result.ok:
                n_cells += len(result.table)
            else:
                n_failed += 1
                print(f"failed {result.image_id}: {result.reason}", file=sys.stderr)
        seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0  # the workers are joined (and counted) when the run ends
    return {"workers": workers, "images": len(ids), "cells": n_cells, "failed": n_failed, "seconds": seconds,
            "cpu_per_image": cpu / len(ids), "first_s": first,
            "images_per_s": len(ids) / seconds, "peak_rss_gb": mem.peak / 1e9, "memory_method": mem.method}


def child(folder: Path, ids: list[str], workers: int, crop_size: int, segmenter: str = "classic") -> dict:
    cmd = [sys.executable, __file__, "--child", "--folder", str(folder), "--workers", str(workers),
           "--crop-size", str(crop_size), "--ids", ",".join(ids), "--segmenter", segmenter]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.system()} {platform.machine()}, {cpus} usable cores ({model}), {mem:.0f} GB RAM, load average {load:.2f} at start, Python {platform.python_version()}"


def throughput(out: Path, n: int, size: int, big: int, crop_size: int, big_n: int = 4, segmenter: str = "classic") -> str:
    folder = out / "images"
    ids = make_images(folder, n, size)
    rows = [child(folder, ids, w, crop_size, segmenter) for w in (0, 1, 2)]
    base = rows[0]["images_per_s"]
    what = ("HPA post-processing (label_cell) on replayed hpacellseg network outputs" if segmenter == "hpa-replay"
            else f"{segmenter} segmenter")
    lines = [f"Images: {n} synthetic {size}x{size} 8-bit, {what}, crops {crop_size}, mask encoding on.", "",
             "| mode | images/s | vs sequential | first result after | CPU s/image (main + workers) | cells | failed | peak RSS (main + workers) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mode = "sequential loop (workers=0)" if r["workers"] == 0 else f"{r['workers']} worker(s)"
        lines.append(f"| {mode} | {r['images_per_s']:.3f} | {r['images_per_s'] / base:.2f}x | {r['first_s']:.1f} s | {r['cpu_per_image']:.2f} | {r['cells']} | {r['failed']} | {r['peak_rss_gb']:.2f} GB |")
    if big:
        big_ids = make_images(out / "images_big", big_n, big, seed=3072)
        r = child(out / "images_big", big_ids, 2, crop_size, "classic")
        lines.append(f"| {big}x{big}, 2 workers ({len(big_ids)} images) | {r['images_per_s']:.3f} | | {r['first_s']:.1f} s | {r['cpu_per_image']:.2f} | {r['cells']} | {r['failed']} | {r['peak_rss_gb']:.2f} GB |")
    lines += ["", f"Memory: {rows[0]['memory_method']}."]
    return "\n".join(lines)


def _pr(flag: np.ndarray, truth: np.ndarray) -> str:
    tp, fp, fn = int((flag & truth).sum()), int((flag & ~truth).sum()), int((~flag & truth).sum())
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    return f"precision {p:.3f}, recall {r:.3f} (TP {tp}, FP {fp}, FN {fn})"


def heuristics(n: int, size: int, classic: bool) -> str:
    from hpa_kernel.cells import CellConfig, score_cells
    from hpa_kernel.synthetic import synthesize_image

    config = CellConfig()
    cut_true, cut_est, deb_truth, deb_flag, seg_truth, seg_flag = [], [], [], [], [], []
    n_debris = 0
    segmenter = None
    if classic:
        from hpa_kernel.segmentation import create_segmenter

        segmenter = create_segmenter("classic")
    for seed in range(n):
        s = synthesize_image(50_000 + seed, size, size)  # not the seeds the threshold was tuned on
        table = score_cells(s.image, s.nuclei_mask, s.cell_mask, config)
        cut_true += [s.nucleus_cut[int(c)] for c in table.cell_id]
        cut_est += table.nucleus_cut.tolist()
        # (a) the debris as extra "cells" of the truth masks
        cell = s.cell_mask.copy()
        offset = int(cell.max())
        debris = s.debris_mask > 0
        cell[debris] = s.debris_mask[debris] + offset
        n_debris += len(s.debris)
        t = score_cells(s.image, s.nuclei_mask, cell, config)
        deb_truth += (t.cell_id > offset).tolist()
        deb_flag += t.outlier.tolist()
        # (b) end to end with the classic segmenter
        if segmenter is not None:
            nuclei_label, cell_label = segmenter.segment([s.image])[0]
            t = score_cells(s.image, np.asarray(nuclei_label), np.asarray(cell_label), config)
            for cell_id, flag in zip(t.cell_id, t.outlier):
                m = cell_label == cell_id
                seg_truth.append(bool(debris[m].mean() > 0.5))
                seg_flag.append(bool(flag))
    cut_true, cut_est = np.array(cut_true), np.array(cut_est)
    lines = [f"{n} synthetic {size}x{size} images, {len(cut_true)} true cells, {int((cut_true > 0).sum())} with a nucleus cut by the border, {n_debris} debris objects; default CellConfig (max_train_cut {config.max_train_cut}, outlier_threshold {config.outlier_threshold}).", ""]
    touching = cut_true > 0
    lines.append(f"* nucleus cut estimate on the truth masks: mean absolute error {np.abs(cut_est - cut_true)[touching].mean():.3f} over the cut nuclei, correlation {np.corrcoef(cut_true, cut_est)[0, 1]:.3f}.")
    lines.append(f"* `border` flag (cut > {config.max_train_cut}) vs true cut > {config.max_train_cut}: {_pr(cut_est > config.max_train_cut, cut_true > config.max_train_cut)}.")
    lines.append(f"* `outlier` flag, truth masks + debris as extra cells: {_pr(np.array(deb_flag), np.array(deb_truth))}.")
    if segmenter is not None:
        lines.append(f"* `outlier` flag, classic segmenter end to end ({len(seg_truth)} segments, {int(np.sum(seg_truth))} of them mostly debris): {_pr(np.array(seg_flag), np.array(seg_truth))}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/bench_cells")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--big", type=int, default=3072, help="side of the memory-goal run (0: skip)")
    parser.add_argument("--big-n", type=int, default=4, help="images in the memory-goal run")
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--heuristics", action="store_true", help="evaluate the heuristics instead")
    parser.add_argument("--no-classic", action="store_true", help="heuristics: skip the end-to-end classic run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--segmenter", default="classic", choices=("classic", "hpa-replay"),
                        help="hpa-replay: label_cell on stored hpacellseg network outputs (2048 only)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.folder, args.ids.split(","), args.workers, args.crop_size, args.segmenter)))
        return 0
    out = Path(args.out)
    print(f"Machine: {machine()}\n")
    if args.heuristics:
        print(heuristics(args.n, args.size, not args.no_classic))
    else:
        print(throughput(out, args.n, args.size, args.big, args.crop_size, args.big_n, args.segmenter))
    return 0


if __name__ == "__main__":
    sys.exit(main())

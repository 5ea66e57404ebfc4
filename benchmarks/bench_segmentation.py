"""Throughput of the HPA segmenter (``HPASegmenter.predict``): batch sizes, and on CUDA fp16 / channels_last.

Runs on CPU everywhere; the CUDA part runs only where CUDA is available (otherwise it is skipped
with a message). Weights: the reference fill recipe (README section 2 of the segmentation
reference), written once to a temporary plain state_dict file. Timings do not depend on the weight
values; the fp16-vs-fp32 label agreement does a little, so treat it as indicative until it is
repeated with the official weights (``--nuclei``/``--cell``).

Prints markdown to stdout; ``--append PATH`` also appends it to a results file.

    python benchmarks/bench_segmentation.py                    # CPU: batches 1, 2, 4, 8 of 2048^2
    python benchmarks/bench_segmentation.py --append benchmarks/RESULTS.md
    python benchmarks/bench_segmentation.py --nuclei N.pth --cell C.pth --gpu-repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hpa_kernel.segmentation.hpa import HPASegmenter


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def make_weights(folder: Path) -> Path:
    from hpa_kernel.segmentation.dpn_unet import DPNUnet, reference_fill_state_dict

    with torch.device("meta"):
        net = DPNUnet()
    path = folder / "dpn_unet_fill.pth"
    torch.save(reference_fill_state_dict(net), path)
    return path


def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    from hpa_kernel.synthetic import synthesize_image

    base = [synthesize_image(seed + i, size, size).image for i in range(min(n, 2))]
    return [base[i % len(base)] for i in range(n)]


def timed_predict(seg: HPASegmenter, images: list[np.ndarray], repeats: int) -> tuple[float, list]:
    """Best wall time of ``repeats`` predict calls (CUDA synchronised) and the last output."""
    best = float("inf")
    out = None
    for _ in range(repeats):
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = seg.predict(images)
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def timed_network(seg: HPASegmenter, images: list[np.ndarray], repeats: int) -> float:
    """Best time of both networks alone on ready-made input tensors (no pre/post-processing)."""
    from hpa_kernel.segmentation import preprocess

    resize = {"scale_factor": seg.scale_factor, "padding": seg.padding, "resize_mode": seg.resize_mode}
    nuc = np.stack([preprocess.nuclei_input(im[..., 2], **resize) for im in images])
    cel = np.stack([preprocess.cell_input(im[..., 0], im[..., 3], im[..., 2], **resize) for im in images])
    best = float("inf")
    for _ in range(repeats):
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        seg._run(seg.nuclei_net, nuc)
        seg._run(seg.cell_net, cel)
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_section(nuclei: Path, cell: Path, size: int, batches: list[int], threads: int) -> list[str]:
    torch.set_num_threads(threads)
    lines = [f"### CPU, {size} x {size} images, `predict` (preprocessing + both networks + restore)", ""]
    lines += ["| batch | time / batch | images/s | vs batch 1 |", "| --- | --- | --- | --- |"]
    base = None
    for b in batches:
        seg = HPASegmenter(nuclei=nuclei, cell=cell, device="cpu", batch_size=b)
        images = make_images(b, size)
        if base is None:
            timed_predict(seg, images[:1], 1)  # warm-up (allocator, page-in of the weights)
        t, _ = timed_predict(seg, images, 1)
        rate = b / t
        base = base or rate
        lines.append(f"| {b} | {t:.1f} s | {rate:.3f} | {rate / base:.2f}x |")
        print(lines[-1], file=sys.stderr, flush=True)
        del seg
    return lines + [""]


def _agreement(a: list, b: list) -> tuple[float, float]:
    from hpa_kernel.segmentation.hpa import postprocess_maps

    cell, nuc = [], []
    for ma, mb in zip(a, b):
        na, ca = postprocess_maps(ma)
        nb, cb = postprocess_maps(mb)
        cell.append((ca == cb).mean())
        nuc.append((na == nb).mean())
    return float(np.mean(cell)), float(np.mean(nuc))


def variants_section(nuclei: Path, cell: Path, size: int, batches: list[int], repeats: int, device: str) -> list[str]:
    variants = [
        ("fp32", {}),
        ("fp16 autocast", {"fp16": True}),
        ("channels_last", {"channels_last": True}),
        ("fp16 + channels_last", {"fp16": True, "channels_last": True}),
    ]
    lines = [f"### {device.upper()}, {size} x {size} images: fp32 vs fp16 autocast vs channels_last", ""]
    lines += [
        "Best of %d runs. `predict` = preprocessing + networks + restore; `networks` = both networks on "
        "ready tensors. Ratios are images/s relative to fp32 at batch 1 in this run." % repeats,
        "",
        "| variant | batch | predict images/s | vs fp32 b1 | networks images/s | vs fp32 b1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base_pred = base_net = None
    reference_maps = None
    agreement = {}
    images_all = make_images(max(batches), size)
    for name, flags in variants:
        seg = HPASegmenter(nuclei=nuclei, cell=cell, device=device, batch_size=max(batches), **flags)
        timed_predict(seg, images_all[:1], 1)  # warm-up (cudnn autotune, allocator)
        for b in batches:
            seg.batch_size = b
            images = images_all[:b]
            t_pred, maps = timed_predict(seg, images, repeats)
            t_net = timed_network(seg, images, repeats)
            r_pred, r_net = b / t_pred, b / t_net
            if base_pred is None:
                base_pred, base_net = r_pred, r_net
            lines.append(
                f"| {name} | {b} | {r_pred:.2f} | {r_pred / base_pred:.2f}x | {r_net:.2f} | {r_net / base_net:.2f}x |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
        seg.batch_size = max(batches)
        _, maps = timed_predict(seg, images_all, 1)
        if reference_maps is None:
            reference_maps = maps
        else:
            agreement[name] = _agreement(reference_maps, maps)
        del seg
        if device == "cuda":
            torch.cuda.empty_cache()
    lines += ["", "Label agreement with fp32 (fraction of equal pixels, mean over %d images):" % len(images_all), ""]
    lines += ["| variant | cell_label | nuclei_label |", "| --- | --- | --- |"]
    lines += [f"| {name} | {c:.6f} | {n:.6f} |" for name, (c, n) in agreement.items()]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nuclei", type=Path, help="nuclei weights (default: the fill recipe)")
    parser.add_argument("--cell", type=Path, help="cell weights (default: the fill recipe)")
    parser.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    parser.add_argument("--cpu-batches", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu-batches", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--gpu-repeats", type=int, default=3)
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    parser.add_argument(
        "--variants-on-cpu",
        action="store_true",
        help="smoke-test the variant table on CPU (fp16/channels_last are ignored there)",
    )
    parser.add_argument("--append", type=Path, help="also append the markdown to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    out = ["", "## HPA segmenter throughput (benchmarks/bench_segmentation.py)", "", f"Machine: {machine()}.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        if args.nuclei and args.cell:
            nuclei, cell = args.nuclei, args.cell
            out.append(f"Weights: {nuclei.name}, {cell.name}.")
        else:
            nuclei = cell = make_weights(Path(tmp))
            out.append("Weights: the reference fill recipe (timings do not depend on the values).")
        out.append("")
        if not args.no_cpu and args.cpu_batches:
            out += cpu_section(nuclei, cell, args.size, args.cpu_batches, args.cpu_threads)
        if torch.cuda.is_available():
            out += variants_section(nuclei, cell, args.size, args.gpu_batches, args.gpu_repeats, "cuda")
        else:
            out += ["CUDA is not available here: the fp32 / fp16 / channels_last comparison was skipped.", ""]
            if args.variants_on_cpu:
                out += variants_section(nuclei, cell, args.size, args.gpu_batches, 1, "cpu")
    text = "\n".join(out)
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

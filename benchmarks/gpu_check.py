"""The Python side of ``benchmarks/gpu_check.sh``: segmentation variants, classifier throughput, submit inputs.

Sections (each prints markdown to stdout):

* ``seg``: the HPA segmenter in fp32, fp16 autocast, channels_last and both, on synthetic images:
  images/s of ``predict`` and, against fp32, the agreement of ``label_cell``'s cell labels (mean
  IoU of matched cells, and how many fp32 cells change: no match with IoU >= 0.99, or gone);
* ``cls``: the classifier (EfficientNet-B0 at 512, 4 channels) forward, fp32 and fp16 autocast with
  channels_last, in cells/s;
* ``prepare``: a weights folder for an end-to-end ``submit`` (random classifier ensemble of the
  competition's shape, and the fill-recipe segmentation weights, with hashes).

Weights: the segmentation networks get the reference fill recipe (no official weights on the
device machine); timings do not depend on weight values, the fp16 agreement a little.

``--dry-run`` runs each section on CPU at toy sizes, to check the script itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cell_agreement(reference: np.ndarray, other: np.ndarray, threshold: float = 0.99) -> tuple[float, int, int]:
    """(mean IoU of each reference cell with its best match in ``other``, cells below ``threshold``, cells).

    >>> a = np.array([[1, 1, 0, 2]]); cell_agreement(a, a)
    (1.0, 0, 2)
    """
    n_ref, n_other = int(reference.max()), int(other.max())
    if n_ref == 0:
        return float("nan"), 0, 0
    pairs = np.bincount(reference.ravel().astype(np.int64) * (n_other + 1) + other.ravel(), minlength=(n_ref + 1) * (n_other + 1))
    overlap = pairs.reshape(n_ref + 1, n_other + 1)[1:, 1:].astype(np.float64)
    area_ref = np.bincount(reference.ravel(), minlength=n_ref + 1)[1:].astype(np.float64)
    area_other = np.bincount(other.ravel(), minlength=n_other + 1)[1:].astype(np.float64)
    present = area_ref > 0
    if n_other == 0:
        return 0.0, int(present.sum()), int(present.sum())
    iou = overlap / (area_ref[:, None] + area_other[None, :] - overlap)
    best = iou.max(axis=1)[present]
    return float(best.mean()), int((best < threshold).sum()), int(present.sum())


def section_seg(device: str, size: int, n: int, repeats: int, workdir: Path) -> list[str]:
    from bench_segmentation import make_images, make_weights

    from hpa_kernel.segmentation.hpa import HPASegmenter, postprocess_maps

    weights = make_weights(workdir)
    images = make_images(n, size)
    variants = {"fp32": {}, "fp16": {"fp16": True}, "channels_last": {"channels_last": True},
                "fp16 + channels_last": {"fp16": True, "channels_last": True}}
    if device == "cpu":  # fp16 autocast is CUDA-only in the segmenter
        variants = {name: flags for name, flags in variants.items() if not flags.get("fp16")}
    lines = [f"### Segmentation on {device}, {n} synthetic {size}x{size} images (fill-recipe weights)", "",
             "| variant | images/s (predict) | mean IoU of matched cells vs fp32 | cells that change (IoU < 0.99) |",
             "|---|---|---|---|"]
    reference = None
    for name, flags in variants.items():
        seg = HPASegmenter(nuclei=weights, cell=weights, device=device, batch_size=min(n, 4), **flags)
        seg.predict(images[:1])  # warm-up: cuDNN autotuning, allocator
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            maps = seg.predict(images)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        cells = [postprocess_maps(m)[1] for m in maps]
        if reference is None:
            reference = cells
        scores = [cell_agreement(r, c) for r, c in zip(reference, cells)]
        total = sum(s[2] for s in scores)
        mean_iou = np.nanmean([s[0] for s in scores]) if total else float("nan")
        lines.append(f"| {name} | {n / best:.2f} | {mean_iou:.4f} | {sum(s[1] for s in scores)} of {total} |")
        print(lines[-1], file=sys.stderr, flush=True)
        del seg
    return lines + [""]


def section_cls(device: str, size: int, batch: int, steps: int) -> list[str]:
    import torch

    from hpa_kernel.classifier import create_classifier

    lines = [f"### Classifier on {device}: efficientnet_b0, {size}x{size}x4, batch {batch}", "",
             "| variant | cells/s |", "|---|---|"]
    x = torch.rand(batch, 4, size, size, device=device)
    for name, fp16, channels_last in (("fp32", False, False), ("fp16 autocast + channels_last", True, True)):
        model = create_classifier("efficientnet_b0").to(device).eval()
        inputs = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.float16, enabled=fp16 and device != "cpu")
        with torch.inference_mode(), autocast:
            model(inputs)  # warm-up
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                model(inputs)
            _sync(device)
        seconds = time.perf_counter() - start
        lines.append(f"| {name} | {batch * steps / seconds:.1f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines + [""]


def section_prepare(weights_dir: Path, input_size: int) -> list[str]:
    import shutil

    from bench_segmentation import make_weights

    from hpa_kernel import manifest as mf
    from hpa_kernel.demo import random_ensemble

    weights_dir.mkdir(parents=True, exist_ok=True)
    manifest = random_ensemble(weights_dir, arch="efficientnet_b0", input_size=input_size)
    fill = make_weights(weights_dir)
    for entry in manifest.segmentation.files():
        shutil.copyfile(fill, weights_dir / entry.file)
    mf.update_hashes(weights_dir / mf.MANIFEST_NAME, weights_dir, segmentation=True)
    return [f"weights for submit in {weights_dir} (random ensemble at {input_size}, fill-recipe segmentation)"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=("seg", "cls", "prepare"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the script only")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    device = "cpu" if dry else args.device
    if args.section == "seg":
        lines = section_seg(device, 256 if dry else 2048, 1 if dry else 8, 1 if dry else 3, args.workdir)
    elif args.section == "cls":
        lines = section_cls(device, 64 if dry else 512, 4 if dry else 64, 2 if dry else 20)
    else:
        lines = section_prepare(args.workdir / "weights", 64 if dry else 512)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

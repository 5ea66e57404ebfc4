"""Per-image cost of each stage of the submission pipeline, and a projection for the Kaggle re-runs.

Stages, for one synthetic 2048 x 2048 image (``hpa_kernel.synthetic.synthesize_image``):

* read        ``read_image`` of four 8-bit PNG channels
* seg_pre     downscale + normalise for the two DPN-UNets (``segmentation.preprocess``)
* seg_net     the nuclei and cell DPN-UNet forwards (random weights: the cost does not depend on them)
* seg_restore softmax maps back to full size (``restore_nuclei``/``restore_cell``)
* postprocess ``label_cell`` on ideal maps made from the truth masks
* cells       heuristics + crops (``cells.process_image``) at the crop size of each checkpoint size
* encode      ``rle.encode_label_image`` of every cell
* classifier  EfficientNet-B0 forward per cell, at 512 and at the small checkpoint size
* write       ``prediction_string_for_cells`` + the row's share of ``write_submission``

Run: ``python benchmarks/bench_stages.py [--size 2048] [--repeats 2] [--json out.json]``. It uses
CUDA for the network stages when available (fp16 autocast, channels_last, as the driver does) and
always measures the CPU. The projection section states its assumptions; its T4 numbers are estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Assumptions of the projection (edit here; the report prints them).
ASSUME_CELLS_PER_IMAGE = 25  # HPA test fields of view hold roughly 10-40 cells; 25 is a round middle
ASSUME_T4_FP16_TFLOPS = 8.0  # effective fp16 throughput of a T4 for B0 (peak 65; depthwise convs run far below)
ASSUME_T4_FP32_TFLOPS = 4.0  # effective fp32 throughput for the DPN-UNets (peak 8.1)
ASSUME_H100_TO_T4 = 8.0  # when measured on an H100: T4 time = H100 time x this (an estimate, not measured)
KAGGLE_CORES = 2


def _time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cuda_time(fn, repeats: int) -> float:
    import torch

    def run():
        fn()
        torch.cuda.synchronize()

    return _time(run, repeats, warmup=2)


def _ideal_maps(label: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 map as the networks give it: border class in channel 1, interior in channel 2."""
    from scipy import ndimage as ndi

    border = (ndi.grey_dilation(label, size=3) != ndi.grey_erosion(label, size=3)) & (label > 0)
    out = np.zeros(label.shape + (3,), dtype=np.uint8)
    out[..., 1] = border * 255
    out[..., 2] = ((label > 0) & ~border) * 255
    return out


def _flops(model, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def measure(size: int, repeats: int, small: int, device: str) -> dict:
    import torch

    from hpa_kernel.cells import CellConfig, process_image
    from hpa_kernel.classifier import create_classifier
    from hpa_kernel.io import read_image, write_image
    from hpa_kernel.submission.rle import encode_label_image
    from hpa_kernel.segmentation import label_cell
    from hpa_kernel.segmentation import preprocess
    from hpa_kernel.segmentation.dpn_unet import DPNUnet
    from hpa_kernel.submission import prediction_string_for_cells, write_submission
    from hpa_kernel.synthetic import synthesize_image

    torch.manual_seed(0)
    sample = synthesize_image(7, size, size)
    image, cell_mask, nuclei_mask = sample.image, sample.cell_mask, sample.nuclei_mask
    n_cells = int(len(np.unique(cell_mask)) - 1)
    res: dict = {"image": f"{size}x{size}", "cells_in_image": n_cells, "cpu": {}, "gpu": {}}
    cpu = res["cpu"]

    with tempfile.TemporaryDirectory() as tmp:
        write_image(tmp, "img", image)
        cpu["read"] = _time(lambda: read_image(tmp, "img"), repeats)

    resize = {"scale_factor": 0.25, "padding": False, "resize_mode": "skimage018"}
    cpu["seg_pre"] = _time(
        lambda: (preprocess.nuclei_input(image[..., 2], **resize), preprocess.cell_input(image[..., 0], image[..., 3], image[..., 2], **resize)),
        repeats,
    )
    nuc_in = torch.from_numpy(preprocess.nuclei_input(image[..., 2], **resize))[None]
    cell_in = torch.from_numpy(preprocess.cell_input(image[..., 0], image[..., 3], image[..., 2], **resize))[None]
    nets = [DPNUnet().eval(), DPNUnet().eval()]

    def seg_cpu():
        with torch.inference_mode():
            return [torch.softmax(nets[0](nuc_in), 1), torch.softmax(nets[1](cell_in), 1)]

    cpu["seg_net"] = _time(seg_cpu, max(1, repeats - 1))
    probs = [p[0].numpy() for p in seg_cpu()]
    cpu["seg_restore"] = _time(
        lambda: (preprocess.restore_nuclei(probs[0], (size, size)), preprocess.restore_cell(probs[1], (size, size))), repeats
    )
    seg_flops = _flops(nets[0], nuc_in) * 2

    nuclei_pred, cell_pred = _ideal_maps(nuclei_mask), _ideal_maps(cell_mask)
    cpu["postprocess"] = _time(lambda: label_cell(nuclei_pred, cell_pred), repeats)
    nuclei_label, cell_label = label_cell(nuclei_pred, cell_pred)
    n_found = int(len(np.unique(cell_label)) - 1)
    res["cells_found_by_label_cell"] = n_found

    for crop in sorted({512, small}):
        config = CellConfig(crop_size=crop)
        cpu[f"cells_{crop}"] = _time(lambda c=config: process_image("img", image, nuclei_label, cell_label, c), repeats)
    cpu["encode"] = _time(lambda: encode_label_image(cell_label), repeats)
    encoded = list(encode_label_image(cell_label).values())

    probs19 = np.random.default_rng(0).random((len(encoded), 19))
    sample_df = __import__("pandas").DataFrame({"ID": ["img"], "ImageWidth": [size], "ImageHeight": [size]})

    def write():
        with tempfile.TemporaryDirectory() as tmp:
            write_submission({"img": prediction_string_for_cells(encoded, probs19)}, sample_df, Path(tmp) / "s.csv")

    cpu["write"] = _time(write, repeats)

    model = create_classifier("efficientnet_b0").eval()
    b0_flops = {}
    for s in sorted({512, small}):
        batch = 16 if s == 512 else 64
        x = torch.randn(batch, 4, s, s)
        with torch.inference_mode():
            cpu[f"b0_{s}_per_cell"] = _time(lambda x=x: model(x), max(1, repeats - 1)) / batch
        b0_flops[s] = _flops(model, x[:1])
    res["flops"] = {"dpn_unet_pair_per_image": seg_flops, **{f"b0_{s}_per_cell": f for s, f in b0_flops.items()}}

    if device == "cuda":
        gpu = res["gpu"]
        res["gpu_name"] = torch.cuda.get_device_name(0)
        gnets = [n.cuda().to(memory_format=torch.channels_last) for n in nets]
        gn, gc = nuc_in.cuda(), cell_in.cuda()
        for fp16 in (False, True):

            def seg_gpu(fp16=fp16):
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
                    return torch.softmax(gnets[0](gn), 1).cpu(), torch.softmax(gnets[1](gc), 1).cpu()

            gpu[f"seg_net_{'fp16' if fp16 else 'fp32'}"] = _cuda_time(seg_gpu, repeats + 2)
        gmodel = model.cuda().to(memory_format=torch.channels_last)
        for s in sorted({512, small}):
            batch = 64 if s == 512 else 256
            x = torch.randn(batch, 4, s, s, device="cuda").contiguous(memory_format=torch.channels_last)

            def fwd(x=x):
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                    return torch.sigmoid(gmodel(x).float()).cpu()

            gpu[f"b0_{s}_per_cell_fp16"] = _cuda_time(fwd, repeats + 3) / batch
    return res


def project(res: dict, small: int) -> dict:
    """Per-image and total time on a Kaggle kernel (2 cores + T4) for 559 and 1776 images."""
    cpu = res["cpu"]
    cells = ASSUME_CELLS_PER_IMAGE
    if res["gpu"]:
        seg_t4 = res["gpu"]["seg_net_fp32"] * ASSUME_H100_TO_T4
        b0_t4 = {s: res["gpu"][f"b0_{s}_per_cell_fp16"] * ASSUME_H100_TO_T4 for s in (512, small)}
        source = f"measured on {res.get('gpu_name', 'the GPU')} x {ASSUME_H100_TO_T4}"
    else:
        seg_t4 = res["flops"]["dpn_unet_pair_per_image"] / (ASSUME_T4_FP32_TFLOPS * 1e12)
        b0_t4 = {s: res["flops"][f"b0_{s}_per_cell"] / (ASSUME_T4_FP16_TFLOPS * 1e12) for s in (512, small)}
        source = f"FLOPs / assumed effective T4 throughput ({ASSUME_T4_FP32_TFLOPS} TFLOP/s fp32, {ASSUME_T4_FP16_TFLOPS} fp16)"
    # main process: read + preprocess + restore (CPU) + the GPU work; workers: postprocess, cells, encode
    main_cpu = cpu["read"] + cpu["seg_pre"] + cpu["seg_restore"] + cpu["write"]
    worker_cpu = cpu["postprocess"] + cpu["cells_512"] + cpu["encode"]
    out = {"assumptions": {
        "cells_per_image": cells, "kaggle_cores": KAGGLE_CORES, "t4_source": source,
        "cpu": "the Kaggle CPU core is taken as fast as one core of this machine",
        "overlap": "GPU work and worker post-processing overlap; per image = max(main CPU + GPU, all CPU / cores)",
    }, "plans": {}}
    for name, passes in (("TTA x3, 7 checkpoints", 21), ("7 checkpoints", 7), ("1 checkpoint", 1)):
        for s in (512,):
            gpu = seg_t4 + cells * passes * b0_t4[s]
            per_image = max(main_cpu + gpu, (main_cpu + worker_cpu) / KAGGLE_CORES)
            slow = max(main_cpu + 3 * gpu, (main_cpu + worker_cpu) / KAGGLE_CORES)  # sensitivity: GPU 3x slower
            out["plans"][f"{name} @ {s}"] = {
                "gpu_s": gpu, "per_image_s": per_image, "h_559": per_image * 559 / 3600, "h_1776": per_image * 1776 / 3600,
                "per_image_s_gpu_3x_slower": slow, "h_1776_gpu_3x_slower": slow * 1776 / 3600,
            }
    out["t4_seg_net_s"] = seg_t4
    out["t4_b0_512_per_cell_s"] = b0_t4[512]
    return out


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}, Python {platform.python_version()}"


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per stage, median reported (default 2)")
    parser.add_argument("--small", type=int, default=64, help="the small checkpoint input size (default 64, the demo's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = measure(args.size, args.repeats, args.small, device)
    res["machine"] = machine()
    res["projection"] = project(res, args.small)
    print(f"machine: {res['machine']}")
    print(f"image {res['image']}, {res['cells_in_image']} cells in the truth, {res['cells_found_by_label_cell']} from label_cell")
    print("CPU seconds per image (per cell for b0_*):")
    for k, v in res["cpu"].items():
        print(f"  {k:<18} {v:9.4f}")
    for k, v in res["gpu"].items():
        print(f"  gpu {k:<14} {v:9.5f}")
    print(f"FLOPs: DPN-UNet pair {res['flops']['dpn_unet_pair_per_image'] / 1e9:.0f} G/image; "
          + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in res["flops"].items() if k.startswith("b0")))
    proj = res["projection"]
    print("projection (Kaggle: 2 cores + T4; ESTIMATES):", json.dumps(proj["assumptions"], indent=1))
    for name, p in proj["plans"].items():
        print(f"  {name:<28} GPU {p['gpu_s']:.2f} s + CPU -> {p['per_image_s']:.2f} s/image -> 559 images {p['h_559']:.2f} h, "
              f"1776 images {p['h_1776']:.2f} h (GPU 3x slower: {p['h_1776_gpu_3x_slower']:.2f} h)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

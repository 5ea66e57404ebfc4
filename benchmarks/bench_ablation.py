"""The ablation table (``hpa-kernel ablate``) on the demo's synthetic competition, for both recipes.

Steps: the demo's competition (24 train / 6 test images, 512 x 512, seed 2021), its training cells
and its trained ensemble (:func:`hpa_kernel.demo.train_demo_ensemble`: three groups of 64-px B0,
40 steps each). When the training writes 19-output checkpoints (Negative learned, kit2025), an
18-output copy is derived for milimed2021 by keeping the first 18 rows of the classifier head:
the same network's class outputs, with Negative then computed as 1 - max. Each recipe is then
ablated with :func:`hpa_kernel.ablation.run_ablation` (classic segmenter, in process).

    PYTHONPATH=. python benchmarks/bench_ablation.py --out /tmp/ablation

Synthetic data cannot decide between recipes: the table shows what the tool reports, not which
recipe is better on real images.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger("bench_ablation")


def derive_18_outputs(src: Path, dst: Path) -> Path:
    """Copy the ensemble in ``src`` to ``dst`` with the head cut to the 18 class outputs."""
    import dataclasses

    import torch

    from hpa_kernel import manifest as mf
    from hpa_kernel.classifier import CheckpointConfig, load_config

    manifest = mf.load_manifest(weights_dir=src, require_segmentation=False)
    dst.mkdir(parents=True, exist_ok=True)
    for group in manifest.groups:
        for ck in group.checkpoints:
            state = torch.load(src / ck.file, map_location="cpu", weights_only=True)
            head = [k for k, v in state.items() if v.ndim >= 1 and v.shape[0] == 19 and k.startswith(("classifier", "fc", "head"))]
            if not head:
                raise ValueError(f"{src / ck.file}: no 19-row classifier head found")
            for k in head:
                state[k] = state[k][:18].clone()
            torch.save(state, dst / ck.file)
            config: CheckpointConfig = dataclasses.replace(load_config(src / ck.file), num_classes=18, recipe="milimed2021")
            (dst / ck.file).with_suffix(".json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    path = mf.write_manifest(dataclasses.replace(manifest, weights_dir=None, source=None), dst / mf.MANIFEST_NAME)
    mf.update_hashes(path, dst, segmentation=False)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ablation_bench", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from hpa_kernel.ablation import AblationConfig, run_ablation
    from hpa_kernel.classifier import load_config
    from hpa_kernel.demo import build_training_cells, make_demo_competition, train_demo_ensemble
    from hpa_kernel.manifest import load_manifest

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t = time.perf_counter()
    comp = make_demo_competition(out / "data")
    cells_csv = build_training_cells(comp, out / "train_cells", crop_size=64, workers=0)
    trained = out / "weights_trained"
    train_demo_ensemble(cells_csv, trained, input_size=64)
    logger.info("data and training: %.1f s", time.perf_counter() - t)
    first = load_manifest(weights_dir=trained, verify=False).checkpoint_paths()[0][0]
    outputs = load_config(first).num_classes
    weights = {"milimed2021": trained if outputs == 18 else derive_18_outputs(trained, out / "weights18")}
    if outputs == 19:
        weights["kit2025"] = trained
    for recipe, folder in weights.items():
        t = time.perf_counter()
        result = run_ablation(AblationConfig(data=comp.root, weights=folder, out=out / recipe, recipe=recipe))
        print(f"\n{recipe}: {result.n_images} images, {result.n_cells} cells, {time.perf_counter() - t:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f}\n{result.markdown()}")


if __name__ == "__main__":
    main()

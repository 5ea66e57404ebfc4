"""The ablation table (``hpa-kernel ablate``) on the demo's synthetic competition, for both recipes.

Steps: the demo's competition (24 train / 6 test images, 512 x 512, seed 2021), its training cells
and its trained ensemble (:func:`hpa_kernel.demo.train_demo_ensemble`: three groups of 64-px B0,
40 steps each). When the training writes 19-output checkpoints (Negative learned, kit2025), an
18-output copy is derived for milimed2021 by keeping the first 18 rows of the classifier head:
the same network's class outputs, with Negative then computed as 1 - max. Each recipe is then
ablated with :func:`hpa_kernel.ablation.run_ablation` (classic segmenter, in process).

    PYTHONPATH=. python benchmarks/bench_ablation.py --out /tmp/ablation

``--training``: the training ablation (:mod:`hpa_kernel.training.ablation`). A small synthetic
competition (``--n-train`` / ``--n-test`` images, seed 2021), its cells table built once (both crop
kinds), then group 1 of milimed2021 trained per variant (64 px, batch 16, random init,
the preset's Adam with lr 3e-3, ``--epochs`` epochs of ``--draws`` quota draws, i.e. ``epoch_scale``
= draws / 316,666; the "epoch = number of cells" variant then draws ``n_cells * epoch_scale``) and
scored with the milimed2021 inference recipe; the recipe is trained once per ``--seeds``. The
defaults (24 / 12 images, 4 epochs of 256 draws, seeds 0 1 2) took 183 CPU s (RESULTS.md).

    PYTHONPATH=. python benchmarks/bench_ablation.py --training --out /tmp/training_ablation

Synthetic data cannot decide between recipes: the table shows what the tool reports, not which
recipe is better on real images.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def training_overrides(draws: int, epochs: int, input_size: int = 64, batch_size: int = 16) -> dict:
    """The bench's TrainConfig overrides: sizes and lengths only, no element of the recipe touched."""
    from hpa_kernel.training.config import MILIMED_EPOCH_SIZE, training_preset

    sampler = training_preset("milimed2021", 1).sampler
    return dict(input_size=input_size, batch_size=batch_size, epochs=epochs, steps_per_epoch=None, lr=3e-3,
                pretrained=None, val_fraction=0.0, amp=False, channels_last=False, workers=0,
                sampler=dataclasses.replace(sampler, epoch_scale=draws / MILIMED_EPOCH_SIZE))


def run_training(args) -> None:
    """The ``--training`` mode (see the module doc)."""
    from hpa_kernel.demo import build_training_cells, make_demo_competition
    from hpa_kernel.training.ablation import TrainingAblationConfig, run_training_ablation

    out = Path(args.out)
    t, cpu = time.perf_counter(), time.process_time()
    comp = make_demo_competition(out / "data", n_train=args.n_train, n_test=args.n_test)
    cells_csv = build_training_cells(comp, out / "train_cells", crop_size=64, workers=0)
    logger.info("data and cells: %.0f s wall, %.0f CPU s", time.perf_counter() - t, time.process_time() - cpu)
    config = TrainingAblationConfig(cells_csv, comp.root, out / "training", overrides=training_overrides(args.draws, args.epochs),
                                    seeds=tuple(args.seeds))
    result = run_training_ablation(config)
    print(f"\nmilimed2021 group 1: {args.n_train} train / {result.n_images} test images, {result.n_cells} test cells; "
          f"{time.perf_counter() - t:.0f} s wall, {time.process_time() - cpu:.0f} CPU s in all; "
          f"load average {os.getloadavg()[0]:.1f}\n{result.markdown()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ablation_bench", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--training", action="store_true", help="the training ablation instead of the inference one")
    parser.add_argument("--n-train", type=int, default=24, help="--training: train images (>= 19 covers the classes)")
    parser.add_argument("--n-test", type=int, default=12, help="--training: test images")
    parser.add_argument("--draws", type=int, default=256, help="--training: quota draws per epoch of the recipe")
    parser.add_argument("--epochs", type=int, default=4, help="--training: epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--training: seeds of the full recipe")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    if args.training:
        torch.set_num_threads(args.threads)
        run_training(args)
        return

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

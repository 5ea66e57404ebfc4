"""``hpa-kernel train``: train an ensemble group, fine-tune it, or make pseudo-labels.

Also the torchrun entry point: ``torchrun --nproc_per_node N -m hpa_kernel.training ARGS``.
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


from hpa_kernel.training.config import DEFAULT_RECIPE, PRESETS


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train an ensemble group (1, 2 or 3) on cell crops; fine-tune; make pseudo-labels",
        description="Train one group of the EfficientNet-B0 ensemble on the crops of a cells.csv written by "
        "`hpa-kernel cells`, writing its snapshots gG_mK.pth/.json and weights_manifest.json into --out. "
        "Runs under torchrun with DistributedDataParallel (gloo on CPU, NCCL on GPU).",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--cells", required=True, metavar="CSV", help="training cells.csv (valid cells are used)")
    data.add_argument("--out", required=True, metavar="DIR", help="output folder for checkpoints, manifest and runs/")
    data.add_argument("--val-cells", metavar="CSV", help="validation cells.csv (default: hold out images by the config's val_fraction)")
    data.add_argument("--soft-labels", metavar="CSV", help="manual soft labels from `hpa-kernel label export`")
    data.add_argument("--pseudo-labels", metavar="CSV", help="pseudo labels from --make-pseudo-labels")
    data.add_argument("--antibody-marks", metavar="CSV", help="class-6 antibody marks (image_id,antibody,mark): milimed2021 "
                      "gives the class-6 cells of a flagged antibody 0.51, the others 1.0")
    recipe = parser.add_argument_group("recipe (defaults from --recipe and --group)")
    recipe.add_argument("--recipe", choices=sorted(PRESETS), default=DEFAULT_RECIPE,
                        help=f"training recipe (default {DEFAULT_RECIPE}: the 4th-place team's code; kit2025: this kit's earlier one)")
    recipe.add_argument("--group", type=int, choices=(1, 2, 3), default=1, help="ensemble group (default 1)")
    recipe.add_argument("--quick", action="store_true", help="the small CPU preset (64 px, 2 x 60 steps, random init)")
    recipe.add_argument("--pretrained", metavar="PATH|imagenet|hub|none",
                        help="initial weights: a local 3-channel ImageNet weight file (or a folder holding it), 'imagenet' "
                        "(find tf_efficientnet_b0_imagenet.pth or efficientnet-b0-355c32eb.pth in $HPA_KERNEL_WEIGHTS, then "
                        "the Kaggle input folders; nothing downloads), 'hub' (timm's hub, online only) or 'none' (random); "
                        "default from the recipe (milimed2021: imagenet, with a new random 4-channel stem)")
    recipe.add_argument("--ensemble-epochs", metavar="E,E,..", help="0-based epochs whose checkpoints form the ensemble "
                        "(milimed2021 group 3: 12,13,14,15); a checkpoint is saved after every epoch")
    recipe.add_argument("--epoch-size", type=int, help="quota sampler: cells drawn per epoch (default from the recipe: "
                        "milimed2021 316666, the team's; kit2025 the number of training cells)")
    recipe.add_argument("--epoch-scale", type=float, help="quota sampler: multiply the epoch size by this for small data "
                        "(e.g. 0.01: 3167 draws per milimed2021 epoch)")
    recipe.add_argument("--epochs", type=int, help="epochs")
    recipe.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch (default: cells / batch)")
    recipe.add_argument("--batch-size", type=int, help="batch size per process")
    recipe.add_argument("--lr", type=float, help="peak learning rate")
    recipe.add_argument("--input-size", type=int, help="network input side, a multiple of 32")
    recipe.add_argument("--seed", type=int, help="random seed")
    recipe.add_argument("--train-crop", choices=("milimed2021", "kit2025"),
                        help="training crops: the team's (column train_crop, 16-bit) or the kit's (column crop); default from the recipe")
    recipe.add_argument("--filter-column", choices=("train_value", "penalty"),
                        help="train filter value: the team's training cleaner or the kit's penalty (default from the recipe)")
    run_opts = parser.add_argument_group("run")
    run_opts.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when available)")
    run_opts.add_argument("--workers", type=int, help="DataLoader worker processes")
    run_opts.add_argument("--resume", action="store_true", help="continue from OUT/runs/gG/last.pt")
    run_opts.add_argument("--no-progress", action="store_true", help="no progress bars")
    run_opts.add_argument("--no-manifest", action="store_true", help="do not create/update OUT/weights_manifest.json")
    ft = parser.add_argument_group("fine-tuning")
    ft.add_argument("--finetune-cells", metavar="CSV", help="fine-tune the snapshots for one epoch on these (validation) cells")
    ft.add_argument("--repeats", type=int, help="kit2025: repeats of each manually labelled cell (default 4)")
    ft.add_argument("--finetune-size", type=int, help="kit2025: samples in the fine-tuning epoch (default 200000)")
    ft.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate (default from the recipe: 3e-5 milimed2021, 2e-4 kit2025)")
    ft.add_argument("--finetune-batch-size", type=int, help="fine-tuning batch size (default from the recipe: 16 milimed2021)")
    ft.add_argument("--init", nargs="+", metavar="PTH", help="fine-tune these checkpoints instead of training first")
    ps = parser.add_argument_group("pseudo-labels")
    ps.add_argument("--make-pseudo-labels", metavar="CSV",
                    help="train the under-fit ResNet18 labeller on --cells and write pseudo labels to CSV (no group training)")
    ps.add_argument("--pseudo-checkpoint", metavar="PTH", help="use this labeller checkpoint instead of training one")
    ps.add_argument("--negative-threshold", type=float, default=0.3, help="drop an image label below this probability (0.3)")
    ps.add_argument("--positive-threshold", type=float, default=0.9,
                    help="add the positive class at or above this (0.9); the class: 6 under milimed2021, 11 under kit2025")
    parser.set_defaults(func=run)
    return parser


_OVERRIDES = ("epochs", "steps_per_epoch", "batch_size", "lr", "input_size", "seed", "workers")  # TrainConfig fields


def _overrides(args) -> dict:
    out = {name: getattr(args, name) for name in _OVERRIDES if getattr(args, name) is not None}
    for name in ("train_crop", "filter_column"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    if args.pretrained is not None:
        out["pretrained"] = None if args.pretrained.strip().lower() == "none" else args.pretrained
    if args.ensemble_epochs:
        try:
            out["ensemble_epochs"] = tuple(int(e) for e in args.ensemble_epochs.split(","))
        except ValueError:
            raise ValueError(f"--ensemble-epochs {args.ensemble_epochs!r}: expected 0-based epoch numbers like 12,13,14,15") from None
    return out


def _finetune_config(args):
    from hpa_kernel.training import finetune_preset

    given = dict(epoch_size=args.finetune_size, repeats=args.repeats, lr=args.finetune_lr,
                 batch_size=args.finetune_batch_size or (args.batch_size if args.recipe == "kit2025" else None))
    return finetune_preset(args.recipe, **{k: v for k, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from hpa_kernel.training import (
        FinetuneInputs,
        PseudoLabelConfig,
        RunOptions,
        TrainInputs,
        finetune_checkpoints,
        make_pseudo_labels,
        quick_config,
        train_group,
        train_pseudo_labeller,
        training_preset,
    )

    out = Path(args.out)
    progress = not args.no_progress
    overrides = _overrides(args)
    if args.make_pseudo_labels:
        base = PseudoLabelConfig(positive_class=6 if args.recipe == "milimed2021" else 11)  # the team's positives: class 6
        train = dataclasses.replace(base.train, **{k: v for k, v in overrides.items() if k not in ("pretrained", "ensemble_epochs")})
        pcfg = dataclasses.replace(base, train=train, negative_threshold=args.negative_threshold,
                                   positive_threshold=args.positive_threshold)
        ckpt = args.pseudo_checkpoint or train_pseudo_labeller(args.cells, out, pcfg, device=args.device, progress=progress)
        if _is_main():
            make_pseudo_labels(args.cells, ckpt, args.make_pseudo_labels, pcfg, device=args.device, progress=progress)
        return 0
    if args.init:
        checkpoints = [Path(p) for p in args.init]
    else:
        if args.quick:
            config = quick_config(args.group, args.recipe, **overrides)
        else:
            config = training_preset(args.recipe, args.group, **overrides)
        epoch = {k: v for k, v in dict(epoch_size=args.epoch_size, epoch_scale=args.epoch_scale).items() if v is not None}
        if epoch:
            config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, **epoch))
        if not args.resume:  # a missing ImageNet file fails in seconds, in the command line's words
            from hpa_kernel.classifier.pretrained import resolve_pretrained

            resolve_pretrained(config.pretrained, config.arch)
        inputs = TrainInputs(val_cells=args.val_cells, soft_labels=args.soft_labels, pseudo_labels=args.pseudo_labels,
                             antibody_marks=args.antibody_marks)
        options = RunOptions(resume=args.resume, device=args.device, manifest=not args.no_manifest, progress=progress)
        checkpoints = train_group(config, args.cells, out, inputs=inputs, options=options)
        if _is_main():
            sys.stdout.write("\n".join(str(p) for p in checkpoints) + "\n")
    if args.finetune_cells:
        fcfg = _finetune_config(args)
        inputs = FinetuneInputs(soft_labels=args.soft_labels, pseudo_labels=args.pseudo_labels,
                                antibody_marks=args.antibody_marks, train_cells=args.cells)
        tuned = finetune_checkpoints(checkpoints, args.finetune_cells, out / "finetuned", config=fcfg, inputs=inputs,
                                     options=RunOptions(device=args.device, manifest=not args.no_manifest, progress=progress))
        if _is_main():
            sys.stdout.write("\n".join(str(p) for p in tuned) + "\n")
    elif args.init:
        raise ValueError("--init needs --finetune-cells (it names checkpoints to fine-tune)")
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"

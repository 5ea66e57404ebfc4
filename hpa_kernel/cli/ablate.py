"""``hpa-kernel ablate``: score one labelled set under a recipe with each element switched off in turn."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ablate",
        help="score a labelled set with each element of a recipe switched off in turn (the ablation table)",
        description="Segment the images of a labelled set once, run the ensemble once (once more with TTA, and "
        "once on the other crop mode's crops), then score the recipe and each variant with one element "
        "switched off (the cell/image blend, the border cleaner, the outlier cleaner, the Negative rule; TTA "
        "switched on; the kit's 8-bit crop instead of the team's, or the other way round) in both IoU modes. "
        "Writes one submission per variant and ablation.md. On synthetic data the table measures the "
        "synthetic data: it cannot decide between recipes. With --train-cells: the training ablation instead "
        "(one group trained per team element switched back to the kit's, each scored with the recipe).",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--data", required=True, metavar="DIR", help="competition folder: sample_submission.csv and test/")
    io.add_argument("--weights", metavar="DIR", help="weights folder with weights_manifest.json (not with --train-cells)")
    io.add_argument("--out", default="ablation_out", metavar="DIR", help="output folder (default ablation_out)")
    truth = parser.add_argument_group("truth (default: the synthetic competition's truth/ folder)")
    truth.add_argument("--truth-cells", metavar="CSV", help="ImageID,CellID,Labels table (with --truth-masks)")
    truth.add_argument("--truth-masks", metavar="NPZ", help="label images: np.load(NPZ)[ImageID] (with --truth-cells)")
    truth.add_argument("--truth-annotations", metavar="CSV", help="the evaluator's gt_annotations.csv")
    run_opts = parser.add_argument_group("execution")
    run_opts.add_argument("--recipe", default="milimed2021", metavar="NAME", help="the recipe to ablate (default milimed2021)")
    run_opts.add_argument("--segmenter", choices=("classic", "hpa"), default="classic",
                          help="classic (default, weight-free) or hpa (needs the segmentation weights)")
    run_opts.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    run_opts.add_argument("--workers", type=int, default=0, help="post-processing processes (default 0: in process)")
    run_opts.add_argument("--batch-size", type=int, default=32, help="cells per classifier batch (default 32)")
    train = parser.add_argument_group("training ablation (hpa_kernel.training.ablation)")
    train.add_argument("--train-cells", metavar="CSV", help="train one group per variant on this cells.csv (hpa-kernel cells)")
    train.add_argument("--group", type=int, default=1, help="the ensemble group trained (default 1)")
    train.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the full recipe (default 0)")
    train.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    train.add_argument("--input-size", type=int, default=None, help="network input (default: the preset's)")
    parser.set_defaults(func=run)
    return parser


def run_training(args: argparse.Namespace) -> int:
    """``--train-cells``: the training ablation (:func:`hpa_kernel.training.ablation.run_training_ablation`)."""
    from hpa_kernel.paths import resolve_device
    from hpa_kernel.training import ablation
    from hpa_kernel.training.ablation import TrainingAblationConfig

    overrides = {k: v for k, v in (("epochs", args.epochs), ("input_size", args.input_size)) if v is not None}
    config = TrainingAblationConfig(args.train_cells, args.data, args.out, recipe=args.recipe, group=args.group,
                                    overrides=overrides, seeds=tuple(args.seeds),
                                    device=resolve_device(args.device))
    result = ablation.run_training_ablation(config)
    sys.stdout.write(f"{result.n_images} images, {result.n_cells} cells\n{result.markdown()}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.ablation import AblationConfig, run_ablation

    if args.train_cells:
        return run_training(args)
    if not args.weights:
        raise SystemExit("hpa-kernel ablate: --weights is required (the ensemble to ablate), unless --train-cells is given")
    config = AblationConfig(
        data=args.data, weights=args.weights, out=args.out, recipe=args.recipe, truth_cells=args.truth_cells,
        truth_masks=args.truth_masks, truth_annotations=args.truth_annotations, segmenter=args.segmenter,
        device=args.device, workers=args.workers, batch_size=args.batch_size,
    )
    result = run_ablation(config)
    sys.stdout.write(
        f"{result.n_images} images, {result.n_cells} cells; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()) + "\n" + result.markdown() + "\n"
    )
    return 0

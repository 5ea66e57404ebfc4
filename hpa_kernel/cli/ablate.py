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
        "synthetic data: it cannot decide between recipes.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--data", required=True, metavar="DIR", help="competition folder: sample_submission.csv and test/")
    io.add_argument("--weights", required=True, metavar="DIR", help="weights folder with weights_manifest.json")
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
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.ablation import AblationConfig, run_ablation

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

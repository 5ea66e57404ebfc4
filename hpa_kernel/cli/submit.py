"""``hpa-kernel submit``: the budgeted submission run (test images → submission.csv)."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "submit",
        help="segment the test images, run the ensemble and write submission.csv within a time budget",
        description="Write submission.csv for the test images of a competition folder. The richest plan that "
        "fits the budget is chosen as costs are measured (TTA and every checkpoint first; then no TTA, then "
        "fewer checkpoints); images the budget cannot reach get the fallback row (no detections), so a "
        "valid file is always written before the budget ends.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--data", metavar="DIR", help="competition folder (default $HPA_KERNEL_DATA, then the Kaggle input folders)")
    io.add_argument("--weights", metavar="DIR", help="weights folder with weights_manifest.json (default $HPA_KERNEL_WEIGHTS, then the Kaggle input folders)")
    io.add_argument("--out", metavar="FILE", default="submission.csv", help="output CSV (default submission.csv)")
    io.add_argument("--cache", metavar="DIR", help="cells cache folder (resumable runs)")
    io.add_argument("--report", metavar="FILE", default=None,
                    help="also write the run's report as JSON: rows, predicted, the fallback images with their reasons, plans")
    budget = parser.add_argument_group("time budget")
    budget.add_argument("--budget-hours", type=float, default=8.5, metavar="H", help="hours until the final file (default 8.5)")
    budget.add_argument("--reserve-minutes", type=float, default=None, metavar="M",
                        help="margin kept before the deadline for the final write (default 3%% of the budget, 2 s to 10 min)")
    budget.add_argument("--checkpoint-minutes", type=float, default=15.0, metavar="M",
                        help="rewrite the partial submission every M minutes (default 15)")
    budget.add_argument("--limit", type=int, default=None, metavar="N", help="process only the first N images (trials)")
    run_opts = parser.add_argument_group("execution")
    run_opts.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: CUDA when available)")
    run_opts.add_argument("--batch-size", type=int, default=32, help="cells per classifier batch (default 32)")
    run_opts.add_argument("--seg-batch-size", type=int, default=1, help="images per segmentation batch (default 1)")
    run_opts.add_argument("--workers", type=int, default=None, help="post-processing processes (default: all cores; 0 = in process)")
    run_opts.add_argument("--torch-threads", type=int, default=None, help="CPU threads of the classifier (default: torch's choice)")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--recipe", default="milimed2021", metavar="NAME",
                        help="inference recipe: milimed2021 (default; the 4th-place team's code, 18-output checkpoints) "
                        "or kit2025 (the kit's earlier variants, 19-output checkpoints)")
    recipe.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="allow flip TTA when time permits (default: the recipe's choice, off for milimed2021)")
    run_opts.add_argument("--segmenter", choices=("hpa", "classic"), default=None,
                          help="hpa (default; needs the segmentation weights) or classic (weight-free, only when asked)")
    run_opts.add_argument("--padding", action=argparse.BooleanOptionalAction, default=True,
                          help="hpacellseg's padding=True for the HPA segmenter: every image size works (default on)")
    run_opts.add_argument("--crop-size", type=int, default=None, help="cell crop side (default: the checkpoints' input size)")
    recipe.add_argument("--cell-weight", type=float, default=None,
                        help="blend weight w of the cell's own prediction, 1 - w for its image's (default: the recipe's 0.7)")
    run_opts.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True, help="check the written file (default on)")
    run_opts.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def write_report(report, path) -> None:
    """Write a :class:`~hpa_kernel.submission.SubmitReport` as JSON (ids of the fallback rows with their reasons)."""
    import json

    from hpa_kernel.io import atomic_write

    data = {
        "path": str(report.path), "n_images": report.n_images, "n_predicted": report.n_predicted,
        "fallback": dict(report.fallback), "plans": dict(report.plans), "segmenter": report.segmenter,
        "elapsed_s": round(report.elapsed_s, 3), "problems": None if report.problems is None else [str(p) for p in report.problems],
    }
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    logger.info("report written to %s", path)


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.submission import HOUR, SubmitConfig, process_start_monotonic, run_submission

    config = SubmitConfig(
        out=args.out,
        data=args.data,
        weights=args.weights,
        budget_s=args.budget_hours * HOUR,
        reserve_s=None if args.reserve_minutes is None else args.reserve_minutes * 60.0,
        device=args.device,
        batch_size=args.batch_size,
        seg_batch_size=args.seg_batch_size,
        workers=args.workers,
        tta=args.tta,
        segmenter=args.segmenter,
        padding=args.padding,
        crop_size=args.crop_size,
        checkpoint_every_s=args.checkpoint_minutes * 60.0,
        validate=args.validate,
        limit=args.limit,
        cache_dir=args.cache,
        progress=not args.no_progress,
        torch_threads=args.torch_threads,
        cell_weight=args.cell_weight,
        image_weight=None if args.cell_weight is None else 1.0 - args.cell_weight,
        recipe=args.recipe,
    )
    # start-up counts against the budget: from the process start when run as a program
    started = process_start_monotonic() if getattr(args, "from_command_line", False) else getattr(args, "invoked_at", None)
    report = run_submission(config, started=started)
    sys.stdout.write(report.summary() + "\n")
    if args.report:
        write_report(report, args.report)
    return 1 if report.problems else 0

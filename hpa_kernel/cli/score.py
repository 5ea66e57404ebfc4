"""``hpa-kernel score``: the competition mAP of a submission against known truth."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score",
        help="score a submission.csv (mAP at IoU 0.6) against truth masks and labels",
        description="Compute the competition metric (mean AP at IoU >= 0.6 over the classes that have truth) "
        "of a submission against truth given as a cells table and label images, as the evaluator's "
        "gt_annotations.csv, or as the truth/ folder of a synthetic competition.",
    )
    parser.add_argument("--submission", required=True, metavar="CSV", help="submission.csv to score")
    truth = parser.add_argument_group("truth (one of)")
    truth.add_argument("--truth-cells", metavar="CSV", help="ImageID,CellID,Labels table (with --truth-masks)")
    truth.add_argument("--truth-masks", metavar="NPZ", help="label images: np.load(NPZ)[ImageID] (with --truth-cells)")
    truth.add_argument("--truth-annotations", metavar="CSV", help="the evaluator's gt_annotations.csv")
    truth.add_argument("--data", metavar="DIR", help="a synthetic competition folder: uses truth/test_cells.csv and truth/test_masks.npz")
    options = parser.add_argument_group("metric")
    options.add_argument("--iou", choices=("box", "mask"), default="box",
                         help="box: IoU of tight boxes, as the official evaluator (default); mask: IoU of pixels")
    options.add_argument("--threshold", type=float, default=0.6, help="IoU threshold of a match (default 0.6)")
    options.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    options.add_argument("--lenient", action="store_true",
                         help="score even if the file fails the checks of validate-submission (they are logged as warnings)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.metric import load_truth, score_submission, load_truth_annotations

    given = [args.truth_cells is not None or args.truth_masks is not None, args.truth_annotations is not None, args.data is not None]
    if sum(given) != 1:
        raise ValueError("give the truth one way: --truth-cells with --truth-masks, --truth-annotations, or --data")
    sample = None
    if args.data is not None:
        from hpa_kernel.io import find_competition

        comp = find_competition(args.data)
        truth = load_truth(comp.truth_cells("test"), comp.truth_masks("test"))
        sample = comp.sample_submission if comp.sample_submission.is_file() else None
    elif args.truth_annotations is not None:
        truth = load_truth_annotations(args.truth_annotations)
    else:
        if args.truth_cells is None or args.truth_masks is None:
            raise ValueError("--truth-cells and --truth-masks must be given together")
        truth = load_truth(args.truth_cells, args.truth_masks)
    check_format(args.submission, truth if sample is None else sample, lenient=args.lenient)
    result = score_submission(args.submission, truth=truth, iou=args.iou, threshold=args.threshold)
    sys.stdout.write((result.to_json() if args.json else result.table()) + "\n")
    return 0


def check_format(submission, truth_or_sample, lenient: bool = False) -> None:
    """Run validate-submission's checks on ``submission`` before it is scored.

    Parameters
    ----------
    submission : path
        The submission file.
    truth_or_sample : mapping or path
        The loaded truth (ImageID -> TruthImage: its IDs and sizes make the sample) or a sample file.
    lenient : bool
        Log the problems as warnings instead of refusing the file.

    Raises
    ------
    ValueError
        Naming the file and its first problems, unless ``lenient``.
    """
    import pandas as pd

    from hpa_kernel.submission import check_submission

    sample = truth_or_sample
    if isinstance(truth_or_sample, dict):
        ids = list(truth_or_sample)
        sizes = [truth_or_sample[i].shape for i in ids]
        sample = pd.DataFrame({"ID": ids, "ImageWidth": [w for _, w in sizes], "ImageHeight": [h for h, _ in sizes]})
    report = check_submission(submission, sample)
    if report.ok:
        return
    shown = "; ".join(str(p) for p in report.problems[:5])
    more = f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""
    message = (f"submission {submission} fails the checks of validate-submission, {len(report.problems)} problem(s): "
               f"{shown}{more}")  # fmt: skip
    if not lenient:
        raise ValueError(message + "; fix the file, or pass --lenient to score it anyway")
    logger.warning("%s; scoring it anyway (--lenient)", message)

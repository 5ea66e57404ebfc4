"""``hpa-kernel validate-submission``: check a submission.csv the way Kaggle reads it."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate-submission",
        help="check a submission.csv against the sample submission",
        description="Check the header, the IDs and sizes against the sample submission, the triples of every "
        "PredictionString and that every mask decodes at ImageHeight x ImageWidth. Prints OK with counts, or "
        "the problems; exits with status 1 when there is a problem.",
    )
    parser.add_argument("file", metavar="FILE", help="submission.csv to check")
    parser.add_argument("--sample", required=True, metavar="CSV", help="sample_submission.csv of the competition")
    parser.add_argument("--max-problems", type=int, default=50, metavar="N", help="problems to print (default 50)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.submission import check_submission

    report = check_submission(args.file, args.sample)
    if report.ok:
        sys.stdout.write(f"OK {args.file}: {report.summary()}\n")
        return 0
    shown = report.problems[: max(args.max_problems, 0)]
    lines = [f"{len(report.problems)} problem(s) in {args.file}:"] + [f"  {p}" for p in shown]
    if len(report.problems) > len(shown):
        lines.append(f"  ... and {len(report.problems) - len(shown)} more")
    sys.stdout.write("\n".join(lines) + "\n")
    return 1

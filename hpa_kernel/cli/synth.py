"""``hpa-kernel synth``: write a synthetic competition folder (Kaggle layout, with truth)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic competition folder with truth masks and labels",
        description="Write a deterministic synthetic competition folder in the Kaggle layout "
        "(train.csv, sample_submission.csv, train/, test/) with the truth under truth/.",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    out.add_argument("--n-train", type=int, default=8, metavar="N", help="train images (default 8)")
    out.add_argument("--n-test", type=int, default=4, metavar="N", help="test images (default 4)")
    out.add_argument("--overwrite", action="store_true", help="delete images in DIR that this run would not write")
    img = parser.add_argument_group("images")
    img.add_argument("--size", type=int, default=512, metavar="S", help="side of square images (default 512)")
    img.add_argument("--height", type=int, default=None, metavar="H", help="rows, for non-square images (with --width)")
    img.add_argument("--width", type=int, default=None, metavar="W",
                     help="columns, for non-square images (with --height)")
    img.add_argument("--sizes", choices=("uniform", "competition"), default="uniform",
                     help="competition: test images of 2048², 1728² and 3072² in the real test set's proportions "
                     "(462:68:29) plus one non-square image (needs --n-test >= 4); default: every image --size")
    img.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="8-bit (Kaggle) or 16-bit PNGs")
    img.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.synthetic import make_competition

    if (args.height is None) != (args.width is None):
        raise ValueError("--height and --width must be given together")
    shape = (args.height, args.width) if args.height is not None else None
    comp = make_competition(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        size=args.size,
        seed=args.seed,
        bit_depth=args.bit_depth,
        shape=shape,
        overwrite=args.overwrite,
        sizes=None if args.sizes == "uniform" else args.sizes,
    )
    logger.debug("competition folder %s", comp.root)
    return 0

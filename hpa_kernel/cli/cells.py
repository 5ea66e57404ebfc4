"""``hpa-kernel cells``: segment and crop a training folder into crops + ``cells.csv``, in shards."""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cells",
        help="segment and crop a training folder into cell crops and cells.csv",
        description="Segment every image of a split, score each cell (nucleus cut by the border, outlier "
        "segment), and write one 4-channel PNG crop per valid cell plus cells.csv. Resumable: a cache under "
        "OUT/cache lets a rerun skip finished images. Shards (--shard i/n, or RANK/WORLD_SIZE under torchrun) "
        "are joined with --merge.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--data", metavar="DIR", help="competition folder (with train.csv and the split folder)")
    io.add_argument("--out", required=True, metavar="DIR", help="output folder")
    io.add_argument("--split", default="train", help="sub-folder of --data to read (default train)")
    io.add_argument("--cache", metavar="DIR", default=None, help="cache folder (default OUT/cache)")
    seg = parser.add_argument_group("segmentation")
    seg.add_argument("--segmenter", choices=("hpa", "classic"), default="hpa",
                     help="hpa (default, as submit; needs the two segmentation weight files) or classic (weight-free)")
    seg.add_argument("--nuclei", metavar="PATH",
                     help="HPA nuclei model weights (--segmenter hpa; default: found by the segmenter from "
                     "$HPA_KERNEL_WEIGHTS or the Kaggle inputs)")
    seg.add_argument("--cell", metavar="PATH", help="HPA cell model weights (--segmenter hpa; default: as --nuclei)")
    seg.add_argument("--device", default=None,
                     help="cpu, cuda or cuda:N for the HPA models (default: cuda when available, else cpu)")
    seg.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per predict call (default 1)")
    seg.add_argument("--padding", action=argparse.BooleanOptionalAction, default=True,
                     help="hpacellseg's padding=True for --segmenter hpa: any image size works (default on)")
    cells = parser.add_argument_group("cells")
    cells.add_argument("--crop-size", type=int, default=512, metavar="S", help="crop side (default 512)")
    cells.add_argument("--margin", type=int, default=0, metavar="PX", help="pixels around each cell box (default 0)")
    cells.add_argument("--max-cut", type=float, default=0.1, metavar="F",
                       help="drop cells whose nucleus is cut by more than this fraction (default 0.1)")
    cells.add_argument("--train-crops", action=argparse.BooleanOptionalAction, default=True,
                       help="also write the team's 16-bit training crops (train_crops/, column train_crop) of the cells "
                       "their train filter can keep (default on)")
    par = parser.add_argument_group("parallelism")
    par.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: usable cores)")
    par.add_argument("--shard", metavar="i/n", default=None,
                     help="process sorted ids[i::n] (default: RANK/WORLD_SIZE if set, else everything)")
    par.add_argument("--merge", action="store_true", help="only merge OUT/cells.shard-*-of-n.csv into OUT/cells.csv")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def _shard(args) -> tuple[int, int]:
    from hpa_kernel.cells.builder import parse_shard

    if args.shard is not None:
        return parse_shard(args.shard)
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and world is not None:
        return parse_shard(f"{rank}/{world}")
    return 0, 1


def run(args: argparse.Namespace) -> int:
    from hpa_kernel.cells.builder import BuildOptions, build_training_set, merge_shards
    from hpa_kernel.cells.config import CellConfig

    config = CellConfig(crop_size=args.crop_size, margin=args.margin, max_train_cut=args.max_cut)
    if args.merge:
        path = merge_shards(args.out, config)
        logger.info("wrote %s", path)
        return 0
    if args.data is None:
        raise ValueError("--data is required (unless --merge)")
    from hpa_kernel.segmentation import create_segmenter

    kwargs = {}
    if args.segmenter == "hpa":
        from hpa_kernel.paths import resolve_device
        from hpa_kernel.segmentation.hpa import HPAParams

        params = HPAParams(device=resolve_device(args.device), padding=args.padding)
        kwargs = {"nuclei": args.nuclei, "cell": args.cell, "params": params}
    elif args.nuclei or args.cell or args.device:
        raise ValueError("--nuclei, --cell and --device apply to --segmenter hpa only")
    segmenter = create_segmenter(args.segmenter, **kwargs)
    logger.info("segmenter %s: %s", args.segmenter, segmenter.settings())
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        path = build_training_set(
            args.data, args.out, segmenter, config,
            BuildOptions(split=args.split, shard=_shard(args), workers=args.workers, cache_dir=args.cache,
                         batch_size=args.batch_size, progress=not args.no_progress, train_crops=args.train_crops),
        )
    logger.info("wrote %s", path)
    return 0

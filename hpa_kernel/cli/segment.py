"""``hpa-kernel segment``: cell and nuclei masks for a folder of images, as 16-bit PNGs."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment images into cell and nuclei masks ({ID}_cellmask.png, {ID}_nucleimask.png)",
        description="Segment the images of a folder (Kaggle layout: {ID}_red.png, ...) with the "
        "HPA-Cell-Segmentation networks (default) or the weight-free classic segmenter, and write "
        "{ID}_cellmask.png and {ID}_nucleimask.png as 16-bit label PNGs (0 = background).",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--images", required=True, metavar="DIR", help="folder with the channel images")
    io.add_argument("--ids", nargs="+", default=None, metavar="ID", help="image IDs (default: every image in DIR)")
    io.add_argument("--out", required=True, metavar="DIR", help="folder for the mask PNGs")
    seg = parser.add_argument_group("segmenter")
    seg.add_argument("--segmenter", choices=("hpa", "classic"), default="hpa", help="default: hpa")
    seg.add_argument("--nuclei", metavar="PTH", default=None, help="dpn_unet_nuclei_v1.pth (or its folder)")
    seg.add_argument("--cell", metavar="PTH", default=None, help="dpn_unet_cell_3ch_v1.pth (or its folder)")
    seg.add_argument("--device", default=None,
                     help="cpu, cuda or cuda:N for the HPA networks (default: cuda when available, else cpu)")
    seg.add_argument("--batch-size", type=int, default=4, metavar="N", help="images per network call (default 4)")
    seg.add_argument("--fp16", action="store_true", help="float16 autocast (CUDA only)")
    seg.add_argument("--channels-last", action="store_true", help="NHWC memory format (CUDA only)")
    seg.add_argument("--padding", action=argparse.BooleanOptionalAction, default=None,
                     help="hpacellseg's padding=True: any image size works (default on, as the team ran it)")
    seg.add_argument(
        "--resize-mode",
        choices=("skimage018", "skimage"),
        default="skimage018",
        help="anti-aliasing of the downscale: skimage018 = the 2021 behaviour (default)",
    )
    parser.set_defaults(func=run)
    return parser


def _segmenter_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``create_segmenter(args.segmenter, ...)``: the weights and an HPAParams for hpa."""
    if args.segmenter != "hpa":
        hpa_only = (("--nuclei", args.nuclei), ("--cell", args.cell), ("--fp16", args.fp16),
                    ("--channels-last", args.channels_last), ("--padding", args.padding is not None))  # fmt: skip
        ignored = [flag for flag, value in hpa_only if value]
        if args.device is not None:
            ignored.append("--device")
        if ignored:
            logger.warning(
                "%s only apply to --segmenter hpa; ignored with --segmenter %s", ", ".join(ignored), args.segmenter
            )
        return {}
    from hpa_kernel.paths import resolve_device
    from hpa_kernel.segmentation.hpa import HPAParams

    params = HPAParams(
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        fp16=args.fp16,
        channels_last=args.channels_last,
        padding=True if args.padding is None else args.padding,
        resize_mode=args.resize_mode,
    )
    return {"nuclei": args.nuclei, "cell": args.cell, "params": params}


def write_mask(path, label) -> None:
    """Write a label image as a 16-bit PNG.

    Parameters
    ----------
    path : path
        The PNG file to write.
    label : (H, W) integer ndarray
        Labels in [0, 65535]; anything outside is a ValueError naming ``path``.
    """
    from hpa_kernel._cv2 import cv2
    import numpy as np

    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > 65535):
        raise ValueError(f"{path}: labels must be in [0, 65535] for a 16-bit PNG, got [{label.min()}, {label.max()}]")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(label, dtype=np.uint16))
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    buf.tofile(str(path))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpa_kernel.io import list_image_ids
    from hpa_kernel.segmentation import create_segmenter

    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images: the folder {images_dir} does not exist")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    ids = args.ids or list_image_ids(images_dir)
    if not ids:
        raise FileNotFoundError(f"--images: no images ({{ID}}_red.png and so on) in {images_dir}")
    segmenter = create_segmenter(args.segmenter, **_segmenter_kwargs(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("segmenting %d image(s) from %s with %s", len(ids), images_dir, segmenter.settings())
    failed: dict[str, str] = {}
    for start in range(0, len(ids), args.batch_size):
        _segment_chunk(segmenter, images_dir, ids[start : start + args.batch_size], out, failed)
    done = len(ids) - len(failed)
    if failed:
        shown = "; ".join(f"{i}: {r}" for i, r in list(failed.items())[:5])
        logger.error("segmented %d of %d images into %s; %d failed: %s", done, len(ids), out, len(failed), shown)
        return 1 if done == 0 else 0  # like cells and submit: the bad images are logged, the rest is done
    logger.info("segmented %d of %d images into %s", done, len(ids), out)
    return 0


def _segment_chunk(segmenter, images_dir, chunk: list, out, failed: dict) -> None:
    """Segment one batch of IDs into ``out``; an image that fails is logged and recorded in ``failed``."""
    from hpa_kernel.io import check_image_id, read_image

    images, ok = [], []
    for image_id in chunk:
        try:
            images.append(read_image(images_dir, check_image_id(image_id)))
            ok.append(image_id)
        except (OSError, ValueError) as exc:  # missing, corrupt or refused: this image only
            logger.error("image %r: %s; skipped", image_id, exc)
            failed[image_id] = str(exc)
    if not images:
        return
    try:
        predictions = segmenter.predict(images)
    except (RuntimeError, ValueError) as exc:
        if len(images) == 1:
            logger.error("image %s: segmentation failed (%s); skipped", ok[0], exc)
            failed[ok[0]] = f"segmentation failed: {exc}"
            return
        for image_id in ok:  # one bad image in a batch: retry them one by one
            _segment_chunk(segmenter, images_dir, [image_id], out, failed)
        return
    for image_id, maps in zip(ok, predictions):
        try:
            nuclei_label, cell_label = segmenter.postprocess_fn(maps)
            write_mask(out / f"{image_id}_cellmask.png", cell_label)
            write_mask(out / f"{image_id}_nucleimask.png", nuclei_label)
        except (OSError, ValueError, RuntimeError) as exc:
            logger.error("image %s: post-processing or writing failed (%s); skipped", image_id, exc)
            failed[image_id] = str(exc)
            continue
        logger.info("%s: %d cells, %d nuclei", image_id, len(_ids(cell_label)), len(_ids(nuclei_label)))


def _ids(label):
    import numpy as np

    values = np.unique(label)
    return values[values != 0]

"""``hpa-kernel bundle wheels|weights``: the two Kaggle datasets for offline use."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(sub) -> None:
    parser = sub.add_parser("bundle", help="build the offline wheelhouse or the weights dataset for Kaggle")
    what = parser.add_subparsers(dest="bundle_what", metavar="WHAT", required=True)

    wheels = what.add_parser("wheels", help="the kit's wheel + dependency wheels + lock file + Kaggle metadata")
    g = wheels.add_argument_group("output")
    g.add_argument("--out", default="wheels", help="wheelhouse folder (default: wheels/)")
    g.add_argument("--dataset-id", default=None, metavar="OWNER/NAME",
                   help="Kaggle dataset id (default: the one already in OUT/dataset-metadata.json, else a placeholder)")
    g = wheels.add_argument_group("target")
    g.add_argument("--python", default=None, help="target Python version for dependency wheels (default: Kaggle's 3.12)")
    g.add_argument("--platform", action="append", default=None, help="platform tag, repeatable (default: manylinux x86_64)")
    g = wheels.add_argument_group("sources")
    g.add_argument("--kit-wheel", default=None, help="use this prebuilt hpa_kernel wheel instead of building it")
    g.add_argument("--find-links", action="append", default=None, help="extra --find-links for pip download")
    wheels.set_defaults(func=run)

    weights = what.add_parser("weights", help="checkpoints + segmentation weights + manifest with hashes")
    source = weights.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="folder with the checkpoints (and segmentation weights)")
    source.add_argument("--from-milimed", metavar="DIR", help="convert the HPA 2021 4th-place team's seven b0-*.pt files in DIR "
                        "(their Kaggle dataset cropytorchmodels, plus the segmentation weights if there)")
    weights.add_argument("--ignore-extra", action="store_true", help="with --from-milimed: leave out other .pt/.pth files in DIR")
    weights.add_argument("--segmentation", metavar="DIR", default=None,
                         help="with --from-milimed: folder with dpn_unet_nuclei_v1.pth and dpn_unet_cell_3ch_v1.pth (default: DIR)")
    weights.add_argument("--out", required=True, help="dataset folder to write")
    weights.add_argument("--manifest", default=None, help="manifest to start from (default: the one in --weights, else the repo's)")
    weights.add_argument("--dataset-id", default=None, metavar="OWNER/NAME",
                         help="Kaggle dataset id (default: the one already in OUT/dataset-metadata.json, else a placeholder)")
    weights.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpa_kernel import bundle

    if args.bundle_what == "wheels":
        target = {}
        if args.python:
            target["python"] = args.python
        if args.platform:
            target["platforms"] = tuple(args.platform)
        result = bundle.bundle_wheels(
            args.out, target=bundle.WheelTarget(**target), kit_wheel=args.kit_wheel, find_links=args.find_links,
            dataset_id=args.dataset_id,
        )
        for wheel in result.wheels:
            logger.info("  %s", wheel.name)
        from hpa_kernel.io import read_json_object

        dataset_id = read_json_object(result.folder / "dataset-metadata.json", "Kaggle dataset metadata")["id"]
        logger.info("upload: kaggle datasets create -p %s (or version); dataset id %s", result.folder, dataset_id)
        logger.info("install on Kaggle with: %s", bundle.install_command(bundle.kaggle_wheels_dir(dataset_id)))
        return 0
    if not args.from_milimed and (args.segmentation or args.ignore_extra):
        raise ValueError("--segmentation and --ignore-extra apply only with --from-milimed")
    if args.from_milimed:
        if args.manifest:
            raise ValueError("--manifest does not apply to --from-milimed: the team's ensemble layout is fixed")
        from hpa_kernel.classifier.milimed import bundle_milimed

        out = bundle_milimed(
            args.from_milimed, args.out, segmentation_dir=args.segmentation, ignore_extra=args.ignore_extra, dataset_id=args.dataset_id
        )
        bundle.write_model_metadata(out.parent, args.dataset_id or bundle.DEFAULT_WEIGHTS_ID)
        logger.info("weights dataset written to %s", out)
        return 0
    out = bundle.bundle_weights(args.weights, args.out, manifest=args.manifest, dataset_id=args.dataset_id)
    logger.info("weights dataset written to %s", out)
    return 0

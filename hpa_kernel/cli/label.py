"""``hpa-kernel label``: score cells by hand in a local web page; ``label export`` writes the results.

    hpa-kernel label --cells cells.csv --class "Mitotic spindle" --db labels.sqlite [--port 8765]
    hpa-kernel label export --db labels.sqlite --out soft_labels.csv [--validation val_cells.csv]
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)

ACTIONS = ("serve", "export")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "label",
        help="relabel rare classes by hand, one cell at a time, in a local web page; 'label export' writes soft labels",
        description="Serve a local page that shows the cells of the images carrying a class, one at a time "
        "(composite and green channel), and records a 1-5 score per key press in SQLite. "
        "'hpa-kernel label export' turns the scores into soft labels for training and a validation set.",
        epilog="keys on the page: 1-5 score, s/Space skip, u/Backspace undo, c brightness",
    )
    parser.add_argument("action", nargs="?", choices=ACTIONS, default="serve",
                        help="serve (default): the labelling page; export: write soft labels and/or the validation set")
    parser.add_argument("--db", required=True, metavar="SQLITE", help="score database (created if missing)")
    serve = parser.add_argument_group("serve")
    serve.add_argument("--cells", metavar="CSV", help="cells.csv of 'hpa-kernel cells'")
    serve.add_argument("--class", dest="classes", action="append", metavar="CLASS",
                       help="class to label, by name or id; repeat to label several in turn")
    serve.add_argument("--crops", metavar="DIR", help="folder holding every crop (default: crops/ beside the csv)")
    serve.add_argument("--user", metavar="NAME", help="labeller recorded with each score (default: $USER)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--display-size", type=int, default=448, metavar="PX", help="shown crop size in pixels (default 448)")
    export = parser.add_argument_group("export")
    export.add_argument("--out", metavar="CSV", help="soft labels: image_id,cell_id,class_id,soft_label,score,n_labellers")
    export.add_argument("--validation", metavar="CSV", help="validation set: ImageID,CellID,Labels,Judged")
    export.add_argument("--mapping", action="append", default=[], metavar="CLASS=1:a,2:b,3:c,4:d,5:e",
                        help="score to soft label for one class (repeatable); default 1:0,2:0.2,3:0.7,4:0.9,5:1")
    export.add_argument("--mapping-json", metavar="JSON", help='per-class mappings, {"Mitotic spindle": "1:0,...", "default": ...}')
    export.add_argument("--labeller", metavar="NAME", help="only this labeller's scores (default: all, averaged)")
    export.add_argument("--positive-min", type=float, default=4, help="validation: mean score >= this is positive (default 4)")
    export.add_argument("--negative-max", type=float, default=2, help="validation: mean score <= this is negative (default 2)")
    parser.set_defaults(func=run)
    return parser


def _default_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise ValueError("cannot tell who is labelling: pass --user NAME") from None


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        return _export(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from hpa_kernel.labelling import CellTable, LabelApp, LabelStore, serve

    if args.cells is None or not args.classes:
        raise ValueError("label: --cells and at least one --class are required to serve the labelling page")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    table = CellTable(args.cells, args.crops)
    with LabelStore(args.db) as store:
        app = LabelApp(table, store, args.classes, args.user or _default_user(), display_size=args.display_size)
        try:
            serve(app, args.host, args.port)
        except KeyboardInterrupt:
            logger.info("stopped; every score is in %s", args.db)
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpa_kernel.labelling import LabelStore, load_mappings, write_soft_labels, write_validation

    if args.out is None and args.validation is None:
        raise ValueError("label export: give --out (soft labels) and/or --validation (validation set)")
    if not Path(args.db).is_file():
        raise FileNotFoundError(f"score database {args.db} does not exist")
    default, per_class = load_mappings(args.mapping, args.mapping_json)
    with LabelStore(args.db) as store:
        if args.out is not None:
            write_soft_labels(store, args.out, default, per_class, args.labeller)
        if args.validation is not None:
            write_validation(store, args.validation, args.positive_min, args.negative_max, args.labeller)
    return 0

"""``hpa-kernel notebooks --out DIR``: write the notebooks that ship inside the wheel."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(sub) -> None:
    parser = sub.add_parser("notebooks", help="write the packaged papermill notebooks to a folder")
    parser.add_argument("--out", required=True, help="folder to write the .ipynb files into")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.resources
    from pathlib import Path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in importlib.resources.files("hpa_kernel.notebooks").iterdir() if p.name.endswith(".ipynb"))
    if not sources:
        raise FileNotFoundError("this installation of hpa_kernel carries no notebooks (hpa_kernel/notebooks/*.ipynb)")
    existing = [p.name for p in sources if (out / p.name).exists()]
    if existing and not args.force:
        raise ValueError(f"{out} already has {', '.join(existing)}; pass --force to overwrite")
    for src in sources:
        (out / src.name).write_bytes(src.read_bytes())
        logger.info("wrote %s", out / src.name)
    return 0

"""The ``hpa-kernel`` command line.

Each sub-command lives in its own small module of this package with two functions:
``register(subparsers)`` adds its parser (argument groups, no heavy imports) and ``run(args)``
does the work, importing the library lazily. ``hpa-kernel --help`` therefore stays fast.
Only this package configures logging handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

from hpa_kernel import __version__
from hpa_kernel.diskspace import DiskFullError, is_disk_full
from hpa_kernel.options import option_style

# Sub-command modules, in the order they appear in --help.
COMMANDS = (
    "demo",
    "synth",
    "segment",
    "cells",
    "submit",
    "ablate",
    "score",
    "validate_submission",
    "train",
    "label",
    "bundle",
    "notebooks",
)


def _available_commands():
    for name in COMMANDS:
        try:
            yield importlib.import_module(f"hpa_kernel.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"hpa_kernel.cli.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpa-kernel",
        description="Human Protein Atlas single-cell classification: segmentation, cells, "
        "ensemble inference, submission and scoring, offline.",
    )
    parser.add_argument("--version", action="version", version=f"hpa-kernel {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _available_commands():
        module.register(sub)
    return parser


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr with a compact format; the CLI and the notebooks call this, the library never."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _disk_full_message(exc: OSError) -> str:
    """One line for a full disk: what could not be written, and how to go on."""
    text = str(exc) if isinstance(exc, DiskFullError) else f"the disk is full: could not write {exc.filename or 'a file'}"
    return f"{text}. Free some space and run the same command again: it continues where this run stopped (see the README, 'When something goes wrong')"


def main(argv: list[str] | None = None) -> int:
    invoked_at = time.monotonic()
    parser = build_parser()
    args = parser.parse_args(argv)
    # When and how the command started: ``submit`` counts its budget from the process start when
    # run as a program (argv from the command line), from this call when called in a process.
    args.invoked_at, args.from_command_line = invoked_at, argv is None
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        with option_style("cli"):
            result = args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        logging.getLogger("hpa_kernel").error("%s", exc)
        return 1
    except OSError as exc:  # a full disk: one line, no traceback; other OS errors keep theirs
        if not is_disk_full(exc):
            raise
        logging.getLogger("hpa_kernel").error("%s", _disk_full_message(exc))
        return 1
    except KeyboardInterrupt:
        logging.getLogger("hpa_kernel").error("interrupted")
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

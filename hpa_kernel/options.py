"""How a message names an option: a command-line flag, or a notebook / Python parameter.

The library's messages sometimes tell the user to change a setting ("pass ``--segmenter
classic``"). The same function is called by the command line and by the notebooks, whose users
set ``segmenter = "classic"`` in the parameters cell instead. :func:`say_option` gives the
setting in the caller's words: the Python form by default (notebooks, scripts), the flag while
the command line runs (:func:`hpa_kernel.cli.main` enters ``option_style("cli")``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["OPTION_NAMES", "STYLES", "option_style", "current_style", "say_option"]

#: option key -> (command-line flag, notebook / Python parameter)
OPTION_NAMES: dict[str, tuple[str, str]] = {
    "segmenter": ("--segmenter", "segmenter"),
    "weights": ("--weights", "weights_dir"),
    "recipe": ("--recipe", "recipe"),
    "resume": ("--resume", "resume"),
    "limit": ("--limit", "limit"),
    "pretrained": ("--pretrained", "pretrained"),
}
STYLES = ("python", "cli")

_MISSING = object()
_style = "python"


@contextlib.contextmanager
def option_style(style: str) -> Iterator[None]:
    """Name options in ``style`` (``"cli"`` or ``"python"``) inside the ``with`` block, in every thread."""
    global _style
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    before, _style = _style, style
    try:
        yield
    finally:
        _style = before


def current_style() -> str:
    """``"cli"`` while the command line runs, else ``"python"``."""
    return _style


def say_option(key: str, value=_MISSING, style: str | None = None) -> str:
    """The setting ``key = value`` as the caller writes it.

    ``value`` True (a switch) or missing gives the bare flag; None on the command line is ``none``.

    >>> say_option("segmenter", "classic", style="cli"), say_option("segmenter", "classic")
    ('--segmenter classic', 'segmenter = "classic"')
    >>> say_option("resume", True, style="cli"), say_option("resume", True), say_option("weights")
    ('--resume', 'resume = True', 'weights_dir')
    """
    if key not in OPTION_NAMES:
        raise ValueError(f"unknown option {key!r}; known: {', '.join(OPTION_NAMES)}")
    flag, parameter = OPTION_NAMES[key]
    if (style or _style) == "cli":
        if value is _MISSING or value is True:
            return flag
        return f"{flag} {'none' if value is None else value}"
    if value is _MISSING:
        return parameter
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    return f"{parameter} = {shown}"

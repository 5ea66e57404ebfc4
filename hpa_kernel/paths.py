"""Where data and weights are found. This is the one place that knows the Kaggle folders.

Resolution order, everywhere in the kit: an explicit argument, then an environment variable,
then the Kaggle input folders. A missing folder raises ``FileNotFoundError`` naming every place
that was looked at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["KAGGLE_INPUT", "DATA_ENV", "WEIGHTS_ENV", "kaggle_input_dirs", "resolve_dir"]

KAGGLE_INPUT = Path("/kaggle/input")
DATA_ENV = "HPA_KERNEL_DATA"
WEIGHTS_ENV = "HPA_KERNEL_WEIGHTS"


def kaggle_input_dirs(root: Path | None = None) -> list[Path]:
    """The attached datasets under the Kaggle input folder (``/kaggle/input/*``), sorted.

    Kaggle mounts datasets either directly (``/kaggle/input/NAME``) or, in newer images, one level
    deeper; both levels are returned. Returns an empty list off Kaggle.
    """
    root = KAGGLE_INPUT if root is None else Path(root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(root.iterdir()):
        if child.is_dir():
            found.append(child)
            found.extend(sorted(p for p in child.iterdir() if p.is_dir()))
    return found


def resolve_dir(
    explicit: str | os.PathLike | None,
    env_var: str,
    looks_right: Callable[[Path], bool],
    what: str,
    kaggle_root: Path | None = None,
) -> Path:
    """Resolve a folder: ``explicit``, then ``$env_var``, then the Kaggle input folders.

    Parameters
    ----------
    explicit : path or None
        A folder given by the user. When given, it must exist; it is never second-guessed.
    env_var : str
        Name of the environment variable consulted next.
    looks_right : callable
        ``looks_right(path) -> bool``; used to pick a Kaggle input folder.
    what : str
        What is being looked for, for the error message.
    kaggle_root : path, optional
        Override of ``/kaggle/input`` (tests).

    Raises
    ------
    FileNotFoundError
        Naming every place that was tried.
    """
    tried: list[str] = []
    if explicit is not None:
        path = Path(explicit)
        if path.is_dir():
            return path
        raise FileNotFoundError(f"{what}: the folder {path} does not exist")
    env = os.environ.get(env_var)
    if env:
        path = Path(env)
        if path.is_dir():
            return path
        tried.append(f"${env_var}={env} (no such folder)")
    else:
        tried.append(f"${env_var} (not set)")
    candidates = kaggle_input_dirs(kaggle_root)
    for path in candidates:
        if looks_right(path):
            return path
    root = KAGGLE_INPUT if kaggle_root is None else kaggle_root
    tried.append(f"{root}/* ({len(candidates)} folders, none matched)")
    raise FileNotFoundError(f"{what} not found; looked at: " + "; ".join(tried) + ". Pass the folder explicitly.")

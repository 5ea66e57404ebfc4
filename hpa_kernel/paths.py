"""Where data and weights are found, and which device runs the networks.

This is the one place that knows the Kaggle folders. Resolution order, everywhere in the kit: an
explicit argument, then an environment variable, then the Kaggle input folders. A missing folder
or file raises ``FileNotFoundError`` naming every place that was looked at.

Kaggle input folders: a dataset is mounted at ``/kaggle/input/<dataset>/`` (or one level deeper),
a Kaggle Model at ``/kaggle/input/<model>/<framework>/<variation>/<version>/``. Every folder down to
:data:`MAX_DEPTH` levels below the input folder is a candidate, in a stable order: **shallowest
first, then sorted path order** (:func:`kaggle_input_dirs`). The first candidate that matches is
used and named in the log; when several match, the log lists the others and states that rule.

:func:`resolve_device` is the one device rule of the kit (submit, training, segment, cells): the
device asked for, else CUDA when it is available, else the CPU.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["KAGGLE_INPUT", "DATA_ENV", "WEIGHTS_ENV", "MAX_DEPTH", "CHOICE_RULE", "kaggle_input_dirs", "resolve_dir",
           "resolve_file", "resolve_device"]

logger = logging.getLogger(__name__)

KAGGLE_INPUT = Path("/kaggle/input")
DATA_ENV = "HPA_KERNEL_DATA"
WEIGHTS_ENV = "HPA_KERNEL_WEIGHTS"
#: How deep below the input folder attachments are searched: a Kaggle Model's files lie at depth 4
#: (``<model>/<framework>/<variation>/<version>``), one more level is allowed for a sub-folder.
MAX_DEPTH = 5
#: The rule that picks one of several matching attachments, as the log states it.
CHOICE_RULE = "the shallowest, then the first in sorted path order"


def kaggle_input_dirs(root: Path | None = None, max_depth: int = MAX_DEPTH) -> list[Path]:
    """The folders under the Kaggle input folder, down to ``max_depth`` levels: shallowest first, then sorted.

    Kaggle mounts a dataset at ``/kaggle/input/NAME`` (or one level deeper) and a Model at
    ``/kaggle/input/MODEL/FRAMEWORK/VARIATION/VERSION``; every folder on the way is returned, so
    that a lookup takes the first that holds what it needs (:data:`CHOICE_RULE`). Returns an empty
    list off Kaggle.

    Parameters
    ----------
    root : path, optional
        Override of ``/kaggle/input`` (tests).
    max_depth : int
        Levels below ``root`` (1: the attachments themselves).
    """
    root = KAGGLE_INPUT if root is None else Path(root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth):
        level = sorted(child for folder in level for child in _subfolders(folder))
        found.extend(level)
    return found


def _subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder``; an unreadable folder has none."""
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries if entry.is_dir()]
    except OSError:
        return []


def _first(matches: list[Path], what: str) -> Path:
    """The first of the Kaggle input folders that matched, logged with the others and :data:`CHOICE_RULE`."""
    chosen = matches[0]
    if len(matches) > 1:
        logger.warning("%s: %d Kaggle input folders match; using %s (%s); also found: %s", what, len(matches), chosen,
                       CHOICE_RULE, ", ".join(map(str, matches[1:])))
    else:
        logger.info("%s: using the Kaggle input folder %s", what, chosen)
    return chosen


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
        ``looks_right(path) -> bool``; used to pick a Kaggle input folder: of those that look
        right, :data:`CHOICE_RULE` (:func:`kaggle_input_dirs`'s order) picks one, and the log
        names it (and the others).
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
    matches = [path for path in candidates if looks_right(path)]
    if matches:
        return _first(matches, what)
    root = KAGGLE_INPUT if kaggle_root is None else kaggle_root
    tried.append(f"{root}/* down to {MAX_DEPTH} levels ({len(candidates)} folders, none matched)")
    raise FileNotFoundError(f"{what} not found; looked at: " + "; ".join(tried) + ". Pass the folder explicitly.")


def resolve_file(
    explicit: str | os.PathLike | None,
    env_var: str,
    filename: str,
    what: str,
    kaggle_root: Path | None = None,
    hint: str = "Pass the file explicitly.",
) -> Path:
    """Resolve a file: ``explicit`` (the file, or a folder holding ``filename``), then ``$env_var``, then Kaggle inputs.

    The file counterpart of :func:`resolve_dir`, with the same order: when ``explicit`` is given it
    must hold the file and nothing else is tried; otherwise the folder named by ``$env_var``, then
    the Kaggle input folders that hold ``filename`` (down to :data:`MAX_DEPTH` levels; of several,
    :data:`CHOICE_RULE`, named in the log).

    Parameters
    ----------
    explicit : path or None
        A file, or a folder holding ``filename``.
    env_var : str
        Name of the environment variable (a folder) consulted next.
    filename : str
        The file name looked for in folders.
    what : str
        What is being looked for, for the error message.
    kaggle_root : path, optional
        Override of ``/kaggle/input`` (tests).
    hint : str
        The last sentence of the not-found error: how to fix it.

    Returns
    -------
    Path
        The file.

    Raises
    ------
    FileNotFoundError
        Naming the file and every place that was tried.
    """
    if explicit is not None:
        path = Path(explicit)
        candidate = path / filename if path.is_dir() else path
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"{what}: {candidate} does not exist")
    tried: list[str] = []
    env = os.environ.get(env_var)
    if env:
        candidate = Path(env) / filename
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    else:
        tried.append(f"${env_var} (not set)")
    candidates = kaggle_input_dirs(kaggle_root)
    matches = [folder / filename for folder in candidates if (folder / filename).is_file()]
    if matches:
        return _first(matches, f"{what} {filename}")
    root = KAGGLE_INPUT if kaggle_root is None else kaggle_root
    tried.append(f"{root}/**/{filename} down to {MAX_DEPTH} levels ({len(candidates)} folders)")
    raise FileNotFoundError(f"{what} {filename} not found; looked at: " + "; ".join(tried) + f". {hint}")


_DEVICE_NAME = re.compile(r"(cpu|cuda)(:\d+)?")


def resolve_device(device=None) -> str:
    """The torch device to run on: ``device`` when given (checked), else ``"cuda"`` when available, else ``"cpu"``.

    Parameters
    ----------
    device : str, torch.device or None
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None picks CUDA when torch sees a GPU, the CPU
        otherwise.

    Returns
    -------
    str
        The device name, e.g. ``"cuda"`` or ``"cpu"``.

    Raises
    ------
    ValueError
        For a name other than cpu/cuda/cuda:N, for a CUDA device when CUDA is not available, and
        for ``cuda:N`` beyond the visible GPUs.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: device: expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(device)
    match = _DEVICE_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if match.group(1) == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} requested but CUDA is not available; use device='cpu' (or leave it unset)")
        index = int(match.group(2)[1:]) if match.group(2) else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return name

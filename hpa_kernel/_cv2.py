"""OpenCV, imported on first use with an error that says what to install.

hpa-kernel needs OpenCV (the ``cv2`` module) but does not require a particular distribution of
it: ``opencv-python``, ``opencv-python-headless`` and the ``-contrib`` variants all install the
same ``cv2`` package, and pip has no way to say "any one of them". The Kaggle image ships
``opencv-python``; installing the headless copy over it would put a second distribution into the
same ``cv2/`` folder (and break ``pip check``). So the kit's base requirements carry no OpenCV,
``pip install "hpa-kernel[opencv]"`` adds ``opencv-python-headless``, and every module of the kit
imports OpenCV through this one::

    from hpa_kernel._cv2 import cv2

which imports the real module the first time it is asked for, or raises an ``ImportError`` that
names the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require_cv2", "INSTALL_HINT"]

#: What the error says to do.
INSTALL_HINT = (
    'pip install opencv-python-headless (or pip install "hpa-kernel[opencv]"); '
    "any OpenCV distribution that provides the cv2 module will do (the Kaggle image has opencv-python)"
)


def require_cv2() -> ModuleType:
    """The ``cv2`` module.

    Raises
    ------
    ImportError
        When no OpenCV distribution is installed, with the pip command that fixes it.
    """
    try:
        return importlib.import_module("cv2")
    except ModuleNotFoundError as exc:
        if exc.name != "cv2":
            raise
        raise ImportError(f"hpa-kernel needs OpenCV (the cv2 module), which is not installed: {INSTALL_HINT}") from exc


def __getattr__(name: str) -> ModuleType:
    # ``from hpa_kernel._cv2 import cv2`` lands here: the import happens on first use only.
    if name == "cv2":
        return require_cv2()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Test scaffolding: a tiny, learnable training set in the ``cells.csv`` format, for smoke tests.

Each toy cell is a disk (red and yellow channels) with a nucleus (blue). Every class shown in a cell
adds a bright green spot at its own angle around the nucleus, so a network can learn the labels.
Labels are weak, as in the competition: the ``labels`` column holds the image's labels, and each
cell shows each of them with probability ``p_show``. One cell per image is marked invalid.

Use the real pipeline (``hpa-kernel cells`` on a synthetic competition) for anything beyond a smoke
test; this module only exists so that training can be tested without segmentation. It lives in
``tests/`` (imported as ``toy_training``), not in the library.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from hpa_kernel.classes import format_labels
from hpa_kernel.training.dataset import CELLS_COLUMNS

__all__ = ["make_toy_cells", "draw_toy_cell"]

logger = logging.getLogger(__name__)


def draw_toy_cell(classes, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 4) uint8 R, G, B, Y toy crop showing ``classes`` as green spots."""
    from hpa_kernel._cv2 import cv2

    crop = np.zeros((size, size, 4), np.uint8)
    c = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    center = (int(c[0]), int(c[1]))
    cv2.circle(crop, center, int(size * 0.42), (90, 0, 0, 70), -1)
    cv2.circle(crop, center, int(size * 0.15), (0, 0, 200, 0), -1)
    green = np.zeros((size, size), np.uint8)
    for k in classes:
        angle = 2 * math.pi * int(k) / 19
        p = (int(center[0] + math.cos(angle) * size * 0.3), int(center[1] + math.sin(angle) * size * 0.3))
        cv2.circle(green, p, max(1, int(size * 0.07)), 230, -1)
    crop[..., 1] = green
    noise = rng.integers(0, 20, size=crop.shape, dtype=np.uint8)
    return np.where(crop > 0, np.clip(crop.astype(int) + noise - 10, 0, 255), 0).astype(np.uint8)


def make_toy_cells(out: str | os.PathLike, n_images: int = 6, cells_per_image: int = 4, size: int = 64,
                   classes: tuple[int, ...] = (0, 5, 11, 16), p_show: float = 0.85, seed: int = 0) -> Path:
    """Write ``out/cells.csv`` and ``out/crops/*.png`` and return the csv path.

    Parameters
    ----------
    out : path
        Output folder (created).
    n_images, cells_per_image : int
        Table size; each image also gets one extra invalid cell.
    size : int
        Crop side.
    classes : tuple of int
        Classes drawn from; each image has one or two of them.
    p_show : float
        Probability that a cell shows each label of its image.
    seed : int
        Seed; the output is deterministic.
    """
    from hpa_kernel._cv2 import cv2
    import pandas as pd

    if n_images < 1 or cells_per_image < 1 or size < 8:
        raise ValueError(f"need n_images >= 1, cells_per_image >= 1 and size >= 8, got {n_images}, {cells_per_image}, {size}")
    if not classes:
        raise ValueError("classes is empty")
    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        image_id = f"toy{i:03d}"
        labels = sorted(set(rng.choice(classes, size=int(rng.integers(1, 3)), replace=True).tolist()))
        for cell_id in range(1, cells_per_image + 2):
            valid = cell_id <= cells_per_image
            shown = [k for k in labels if rng.random() < p_show] if valid else []
            crop = draw_toy_cell(shown, size, rng)
            rel = f"crops/{image_id}_{cell_id}.png"
            if not cv2.imwrite(str(out / rel), crop):
                raise ValueError(f"cannot write {out / rel}")
            y0, x0 = int(rng.integers(0, 400)), int(rng.integers(0, 400))
            rows.append(dict(image_id=image_id, cell_id=cell_id, crop=rel, y0=y0, x0=x0, y1=y0 + 90, x1=x0 + 90,
                             area=int((crop[..., 0] > 0).sum()), nucleus_cut=0.0, outlier_score=0.0, valid=valid,
                             labels=format_labels(labels)))
    path = out / "cells.csv"
    pd.DataFrame(rows, columns=list(CELLS_COLUMNS)).to_csv(path, index=False)
    return path

"""The training cells: the ``cells.csv`` table, its crops, and the targets (image, soft or pseudo labels).

``cells.csv`` is written by ``hpa-kernel cells`` (columns ``image_id, cell_id, crop, y0, x0, y1, x1,
area, nucleus_cut, outlier_score, valid, labels``; ``crop`` is relative to the csv; crops are
4-channel PNGs whose planes are R, G, B, Y as read by ``cv2.imread(path, cv2.IMREAD_UNCHANGED)``).
Only rows with ``valid`` true are used for training. Crops are read with
:func:`hpa_kernel.cells.builder.read_crop` (re-exported here).

Targets, per cell, a float vector of 19 values in [0, 1], built by :func:`build_targets`:

1. the image-level labels of the cell's image (multi-hot), by default;
2. replaced by the cell's pseudo labels where a pseudo-label file has a row for the cell;
3. then, class by class, replaced by the manual soft label where the relabelling export scored that
   class for that cell (the export maps the 1..5 scores, default 1:0.0, 2:0.2, 3:0.7, 4:0.9, 5:1.0).

Soft-label file: the export of ``hpa-kernel label export`` (long format
``image_id,cell_id,class_id,soft_label,score,n_labellers``), read with
:func:`hpa_kernel.labelling.export.read_soft_labels`, re-exported here. Pseudo-label file (:mod:`hpa_kernel.training.pseudo`):
``image_id, cell_id, pseudo_labels, ...``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from hpa_kernel.cells.builder import CSV_COLUMNS, parse_flag, read_crop
from hpa_kernel.classes import NUM_CLASSES, labels_to_multihot, parse_labels
from hpa_kernel.labelling.export import read_soft_labels

__all__ = [
    "CELLS_COLUMNS",
    "read_cells_table",
    "read_crop",
    "read_soft_labels",
    "read_pseudo_labels",
    "build_targets",
    "CellDataset",
]

logger = logging.getLogger(__name__)

#: The columns of ``cells.csv`` (docs/DESIGN.md), as the cells stage writes them.
CELLS_COLUMNS: tuple[str, ...] = CSV_COLUMNS


def read_cells_table(path: str | os.PathLike, valid_only: bool = True):
    """Read ``cells.csv`` into a DataFrame with ``crop_path`` (absolute) and parsed ``label_ids``.

    Parameters
    ----------
    path : path
        The ``cells.csv`` written by ``hpa-kernel cells``.
    valid_only : bool
        Keep only the rows whose ``valid`` column is true.

    Raises
    ------
    FileNotFoundError
        If the csv does not exist.
    ValueError
        If columns are missing or the table (after filtering) is empty.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cells table {path} not found (write it with `hpa-kernel cells`)")
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "labels": str, "crop": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; expected a header {', '.join(CELLS_COLUMNS)} and one row per cell") from None
    missing = [c for c in CELLS_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {', '.join(CELLS_COLUMNS)}")
    df["cell_id"] = df["cell_id"].astype(int)
    df["valid"] = [parse_flag(v, f"{path}: column valid") for v in df["valid"]]
    if valid_only:
        df = df[df["valid"]]
    if df.empty:
        raise ValueError(f"{path}: no {'valid ' if valid_only else ''}cells in the table")
    df = df.reset_index(drop=True)
    no_crop = df["valid"] & (df["crop"].str.strip() == "")
    if no_crop.any():
        first = df[no_crop].iloc[0]
        raise ValueError(f"{path}: {int(no_crop.sum())} valid cells have no crop file (first: {first.image_id}/{first.cell_id})")
    df["crop_path"] = [str((path.parent / c).resolve()) for c in df["crop"]]
    df["label_ids"] = df["labels"].map(parse_labels)
    return df


def _key(image_id, cell_id) -> tuple[str, int]:
    return str(image_id), int(cell_id)


def read_pseudo_labels(path: str | os.PathLike) -> dict[tuple[str, int], tuple[int, ...]]:
    """Read a pseudo-label file into ``{(image_id, cell_id): class ids}``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file {path} not found (write it with `hpa-kernel train --make-pseudo-labels`)")
    df = pd.read_csv(path, dtype={"image_id": str, "pseudo_labels": str}, keep_default_na=False)
    missing = [c for c in ("image_id", "cell_id", "pseudo_labels") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected image_id, cell_id, pseudo_labels")
    return {_key(i, c): parse_labels(p) for i, c, p in zip(df["image_id"], df["cell_id"], df["pseudo_labels"])}


def build_targets(
    table,
    soft_labels: Mapping[tuple[str, int], Mapping[int, float]] | None = None,
    pseudo_labels: Mapping[tuple[str, int], tuple[int, ...]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell soft targets (N, 19) float32 and their source per row.

    Parameters
    ----------
    table : DataFrame
        From :func:`read_cells_table`.
    soft_labels, pseudo_labels : mapping, optional
        From :func:`read_soft_labels` and :func:`read_pseudo_labels`.

    Returns
    -------
    targets : ndarray, shape (N, 19)
    source : ndarray of str, shape (N,)
        ``"image"``, ``"pseudo"`` or ``"manual"`` (manual wins over pseudo).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"image_id": ["a"], "cell_id": [1], "label_ids": [(0, 5)]})
    >>> y, src = build_targets(t, soft_labels={("a", 1): {5: 0.2}})
    >>> y[0, [0, 5]].tolist(), src.tolist()
    ([1.0, 0.20000000298023224], ['manual'])
    """
    soft_labels = soft_labels or {}
    pseudo_labels = pseudo_labels or {}
    n = len(table)
    targets = np.zeros((n, NUM_CLASSES), dtype=np.float32)
    source = np.full(n, "image", dtype=object)
    used_soft = used_pseudo = 0
    for i, (image_id, cell_id, labels) in enumerate(zip(table["image_id"], table["cell_id"], table["label_ids"])):
        key = _key(image_id, cell_id)
        if key in pseudo_labels:
            labels = pseudo_labels[key]
            source[i] = "pseudo"
            used_pseudo += 1
        targets[i] = labels_to_multihot(labels)
        if key in soft_labels:
            for c, v in soft_labels[key].items():
                targets[i, c] = v
            source[i] = "manual"
            used_soft += 1
    if soft_labels and used_soft < len(soft_labels):
        logger.warning("%d of %d manually labelled cells are not in the cells table", len(soft_labels) - used_soft, len(soft_labels))
    if pseudo_labels and used_pseudo < len(pseudo_labels):
        logger.info("%d of %d pseudo-labelled cells are not in this table", len(pseudo_labels) - used_pseudo, len(pseudo_labels))
    return targets, source.astype(str)


class CellDataset:
    """A map-style dataset of (crop, target): uint8 tensor (4, S, S) and float32 tensor (19,).

    Each crop is read, resized to ``input_size`` (area interpolation when shrinking) and then
    augmented at that size by ``augment(crop, rng)``. With ``cache=True`` the resized crops are kept
    in memory (small input sizes only). Augmentation randomness comes from torch's generator, so
    each DataLoader worker draws differently.
    """

    def __init__(self, crop_paths, targets: np.ndarray, input_size: int,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None, cache: bool = False):
        if len(crop_paths) != len(targets):
            raise ValueError(f"crop_paths ({len(crop_paths)}) and targets ({len(targets)}) differ in length")
        self.crop_paths = list(crop_paths)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.input_size = int(input_size)
        self.augment = augment
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.crop_paths)

    def load(self, index: int) -> np.ndarray:
        """The resized, un-augmented crop (input_size, input_size, 4) uint8."""
        from hpa_kernel._cv2 import cv2

        if self._cache is not None and index in self._cache:
            return self._cache[index]
        crop = read_crop(self.crop_paths[index])
        s = self.input_size
        if crop.shape[:2] != (s, s):
            interp = cv2.INTER_AREA if crop.shape[0] > s else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (s, s), interpolation=interp)
        if self._cache is not None:
            self._cache[index] = crop
        return crop

    def __getitem__(self, index: int):
        import torch

        crop = self.load(int(index))
        if self.augment is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            crop = self.augment(crop, rng)
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        return x, torch.from_numpy(self.targets[index])

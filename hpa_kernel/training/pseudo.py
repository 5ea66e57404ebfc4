"""Pseudo-labels from a deliberately under-fit ResNet18.

The labeller (timm ``resnet18``, 4 channels) is trained briefly on the image-level labels
(:class:`~.config.PseudoLabelConfig`, one short epoch by default): it has learnt the obvious
patterns, not yet the weak labels of each cell. Its probabilities ``p`` then relabel every valid cell:

* **negative rule**: an image label ``c`` of the cell is dropped when ``p[c] < negative_threshold``
  (0.3). A cell may end up with no label; its target is then all zero.
* **positive rule** (``positive_class``; mitotic spindle, 11, by default; ``hpa-kernel train
  --recipe milimed2021`` uses 6, the class of the team's positive pseudo-labels): in an image whose
  labels lack the class, the cell gets it when ``p[c] >= positive_threshold``; a Negative (18)
  label of that cell is removed, since Negative excludes every other class. Which added and dropped
  labels training uses, and in which order, is ``TrainConfig.labels`` (:class:`~.config.LabelRules`).

The new labels file (:func:`make_pseudo_labels`) has one row per cell with its provenance:
``image_id, cell_id, labels`` (the image labels), ``pseudo_labels``, ``dropped``, ``added``,
``rule`` (``negative``, ``positive``, both joined by ``+``, or empty), ``model`` (architecture),
``checkpoint`` (file name), ``checkpoint_sha256``, ``negative_threshold``, ``positive_threshold``.
Training reads it with ``--pseudo-labels``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hpa_kernel.classes import NEGATIVE, NUM_CLASSES, format_labels
from hpa_kernel.io import atomic_write
from hpa_kernel.training.config import PseudoLabelConfig

__all__ = ["PSEUDO_COLUMNS", "train_pseudo_labeller", "predict_cells", "apply_pseudo_rules", "make_pseudo_labels"]

logger = logging.getLogger(__name__)

PSEUDO_COLUMNS = ("image_id", "cell_id", "labels", "pseudo_labels", "dropped", "added", "rule", "model", "checkpoint",
                  "checkpoint_sha256", "negative_threshold", "positive_threshold")
LABELLER_NAME = "pseudo_resnet18"


def train_pseudo_labeller(cells_csv: str | os.PathLike, out_dir: str | os.PathLike, config: PseudoLabelConfig = PseudoLabelConfig(),
                          device: str | None = None, progress: bool = True) -> Path:
    """Train the under-fit labeller; returns its checkpoint ``out_dir/pseudo_resnet18_m0.pth``."""
    from hpa_kernel.training.loop import RunOptions, train_group

    options = RunOptions(device=device, name=LABELLER_NAME, manifest=False, progress=progress)
    paths = train_group(config.train, cells_csv, out_dir, options=options)
    return paths[-1]


def predict_cells(checkpoint: str | os.PathLike, table, device: str = "cpu", batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Probabilities (N, 19) of a checkpoint over the crops of a cells table, in table order.

    An 18-output checkpoint (milimed2021) gets Negative = ``1 - max`` of its outputs, as at inference.
    """
    from hpa_kernel.classifier import load_checkpoint
    from hpa_kernel.training.dataset import CellDataset
    from hpa_kernel.training.loop import predict

    model, cfg = load_checkpoint(checkpoint, map_location=device)
    model.to(device)
    dataset = CellDataset(table["crop_path"], np.zeros((len(table), NUM_CLASSES), np.float32), cfg.input_size)
    probs = predict(model, dataset, cfg, device, batch_size=batch_size, progress=progress)
    if probs.shape[1] == NEGATIVE:
        probs = np.concatenate([probs, 1.0 - probs.max(axis=1, keepdims=True)], axis=1)
    return probs


def apply_pseudo_rules(image_labels, probs: np.ndarray, negative_threshold: float = 0.3, positive_threshold: float = 0.9,
                       positive_class: int = 11) -> list[dict]:
    """Apply the negative and positive rules to each cell.

    Parameters
    ----------
    image_labels : sequence of tuple of int
        The image labels of each cell.
    probs : ndarray, shape (N, 19)
        The labeller's probabilities.

    Returns
    -------
    list of dict
        Per cell: ``pseudo_labels``, ``dropped``, ``added`` (tuples of class ids) and ``rule``.

    Examples
    --------
    >>> p = np.full((2, 19), 0.5); p[0, 5] = 0.1; p[1, 11] = 0.95
    >>> [r["pseudo_labels"] for r in apply_pseudo_rules([(0, 5), (18,)], p)]
    [(0,), (11,)]
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or len(probs) != len(image_labels):
        raise ValueError(f"probs must have shape ({len(image_labels)}, {NUM_CLASSES}), got {probs.shape}")
    out = []
    for labels, p in zip(image_labels, probs):
        labels = tuple(labels)
        by_negative = tuple(c for c in labels if p[c] < negative_threshold)
        kept = [c for c in labels if c not in by_negative]
        dropped, added = by_negative, ()
        if positive_class not in labels and p[positive_class] >= positive_threshold:
            added = (positive_class,)
            if NEGATIVE in kept:
                kept.remove(NEGATIVE)
                dropped = tuple(sorted(set(dropped) | {NEGATIVE}))
            kept.append(positive_class)
        rule = "+".join(name for name, on in (("negative", bool(by_negative)), ("positive", bool(added))) if on)
        out.append({"pseudo_labels": tuple(sorted(kept)), "dropped": dropped, "added": added, "rule": rule})
    return out


def make_pseudo_labels(cells_csv: str | os.PathLike, checkpoint: str | os.PathLike, out_csv: str | os.PathLike,
                       config: PseudoLabelConfig = PseudoLabelConfig(), device: str | None = None, progress: bool = False):
    """Relabel the valid cells of ``cells_csv`` with the labeller ``checkpoint``; write and return the table.

    ``device`` None predicts on CUDA when available, like :func:`~.loop.train_group`.
    """
    import pandas as pd

    from hpa_kernel.classifier import load_config
    from hpa_kernel.manifest import sha256_of
    from hpa_kernel.training.dataset import read_cells_table
    from hpa_kernel.training.loop import _device

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"pseudo-labeller checkpoint {checkpoint} not found")
    table = read_cells_table(cells_csv)
    probs = predict_cells(checkpoint, table, device=_device(device), progress=progress)
    rules = apply_pseudo_rules(table["label_ids"].tolist(), probs, config.negative_threshold, config.positive_threshold,
                               config.positive_class)
    arch = load_config(checkpoint).arch
    digest = sha256_of(checkpoint)
    df = pd.DataFrame({
        "image_id": table["image_id"], "cell_id": table["cell_id"], "labels": table["labels"],
        "pseudo_labels": [format_labels(r["pseudo_labels"]) for r in rules],
        "dropped": [format_labels(r["dropped"]) for r in rules],
        "added": [format_labels(r["added"]) for r in rules],
        "rule": [r["rule"] for r in rules],
        "model": arch, "checkpoint": checkpoint.name, "checkpoint_sha256": digest,
        "negative_threshold": config.negative_threshold, "positive_threshold": config.positive_threshold,
    }, columns=list(PSEUDO_COLUMNS))
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_csv, lambda tmp: df.to_csv(tmp, index=False))
    n_drop = int((df["dropped"] != "").sum())
    n_add = int((df["added"] != "").sum())
    logger.info("pseudo-labels: %d cells, %d lost a label, %d gained class %d -> %s", len(df), n_drop, n_add,
                config.positive_class, out_csv)
    return df

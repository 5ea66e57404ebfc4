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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_kernel.cells.builder import CSV_COLUMNS, read_crop
from hpa_kernel.cells.table import read_cells_table  # the one reader of cells.csv, re-exported
from hpa_kernel.classes import NUM_CLASSES, labels_to_multihot, parse_labels
from hpa_kernel.labelling.export import read_soft_labels
from hpa_kernel.readers import parse_column, read_csv

__all__ = [
    "CELLS_COLUMNS",
    "read_cells_table",
    "read_crop",
    "read_soft_labels",
    "read_pseudo_labels",
    "build_targets",
    "read_scores",
    "score_to_soft",
    "TargetSet",
    "recipe_targets",
    "read_antibody_marks",
    "train_filter",
    "filter_cells",
    "CROP_COLUMNS",
    "use_crops",
    "CellDataset",
]

logger = logging.getLogger(__name__)

#: The columns of ``cells.csv`` (docs/DESIGN.md), as the cells stage writes them.
CELLS_COLUMNS: tuple[str, ...] = CSV_COLUMNS


def _key(image_id, cell_id) -> tuple[str, int]:
    return str(image_id), int(cell_id)


def _how_to_make_pseudo_labels() -> str:
    """The command line's or the notebook's way to write a pseudo-label file."""
    from hpa_kernel.options import current_style

    if current_style() == "cli":
        return "`hpa-kernel train --make-pseudo-labels CSV`"
    return "the pseudo_labels notebook, or hpa_kernel.training.make_pseudo_labels"


def read_pseudo_labels(path: str | os.PathLike) -> dict[tuple[str, int], tuple[int, ...]]:
    """Read a pseudo-label file into ``{(image_id, cell_id): class ids}``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file, the line and the column: not UTF-8, a column missing, a ``cell_id`` that
        is not an integer or a ``pseudo_labels`` field that is not a label field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file {path} not found (write it with {_how_to_make_pseudo_labels()})")
    df = read_csv(path, "pseudo-label file", dtype={"image_id": str, "cell_id": str, "pseudo_labels": str})
    missing = [c for c in ("image_id", "cell_id", "pseudo_labels") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected image_id, cell_id, pseudo_labels")
    cells = parse_column(df["cell_id"], int, path=path, column="cell_id", expected="an integer")
    labels = parse_column(df["pseudo_labels"], parse_labels, path=path, column="pseudo_labels",
                          expected="class ids 0..18 joined by '|' (or empty)")
    return {_key(i, c): p for i, c, p in zip(df["image_id"], cells, labels)}


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


def read_scores(path: str | os.PathLike) -> dict[tuple[str, int], dict[int, float]]:
    """Read the mean raw scores (1..5) of a soft-label export as ``{(image_id, cell_id): {class_id: score}}``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file, the line and the column: the ``score`` column (or another) is missing, a
        score is not a number in 1..5, an id is not an integer, or the file is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"soft-label file {path} does not exist (write it with `hpa-kernel label export`)")
    df = read_csv(path, "soft-label file", dtype={"image_id": str})
    missing = [c for c in ("image_id", "cell_id", "class_id", "score") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the recipe maps the raw scores (export with `hpa-kernel label export`)")
    cells = parse_column(df["cell_id"], int, path=path, column="cell_id", expected="an integer")
    classes = parse_column(df["class_id"], int, path=path, column="class_id", expected="an integer class id")
    scores = parse_column(df["score"], _score, path=path, column="score", expected="a mean score in 1..5")
    out: dict[tuple[str, int], dict[int, float]] = {}
    for image_id, cell_id, cid, score in zip(df["image_id"], cells, classes, scores):
        out.setdefault(_key(image_id, cell_id), {})[cid] = score
    return out


def _score(value) -> float:
    """A mean score in 1..5; ValueError otherwise."""
    score = float(value)
    if not 1.0 <= score <= 5.0:
        raise ValueError(value)
    return score


def score_to_soft(score: float, mapping: Mapping[int, float]) -> float:
    """A (mean) score through ``{score: soft label}``, linear between integer scores.

    >>> score_to_soft(4, {1: 0.0, 2: 0.4, 3: 0.5, 4: 0.85, 5: 1.0}), score_to_soft(2.5, {1: 0.0, 2: 0.4, 3: 0.5, 4: 0.85, 5: 1.0})
    (0.85, 0.45)
    """
    keys = sorted(mapping)
    return round(float(np.interp(float(score), keys, [mapping[k] for k in keys])), 6)


@dataclass
class TargetSet:
    """Training targets of a cells table and what they came from.

    Attributes
    ----------
    targets : float32 array (N, 19)
    labels : bool array (N, 19)
        The cell's labels: image or pseudo labels, plus manually scored classes (the sampler's pools).
    manual : bool array (N, 19)
        Where a manual score set the target.
    source : str array (N,)
        ``"image"``, ``"pseudo"`` or ``"manual"``.
    relabelled : bool array (N, 19)
        Where a rule (manual score, class-6 antibody rule, pseudo label, unscored value) set the
        target; a plain image label is not relabelled.
    """

    targets: np.ndarray
    labels: np.ndarray
    manual: np.ndarray
    source: np.ndarray
    relabelled: np.ndarray


def _manual_values(key, config, soft_labels, scores) -> dict[int, float]:
    soft = config.soft
    if soft.default_map is not None and scores is not None and key in scores:
        return {c: score_to_soft(v, soft.class_maps.get(c, soft.default_map)) for c, v in scores[key].items()}
    return dict(soft_labels.get(key, {})) if soft_labels else {}


def read_antibody_marks(path: str | os.PathLike, keep_mark: int = 3) -> set[str]:
    """The images of flagged antibodies, for the class-6 rule (:class:`~.config.LabelRules`).

    The file is a CSV with columns ``image_id, antibody, mark``: one row per image with its antibody
    (the folder of the image in the public HPA ``kaggle_2021.tsv``; blank = the image is its own
    antibody), ``mark`` blank or an integer (the team's ``relabel/6.txt``). The latest mark of an
    image wins; a mark other than ``keep_mark`` (3) flags its antibody, and every image of a flagged
    antibody is returned.

    Raises
    ------
    FileNotFoundError, ValueError
        If the file is missing, lacks a column or has a mark that is not an integer.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"antibody marks file {path} not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("image_id", "antibody", "mark") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected image_id, antibody, mark")
    antibody, latest = {}, {}
    for image_id, ab, mark in zip(df["image_id"], df["antibody"], df["mark"]):
        antibody[image_id] = ab.strip() or image_id
        if mark.strip():
            if not mark.strip().lstrip("-").isdigit():
                raise ValueError(f"{path}: mark {mark!r} of image {image_id} is not an integer")
            latest[image_id] = int(mark)
    flagged = {antibody[i] for i, m in latest.items() if m != keep_mark}
    return {i for i, ab in antibody.items() if ab in flagged}


@dataclass
class _CellLabels:
    """The labels and targets of one cell while the rules run (a row of :class:`TargetSet`)."""

    own: set
    targets: np.ndarray
    manual: np.ndarray
    relabelled: np.ndarray


def _pseudo_rules(cell: _CellLabels, kept: set, config, scope) -> set:
    """Apply the pseudo positives and the early negatives; return the late negatives (classes)."""
    before, after, positive = scope
    dropped = cell.own - kept
    if config.pseudo_negative is None:  # the pseudo labels replace the image labels
        cell.targets[sorted(dropped)] = 0.0
        cell.relabelled[sorted(dropped)] = False
        cell.targets[sorted(kept - cell.own)] = 1.0
        cell.own = set(kept)
        return set()
    added = sorted((kept - cell.own) & positive)
    cell.targets[added] = config.pseudo_positive
    cell.relabelled[added] = True
    cell.own |= set(added)
    early = sorted(dropped & before)
    cell.targets[early] = config.pseudo_negative
    cell.relabelled[early] = True
    return dropped & after


def _manual_rules(cell: _CellLabels, values: dict) -> None:
    """The manual soft labels: they set their classes and add them to the labels."""
    cell.own |= set(values)
    for c, v in values.items():
        cell.targets[c] = v
        cell.manual[c] = cell.relabelled[c] = True


def _exclusive_rule(cell: _CellLabels, soft, scored: set) -> None:
    """The mitotic-spindle rule, last as the team's ``relabel_eleven``: 11 becomes the only label.

    Their target vector is 1 on the labels, then every soft value the earlier steps set (pseudo
    0.01/0.99, class 6's 0.51/1.0, manual scores, 0.69): so the cell keeps those, and a plain
    image label other than 11 drops to 0, except ``soft.exclusive_keeps`` classes that the file
    scores (the team's 0.69, reset to 1.0 by their class-12 sampler).
    """
    keep = cell.relabelled.copy()
    for c in soft.exclusive_keeps:
        keep[c] |= c in cell.own and c in scored
    cell.targets[~keep] = 0.0
    cell.own = {soft.exclusive_class}


def _late_negatives(cell: _CellLabels, late: set, value: float) -> None:
    late = sorted(late & cell.own)
    cell.targets[late] = value
    cell.manual[late] = False
    cell.relabelled[late] = True


def recipe_targets(table, config, soft_labels=None, scores=None, pseudo_labels=None, marked=None) -> TargetSet:
    """Per-cell targets under a training recipe (:class:`~.config.TrainConfig`), in the team's order.

    1. The image labels are 1. ``config.labels.antibody_class`` (6): its labelled cells get 0.51
       in the images of ``marked`` (:func:`read_antibody_marks`), else 1.0.
    2. Pseudo labels. ``config.pseudo_negative`` None: they replace the image labels. Otherwise an
       added label of the scope's positive classes gets ``pseudo_positive`` (0.99), and a dropped
       label of its early classes is kept with target ``pseudo_negative`` (0.01)
       (``config.labels.pseudo_scope``: every class, or the team's lists).
    3. Manual scores (``scores``, mapped with ``config.soft``'s maps) or, without maps, the export's
       ``soft_labels`` set their classes and add them to the labels.
    4. The late pseudo-negatives (the team's 1, 6, 12) set 0.01 and override a manual score; with
       ``config.labels.pseudo_overrides_manual`` False they come before step 3.
    5. ``config.soft.unscored_value``: a labelled cell of ``unscored_classes`` (1, 8, 9, 15)
       without a manual score for the class gets it (0.69) where its target is >= 0.5 and the file
       scores that class.
    6. ``config.soft.exclusive_min``: a manual mitotic-spindle value at or above it makes 11 the
       only label; the cell keeps the targets steps 1-5 set and its other plain image labels go
       to 0 (the team's ``relabel_eleven``, run last; see ``soft.exclusive_keeps``).

    ``TargetSet.relabelled`` marks the targets a rule set (steps 1-6, not a plain image label): the
    team's "soft label from any source".
    """
    soft_labels, scores, pseudo_labels, marked = soft_labels or {}, scores, pseudo_labels or {}, marked or set()
    soft, rules = config.soft, config.labels
    scope = rules.pseudo_classes()
    scored = {c for d in (scores if scores is not None and soft.default_map is not None else soft_labels).values() for c in d}
    n = len(table)
    out = TargetSet(np.zeros((n, NUM_CLASSES), np.float32), np.zeros((n, NUM_CLASSES), bool), np.zeros((n, NUM_CLASSES), bool),
                    np.full(n, "image", dtype=object), np.zeros((n, NUM_CLASSES), bool))
    for i, (image_id, cell_id, image_labels) in enumerate(zip(table["image_id"], table["cell_id"], table["label_ids"])):
        key = _key(image_id, cell_id)
        cell = _CellLabels(set(image_labels), out.targets[i], out.manual[i], out.relabelled[i])
        cell.targets[sorted(cell.own)] = 1.0
        ac = rules.antibody_class
        if ac is not None and ac in cell.own:
            cell.targets[ac] = rules.antibody_values[0] if str(image_id) in marked else rules.antibody_values[1]
            cell.relabelled[ac] = True
        late = set()
        if key in pseudo_labels:
            out.source[i] = "pseudo"
            late = _pseudo_rules(cell, set(pseudo_labels[key]), config, scope)
            if not rules.pseudo_overrides_manual:
                _late_negatives(cell, late, config.pseudo_negative)
                late = set()
        values = _manual_values(key, config, soft_labels, scores)
        if values:
            out.source[i] = "manual"
            _manual_rules(cell, values)
        if late:
            _late_negatives(cell, late, config.pseudo_negative)
        if soft.unscored_value is not None:
            for c in soft.unscored_classes:
                if c in cell.own and not cell.manual[c] and c in scored and cell.targets[c] >= 0.5:
                    cell.targets[c] = soft.unscored_value
                    cell.relabelled[c] = True
        if soft.exclusive_min is not None and values.get(soft.exclusive_class, -1.0) >= soft.exclusive_min:
            _exclusive_rule(cell, soft, scored)
        out.labels[i, sorted(cell.own)] = True
    out.source = out.source.astype(str)
    return out


def train_filter(values: np.ndarray, label_sets, exempt_class: int = 11, min_value: float = 1.0) -> np.ndarray:
    """Keep mask of the team's train filter: cleaner value >= ``min_value``, or the image has ``exempt_class``.

    >>> train_filter(np.array([1.0, 0.5, 0.5]), [(0,), (0,), (0, 11)]).tolist()
    [True, False, True]
    """
    values = np.asarray(values, dtype=float)
    if len(values) != len(label_sets):
        raise ValueError(f"values ({len(values)}) and label_sets ({len(label_sets)}) differ in length")
    exempt = np.array([exempt_class in set(ls) for ls in label_sets], dtype=bool)
    return (values >= min_value) | exempt


#: The ``cells.csv`` column of each training crop style (``TrainConfig.train_crop``).
CROP_COLUMNS: dict[str, str] = {"kit2025": "crop", "milimed2021": "train_crop"}


def use_crops(table, path: str | os.PathLike, column: str = "crop"):
    """The rows of ``table`` with a crop in ``column``, with ``crop_path`` pointing at it.

    ``column`` is ``crop`` (the kit's crops) or ``train_crop`` (the team's training crops).
    Rows without that crop are dropped (logged). A table without the column (written before
    ``train_crop`` existed) falls back to ``crop``, with a warning.

    Raises
    ------
    ValueError
        If no row has that crop (naming the file).
    """
    path = Path(path)
    if column not in table.columns:
        logger.warning("%s has no %r column (rebuild it with `hpa-kernel cells` for those crops): using 'crop'", path, column)
        column = "crop"
    crops = table[column].fillna("").astype(str).str.strip()
    has_crop = (crops != "").to_numpy()
    if not has_crop.all():
        logger.info("%s: %d of %d cells have no %r crop and are left out", path, int((~has_crop).sum()), len(table), column)
    table = table[has_crop].reset_index(drop=True)
    if table.empty:
        raise ValueError(f"{path}: no cell has a {column!r} crop")
    table["crop_path"] = [str((path.parent / c).resolve()) for c in crops[has_crop]]
    return table


def filter_cells(path: str | os.PathLike, column: str = "penalty", exempt_class: int = 11, crop_column: str = "crop"):
    """Read ``cells.csv`` for a recipe with the train filter: :func:`train_filter` on ``column``.

    ``column`` is ``train_value`` for the team's training cleaner (milimed2021) or ``penalty``
    (the kit's cell value). Without that column the ``valid`` flag stands in for ``value >= 1``
    (with the same exemption). Rows without a crop in ``crop_column`` are dropped (logged), and
    ``crop_path`` points at that crop (:func:`use_crops`).
    """
    table = read_cells_table(path, valid_only=False)
    if column in table.columns:
        values = np.asarray(parse_column(table[column], float, path=path, column=column, expected="a number"), dtype=float)
    else:
        logger.warning("%s has no %r column: the train filter uses the valid flag instead", path, column)
        values = table["valid"].to_numpy(dtype=float)
    keep = train_filter(values, table["label_ids"].tolist(), exempt_class)
    exempt = int((keep & (values < 1.0)).sum())
    kept = use_crops(table[keep].reset_index(drop=True), path, crop_column) if keep.any() else table[keep]
    logger.info("train filter on %r: %d of %d cells kept (%d exempt as class %d images), %d with a %r crop", column,
                int(keep.sum()), len(table), exempt, exempt_class, len(kept), crop_column)
    if kept.empty:
        raise ValueError(f"{path}: the train filter keeps no cell with a crop")
    return kept


class CellDataset:
    """A map-style dataset of (crop, target): uint8 tensor (4, S, S) and float32 tensor (19,).

    A 16-bit crop (the team's training crops) becomes float32 in [0, 1]
    (:func:`~hpa_kernel.cells.crops.unit_scale`, x / 65535) before it is augmented and comes out
    as a float32 tensor; a uint8 crop is augmented and returned as uint8, and the training loop
    scales it by 1/255.

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
        """The resized, un-augmented crop (input_size, input_size, 4), uint8 or uint16 as stored."""
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

        from hpa_kernel.cells.crops import unit_scale

        crop = self.load(int(index))
        if crop.dtype == np.uint16:  # 16-bit crops (the team's): float32 in [0, 1] before augmenting, as their
            crop = unit_scale(crop)  # torchvision transforms ran on float tensors (no rounding to 1/65535)
        if self.augment is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            crop = self.augment(crop, rng)
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        return x, torch.from_numpy(self.targets[index])

"""Per-cell scores that flag doubtful cells: a nucleus cut by the image border, and outliers.

Nucleus cut by the border (``nucleus_cut``)
    The fraction of the nucleus's area estimated to lie outside the image. Nuclei are roughly
    elliptical, so an ellipse is fitted (least squares, ``cv2.fitEllipse``) to the part of the
    nucleus's outline that is *not* on the image border, and the fraction of that ellipse's area
    outside the image is the estimate. When the free outline is too short for a stable fit, or the
    fit is implausible (it does not cover the visible nucleus, or is far larger than it), a circle
    is fitted instead from the chord along the border (length ``c``) and the depth perpendicular
    to it (``d``): ``r = ((c / 2)^2 + d^2) / (2 d)``, and the circular segment beyond the border
    gives the fraction. A nucleus that touches the border is never given less than that circle
    estimate capped at 0.05, so every touching nucleus has a cut > 0. A nucleus that does not touch the border has ``nucleus_cut = 0``; a cell
    without any nucleus pixel has 1 if the cell touches the border (its nucleus is outside) and 0
    otherwise.

Outlier segmentation (``outlier_score``)
    Debris, merged or broken segments differ from the image's real cells in their staining and
    size. For each feature of ``CellConfig.outlier_features`` (default the mean red intensity, the
    mean of blue x yellow, the mean yellow and the area, all on a log scale) the robust z-score
    ``(x - median) / (1.4826 MAD)`` is taken against the image's *other* cells (leave-one-out),
    and, when a dataset reference is given, against the dataset's median and MAD (the larger
    counts). ``outlier_score`` is the ``outlier_votes``-th largest absolute z over the features
    (default the 2nd: the cell must be odd in two features at once).

The table flags and the confidence multiplier:
    ``border = nucleus_cut > max_train_cut``, ``outlier = outlier_score > outlier_threshold``,
    ``valid = not (border or outlier)`` (what training keeps), and
    ``penalty = clip(1 - cut_penalty * nucleus_cut, min_penalty, 1) * (outlier_penalty if outlier)``
    (the ``kit2025`` recipe's cell value).

The 4th-place team's cleaners (the ``milimed2021`` recipe, :mod:`hpa_kernel.recipe`)
    The table also carries what they need, so that every recipe runs from the same table:
    ``nucleus_blue_sum`` (blue summed over the nucleus ``nuclei_label == cell_id``), the shape of
    that nucleus's own bounding box (``nucleus_rows``, ``nucleus_cols``) and the pixel counts of
    its first/last row (``nucleus_top``, ``nucleus_bottom``) and first/last column
    (``nucleus_left``, ``nucleus_right``), and the per-cell channel sums ``red_sum``, ``blue_sum``,
    ``yellow_sum`` (intensities scaled to [0, 1]). :func:`milimed_border_values` and
    :func:`milimed_outlier_values` turn them into the cell value ``v``; both are per image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hpa_kernel.cells.config import CellConfig
from hpa_kernel.cells.crops import cell_boxes

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "OutlierReference",
    "nucleus_cut_fraction",
    "cell_statistics",
    "outlier_scores",
    "score_cells",
    "apply_flags",
    "flat_edge_multiplier",
    "flat_edge_ratios",
    "milimed_border_values",
    "milimed_outlier_values",
    "train_edge_multiplier",
    "milimed_train_values",
    "TABLE_COLUMNS",
    "MILIMED_COLUMNS",
]

logger = logging.getLogger(__name__)

#: Columns of the per-cell table, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "y0",
    "x0",
    "y1",
    "x1",
    "area",
    "nucleus_area",
    "touches_border",
    "nucleus_cut",
    "red_mean",
    "green_mean",
    "blue_mean",
    "yellow_mean",
    "by_mean",
    "image_outlier_score",
    "outlier_score",
    "border",
    "outlier",
    "valid",
    "penalty",
    "nucleus_blue_sum",
    "nucleus_rows",
    "nucleus_cols",
    "nucleus_top",
    "nucleus_bottom",
    "nucleus_left",
    "nucleus_right",
    "red_sum",
    "blue_sum",
    "yellow_sum",
)
#: The columns the team's cleaners read (the last ones of :data:`TABLE_COLUMNS`).
MILIMED_COLUMNS: tuple[str, ...] = TABLE_COLUMNS[TABLE_COLUMNS.index("nucleus_blue_sum"):]
_INT_COLUMNS = ("nucleus_rows", "nucleus_cols", "nucleus_top", "nucleus_bottom", "nucleus_left", "nucleus_right")

_MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation
_LOG_EPS = 1e-4
_CUT_FLOOR_CAP = 0.05
_INTENSITY_FEATURES = ("red_mean", "green_mean", "blue_mean", "yellow_mean", "by_mean")


@dataclass(frozen=True)
class OutlierReference:
    """Dataset-level median and scaled MAD of the (log-scaled) outlier features.

    Build it with :meth:`from_table` over many images' cell tables; pass it to
    :func:`score_cells` (or the pipeline) to compare every cell with the whole dataset.
    """

    median: dict[str, float] = field(default_factory=dict)
    mad: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pd.DataFrame, features) -> OutlierReference:
        """Median and scaled MAD of each feature over the rows of ``table`` (a DataFrame)."""
        missing = [f for f in features if f not in table.columns]
        if missing:
            raise ValueError(f"table lacks the feature column(s) {', '.join(missing)}")
        if len(table) == 0:
            raise ValueError("table is empty: a reference needs at least one cell")
        median, mad = {}, {}
        for f in features:
            values = _feature_values(table[f].to_numpy(dtype=np.float64), f)
            med = float(np.median(values))
            median[f] = med
            mad[f] = float(_MAD_SCALE * np.median(np.abs(values - med)))
        return cls(median=median, mad=mad)

    def to_dict(self) -> dict:
        return {"median": dict(self.median), "mad": dict(self.mad)}


def _feature_values(values: np.ndarray, feature: str) -> np.ndarray:
    """Features on the scale they are compared on: log for intensities and area."""
    return np.log(np.maximum(values, 0.0) + (_LOG_EPS if feature in _INTENSITY_FEATURES else 1.0))


def _ellipse_outside_fraction(center, axes, angle_deg, height: int, width: int, samples: int = 160) -> float:
    """Fraction of an ellipse's area outside the pixel rectangle [-0.5, H-0.5] x [-0.5, W-0.5]."""
    (cx, cy), (d1, d2) = center, axes
    a, b = d1 / 2.0, d2 / 2.0
    # Sample the ellipse uniformly in its own frame: a polar grid would be biased, so use a
    # regular grid over [-1, 1]^2 kept inside the unit disc, then map to the image.
    u = (np.arange(samples) + 0.5) / samples * 2.0 - 1.0
    uu, vv = np.meshgrid(u, u)
    keep = uu**2 + vv**2 <= 1.0
    uu, vv = uu[keep] * a, vv[keep] * b
    t = math.radians(angle_deg)
    x = cx + uu * math.cos(t) - vv * math.sin(t)
    y = cy + uu * math.sin(t) + vv * math.cos(t)
    outside = (x < -0.5) | (x > width - 0.5) | (y < -0.5) | (y > height - 0.5)
    return float(outside.mean())


def _circle_cut(chord: float, depth: float) -> float:
    """Fraction of a circle outside a line, from its chord on the line and its depth inside."""
    if depth <= 0 or chord <= 0:
        return 0.0
    r = ((chord / 2.0) ** 2 + depth**2) / (2.0 * depth)
    h = depth - r  # signed distance of the centre from the line, positive inside
    h = max(-r, min(r, h))
    outside = r * r * math.acos(h / r) - h * math.sqrt(max(r * r - h * h, 0.0))
    return float(outside / (math.pi * r * r))


def nucleus_cut_fraction(nucleus: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> float:
    """Estimated fraction of a nucleus that lies outside the image.

    Parameters
    ----------
    nucleus : ndarray of bool, shape (h, w)
        The nucleus's mask within its bounding box (or any window containing it). Several
        connected parts (a binucleate cell) are estimated part by part: the estimated missing area
        of each part touching the border is added up.
    offset : (int, int)
        Image coordinates (row, column) of ``nucleus[0, 0]``.
    shape : (int, int)
        The image's (H, W).

    Returns
    -------
    float
        In [0, 1]; 0 if the nucleus does not touch the image border. See the module docstring.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:200, 0:200]
    >>> disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 70**2
    >>> nucleus_cut_fraction(disc, (0, 0), (200, 200))
    0.0
    >>> round(nucleus_cut_fraction(disc[100:], (0, 0), (100, 200)), 1)  # lower half only: half is cut
    0.5
    """
    from scipy import ndimage as ndi

    nucleus = np.asarray(nucleus, dtype=bool)
    parts, n = ndi.label(nucleus)
    if n <= 1:
        return _part_cut_fraction(nucleus, offset, shape)
    visible = missing = 0.0
    for index, slices in enumerate(ndi.find_objects(parts), start=1):
        part = parts[slices] == index
        area = float(part.sum())
        cut = _part_cut_fraction(part, (offset[0] + slices[0].start, offset[1] + slices[1].start), shape)
        visible += area
        missing += area * cut / (1.0 - cut) if cut < 1.0 else area * 1e6
    return float(min(missing / (visible + missing), 1.0))


def _part_cut_fraction(nucleus: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> float:
    """The estimate of :func:`nucleus_cut_fraction` for one connected nucleus."""
    from hpa_kernel._cv2 import cv2

    nucleus = np.asarray(nucleus, dtype=bool)
    height, width = shape
    oy, ox = offset
    rows, cols = np.nonzero(nucleus)
    if rows.size == 0:
        return 0.0
    rows = rows + oy
    cols = cols + ox
    sides = {
        "top": rows.min() == 0,
        "left": cols.min() == 0,
        "bottom": rows.max() == height - 1,
        "right": cols.max() == width - 1,
    }
    if not any(sides.values()):
        return 0.0
    area = rows.size
    padded = np.pad(nucleus, 1).astype(np.uint8)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    px = points[:, 0] - 1 + ox
    py = points[:, 1] - 1 + oy
    free = ~((px <= 0) | (py <= 0) | (px >= width - 1) | (py >= height - 1))
    estimate = None
    if free.sum() >= 8:
        (cx, cy), (d1, d2), angle = cv2.fitEllipse(np.stack([px[free], py[free]], axis=1).astype(np.float32))
        ellipse_area = math.pi * d1 * d2 / 4.0
        plausible = (
            np.isfinite([cx, cy, d1, d2]).all()
            and min(d1, d2) > 1.0
            and 0.8 * area <= ellipse_area <= 20.0 * area
        )
        if plausible:
            estimate = _ellipse_outside_fraction((cx, cy), (d1, d2), angle, height, width)
    # Circle from the chord and depth along the side with the longest chord.
    chords = {
        "top": ((rows == 0).sum(), rows.max() + 1),
        "bottom": ((rows == height - 1).sum(), height - rows.min()),
        "left": ((cols == 0).sum(), cols.max() + 1),
        "right": ((cols == width - 1).sum(), width - cols.min()),
    }
    side = max((s for s, on in sides.items() if on), key=lambda s: chords[s][0])
    circle = _circle_cut(float(chords[side][0]), float(chords[side][1]))
    if estimate is None:
        estimate = circle
    else:
        # A nucleus that touches the border is cut by at least a sliver, even where the ellipse
        # fitted to its free outline closes just inside the image.
        estimate = max(estimate, min(circle, _CUT_FLOOR_CAP))
    return float(min(max(estimate, 0.0), 1.0))


def cell_statistics(image: np.ndarray, nuclei_label: np.ndarray, cell_label: np.ndarray) -> pd.DataFrame:
    """The geometry, nucleus cut and mean intensities of each cell (a DataFrame, one row per cell).

    Intensities are means over the cell's pixels of the channels scaled to [0, 1] (uint8 / 255,
    uint16 / 65535); ``by_mean`` is the mean of blue x yellow. The nucleus of cell k is
    ``nuclei_label == k`` inside the cell; if there is none there, the most frequent non-zero
    nucleus label inside the cell is used.
    """
    import pandas as pd
    from scipy import ndimage as ndi

    height, width = cell_label.shape
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}[image.dtype]
    boxes = cell_boxes(cell_label)
    nucleus_boxes = ndi.find_objects(np.asarray(nuclei_label)) if nuclei_label.size and nuclei_label.max() > 0 else []
    rows = []
    for cell_id, (y0, x0, y1, x1) in sorted(boxes.items()):
        cell = cell_label[y0:y1, x0:x1] == cell_id
        pixels = image[y0:y1, x0:x1][cell]  # (area, 4)
        nuclei = nuclei_label[y0:y1, x0:x1]
        nucleus = cell & (nuclei == cell_id)
        if not nucleus.any():
            inside = nuclei[cell]
            inside = inside[inside > 0]
            if inside.size:
                nucleus = cell & (nuclei == np.bincount(inside.astype(np.int64)).argmax())
        touches = y0 == 0 or x0 == 0 or y1 == height or x1 == width
        nucleus_area = int(nucleus.sum())
        if nucleus_area:
            cut = nucleus_cut_fraction(nucleus, (y0, x0), (height, width))
        else:
            cut = 1.0 if touches else 0.0
        row = {
            "cell_id": int(cell_id),
            "y0": int(y0),
            "x0": int(x0),
            "y1": int(y1),
            "x1": int(x1),
            "area": int(pixels.shape[0]),
            "nucleus_area": nucleus_area,
            "touches_border": bool(touches),
            "nucleus_cut": cut,
        }
        means = pixels.sum(axis=0, dtype=np.float64) / (pixels.shape[0] * scale)
        for k, name in enumerate(("red_mean", "green_mean", "blue_mean", "yellow_mean")):
            row[name] = float(means[k])
        blue_yellow = pixels[:, 2].astype(np.float64) * pixels[:, 3]
        row["by_mean"] = float(blue_yellow.mean() / (scale * scale))
        sums = pixels.sum(axis=0, dtype=np.float64) / scale
        row.update(red_sum=float(sums[0]), blue_sum=float(sums[2]), yellow_sum=float(sums[3]))
        row.update(_nucleus_box_features(image, nuclei_label, nucleus_boxes, int(cell_id), scale))
        rows.append(row)
    columns = list(TABLE_COLUMNS[: TABLE_COLUMNS.index("by_mean") + 1]) + list(MILIMED_COLUMNS)
    table = pd.DataFrame(rows, columns=columns)
    ints = ("cell_id", "y0", "x0", "y1", "x1", "area", "nucleus_area", *_INT_COLUMNS)
    return table.astype({c: "int64" for c in ints}).astype(
        {"touches_border": bool, "nucleus_cut": "float64", "nucleus_blue_sum": "float64"}
    )


def _nucleus_box_features(image: np.ndarray, nuclei_label: np.ndarray, boxes: list, cell_id: int, scale: float) -> dict:
    """The team's nucleus features of cell ``cell_id``: nucleus ``nuclei_label == cell_id`` over the image.

    Its blue sum (in [0, 1] units) and, on its own bounding box (binary), the box's rows and
    columns and the pixel counts of the first/last row and column. All 0 without a nucleus.
    """
    sl = boxes[cell_id - 1] if 0 < cell_id <= len(boxes) else None
    if sl is None:
        return {"nucleus_blue_sum": 0.0, **dict.fromkeys(_INT_COLUMNS, 0)}
    nucleus = nuclei_label[sl] == cell_id
    return {
        "nucleus_blue_sum": float(image[sl][..., 2][nucleus].sum(dtype=np.float64) / scale),
        "nucleus_rows": int(nucleus.shape[0]),
        "nucleus_cols": int(nucleus.shape[1]),
        "nucleus_top": int(nucleus[0].sum()),
        "nucleus_bottom": int(nucleus[-1].sum()),
        "nucleus_left": int(nucleus[:, 0].sum()),
        "nucleus_right": int(nucleus[:, -1].sum()),
    }


def outlier_scores(table: pd.DataFrame, config: CellConfig, reference: OutlierReference | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image-level and combined outlier scores of the cells of one image.

    For each feature, the absolute leave-one-out robust z against the image's other cells (0 when
    there are fewer than ``outlier_min_cells`` others) and, with ``reference``, the larger of that
    and the z against the dataset. The score of a cell is the ``outlier_votes``-th largest of
    these over the features.

    Returns
    -------
    image_score, score : ndarray
        Without and with the reference (equal when ``reference`` is None).
    """
    n = len(table)
    features = config.outlier_features
    z_image = np.zeros((n, len(features)))
    z_all = np.zeros((n, len(features)))
    for j, f in enumerate(features):
        values = _feature_values(table[f].to_numpy(dtype=np.float64), f)
        if n - 1 >= config.outlier_min_cells:
            for i in range(n):
                others = np.delete(values, i)
                med = np.median(others)
                mad = max(_MAD_SCALE * np.median(np.abs(others - med)), config.mad_floor)
                z_image[i, j] = abs(values[i] - med) / mad
        z_all[:, j] = z_image[:, j]
        if reference is not None:
            if f not in reference.median or f not in reference.mad:
                raise ValueError(f"the outlier reference has no statistics for feature {f!r}")
            mad = max(reference.mad[f], config.mad_floor)
            z_all[:, j] = np.maximum(z_all[:, j], np.abs(values - reference.median[f]) / mad)
    k = config.outlier_votes
    if n == 0:
        return np.zeros(0), np.zeros(0)
    return np.sort(z_image, axis=1)[:, -k], np.sort(z_all, axis=1)[:, -k]


def apply_flags(table: pd.DataFrame, config: CellConfig) -> pd.DataFrame:
    """Set ``border``, ``outlier``, ``valid`` and ``penalty`` from ``nucleus_cut`` and ``outlier_score``."""
    cut = table["nucleus_cut"].to_numpy(dtype=np.float64)
    border = cut > config.max_train_cut
    outlier = table["outlier_score"].to_numpy(dtype=np.float64) > config.outlier_threshold
    penalty = ellipse_border_values(cut, config.cut_penalty, config.min_penalty)
    penalty = np.where(outlier, penalty * config.outlier_penalty, penalty)
    table["border"] = border
    table["outlier"] = outlier
    table["valid"] = ~(border | outlier)
    table["penalty"] = penalty
    return table


def flat_edge_multiplier(ratio):
    """The team's multiplier of a flat-edge ratio r: 1 if r > 0.3, (3.33 r)^0.1 if r > 0.01, else 0.001.

    Works elementwise on arrays.

    >>> [round(float(flat_edge_multiplier(r)), 4) for r in (0.5, 0.2, 0.005)]
    [1.0, 0.9602, 0.001]
    """
    r = np.asarray(ratio, dtype=np.float64)
    mid = np.power(np.maximum(r, 0.0) * 3.33, 0.1)
    out = np.where(r > 0.3, 1.0, np.where(r > 0.01, mid, 0.001))
    return float(out) if out.ndim == 0 else out


def flat_edge_ratios(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``ud_ratio`` and ``lr_ratio`` of each cell's nucleus box (the team's names).

    ``ud_ratio = (cols - max(top, bottom)) / cols``: the part of the box's width that its first and
    last rows leave free; ``lr_ratio = (rows - max(left, right)) / rows`` likewise for the height.
    A nucleus cut straight by the top border fills its first row, so its ``ud_ratio`` is near 0.
    Cells without a nucleus get 0 and 0.
    """
    rows = table["nucleus_rows"].to_numpy(dtype=np.float64)
    cols = table["nucleus_cols"].to_numpy(dtype=np.float64)
    top_bottom = np.maximum(table["nucleus_top"].to_numpy(np.float64), table["nucleus_bottom"].to_numpy(np.float64))
    left_right = np.maximum(table["nucleus_left"].to_numpy(np.float64), table["nucleus_right"].to_numpy(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        ud = np.where(cols > 0, (cols - top_bottom) / np.maximum(cols, 1.0), 0.0)
        lr = np.where(rows > 0, (rows - left_right) / np.maximum(rows, 1.0), 0.0)
    return ud, lr


def ellipse_border_values(nucleus_cut: np.ndarray, slope: float, floor: float) -> np.ndarray:
    """The kit's border penalty from the ellipse estimate of the nucleus cut: ``clip(1 - slope * cut, floor, 1)``.

    >>> ellipse_border_values(np.array([0.0, 0.5, 1.0]), 1.0, 0.05).tolist()
    [1.0, 0.5, 0.05]
    """
    return np.clip(1.0 - slope * np.asarray(nucleus_cut, dtype=np.float64), floor, 1.0)


def milimed_border_values(table: pd.DataFrame, no_nucleus_factor: float = 0.01) -> np.ndarray:
    """The team's border cleaner: per cell, ``no_nucleus_factor`` if its nucleus has no blue, else
    ``m(ud_ratio) * m(lr_ratio)`` (:func:`flat_edge_ratios`, :func:`flat_edge_multiplier`).

    Note that the ratios look at the nucleus's box only, not at the image border: any nucleus
    with a straight edge along its box is down-weighted, as in the team's code.
    """
    ud, lr = flat_edge_ratios(table)
    values = flat_edge_multiplier(ud) * flat_edge_multiplier(lr)
    no_blue = table["nucleus_blue_sum"].to_numpy(dtype=np.float64) <= 0
    return np.where(no_blue, no_nucleus_factor, np.asarray(values, dtype=np.float64))


def milimed_outlier_values(
    table: pd.DataFrame,
    values: np.ndarray,
    candidate_min: float = 0.01,
    red_ratio: float = 0.077,
    by_ratio: float = 0.05,
    factor: float = 0.001,
) -> np.ndarray:
    """The team's outlier cleaner on one image's cells: ``values`` with outliers multiplied by ``factor``.

    The candidates are the cells whose value is > ``candidate_min``. With the means over the
    candidates of ``red_sum`` and of ``blue_sum * yellow_sum``, a candidate is an outlier if its
    ``red_sum < red_ratio * mean`` or its ``blue_sum * yellow_sum < by_ratio * mean``. Without a
    candidate nothing changes.
    """
    values = np.asarray(values, dtype=np.float64)
    candidates = values > candidate_min
    if not candidates.any():
        return values.copy()
    red = table["red_sum"].to_numpy(dtype=np.float64)
    by = table["blue_sum"].to_numpy(dtype=np.float64) * table["yellow_sum"].to_numpy(dtype=np.float64)
    outlier = candidates & ((red < red_ratio * red[candidates].mean()) | (by < by_ratio * by[candidates].mean()))
    return np.where(outlier, values * factor, values)


def train_edge_multiplier(ratio):
    """The team's training-cleaner multiplier of a flat-edge ratio r: 1 if r > 0.2, else 0.001.

    ``code/train_cleaner.py`` of their repository (the inference cleaner,
    :func:`flat_edge_multiplier`, is graded instead). Works elementwise.

    >>> train_edge_multiplier(np.array([0.5, 0.2, 0.21])).tolist()
    [1.0, 0.001, 1.0]
    """
    r = np.asarray(ratio, dtype=np.float64)
    out = np.where(r > 0.2, 1.0, 0.001)
    return float(out) if out.ndim == 0 else out


def milimed_train_values(table: pd.DataFrame) -> np.ndarray:
    """The team's training cleaner value of each cell of ONE image (the ``train_value`` column).

    Per cell: 0.01 if its nucleus has no blue (``nucleus_blue_sum`` 0, which includes a cell
    without a nucleus), else ``m(ud_ratio) * m(lr_ratio)`` with :func:`train_edge_multiplier` on
    :func:`flat_edge_ratios`; then the outlier rule of :func:`milimed_outlier_values` (candidates
    > 0.01, red sum < 0.077 x mean or blue x yellow sums < 0.05 x mean -> x0.001). The team's
    train filter keeps a cell iff this value is 1 (or its image is labelled mitotic spindle).
    """
    if len(table) == 0:
        return np.zeros(0)
    ud, lr = flat_edge_ratios(table)
    values = np.asarray(train_edge_multiplier(ud) * train_edge_multiplier(lr), dtype=np.float64)
    no_blue = table["nucleus_blue_sum"].to_numpy(dtype=np.float64) <= 0
    values = np.where(no_blue, 0.01, values)
    return milimed_outlier_values(table, values)


def score_cells(
    image: np.ndarray,
    nuclei_label: np.ndarray,
    cell_label: np.ndarray,
    config: CellConfig | None = None,
    reference: OutlierReference | None = None,
) -> pd.DataFrame:
    """The per-cell table of one image: statistics, both heuristics, flags and penalty.

    Parameters
    ----------
    image : ndarray, shape (H, W, 4)
        R, G, B, Y; uint8 or uint16.
    nuclei_label, cell_label : ndarray, shape (H, W)
        Integer label images; the same id means the same cell.
    config : CellConfig, optional
    reference : OutlierReference, optional
        Dataset-level statistics (training); None compares cells within the image only.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TABLE_COLUMNS`, one row per cell, ascending cell id.
    """
    config = CellConfig() if config is None else config
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"image must have shape (H, W, 4), got {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image dtype must be uint8 or uint16, got {image.dtype}")
    for name, label in (("nuclei_label", nuclei_label), ("cell_label", cell_label)):
        if label.shape != image.shape[:2]:
            raise ValueError(f"{name} must have shape {image.shape[:2]} like the image, got {label.shape}")
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"{name} must be an integer label image, got dtype {label.dtype}")
    table = cell_statistics(image, nuclei_label, cell_label)
    image_score, score = outlier_scores(table, config, reference)
    table["image_outlier_score"] = image_score
    table["outlier_score"] = score
    return apply_flags(table, config)[list(TABLE_COLUMNS)]

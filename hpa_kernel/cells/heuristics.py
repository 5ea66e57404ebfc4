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
    ``penalty = clip(1 - cut_penalty * nucleus_cut, min_penalty, 1) * (outlier_penalty if outlier)``.
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
    "TABLE_COLUMNS",
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
)

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

    height, width = cell_label.shape
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}[image.dtype]
    boxes = cell_boxes(cell_label)
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
        rows.append(row)
    columns = list(TABLE_COLUMNS[: TABLE_COLUMNS.index("by_mean") + 1])
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({c: "int64" for c in ("cell_id", "y0", "x0", "y1", "x1", "area", "nucleus_area")}).astype(
        {"touches_border": bool, "nucleus_cut": "float64"}
    )


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
    penalty = np.clip(1.0 - config.cut_penalty * cut, config.min_penalty, 1.0)
    penalty = np.where(outlier, penalty * config.outlier_penalty, penalty)
    table["border"] = border
    table["outlier"] = outlier
    table["valid"] = ~(border | outlier)
    table["penalty"] = penalty
    return table


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

"""A seeded generator of synthetic HPA fields and of a whole competition folder.

:func:`synthesize_image` draws one field of view: cells as wobbly ellipses that share borders
where they touch (a weighted Voronoi partition), each with a nucleus (blue), a fibrous
microtubule texture (red) and a reticular ER texture (yellow), and a green protein channel whose
pattern follows the cell's classes (nucleoli are bright dots inside the nucleus, the plasma
membrane a ring at the cell edge, and so on; see :data:`CLASS_FREQUENCIES`). Some cells are cut
by the image border, some have two nuclei, some are rounded mitotic cells with condensed
chromatin, and bright debris that is not a cell lies in the background.

:func:`make_competition` writes such images in the Kaggle layout (:class:`hpa_kernel.io.Competition`)
with the truth beside them, so that every stage of the pipeline can be run and scored offline.
Everything is a pure function of the seed: the same seed gives the same bytes.

Cell sizes scale with the image: a 2048 x 2048 field has about 15 to 35 cells like a real HPA
field, a 512 x 512 one about 5 to 12 smaller cells.
"""

from __future__ import annotations

import csv
import json
import logging
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hpa_kernel.classes import MITOTIC_SPINDLE, NEGATIVE, NUM_CLASSES, format_labels
from hpa_kernel.io import CHANNELS, Competition, list_image_ids, to_float, write_image

__all__ = [
    "CLASS_FREQUENCIES",
    "NUCLEAR_CLASSES",
    "SyntheticImage",
    "SyntheticOptions",
    "synthesize_image",
    "image_label",
    "make_competition",
    "CompetitionSpec",
    "COMPETITION_TEST_SIZES",
    "COMPETITION_NON_SQUARE",
    "competition_shapes",
    "render_composite",
    "write_npz",
]

logger = logging.getLogger(__name__)

#: Relative frequency of each class among image labels, roughly as in the HPA single-cell data:
#: nucleoplasm and cytosol common, mitotic spindle and aggresome rare.
CLASS_FREQUENCIES: tuple[float, ...] = (
    0.30,  # 0 nucleoplasm
    0.035,  # 1 nuclear membrane
    0.08,  # 2 nucleoli
    0.04,  # 3 nucleoli fibrillar center
    0.06,  # 4 nuclear speckles
    0.06,  # 5 nuclear bodies
    0.035,  # 6 endoplasmic reticulum
    0.06,  # 7 Golgi apparatus
    0.03,  # 8 intermediate filaments
    0.03,  # 9 actin filaments
    0.03,  # 10 microtubules
    0.01,  # 11 mitotic spindle
    0.04,  # 12 centrosome
    0.08,  # 13 plasma membrane
    0.07,  # 14 mitochondria
    0.01,  # 15 aggresome
    0.22,  # 16 cytosol
    0.08,  # 17 vesicles
    0.02,  # 18 negative
)

#: Classes whose pattern lies inside the nucleus (absent in mitotic cells, whose envelope is gone).
NUCLEAR_CLASSES: frozenset[int] = frozenset({0, 1, 2, 3, 4, 5})

_REFERENCE_SIDE = 2048.0  # cell sizes below are for a 2048 x 2048 field
_CELL_RADIUS = 175.0  # mean cell body radius at 2048
_SIZE_EXPONENT = 0.6  # radius ~ side ** 0.6: smaller fields have fewer, smaller cells
_COVERAGE = 0.55  # fraction of the field covered by cells, on average


# ----------------------------------------------------------------------------------------------
# result type


@dataclass
class SyntheticImage:
    """One synthetic field of view and its truth.

    Attributes
    ----------
    image : ndarray, shape (H, W, 4)
        R, G, B, Y; uint8 or uint16.
    cell_mask : ndarray of int32, shape (H, W)
        0 background, k = cell k (ids 1..n, consecutive).
    nuclei_mask : ndarray of int32, shape (H, W)
        The nuclei with their cell's id (both nuclei of a binucleate cell carry the same id;
        for a mitotic cell, the condensed chromatin).
    cell_labels : dict
        Cell id -> ascending tuple of class ids; ``(18,)`` for a negative cell.
    nucleus_cut : dict
        Cell id -> fraction of the cell's nucleus area that lies outside the image, in [0, 1].
    binucleate, mitotic : set of int
        Ids of the cells with two nuclei and of the rounded dividing cells.
    debris_mask : ndarray of int32, shape (H, W)
        0 elsewhere, j = debris object j. Debris is not a cell and is absent from the truth.
    debris : list of dict
        One entry per debris object: ``id``, ``y``, ``x`` (centre), ``radius``, ``channels``.
    image_labels : tuple of int
        The weak image label (:func:`image_label`): the union of the cells' protein classes, or
        ``(18,)`` when no cell shows protein.
    seed : int
    """

    image: np.ndarray
    cell_mask: np.ndarray
    nuclei_mask: np.ndarray
    cell_labels: dict[int, tuple[int, ...]]
    nucleus_cut: dict[int, float]
    binucleate: set[int]
    mitotic: set[int]
    debris_mask: np.ndarray
    debris: list[dict]
    image_labels: tuple[int, ...]
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def cell_ids(self) -> list[int]:
        return sorted(self.cell_labels)

    @property
    def border_cut(self) -> dict[int, float]:
        """Same as :attr:`nucleus_cut` (the name used in ``truth/{split}_cell_info.csv``)."""
        return self.nucleus_cut

    @property
    def debris_ids(self) -> list[int]:
        return [int(d["id"]) for d in self.debris]


# ----------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class _BlobStyle:
    """How a random :class:`_Blob` is drawn: elongation range, harmonic wobble and number of harmonics."""

    elongation: tuple[float, float] = (1.0, 1.5)
    wobble: float = 0.08
    orders: int = 4


@dataclass
class _Blob:
    """A wobbly ellipse: an ellipse whose radius is modulated by a few low harmonics."""

    cy: float
    cx: float
    a: float  # semi-axis along ``angle``
    b: float
    angle: float
    amp: np.ndarray  # harmonic amplitudes, orders 2..2+len-1
    phase: np.ndarray

    @classmethod
    def random(cls, rng, centre, radius, style: _BlobStyle = _BlobStyle(), angle=None):
        """A blob centred on ``centre`` = (cy, cx); a random angle unless ``angle`` is given."""
        cy, cx = centre
        e = rng.uniform(*style.elongation)
        a, b = radius * np.sqrt(e), radius / np.sqrt(e)
        orders = style.orders
        amp = rng.uniform(0.0, style.wobble, orders) / np.arange(1, orders + 1) ** 0.5
        return cls(
            float(cy),
            float(cx),
            float(a),
            float(b),
            float(rng.uniform(0, np.pi) if angle is None else angle),
            amp.astype(np.float32),
            rng.uniform(0, 2 * np.pi, orders).astype(np.float32),
        )

    @property
    def extent(self) -> float:
        return max(self.a, self.b) * (1.0 + float(np.sum(self.amp))) + 2.0

    def bbox(self, height: int, width: int, pad: float = 0.0, clip: bool = True) -> tuple[int, int, int, int]:
        r = self.extent + pad
        y0, y1 = int(np.floor(self.cy - r)), int(np.ceil(self.cy + r)) + 1
        x0, x1 = int(np.floor(self.cx - r)), int(np.ceil(self.cx + r)) + 1
        if clip:
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
        return y0, x0, y1, x1

    def distance(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Normalised distance (< 1 inside) on the pixel grid of the box ``[y0:y1, x0:x1]``."""
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(self.cy)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(self.cx)
        rho = np.sqrt(yy * yy + xx * xx)
        phi = np.arctan2(yy, xx) - np.float32(self.angle)
        c, s = np.cos(phi), np.sin(phi)
        radius = np.float32(self.a * self.b) / np.sqrt((self.b * c) ** 2 + (self.a * s) ** 2)
        mod = np.ones_like(phi)
        for j, (amp, ph) in enumerate(zip(self.amp, self.phase)):
            mod += amp * np.cos((j + 2) * phi + ph)
        return rho / (radius * mod)


@dataclass
class _Cell:
    body: _Blob
    nuclei: list[_Blob]
    kind: str  # "normal", "binucleate" or "mitotic"
    r_cell: float
    r_nuc: float
    labels: tuple[int, ...] = ()
    nucleus_cut: float = 0.0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)


def _scale(height: int, width: int) -> float:
    return (np.sqrt(height * width) / _REFERENCE_SIDE) ** _SIZE_EXPONENT


def _place_cells(rng, height, width, n_cells, r_mean) -> list[_Cell]:
    """Nucleus centres by dart throwing, biased towards colonies by a smooth density."""
    # smooth density on a coarse grid: cells grow in colonies with some empty space between
    grid = rng.uniform(0.1, 1.0, (4, 4)) ** 1.5
    r_nuc_mean = 0.42 * r_mean
    margin = 0.45 * r_nuc_mean  # centres up to this far outside: some nuclei are cut by the border
    min_dist = 1.3 * r_mean
    cells: list[_Cell] = []
    centres: list[tuple[float, float]] = []
    tries = 0
    while len(cells) < n_cells and tries < 60 * n_cells:
        tries += 1
        cy = rng.uniform(-margin, height + margin)
        cx = rng.uniform(-margin, width + margin)
        gy = int(np.clip(cy / height * 4, 0, 3))
        gx = int(np.clip(cx / width * 4, 0, 3))
        if rng.random() > grid[gy, gx]:
            continue
        if centres:
            c = np.asarray(centres)
            if np.min(np.hypot(c[:, 0] - cy, c[:, 1] - cx)) < min_dist:
                continue
        centres.append((cy, cx))
        cells.append(_new_cell(rng, cy, cx, r_mean))
    return cells


_CHROMATIN = _BlobStyle(wobble=0.25, orders=6)  # the ragged plates of a mitotic cell


def _new_cell(rng, cy, cx, r_mean) -> _Cell:
    u = rng.random()
    kind = "mitotic" if u < 0.06 else ("binucleate" if u < 0.14 else "normal")
    r_cell = r_mean * rng.uniform(0.8, 1.25)
    r_nuc = 0.42 * r_mean * rng.uniform(0.85, 1.15)
    if kind == "mitotic":
        r_cell = 0.62 * r_mean * rng.uniform(0.9, 1.1)
        body = _Blob.random(rng, (cy, cx), r_cell, _BlobStyle((1.0, 1.1), 0.03))
        axis = rng.uniform(0, np.pi)
        nuclei = []
        if rng.random() < 0.6:  # metaphase: one plate across the cell
            nuclei.append(_Blob.random(rng, (cy, cx), 0.0, _CHROMATIN, angle=axis))
            nuclei[-1].a, nuclei[-1].b = 0.55 * r_cell, 0.17 * r_cell
        else:  # anaphase: two plates moving apart
            for sgn in (-1, 1):
                dy, dx = -np.cos(axis) * 0.3 * r_cell * sgn, np.sin(axis) * 0.3 * r_cell * sgn
                nuclei.append(_Blob.random(rng, (cy + dy, cx + dx), 0.0, _CHROMATIN, angle=axis))
                nuclei[-1].a, nuclei[-1].b = 0.45 * r_cell, 0.13 * r_cell
        return _Cell(body, nuclei, kind, r_cell, 0.35 * r_cell)
    angle = rng.uniform(0, np.pi)
    off = rng.uniform(0, 0.2 * r_cell)
    ob = rng.uniform(0, 2 * np.pi)
    if kind == "binucleate":
        r_cell *= 1.2
        body = _Blob.random(rng, (cy + off * np.sin(ob), cx + off * np.cos(ob)), r_cell, _BlobStyle((1.5, 2.0), 0.1),
                            angle=angle)
        nuclei = []
        for sgn in (-1, 1):
            d = 0.8 * r_nuc * sgn
            nuclei.append(
                _Blob.random(rng, (cy + d * np.sin(angle), cx + d * np.cos(angle)), 0.75 * r_nuc,
                             _BlobStyle((1.0, 1.3), 0.05))
            )
        return _Cell(body, nuclei, kind, r_cell, 0.75 * r_nuc)
    elongation = (1.0, 1.6) if rng.random() < 0.7 else (1.8, 2.6)
    body = _Blob.random(rng, (cy + off * np.sin(ob), cx + off * np.cos(ob)), r_cell, _BlobStyle(elongation, 0.16),
                        angle=angle)
    nucleus = _Blob.random(rng, (cy, cx), r_nuc, _BlobStyle((1.0, 1.4), 0.05), angle=angle + rng.normal(0, 0.3))
    return _Cell(body, [nucleus], kind, r_cell, r_nuc)


def _rasterise(cells: list[_Cell], height: int, width: int):
    """Partition the field among the cells and draw the nuclei; drops cells left too small."""
    from scipy import ndimage

    best = np.full((height, width), np.inf, dtype=np.float32)
    cell_mask = np.zeros((height, width), dtype=np.int32)
    nuclei_mask = np.zeros((height, width), dtype=np.int32)
    for k, cell in enumerate(cells, start=1):
        y0, x0, y1, x1 = cell.body.bbox(height, width)
        if y1 <= y0 or x1 <= x0:
            continue
        d = cell.body.distance(y0, x0, y1, x1)
        if cell.kind == "mitotic":  # a rounded dividing cell keeps its disc; neighbours do not eat into it
            d = np.where(d < 1.0, d - 1.0, np.float32(np.inf))
        sb, sl = best[y0:y1, x0:x1], cell_mask[y0:y1, x0:x1]
        upd = (d < 1.0) & (d < sb)
        sb[upd] = d[upd]
        sl[upd] = k
    nucleus_total = {}
    for k, cell in enumerate(cells, start=1):
        total = 0
        for nuc in cell.nuclei:
            fy0, fx0, fy1, fx1 = nuc.bbox(height, width, clip=False)
            inside_full = nuc.distance(fy0, fx0, fy1, fx1) < 1.0
            total += int(inside_full.sum())
            y0, x0, y1, x1 = max(fy0, 0), max(fx0, 0), min(fy1, height), min(fx1, width)
            if y1 <= y0 or x1 <= x0:
                continue
            inside = inside_full[y0 - fy0 : y1 - fy0, x0 - fx0 : x1 - fx0]
            sn = nuclei_mask[y0:y1, x0:x1]
            upd = inside & (sn == 0)
            sn[upd] = k
            cell_mask[y0:y1, x0:x1][upd] = k
        nucleus_total[k] = max(total, 1)
    # keep each cell's pieces that hold its nucleus; drop cells with too little left in the field
    kept: list[_Cell] = []
    relabel = np.zeros(len(cells) + 1, dtype=np.int32)
    for k, cell in enumerate(cells, start=1):
        by0, bx0, by1, bx1 = cell.body.bbox(height, width)
        for nuc in cell.nuclei:
            ny0, nx0, ny1, nx1 = nuc.bbox(height, width)
            by0, bx0, by1, bx1 = min(by0, ny0), min(bx0, nx0), max(by1, ny1), max(bx1, nx1)
        if by1 <= by0 or bx1 <= bx0:
            continue
        sl = cell_mask[by0:by1, bx0:bx1]
        sn = nuclei_mask[by0:by1, bx0:bx1]
        own = sl == k
        nuc_area = int(np.count_nonzero(sn == k))
        cut = 1.0 - nuc_area / nucleus_total[k]
        lab, n = ndimage.label(own)
        if n > 1:
            keep = np.unique(lab[(sn == k) & own])
            stray = own & ~np.isin(lab, keep[keep > 0])
            sl[stray] = 0
            own &= ~stray
        area = int(own.sum())
        nominal = np.pi * cell.r_cell**2 * (0.35 if cell.kind != "mitotic" else 1.0)
        if nuc_area == 0 or cut > 0.75 or area < 0.25 * nominal:
            sl[own] = 0
            sn[sn == k] = 0
            continue
        cell.nucleus_cut = float(np.clip(cut, 0.0, 1.0))
        rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
        cell.bbox = (by0 + int(rows[0]), bx0 + int(cols[0]), by0 + int(rows[-1]) + 1, bx0 + int(cols[-1]) + 1)
        kept.append(cell)
        relabel[k] = len(kept)
    return kept, relabel[cell_mask], relabel[nuclei_mask]


# ----------------------------------------------------------------------------------------------
# labels


def _sample_image_classes(rng, include: int | None = None) -> tuple[int, ...]:
    """1 to 3 image classes drawn by :data:`CLASS_FREQUENCIES`, or ``(NEGATIVE,)``.

    ``include`` forces one class in (``NEGATIVE`` gives a negative image); the others are drawn as usual.
    """
    p = np.asarray(CLASS_FREQUENCIES, dtype=float)
    p = p / p.sum()
    if include == NEGATIVE or (include is None and rng.random() < p[NEGATIVE]):
        return (NEGATIVE,)
    q = p.copy()
    q[NEGATIVE] = 0.0
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.38, 0.17]))
    if include is not None:
        q[include] = 0.0
        n -= 1
    q /= q.sum()
    drawn = [int(c) for c in rng.choice(NUM_CLASSES, size=n, replace=False, p=q)]
    return tuple(sorted(drawn + ([] if include is None else [int(include)])))


def image_label(cell_labels: Mapping[int, Sequence[int]]) -> tuple[int, ...]:
    """The weak image label of a field: the union of its cells' protein classes.

    As in the competition, Negative (18) marks an image whose cells show no protein at all: it is
    the image label only when every cell is Negative (or there are no cells), never beside a class.

    >>> image_label({1: (0, 16), 2: (18,), 3: (16,)})
    (0, 16)
    >>> image_label({1: (18,), 2: (18,)})
    (18,)
    """
    union = {int(c) for labels in cell_labels.values() for c in labels} - {NEGATIVE}
    return tuple(sorted(union)) if union else (NEGATIVE,)


def _assign_labels(rng, cells: list[_Cell], classes: Sequence[int], negative_fraction: float) -> None:
    """Each cell gets a non-empty subset of the image classes, or Negative."""
    classes = tuple(sorted(set(int(c) for c in classes)))
    if classes == (NEGATIVE,) or not classes:
        for cell in cells:
            cell.labels = (NEGATIVE,)
        return
    for cell in cells:
        if cell.kind == "mitotic":
            allowed = [c for c in classes if c not in NUCLEAR_CLASSES]
        else:
            allowed = [c for c in classes if c != MITOTIC_SPINDLE]
        if not allowed or (cell.kind != "mitotic" and rng.random() < negative_fraction):
            cell.labels = (NEGATIVE,)
            continue
        pick = [c for c in allowed if rng.random() < 0.7]
        if cell.kind == "mitotic" and MITOTIC_SPINDLE in allowed and MITOTIC_SPINDLE not in pick:
            pick.append(MITOTIC_SPINDLE)
        if not pick:
            pick = [allowed[int(rng.integers(len(allowed)))]]
        cell.labels = tuple(sorted(pick))


# ----------------------------------------------------------------------------------------------
# texture helpers


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    from hpa_kernel._cv2 import cv2

    if sigma <= 0:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit standard deviation."""
    a = _blur(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (a - a.mean()) / (a.std() + 1e-6)


def _spots(shape, ys, xs, amps, sigma: float) -> np.ndarray:
    """Gaussian spots of peak ~``amps`` at integer positions."""
    canvas = np.zeros(shape, dtype=np.float32)
    np.add.at(canvas, (np.asarray(ys, dtype=np.intp), np.asarray(xs, dtype=np.intp)), np.asarray(amps, np.float32))
    return _blur(canvas, sigma) * np.float32(2 * np.pi * sigma * sigma)


def _pick(rng, mask: np.ndarray, n: int, weights: np.ndarray | None = None):
    idx = np.flatnonzero(mask)
    if idx.size == 0 or n <= 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    p = None
    if weights is not None:
        w = weights.ravel()[idx].astype(np.float64)
        if w.sum() > 0:
            p = w / w.sum()
    sel = rng.choice(idx, size=n, replace=True, p=p)
    return np.unravel_index(sel, mask.shape)


def _polylines(shape, curves, thickness: int) -> np.ndarray:
    """Draw polylines (lists of (y, x) float points) anti-aliased; returns float32 in [0, 1]."""
    from hpa_kernel._cv2 import cv2

    canvas = np.zeros(shape, dtype=np.uint8)
    pts = [np.round(np.asarray(c)[:, ::-1] * 16).astype(np.int32) for c in curves if len(c) > 1]  # (x, y) fixed point
    if pts:
        cv2.polylines(canvas, pts, False, 255, thickness=max(1, int(thickness)), lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / np.float32(255)


def _walks(rng, starts, thetas, step: float, n: int, bend: float) -> np.ndarray:
    """Random walks with a slowly turning heading, one per start of ``starts = (ys, xs)``.

    Returns shape (len(ys), n + 1, 2) as (y, x).
    """
    ys, xs = starts
    ys, xs, thetas = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (ys, xs, thetas))
    heading = thetas[:, None] + np.cumsum(rng.normal(0.0, bend, (ys.size, n)), axis=1)
    out = np.empty((ys.size, n + 1, 2))
    out[:, 0, 0], out[:, 0, 1] = ys, xs
    out[:, 1:, 0] = ys[:, None] + np.cumsum(step * np.sin(heading), axis=1)
    out[:, 1:, 1] = xs[:, None] + np.cumsum(step * np.cos(heading), axis=1)
    return out


# ----------------------------------------------------------------------------------------------
# per-cell rendering


@dataclass
class _Local:
    """One cell's box and the maps its patterns are drawn from (all box-local)."""

    y0: int
    x0: int
    cell: np.ndarray  # bool
    nuc: np.ndarray  # bool
    cyto: np.ndarray  # bool
    dist_edge: np.ndarray  # distance to the cell edge, inside the cell
    dist_nuc: np.ndarray  # distance to the nucleus, outside it
    depth_nuc: np.ndarray  # distance to the nucleus edge, inside it
    cy: float  # nucleus centre (box-local)
    cx: float
    r_cell: float
    r_nuc: float
    px: float  # line width unit (pixels)


def _local(cell: _Cell, k: int, cell_mask, nuclei_mask, px: float) -> _Local:
    from hpa_kernel._cv2 import cv2

    y0, x0, y1, x1 = cell.bbox
    m = cell_mask[y0:y1, x0:x1] == k
    n = nuclei_mask[y0:y1, x0:x1] == k
    pad = lambda a: np.pad(a.astype(np.uint8), 1)  # noqa: E731 - zeros around the box
    dist_edge = cv2.distanceTransform(pad(m), cv2.DIST_L2, 5)[1:-1, 1:-1]
    # the image border is not a cell edge: undo the padding on sides that are the image border
    H, W = cell_mask.shape
    if y0 == 0 or x0 == 0 or y1 == H or x1 == W:
        padded = np.pad(m.astype(np.uint8), 1)
        if y0 == 0:
            padded[0, 1:-1] = padded[1, 1:-1]
        if y1 == H:
            padded[-1, 1:-1] = padded[-2, 1:-1]
        if x0 == 0:
            padded[1:-1, 0] = padded[1:-1, 1]
        if x1 == W:
            padded[1:-1, -1] = padded[1:-1, -2]
        dist_edge = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    dist_nuc = cv2.distanceTransform((~n).astype(np.uint8), cv2.DIST_L2, 5)
    depth_nuc = cv2.distanceTransform(pad(n), cv2.DIST_L2, 5)[1:-1, 1:-1]
    nucs = cell.nuclei
    cy = float(np.mean([b.cy for b in nucs])) - y0
    cx = float(np.mean([b.cx for b in nucs])) - x0
    return _Local(y0, x0, m, n, m & ~n, dist_edge, dist_nuc, depth_nuc, cy, cx, cell.r_cell, cell.r_nuc, px)


def _nucleoli(rng, loc: _Local) -> np.ndarray:
    """2 to 4 nucleoli inside the nucleus: a soft map in [0, 1]."""
    inner = loc.depth_nuc > 0.25 * loc.r_nuc
    n = int(rng.integers(2, 5))
    ys, xs = _pick(rng, inner, n)
    return np.clip(_spots(loc.cell.shape, ys, xs, np.ones(n), 0.11 * loc.r_nuc), 0, 1)


def _microtubules(rng, loc: _Local) -> np.ndarray:
    """Radial, slightly curved fibres from around the nucleus to the cell edge."""
    n = int(110 * loc.r_cell / _CELL_RADIUS) + 30
    th = rng.uniform(0, 2 * np.pi, n)
    r0 = loc.r_nuc * rng.uniform(0.3, 1.0, n)
    y, x = loc.cy + r0 * np.sin(th), loc.cx + r0 * np.cos(th)
    curves = _walks(rng, (y, x), th + rng.normal(0, 0.35, n), 0.08 * loc.r_cell, 20, 0.2)
    lines = _polylines(loc.cell.shape, curves, max(1, round(0.7 * loc.px)))
    return _blur(lines, 0.4 * loc.px) * loc.cyto


# ----------------------------------------------------------------------------------------------
# green patterns, one function per class: (rng, loc, maps) -> map roughly in [0, 1]


def _g_nucleoplasm(rng, loc: _Local, maps: dict) -> np.ndarray:
    """0: fills the nucleus, spares the nucleoli."""
    return loc.nuc * (0.8 + 0.15 * maps["tex"]) * (1 - 0.7 * maps["nucleoli"])


def _g_nuclear_membrane(rng, loc: _Local, maps: dict) -> np.ndarray:
    """1: a thin ring on the nucleus edge."""
    signed = loc.dist_nuc - loc.depth_nuc
    return np.exp(-0.5 * (signed / (0.05 * loc.r_nuc + 0.6 * loc.px)) ** 2) * loc.cell


def _g_nucleoli(rng, loc: _Local, maps: dict) -> np.ndarray:
    """2: the nucleoli."""
    return maps["nucleoli"] * loc.nuc


def _g_fibrillar_centre(rng, loc: _Local, maps: dict) -> np.ndarray:
    """3: tiny dots inside the nucleoli."""
    nuc, rn = loc.nuc, loc.r_nuc
    inside = (maps["nucleoli"] > 0.5) & nuc
    n = int(rng.integers(4, 12))
    ys, xs = _pick(rng, inside if inside.any() else nuc, n)
    return np.clip(_spots(nuc.shape, ys, xs, rng.uniform(0.8, 1.0, n), 0.035 * rn + 0.6 * loc.px), 0, 1) * nuc


def _g_speckles(rng, loc: _Local, maps: dict) -> np.ndarray:
    """4: many small irregular dots in the nucleoplasm."""
    nuc, rn = loc.nuc, loc.r_nuc
    n = int(rng.integers(15, 35))
    ys, xs = _pick(rng, (loc.depth_nuc > 0.08 * rn) & (maps["nucleoli"] < 0.3), n)
    spots = _spots(nuc.shape, ys, xs, rng.uniform(0.5, 1.0, n), 0.055 * rn)
    return np.clip(spots + 0.12 * nuc, 0, 1) * nuc


def _g_nuclear_bodies(rng, loc: _Local, maps: dict) -> np.ndarray:
    """5: a few bright dots."""
    nuc, rn = loc.nuc, loc.r_nuc
    n = int(rng.integers(2, 7))
    ys, xs = _pick(rng, (loc.depth_nuc > 0.1 * rn) & (maps["nucleoli"] < 0.3), n)
    return np.clip(_spots(nuc.shape, ys, xs, rng.uniform(0.8, 1.0, n), 0.05 * rn + 0.6 * loc.px), 0, 1) * nuc


def _g_er(rng, loc: _Local, maps: dict) -> np.ndarray:
    """6: the endoplasmic reticulum follows the yellow texture."""
    return maps["er"] * loc.cyto


def _g_golgi(rng, loc: _Local, maps: dict) -> np.ndarray:
    """7: a compact cluster beside the nucleus."""
    shape, rn = loc.cell.shape, loc.r_nuc
    th = rng.uniform(0, 2 * np.pi)
    gy, gx = loc.cy + 1.15 * rn * np.sin(th), loc.cx + 1.15 * rn * np.cos(th)
    n = 12
    ys = np.clip(np.round(gy + rng.normal(0, 0.22 * rn, n)), 0, shape[0] - 1)
    xs = np.clip(np.round(gx + rng.normal(0, 0.22 * rn, n)), 0, shape[1] - 1)
    return np.clip(_spots(shape, ys, xs, rng.uniform(0.4, 0.8, n), 0.09 * rn), 0, 1) * loc.cyto


def _g_intermediate_filaments(rng, loc: _Local, maps: dict) -> np.ndarray:
    """8: long wavy fibres around the nucleus."""
    rn, rc, px = loc.r_nuc, loc.r_cell, loc.px
    n = int(rng.integers(14, 24))
    th = rng.uniform(0, 2 * np.pi, n)
    r0 = rn * rng.uniform(1.0, 1.5, n)
    y, x = loc.cy + r0 * np.sin(th), loc.cx + r0 * np.cos(th)
    curves = _walks(rng, (y, x), th + np.pi / 2 * rng.choice([-1, 1], n), 0.06 * rc, 36, 0.15)
    return _blur(_polylines(loc.cell.shape, curves, round(px)), 0.5 * px) * loc.cyto


def _g_actin(rng, loc: _Local, maps: dict) -> np.ndarray:
    """9: straight parallel bundles and a cortical rim."""
    rc, px = loc.r_cell, loc.px
    th = rng.uniform(0, np.pi)
    nrm = np.array([np.cos(th), -np.sin(th)])
    curves = []
    for off in rng.uniform(-rc, rc, int(rng.integers(8, 16))):
        py, px_ = loc.cy + off * nrm[0], loc.cx + off * nrm[1]
        dy, dx = 2 * rc * np.sin(th), 2 * rc * np.cos(th)
        curves.append([(py - dy, px_ - dx), (py + dy, px_ + dx)])
    fibres = _blur(_polylines(loc.cell.shape, curves, round(1.5 * px)), 0.6 * px)
    rim = np.exp(-0.5 * (loc.dist_edge / (0.04 * rc + px)) ** 2)
    return np.clip(0.8 * fibres + 0.6 * rim, 0, 1) * loc.cyto


def _g_microtubules(rng, loc: _Local, maps: dict) -> np.ndarray:
    """10: the red fibres."""
    return np.clip(1.6 * maps["mt"], 0, 1)


def _g_mitotic_spindle(rng, loc: _Local, maps: dict) -> np.ndarray:
    """11: fibres from two poles to the chromatin plate (mitotic cells only)."""
    shape, rc, px = loc.cell.shape, loc.r_cell, loc.px
    if not maps["mitotic"]:
        return np.zeros(shape, np.float32)
    ax = maps["axis"]
    ny, nx = np.cos(ax), -np.sin(ax)  # spindle axis, across the plate
    curves = []
    for sgn in (-1, 1):
        pole = (loc.cy + sgn * 0.6 * rc * ny, loc.cx + sgn * 0.6 * rc * nx)
        for t in np.linspace(-0.5, 0.5, 11):
            end = (loc.cy + t * rc * np.sin(ax) * 1.0, loc.cx + t * rc * np.cos(ax) * 1.0)
            curves.append([pole, end])
    lines = _blur(_polylines(shape, curves, round(1.5 * px)), px)
    return np.clip(lines * loc.cell, 0, 1)


def _g_centrosome(rng, loc: _Local, maps: dict) -> np.ndarray:
    """12: one or two dots next to the nucleus."""
    shape, rn = loc.cell.shape, loc.r_nuc
    n = int(rng.integers(1, 3))
    th = rng.uniform(0, 2 * np.pi)
    ys = np.clip(np.round(loc.cy + 1.15 * rn * np.sin(th) + rng.normal(0, 0.05 * rn, n)), 0, shape[0] - 1)
    xs = np.clip(np.round(loc.cx + 1.15 * rn * np.cos(th) + rng.normal(0, 0.05 * rn, n)), 0, shape[1] - 1)
    return np.clip(_spots(shape, ys, xs, np.ones(n), 0.05 * rn + loc.px), 0, 1) * loc.cell


def _g_plasma_membrane(rng, loc: _Local, maps: dict) -> np.ndarray:
    """13: a ring at the cell edge."""
    return np.exp(-0.5 * (loc.dist_edge / (0.035 * loc.r_cell + 0.8 * loc.px)) ** 2) * loc.cell


def _g_mitochondria(rng, loc: _Local, maps: dict) -> np.ndarray:
    """14: short filaments, denser around the nucleus."""
    cyto, rc, px = loc.cyto, loc.r_cell, loc.px
    n = int(rng.integers(60, 110) * (rc / _CELL_RADIUS) ** 0.5)
    w = np.exp(-loc.dist_nuc / (0.6 * rc))
    ys, xs = _pick(rng, cyto, n, w)
    curves = _walks(rng, (ys, xs), rng.uniform(0, 2 * np.pi, len(ys)), 0.03 * rc, 3, 0.5)
    return _blur(_polylines(cyto.shape, curves, round(1.5 * px)), 0.5 * px) * cyto


def _g_aggresome(rng, loc: _Local, maps: dict) -> np.ndarray:
    """15: one large bright blob beside the nucleus."""
    shape, rn = loc.cell.shape, loc.r_nuc
    th = rng.uniform(0, 2 * np.pi)
    ys = [np.clip(round(loc.cy + 1.25 * rn * np.sin(th)), 0, shape[0] - 1)]
    xs = [np.clip(round(loc.cx + 1.25 * rn * np.cos(th)), 0, shape[1] - 1)]
    return np.clip(1.3 * _spots(shape, ys, xs, [1.0], 0.2 * rn), 0, 1) * loc.cell + 0.1 * loc.cyto


def _g_cytosol(rng, loc: _Local, maps: dict) -> np.ndarray:
    """16: fills the cytoplasm, faint in the nucleus."""
    return (loc.cyto * (0.75 + 0.2 * maps["tex"]) + 0.15 * loc.nuc) * loc.cell


def _g_vesicles(rng, loc: _Local, maps: dict) -> np.ndarray:
    """17: many small dots in the cytoplasm."""
    cyto, rc = loc.cyto, loc.r_cell
    n = int(rng.integers(40, 90))
    ys, xs = _pick(rng, cyto & (loc.dist_edge > 0.03 * rc), n)
    return np.clip(_spots(cyto.shape, ys, xs, rng.uniform(0.5, 1.0, n), 0.025 * rc + 0.4 * loc.px), 0, 1) * cyto


#: Class id -> its green pattern; Negative (18) has none.
_GREEN_PATTERNS = {
    0: _g_nucleoplasm, 1: _g_nuclear_membrane, 2: _g_nucleoli, 3: _g_fibrillar_centre, 4: _g_speckles,
    5: _g_nuclear_bodies, 6: _g_er, 7: _g_golgi, 8: _g_intermediate_filaments, 9: _g_actin, 10: _g_microtubules,
    11: _g_mitotic_spindle, 12: _g_centrosome, 13: _g_plasma_membrane, 14: _g_mitochondria, 15: _g_aggresome,
    16: _g_cytosol, 17: _g_vesicles,
}


def _green_pattern(rng, c: int, loc: _Local, maps: dict) -> np.ndarray:
    """The green pattern of class ``c`` in one cell, roughly in [0, 1] (zeros for Negative)."""
    pattern = _GREEN_PATTERNS.get(c)
    if pattern is None:
        return np.zeros(loc.cell.shape, np.float32)  # 18: negative
    return pattern(rng, loc, maps)


# ----------------------------------------------------------------------------------------------
# the image


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 64:
        raise ValueError(f"{name} must be an integer >= 64, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SyntheticOptions:
    """What :func:`synthesize_image` draws besides the seed and the size; checks itself.

    Attributes
    ----------
    n_cells : int, optional
        Number of cells to try to place; by default about 8 at 512 x 512 and 25 at 2048 x 2048.
        Cells that end up mostly outside the field are dropped, so fewer may remain.
    bit_depth : {8, 16}
        uint8 (as the Kaggle PNGs) or uint16 output.
    classes : sequence of int, optional
        The image-level classes; each cell gets a non-empty subset of them (or Negative).
        By default 1 to 3 classes drawn by :data:`CLASS_FREQUENCIES`. Stored as a sorted tuple.
    negative_fraction : float
        Probability that a cell of a positive image is Negative.
    debris : int, optional
        Number of debris objects; by default 0 to 3, more in larger fields.
    include_class : int, optional
        With ``classes`` None: this class is one of the drawn image classes (18 makes a Negative
        image); used to make a training split that covers every class.

    Examples
    --------
    >>> SyntheticOptions(classes=[16, 0, 16]).classes
    (0, 16)
    """

    n_cells: int | None = None
    bit_depth: int = 8
    classes: Sequence[int] | None = None
    negative_fraction: float = 0.1
    debris: int | None = None
    include_class: int | None = None

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth!r}")
        n_cells = self.n_cells
        if n_cells is not None and (not isinstance(n_cells, (int, np.integer)) or n_cells < 1):
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
        if not 0.0 <= self.negative_fraction <= 1.0:
            raise ValueError(f"negative_fraction must be in [0, 1], got {self.negative_fraction!r}")
        if self.classes is not None:
            classes = tuple(sorted({int(c) for c in self.classes}))
            if not classes or any(not 0 <= c < NUM_CLASSES for c in classes):
                raise ValueError(f"classes must be a non-empty set of class ids 0..{NUM_CLASSES - 1}, "
                                 f"got {classes!r}")
            if NEGATIVE in classes and len(classes) > 1:
                raise ValueError(f"classes: Negative ({NEGATIVE}) cannot be combined with other classes, "
                                 f"got {classes!r}")
            object.__setattr__(self, "classes", classes)
        if self.include_class is not None and not 0 <= int(self.include_class) < NUM_CLASSES:
            raise ValueError(f"include_class must be a class id 0..{NUM_CLASSES - 1} or None, "
                             f"got {self.include_class!r}")


def synthesize_image(
    seed: int,
    height: int = 512,
    width: int = 512,
    *,
    options: SyntheticOptions | None = None,
    **overrides: Any,
) -> SyntheticImage:
    """Draw one synthetic HPA field of view with its truth.

    Parameters
    ----------
    seed : int
        Everything is a function of the seed.
    height, width : int
        Image size in pixels (rows, columns), at least 64.
    options : SyntheticOptions, optional
        What to draw (cell count, bit depth, classes, ...); the defaults by default.
    **overrides
        Fields of :class:`SyntheticOptions` by name (``n_cells``, ``bit_depth``, ``classes``,
        ``negative_fraction``, ``debris``, ``include_class``); they replace those of ``options``.

    Returns
    -------
    SyntheticImage

    Examples
    --------
    >>> s = synthesize_image(0, 256, 320)
    >>> s.image.shape, s.image.dtype.name, int(s.cell_mask.max()) == len(s.cell_labels)
    ((256, 320, 4), 'uint8', True)
    >>> synthesize_image(0, 128, 128, bit_depth=16).image.dtype.name
    'uint16'
    """
    height, width = _check_size("height", height), _check_size("width", width)
    if options is not None and not isinstance(options, SyntheticOptions):
        raise ValueError(f"options must be a SyntheticOptions or None, got {type(options).__name__}")
    opts = SyntheticOptions(**overrides) if options is None else replace(options, **overrides)
    rng = np.random.default_rng(seed)
    r_mean = _CELL_RADIUS * _scale(height, width)
    n_cells = opts.n_cells
    if n_cells is None:
        expected = _COVERAGE * height * width / (np.pi * r_mean**2)
        n_cells = max(2, int(round(expected * rng.uniform(0.75, 1.3))))
    image_classes = _sample_image_classes(rng, opts.include_class) if opts.classes is None else opts.classes
    cells, cell_mask, nuclei_mask = _layout(rng, (height, width), int(n_cells), r_mean, image_classes,
                                            opts.negative_fraction)
    px = max(1.0, 1.3 * r_mean / _CELL_RADIUS * 2.0)  # line width unit: ~2.6 px at 2048, ~1.1 at 512
    channels = _paint_cells(rng, cells, cell_mask, nuclei_mask, px)
    debris_mask, debris_list = _add_debris(rng, cell_mask, cells, r_mean, opts.debris, channels)
    out = _camera(rng, channels, px, opts.bit_depth)

    labels = {k: cell.labels for k, cell in enumerate(cells, start=1)}
    return SyntheticImage(
        image=out,
        cell_mask=cell_mask,
        nuclei_mask=nuclei_mask,
        cell_labels=labels,
        nucleus_cut={k: cell.nucleus_cut for k, cell in enumerate(cells, start=1)},
        binucleate={k for k, cell in enumerate(cells, start=1) if cell.kind == "binucleate"},
        mitotic={k for k, cell in enumerate(cells, start=1) if cell.kind == "mitotic"},
        debris_mask=debris_mask,
        debris=debris_list,
        image_labels=image_label(labels),
        seed=int(seed),
        params={"image_classes": list(image_classes), "n_cells_tried": int(n_cells), "cell_radius": float(r_mean)},
    )


def _layout(rng, shape, n_cells: int, r_mean: float, image_classes, negative_fraction: float):
    """Place the cells, make one mitotic if the spindle class needs it, rasterise them, label them.

    Returns the kept cells, the cell mask and the nuclei mask.
    """
    height, width = shape
    cells = _place_cells(rng, height, width, n_cells, r_mean)
    if MITOTIC_SPINDLE in image_classes and not any(c.kind == "mitotic" for c in cells) and cells:
        j = int(rng.integers(len(cells)))
        c0 = cells[j].nuclei[0]
        cells[j] = _new_cell_mitotic(rng, c0.cy, c0.cx, r_mean)
    cells, cell_mask, nuclei_mask = _rasterise(cells, height, width)
    _assign_labels(rng, cells, image_classes, negative_fraction)
    return cells, cell_mask, nuclei_mask


def _paint_cells(rng, cells: list[_Cell], cell_mask, nuclei_mask, px: float):
    """The noiseless red, green, blue and yellow channels (float32) of all cells."""
    shape = cell_mask.shape
    red = np.zeros(shape, np.float32)
    green = np.zeros(shape, np.float32)
    blue = np.zeros(shape, np.float32)
    yellow = np.zeros(shape, np.float32)
    tex = _smooth_noise(rng, shape, 2.0 * px)  # fine nuclear / cytoplasmic mottling
    er_noise = _smooth_noise(rng, shape, 2.2 * px)
    er = np.exp(-0.5 * (er_noise / 0.35) ** 2)  # zero-crossings of band-limited noise: a mesh
    for k, cell in enumerate(cells, start=1):
        loc = _local(cell, k, cell_mask, nuclei_mask, px)
        h, w = loc.cell.shape
        sl = (slice(loc.y0, loc.y0 + h), slice(loc.x0, loc.x0 + w))
        views = (red[sl], green[sl], blue[sl], yellow[sl])  # views: painting them paints the channels
        _paint_cell(rng, cell, loc, tex[sl], er[sl], views)
    return red, green, blue, yellow


def _paint_cell(rng, cell: _Cell, loc: _Local, ltex, ler, views) -> None:
    """Add one cell's four channels, in place, to ``views`` (its box in red, green, blue, yellow)."""
    red, green, blue, yellow = views
    h, w = loc.cell.shape
    mitotic = cell.kind == "mitotic"
    nucleoli = _nucleoli(rng, loc) if not mitotic else np.zeros((h, w), np.float32)
    # blue: nucleus, darker nucleoli; condensed chromatin is bright and ragged
    b_int = rng.uniform(0.4, 0.7) if not mitotic else rng.uniform(0.85, 1.0)
    b = loc.nuc * b_int * (0.85 + 0.12 * ltex) * (1 - 0.45 * nucleoli)
    blue += b
    # the cytoplasm thins out towards the cell edge (a lamella), so every texture fades there
    edge = 1.0 - 0.55 * np.exp(-loc.dist_edge / (0.05 * cell.r_cell + loc.px))
    near = np.exp(-loc.dist_nuc / (0.5 * cell.r_cell))
    # red: microtubule fibres on a diffuse cytoplasmic base, brighter around the nucleus
    mt = _microtubules(rng, loc) if not mitotic else np.zeros((h, w), np.float32)
    r_int = rng.uniform(0.3, 0.55)
    if mitotic:
        red += r_int * loc.cell * (0.75 + 0.1 * ltex) * (1.0 - 0.9 * loc.nuc)
    else:
        diffuse = loc.cyto * edge * (0.2 + 0.25 * near) * (1.0 + 0.15 * ltex)
        red += r_int * (diffuse + 0.6 * mt * (0.6 + 0.4 * near))
        red += 0.04 * r_int * loc.nuc
    # yellow: reticular ER, dense around the nucleus (and on its envelope), fading to the edge
    y_int = rng.uniform(0.4, 0.7)
    env = (0.2 + 0.8 * np.exp(-loc.dist_nuc / (0.4 * cell.r_cell))) * edge
    if mitotic:
        yellow += y_int * loc.cell * (0.55 + 0.25 * ler) * (1.0 - 0.9 * loc.nuc)
    else:
        envelope = np.exp(-0.5 * (loc.dist_nuc / (0.03 * cell.r_nuc + loc.px)) ** 2) * loc.cyto
        yellow += y_int * (loc.cyto * env * (0.2 + 0.8 * ler) + 0.5 * envelope) + 0.04 * y_int * loc.nuc
    # green: the protein pattern of each of the cell's classes
    maps = {"tex": ltex, "nucleoli": nucleoli, "er": ler * env, "mt": mt, "mitotic": mitotic,
            "axis": cell.nuclei[0].angle}
    g = np.zeros((h, w), np.float32)
    expr = rng.uniform(0.45, 1.0)
    for c in cell.labels:
        if c == NEGATIVE:
            continue
        g += expr * rng.uniform(0.6, 1.0) * _green_pattern(rng, c, loc, maps)
    green += g * loc.cell


def _camera(rng, channels, px: float, bit_depth: int) -> np.ndarray:
    """Image the channels: uneven illumination, a slight blur, background and noise; (H, W, 4) integers."""
    from hpa_kernel._cv2 import cv2

    height, width = shape = channels[0].shape
    # uneven illumination: a smooth field within +-10 %, shared by the channels
    coarse = rng.uniform(0.9, 1.1, (3, 3)).astype(np.float32)
    light = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    dtype, full = (np.uint8, 255) if bit_depth == 8 else (np.uint16, 65535)
    out = np.empty((height, width, 4), dtype=dtype)
    for c, ch in enumerate(channels):
        ch = _blur(ch, 0.6 * px) * light
        ch += np.float32(rng.uniform(0.008, 0.025))  # background offset
        # camera noise: read noise plus shot noise that grows with the signal
        sigma = np.sqrt(np.float32(0.006**2) + np.float32(0.025**2) * np.maximum(ch, 0))
        ch += sigma * rng.standard_normal(shape, dtype=np.float32)
        np.clip(ch, 0.0, 1.0, out=ch)
        ch *= np.float32(full)
        out[..., c] = np.rint(ch, out=ch)
    return out


def _new_cell_mitotic(rng, cy, cx, r_mean) -> _Cell:
    while True:
        cell = _new_cell(rng, cy, cx, r_mean)
        if cell.kind == "mitotic":
            return cell


def _add_debris(rng, cell_mask, cells, r_mean, n, channels):
    """Bright blobs in the background that a segmenter could take for a cell or nucleus."""
    from hpa_kernel._cv2 import cv2

    height, width = cell_mask.shape
    debris_mask = np.zeros((height, width), np.int32)
    background = cell_mask == 0
    if n is None:
        n = int(rng.poisson(0.5 + 1.5 * height * width / _REFERENCE_SIDE**2))
        n = min(n, 3 + int(height * width / _REFERENCE_SIDE**2))
    found: list[dict] = []
    if n <= 0:
        return debris_mask, found
    # candidate centres: background pixels far enough from every cell
    dist = cv2.distanceTransform(np.pad(background.astype(np.uint8), 1, constant_values=1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    for j in range(1, n + 1):
        radius = float(0.42 * r_mean * rng.uniform(0.25, 0.7))
        ok = dist > radius * 1.2
        if not ok.any():
            break
        ys, xs = _pick(rng, ok, 1)
        blob = _Blob.random(rng, (ys[0], xs[0]), radius, _BlobStyle((1.0, 2.0), 0.3, orders=5))
        y0, x0, y1, x1 = blob.bbox(height, width)
        inside = (blob.distance(y0, x0, y1, x1) < 1.0) & background[y0:y1, x0:x1] & (debris_mask[y0:y1, x0:x1] == 0)
        if not inside.any():
            continue
        kind = ("blue", "red_yellow", "all")[int(rng.integers(3))]
        lit = {"blue": (2,), "red_yellow": (0, 3), "all": (0, 1, 2, 3)}[kind]
        for c in lit:
            channels[c][y0:y1, x0:x1] += inside * rng.uniform(0.8, 1.2)
        debris_mask[y0:y1, x0:x1][inside] = j
        dist[y0:y1, x0:x1][inside] = 0
        found.append({"id": j, "y": float(blob.cy), "x": float(blob.cx), "radius": radius, "channels": kind})
    return debris_mask, found


# ----------------------------------------------------------------------------------------------
# the competition folder


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays like ``np.savez_compressed`` but byte-reproducible (fixed zip timestamps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return path


def _image_seed(seed: int, split: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), split, index]).generate_state(1)[0])


def _image_id(seed: int, split: int, index: int) -> str:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), split, index, 7]))
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _clear_stale(comp: Competition, seed: int, n_train: int, n_test: int, overwrite: bool) -> None:
    for split_index, (n, folder) in enumerate(((n_train, comp.train_dir), (n_test, comp.test_dir))):
        if not folder.is_dir():
            continue
        ours = {_image_id(seed, split_index, i) for i in range(n)}
        stale = [i for i in list_image_ids(folder) if i not in ours]
        if not stale:
            continue
        if not overwrite:
            raise ValueError(
                f"{folder} holds {len(stale)} image(s) that this call would not write (e.g. {stale[0]}); "
                "use an empty folder or overwrite=True (--overwrite) to delete them"
            )
        for image_id in stale:
            for channel in CHANNELS:
                for path in folder.glob(f"{image_id}_{channel}.*"):
                    path.unlink()
        logger.info("deleted %d stale image(s) from %s", len(stale), folder)


def _progress(total: int):
    """A tqdm bar for long runs when INFO logging is on; a disabled (silent) one otherwise."""
    from tqdm.auto import tqdm

    quiet = total < 20 or not logger.isEnabledFor(logging.INFO)
    return tqdm(total=total, desc="synthetic images", unit="img", disable=quiet)


#: The real test set's image sides and counts (559 images): 462 x 2048², 68 x 1728², 29 x 3072².
COMPETITION_TEST_SIZES: tuple[tuple[int, int], ...] = ((2048, 462), (1728, 68), (3072, 29))
#: The one non-square (H, W) that ``sizes="competition"`` adds; the real set has none, the kit must cope anyway.
COMPETITION_NON_SQUARE: tuple[int, int] = (1728, 2048)


def competition_shapes(n: int) -> list[tuple[int, int]]:
    """(H, W) of ``n`` test images: the real test set's size mix for ``n - 1``, then one non-square image.

    The squares are shared out in the proportions 462 : 68 : 29 (largest remainder), with at least
    one image of each size; they come grouped by size, in the order of :data:`COMPETITION_TEST_SIZES`.

    >>> competition_shapes(6)
    [(2048, 2048), (2048, 2048), (2048, 2048), (1728, 1728), (3072, 3072), (1728, 2048)]
    >>> from collections import Counter; sorted(Counter(competition_shapes(560)).values())
    [1, 29, 68, 462]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < len(COMPETITION_TEST_SIZES) + 1:
        raise ValueError(f"n_test must be an integer >= {len(COMPETITION_TEST_SIZES) + 1} for sizes='competition' "
                         f"(one image of each size plus a non-square one), got {n!r}")
    squares = int(n) - 1
    total = sum(count for _, count in COMPETITION_TEST_SIZES)
    quotas = [squares * count / total for _, count in COMPETITION_TEST_SIZES]
    shares = [int(q) for q in quotas]
    for k in sorted(range(len(quotas)), key=lambda k: shares[k] - quotas[k])[: squares - sum(shares)]:
        shares[k] += 1
    for k in range(len(shares)):
        if shares[k] == 0:
            shares[k] = 1
            shares[shares.index(max(shares))] -= 1
    shapes = [(side, side) for (side, _), share in zip(COMPETITION_TEST_SIZES, shares) for _ in range(share)]
    return shapes + [COMPETITION_NON_SQUARE]


@dataclass(frozen=True)
class CompetitionSpec:
    """What :func:`make_competition` writes; checks itself. ``height``, ``width`` and ``test_shapes`` are derived.

    Attributes
    ----------
    n_train, n_test : int
        Number of train and test images (>= 0, at least one in all).
    size : int
        Side of the square images, used when ``shape`` is not given.
    seed : int
        Every image and id is a function of ``seed``.
    bit_depth : {8, 16}
        uint8 PNGs (as Kaggle) or uint16 PNGs.
    shape : (int, int), optional
        ``(height, width)`` for non-square images.
    sizes : {None, "competition"}
        ``"competition"``: the test images get the real test set's sizes, 2048², 1728² and 3072²
        in the proportions 462 : 68 : 29, plus one non-square image (:func:`competition_shapes`;
        needs ``n_test >= 4``). The train images keep ``size``/``shape``.
    cover_classes : bool
        Train image ``i < 19`` has class ``i`` among its image classes (image 18 is Negative), so
        that a train split of at least 19 images covers every class; the other images are drawn
        by :data:`CLASS_FREQUENCIES` as usual.

    Examples
    --------
    >>> spec = CompetitionSpec(n_train=1, n_test=2, shape=(300, 420))
    >>> spec.height, spec.width, spec.test_shapes
    (300, 420, ((300, 420), (300, 420)))
    """

    n_train: int = 8
    n_test: int = 4
    size: int = 512
    seed: int = 0
    bit_depth: int = 8
    shape: tuple[int, int] | None = None
    sizes: str | None = None
    cover_classes: bool = False
    height: int = field(init=False)
    width: int = field(init=False)
    test_shapes: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, value in (("n_train", self.n_train), ("n_test", self.n_test)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.n_train + self.n_test == 0:
            raise ValueError("n_train + n_test must be at least 1, got 0 images")
        shape = self.shape
        if shape is None:
            height = width = _check_size("size", self.size)
        else:
            if len(tuple(shape)) != 2:
                raise ValueError(f"shape must be (height, width), got {shape!r}")
            height, width = _check_size("shape[0]", shape[0]), _check_size("shape[1]", shape[1])
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth!r}")
        if self.sizes not in (None, "competition"):
            raise ValueError(f"sizes must be None or 'competition', got {self.sizes!r}")
        n_test = self.n_test
        test_shapes = competition_shapes(n_test) if self.sizes == "competition" else [(height, width)] * n_test
        object.__setattr__(self, "height", height)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "test_shapes", tuple(test_shapes))


@dataclass
class _SplitTruth:
    """The truth of one split, gathered image by image, then written to ``truth/``."""

    cells_rows: list = field(default_factory=list)
    info_rows: list = field(default_factory=list)
    debris_rows: list = field(default_factory=list)
    masks: dict = field(default_factory=dict)
    nuclei: dict = field(default_factory=dict)

    def add(self, image_id: str, sample: SyntheticImage) -> None:
        self.masks[image_id] = sample.cell_mask
        self.nuclei[image_id] = sample.nuclei_mask
        n_ids = max(sample.cell_ids, default=0) + 1
        areas = np.bincount(sample.cell_mask.ravel(), minlength=n_ids)
        nucleus_areas = np.bincount(sample.nuclei_mask.ravel(), minlength=n_ids)
        for k in sample.cell_ids:
            self.cells_rows.append((image_id, k, format_labels(sample.cell_labels[k])))
            self.info_rows.append((
                image_id, k, f"{sample.nucleus_cut[k]:.4f}", int(k in sample.binucleate),
                int(k in sample.mitotic), int(areas[k]), int(nucleus_areas[k]),
            ))
        for d in sample.debris:
            self.debris_rows.append(
                (image_id, d["id"], f"{d['y']:.1f}", f"{d['x']:.1f}", f"{d['radius']:.1f}", d["channels"])
            )

    def write(self, comp: Competition, split: str) -> None:
        _write_csv(comp.truth_cells(split), ("ImageID", "CellID", "Labels"), self.cells_rows)
        _write_csv(comp.truth_dir / f"{split}_cell_info.csv",
                   ("ImageID", "CellID", "border_cut", "binucleate", "mitotic", "area", "nucleus_area"),
                   self.info_rows)
        _write_csv(comp.truth_dir / f"{split}_debris.csv",
                   ("ImageID", "DebrisID", "y", "x", "radius", "channels"), self.debris_rows)
        write_npz(comp.truth_masks(split), self.masks)
        write_npz(comp.truth_dir / f"{split}_nuclei.npz", self.nuclei)


def make_competition(
    out: str | Path,
    spec: CompetitionSpec | None = None,
    *,
    overwrite: bool = False,
    **overrides: Any,
) -> Competition:
    """Write a synthetic competition folder in the Kaggle layout, with its truth.

    Parameters
    ----------
    out : path
        The folder to write; created if needed. Writing again with the same arguments gives the
        same files.
    spec : CompetitionSpec, optional
        What to write (counts, size, seed, bit depth, ...); the defaults by default.
    overwrite : bool
        ``out`` already holds images that this call would not write (another seed or count):
        delete their channel files if True, raise ``ValueError`` if False, so that a pipeline
        never sees stale images beside the new truth.
    **overrides
        Fields of :class:`CompetitionSpec` by name (``n_train``, ``n_test``, ``size``, ``seed``,
        ``bit_depth``, ``shape``, ``sizes``, ``cover_classes``); they replace those of ``spec``.

    Returns
    -------
    Competition
        With ``train.csv`` (ID, Label = union of the cells' labels), ``sample_submission.csv``
        (ID, ImageWidth, ImageHeight, empty PredictionString), ``train/``, ``test/`` and, for both
        splits, ``truth/{split}_cells.csv`` (ImageID, CellID, Labels), ``truth/{split}_masks.npz``,
        ``truth/{split}_nuclei.npz``, ``truth/{split}_cell_info.csv`` and ``truth/{split}_debris.csv``;
        ``synthetic.json`` records the parameters.
    """
    if spec is not None and not isinstance(spec, CompetitionSpec):
        raise ValueError(f"spec must be a CompetitionSpec or None, got {type(spec).__name__}")
    spec = CompetitionSpec(**overrides) if spec is None else replace(spec, **overrides)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"out must be a folder, got the file {root}")
    comp = Competition(root)
    _clear_stale(comp, spec.seed, spec.n_train, spec.n_test, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    comp.truth_dir.mkdir(exist_ok=True)
    progress = _progress(spec.n_train + spec.n_test)
    train_rows, images_meta = _write_split(comp, spec, 0, progress)
    sub_rows, test_meta = _write_split(comp, spec, 1, progress)
    images_meta += test_meta
    progress.close()
    _write_csv(comp.train_csv, ("ID", "Label"), train_rows)
    _write_csv(comp.sample_submission, ("ID", "ImageWidth", "ImageHeight", "PredictionString"), sub_rows)
    meta = {
        "generator": "hpa_kernel.synthetic.make_competition",
        "seed": int(spec.seed),
        "n_train": int(spec.n_train),
        "n_test": int(spec.n_test),
        "height": spec.height,
        "width": spec.width,
        "bit_depth": int(spec.bit_depth),
        "test_sizes": spec.sizes or "uniform",
        "cover_classes": bool(spec.cover_classes),
        "cell_radius_px": float(_CELL_RADIUS * _scale(spec.height, spec.width)),
        "images": images_meta,
    }
    (root / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    n_cells = sum(m["n_cells"] for m in images_meta)
    logger.info("synthetic competition in %s: %d train + %d test images of %dx%d (HxW), %d-bit, %d cells, seed %d",
                root, spec.n_train, spec.n_test, spec.height, spec.width, spec.bit_depth, n_cells, spec.seed)
    return comp


def _write_split(comp: Competition, spec: CompetitionSpec, split_index: int, progress) -> tuple[list, list[dict]]:
    """Draw and write the images of one split (0 train, 1 test) and its truth.

    Returns the split's rows of ``train.csv`` (train) or ``sample_submission.csv`` (test), and
    one ``synthetic.json`` entry per image.
    """
    split, n, folder = (("train", spec.n_train, comp.train_dir), ("test", spec.n_test, comp.test_dir))[split_index]
    folder.mkdir(exist_ok=True)
    truth = _SplitTruth()
    rows: list[tuple] = []
    images_meta: list[dict] = []
    for i in range(n):
        image_id = _image_id(spec.seed, split_index, i)
        image_seed = _image_seed(spec.seed, split_index, i)
        h, w = spec.test_shapes[i] if split == "test" else (spec.height, spec.width)
        cover = i if spec.cover_classes and split == "train" and i < NUM_CLASSES else None
        sample = synthesize_image(image_seed, h, w, bit_depth=spec.bit_depth, include_class=cover)
        write_image(folder, image_id, sample.image)
        images_meta.append({
            "split": split, "id": image_id, "seed": image_seed, "n_cells": len(sample.cell_labels),
            "height": h, "width": w, "image_classes": sample.params["image_classes"],
        })
        logger.debug("%s %s: %d cells, labels %s", split, image_id, len(sample.cell_labels),
                     format_labels(sample.image_labels))
        progress.update(1)
        truth.add(image_id, sample)
        if split == "train":
            rows.append((image_id, format_labels(sample.image_labels)))
        else:
            rows.append((image_id, w, h, ""))
    truth.write(comp, split)
    return rows, images_meta


# ----------------------------------------------------------------------------------------------
# picture


def render_composite(
    sample: SyntheticImage | np.ndarray,
    outlines: bool = True,
    cell_mask: np.ndarray | None = None,
    black: float = 0.04,
) -> np.ndarray:
    """An HPA-style RGB composite of an (H, W, 4) image: red + yellow, green + yellow, blue.

    Parameters
    ----------
    sample : SyntheticImage or ndarray (H, W, 4)
    outlines : bool
        Draw the truth cell outlines (white) and nucleus outlines (light blue); needs the masks of
        a :class:`SyntheticImage` or ``cell_mask``.
    cell_mask : ndarray, optional
        Cell label image for the outlines when ``sample`` is a plain array.
    black : float
        Black level in [0, 1) subtracted before display (hides the camera background).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    if not 0.0 <= black < 1.0:
        raise ValueError(f"black must be in [0, 1), got {black!r}")
    image = sample.image if isinstance(sample, SyntheticImage) else np.asarray(sample)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"image must have shape (H, W, 4), got {image.shape}")
    f = to_float(image)
    r, g, b, y = (f[..., i] for i in range(4))
    rgb = np.stack([r + 0.6 * y, 0.85 * g + 0.4 * y, b], axis=-1)
    rgb = np.clip((rgb - black) * (1.2 / (1.0 - black)), 0, 1)
    out = np.round(rgb * 255).astype(np.uint8)
    if outlines:
        masks = []
        if isinstance(sample, SyntheticImage):
            masks = [(sample.cell_mask, (255, 255, 255)), (sample.nuclei_mask, (120, 160, 255))]
        elif cell_mask is not None:
            masks = [(cell_mask, (255, 255, 255))]
        for m, colour in masks:
            _draw_outlines(out, m, colour)
    return out


def _draw_outlines(rgb: np.ndarray, mask: np.ndarray, colour) -> None:
    """Colour, in place, the pixels of each labelled region that touch another label or background."""
    edge = np.zeros(mask.shape, bool)
    dy = mask[:-1] != mask[1:]
    dx = mask[:, :-1] != mask[:, 1:]
    edge[:-1] |= dy
    edge[1:] |= dy
    edge[:, :-1] |= dx
    edge[:, 1:] |= dx
    rgb[edge & (mask > 0)] = colour

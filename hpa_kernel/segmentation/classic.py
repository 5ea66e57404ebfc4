"""A weight-free segmenter: nuclei from the blue channel, cells grown from them on red + yellow.

Use it where the HPA-Cell-Segmentation weights are not available (tests, demos, a quick look at
new data). It is classic image analysis, at a fixed working resolution:

1. **predict** (cheap, batched): each image is converted to [0, 1] (uint8 / 255, uint16 / 65535),
   shrunk with area averaging so that its longer side is at most ``work_side`` pixels, and
   smoothed; the maps handed on are the blue plane (nuclei) and the mean of red and yellow
   (cytoplasm), float32 at the working size.
2. **postprocess** (:func:`postprocess_classic`, picklable, no torch):

   * nuclei: Otsu threshold of the blue map, holes filled, then touching nuclei are split by a
     watershed of the distance transform whose markers are its h-maxima; nuclei much smaller
     than the typical one (debris fragments) are dropped. The typical nucleus size is measured
     on the image, so the same parameters work at any resolution;
   * cells: the cytoplasm foreground is ``map > threshold_scale * Otsu``; each cell is grown
     from its nucleus by a watershed over an elevation that mixes the inverted cytoplasm
     intensity with the distance to the nearest nucleus, restricted to foreground and nuclei.
     Two cells whose nuclei nearly touch and whose shared border is as bright as their inside
     are one binucleate cell and are joined. Nuclei whose cell is barely larger than the nucleus
     (debris without cytoplasm) are dropped, as are cells smaller than ``min_cell_fraction`` of
     the typical cell;
   * labels are brought back to the image size (nearest neighbour), renumbered 1..n in raster
     order, uint16; a nucleus carries its cell's label, like :func:`~.postprocess.label_cell`.

:func:`hpa_kernel.metric.match_cells` scores a label image against a truth label image (one-to-one
matching by IoU), which is how the defaults were checked on :mod:`hpa_kernel.synthetic` fields.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from hpa_kernel.io import to_float
from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps

__all__ = [
    "ClassicParams",
    "ClassicMaps",
    "ClassicSegmenter",
    "postprocess_classic",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassicParams:
    """Settings of the classic segmenter. Lengths are in pixels of the working image.

    Parameters
    ----------
    work_side : int
        Images are shrunk so that their longer side is at most this (never enlarged).
    nucleus_sigma, cell_sigma : float
        Gaussian smoothing of the blue and of the red + yellow maps.
    nucleus_threshold_scale : float
        The nuclei foreground is ``blue > nucleus_threshold_scale * Otsu(blue)``.
    split_h : float
        Touching nuclei are split at distance-transform maxima that stand out by at least
        ``split_h`` times the typical nucleus radius (smaller: more splitting).
    min_nucleus_fraction : float
        Nuclei with an area below this fraction of the median nucleus area are dropped.
    min_nucleus_area : float
        Absolute floor for a nucleus, as a fraction of the working image area.
    cell_threshold_scale : float
        The cytoplasm foreground is ``map > cell_threshold_scale * Otsu(map)``.
    distance_weight : float
        Weight of the (normalised) distance to the nearest nucleus in the cell watershed's
        elevation, against the inverted cytoplasm intensity (weight 1). 0: intensity only.
    merge_gap : float
        Two nuclei closer than ``merge_gap`` times the typical nucleus radius whose cells meet
        along a border that is not darker than ``merge_contrast`` times the cells' median
        cytoplasm intensity are taken as one binucleate cell. 0 disables merging.
    merge_contrast : float
        See ``merge_gap``.
    min_cell_to_nucleus : float
        A cell whose area is below this multiple of its nucleus area is debris: dropped.
    min_cell_fraction : float
        Cells with an area below this fraction of the median cell area are dropped.
    """

    work_side: int = 512
    nucleus_sigma: float = 1.0
    cell_sigma: float = 2.0
    nucleus_threshold_scale: float = 1.0
    split_h: float = 0.3
    min_nucleus_fraction: float = 0.08
    min_nucleus_area: float = 2e-4
    cell_threshold_scale: float = 0.5
    distance_weight: float = 0.25
    merge_gap: float = 0.5
    merge_contrast: float = 0.8
    min_cell_to_nucleus: float = 1.3
    min_cell_fraction: float = 0.1

    def __post_init__(self):
        if isinstance(self.work_side, bool) or not isinstance(self.work_side, (int, np.integer)) or self.work_side < 64:
            raise ValueError(f"work_side must be an integer >= 64, got {self.work_side!r}")
        for name in ("nucleus_sigma", "cell_sigma", "split_h", "min_nucleus_fraction", "min_nucleus_area",
                     "distance_weight", "merge_gap", "merge_contrast", "min_cell_fraction"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("nucleus_threshold_scale", "cell_threshold_scale", "min_cell_to_nucleus"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.min_nucleus_fraction >= 1 or self.min_cell_fraction >= 1 or self.min_nucleus_area >= 0.5:
            raise ValueError(
                "min_nucleus_fraction and min_cell_fraction must be < 1 and min_nucleus_area < 0.5, got "
                f"{self.min_nucleus_fraction!r}, {self.min_cell_fraction!r}, {self.min_nucleus_area!r}"
            )


@dataclass
class ClassicMaps(SegmentationMaps):
    """The classic segmenter's maps: float32 blue (``nuclei``) and red + yellow (``cell``) maps at
    the working size, and ``shape``, the (H, W) of the original image the labels are returned at."""

    shape: tuple[int, int] = (0, 0)


# ----------------------------------------------------------------------------------------------
# prediction stage


def _to_unit(image: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 4:
        found = image.shape if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"images[{index}]: expected an (H, W, 4) R, G, B, Y array, got {found}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ValueError(f"images[{index}]: expected at least 8 x 8 pixels, got {image.shape[:2]}")
    if image.dtype in (np.uint8, np.uint16):
        return to_float(image)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError(f"images[{index}]: float image contains NaN or infinity")
        return np.clip(to_float(image), 0, None)
    raise ValueError(f"images[{index}]: expected dtype uint8, uint16 or float, got {image.dtype}")


def _working_size(height: int, width: int, work_side: int) -> tuple[int, int]:
    scale = min(1.0, work_side / max(height, width))
    return max(8, round(height * scale)), max(8, round(width * scale))


def _smooth(plane: np.ndarray, sigma: float) -> np.ndarray:
    from hpa_kernel._cv2 import cv2

    if sigma <= 0:
        return plane
    return cv2.GaussianBlur(plane, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def predict_classic(image: np.ndarray, params: ClassicParams, index: int = 0) -> ClassicMaps:
    """The prediction stage for one (H, W, 4) image (see the module docstring)."""
    from hpa_kernel._cv2 import cv2

    unit = _to_unit(image, index)
    height, width = unit.shape[:2]
    h, w = _working_size(height, width, params.work_side)
    if (h, w) != (height, width):
        unit = cv2.resize(unit, (w, h), interpolation=cv2.INTER_AREA)
    blue = np.ascontiguousarray(unit[..., 2])
    cytoplasm = np.ascontiguousarray((unit[..., 0] + unit[..., 3]) * np.float32(0.5))
    return ClassicMaps(
        nuclei=_smooth(blue, params.nucleus_sigma),
        cell=_smooth(cytoplasm, params.cell_sigma),
        shape=(int(height), int(width)),
    )


# ----------------------------------------------------------------------------------------------
# post-processing stage


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.max()) == float(values.min()):
        return float("inf")  # a flat map has no foreground
    return float(threshold_otsu(values))


def _relabel_sequential(label: np.ndarray) -> np.ndarray:
    """Renumber the non-zero labels 1..n, keeping their order."""
    present = np.unique(label)
    present = present[present > 0]
    lut = np.zeros(int(label.max()) + 1 if label.size else 1, dtype=np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[label]


def _segment_nuclei(blue: np.ndarray, params: ClassicParams) -> tuple[np.ndarray, float]:
    """Nuclei labels (int32) at the working size, and the typical nucleus radius."""
    from scipy import ndimage as ndi
    from skimage import morphology, segmentation

    foreground = blue > params.nucleus_threshold_scale * _otsu(blue)
    foreground = ndi.binary_fill_holes(foreground)
    floor = params.min_nucleus_area * blue.size
    components, count = ndi.label(foreground)
    if count == 0:
        return components, 0.0
    areas = np.bincount(components.ravel())[1:]
    typical_area = float(np.median(areas[areas >= floor])) if (areas >= floor).any() else float(areas.max())
    radius = np.sqrt(typical_area / np.pi)

    distance = ndi.distance_transform_edt(foreground)
    peaks = morphology.h_maxima(distance, max(1.0, params.split_h * radius)) & foreground
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3), dtype=bool))
    # every component gets at least one marker (its h-maximum may have been flattened away)
    unmarked = np.setdiff1d(np.arange(1, count + 1), np.unique(components[markers > 0]))
    if unmarked.size:
        extra = np.isin(components, unmarked)
        markers[extra] = components[extra] + markers.max()
    nuclei = segmentation.watershed(-distance, markers, mask=foreground)

    areas = np.bincount(nuclei.ravel())
    small = areas < max(floor, params.min_nucleus_fraction * typical_area)
    small[0] = False
    nuclei[small[nuclei]] = 0
    return _relabel_sequential(nuclei), float(radius)


def _adjacent_pairs(label: np.ndarray) -> np.ndarray:
    """(K, 2) array of the distinct pairs (a < b) of non-zero labels that touch (4-neighbours)."""
    a = np.concatenate([label[:, :-1].ravel(), label[:-1, :].ravel()])
    b = np.concatenate([label[:, 1:].ravel(), label[1:, :].ravel()])
    touch = (a != b) & (a > 0) & (b > 0)
    pairs = np.stack([np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])], axis=1)
    return np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)


def _merge_binucleate(cells, nuclei, cytoplasm, radius, params):
    """Join cells whose nuclei nearly touch and whose shared border is not darker (see ClassicParams)."""
    from skimage.segmentation import expand_labels

    if params.merge_gap <= 0 or radius <= 0 or nuclei.max() < 2:
        return cells, nuclei
    near = _adjacent_pairs(expand_labels(nuclei, distance=params.merge_gap * radius / 2))
    if near.size == 0:
        return cells, nuclei
    # mean cytoplasm on each cell-cell border, against the median inside the two cells
    a = np.concatenate([cells[:, :-1].ravel(), cells[:-1, :].ravel()])
    b = np.concatenate([cells[:, 1:].ravel(), cells[1:, :].ravel()])
    v = np.concatenate([(cytoplasm[:, :-1] + cytoplasm[:, 1:]).ravel(), (cytoplasm[:-1, :] + cytoplasm[1:, :]).ravel()]) / 2
    touch = (a != b) & (a > 0) & (b > 0)
    parent = np.arange(int(cells.max()) + 1)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    lo, hi, vals = np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch]), v[touch]
    for p, q in near:
        on_border = (lo == p) & (hi == q)
        if not on_border.any():
            continue
        inside = float(np.median(cytoplasm[(cells == p) | (cells == q)]))
        if inside > 0 and float(vals[on_border].mean()) >= params.merge_contrast * inside:
            parent[root(int(q))] = root(int(p))
    lut = np.array([root(i) for i in range(parent.size)])
    return lut[cells], lut[nuclei]


def _grow_cells(
    cytoplasm: np.ndarray, nuclei: np.ndarray, radius: float, params: ClassicParams
) -> tuple[np.ndarray, np.ndarray]:
    """Cell labels (int32) grown from the nuclei, and the nuclei relabelled after merging
    binucleate cells; a nucleus carries its cell's label."""
    from scipy import ndimage as ndi
    from skimage import segmentation

    if nuclei.max() == 0:
        return nuclei.copy(), nuclei
    foreground = (cytoplasm > params.cell_threshold_scale * _otsu(cytoplasm)) | (nuclei > 0)
    foreground = ndi.binary_fill_holes(foreground)
    scale = float(np.percentile(cytoplasm[foreground], 95)) or 1.0
    elevation = -np.clip(cytoplasm / scale, 0, 1)
    if params.distance_weight > 0:
        distance = ndi.distance_transform_edt(nuclei == 0)
        reach = float(np.percentile(distance[foreground], 95)) or 1.0
        elevation = elevation + params.distance_weight * distance / reach
    cells = segmentation.watershed(elevation, nuclei, mask=foreground)
    cells, nuclei = _merge_binucleate(cells, nuclei, cytoplasm, radius, params)

    # drop debris (no cytoplasm around the nucleus) and tiny cells
    n = int(nuclei.max())
    cell_area = np.bincount(cells.ravel(), minlength=n + 1).astype(np.float64)
    nucleus_area = np.bincount(nuclei.ravel(), minlength=n + 1).astype(np.float64)
    bad = cell_area < params.min_cell_to_nucleus * nucleus_area
    kept = cell_area[1:][~bad[1:]]
    if kept.size:
        bad |= cell_area < params.min_cell_fraction * float(np.median(kept))
    bad[0] = False
    cells[bad[cells]] = 0
    return cells, nuclei


def _raster_order(cells: np.ndarray) -> np.ndarray:
    """Renumber labels 1..n by the raster position of their first pixel (uint16)."""
    flat = cells.ravel()
    positions = np.flatnonzero(flat)
    if positions.size == 0:
        return np.zeros(cells.shape, dtype=np.uint16)
    values = flat[positions]
    labels, first = np.unique(values, return_index=True)
    order = labels[np.argsort(first, kind="stable")]
    if order.size > np.iinfo(np.uint16).max:
        raise ValueError(f"{order.size} cells do not fit in uint16 labels")
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    lut[order] = np.arange(1, order.size + 1, dtype=np.uint16)
    return lut[cells]


def postprocess_classic(maps: ClassicMaps, params: ClassicParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The post-processing stage: (nuclei_label, cell_label), both uint16 at ``maps.shape``.

    Picklable (a module-level function; bind ``params`` with :func:`functools.partial`) and free
    of torch, so it can run in worker processes.
    """
    from hpa_kernel._cv2 import cv2

    params = ClassicParams() if params is None else params
    if not isinstance(maps, SegmentationMaps):
        raise ValueError(f"maps: expected ClassicMaps, got {type(maps).__name__}")
    blue, cytoplasm = np.asarray(maps.nuclei), np.asarray(maps.cell)
    if blue.ndim != 2 or blue.shape != cytoplasm.shape:
        raise ValueError(f"maps: expected two 2-D maps of one shape, got {blue.shape} and {cytoplasm.shape}")
    shape = tuple(getattr(maps, "shape", None) or blue.shape)  # a plain SegmentationMaps: the maps' size
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"maps.shape: expected (H, W) of the original image, got {shape}")

    nuclei, radius = _segment_nuclei(blue, params)
    cells, nuclei = _grow_cells(cytoplasm, nuclei, radius, params)
    nuclei = np.where(cells > 0, nuclei, 0)
    if tuple(cells.shape) != shape:
        size = (int(shape[1]), int(shape[0]))
        cells = cv2.resize(cells.astype(np.float32), size, interpolation=cv2.INTER_NEAREST).astype(np.int32)
        nuclei = cv2.resize(nuclei.astype(np.float32), size, interpolation=cv2.INTER_NEAREST).astype(np.int32)
    cell_label = _raster_order(cells)
    nuclei_label = np.where((nuclei > 0) & (nuclei == cells), cell_label, 0).astype(np.uint16)
    return nuclei_label, cell_label


# ----------------------------------------------------------------------------------------------
# the segmenter


class ClassicSegmenter(BaseSegmenter):
    """Weight-free segmenter (see the module docstring). ``create_segmenter("classic", **overrides)``.

    Parameters
    ----------
    params : ClassicParams, optional
        All settings; defaults when omitted.
    **overrides
        Individual :class:`ClassicParams` fields, applied on top of ``params``.

    Examples
    --------
    >>> seg = ClassicSegmenter(work_side=256)
    >>> image = np.zeros((300, 300, 4), dtype=np.uint8)
    >>> nuclei, cells = seg.segment([image])[0]
    >>> cells.shape, cells.dtype.name, int(cells.max())
    ((300, 300), 'uint16', 0)
    """

    name = "classic"

    def __init__(self, params: ClassicParams | None = None, **overrides):
        import dataclasses

        if params is not None and not isinstance(params, ClassicParams):
            raise ValueError(f"params: expected ClassicParams, got {type(params).__name__}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(ClassicParams)}
        if unknown:
            raise ValueError(f"unknown classic segmenter setting(s) {sorted(unknown)}: expected fields of ClassicParams")
        self.params = dataclasses.replace(params or ClassicParams(), **overrides)
        self.postprocess_fn = functools.partial(postprocess_classic, params=self.params)

    def predict(self, images: Sequence[np.ndarray]) -> list[ClassicMaps]:
        """Working-size, smoothed blue and red + yellow maps for each (H, W, 4) image."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("images: expected a sequence of (H, W, 4) arrays, got a single array; wrap it in a list")
        return [predict_classic(image, self.params, i) for i, image in enumerate(images)]

    def settings(self) -> dict:
        return {"name": self.name, **asdict(self.params)}

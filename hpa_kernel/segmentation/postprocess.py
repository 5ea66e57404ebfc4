"""hpacellseg's post-processing, ``label_nuclei`` and ``label_cell``: the same output, faster.

The network outputs of HPA-Cell-Segmentation (``pred_nuclei``/``pred_cells``: (H, W, 3) uint8,
channel 1 the border class x255, channel 2 the interior class x255) are turned into label images
exactly as hpacellseg 0.1.8 does it, with every quirk of the original kept (see
``../shared/reference/segmentation/README.md``, section 3):

* the nuclei/cell border sum is computed in uint8 and wraps (a);
* the "exclude green" step of the first cell watershed masks nothing (b);
* the cell threshold is ``max(0.22, 0.5 * Otsu)``, Otsu on ``cell/255`` with 256 bins (c);
* cell labels are cast to uint8 after the first cell watershed, so labels wrap at 256 (d);
* ``label_nuclei`` compares the raw uint8 values with 0.15/0.4/0.05, i.e. with "> 0" (e);
* size thresholds are exclusive: objects of size < N are removed, holes of size < 1000 filled (f);
* the watershed "distance" is the cell interior plane itself (the clip is the identity) (g).

Where the time goes and what this module does instead (each step gives identical output):

* thresholds are evaluated once per uint8 value (a 256-entry lookup table) instead of on float64
  images;
* small-object and small-hole removal use one ``cv2.connectedComponentsWithStats`` pass and the
  component areas instead of labelling and a bincount over the image;
* the grey closing with a radius-6 disk and the boundary detection use OpenCV's erosion and
  dilation (for a symmetric disk the out-of-image pixels never change a result, as with
  scikit-image's ``reflect`` mode);
* hole filling labels the background once and keeps the components that touch the image edge;
* relabelling in raster order is done only where the numbering matters;
* each watershed runs on the bounding box of its mask. The watershed only ever visits pixels
  inside the mask and pushes the markers in raster order, and a bounding-box crop keeps the raster
  order of every pixel and the neighbour order, so the priority queue sees exactly the same
  sequence of operations;
* the cell watershed floods ``255 - interior`` as uint8 instead of ``-interior`` as float64 (the
  same order and the same ties).

The watershed is the kit's own copy of the 2021 algorithm (scikit-image 0.18 to 0.24, see
:mod:`hpa_kernel.segmentation.watershed`), so the label images equal the 2021 (hpacellseg era)
ones whatever scikit-image is installed; scikit-image 0.25 changed its watershed. It is still most
of the run time, and it cannot be cut down further without changing results: its priority queue
is a binary heap ordered by (value, age), and all markers enter it with age 0, so markers of
equal value leave it in an order that depends on every other item in the heap. Running it per
connected component, or without the markers that have no unlabelled neighbour, changes that
order, and with it which of two touching cells wins a contested pixel.
"""

from __future__ import annotations

import logging
import numpy as np

from hpa_kernel.segmentation.watershed import watershed

__all__ = ["label_cell", "label_nuclei", "skimage_version"]

logger = logging.getLogger(__name__)

# hpacellseg's constants
_NUCLEUS_THRESHOLD = 0.4
_SEED_ADJUSTMENT = -0.25
_BORDER_THRESHOLD = 0.05
_MIN_CELL_THRESHOLD = 0.22
_SEED_MIN_SIZE = 500
_NUCLEUS_MASK_MIN_SIZE = 8
_HOLE_AREA = 1000
_NUCLEUS_MIN_SIZE = 2500
_CELL_MIN_SIZE = 5500
_CLOSING_RADIUS = 6


# ----------------------------------------------------------------------------------------------
# scikit-image version


def skimage_version() -> str:
    """The installed scikit-image version string (recorded with results; the masks do not depend on it)."""
    import skimage

    return skimage.__version__


# ----------------------------------------------------------------------------------------------
# input checks


def _check_pred(name: str, pred: np.ndarray) -> None:
    if not isinstance(pred, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(pred).__name__}")
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3), got {pred.shape}")
    if pred.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (probabilities x255, as pred_nuclei/pred_cells return), got {pred.dtype}")
    if pred.shape[0] == 0 or pred.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty image, got shape {pred.shape}")


# ----------------------------------------------------------------------------------------------
# building blocks (each equal to the scikit-image/SciPy step it replaces)

_VALUES = np.arange(256, dtype=np.uint8)


def _above(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[plane]`` for a uint8 plane and a 256-entry bool table.

    The tables here are thresholds (False up to some value, True from there on), evaluated once per
    uint8 value with the original's float expression; such a table is one integer comparison.
    """
    first = int(np.argmax(table)) if table.any() else 256
    if table[first:].all():
        return plane >= first if first < 256 else np.zeros(plane.shape, dtype=bool)
    return table[plane]


def _components(mask: np.ndarray, connectivity: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Connected components of a bool/uint8 mask: (count including background, labels int32, areas)."""
    from hpa_kernel._cv2 import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask).view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S
    )
    return count, labels, stats[:, cv2.CC_STAT_AREA]


def _drop_small_mask(mask: np.ndarray, min_size: int, connectivity: int = 4) -> np.ndarray:
    """``remove_small_objects(bool_mask, min_size)``: drop components with fewer than min_size pixels."""
    count, labels, areas = _components(mask, connectivity)
    keep = areas >= min_size
    keep[0] = False
    if keep[1:].all():
        return mask.astype(bool, copy=True)
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, area: int) -> np.ndarray:
    """``remove_small_holes(mask, area)``: 4-connected background components smaller than area are filled.

    Like the original, background components that touch the image edge count as holes too.
    """
    count, labels, areas = _components(~mask, 4)
    fill = areas < area
    fill[0] = True  # label 0 is the foreground of ``mask``
    return fill[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)``: background not 4-connected to the image edge is filled."""
    from hpa_kernel._cv2 import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(~mask).view(np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    height, width = mask.shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    outside = (left == 0) | (top == 0) | (right == width) | (bottom == height)
    outside[0] = False  # label 0 is the foreground
    if outside[1:].all():
        return mask.copy()
    return ~outside[labels]


def _disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)`` as a uint8 kernel: offsets with dy^2 + dx^2 <= radius^2."""
    offsets = np.arange(-radius, radius + 1)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).astype(np.uint8)


def _label_boundaries(label: np.ndarray) -> np.ndarray:
    """``find_boundaries(label)`` (mode 'thick', connectivity 1): a 4-neighbour has another value.

    At the image edge the missing neighbour is ignored, which is what scikit-image's 'reflect'
    mode amounts to for a cross. Integer labels are taken to a dtype OpenCV can filter with
    their values unchanged.
    """
    from hpa_kernel._cv2 import cv2

    top = int(label.max()) if label.size else 0
    if label.dtype != np.uint8:
        if top <= np.iinfo(np.uint16).max and label.min() >= 0:
            label = label.astype(np.uint16)
        else:  # exact in float64 for any int32 label
            label = label.astype(np.float64)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(label, cross) != cv2.erode(label, cross)


def _cut_and_fill(label: np.ndarray) -> np.ndarray:
    """hpacellseg's ``__fill_holes`` without its final labelling: cut the boundaries, fill holes; bool mask."""
    cut = (label > 0) & ~_label_boundaries(label)
    return _fill_holes(cut)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _watershed_in_box(image, markers: np.ndarray, mask: np.ndarray, watershed_line: bool, out_dtype) -> np.ndarray:
    """The 2021 ``watershed(image, markers, mask=mask)`` computed on the mask's bounding box.

    ``image`` is a callable giving the image for a (rows, cols) box, so that only the box is built.
    """
    out = np.zeros(mask.shape, dtype=out_dtype)
    box = _bounding_box(mask)
    if box is None:
        return out
    seeds = markers[box].astype(out_dtype, copy=False)  # the output takes the markers' dtype
    out[box] = watershed(image(box), seeds, mask=mask[box], watershed_line=watershed_line)
    return out


def _drop_small_labels(label: np.ndarray, min_size: int) -> np.ndarray:
    """``remove_small_objects(int_labels, min_size)``: zero the labels with fewer than min_size pixels."""
    sizes = np.bincount(label.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return label
    lut = np.arange(sizes.size, dtype=label.dtype)
    lut[small] = 0
    return lut[label]


def _label_values(label: np.ndarray) -> np.ndarray:
    """``skimage.measure.label(label)``: 8-connected regions of equal non-zero value, raster order."""
    from skimage import measure

    box = _bounding_box(label > 0)
    out = np.zeros(label.shape, dtype=np.int64)
    if box is None:
        return out
    out[box] = measure.label(label[box])
    return out


def _otsu_of_uint8(plane: np.ndarray) -> float:
    """``skimage.filters.threshold_otsu(plane / 255)`` for a uint8 plane, from its 256-value histogram.

    Every pixel of one uint8 value falls in the same bin of the float histogram, so the histogram of
    the distinct values weighted by their counts is the image's histogram.
    """
    from skimage import filters

    counts = np.bincount(plane.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    values = present / 255
    if present.size == 1:
        return float(values[0])
    hist, edges = np.histogram(values, bins=256, weights=counts[present])
    centers = (edges[:-1] + edges[1:]) / 2.0
    return float(filters.threshold_otsu(hist=(hist, centers)))


# ----------------------------------------------------------------------------------------------
# public API


def label_nuclei(nuclei_pred: np.ndarray) -> np.ndarray:
    """Label the nuclei from a nuclei prediction alone (hpacellseg's ``label_nuclei``).

    Parameters
    ----------
    nuclei_pred : (H, W, 3) uint8 ndarray
        ``pred_nuclei`` output: channel 1 border x255, channel 2 interior x255.

    Returns
    -------
    (H, W) int64 ndarray
        Nuclei labels 1..n in raster order, 0 = background. Not comparable with the nuclei of
        :func:`label_cell`. As in the original the uint8 values are compared with 0.15, 0.4 and
        0.05 without scaling, so every threshold means "> 0".
    """
    from hpa_kernel._cv2 import cv2

    _check_pred("nuclei_pred", nuclei_pred)
    border, interior = nuclei_pred[..., 1], nuclei_pred[..., 2]

    # seeds: interior > 0.15 where border <= 0.05 (raw uint8 values), eroded with a cross
    seed_table = (_VALUES * (1 - (_VALUES > _BORDER_THRESHOLD).astype(np.uint8)[:, None])) > _NUCLEUS_THRESHOLD + _SEED_ADJUSTMENT
    seeds = seed_table[border, interior].view(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    seeds = cv2.erode(seeds, cross)  # out-of-image pixels count as set, like binary_erosion
    _, markers = cv2.connectedComponents(seeds, connectivity=8, ltype=cv2.CV_32S)

    mask = _fill_small_holes(_above(interior, _VALUES > _NUCLEUS_THRESHOLD), _HOLE_AREA)
    mask_u8 = mask.view(np.uint8)
    nuclei = _watershed_in_box(lambda box: mask_u8[box], markers, mask, True, np.int32)
    return _label_values(_drop_small_labels(nuclei, _NUCLEUS_MIN_SIZE))


def _nuclei_for_cells(nuclei_pred: np.ndarray, cell_pred: np.ndarray) -> np.ndarray:
    """The nuclei stage of ``label_cell``: seeded watershed with lines, size filter, raster labels."""
    interior = nuclei_pred[..., 2]
    border_sum = np.add(nuclei_pred[..., 1], cell_pred[..., 1], dtype=np.uint8)  # wraps (quirk a)
    not_border = 1 - _VALUES / 255.0 > _BORDER_THRESHOLD
    seed_table = _VALUES / 255 > _NUCLEUS_THRESHOLD + _SEED_ADJUSTMENT
    seeds = _above(border_sum, not_border) & _above(interior, seed_table)
    count, seed_labels, areas = _components(seeds, 4)
    keep = areas >= _SEED_MIN_SIZE
    keep[0] = False
    markers = (np.arange(count, dtype=np.int32) * keep)[seed_labels]

    mask = _fill_small_holes(_above(interior, _VALUES / 255.0 > _NUCLEUS_THRESHOLD), _HOLE_AREA)
    mask = _drop_small_mask(mask, _NUCLEUS_MASK_MIN_SIZE)
    mask_u8 = mask.view(np.uint8)
    nuclei = _watershed_in_box(lambda box: mask_u8[box], markers, mask, True, np.int32)
    return _label_values(_drop_small_labels(nuclei, _NUCLEUS_MIN_SIZE))


def label_cell(nuclei_pred: np.ndarray, cell_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label cells and their nuclei (hpacellseg's ``label_cell``), identical output, faster.

    Parameters
    ----------
    nuclei_pred, cell_pred : (H, W, 3) uint8 ndarray
        ``pred_nuclei`` and ``pred_cells`` outputs of the same image: channel 1 border x255,
        channel 2 interior x255.

    Returns
    -------
    nuclei_label, cell_label : (H, W) uint16 ndarray
        Cell labels 1..n in raster order (0 = background); a nucleus carries the label of its cell.

    Notes
    -----
    Equal to hpacellseg 0.1.8 with scikit-image 0.18 to 0.24 (the 2021 masks), numbering and dtype
    included, whatever scikit-image is installed: the watershed is the kit's own
    (:mod:`hpa_kernel.segmentation.watershed`).
    """
    from hpa_kernel._cv2 import cv2

    _check_pred("nuclei_pred", nuclei_pred)
    _check_pred("cell_pred", cell_pred)
    if nuclei_pred.shape != cell_pred.shape:
        raise ValueError(f"cell_pred: expected the shape of nuclei_pred {nuclei_pred.shape}, got {cell_pred.shape}")

    nuclei = _nuclei_for_cells(nuclei_pred, cell_pred)

    cell_border, cell_interior = cell_pred[..., 1], cell_pred[..., 2]
    threshold = max(_MIN_CELL_THRESHOLD, _otsu_of_uint8(cell_interior) * 0.5)
    region = _above(cell_interior, _VALUES / 255 > threshold)  # the border term masks nothing (quirk b)

    def distance(box):  # -clip(cell, 255 t, cell) == -cell (quirk g); 255 - cell has its order and ties
        return 255 - cell_interior[box]

    cells = _watershed_in_box(distance, nuclei, region, False, np.int32)
    cells = _drop_small_labels(cells, _CELL_MIN_SIZE).astype(np.uint8)  # labels wrap at 256 (quirk d)
    disk = _disk(_CLOSING_RADIUS)
    cells = cv2.erode(cv2.dilate(cells, disk), disk)
    filled = _cut_and_fill(cells)
    _, markers = cv2.connectedComponents(filled.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)

    grow = (markers > 0) | _above(cell_border, _VALUES / 255 > _BORDER_THRESHOLD)
    cells = _watershed_in_box(distance, markers, grow, False, np.int32)
    filled = _cut_and_fill(cells)

    # 8-connected components of at least _CELL_MIN_SIZE pixels, numbered in raster order
    from scipy import ndimage as ndi

    components, count = ndi.label(filled, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    keep = sizes >= _CELL_MIN_SIZE
    keep[0] = False
    lut = (np.cumsum(keep) * keep).astype(np.uint16)
    cell_label = lut[components]

    inside = (cell_label > 0) & (nuclei > 0)
    kept = _drop_small_mask(inside, _NUCLEUS_MIN_SIZE, connectivity=8)
    nuclei_label = cell_label * kept
    return nuclei_label, cell_label

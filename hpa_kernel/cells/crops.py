"""Square, fixed-size, 4-channel crops of single cells, in two named modes (:data:`CROP_MODES`).

For each cell the bounding box (plus an optional margin) is padded to a square around its centre
(the odd pixel goes right/bottom), so the aspect ratio is kept; pixels of other cells and of the
background are zeroed; parts of the square outside the image (cells at the border) are zero. Then:

``"milimed2021"`` (the 4th-place team's test crop, ``HPAsubmission.ipynb`` In[8], In[15])
    8-bit images are first made 16-bit (x257); the **uint16** square is resized to S x S by
    ``cv2.resize`` with its default ``INTER_LINEAR``, shrinking and enlarging alike, and nothing
    is re-masked afterwards (the cell's edge stays soft). The crops are uint16; the classifier
    divides them by 65535.
``"kit2025"`` (the kit's crop before the recipe existed)
    16-bit images are converted to 8 bits by ``round(x / 257)`` (:func:`to_uint8`) first; the
    square is resized with ``cv2.INTER_AREA`` when shrinking and ``cv2.INTER_LINEAR`` when
    enlarging; the mask is applied again after the resize (resized by the same interpolation and
    thresholded at 0.5), so that the crop's support is exactly that resized mask. The crops are
    uint8; the classifier divides them by 255.

A uint8 value ``v`` is ``257 v / 65535 = v / 255`` either way, so both modes give the network the
same [0, 1] scale.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = [
    "CROP_MODES", "CROP_SCALE", "DEFAULT_CROP_MODE", "crop_dtype", "to_uint8", "to_uint16", "unit_scale", "square_window",
    "TRAIN_CROP_MARGIN", "milimed_train_window", "milimed_train_crop", "crop_cell", "crop_cells", "cell_boxes",
]

logger = logging.getLogger(__name__)

#: The crop modes: the team's 16-bit crop and the kit's 8-bit one (see the module docstring).
CROP_MODES: tuple[str, ...] = ("milimed2021", "kit2025")
#: The mode of :func:`crop_cells` and of :class:`~hpa_kernel.cells.config.CellConfig` when none is
#: named: the kit's, whose uint8 crops the training set's 8-bit PNGs hold. Inference takes the
#: recipe's mode (:attr:`hpa_kernel.recipe.InferenceRecipe.crop`).
DEFAULT_CROP_MODE = "kit2025"


def crop_dtype(mode: str) -> np.dtype:
    """The dtype of the crops of ``mode``: uint16 for ``"milimed2021"``, uint8 for ``"kit2025"``.

    >>> crop_dtype("milimed2021"), crop_dtype("kit2025")
    (dtype('uint16'), dtype('uint8'))
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    return np.dtype(np.uint16 if mode == "milimed2021" else np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Convert uint8/uint16 pixels to uint8: uint8 unchanged, uint16 as ``round(x / 257)``.

    >>> to_uint8(np.array([0, 256, 257, 65535], dtype=np.uint16)).tolist()
    [0, 1, 1, 255]
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ValueError(f"image dtype must be uint8 or uint16, got {image.dtype}")


#: Crop dtype -> the divisor that maps it to [0, 1]: uint8 / 255 (the kit's crop), uint16 / 65535 (the
#: team's; an 8-bit file was x257 first, so ``v`` -> ``v / 255`` either way).
CROP_SCALE: dict[np.dtype, float] = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Convert uint8/uint16 pixels to uint16: uint16 unchanged, uint8 as ``x * 257`` (the team's rule).

    >>> to_uint16(np.array([0, 1, 255], dtype=np.uint8)).tolist()
    [0, 257, 65535]
    """
    if image.dtype == np.uint16:
        return image
    if image.dtype == np.uint8:
        return image.astype(np.uint16) * np.uint16(257)
    raise ValueError(f"image dtype must be uint8 or uint16, got {image.dtype}")


def unit_scale(array: np.ndarray) -> np.ndarray:
    """uint8 or uint16 pixels as float32 in [0, 1]: uint8 / 255, uint16 / 65535.

    >>> unit_scale(np.array([0, 255], np.uint8)).tolist(), unit_scale(np.array([65535], np.uint16)).tolist()
    ([0.0, 1.0], [1.0])
    """
    array = np.asarray(array)
    if array.dtype not in CROP_SCALE:
        raise ValueError(f"array dtype must be uint8 or uint16, got {array.dtype}")
    return array.astype(np.float32) / np.float32(CROP_SCALE[array.dtype])


def cell_boxes(cell_label: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Bounding boxes ``{cell id: (y0, x0, y1, x1)}`` (end exclusive) of the non-zero labels.

    >>> cell_boxes(np.array([[0, 2], [0, 2]]))
    {2: (0, 1, 2, 2)}
    """
    from scipy import ndimage as ndi

    boxes = {}
    for index, slices in enumerate(ndi.find_objects(np.asarray(cell_label)), start=1):
        if slices is not None:
            boxes[index] = (slices[0].start, slices[1].start, slices[0].stop, slices[1].stop)
    return boxes


def square_window(box: tuple[int, int, int, int], margin: int = 0) -> tuple[int, int, int]:
    """The square ``(top, left, side)`` around a box grown by ``margin``, centred on it.

    The square may extend beyond the image; that part of a crop is zero.

    >>> square_window((10, 20, 14, 30))
    (7, 20, 10)
    """
    y0, x0, y1, x1 = box
    y0, x0, y1, x1 = y0 - margin, x0 - margin, y1 + margin, x1 + margin
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    return y0 - (side - h) // 2, x0 - (side - w) // 2, side


#: Pixels the team's training crop adds on each side of the squared box (``image_cutter.py``).
TRAIN_CROP_MARGIN = 16


def _centred_split(total: int) -> tuple[int, int]:
    """``total`` split into (before, after) with the odd pixel after."""
    return total // 2, total - total // 2


def milimed_train_window(box: tuple[int, int, int, int], shape: tuple[int, int],
                         margin: int = TRAIN_CROP_MARGIN) -> tuple[int, int, int, int]:
    """The image window ``(y0, x0, y1, x1)`` (end exclusive) of the team's training crop.

    The short side of the cell's box is grown to the long one (the odd pixel goes right/bottom),
    then ``margin`` is added on every side and the window is clipped to the image (so at the
    border it is no longer square).

    >>> milimed_train_window((10, 20, 14, 30), (100, 100), margin=2)
    (5, 18, 19, 32)
    >>> milimed_train_window((0, 0, 4, 4), (100, 100), margin=2)
    (0, 0, 6, 6)
    """
    y0, x0, y1, x1 = box
    height, width = shape
    before, after = _centred_split(abs((y1 - y0) - (x1 - x0)))
    if y1 - y0 > x1 - x0:
        x0, x1 = x0 - before, x1 + after
    else:
        y0, y1 = y0 - before, y1 + after
    return max(y0 - margin, 0), max(x0 - margin, 0), min(y1 + margin, height), min(x1 + margin, width)


def milimed_train_crop(image: np.ndarray, cell_label: np.ndarray, cell_id: int, box: tuple[int, int, int, int],
                       size: int = 512, margin: int = TRAIN_CROP_MARGIN) -> np.ndarray:
    """The team's training crop of one cell (``image_cutter.py``): (size, size, C) uint16.

    The window of :func:`milimed_train_window`; pixels of OTHER cells are zeroed, the background
    and the cell are kept; the (clipped) window is zero-padded to a centred square (odd pixel
    right/bottom) and resized to ``size`` with ``cv2.INTER_LINEAR``. 8-bit images are scaled to
    16 bits (x257) first, as the team did, and the crop stays 16-bit.
    """
    from hpa_kernel._cv2 import cv2

    image = to_uint16(np.asarray(image))
    y0, x0, y1, x1 = milimed_train_window(box, cell_label.shape, margin)
    labels = cell_label[y0:y1, x0:x1]
    other = (labels != 0) & (labels != cell_id)
    window = np.where(other[:, :, None], np.uint16(0), image[y0:y1, x0:x1])
    rows, cols = window.shape[:2]
    before, after = _centred_split(abs(rows - cols))
    pads = ((0, 0), (before, after)) if rows > cols else ((before, after), (0, 0))
    square = np.pad(window, pads + ((0, 0),))
    crop = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
    return crop[:, :, None] if crop.ndim == 2 else crop


def crop_cell(
    image: np.ndarray,
    cell_label: np.ndarray,
    cell_id: int,
    box: tuple[int, int, int, int],
    size: int = 512,
    margin: int = 0,
    mode: str = DEFAULT_CROP_MODE,
) -> np.ndarray:
    """The (size, size, C) crop of one cell in ``mode``; see the module docstring. Inputs are trusted."""
    from hpa_kernel._cv2 import cv2

    top, left, side = square_window(box, margin)
    height, width = cell_label.shape
    # Intersection of the square with the image, in image and in square coordinates.
    iy0, ix0 = max(top, 0), max(left, 0)
    iy1, ix1 = min(top + side, height), min(left + side, width)
    team = mode == "milimed2021"
    convert = to_uint16 if team else to_uint8
    canvas = np.zeros((side, side, image.shape[2]), np.uint16 if team else np.uint8)
    inside = cell_label[iy0:iy1, ix0:ix1] == cell_id
    rows, cols = slice(iy0 - top, iy1 - top), slice(ix0 - left, ix1 - left)
    # pixels of the cell, zero elsewhere: a product with the mask (no gather/scatter by index)
    np.multiply(convert(image[iy0:iy1, ix0:ix1]), inside[:, :, None], out=canvas[rows, cols])
    if side == size:
        return canvas
    if team:  # cv2's default INTER_LINEAR on the 16-bit square, no re-masking
        return _channels_kept(cv2.resize(canvas, (size, size)))
    mask = np.zeros((side, side), np.float32)
    mask[rows, cols] = inside
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = _channels_kept(cv2.resize(canvas, (size, size), interpolation=interpolation))
    support = cv2.resize(mask, (size, size), interpolation=interpolation) > 0.5
    np.multiply(crop, support[:, :, None], out=crop)
    return crop


def _channels_kept(crop: np.ndarray) -> np.ndarray:
    """``cv2.resize`` drops a single channel axis; put it back."""
    return crop[:, :, None] if crop.ndim == 2 else crop


def crop_cells(
    image: np.ndarray,
    cell_label: np.ndarray,
    cell_ids=None,
    size: int = 512,
    margin: int = 0,
    boxes: dict[int, tuple[int, int, int, int]] | None = None,
    mode: str = DEFAULT_CROP_MODE,
) -> np.ndarray:
    """Crops of the cells of a label image, in the order of ``cell_ids``.

    Parameters
    ----------
    image : ndarray, shape (H, W, C)
        uint8 or uint16 (converted by :func:`to_uint16` or :func:`to_uint8`, by ``mode``); C = 4
        for R, G, B, Y.
    cell_label : ndarray, shape (H, W)
        Integer label image, 0 = background.
    cell_ids : sequence of int, optional
        Which cells, in which order; default: every label present, ascending.
    size : int
        Side of the square output crops.
    margin : int
        Pixels added around each bounding box before squaring.
    boxes : dict, optional
        Precomputed :func:`cell_boxes`.
    mode : {"milimed2021", "kit2025"}
        The crop (:data:`CROP_MODES`, module docstring); default the kit's.

    Returns
    -------
    crops : ndarray, shape (N, size, size, C)
        uint16 for ``"milimed2021"``, uint8 for ``"kit2025"`` (:func:`crop_dtype`). Zero away from
        each cell (``"kit2025"``: exactly outside its resized mask).

    Examples
    --------
    >>> label = np.zeros((8, 8), np.int32); label[2:4, 1:7] = 1
    >>> image = np.full((8, 8, 4), 200, np.uint8)
    >>> crops = crop_cells(image, label, size=6)
    >>> crops.shape, int((crops[0, :, :, 0] > 0).sum())
    ((1, 6, 6, 4), 12)
    >>> team = crop_cells(image, label, size=6, mode="milimed2021")
    >>> team.dtype.name, int(team[0, 2, 2, 0])
    ('uint16', 51400)
    """
    image = np.asarray(image)
    cell_label = np.asarray(cell_label)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (H, W, C), got {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image dtype must be uint8 or uint16, got {image.dtype}")
    if cell_label.shape != image.shape[:2]:
        raise ValueError(f"cell_label must have shape {image.shape[:2]} like the image, got {cell_label.shape}")
    if not np.issubdtype(cell_label.dtype, np.integer):
        raise ValueError(f"cell_label must be an integer label image, got dtype {cell_label.dtype}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    dtype = crop_dtype(mode)
    if boxes is None:
        boxes = cell_boxes(cell_label)
    if cell_ids is None:
        cell_ids = sorted(boxes)
    missing = [int(c) for c in cell_ids if int(c) not in boxes]
    if missing:
        raise ValueError(f"cell_ids {missing[:5]} are not labels of cell_label")
    crops = np.zeros((len(cell_ids), size, size, image.shape[2]), dtype)
    for k, cell_id in enumerate(cell_ids):
        crops[k] = crop_cell(image, cell_label, int(cell_id), boxes[int(cell_id)], size, margin, mode)
    return crops

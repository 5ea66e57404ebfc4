"""The 2021 seeded watershed (scikit-image 0.18 to 0.24), owned by the kit and compiled with numba.

hpacellseg's ``label_cell``/``label_nuclei`` call ``skimage.segmentation.watershed(image, markers,
mask=mask[, watershed_line=True])`` with connectivity 1 and no compactness. scikit-image 0.25 changed
that algorithm, so the 2021 label images cannot be had from a current scikit-image. This module is
the same algorithm, step for step, so that the masks no longer depend on the installed version:

* a binary min-heap of items (value, age, index, source), ordered by value and then by age
  (``smaller``), with the same sift-up on push and the same sift-down on pop (the last item moves
  to the root; a child replaces its parent only when strictly smaller);
* the markers (the non-zero pixels of ``markers`` inside ``mask``) are pushed first, in raveled
  order, with their own image value and age 0; later pushes get ages 2, 3, ...;
* neighbours are visited in the order up, left, right, down (the raveled offsets sorted by
  distance), and pixels outside the image count as outside the mask;
* without watershed lines a pixel is labelled when it is pushed; with them it is labelled when it
  is popped, unless two of its in-mask neighbours carry different labels, in which case it leaves
  the mask and stays 0.

Items with equal value and age are only markers (every later push has its own age), and their pop
order depends on the whole history of the heap, so nothing here may reorder a push or a pop.
"""

from __future__ import annotations

import logging

import numpy as np
from numba import njit

__all__ = ["watershed", "DESCRIPTION"]

#: What the runtime line of ``submit`` says about the watershed.
DESCRIPTION = "faithful (the kit's own copy of the 2021 algorithm; the installed scikit-image is not used)"

logger = logging.getLogger(__name__)

# image dtypes used as flooding levels as they are (a level times 2**32 fits in an int64)
_DIRECT_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32)}


_AGE_BITS = 32
_INDEX_MASK = (1 << 32) - 1


@njit(cache=True)
def _grow(array, size):
    bigger = np.empty((size, 2), dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


@njit(cache=True, inline="always")
def _push(heap, items, key, payload):
    """heappush: the new item goes last, then changes place with its parent while strictly smaller.

    The parents are moved down into the hole and the item is written once at the end; that is the
    same sequence of comparisons and the same final layout as the original's pointer swaps. The
    caller makes room first.
    """
    child = items
    while child > 0:
        parent = (child - 1) >> 1
        if key >= heap[parent, 0]:
            break
        heap[child, 0], heap[child, 1] = heap[parent, 0], heap[parent, 1]
        child = parent
    heap[child, 0], heap[child, 1] = key, payload
    return items + 1


@njit(cache=True, inline="always")
def _pop(heap, items):
    """heappop without returning the root: the last item goes to the root and sifts down; returns the count.

    At each level the smaller child (the left one on a tie) moves up when it is strictly smaller
    than the sifting item, as in the original.
    """
    items -= 1
    if items == 0:
        return items
    key, payload = heap[items, 0], heap[items, 1]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= items:
            break
        smallest = left if heap[left, 0] < key else i
        right = left + 1
        if right < items:
            if heap[right, 0] < (key if smallest == i else heap[left, 0]):
                smallest = right
        if smallest == i:
            break
        heap[i, 0], heap[i, 1] = heap[smallest, 0], heap[smallest, 1]
        i = smallest
    heap[i, 0], heap[i, 1] = key, payload
    return items


@njit(cache=True)
def _diff_neighbors(output, inside, index, row, col, width, height):
    """The 2021 ``_diff_neighbors``: True (and ``index`` leaves the mask) when two in-mask neighbours differ.

    As in the original, the first in-mask neighbour's label is kept as the reference while it is
    0, and each later in-mask neighbour with a non-zero label different from it counts.
    """
    if not inside[index]:
        return True
    label0 = output[index] * 0
    for k in range(4):
        if k == 0:
            neighbor = index - width if row > 0 else -1
        elif k == 1:
            neighbor = index - 1 if col > 0 else -1
        elif k == 2:
            neighbor = index + 1 if col < width - 1 else -1
        else:
            neighbor = index + width if row < height - 1 else -1
        if neighbor < 0 or not inside[neighbor]:
            continue
        if not label0:
            label0 = output[neighbor]
        else:
            label1 = output[neighbor]
            if label1 and label1 != label0:
                inside[index] = False
                return True
    return False


@njit(cache=True)
def _flood(levels, output, inside, width, wsl):
    """The 2021 ``watershed_raveled`` on a raveled image without padding; ``output`` holds the markers.

    ``levels`` are integers in the order of the image values (equal where they are equal). A heap
    item's key is ``level << 32 | age``, so comparing keys is the original's ``smaller`` (value,
    then age); its payload is ``source << 32 | index``; row i of ``heap`` holds (key, payload), so
    that a node is one cache line. Neighbours are taken in the order up, left, right, down; a
    neighbour outside the image is skipped like the original's zero padding.
    """
    n = levels.size
    height = n // width
    capacity = 4096
    heap = np.empty((capacity, 2), dtype=np.int64)
    items = 0
    for index in range(n):  # the markers, in raveled order, with age 0
        if output[index]:
            if items == capacity:
                capacity *= 2
                heap = _grow(heap, capacity)
            key = np.int64(levels[index]) << _AGE_BITS
            items = _push(heap, items, key, (np.int64(index) << 32) | index)
    age = np.int64(1)
    while items > 0:
        if items + 4 > capacity:  # room for the pushes of this pop
            capacity *= 2
            heap = _grow(heap, capacity)
        payload = heap[0, 1]
        items = _pop(heap, items)
        index = payload & _INDEX_MASK
        source = payload >> 32
        row = index // width
        col = index - row * width
        if wsl:
            if output[index] and index != source:
                continue  # already labelled from another neighbour
            if _diff_neighbors(output, inside, index, row, col, width, height):
                continue
            output[index] = output[source]
        for k in range(4):
            if k == 0:
                if row == 0:
                    continue
                neighbor = index - width
            elif k == 1:
                if col == 0:
                    continue
                neighbor = index - 1
            elif k == 2:
                if col == width - 1:
                    continue
                neighbor = index + 1
            else:
                if row == height - 1:
                    continue
                neighbor = index + width
            if not inside[neighbor] or output[neighbor]:
                continue
            age += 1
            if not wsl:
                output[neighbor] = output[index]
            key = (np.int64(levels[neighbor]) << _AGE_BITS) | (age & _INDEX_MASK)
            items = _push(heap, items, key, (source << 32) | neighbor)
    return output


def _levels(image: np.ndarray) -> np.ndarray:
    """Integers in the order of ``image``'s values (as float64), equal exactly where the values are.

    Images of at most 16-bit integers are used as they are; others are replaced by the rank of
    their float64 value among the image's distinct values.
    """
    if image.dtype == bool:
        return image.view(np.uint8)
    if image.dtype in _DIRECT_DTYPES:
        return image
    values = image.astype(np.float64, copy=False)
    if np.isnan(values).any():
        raise ValueError("image: expected no NaN values (the flooding order of NaN is undefined)")
    _, ranks = np.unique(values, return_inverse=True)
    return ranks.reshape(image.shape).astype(np.int32)


def _check(image: np.ndarray, markers: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim != 2:
        raise ValueError(f"image: expected a 2-D array, got {image.ndim} dimensions (shape {image.shape})")
    if markers.shape != image.shape:
        raise ValueError(f"markers: expected the shape of image {image.shape}, got {markers.shape}")
    if not (np.issubdtype(markers.dtype, np.integer) or markers.dtype == bool):
        raise ValueError(f"markers: expected an integer label array, got dtype {markers.dtype}")
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask: expected the shape of image {image.shape}, got {mask.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise ValueError(f"image: expected a real numeric array, got dtype {image.dtype}")
    if image.size >= 2**31:
        raise ValueError(f"image: expected fewer than 2**31 pixels, got {image.size}")


def watershed(
    image: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None, *, watershed_line: bool = False
) -> np.ndarray:
    """Seeded watershed, equal to ``skimage.segmentation.watershed`` of scikit-image 0.18 to 0.24.

    Connectivity 1 (4-neighbours) and no compactness, as hpacellseg calls it.

    Parameters
    ----------
    image : (H, W) ndarray
        The relief; lower values are flooded first. Compared as float64, as the original does.
    markers : (H, W) ndarray of int
        Seed labels, 0 = no seed. Only seeds inside ``mask`` count.
    mask : (H, W) ndarray of bool, optional
        Pixels that may be labelled; everything when omitted.
    watershed_line : bool, optional
        Keep a one-pixel line of 0 between basins (pixels with two differently labelled neighbours).

    Returns
    -------
    (H, W) ndarray
        Labels, of the dtype of ``markers``.

    Examples
    --------
    >>> image = np.array([[0, 1, 2, 1, 0]], dtype=np.uint8)
    >>> watershed(image, np.array([[1, 0, 0, 0, 2]]))
    array([[1, 1, 1, 2, 2]])
    """
    image, markers = np.asarray(image), np.asarray(markers)
    _check(image, markers, mask)
    if mask is None:
        inside = np.ones(image.shape, dtype=np.bool_)
        output = np.array(markers, copy=True, order="C")
    else:
        inside = np.array(mask, dtype=np.bool_, copy=True, order="C")
        output = markers * inside
    if output.dtype == bool:
        output = output.astype(np.uint8)
    if image.size == 0:
        return output
    levels = np.ascontiguousarray(_levels(image))
    flat = _flood(levels.ravel(), output.ravel(), inside.ravel(), image.shape[1], bool(watershed_line))
    return flat.reshape(image.shape)

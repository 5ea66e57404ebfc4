"""A plain, step-by-step port of hpacellseg 0.1.8's ``label_nuclei`` and ``label_cell``.

This is the correctness oracle for the fast implementation in
:mod:`hpa_kernel.segmentation.postprocess`. It performs the same sequence of operations as the
original (same thresholds, same connectivities, same dtypes, the same uint8 overflow and label
wrap), using scikit-image and SciPy for each step, with no attempt at speed. Small-object and
small-hole removal are written out here with the exclusive ``size < N`` rule of scikit-image
<= 0.25 so that the oracle behaves the same on every scikit-image version. The watershed is
scikit-image's where that is the 2021 algorithm (scikit-image < 0.25, as hpacellseg ran it);
with a newer scikit-image it is the kit's copy of the 2021 algorithm, which is itself checked
against scikit-image 0.24 in ``tests/test_watershed.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
import skimage
from skimage import filters, measure, morphology

if tuple(int(part) for part in skimage.__version__.split(".")[:2]) < (0, 25):
    from skimage.segmentation import watershed as _watershed
else:  # the 2021 algorithm is gone from scikit-image
    from hpa_kernel.segmentation.watershed import watershed as _watershed

__all__ = ["oracle_label_nuclei", "oracle_label_cell"]

_CROSS = ndi.generate_binary_structure(2, 1)


def _drop_small(array: np.ndarray, min_size: int) -> np.ndarray:
    """``remove_small_objects(array, min_size)`` as in scikit-image <= 0.25.

    A bool array is labelled with 4-connectivity first; an integer array is taken as labels.
    Objects with fewer than ``min_size`` pixels are set to 0.
    """
    out = array.copy()
    if out.dtype == bool:
        components = np.zeros(array.shape, dtype=np.int32)
        ndi.label(array, _CROSS, output=components)
    else:
        components = out
    sizes = np.bincount(components.ravel())
    out[(sizes < min_size)[components]] = 0
    return out


def _fill_small_holes(mask: np.ndarray, area: int) -> np.ndarray:
    """``remove_small_holes(mask, area)``: background components (4-connected) smaller than ``area`` become foreground."""
    return ~_drop_small(~mask.astype(bool), area)


def _grey_morphology(label: np.ndarray, footprint: np.ndarray, kind: str) -> np.ndarray:
    """Grey dilation or erosion with scikit-image's defaults (mode 'reflect')."""
    if kind == "dilation":
        return ndi.grey_dilation(label, footprint=footprint[::-1, ::-1], mode="reflect")
    return ndi.grey_erosion(label, footprint=footprint, mode="reflect")


def _fill_label_holes(label: np.ndarray) -> np.ndarray:
    """The original's inner ``__fill_holes``: cut thick boundaries, fill holes, relabel (4-connected)."""
    boundaries = _grey_morphology(label, _CROSS, "dilation") != _grey_morphology(label, _CROSS, "erosion")
    cut = np.multiply(label, np.invert(boundaries))
    filled = ndi.binary_fill_holes(cut > 0)
    return ndi.label(filled)[0]


def oracle_label_nuclei(nuclei_pred: np.ndarray) -> np.ndarray:
    """hpacellseg's ``label_nuclei``; returns int64 labels."""
    border = (nuclei_pred[..., 1] > 0.05).astype(np.uint8)
    interior = nuclei_pred[..., 2]
    weighted = interior * (1 - border)  # uint8 arithmetic, as in the original
    seeds = np.copy(interior)
    seeds[weighted <= 0.4 - 0.25] = 0
    seeds[weighted > 0.4 - 0.25] = 1
    seeds = ndi.binary_erosion(seeds.astype(bool), structure=_CROSS, border_value=1)
    markers = measure.label(seeds.astype(np.uint8)).astype(np.uint32)

    mask = np.copy(interior)
    mask[mask <= 0.4] = 0
    mask[mask > 0.4] = 1
    mask = _fill_small_holes(mask.astype(bool), 1000).astype(np.uint8)
    nuclei = _watershed(mask, markers, mask=mask, watershed_line=True)
    nuclei = _drop_small(nuclei, 2500)
    return measure.label(nuclei)


def _seeded_split(prob, threshold, border_ok, seed_prob, adjustment, seed_min_size):
    """The original's inner ``__wsh`` (nuclei watershed with watershed lines)."""
    seeds = np.copy(prob)
    weighted = seed_prob * border_ok
    seeds[weighted <= threshold + adjustment] = 0
    seeds[weighted > threshold + adjustment] = 1
    seeds = _drop_small(seeds.astype(bool), seed_min_size).astype(np.uint8)

    prob = np.copy(prob)
    prob[prob <= threshold] = 0
    prob[prob > threshold] = 1
    mask = _fill_small_holes(prob.astype(bool), 1000)
    mask = _drop_small(mask, 8).astype(np.uint8)
    markers = ndi.label(seeds, output=np.uint32)[0]
    return _watershed(mask, markers, mask=mask, watershed_line=True)


def oracle_label_cell(nuclei_pred: np.ndarray, cell_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """hpacellseg's ``label_cell``; returns (nuclei_label, cell_label), both uint16."""
    nuclei = _seeded_split(
        nuclei_pred[..., 2] / 255.0,
        0.4,
        1 - (nuclei_pred[..., 1] + cell_pred[..., 1]) / 255.0 > 0.05,  # uint8 sum wraps (quirk a)
        nuclei_pred[..., 2] / 255,
        -0.25,
        500,
    )
    nuclei = _drop_small(nuclei, 2500)
    nuclei = measure.label(nuclei)

    threshold = max(0.22, filters.threshold_otsu(cell_pred[..., 2] / 255) * 0.5)
    # quirk b: NOT of an int8 0/1 array is -1/-2, never 0, so the border term never masks anything
    region = np.multiply(
        cell_pred[..., 2] / 255 > threshold,
        np.invert(np.asarray(cell_pred[..., 1] / 255 > 0.05, dtype=np.int8)),
    )
    region = np.asarray(region, dtype=np.int8)
    distance = np.clip(cell_pred[..., 2], 255 * threshold, cell_pred[..., 2])
    cells = _watershed(-distance, nuclei, mask=region)
    cells = _drop_small(cells, 5500).astype(np.uint8)  # labels wrap at 256 (quirk d)
    cells = _grey_morphology(cells, morphology.disk(6), "dilation")
    cells = _grey_morphology(cells, morphology.disk(6), "erosion")
    cells = _fill_label_holes(cells)

    grow = np.asarray(
        np.add(np.asarray(cells > 0, dtype=np.int8), np.asarray(cell_pred[..., 1] / 255 > 0.05, dtype=np.int8)) > 0,
        dtype=np.int8,
    )
    cells = _watershed(-distance, cells, mask=grow)
    cells = _fill_label_holes(cells)
    cells = measure.label(np.asarray(cells > 0, dtype=np.uint8))
    cells = _drop_small(cells, 5500)
    cells = np.asarray(measure.label(cells), dtype=np.uint16)

    kept = measure.label(np.multiply(cells > 0, nuclei) > 0)
    kept = _drop_small(kept, 2500)
    return np.multiply(cells, kept > 0), cells

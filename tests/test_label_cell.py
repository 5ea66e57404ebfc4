"""label_cell / label_nuclei: equal to hpacellseg 0.1.8 on the shared reference cases and to the oracle port.

The outputs must equal the ``*_ws_pre025`` arrays (the 2021 watershed) whatever scikit-image is
installed; ``test_watershed.py`` runs them under scikit-image 0.25+ too (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from hpa_kernel.segmentation import postprocess
from hpa_kernel.segmentation.postprocess import label_cell, label_nuclei
from oracle_label_cell import oracle_label_cell, oracle_label_nuclei

CASES = ["01", "02", "03", "04", "05", "06"]
SUFFIX = "_ws_pre025"  # the 2021 watershed's arrays; the plain ones were made with scikit-image 0.26


def _case(reference, case):
    with np.load(reference / "segmentation" / f"label_cell_case{case}.npz") as data:
        return {key: data[key] for key in data.files}


def _assert_same(found: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert found.dtype == expected.dtype, f"{what}: dtype {found.dtype}, expected {expected.dtype}"
    assert found.shape == expected.shape, f"{what}: shape {found.shape}, expected {expected.shape}"
    differ = int(np.count_nonzero(found != expected))
    assert differ == 0, f"{what}: {differ} pixels differ"


def synthetic_preds(seed: int, size: int = 384, n_cells: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Fake pred_nuclei/pred_cells outputs: touching elliptical cells, nuclei, noise, debris."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    cells = np.zeros((size, size), dtype=np.int32)
    nuclei = np.zeros((size, size), dtype=bool)
    for k in range(1, n_cells + 1):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(35, 80, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(angle) + dx * np.sin(angle), -dy * np.sin(angle) + dx * np.cos(angle)
        inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1 + 0.1 * np.sin(5 * np.arctan2(u, v))
        cells[inside & (cells == 0)] = k
        if rng.random() < 0.85:  # some cells have no nucleus
            nuclei |= inside & ((u / (0.45 * ry)) ** 2 + (v / (0.45 * rx)) ** 2 <= 1)
    for _ in range(6):  # debris
        cy, cx = rng.uniform(0, size, 2)
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2, 12) ** 2
    edges = ndi.morphological_gradient(cells, size=3) > 0

    def plane(x, sigma, noise):
        x = ndi.gaussian_filter(x.astype(np.float64), sigma) + rng.normal(0, noise, x.shape)
        return np.clip(np.rint(255 * x), 0, 255).astype(np.uint8)

    nuclei_pred = np.zeros((size, size, 3), dtype=np.uint8)
    cell_pred = np.zeros((size, size, 3), dtype=np.uint8)
    nuclei_edges = ndi.morphological_gradient(nuclei.astype(np.uint8), size=3) > 0
    nuclei_pred[..., 1] = plane(nuclei_edges, 1.5, 0.03)
    nuclei_pred[..., 2] = plane(nuclei & ~nuclei_edges, 2.0, 0.05)
    cell_pred[..., 1] = plane(edges, 1.5, 0.03)
    cell_pred[..., 2] = plane((cells > 0) & ~edges, 2.5, 0.08)
    return nuclei_pred, cell_pred


# --- the reference cases ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_equals_reference(reference, case):
    data = _case(reference, case)
    nuclei, cells = label_cell(data["nuclei_pred"], data["cell_pred"])
    _assert_same(cells, data["cell_label" + SUFFIX], f"case {case} cell_label")
    _assert_same(nuclei, data["nuclei_label" + SUFFIX], f"case {case} nuclei_label")
    _assert_same(label_nuclei(data["nuclei_pred"]), data["label_nuclei" + SUFFIX], f"case {case} label_nuclei")
    inside = nuclei > 0
    assert inside.any() and np.array_equal(nuclei[inside], cells[inside]), "a nucleus carries its cell's label"
    if case == "04":  # more than 255 nuclei: the uint8 wrap (quirk d) is exercised
        assert cells.max() > 255


def test_inputs_untouched_and_repeatable(reference):
    data = _case(reference, "05")
    nuclei_pred, cell_pred = data["nuclei_pred"].copy(), data["cell_pred"].copy()
    first = label_cell(nuclei_pred, cell_pred)
    second = label_cell(nuclei_pred, cell_pred)
    assert np.array_equal(nuclei_pred, data["nuclei_pred"]) and np.array_equal(cell_pred, data["cell_pred"])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("case", ["05"])
def test_oracle_equals_reference(reference, case):
    data = _case(reference, case)
    nuclei, cells = oracle_label_cell(data["nuclei_pred"], data["cell_pred"])
    _assert_same(cells, data["cell_label" + SUFFIX], f"oracle case {case} cell_label")
    _assert_same(nuclei, data["nuclei_label" + SUFFIX], f"oracle case {case} nuclei_label")
    _assert_same(oracle_label_nuclei(data["nuclei_pred"]), data["label_nuclei" + SUFFIX], f"oracle case {case} label_nuclei")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_oracle_equals_fast_and_reference_all_cases(reference, case):
    data = _case(reference, case)
    expected = oracle_label_cell(data["nuclei_pred"], data["cell_pred"])
    found = label_cell(data["nuclei_pred"], data["cell_pred"])
    for name, e, f in zip(("nuclei_label", "cell_label"), expected, found):
        _assert_same(e, data[name + SUFFIX], f"oracle case {case} {name}")
        _assert_same(f, e, f"fast vs oracle case {case} {name}")
    _assert_same(oracle_label_nuclei(data["nuclei_pred"]), data["label_nuclei" + SUFFIX], f"oracle case {case} label_nuclei")


# --- synthetic inputs: fast == oracle -------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_equals_oracle_on_synthetic(seed):
    nuclei_pred, cell_pred = synthetic_preds(seed)
    expected = oracle_label_cell(nuclei_pred, cell_pred)
    found = label_cell(nuclei_pred, cell_pred)
    assert expected[1].max() >= 2, "the synthetic image should contain several cells"
    _assert_same(found[1], expected[1], "cell_label")
    _assert_same(found[0], expected[0], "nuclei_label")
    _assert_same(label_nuclei(nuclei_pred), oracle_label_nuclei(nuclei_pred), "label_nuclei")


def test_non_square_synthetic():
    nuclei_pred, cell_pred = synthetic_preds(7, size=384)
    nuclei_pred, cell_pred = nuclei_pred[:, :300], cell_pred[:, :300]
    for found, expected in zip(label_cell(nuclei_pred, cell_pred), oracle_label_cell(nuclei_pred, cell_pred)):
        _assert_same(found, expected, "non-square")


@pytest.mark.parametrize("fill", [0, 255])
def test_constant_inputs(fill):
    pred = np.full((128, 96, 3), fill, dtype=np.uint8)
    pred[..., 0] = 0
    for found, expected in zip(label_cell(pred, pred), oracle_label_cell(pred, pred)):
        _assert_same(found, expected, f"constant {fill}")
    _assert_same(label_nuclei(pred), oracle_label_nuclei(pred), f"label_nuclei constant {fill}")


# --- the building blocks against the scikit-image/SciPy step they replace ------------------------


def _random_masks(n=6, shape=(97, 83)):
    rng = np.random.default_rng(42)
    for k in range(n):
        noise = ndi.gaussian_filter(rng.random(shape), 1.0 + k % 3)
        yield noise > np.quantile(noise, 0.3 + 0.1 * (k % 4))


def test_otsu_matches_skimage():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    planes = [rng.integers(0, 256, (64, 64), dtype=np.uint8), np.full((8, 8), 77, np.uint8)]
    planes.append(np.clip(rng.normal(60, 30, (50, 70)), 0, 255).astype(np.uint8))
    planes.append(np.where(rng.random((40, 40)) < 0.3, 250, 3).astype(np.uint8))
    for plane in planes:
        assert postprocess._otsu_of_uint8(plane) == threshold_otsu(plane / 255)


def test_mask_helpers_match_skimage():
    from skimage import morphology

    for mask in _random_masks():
        assert np.array_equal(postprocess._fill_holes(mask), ndi.binary_fill_holes(mask))
        # the 2021 rule: holes of fewer than 20 pixels are filled (scikit-image 0.26 changed the
        # positional call to "at most 20"; the keyword max_size=19 spells the old rule there)
        if tuple(int(p) for p in postprocess.skimage_version().split(".")[:2]) < (0, 26):
            expected = morphology.remove_small_holes(mask, 20)
        else:
            expected = morphology.remove_small_holes(mask, max_size=19)
        assert np.array_equal(postprocess._fill_small_holes(mask, 20), expected)
        assert np.array_equal(postprocess._drop_small_mask(mask, 30), morphology.remove_small_objects(mask, 30))
        assert np.array_equal(
            postprocess._drop_small_mask(mask, 30, connectivity=8), morphology.remove_small_objects(mask, 30, connectivity=2)
        )


def test_label_helpers_match_skimage():
    import cv2
    from skimage import measure, morphology, segmentation

    saw_small = False
    for mask in _random_masks():
        labels = measure.label(mask, connectivity=1).astype(np.uint8)
        saw_small |= bool((np.bincount(labels.ravel())[1:] < 40).any())
        assert np.array_equal(postprocess._label_boundaries(labels), segmentation.find_boundaries(labels))
        assert np.array_equal(postprocess._label_boundaries(labels.astype(np.int32) * 300), segmentation.find_boundaries(labels))
        disk = postprocess._disk(6)
        closed = cv2.erode(cv2.dilate(labels, disk), disk)
        assert np.array_equal(closed, morphology.closing(labels, morphology.disk(6)))
        assert np.array_equal(postprocess._label_values(labels), measure.label(labels))
        assert np.array_equal(postprocess._drop_small_labels(labels, 40), morphology.remove_small_objects(labels, 40))
    assert saw_small, "the random masks should contain components below the size threshold"


def test_watershed_crop_is_exact():
    # the bounding-box crop must not change the watershed's tie-breaking
    from hpa_kernel.segmentation.watershed import watershed

    rng = np.random.default_rng(3)
    image = np.rint(ndi.gaussian_filter(rng.random((120, 140)), 2) * 20).astype(np.uint8)  # many ties
    mask = np.zeros(image.shape, dtype=bool)
    mask[17:101, 23:131] = ndi.gaussian_filter(rng.random((84, 108)), 3) > 0.47
    markers = ndi.label(image * mask >= 12)[0]
    for line in (False, True):
        expected = watershed(image, markers, mask=mask, watershed_line=line)
        found = postprocess._watershed_in_box(lambda box: image[box], markers, mask, line, expected.dtype)
        assert np.array_equal(found, expected)


# --- input checks ----------------------------------------------------------------------------------


def test_rejects_bad_inputs():
    good = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="nuclei_pred.*uint8"):
        label_cell(good.astype(np.float32), good)
    with pytest.raises(ValueError, match=r"cell_pred.*\(H, W, 3\)"):
        label_cell(good, good[..., :2])
    with pytest.raises(ValueError, match="cell_pred.*shape of nuclei_pred"):
        label_cell(good, good[:32])
    with pytest.raises(ValueError, match="nuclei_pred.*numpy array"):
        label_nuclei(good.tolist())

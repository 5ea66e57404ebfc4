"""Cell crops: exact support, kept aspect ratio, border, tiny and huge cells, 16-bit input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hpa_kernel.cells.crops import cell_boxes, crop_cells, to_uint8

BORDER_CELLS = (1, 11, 15, 20, 21)


@pytest.fixture(scope="module")
def real(reference):
    folder = reference / "real"
    cell = cv2.imread(str(folder / "1000_A12_2_cellmask.png"), cv2.IMREAD_UNCHANGED)
    green = cv2.imread(str(folder / "1000_A12_2_green.png"), cv2.IMREAD_UNCHANGED)
    # R saturated everywhere, so a crop's support shows in R exactly; G the real 16-bit protein.
    image = np.stack([np.full_like(green, 65535), green, np.full_like(green, 257 * 7), np.full_like(green, 257)], axis=-1)
    return image, cell


def expected_support(mask_bool: np.ndarray, size: int) -> tuple[np.ndarray, int, int, int]:
    """Independent construction: centre the cell's box in a square, resize the 0/1 mask, > 0.5."""
    ys, xs = np.nonzero(mask_bool)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    oy, ox = (side - h) // 2, (side - w) // 2
    square[oy : oy + h, ox : ox + w] = mask_bool[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation) > 0.5, h, w, side


def test_real_cells_have_exact_support_and_aspect(real):
    image, cell = real
    size = 128
    ids = sorted(cell_boxes(cell))
    assert ids == list(range(1, 22))
    crops = crop_cells(image, cell, ids, size=size)
    assert crops.shape == (21, size, size, 4) and crops.dtype == np.uint8
    for k, cell_id in enumerate(ids):
        support, h, w, side = expected_support(cell == cell_id, size)
        np.testing.assert_array_equal(crops[k, :, :, 0] > 0, support, err_msg=f"cell {cell_id}")
        # away from the cell's edge (where resizing blends with the zeroed outside) the value is kept
        core = cv2.erode(support.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert core.any() and (crops[k, :, :, 0][core] == 255).all()
        assert (crops[k, :, :, 2][core] == 7).all()  # 16-bit 257*7 -> 7
        ys, xs = np.nonzero(support)
        ch, cw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert abs(ch / cw - h / w) < 0.05, f"cell {cell_id}: aspect {ch / cw:.3f} vs {h / w:.3f}"
        # the longer side fills the crop, the shorter one is centred
        assert max(ch, cw) >= size - 2
        assert abs((ys.min() + ys.max()) / 2 - (size - 1) / 2) <= 2 and abs((xs.min() + xs.max()) / 2 - (size - 1) / 2) <= 2


def test_border_cells_full_size_crop_is_the_cell_itself(real):
    image, cell = real
    boxes = cell_boxes(cell)
    for cell_id in BORDER_CELLS:
        y0, x0, y1, x1 = boxes[cell_id]
        side = max(y1 - y0, x1 - x0)
        crop = crop_cells(image, cell, [cell_id], size=side, boxes=boxes)[0]  # no resize
        h, w = y1 - y0, x1 - x0
        oy, ox = (side - h) // 2, (side - w) // 2
        inner = crop[oy : oy + h, ox : ox + w]
        mask = cell[y0:y1, x0:x1] == cell_id
        np.testing.assert_array_equal(inner[mask], to_uint8(image[y0:y1, x0:x1][mask]))
        assert not inner[~mask].any()
        outside = crop.copy()
        outside[oy : oy + h, ox : ox + w] = 0
        assert not outside.any()


def test_tiny_cell_is_enlarged_and_huge_cell_shrunk():
    label = np.zeros((600, 700), np.int32)
    label[3:6, 10:19] = 1  # 3 x 9 cell
    label[50:600, 100:700] = 2  # huge cell at the bottom-right corner
    image = np.full((600, 700, 4), 255, np.uint8)
    crops = crop_cells(image, label, size=64)
    assert crops.shape == (2, 64, 64, 4)
    for k, cell_id in enumerate((1, 2)):
        support, *_ = expected_support(label == cell_id, 64)
        np.testing.assert_array_equal(crops[k, :, :, 3] > 0, support)
    ys, xs = np.nonzero(crops[0, :, :, 0])
    assert 18 <= ys.max() - ys.min() + 1 <= 24 and xs.max() - xs.min() + 1 >= 62  # 3:9 kept


def test_margin_adds_empty_context():
    label = np.zeros((100, 100), np.int32)
    label[40:60, 30:70] = 5
    image = np.full((100, 100, 4), 200, np.uint8)
    plain = crop_cells(image, label, size=40)[0]
    wide = crop_cells(image, label, size=60, margin=10)[0]
    assert (plain[..., 0] > 0).sum() == 40 * 20
    ys, xs = np.nonzero(wide[..., 0])
    assert (ys.min(), xs.min(), ys.max(), xs.max()) == (20, 10, 39, 49)


def test_bad_inputs():
    label = np.zeros((10, 10), np.int32)
    label[2:4, 2:4] = 1
    with pytest.raises(ValueError, match="dtype"):
        crop_cells(np.zeros((10, 10, 4), np.float32), label)
    with pytest.raises(ValueError, match="shape"):
        crop_cells(np.zeros((10, 12, 4), np.uint8), label)
    with pytest.raises(ValueError, match="not labels"):
        crop_cells(np.zeros((10, 10, 4), np.uint8), label, [1, 9])
    assert crop_cells(np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10), np.int32), size=16).shape == (0, 16, 16, 4)

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


# --------------------------------------------------------------------------- the two named crop modes

TEAM_SIZE = 512


def _scene(h: int, w: int, at_border: bool, dtype=np.uint16, seed: int = 0):
    """A random image and a label image with cell 3 (an ellipse whose bbox is h x w), neighbours
    4 and 5 inside its bbox, and noisy background; ``at_border``: cell 3 touches the top and right edges."""
    rng = np.random.default_rng(seed)
    height, width = h + 60, w + 70
    y0, x0 = (0, width - w) if at_border else (25, 30)
    top = np.iinfo(dtype).max
    image = rng.integers(1, top, size=(height, width, 4), endpoint=True).astype(dtype)
    label = np.zeros((height, width), np.int32)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = y0 + (h - 1) / 2, x0 + (w - 1) / 2
    label[((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1] = 3
    label[y0 : y0 + h // 5, x0 : x0 + w // 5] = 4  # a neighbour in the bbox's corner
    label[y0 + h - h // 6 : y0 + h, x0 + w - w // 6 : x0 + w] = 5
    ys, xs = np.nonzero(label == 3)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (h, w)  # the test's own premise
    return image, label


def _team_crop(image: np.ndarray, label: np.ndarray, cell_id: int, size: int, *, as_float: bool = False) -> np.ndarray:
    """The team's test crop, spelled out (HPAsubmission.ipynb In[8], In[15]), as values in [0, 1]:
    8-bit x257; tight inclusive bbox; other cells and background zeroed; centred zero pad to a
    square (odd pixel right/bottom); per channel cv2.resize to size x size, default INTER_LINEAR,
    of the uint16 square (``as_float``: of its float64 copy); no re-masking; / 65535."""
    if image.dtype == np.uint8:
        image = image.astype(np.uint16) * 257
    points = np.argwhere(label == cell_id)
    (r0, c0), (r1, c1) = points.min(axis=0), points.max(axis=0)
    box_label = label[r0 : r1 + 1, c0 : c1 + 1]
    channels = []
    for c in range(image.shape[2]):
        plane = image[r0 : r1 + 1, c0 : c1 + 1, c].copy()
        plane[box_label != cell_id] = 0
        rows, cols = plane.shape
        if rows > cols:
            left = (rows - cols) // 2
            plane = np.pad(plane, [(0, 0), (left, rows - cols - left)], mode="constant")
        else:
            up = (cols - rows) // 2
            plane = np.pad(plane, [(up, cols - rows - up), (0, 0)], mode="constant")
        if as_float:
            plane = plane.astype(np.float64)
        channels.append(cv2.resize(plane, (size, size)).astype(np.float64))
    return np.dstack(channels) / 65535.0


@pytest.mark.parametrize(
    "h, w, at_border, dtype",
    [
        (61, 101, False, np.uint16),  # enlarged (side 101 < 512)
        (61, 100, False, np.uint16),  # enlarged, an odd pad (the odd pixel goes to the bottom)
        (601, 561, False, np.uint16),  # shrunk (side 601 > 512)
        (600, 561, False, np.uint16),  # shrunk, an odd pad (the odd pixel goes right)
        (150, 91, True, np.uint16),  # at the image border (top and right), enlarged, odd pad
        (97, 60, False, np.uint8),  # an 8-bit image: x257 first
    ],
)
def test_milimed2021_crop_is_the_teams_rule(h, w, at_border, dtype):
    image, label = _scene(h, w, at_border, dtype)
    crops = crop_cells(image, label, [3, 4], size=TEAM_SIZE, mode="milimed2021")
    assert crops.dtype == np.uint16 and crops.shape == (2, TEAM_SIZE, TEAM_SIZE, 4)
    kit = crops[0].astype(np.float64) / 65535.0
    team = _team_crop(image, label, 3, TEAM_SIZE)
    np.testing.assert_allclose(kit, team, rtol=0, atol=1.0 / 65535)
    # the 16 bits are kept through the resize: within 1/65535 of the float computation
    np.testing.assert_allclose(kit, _team_crop(image, label, 3, TEAM_SIZE, as_float=True), rtol=0, atol=1.0 / 65535)
    np.testing.assert_allclose(crops[1] / 65535.0, _team_crop(image, label, 4, TEAM_SIZE), rtol=0, atol=1.0 / 65535)


def _kit2025_crop(image: np.ndarray, label: np.ndarray, cell_id: int, size: int) -> np.ndarray:
    """The kit's crop as it was before the modes existed, written independently: round(x / 257) to
    8 bits, mask, centred square, INTER_AREA when shrinking else INTER_LINEAR, re-masked where
    the resized mask is > 0.5."""
    image8 = image if image.dtype == np.uint8 else np.floor(image.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    ys, xs = np.nonzero(label == cell_id)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    oy, ox = (side - h) // 2, (side - w) // 2
    mask = (label[y0:y1, x0:x1] == cell_id)
    square = np.zeros((side, side, image.shape[2]), np.uint8)
    square[oy : oy + h, ox : ox + w] = image8[y0:y1, x0:x1] * mask[:, :, None]
    square_mask = np.zeros((side, side), np.float32)
    square_mask[oy : oy + h, ox : ox + w] = mask
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(square, (size, size), interpolation=interpolation)
    support = cv2.resize(square_mask, (size, size), interpolation=interpolation) > 0.5
    return crop * support[:, :, None]


@pytest.mark.parametrize("h, w, at_border", [(61, 100, False), (600, 561, False), (150, 91, True)])
def test_kit2025_crop_is_unchanged(h, w, at_border):
    image, label = _scene(h, w, at_border)
    crop = crop_cells(image, label, [3], size=TEAM_SIZE, mode="kit2025")[0]
    assert crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, _kit2025_crop(image, label, 3, TEAM_SIZE))
    np.testing.assert_array_equal(crop_cells(image, label, [3], size=TEAM_SIZE)[0], crop)  # the default mode


def test_the_two_modes_differ_where_issue_20_says():
    """(a) 8 bits, (b) INTER_AREA on a shrunk cell, (c) re-masking: a 601 x 561 cell differs inside, a
    61 x 101 cell has fewer support pixels under kit2025."""
    image, label = _scene(601, 561, False)
    team = crop_cells(image, label, [3], size=TEAM_SIZE, mode="milimed2021")[0] / 65535.0
    kit = crop_cells(image, label, [3], size=TEAM_SIZE, mode="kit2025")[0] / 255.0
    assert np.abs(team - kit)[200:300, 200:300].max() > 0.02
    image, label = _scene(61, 101, False)
    team = crop_cells(image, label, [3], size=TEAM_SIZE, mode="milimed2021")[0]
    kit = crop_cells(image, label, [3], size=TEAM_SIZE, mode="kit2025")[0]
    assert (kit[..., 0] > 0).sum() < (team[..., 0] > 0).sum()


def test_crop_mode_is_checked():
    label = np.zeros((10, 10), np.int32)
    label[2:4, 2:4] = 1
    with pytest.raises(ValueError, match="crop mode"):
        crop_cells(np.zeros((10, 10, 4), np.uint8), label, mode="team")

"""The team's cleaners on a cells table built from pixels (issue 21.2).

The image is drawn here: rectangular cells whose red, blue and yellow levels are constant, so each
channel sum is ``pixel count x level / full scale``, and nuclei whose bounding-box rows and columns
are counted by hand. The table comes from :func:`hpa_kernel.cells.score_cells` (what the cells
pipeline runs); the expected sums and cell values are written out below from the team's rules
(``HPAsubmission.ipynb`` In[11]: per-cell *sums* over the cell mask, float in [0, 1]).
"""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kernel.cells import score_cells
from hpa_kernel.confidence import cell_values

# Nucleus shapes, as rows of pixel runs (row offset, first column, last column) inside their box.
DIAMOND4 = [(dy, 4 - (4 - abs(dy - 4)), 4 + (4 - abs(dy - 4))) for dy in range(9)]  # 41 px, 9 x 9, 1 px at each tip
PLUS = [(0, 1, 1), (1, 0, 2), (2, 1, 1)]  # 5 px, 3 x 3
# 6 rows x 9 columns: first row 7 px, last row 3 px, first column 4 px, last column 4 px
FLAT = [(0, 1, 7), (1, 0, 8), (2, 0, 8), (3, 0, 8), (4, 0, 8), (5, 3, 5)]

# cell: (y0, x0, height, width), nucleus shape and its top-left, red / blue (nucleus) / yellow levels (uint8)
CELLS = {
    1: ((2, 2, 20, 30), DIAMOND4, (7, 12), 120, 160, 80),  # ordinary
    2: ((2, 40, 20, 30), DIAMOND4, (7, 50), 120, 160, 80),  # ordinary
    3: ((30, 2, 4, 4), PLUS, (30, 3), 120, 160, 80),  # tiny: sums 16/600 of the others, means the same
    4: ((30, 40, 20, 40), DIAMOND4, (35, 55), 255, 0, 255),  # nucleus without blue: x0.01, not a candidate
    5: ((2, 80, 20, 30), FLAT, (9, 90), 120, 160, 80),  # flat top edge: ratio 2/9
    6: ((30, 90, 20, 30), DIAMOND4, (35, 100), 120, 160, 2),  # faint yellow: blue x yellow outlier
}


def _draw(bits: int):
    """The image (R, G, B, Y) and its label images; 16-bit levels are the 8-bit ones x 257."""
    scale = 257 if bits == 16 else 1
    dtype = np.uint16 if bits == 16 else np.uint8
    image = np.zeros((56, 128, 4), dtype)
    nuclei = np.zeros((56, 128), np.int32)
    cells = np.zeros((56, 128), np.int32)
    for k, ((y0, x0, h, w), shape, (ny, nx), red, blue, yellow) in CELLS.items():
        cells[y0 : y0 + h, x0 : x0 + w] = k
        image[y0 : y0 + h, x0 : x0 + w, 0] = red * scale
        image[y0 : y0 + h, x0 : x0 + w, 1] = 50 * scale
        image[y0 : y0 + h, x0 : x0 + w, 3] = yellow * scale
        for dy, c0, c1 in shape:
            nuclei[ny + dy, nx + c0 : nx + c1 + 1] = k
            image[ny + dy, nx + c0 : nx + c1 + 1, 2] = blue * scale
    return image, nuclei, cells


def _expected():
    """Sums, nucleus features and the team's cell values, by hand from CELLS."""
    out = {}
    for k, ((_, _, h, w), shape, _, red, blue, yellow) in CELLS.items():
        n_area = sum(c1 - c0 + 1 for _, c0, c1 in shape)
        rows = [c1 - c0 + 1 for _, c0, c1 in shape]
        cols_n = max(c1 for _, _, c1 in shape) + 1
        first_col = sum(1 for _, c0, _ in shape if c0 == 0)
        last_col = sum(1 for _, _, c1 in shape if c1 == cols_n - 1)
        out[k] = dict(
            red_sum=h * w * red / 255, blue_sum=n_area * blue / 255, yellow_sum=h * w * yellow / 255,
            nucleus_blue_sum=n_area * blue / 255, nucleus_rows=len(shape), nucleus_cols=cols_n,
            nucleus_top=rows[0], nucleus_bottom=rows[-1], nucleus_left=first_col, nucleus_right=last_col,
        )
    return out


@pytest.mark.parametrize("bits", [8, 16])
def test_table_sums_and_nucleus_box_from_pixels(bits):
    image, nuclei, cells = _draw(bits)
    table = score_cells(image, nuclei, cells).set_index("cell_id")
    for k, row in _expected().items():
        for column, value in row.items():
            assert table.at[k, column] == pytest.approx(value, rel=1e-9, abs=1e-9), f"cell {k} {column}"
    # the hand-counted shapes: diamond 9 x 9 with 1-px tips; plus 3 x 3; flat 6 x 9 with a 7-px top row
    assert (table.at[1, "nucleus_top"], table.at[3, "nucleus_cols"], table.at[5, "nucleus_top"]) == (1, 3, 7)


@pytest.mark.parametrize("bits", [8, 16])
def test_team_cleaners_on_a_table_from_pixels(bits):
    image, nuclei, cells = _draw(bits)
    table = score_cells(image, nuclei, cells)
    ids = table["cell_id"].tolist()
    assert ids == sorted(CELLS)
    # border cleaner: m(r) = 1 if r > 0.3, (3.33 r)^0.1 if r > 0.01, else 0.001; x0.01 without blue
    flat = (3.33 * 2 / 9) ** 0.1  # cell 5: ud_ratio = (9 - 7) / 9; lr_ratio = (6 - 4) / 6 > 0.3
    border = {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.01, 5: flat, 6: 1.0}
    # outlier cleaner over the candidates (value > 0.01: cells 1, 2, 3, 5, 6), with sums in [0, 1] units
    e = _expected()
    candidates = [k for k in ids if border[k] > 0.01]
    red_mean = np.mean([e[k]["red_sum"] for k in candidates])
    by_mean = np.mean([e[k]["blue_sum"] * e[k]["yellow_sum"] for k in candidates])
    outliers = {k for k in candidates
                if e[k]["red_sum"] < 0.077 * red_mean or e[k]["blue_sum"] * e[k]["yellow_sum"] < 0.05 * by_mean}
    assert outliers == {3, 6}  # the tiny cell by its red sum (16 px of 600), the faint one by blue x yellow
    expected = np.array([border[k] * (0.001 if k in outliers else 1.0) for k in ids])
    np.testing.assert_allclose(cell_values(table, "milimed2021"), expected, rtol=1e-12, atol=0)

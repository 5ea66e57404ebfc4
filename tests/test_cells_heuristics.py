"""Border and outlier heuristics: real nuclei at the border, planted cuts and debris, flags."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pandas as pd
import pytest

from hpa_kernel.cells import CellConfig, OutlierReference, nucleus_cut_fraction, score_cells
from hpa_kernel.cells.heuristics import TABLE_COLUMNS

BORDER_CELLS = {1, 11, 15, 20, 21}


def test_real_border_nuclei_are_cut_and_others_not(reference):
    folder = reference / "real"
    nuclei = cv2.imread(str(folder / "1000_A12_2_nucleimask.png"), cv2.IMREAD_UNCHANGED)
    cell = cv2.imread(str(folder / "1000_A12_2_cellmask.png"), cv2.IMREAD_UNCHANGED)
    green = cv2.imread(str(folder / "1000_A12_2_green.png"), cv2.IMREAD_UNCHANGED)
    image = np.stack([green] * 4, axis=-1)
    table = score_cells(image, nuclei, cell)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table["cell_id"].tolist() == list(range(1, 22))
    cut = table.set_index("cell_id")["nucleus_cut"]
    assert {int(k) for k in cut.index[cut > 0]} == BORDER_CELLS
    assert set(table.loc[table.touches_border, "cell_id"]) == BORDER_CELLS
    assert (cut <= 1).all()
    # cell 1's nucleus is cut along a 188-pixel chord at only 130 rows deep: a large part is missing
    assert cut[1] > 0.3
    penalty = table.set_index("cell_id")["penalty"]
    assert (penalty[list(BORDER_CELLS)] < 1).all() and (penalty.drop(list(BORDER_CELLS)) == 1).all()


def test_planted_cuts_are_estimated(tmp_path):
    from hpa_kernel.synthetic import synthesize_image

    true, est = [], []
    for seed in range(6):
        s = synthesize_image(seed, 512, 512)
        table = score_cells(s.image, s.nuclei_mask, s.cell_mask)
        for cell_id, value in zip(table.cell_id, table.nucleus_cut):
            true.append(s.nucleus_cut[int(cell_id)])
            est.append(value)
    true, est = np.array(true), np.array(est)
    assert (true > 0.1).sum() >= 5
    assert (est[true == 0] == 0).mean() > 0.9  # inside nuclei are not cut (bar a touching sliver)
    assert np.corrcoef(true, est)[0, 1] > 0.85
    flagged, wanted = est > 0.1, true > 0.1
    assert (flagged & wanted).sum() / wanted.sum() > 0.8
    assert (flagged & wanted).sum() / flagged.sum() > 0.8


def test_cut_of_known_shapes():
    yy, xx = np.mgrid[0:300, 0:300]
    ellipse = ((yy - 150) / 90.0) ** 2 + ((xx - 150) / 50.0) ** 2 <= 1
    for rows in (60, 120, 150, 200):
        part = ellipse[rows:]
        truth = 1 - part.sum() / ellipse.sum()
        assert abs(nucleus_cut_fraction(part, (0, 0), (300 - rows, 300)) - truth) < 0.05
    corner = ellipse[120:, 120:]  # cut on two sides
    truth = 1 - corner.sum() / ellipse.sum()
    assert abs(nucleus_cut_fraction(corner, (0, 0), corner.shape) - truth) < 0.08
    assert nucleus_cut_fraction(ellipse, (0, 0), (300, 300)) == 0.0
    assert nucleus_cut_fraction(ellipse[1:], (0, 0), (299, 300)) == 0.0  # not touching: row 0 empty


def _cells_image(red_values, n_cols=4, yellow_values=None):
    """Square cells on a grid, each with its own mean red (and yellow), the same blue."""
    n = len(red_values)
    size = 40 * ((n + n_cols - 1) // n_cols) + 40
    label = np.zeros((size, 40 * n_cols + 40), np.int32)
    image = np.zeros(label.shape + (4,), np.uint8)
    for k, red in enumerate(red_values):
        y, x = 30 + 40 * (k // n_cols), 30 + 40 * (k % n_cols)
        label[y : y + 30, x : x + 30] = k + 1
        yellow = 90 if yellow_values is None else yellow_values[k]
        image[y : y + 30, x : x + 30] = (red, 60, 120, yellow)
    return image, label


def test_outlier_cell_is_flagged_and_penalised():
    red = [50, 55, 52, 48, 51, 53, 250, 49]
    yellow = [90, 92, 88, 91, 90, 89, 250, 90]
    image, label = _cells_image(red, yellow_values=yellow)
    config = CellConfig()
    table = score_cells(image, label, label, config)
    assert table["outlier"].tolist() == [False] * 6 + [True, False]
    row = table.iloc[6]
    assert not row.valid and row.penalty == pytest.approx(config.outlier_penalty)
    assert table.loc[table.cell_id != 7, "valid"].all()
    # odd in red alone: one vote is not enough by default, but is with outlier_votes=1
    image, label = _cells_image(red)
    assert not score_cells(image, label, label, config)["outlier"].any()
    one_vote = dataclasses.replace(config, outlier_votes=1)
    assert score_cells(image, label, label, one_vote)["outlier"].tolist() == [False] * 6 + [True, False]
    # too few cells for an image-level comparison: nothing is flagged without a reference
    image, label = _cells_image([50, 250, 52], yellow_values=[90, 250, 90])
    few = score_cells(image, label, label, config)
    assert not few["outlier"].any() and (few["image_outlier_score"] == 0).all()


def test_dataset_reference_flags_a_whole_odd_image():
    normal = [50, 55, 52, 48, 51, 53, 49, 54]
    image, label = _cells_image(normal)
    reference = OutlierReference.from_table(score_cells(image, label, label), CellConfig().outlier_features)
    dim_image, dim_label = _cells_image([v // 6 for v in normal], yellow_values=[15] * 8)  # 6x dimmer
    alone = score_cells(dim_image, dim_label, dim_label)
    assert not alone["outlier"].any()  # within the image they all look alike
    against = score_cells(dim_image, dim_label, dim_label, reference=reference)
    assert against["outlier"].all() and not against["valid"].any()
    assert (against["outlier_score"] >= against["image_outlier_score"]).all()


def test_flags_follow_config():
    image, label = _cells_image([50, 55, 52, 48, 51, 53, 250, 49], yellow_values=[90] * 6 + [250, 90])
    assert score_cells(image, label, label)["outlier"].any()
    lenient = dataclasses.replace(CellConfig(), outlier_threshold=1000.0)
    assert not score_cells(image, label, label, lenient)["outlier"].any()
    table = pd.DataFrame({"nucleus_cut": [0.0, 0.05, 0.3, 0.99], "outlier_score": [0.0, 0.0, 0.0, 9.0]})
    from hpa_kernel.cells.heuristics import apply_flags

    config = CellConfig(max_train_cut=0.1, cut_penalty=1.0, min_penalty=0.05, outlier_penalty=0.2)
    out = apply_flags(table.copy(), config)
    assert out["border"].tolist() == [False, False, True, True]
    assert out["valid"].tolist() == [True, True, False, False]
    np.testing.assert_allclose(out["penalty"], [1.0, 0.95, 0.7, 0.05 * 0.2])


@pytest.mark.parametrize(
    "field, value",
    [("crop_size", 4), ("margin", -1), ("max_train_cut", 1.5), ("outlier_penalty", 0.0), ("outlier_features", ("nope",)),
     ("outlier_min_cells", 1), ("mad_floor", 0.0), ("outlier_votes", 5)],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        CellConfig(**{field: value})


def test_16_bit_image_gives_the_same_table_and_crops_as_its_8_bit_twin():
    from hpa_kernel.cells import PipelineOptions, process_image

    red = [50, 55, 52, 48, 51, 53, 250, 49]
    image8, label = _cells_image(red, yellow_values=[90, 92, 88, 91, 90, 89, 250, 90])
    image16 = image8.astype(np.uint16) * 257  # x -> x * 257 maps 255 to 65535
    config = CellConfig(crop_size=32)
    a = process_image("a", image8, label, label, config, options=PipelineOptions(encode_masks=True))
    b = process_image("a", image16, label, label, config, options=PipelineOptions(encode_masks=True))
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=False, rtol=1e-12)
    assert a.table["outlier"].any()  # the comparison covers a flagged cell too
    np.testing.assert_array_equal(a.crops, b.crops)
    assert a.crops.dtype == b.crops.dtype == np.uint8 and a.encoded == b.encoded

"""The competition metric against the 8 reference pairs (both IoU modes) and on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.classes import CLASS_NAMES
from hpa_kernel.metric import (
    MetricResult,
    TruthImage,
    detection_average_precision,
    score_submission,
    load_truth,
    parse_prediction_string,
)
from hpa_kernel.submission.rle import encode_mask

PAIRS = [
    "s01_A_perfect",
    "s02_A_noisy_conf",
    "s03_A_shifted_iou",
    "s04_A_dup_fp_missing_empty",
    "s05_B_realistic",
    "s06_B_negative18",
    "s07_B_empty_placeholder_nogt",
    "s08_C_interlocking_boxquirk",
]
MODES = [("box", "official_box_iou"), ("mask", "variant_mask_iou")]


def _assert_matches(result: MetricResult, expected: dict) -> None:
    got = result.to_dict()
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    for c in map(str, range(19)):
        want = expected["per_class_AP"][c]
        if want is None:
            assert got["per_class_AP"][c] is None, f"class {c} has no GT: AP must stay None"
        else:
            assert got["per_class_AP"][c] == pytest.approx(want, abs=1e-9), f"class {c}"
        for key in ("num_gt_instances_per_class", "num_detections_counted_per_class", "num_true_positives_per_class"):
            assert got[key][c] == expected[key][c], f"{key} class {c}"
    assert got["classes_in_mean"] == expected["classes_in_mean"]


def test_all_pairs_are_listed(reference):
    assert sorted(p.name for p in (reference / "metric").glob("s0*")) == PAIRS


@pytest.mark.parametrize("mode, key", MODES)
@pytest.mark.parametrize("pair", PAIRS)
def test_reference_pair_from_cells_and_masks(reference, pair, mode, key):
    folder = reference / "metric" / pair
    expected = json.loads((folder / "expected.json").read_text())[key]
    result = score_submission(folder / "submission.csv", folder / "gt_cells.csv", folder / "gt_masks.npz", iou=mode)
    _assert_matches(result, expected)


@pytest.mark.parametrize("mode, key", MODES)
@pytest.mark.parametrize("pair", PAIRS)
def test_reference_pair_from_gt_annotations(reference, pair, mode, key):
    folder = reference / "metric" / pair
    expected = json.loads((folder / "expected.json").read_text())[key]
    result = score_submission(folder / "submission.csv", truth_annotations=folder / "gt_annotations.csv", iou=mode)
    _assert_matches(result, expected)


def _s05(reference):
    folder = reference / "metric" / "s05_B_realistic"
    sub = pd.read_csv(folder / "submission.csv", dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    return folder, sub


def test_swapped_width_and_height_changes_box_map_as_documented(reference):
    folder, sub = _s05(reference)
    swapped = sub.rename(columns={"ImageWidth": "ImageHeight", "ImageHeight": "ImageWidth"})
    result = score_submission(swapped, folder / "gt_cells.csv", folder / "gt_masks.npz", iou="box")
    assert result.map == pytest.approx(0.458485, abs=1e-6)  # README section 5
    with pytest.raises(ValueError, match="mask IoU needs equal sizes"):
        score_submission(swapped, folder / "gt_cells.csv", folder / "gt_masks.npz", iou="mask")


def test_dataframe_and_loaded_truth_inputs_agree(reference):
    folder, sub = _s05(reference)
    cells = pd.read_csv(folder / "gt_cells.csv", dtype={"ImageID": str, "Labels": str})
    with np.load(folder / "gt_masks.npz") as npz:
        masks = {k: npz[k] for k in npz.files}
    a = score_submission(sub, cells, masks, iou="mask")
    b = score_submission(sub, truth=load_truth(cells, masks), iou="mask")
    assert a.map == b.map == pytest.approx(0.4682323232323233, abs=1e-12)


# --------------------------------------------------------------------------- hand-made cases


def _image(*boxes, size=(20, 20)):
    label = np.zeros(size, dtype=np.int32)
    for k, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        label[y0:y1, x0:x1] = k
    return label


def _sub(rows: dict[str, str], size=(20, 20)) -> pd.DataFrame:
    return pd.DataFrame(
        {"ID": list(rows), "ImageWidth": size[1], "ImageHeight": size[0], "PredictionString": list(rows.values())}
    )


def _pred(*triples):
    return " ".join(f"{c} {s} {encode_mask(m)}" for c, s, m in triples)


def test_average_precision_by_hand():
    # TP, FP, TP with 2 GT: precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3 -> AP = 0.5*1 + 0.5*2/3
    assert detection_average_precision(np.array([True, False, True]), 2) == pytest.approx(0.5 + 1 / 3)
    assert detection_average_precision(np.array([False, False]), 3) == 0.0
    assert detection_average_precision(np.array([], dtype=bool), 3) == 0.0
    assert detection_average_precision(np.array([True]), 4) == pytest.approx(0.25)
    assert detection_average_precision(np.array([True, True]), 0) is None


def test_absent_class_detections_are_ignored_not_false_positives():
    label = _image((2, 2, 8, 8))
    truth = {"a": TruthImage(label, np.array([1]), [(3,)])}
    cell = label == 1
    clean = score_submission(_sub({"a": _pred((3, 0.5, cell))}), truth=truth)
    noisy = score_submission(_sub({"a": _pred((7, 0.9, cell), (3, 0.5, cell))}), truth=truth)
    assert clean.map == noisy.map == 1.0
    assert noisy.num_detections[7] == 0 and noisy.per_class_ap[7] is None


def test_empty_masks_are_dropped_before_matching():
    label = _image((2, 2, 8, 8))
    truth = {"a": TruthImage(label, np.array([1]), [(3,)])}
    empty = np.zeros_like(label, dtype=bool)
    result = score_submission(_sub({"a": _pred((3, 0.9, empty), (3, 0.5, label == 1))}), truth=truth)
    assert result.map == 1.0 and result.num_detections[3] == 1


def test_duplicate_detection_is_a_false_positive_and_lower_score_loses():
    label = _image((2, 2, 8, 8), (10, 10, 16, 16))
    truth = {"a": TruthImage(label, np.array([1, 2]), [(0,), (0,)])}
    cell = label == 1
    result = score_submission(_sub({"a": _pred((0, 0.4, cell), (0, 0.9, cell))}), truth=truth)
    # ranks: TP (0.9), FP (0.4); recall 1/2 at precision 1
    assert result.num_tp[0] == 1 and result.num_detections[0] == 2
    assert result.map == pytest.approx(0.5)


def test_threshold_is_inclusive_and_mask_mode_differs_from_box_mode():
    size = (16, 16)  # box coordinates / 16 are exact in binary
    label = _image((0, 0, 10, 10), size=size)
    truth = {"a": TruthImage(label, np.array([1]), [(2,)])}
    pred = np.zeros_like(label, dtype=bool)
    pred[0:6, 0:10] = True  # IoU exactly 0.6 in both modes
    for mode in ("box", "mask"):
        assert score_submission(_sub({"a": _pred((2, 0.5, pred))}, size), truth=truth, iou=mode).map == 1.0
        assert score_submission(_sub({"a": _pred((2, 0.5, pred))}, size), truth=truth, iou=mode, threshold=0.61).map == 0.0
    ring = label == 1
    ring[1:9, 1:9] = False  # same box as the cell, 36 % of its pixels
    assert score_submission(_sub({"a": _pred((2, 0.5, ring))}, size), truth=truth, iou="box").map == 1.0
    assert score_submission(_sub({"a": _pred((2, 0.5, ring))}, size), truth=truth, iou="mask").map == 0.0


def test_argmax_over_all_cells_in_box_mode():
    # Cell 1 is an L (column 1 and row 9); cell 2 is a square in the L's box.
    label = np.zeros((12, 12), dtype=np.int32)
    label[0:10, 1] = 1
    label[9, 1:10] = 1
    label[0:9, 2:10] = 2
    truth = {"a": TruthImage(label, np.array([1, 2]), [(5,), (5,)])}
    # The detection of cell 2 plus one pixel has the box of cell 1: box IoU 1 with cell 1 and 0.8
    # with cell 2, so it takes cell 1. Cell 1's own exact detection, scored lower, finds its best
    # cell taken and is a false positive, although cell 2 is still free with box IoU 0.8.
    det2 = label == 2
    det2[9, 1] = True
    sub = _sub({"a": _pred((5, 0.9, det2), (5, 0.8, label == 1))}, size=(12, 12))
    assert score_submission(sub, truth=truth, iou="box").num_tp[5] == 1
    assert score_submission(sub, truth=truth, iou="mask").num_tp[5] == 2


def test_images_without_gt_are_ignored_and_missing_rows_are_misses():
    label = _image((2, 2, 8, 8))
    truth = {
        "a": TruthImage(label, np.array([1]), [(1,)]),
        "b": TruthImage(label, np.array([1]), [(1,)]),
        "c": TruthImage(np.zeros_like(label), np.zeros(0, dtype=np.int64), []),
    }
    cell = label == 1
    sub = _sub({"a": _pred((1, 0.9, cell)), "c": _pred((1, 0.99, cell)), "zz": _pred((1, 0.99, cell))})
    result = score_submission(sub, truth=truth)
    assert result.num_images == 2 and result.num_gt[1] == 2
    assert result.map == pytest.approx(0.5)


def test_map_is_mean_over_classes_with_gt_and_table_lists_them():
    label = _image((2, 2, 8, 8), (10, 10, 16, 16))
    truth = {"a": TruthImage(label, np.array([1, 2]), [(0, 16), (18,)])}
    result = score_submission(_sub({"a": _pred((0, 0.9, label == 1), (18, 0.9, label == 2))}), truth=truth)
    assert result.classes_in_mean == [0, 16, 18]
    assert result.map == pytest.approx(2 / 3)
    assert result.per_class_ap[5] is None and result.to_dict()["per_class_AP"]["5"] is None
    table = result.table()
    assert CLASS_NAMES[16] in table and "0.666667" in table
    line_5 = next(line for line in table.splitlines() if CLASS_NAMES[5] in line)
    assert line_5.split()[-4] == "-"


def test_parse_prediction_string_errors():
    assert parse_prediction_string("") == []
    for text, match in [
        ("1 0.5 abc ", "space"),
        ("1  0.5 abc", "space"),
        ("1 0.5", "multiple of 3"),
        ("x 0.5 abc", "not an integer"),
        ("19 0.5 abc", "triple 0: label '19' is not an integer 0..18"),
        ("+3 0.5 abc", "not an integer 0..18"),
        ("1 0.5 abc 2\t0.5 abc", "tab"),
        ("1 high abc", "not a number"),
        ("1 nan abc", "not finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_prediction_string(text)


def test_evaluate_rejects_bad_arguments_and_names_the_image():
    label = _image((2, 2, 8, 8))
    truth = {"img7": TruthImage(label, np.array([1]), [(1,)])}
    with pytest.raises(ValueError, match="iou must be"):
        score_submission(_sub({}), truth=truth, iou="pixel")
    with pytest.raises(ValueError, match="img7.*multiple of 3"):
        score_submission(_sub({"img7": "1 0.5"}), truth=truth)
    with pytest.raises(ValueError, match="img7.*base64"):
        score_submission(_sub({"img7": "1 0.5 %%%"}), truth=truth)
    with pytest.raises(ValueError, match="more than once: img7"):
        score_submission(pd.concat([_sub({"img7": ""})] * 2), truth=truth)
    with pytest.raises(ValueError, match="no pixel"):
        score_submission(_sub({}), truth={"x": TruthImage(label, np.array([2]), [(1,)])})
    with pytest.raises(ValueError, match="no annotated cell"):
        score_submission(_sub({}), truth={"x": TruthImage(label, np.zeros(0, dtype=np.int64), [])})
    with pytest.raises(FileNotFoundError, match="submission"):
        score_submission("/nonexistent/submission.csv", truth=truth)


def test_score_cli(reference, capsys):
    from hpa_kernel.cli import main

    folder = reference / "metric" / "s03_A_shifted_iou"
    expected = json.loads((folder / "expected.json").read_text())
    args = ["score", "--submission", str(folder / "submission.csv"), "--truth-cells", str(folder / "gt_cells.csv"),
            "--truth-masks", str(folder / "gt_masks.npz")]
    assert main(args + ["--iou", "mask", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mAP"] == pytest.approx(expected["variant_mask_iou"]["mAP"], abs=1e-9)
    assert out["per_class_AP"]["0"] is None
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"{expected['official_box_iou']['mAP']:.6f}" in text and "Nucleoplasm" in text
    assert main(["score", "--submission", str(folder / "submission.csv")]) == 1  # no truth given


def test_unreadable_image_size_names_the_row():
    truth = {"a": TruthImage(_image((2, 2, 8, 8)), np.array([1]), [(3,)])}
    sub = _sub({"a": "", "b": ""}).astype({"ImageWidth": object})
    sub.loc[1, "ImageWidth"] = "wide"
    with pytest.raises(ValueError, match=r"submission \(DataFrame\): ID b: ImageWidth 'wide'.*must be integers"):
        score_submission(sub, truth=truth)


def test_box_of_a_mask_string_with_a_zero_length_run_is_the_box_of_its_pixels():
    import base64
    import zlib

    from hpa_kernel.submission.rle import runs_to_counts_string

    # runs bg 4, fg 0, bg 4, fg 2, bg 6 decode to pixels (0, 2) and (1, 2) only
    text = base64.b64encode(zlib.compress(runs_to_counts_string(np.array([4, 0, 4, 2, 6])), 9)).decode()
    label = np.zeros((4, 4), dtype=np.int32)
    label[0:2, 2] = 1
    truth = {"a": TruthImage(label, np.array([1]), [(0,)])}
    for mode in ("box", "mask"):
        assert score_submission(_sub({"a": f"0 0.9 {text}"}, size=(4, 4)), truth=truth, iou=mode).map == 1.0

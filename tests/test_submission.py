"""Submission writer and validator: round trip through the file, and one test per problem class."""

from __future__ import annotations

import base64
import json
import logging
import zlib

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.metric import TruthImage, score_submission
from hpa_kernel.submission.rle import decode_mask, encode_label_image, encode_mask
from hpa_kernel.submission import (
    FALLBACK_PREDICTION,
    SUBMISSION_HEADER,
    check_submission,
    format_prediction_string,
    prediction_string_for_cells,
    no_cells_prediction,
    validate_submission,
    write_submission,
)

SIZES = {"img_a": (24, 32), "img_b": (40, 20), "img_c": (16, 16)}  # (height, width)


def _labels(height, width, seed):
    """Four disjoint cells of random shape, one touching the bottom-right corner, one the top-left."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), dtype=np.int32)
    half_h, half_w = height // 2, width // 2
    corners = [(0, 0), (0, half_w), (half_h, 0), (half_h, half_w)]
    for cell, (y, x) in enumerate(corners, start=1):
        block = rng.random((half_h, half_w)) < 0.6
        block[-1 if cell == 4 else 0, -1 if cell == 4 else 0] = True
        label[y : y + half_h, x : x + half_w][block] = cell
    return label


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    rows = [{"ID": i, "ImageWidth": w, "ImageHeight": h, "PredictionString": "0 1 eNoLCAgIMAEABJkBdQ=="} for i, (h, w) in SIZES.items()]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def labels():
    return {image_id: _labels(h, w, k) for k, (image_id, (h, w)) in enumerate(SIZES.items())}


@pytest.fixture
def good(tmp_path, sample, labels):
    """A valid submission: every cell of img_a and img_b with 19 classes, img_c left to the fallback."""
    rows = {}
    for image_id in ("img_a", "img_b"):
        encoded = encode_label_image(labels[image_id])
        probs = np.random.default_rng(1).random((len(encoded), 19))
        rows[image_id] = prediction_string_for_cells(list(encoded.values()), probs)
    return write_submission(rows, sample, tmp_path / "submission.csv")


# --------------------------------------------------------------------------- writing


def test_format_prediction_string():
    mask = "eNoLCAgIMAEABJkBdQ=="
    assert format_prediction_string([(3, 0.1234567, mask), (18, 1, mask)]) == f"3 0.1234567 {mask} 18 1.0 {mask}"
    assert format_prediction_string([]) == ""
    assert format_prediction_string([(1, 1 + 1e-12, mask), (2, -1e-12, mask)]) == f"1 1.0 {mask} 2 0.0 {mask}"
    for bad, match in [
        ((19, 0.5, mask), "label"),
        ((True, 0.5, mask), "label"),
        ((1, 1.5, mask), "confidence"),
        ((1, float("nan"), mask), "confidence"),
        ((1, "high", mask), "triple 0: confidence"),
        ((1, None, mask), "triple 0: confidence"),
        ((1, 0.5, ""), "EncodedMask"),
        ((1, 0.5, "a b"), "EncodedMask"),
        ((1, 0.5), "triple 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            format_prediction_string([bad])


def test_prediction_string_for_cells_repeats_each_mask_for_all_classes():
    masks = ["eNoLCAgIMAEABJkBdQ==", "eNozSDAAAAGDAME="]
    probs = np.linspace(0, 1, 38).reshape(2, 19)
    tokens = prediction_string_for_cells(masks, probs).split(" ")
    assert len(tokens) == 2 * 19 * 3
    assert tokens[0::3] == [str(c) for c in range(19)] * 2
    assert tokens[2::3] == [masks[0]] * 19 + [masks[1]] * 19
    assert [float(t) for t in tokens[1::3]] == probs.ravel().tolist()  # exact: shortest round-trip text
    with pytest.raises(ValueError, match=r"\(N, 19\)"):
        prediction_string_for_cells(masks, probs[:, :18])


def test_tiny_confidences_stay_distinct_through_the_file_the_validator_and_the_scorer(tmp_path, sample, labels):
    """Values far below 5e-7 (which %.6f tied at 0) keep their order and read back exactly."""
    label = labels["img_a"]
    encoded = list(encode_label_image(label).values())
    values = [1e-9, 2e-9, 3e-12, 5e-324, 1.0 - 2.0**-53, 0.1 + 0.2, np.float32(0.3), 4.9999e-7]
    probs = np.zeros((len(encoded), 19))
    probs.ravel()[: len(values)] = values
    text = prediction_string_for_cells(encoded, probs)
    confidences = [t for t in text.split(" ")[1::3]]
    read_back = [float(t) for t in confidences[: len(values)]]
    assert read_back == [float(v) for v in values]  # exact round trip
    assert len(set(confidences[: len(values)])) == len(values)  # no ties between different values
    path = write_submission({"img_a": text}, sample, tmp_path / "s.csv")
    assert validate_submission(path, sample) == []
    frame = pd.read_csv(path, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    assert [float(t) for t in frame.PredictionString[0].split(" ")[1::3]][: len(values)] == read_back
    cells = np.array(sorted(c for c in np.unique(label) if c))
    truth = {i: TruthImage(labels[i], np.array(sorted(c for c in np.unique(labels[i]) if c)), [(0,)] * 4) for i in SIZES}
    assert score_submission(path, truth=truth).num_tp[0] == len(cells)


def test_no_cells_row_is_the_sample_row_or_the_placeholder_at_the_image_size():
    placeholder = "0 1 eNoLCAgIMAEABJkBdQ=="  # Kaggle's sample row: class 0, confidence 1, empty 2048 x 2048 mask
    assert no_cells_prediction(placeholder, 2048, 2048) == placeholder
    row = "3 0.5 eNozSDAAAAGDAME="  # a full 4 x 4 mask: kept as the sample gives it
    assert no_cells_prediction(row, 4, 4) == row
    for sample_text, (height, width) in [("", (1728, 1728)), (placeholder, (1728, 1728)), (placeholder, (3072, 3072)),
                                         ("", (40, 20)), ("0 1 not-base64!", (8, 8)), ("0 1", (8, 8))]:
        label, confidence, mask = no_cells_prediction(sample_text, width, height).split(" ")
        assert (label, confidence) == ("0", "1")
        assert not decode_mask(mask, height, width).any()  # empty, and decodes at this image's size
    assert no_cells_prediction("", 2048, 2048) == placeholder


def test_write_read_decode_round_trip(good, sample, labels):
    text = good.read_bytes()
    assert b"\r" not in text and b'"' not in text
    lines = text.decode("ascii").split("\n")
    assert lines[0] == ",".join(SUBMISSION_HEADER) and lines[-1] == ""
    assert [line.split(",")[0] for line in lines[1:-1]] == list(SIZES)  # sample order
    frame = pd.read_csv(good, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    for row in frame.itertuples():
        height, width = SIZES[row.ID]
        assert (row.ImageHeight, row.ImageWidth) == (height, width)
        if row.ID == "img_c":
            assert row.PredictionString == FALLBACK_PREDICTION
            continue
        tokens = row.PredictionString.split(" ")
        label = labels[row.ID]
        cells = sorted(c for c in np.unique(label) if c)
        for k, cell in enumerate(cells):
            decoded = decode_mask(tokens[k * 57 + 2], height, width)
            np.testing.assert_array_equal(decoded, label == cell)
    assert validate_submission(good, sample) == []
    # Perfect masks with the true class ranked by the writer score as expected.
    truth = {i: TruthImage(labels[i], np.array(sorted(c for c in np.unique(labels[i]) if c)), [(5,)] * 4) for i in SIZES}
    assert score_submission(good, truth=truth).num_tp[5] == 8


def test_fallback_row_is_logged(tmp_path, sample, caplog):
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.submission"):
        out = write_submission({"img_b": ""}, sample, tmp_path / "sub.csv")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and any("img_a" in m for m in warned) and any("img_c" in m for m in warned)
    assert all("no prediction" in m for m in warned)
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame["PredictionString"].tolist() == ["", "", ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample_submission.csv", "sub.csv"]  # no temp file left
    assert out.stat().st_mode & 0o777 == 0o644  # an ordinary file (mkstemp alone would leave 0600)


def test_writer_rejects_unknown_ids_and_malformed_rows(tmp_path, sample):
    with pytest.raises(ValueError, match="not in the sample"):
        write_submission({"nope": ""}, sample, tmp_path / "sub.csv")
    with pytest.raises(ValueError, match="single-space"):
        write_submission({"img_a": "1 0.5 abc "}, sample, tmp_path / "sub.csv")
    with pytest.raises(ValueError, match="comma"):
        write_submission({"img_a": "1 0.5 a,b"}, sample, tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()
    with pytest.raises(FileNotFoundError, match="sample submission"):
        write_submission({}, tmp_path / "missing.csv", tmp_path / "sub.csv")
    bad_sample = tmp_path / "bad_sample.csv"
    bad_sample.write_text("ID,ImageWidth,ImageHeight,PredictionString\nimg_a,,64,\n")
    with pytest.raises(ValueError, match=r"bad_sample.csv: ID img_a: ImageWidth '' .*must be integers"):
        write_submission({}, bad_sample, tmp_path / "sub.csv")


# --------------------------------------------------------------------------- validation


def _mutate_row(good, tmp_path, edit):
    lines = good.read_text().split("\n")
    lines[1] = edit(lines[1])
    out = tmp_path / "broken.csv"
    out.write_text("\n".join(lines), newline="")
    return out


def _set_tokens(row: str, k: int, value: str) -> str:
    head, prediction = row.rsplit(",", 1)
    tokens = prediction.split(" ")
    tokens[k] = value
    return f"{head},{' '.join(tokens)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


ROW_BREAKS = {
    "wrong width": (lambda r: r.replace("img_a,32,24,", "img_a,33,24,"), "ImageWidth is 33; the sample has 32"),
    "wrong height": (lambda r: r.replace("img_a,32,24,", "img_a,32,25,"), "ImageHeight is 25; the sample has 24"),
    "non-integer size": (lambda r: r.replace("img_a,32,24,", "img_a,32.0,24,"), "not a positive integer"),
    "extra field": (lambda r: r + ",x", "5 fields"),
    "tokens not multiple of 3": (lambda r: r + " 7", "not a multiple of 3"),
    "double space": (lambda r: r.replace(" ", "  ", 1), "double space"),
    "leading space": (lambda r: r.replace("img_a,32,24,", "img_a,32,24, "), "leading or trailing space"),
    "trailing space": (lambda r: r + " ", "leading or trailing space"),
    "label not an integer": (lambda r: _set_tokens(r, 0, "0.0"), "label '0.0' is not an integer"),
    "label out of range": (lambda r: _set_tokens(r, 0, "19"), "label '19' is not an integer 0..18"),
    "confidence not a number": (lambda r: _set_tokens(r, 1, "high"), "confidence 'high' is not a number"),
    "confidence not finite": (lambda r: _set_tokens(r, 1, "inf"), "not finite"),
    "confidence above 1": (lambda r: _set_tokens(r, 1, "1.5"), "outside [0, 1]"),
    "confidence below 0": (lambda r: _set_tokens(r, 1, "-0.1"), "outside [0, 1]"),
    "mask not base64": (lambda r: _set_tokens(r, 2, "***"), "not valid base64"),
    "mask not zlib": (lambda r: _set_tokens(r, 2, _b64(b"hello world")), "not zlib data"),
    "mask of another size": (lambda r: _set_tokens(r, 2, encode_mask(np.ones((24, 31), bool))), "covers 744 pixels"),
    "mask with a bad RLE": (lambda r: _set_tokens(r, 2, _b64(zlib.compress(b"3`", 9))), "truncated"),
    "quoted row": (lambda r: r.replace("img_a", '"img_a"'), "quotes"),
}


@pytest.mark.parametrize("case", sorted(ROW_BREAKS))
def test_validator_catches(case, good, sample, tmp_path):
    edit, message = ROW_BREAKS[case]
    problems = validate_submission(_mutate_row(good, tmp_path, edit), sample)
    assert problems, case
    assert any(message in p.message for p in problems), [str(p) for p in problems]
    assert all(p.line == 2 and p.image_id == "img_a" for p in problems if message in p.message)


def _write_lines(tmp_path, lines, name="broken.csv"):
    out = tmp_path / name
    out.write_bytes("".join(line + "\n" for line in lines).encode())
    return out


def test_validator_header(good, sample, tmp_path):
    lines = good.read_text().splitlines()
    problems = validate_submission(_write_lines(tmp_path, ["ImageID,ImageWidth,ImageHeight,PredictionString"] + lines[1:]), sample)
    assert [p.line for p in problems] == [1] and "expected exactly" in problems[0].message


def test_validator_missing_extra_and_duplicate_ids(good, sample, tmp_path):
    lines = good.read_text().splitlines()
    missing = validate_submission(_write_lines(tmp_path, lines[:3]), sample)
    assert [(p.image_id, p.message) for p in missing] == [("img_c", "ID of the sample submission has no row")]
    extra = validate_submission(_write_lines(tmp_path, lines + ["img_z,16,16,"]), sample)
    assert [(p.line, p.image_id) for p in extra] == [(5, "img_z")] and "not in the sample" in extra[0].message
    dup = validate_submission(_write_lines(tmp_path, lines + [lines[2]]), sample)
    assert [(p.line, p.image_id) for p in dup] == [(5, "img_b")] and "duplicate ID (first on line 3)" in dup[0].message


def test_validator_line_ends_and_empty_file(good, sample, tmp_path):
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(good.read_bytes().replace(b"\n", b"\r\n"))
    problems = validate_submission(crlf, sample)
    assert len(problems) == 1 and "4 lines end with CRLF" in problems[0].message
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    problems = validate_submission(empty, sample)
    assert "file is empty" in problems[0].message and len(problems) == 1 + len(SIZES)
    with pytest.raises(FileNotFoundError):
        validate_submission(tmp_path / "absent.csv", sample)


def test_check_submission_counts(good, sample):
    report = check_submission(good, sample)
    assert report.ok and report.num_rows == 3 and report.num_empty_rows == 1
    assert report.num_triples == 2 * 4 * 19 and report.num_distinct_masks == 8 and report.num_empty_masks == 0


def test_validate_cli(good, sample, tmp_path, capsys):
    from hpa_kernel.cli import main

    assert main(["validate-submission", str(good), "--sample", str(sample)]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    broken = _mutate_row(good, tmp_path, lambda r: r.replace(" 0.", " 7."))  # every confidence of img_a > 1
    assert main(["validate-submission", str(broken), "--sample", str(sample), "--max-problems", "3"]) == 1
    out = capsys.readouterr().out
    assert "76 problem(s)" in out and "... and 73 more" in out and out.count("outside [0, 1]") == 3


def test_perfect_synthetic_submission_validates_and_scores_one(synthetic_competition, tmp_path, capsys):
    """Truth masks -> crop encoder -> writer -> validator -> score CLI, on the synthetic competition."""
    from hpa_kernel.classes import labels_to_multihot
    from hpa_kernel.cli import main

    comp = synthetic_competition
    cells = pd.read_csv(comp.truth_cells("test"), dtype={"ImageID": str, "Labels": str}, keep_default_na=False)
    rows = {}
    with np.load(comp.truth_masks("test")) as npz:
        for image_id, group in cells.groupby("ImageID"):
            encoded = encode_label_image(npz[image_id], group["CellID"].tolist())
            probs = np.stack([labels_to_multihot(map(int, text.split("|"))) for text in group["Labels"]])
            rows[image_id] = prediction_string_for_cells([encoded[c] for c in group["CellID"]], 0.05 + 0.9 * probs)
    out = write_submission(rows, comp.sample_submission, tmp_path / "submission.csv")
    assert main(["validate-submission", str(out), "--sample", str(comp.sample_submission)]) == 0
    capsys.readouterr()
    for mode in ("box", "mask"):
        assert main(["score", "--submission", str(out), "--data", str(comp.root), "--iou", mode, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["mAP"] == 1.0


# -- the one reader of the sample submission format --------------------------------------------------


def test_one_sample_reader_for_the_competition_the_writer_and_the_metric(tmp_path):
    from hpa_kernel.io import Competition
    from hpa_kernel.metric.score import _read_submission
    from hpa_kernel.submission import read_sample, read_sample_submission

    path = tmp_path / "sample_submission.csv"
    path.write_text("ID,ImageWidth,ImageHeight,PredictionString\nb,32,24,\na,16,8,1 0.5 x\n")
    frame = read_sample_submission(path)
    assert frame.to_dict("records") == [
        {"ID": "b", "ImageWidth": 32, "ImageHeight": 24, "PredictionString": ""},
        {"ID": "a", "ImageWidth": 16, "ImageHeight": 8, "PredictionString": "1 0.5 x"},
    ]
    assert read_sample_submission(Competition(tmp_path).sample_submission).equals(frame)
    assert read_sample(path) == [("b", 32, 24), ("a", 16, 8)]
    assert _read_submission(path) == {"b": (32, 24, ""), "a": (16, 8, "1 0.5 x")}


@pytest.mark.parametrize("text, match", [
    ("ID,ImageHeight,PredictionString\na,8,\n", "expected columns ID,ImageWidth,ImageHeight,PredictionString.*missing ImageWidth"),
    ("ID,ImageWidth,ImageHeight,PredictionString\na,8.5,8,\n", "ID a: ImageWidth 8.5 .*integers > 0"),
    ("ID,ImageWidth,ImageHeight,PredictionString\na,0,8,\n", "ID a: ImageWidth 0 .*integers > 0"),
    ("ID,ImageWidth,ImageHeight,PredictionString\na,8,8,\nb,8,8,\na,8,8,\n", "more than once: a$"),
    ("", "cannot be read as CSV"),
])
def test_sample_reader_errors_name_the_file(tmp_path, text, match):
    from hpa_kernel.submission import read_sample_submission

    path = tmp_path / "the_sample.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"sample submission .*the_sample\.csv.*{match}"):
        read_sample_submission(path)


def test_sample_reader_frames(tmp_path):
    from hpa_kernel.submission import read_sample_submission

    frame = pd.DataFrame({"ID": ["a"], "ImageWidth": [8], "ImageHeight": [8]})
    assert read_sample_submission(frame)["PredictionString"].tolist() == [""]
    with pytest.raises(ValueError, match=r"submission \(DataFrame\): expected columns .*PredictionString"):
        read_sample_submission(frame, "submission", require_predictions=True)
    with pytest.raises(FileNotFoundError, match="sample submission .*absent.csv does not exist"):
        read_sample_submission(tmp_path / "absent.csv")


def test_validator_and_metric_agree_on_every_prediction_string(tmp_path):
    # One tokeniser (split_prediction_string, parse_label, parse_confidence): the validator finds a
    # problem exactly when the metric's parser refuses the string.
    from hpa_kernel.metric import parse_prediction_string
    from hpa_kernel.submission import check_submission

    mask = encode_mask(np.ones((4, 4), bool))
    sample = pd.DataFrame({"ID": ["a"], "ImageWidth": [4], "ImageHeight": [4]})
    cases = ["", f"1 0.5 {mask}", f"1 0.5 {mask} 18 1 {mask}", f" 1 0.5 {mask}", f"1 0.5 {mask} ", f"1  0.5 {mask}",
             f"1\t0.5 {mask}", "1 0.5", f"+1 0.5 {mask}", f"1.0 0.5 {mask}", f"19 0.5 {mask}", f"1 nan {mask}",
             f"1 1.5 {mask}", f"1 -0 {mask}", f"1 1e-3 {mask}", f"01 0.5 {mask}"]
    for text in cases:
        path = tmp_path / "sub.csv"
        path.write_text(f"ID,ImageWidth,ImageHeight,PredictionString\na,4,4,{text}\n")
        try:
            parse_prediction_string(text)
        except ValueError:
            metric_ok = False
        else:
            metric_ok = True
        assert check_submission(path, sample).ok == metric_ok, text

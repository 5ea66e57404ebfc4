"""Issue 25.2: every reader's error names the file, the line and the column, and what was expected.

For each input (cells.csv, its ``penalty`` filter column, a validation cells table, soft labels and
their raw scores, pseudo labels, weights_manifest.json, the sample submission, train.csv): one bad
value and one file that is not UTF-8. The expected line and column are counted in the test from the
text it writes (the header is line 1; columns of a decoding error count characters from 1).
"""

from __future__ import annotations

import json

import pytest

from hpa_kernel.cells.table import CSV_COLUMNS

CELL = {"image_id": "a", "cell_id": "1", "crop": "", "y0": "0", "x0": "0", "y1": "8", "x1": "8", "area": "64",
        "nucleus_cut": "0.0", "outlier_score": "0.0", "valid": "False", "labels": "0|5"}


def _cells_text(extra: dict | None = None, **second) -> str:
    columns = list(CSV_COLUMNS) + list(extra or {})
    rows = [dict(CELL, **(extra or {})), {**CELL, **(extra or {}), "cell_id": "2", **second}]
    return "\n".join([",".join(columns)] + [",".join(r[c] for c in columns) for r in rows]) + "\n"


def _not_utf8(text: str, line: int, column: int) -> bytes:
    """``text`` encoded as UTF-8 with a 0xff byte inserted before character ``column`` of ``line``."""
    lines = text.split("\n")
    target = lines[line - 1]
    lines[line - 1] = target[: column - 1] + "\x00" + target[column - 1:]
    return "\n".join(lines).encode().replace(b"\x00", b"\xff")


def _where(path, line, column) -> str:
    return f"{path}, line {line}, column {column!r}"


def _decode_message(err, path, line, column) -> None:
    message = str(err.value)
    assert f"{path}, line {line}, column {column}:" in message and "UTF-8" in message and "0xff" in message, message


# --------------------------------------------------------------------------- cells.csv


def test_cells_table_bad_number_and_not_utf8(tmp_path):
    from hpa_kernel.cells.table import read_cells_table

    path = tmp_path / "cells.csv"
    path.write_text(_cells_text(area="big"))
    with pytest.raises(ValueError) as err:
        read_cells_table(path, valid_only=False)
    assert f"{_where(path, 3, 'area')}: expected a number, got 'big'" in str(err.value)
    path.write_bytes(_not_utf8(_cells_text(), 3, 4))
    with pytest.raises(ValueError) as err:
        read_cells_table(path, valid_only=False)
    _decode_message(err, path, 3, 4)


def test_cells_penalty_of_high_names_file_line_and_column(tmp_path):
    """The issue's example: ``penalty`` = ``high`` gave only ``could not convert string to float``."""
    from hpa_kernel.training.dataset import filter_cells

    path = tmp_path / "cells.csv"
    path.write_text(_cells_text({"penalty": "1.0"}, penalty="high"))
    with pytest.raises(ValueError) as err:
        filter_cells(path, "penalty")
    assert str(err.value) == f"{_where(path, 3, 'penalty')}: expected a number, got 'high'"


def test_validation_cells_table_errors(tmp_path):
    from hpa_kernel.cells.builder import write_crop
    from hpa_kernel.training import RunOptions, TrainInputs, quick_config, train_group

    import numpy as np

    (tmp_path / "crops").mkdir()
    write_crop(tmp_path / "crops" / "a_1.png", np.zeros((8, 8, 4), np.uint8))
    train = tmp_path / "cells.csv"
    train.write_text(_cells_text().replace("False,0|5\na", "True,0|5\na", 1).replace(",,0,0,8,8,64", ",crops/a_1.png,0,0,8,8,64", 1))
    val = tmp_path / "val_cells.csv"
    run = dict(options=RunOptions(device="cpu", progress=False))
    config = quick_config(1, input_size=32, batch_size=2, epochs=1, steps_per_epoch=1)
    val.write_text(_cells_text(nucleus_cut="half"))
    with pytest.raises(ValueError) as err:
        train_group(config, train, tmp_path / "w", inputs=TrainInputs(val_cells=val), **run)
    assert f"{_where(val, 3, 'nucleus_cut')}: expected a number, got 'half'" in str(err.value)
    val.write_bytes(_not_utf8(_cells_text(), 2, 1))
    with pytest.raises(ValueError) as err:
        train_group(config, train, tmp_path / "w", inputs=TrainInputs(val_cells=val), **run)
    _decode_message(err, val, 2, 1)


# --------------------------------------------------------------------------- labels


SOFT = "image_id,cell_id,class_id,soft_label,score,n_labellers\na,1,11,0.9,4.0,1\na,2,11,0.2,2.0,1\n"


@pytest.mark.parametrize("column, bad", [("cell_id", "two"), ("class_id", "spindle?"), ("soft_label", "high")])
def test_soft_labels_bad_field(tmp_path, column, bad):
    from hpa_kernel.training.dataset import read_soft_labels

    path = tmp_path / "soft.csv"
    fields = {"cell_id": 1, "class_id": 2, "soft_label": 3}
    lines = SOFT.split("\n")
    parts = lines[2].split(",")
    parts[fields[column]] = bad
    lines[2] = ",".join(parts)
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError) as err:
        read_soft_labels(path)
    assert f"{_where(path, 3, column)}: expected " in str(err.value) and repr(bad) in str(err.value)


def test_soft_labels_and_scores_not_utf8_and_bad_score(tmp_path):
    from hpa_kernel.training.dataset import read_scores, read_soft_labels

    path = tmp_path / "soft.csv"
    path.write_bytes(_not_utf8(SOFT, 3, 6))
    for reader in (read_soft_labels, read_scores):
        with pytest.raises(ValueError) as err:
            reader(path)
        _decode_message(err, path, 3, 6)
    path.write_text(SOFT.replace(",2.0,1", ",high,1"))
    with pytest.raises(ValueError) as err:
        read_scores(path)
    assert f"{_where(path, 3, 'score')}: expected a mean score in 1..5, got 'high'" in str(err.value)


PSEUDO = "image_id,cell_id,labels,pseudo_labels\na,1,0|5,0\na,2,0|5,5\n"


@pytest.mark.parametrize("column, old, new", [("cell_id", "a,2,", "a,two,"), ("pseudo_labels", ",5\n", ",5|x\n")])
def test_pseudo_labels_bad_field(tmp_path, column, old, new):
    from hpa_kernel.training.dataset import read_pseudo_labels

    path = tmp_path / "pseudo.csv"
    path.write_text(PSEUDO.replace(old, new))
    with pytest.raises(ValueError) as err:
        read_pseudo_labels(path)
    assert f"{_where(path, 3, column)}: expected " in str(err.value)


def test_pseudo_labels_not_utf8(tmp_path):
    """The issue's example: a 0xff at the start gave only ``'utf-8' codec can't decode byte 0xff in position 0``."""
    from hpa_kernel.training.dataset import read_pseudo_labels

    path = tmp_path / "pseudo.csv"
    path.write_bytes(b"\xff" + PSEUDO.encode())
    with pytest.raises(ValueError) as err:
        read_pseudo_labels(path)
    _decode_message(err, path, 1, 1)
    assert "pseudo-label file" in str(err.value)


# --------------------------------------------------------------------------- weights, sample, train.csv


def test_weights_manifest_not_json_and_not_utf8(tmp_path):
    from hpa_kernel.manifest import MANIFEST_NAME, ManifestError, default_manifest, load_manifest, write_manifest

    path = write_manifest(default_manifest(), tmp_path / MANIFEST_NAME)
    text = path.read_text()
    lines = text.split("\n")
    path.write_text("\n".join(lines[:2] + [lines[2] + ","] + lines[3:]).replace(",,", ",").replace(",\n", ",,\n", 1))
    broken = path.read_text().split("\n")
    row = next(i for i, line in enumerate(broken) if line.endswith(",,"))
    with pytest.raises(ManifestError) as err:
        load_manifest(path, tmp_path, verify=False)
    assert f"{path}, line {row + 1}, column {len(broken[row])}:" in str(err.value) and "not valid JSON" in str(err.value)
    path.write_bytes(_not_utf8(text, 2, 3))
    with pytest.raises(ManifestError) as err:
        load_manifest(path, tmp_path, verify=False)
    _decode_message(err, path, 2, 3)
    assert json.loads(text)  # the file was valid before the byte went in


@pytest.mark.parametrize("edit, find, dotted, message", [
    # find(lines) -> (row, column) of the value the error is about, counted from the json.dumps text
    (lambda d: d["ensemble"]["groups"][1].update(weight="heavy"),
     lambda lines: next((i, line.index('"heavy"')) for i, line in enumerate(lines) if '"weight": "heavy"' in line),
     "ensemble.groups[1].weight", "weight must be a number"),
    (lambda d: d["ensemble"]["groups"][2]["checkpoints"][1].update(sha256="abc"),  # the entry's "{", a line above its file
     lambda lines: next((i - 1, lines[i - 1].index("{")) for i, line in enumerate(lines) if '"file": "g3_m1.pth"' in line),
     "ensemble.groups[2].checkpoints[1]", "must be 64 hex digits"),
    (lambda d: d["segmentation"].update(cell={"file": ""}),
     lambda lines: next((i, line.index("{")) for i, line in enumerate(lines) if '"cell": {' in line),
     "segmentation.cell", "non-empty 'file'"),
])
def test_weights_manifest_bad_value_names_line_and_column(tmp_path, edit, find, dotted, message):
    from hpa_kernel.manifest import MANIFEST_NAME, ManifestError, default_manifest, load_manifest, write_manifest

    path = write_manifest(default_manifest(), tmp_path / MANIFEST_NAME)
    data = json.loads(path.read_text())
    edit(data)
    text = json.dumps(data, indent=2)
    path.write_text(text)
    row, offset = find(text.split("\n"))
    with pytest.raises(ManifestError) as err:
        load_manifest(path, tmp_path, verify=False)
    got = str(err.value)
    assert got.startswith(f"{path}, line {row + 1}, column {offset + 1} ({dotted}): ") and message in got, got


SAMPLE = "ID,ImageWidth,ImageHeight,PredictionString\na,8,8,\nb,8,8,\n"


def test_sample_submission_bad_size_and_not_utf8(tmp_path):
    from hpa_kernel.submission import read_sample_submission

    path = tmp_path / "sample_submission.csv"
    path.write_text(SAMPLE.replace("b,8,8", "b,8,tall"))
    with pytest.raises(ValueError) as err:
        read_sample_submission(path)
    message = str(err.value)
    assert str(path) in message and "line 3, column 'ImageHeight'" in message and "'tall'" in message, message
    path.write_bytes(_not_utf8(SAMPLE, 3, 1))
    with pytest.raises(ValueError) as err:
        read_sample_submission(path)
    _decode_message(err, path, 3, 1)


def test_train_csv_bad_label_and_not_utf8(tmp_path):
    from hpa_kernel.io import Competition

    comp = Competition(tmp_path)
    comp.train_csv.write_text("ID,Label\na,0|5\nb,0|cat\n")
    with pytest.raises(ValueError) as err:
        comp.read_train()
    assert f"{_where(comp.train_csv, 3, 'Label')}: expected class ids" in str(err.value) and "'0|cat'" in str(err.value)
    comp.train_csv.write_bytes(_not_utf8("ID,Label\na,0|5\nb,0|5\n", 2, 3))
    with pytest.raises(ValueError) as err:
        comp.read_train()
    _decode_message(err, comp.train_csv, 2, 3)


def test_decode_error_counts_characters_and_skips_the_byte_order_mark(tmp_path):
    from hpa_kernel.readers import read_text

    path = tmp_path / "x.csv"
    path.write_bytes("\ufeffé,b\nçé".encode() + b"\xff")
    with pytest.raises(ValueError) as err:
        read_text(path, "file")
    _decode_message(err, path, 2, 3)
    path.write_bytes("\ufeffé,b\n".encode())
    assert read_text(path) == "é,b\n"

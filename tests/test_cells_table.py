"""The one reader of cells.csv (hpa_kernel.cells.table), shared by training, labelling and the shard merge."""

from __future__ import annotations

import pytest

from hpa_kernel.cells.builder import CSV_COLUMNS
from hpa_kernel.cells.table import read_cells_table

ROW = {"image_id": "a", "cell_id": "1", "crop": "crops/a_1.png", "y0": "0", "x0": "0", "y1": "4", "x1": "4",
       "area": "16", "nucleus_cut": "0.0", "outlier_score": "0.0", "valid": "True", "labels": "0|5"}


def _write(path, *changes):
    """A two-row table; ``changes`` are ``(row, column, value)`` edits."""
    rows = [dict(ROW), dict(ROW, cell_id="2", crop="crops/a_2.png", valid="False", labels="16")]
    for row, column, value in changes:
        rows[row][column] = value
    path.write_text("\n".join([",".join(CSV_COLUMNS)] + [",".join(r[c] for c in CSV_COLUMNS) for r in rows]) + "\n")
    return path


def test_reads_types_and_paths(tmp_path):
    table = read_cells_table(_write(tmp_path / "cells.csv"), valid_only=False)
    assert list(table["cell_id"]) == [1, 2] and list(table["valid"]) == [True, False]
    assert list(table["label_ids"]) == [(0, 5), (16,)]
    assert table["crop_path"][0] == str((tmp_path / "crops" / "a_1.png").resolve())
    assert len(read_cells_table(tmp_path / "cells.csv")) == 1


@pytest.mark.parametrize("change, message", [
    ((1, "cell_id", "two"), r"cells\.csv: line 3: cell_id 'two' is not an integer"),
    ((1, "cell_id", "1"), r"cells\.csv: line 3: duplicate cell a 1"),
    ((1, "valid", "maybe"), r"cells\.csv: column valid, line 3: 'maybe' is not a boolean"),
    ((1, "labels", "0|x"), r"cells\.csv: line 3: column labels: bad label field"),
    ((0, "crop", ""), r"cells\.csv: line 2: a valid cell has no crop file"),
])
def test_errors_name_the_file_and_line(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        read_cells_table(_write(tmp_path / "cells.csv", change), valid_only=False)


def test_empty_tables(tmp_path):
    path = _write(tmp_path / "cells.csv", (0, "valid", "0"))
    with pytest.raises(ValueError, match=r"cells\.csv: no valid cells"):
        read_cells_table(path)
    assert read_cells_table(path, allow_empty=True).empty
    path.write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(ValueError, match=r"cells\.csv: no cells"):
        read_cells_table(path, valid_only=False)
    assert read_cells_table(path, valid_only=False, allow_empty=True).empty


def test_training_and_labelling_use_it():
    from hpa_kernel.training import dataset

    assert dataset.read_cells_table is read_cells_table

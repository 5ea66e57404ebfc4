"""The labelling store, exports, score mappings, the cells table and the crop renderer."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from hpa_kernel.classes import CLASS_NAMES
from hpa_kernel.labelling import (
    CLASS_DESCRIPTIONS,
    CellTable,
    LabelStore,
    load_mappings,
    parse_mapping,
    read_soft_labels,
    render_crop,
    write_soft_labels,
    write_validation,
)
from hpa_kernel.labelling.export import parse_mapping_option, soft_label_rows, validation_rows


def write_cells(root: Path, images=(("img_b", "11|0"), ("img_a", "11"), ("img_c", "15|16")), invalid=(3,), size=32) -> Path:
    """A cells.csv + crops/ fixture in the format of `hpa-kernel cells`: 3 cells per image."""
    import cv2

    rng = np.random.default_rng(0)
    (root / "crops").mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, labels in images:
        for cell_id in (2, 1, 3):
            rel = f"crops/{image_id}_{cell_id}.png"
            assert cv2.imwrite(str(root / rel), rng.integers(0, 256, (size, size, 4), dtype=np.uint8))
            rows.append({"image_id": image_id, "cell_id": cell_id, "crop": rel, "y0": 0, "x0": 0, "y1": size, "x1": size,
                         "area": size * size // 2, "nucleus_cut": 0.0, "outlier_score": 0.1,
                         "valid": cell_id not in invalid, "labels": labels})
    with open(root / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "cells.csv"


# -- store -----------------------------------------------------------------------------------------


def test_record_and_current_answers(tmp_path):
    with LabelStore(tmp_path / "db" / "labels.sqlite") as store:
        store.record("a", 1, 11, 3, "ann")
        store.record("a", 2, 11, None, "ann")  # skip
        store.record("a", 1, 11, 5, "ann")  # re-scored: the latest answer counts
        store.record("a", 1, 11, 2, "bob")
        store.record("a", 1, 15, 4, "ann")
        assert store.answered(11, "ann") == {("a", 1): 5, ("a", 2): None}
        assert store.answered(11, "bob") == {("a", 1): 2}
        assert [(e.class_id, e.score) for e in store.current(labeller="ann")] == [(11, None), (11, 5), (15, 4)]
        assert len(store.history()) == 5


def test_who_and_when_are_recorded(tmp_path):
    before = datetime.now(timezone.utc)
    with LabelStore(tmp_path / "labels.sqlite") as store:
        store.record("a", 1, 11, 4, "ann")
        (event,) = store.current()
    when = datetime.fromisoformat(event.created_at)
    assert event.labeller == "ann"
    assert when.utcoffset().total_seconds() == 0
    assert before <= when <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    "args",
    [("a", 1, 11, 0, "ann"), ("a", 1, 11, 6, "ann"), ("a", 1, 11, True, "ann"), ("a", 1, 11, "3", "ann"),
     ("a", 1, 19, 3, "ann"), ("a", 1, -1, 3, "ann"), ("a", 1, 11, 3, " "), ("", 1, 11, 3, "ann"), ("a", "1", 11, 3, "ann")],
)
def test_record_rejects_bad_input(tmp_path, args):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(ValueError):
            store.record(*args)
        assert store.history() == []


def test_undo_withdraws_the_latest_answer_of_that_labeller_and_class(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        assert store.undo(11, "ann") is None
        store.record("a", 1, 11, 3, "ann")
        store.record("a", 2, 11, 4, "ann")
        store.record("a", 1, 11, 5, "ann")
        store.record("a", 9, 11, 1, "bob")
        store.record("a", 9, 15, 1, "ann")
        undone = store.undo(11, "ann")
        assert (undone.image_id, undone.cell_id, undone.score) == ("a", 1, 5)
        assert store.answered(11, "ann") == {("a", 1): 3, ("a", 2): 4}  # the earlier answer stands again
        assert store.undo(11, "ann").cell_id == 2
        assert store.undo(11, "ann").cell_id == 1
        assert store.undo(11, "ann") is None
        assert store.answered(11, "bob") == {("a", 9): 1}
        assert store.answered(15, "ann") == {("a", 9): 1}
        rows = store.history()
    assert len(rows) == 5  # history is kept: undo marks, never deletes
    assert sum(r[-1] is not None for r in rows) == 3


def test_each_answer_is_on_disk_before_record_returns(tmp_path):
    db = tmp_path / "labels.sqlite"
    # A process that records two answers and dies without closing anything.
    code = (
        "import os, sys; from hpa_kernel.labelling.store import LabelStore; s = LabelStore(sys.argv[1]); "
        "s.record('a', 1, 11, 4, 'ann'); s.record('a', 2, 11, 2, 'ann'); s.undo(11, 'ann'); os._exit(9)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(db)], timeout=60)
    assert result.returncode == 9
    with LabelStore(db) as store:
        assert store.answered(11, "ann") == {("a", 1): 4}
        assert len(store.history()) == 2


def test_a_file_that_is_not_a_label_database_is_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a label database"):
        LabelStore(junk)
    with pytest.raises(ValueError, match="folder"):
        LabelStore(tmp_path)


def test_schema_is_plain_sqlite(tmp_path):
    db = tmp_path / "labels.sqlite"
    with LabelStore(db) as store:
        store.record("a", 7, 11, 4, "ann")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT image_id, cell_id, class_id, score, labeller, undone_at FROM events").fetchall() == [
            ("a", 7, 11, 4, "ann", None)
        ]


# -- mappings and exports --------------------------------------------------------------------------


def test_parse_mapping():
    assert parse_mapping("5:1,4:0.8,3:0.5,2:0.1,1:0") == {1: 0.0, 2: 0.1, 3: 0.5, 4: 0.8, 5: 1.0}
    assert parse_mapping_option("15=1:0,2:0,3:0.5,4:1,5:1") == (15, {1: 0.0, 2: 0.0, 3: 0.5, 4: 1.0, 5: 1.0})
    for bad in ("1:0,2:0.2,3:0.7,4:0.9", "1:0,2:0.2,3:0.7,4:0.9,5:1.5", "1:0,2:x,3:0.7,4:0.9,5:1", "1=0", "1:0,2:0.2,3:0.7,4:0.9,6:1"):
        with pytest.raises(ValueError, match="mapping"):
            parse_mapping(bad)
    with pytest.raises(ValueError, match="unknown class"):
        parse_mapping_option("Spindles=1:0,2:0.2,3:0.7,4:0.9,5:1")
    with pytest.raises(ValueError, match="CLASS="):
        parse_mapping_option("1:0,2:0.2,3:0.7,4:0.9,5:1")


def test_load_mappings_json_and_options(tmp_path):
    spec = tmp_path / "mapping.json"
    spec.write_text(json.dumps({
        "default": "1:0,2:0.1,3:0.6,4:0.9,5:1",
        "Mitotic spindle": {"1": 0, "2": 0, "3": 0.5, "4": 0.8, "5": 1},
        "15": "1:0,2:0.3,3:0.7,4:0.9,5:1",
    }))
    default, per_class = load_mappings(["Aggresome=1:0,2:0,3:0,4:1,5:1"], spec)
    assert default[3] == 0.6
    assert per_class[11][4] == 0.8
    assert per_class[15] == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0}  # the option wins over the file
    assert load_mappings() == ({1: 0.0, 2: 0.2, 3: 0.7, 4: 0.9, 5: 1.0}, {})
    spec.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        load_mappings([], spec)
    with pytest.raises(FileNotFoundError):
        load_mappings([], tmp_path / "absent.json")


def _scored_store(path) -> LabelStore:
    store = LabelStore(path)
    store.record("b", 1, 11, 4, "ann")
    store.record("a", 2, 11, 5, "ann")
    store.record("a", 2, 11, 3, "bob")
    store.record("a", 3, 11, None, "ann")  # skip: not exported
    store.record("a", 4, 11, 1, "ann")
    store.record("a", 2, 15, 2, "ann")
    store.record("a", 5, 15, 5, "ann")
    store.undo(15, "ann")  # withdraws a 5
    return store


def test_soft_labels_default_and_per_class_mapping(tmp_path):
    with _scored_store(tmp_path / "labels.sqlite") as store:
        rows = soft_label_rows(store)
        assert [(r["image_id"], r["cell_id"], r["class_id"]) for r in rows] == [("a", 2, 11), ("a", 2, 15), ("a", 4, 11), ("b", 1, 11)]
        by_key = {(r["image_id"], r["cell_id"], r["class_id"]): r for r in rows}
        assert by_key[("a", 2, 11)]["soft_label"] == pytest.approx((1.0 + 0.7) / 2)  # two labellers, averaged
        assert by_key[("a", 2, 11)]["n_labellers"] == 2 and by_key[("a", 2, 11)]["score"] == 4
        assert by_key[("a", 2, 15)]["soft_label"] == pytest.approx(0.2)
        assert by_key[("a", 4, 11)]["soft_label"] == 0.0
        only_ann = soft_label_rows(store, per_class={11: parse_mapping("1:0,2:0,3:0.5,4:0.8,5:1")}, labeller="ann")
        assert [r["soft_label"] for r in only_ann] == [1.0, pytest.approx(0.2), 0.0, 0.8]

        out = tmp_path / "export" / "soft_labels.csv"
        assert write_soft_labels(store, out) == 4
    with open(out) as f:
        assert f.readline().strip() == "image_id,cell_id,class_id,soft_label,score,n_labellers"
    soft = read_soft_labels(out)
    assert soft == {("a", 2): {11: pytest.approx(0.85), 15: pytest.approx(0.2)}, ("a", 4): {11: 0.0}, ("b", 1): {11: 0.9}}


def test_read_soft_labels_checks_its_input(tmp_path):
    bad = tmp_path / "soft.csv"
    bad.write_text("image_id,cell_id,class_id,soft_label\na,1,11,1.5\n")
    with pytest.raises(ValueError, match="outside"):
        read_soft_labels(bad)
    bad.write_text("image_id,cell_id,soft_label\na,1,1.0\n")
    with pytest.raises(ValueError, match="class_id"):
        read_soft_labels(bad)
    with pytest.raises(FileNotFoundError):
        read_soft_labels(tmp_path / "absent.csv")


def test_validation_export(tmp_path):
    with _scored_store(tmp_path / "labels.sqlite") as store:
        rows = validation_rows(store)
        # a/2: class 11 mean 4 -> positive, class 15 score 2 -> negative; a/4: 1 -> negative; b/1: 4 -> positive.
        assert rows == [
            {"ImageID": "a", "CellID": 2, "Labels": "11", "Judged": "11|15"},
            {"ImageID": "a", "CellID": 4, "Labels": "", "Judged": "11"},
            {"ImageID": "b", "CellID": 1, "Labels": "11", "Judged": "11"},
        ]
        strict = validation_rows(store, positive_min=5, negative_max=1)
        assert strict == [{"ImageID": "a", "CellID": 4, "Labels": "", "Judged": "11"}]
        with pytest.raises(ValueError, match="negative_max"):
            validation_rows(store, positive_min=3, negative_max=3)
        out = tmp_path / "val.csv"
        assert write_validation(store, out) == 3
    assert out.read_text().splitlines()[0] == "ImageID,CellID,Labels,Judged"


# -- cells table and rendering ---------------------------------------------------------------------


def test_cell_table_selects_valid_cells_of_a_class_in_order(tmp_path):
    table = CellTable(write_cells(tmp_path))
    assert len(table) == 9
    assert [c.key for c in table.for_class("Mitotic spindle")] == [("img_a", 1), ("img_a", 2), ("img_b", 1), ("img_b", 2)]
    assert [c.key for c in table.for_class(15)] == [("img_c", 1), ("img_c", 2)]
    assert table.for_class("Actin filaments") == []
    assert table.classes_present() == [0, 11, 15, 16]
    assert table.get("img_a", 1).crop == "img_a_1.png"


def test_cell_table_refuses_a_table_without_the_valid_column(tmp_path):
    # One reader of cells.csv (cells.table.read_cells_table): the labelling tool is as strict as training.
    cells = write_cells(tmp_path)
    lines = [",".join(row[:3] + [row[-1]]) for row in csv.reader(open(cells))]
    cells.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"cells\.csv: missing columns .*'valid'"):
        CellTable(cells)


def test_cell_table_accepts_invalid_cells_without_a_crop(tmp_path):
    # The cells stage writes no crop file for a cell it flags invalid (crop is empty).
    cells = write_cells(tmp_path)
    original = cells.read_text()
    cells.write_text(original.replace("crops/img_a_3.png", ""))
    table = CellTable(cells)
    assert len(table) == 9 and table.get("img_a", 3).crop == ""
    assert ("img_a", 3) not in [c.key for c in table.for_class(11)]
    assert table.resolve("") is None
    cells.write_text(original.replace("crops/img_a_1.png", ""))
    with pytest.raises(ValueError, match="valid cell has no crop"):
        CellTable(cells)


def test_cell_table_refuses_crops_outside_the_crops_folder(tmp_path):
    cells = write_cells(tmp_path / "ds")
    (tmp_path / "elsewhere.png").write_bytes((tmp_path / "ds" / "crops" / "img_a_1.png").read_bytes())
    text = cells.read_text().replace("crops/img_a_1.png", "../elsewhere.png")
    cells.write_text(text)
    with pytest.raises(ValueError, match="outside the crops folder"):
        CellTable(cells)
    # A symbolic link inside crops/ that points outside is refused the same way.
    os.symlink(tmp_path / "elsewhere.png", tmp_path / "ds" / "crops" / "link.png")
    cells.write_text(text.replace("../elsewhere.png", "crops/link.png"))
    with pytest.raises(ValueError, match="outside the crops folder"):
        CellTable(cells)


def test_cell_table_reports_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cells file"):
        CellTable(tmp_path / "absent.csv")
    cells = write_cells(tmp_path)
    with pytest.raises(FileNotFoundError, match="crops folder"):
        CellTable(cells, tmp_path / "nope")
    original = cells.read_text()
    cells.write_text(original.replace("image_id,cell_id", "ImageID,cell_id"))
    with pytest.raises(ValueError, match="missing column"):
        CellTable(cells)
    cells.write_text(original.replace("img_a,1,", "img_a,one,"))
    with pytest.raises(ValueError, match="cell_id 'one'"):
        CellTable(cells)
    cells.write_text(original.replace("img_a,2,crops/img_a_2.png", "img_a,1,crops/img_a_2.png"))
    with pytest.raises(ValueError, match="duplicate cell img_a 1"):
        CellTable(cells)
    cells.write_text(original.replace(",True,", ",maybe,", 1))
    with pytest.raises(ValueError, match="valid"):
        CellTable(cells)


def test_resolve_serves_only_listed_crops(tmp_path):
    table = CellTable(write_cells(tmp_path))
    (tmp_path / "crops" / "stray.png").write_bytes(b"not listed")
    assert table.resolve("img_a_1.png") == (tmp_path / "crops" / "img_a_1.png").resolve()
    for bad in ("../cells.csv", "../../etc/passwd", "/etc/passwd", str(tmp_path / "crops" / "img_a_1.png"), "stray.png",
                "./img_a_1.png", "img_a_1.png\x00", "..\\cells.csv", "", "crops/img_a_1.png", "img_a_1.png/"):
        assert table.resolve(bad) is None, bad


def test_render_crop_colour_convention():
    import cv2

    crop = np.zeros((16, 16, 4), np.uint8)
    crop[..., 3] = 200  # yellow only: shows as yellow (red = green, no blue)
    rgb = cv2.imdecode(np.frombuffer(render_crop(crop, "composite", 64), np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert rgb.shape == (64, 64, 3)
    assert np.all(rgb[..., 0] == 100) and np.all(rgb[..., 1] == 100) and np.all(rgb[..., 2] == 0)

    crop = np.zeros((16, 8, 4), np.uint16)
    crop[..., 1] = 65535 // 4  # green only, 16-bit
    crop[..., 2] = 65535
    grey = cv2.imdecode(np.frombuffer(render_crop(crop, "green", 64, gain=2.0), np.uint8), cv2.IMREAD_UNCHANGED)
    assert grey.shape == (64, 32)  # the longer side is 64, aspect kept
    assert np.all(np.abs(grey.astype(int) - 127) <= 1)  # green alone, times the gain; blue ignored
    with pytest.raises(ValueError, match="view"):
        render_crop(crop, "red")
    with pytest.raises(ValueError, match="shape"):
        render_crop(crop[..., :3])


def test_every_class_has_a_description():
    assert len(CLASS_DESCRIPTIONS) == len(CLASS_NAMES)
    assert all(len(CLASS_DESCRIPTIONS[i]) > 30 for i in range(len(CLASS_NAMES)))
    assert len(set(CLASS_DESCRIPTIONS.values())) == len(CLASS_NAMES)


# -- command line ----------------------------------------------------------------------------------


def test_cli_export(tmp_path):
    from hpa_kernel.cli import main

    _scored_store(tmp_path / "labels.sqlite").close()
    soft, val = tmp_path / "soft.csv", tmp_path / "val.csv"
    rc = main(["label", "export", "--db", str(tmp_path / "labels.sqlite"), "--out", str(soft), "--validation", str(val),
               "--mapping", "Mitotic spindle=1:0,2:0.1,3:0.5,4:0.8,5:1"])
    assert rc == 0
    assert read_soft_labels(soft)[("b", 1)] == {11: 0.8}
    assert len(val.read_text().splitlines()) == 4
    assert main(["label", "export", "--db", str(tmp_path / "absent.sqlite"), "--out", str(soft)]) == 1
    assert main(["label", "export", "--db", str(tmp_path / "labels.sqlite")]) == 1  # nothing to write
    assert main(["label", "--db", str(tmp_path / "labels.sqlite"), "--class", "11"]) == 1  # serving needs --cells
    cells = write_cells(tmp_path / "ds")
    assert main(["label", "--cells", str(cells), "--class", "Actin filaments", "--db", str(tmp_path / "x.sqlite"), "--user", "a"]) == 1

"""The team's labels (issue 20, training items 6 and 7): the class-6 antibody rule, duplicates from any
soft-label source, the pseudo-label scope and order, and the fine-tuning composition.

Every expected value is written out by hand from the team's rules (``code/utils.py`` relabel_me6,
``code/data_prep.py``, ``code/dataset_generator.py``, ``finetuner.py``), not computed by the kit.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.training import config as C
from hpa_kernel.training.dataset import CELLS_COLUMNS, read_antibody_marks, recipe_targets


def _table(rows):
    """A cells table as read_cells_table returns it: image_id, cell_id, label_ids."""
    return pd.DataFrame({"image_id": [r[0] for r in rows], "cell_id": [r[1] for r in rows], "label_ids": [r[2] for r in rows]})


def _write_marks(path, rows):
    pd.DataFrame(rows, columns=["image_id", "antibody", "mark"]).to_csv(path, index=False)
    return path


# --- item 6: class 6, the antibody rule -------------------------------------------------------------

def test_antibody_marks_flag_every_image_of_a_marked_antibody(tmp_path):
    # a: marked 4 then 3 (the latest, 3, keeps it); c: marked 1 -> antibody ab2 flagged, so d too;
    # e: no antibody (its own) marked 5; b, f: never marked
    marks = _write_marks(tmp_path / "marks.csv", [("a", "ab1", "4"), ("b", "ab1", ""), ("c", "ab2", "1"), ("d", "ab2", ""),
                                                  ("e", "", "5"), ("f", "ab3", ""), ("a", "ab1", "3")])
    assert read_antibody_marks(marks) == {"c", "d", "e"}
    bad = _write_marks(tmp_path / "bad.csv", [("a", "ab1", "x")])
    with pytest.raises(ValueError, match="not an integer"):
        read_antibody_marks(bad)


def test_class_6_gets_0_51_in_flagged_antibodies_and_1_elsewhere():
    cfg = C.training_preset("milimed2021", 1)
    table = _table([("c", 1, (6,)), ("d", 1, (0, 6)), ("a", 1, (6,)), ("f", 1, (0,)), ("g", 1, (6,))])
    ts = recipe_targets(table, cfg, marked={"c", "d", "e"})
    assert ts.targets[:, 6].tolist() == pytest.approx([0.51, 0.51, 1.0, 0.0, 1.0])
    assert ts.relabelled[:, 6].tolist() == [True, True, True, False, True]  # relabel_me6 sets every labelled cell
    assert ts.targets[1, 0] == 1.0 and not ts.relabelled[1, 0]  # a plain image label
    off = dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, antibody_class=None))
    assert recipe_targets(table, off, marked={"c", "d"}).targets[:, 6].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


# --- item 6: duplicates from any source --------------------------------------------------------------

def test_sampler_duplicates_soft_labels_from_any_source():
    from hpa_kernel.training.loop import _make_sampler

    cfg = C.training_preset("milimed2021", 1, epochs=1, steps_per_epoch=1, batch_size=4)
    table = _table([
        ("a", 1, (6,)),    # 0: class 6 at 1.0 (antibody rule, not flagged): twice
        ("b", 1, (6,)),    # 1: class 6 at 0.51 (flagged antibody): once
        ("c", 1, (0,)),    # 2: pseudo positive 6 at 0.99: twice in 6's pool; class 0 plain: once
        ("d", 1, (1,)),    # 3: manual class 1 score 5 -> 1.0: twice
        ("d", 2, (3,)),    # 4: manual class 3 score 4 -> 0.9 (default map): twice
        ("d", 3, (3,)),    # 5: manual class 3 score 3 -> 0.5: once
        ("e", 1, (0,)),    # 6: plain class 0: once
    ])
    scores = {("d", 1): {1: 5.0}, ("d", 2): {3: 4.0}, ("d", 3): {3: 3.0}}
    pseudo = {("c", 1): (0, 6)}
    ts = recipe_targets(table, cfg, scores=scores, pseudo_labels=pseudo, marked={"b"})
    assert ts.targets[2, 6] == pytest.approx(0.99) and ts.labels[2, 6]
    dist = SimpleNamespace(world=1, rank=0)
    pools = _make_sampler(cfg, ts, np.arange(len(table)), dist)[0].pools
    count = lambda key: np.bincount(pools[key], minlength=7).tolist()  # noqa: E731
    assert count(6) == [2, 1, 2, 0, 0, 0, 0]
    assert count(1) == [0, 0, 0, 2, 0, 0, 0]
    assert count(3) == [0, 0, 0, 0, 2, 1, 0]
    assert count(0) == [0, 0, 1, 0, 0, 0, 1]
    manual_only = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, duplicate_source="manual"))
    pools = _make_sampler(manual_only, ts, np.arange(len(table)), dist)[0].pools
    assert count(6) == [1, 1, 1, 0, 0, 0, 0] and count(1) == [0, 0, 0, 2, 0, 0, 0]


# --- item 6: the pseudo-label scope and order --------------------------------------------------------

def test_pseudo_labels_only_the_team_classes_and_late_negatives_override_manual_scores():
    cfg = C.training_preset("milimed2021", 1)
    labels = (0, 1, 3, 6, 8, 9, 12, 15, 16)
    table = _table([("a", 1, labels), ("b", 1, (18,))])
    pseudo = {("a", 1): (16,), ("b", 1): (6, 11)}  # a: every label but 16 dropped; b: 6 and 11 added
    scores = {("a", 1): {1: 5.0, 3: 5.0, 12: 5.0}}
    ts = recipe_targets(table, cfg, scores=scores, pseudo_labels=pseudo)
    # team: relabel_me6 -> 6: 1.0; auto-relabel (0, 3, 6) -> 0.01; manual maps: 1 -> 1.0, 3 -> 1.0, 12 -> 1.0;
    # auto-relabel2 (1, 6, 12) -> 0.01 over the manual scores; 8, 9, 15 are never pseudo-labelled; 16 kept
    want = {0: 0.01, 1: 0.01, 3: 1.0, 6: 0.01, 8: 1.0, 9: 1.0, 12: 0.01, 15: 1.0, 16: 1.0}
    assert ts.targets[0, list(want)].tolist() == pytest.approx(list(want.values()))
    assert ts.labels[0].nonzero()[0].tolist() == list(labels)  # a pseudo-negative keeps its label
    assert ts.manual[0].nonzero()[0].tolist() == [3]
    # b: class 6 at 0.99 (positive_relabel_auto), 11 is not a positive class of the team; 18 stays a label
    assert ts.targets[1, 6] == pytest.approx(0.99) and ts.targets[1, 11] == 0.0
    assert ts.labels[1].nonzero()[0].tolist() == [6, 18]
    broad = recipe_targets(table, dataclasses.replace(cfg, labels=C.LabelRules("all")), scores=scores, pseudo_labels=pseudo)
    # the kit's scope: every dropped label 0.01 before the manual scores, every added one 0.99
    want = {0: 0.01, 1: 1.0, 3: 1.0, 6: 0.01, 8: 0.01, 9: 0.01, 12: 1.0, 15: 0.01, 16: 1.0}
    assert broad.targets[0, list(want)].tolist() == pytest.approx(list(want.values()))
    assert broad.targets[1, [6, 11, 18]].tolist() == pytest.approx([0.99, 0.99, 0.01])


# --- issue 20 item 3: the spindle rule keeps the other soft targets ------------------------------------

def test_spindle_rule_keeps_the_soft_targets_as_the_team_relabel_eleven():
    cfg = C.training_preset("milimed2021", 1)
    table = _table([("a", 1, (0, 6, 8, 12, 16)), ("b", 1, (0, 1, 3)), ("c", 1, (8, 12))])
    scores = {("a", 1): {11: 3.0, 9: 4.0}, ("b", 1): {11: 5.0}, ("c", 1): {8: 2.0, 12: 3.0, 11: 2.0}}
    pseudo = {("b", 1): (3,)}  # b: 0 dropped (auto-relabel, 0.01) and 1 dropped (auto-relabel2, 0.01)
    ts = recipe_targets(table, cfg, scores=scores, pseudo_labels=pseudo)
    # The team's label tensor: 1 on image_labels, then every relabel value; relabel_eleven (last) only
    # sets image_labels = {11}. a: 6 -> 1.0 (relabel_me6, unmarked), 8 -> 0.69 (unscored), 9 -> 1.0
    # (map 9: score 4), 12 -> 0.69 reset to 1.0 by UpSampleSampler(12), 11 -> 0.2 (score 3); 0, 16 plain -> 0.
    want_a = np.zeros(19, np.float32)
    want_a[[6, 8, 9, 12, 11]] = [1.0, 0.69, 1.0, 1.0, 0.2]
    # b: 0 -> 0.01, 1 -> 0.69 then 0.01 (auto-relabel2 after relabel_me), 3 plain -> 0, 11 -> 1.0 (score 5)
    want_b = np.zeros(19, np.float32)
    want_b[[0, 1, 11]] = [0.01, 0.01, 1.0]
    # c: 11 at 0.05 (score 2) is below 0.2: no rule; 8 -> 0.5, 12 -> 0.75
    want_c = np.zeros(19, np.float32)
    want_c[[8, 11, 12]] = [0.5, 0.05, 0.75]
    np.testing.assert_allclose(ts.targets, np.stack([want_a, want_b, want_c]), atol=1e-6)
    assert [row.nonzero()[0].tolist() for row in ts.labels] == [[11], [11], [8, 11, 12]]
    kit = C.training_preset("kit2025", 1)
    assert kit.soft.exclusive_min is None and kit.soft.exclusive_keeps == ()  # kit2025 has no spindle rule


# --- item 7: fine-tuning composition -----------------------------------------------------------------

def _cells_csv(path, rows):
    base = dict(y0=0, x0=0, y1=1, x1=1, area=1, nucleus_cut=0.0, outlier_score=0.0, valid=True)
    frame = pd.DataFrame([dict(base, image_id=i, cell_id=c, crop=f"{i}_{c}.png", labels=lab) for i, c, lab in rows])
    frame[list(CELLS_COLUMNS)].to_csv(path, index=False)
    return path


def test_finetune_list_composition_as_the_team_built_it(tmp_path):
    from hpa_kernel.training.dataset import read_cells_table
    from hpa_kernel.training.finetune import FinetuneInputs, _finetune_data

    val = _cells_csv(tmp_path / "val.csv", [
        ("v0", 1, "6"),      # class 6 at 1.0: +1 duplicate, both repeated 4x -> 10
        ("v1", 1, "6"),      # flagged antibody, 0.51: not repeated -> 1
        ("v2", 1, "0"),      # pseudo positive 6 at 0.99: class 0 once + class 6 once -> 2
        ("v3", 1, "6"),      # pseudo-negative 6 at 0.01, target kept: once
        ("v4", 1, "11|0"),   # a class-11 cell: the validation set has none -> 0
        ("v5", 1, "12"),     # class 12 unscored: 0.69 kept, not repeated -> 1
        ("v6", 1, "12"),     # class 12 score 4 -> 1.0: 1 + 5 -> 6
        ("v7", 1, "1"),      # class 1 score 5 -> 1.0, pseudo drops 1: the validation score wins -> 1 + 2 -> 3
        ("v8", 1, "15"),     # class 15 score 2 -> 0.5: undecided, not repeated -> 1
    ])
    train = _cells_csv(tmp_path / "train.csv", [
        ("t0", 1, "11"),     # 11 score 5 -> 1.0 (training map): joins class 11's list, taken 4 times -> 4
        ("t1", 1, "11"),     # 11 score 4 -> 0.65: not borrowed
        ("t2", 1, "15"),     # 15 score 4 -> 1.0: joins class 15 once, not repeated -> 1
        ("t3", 1, "15"),     # 15 unscored -> 0.69: not borrowed
        ("t4", 1, "0"),      # not borrowed
    ])
    soft = tmp_path / "soft.csv"
    pd.DataFrame([(i, 1, c, 0.0, s, 1) for i, c, s in [("v6", 12, 4), ("v7", 1, 5), ("v8", 15, 2), ("t0", 11, 5),
                                                        ("t1", 11, 4), ("t2", 15, 4)]],
                 columns=["image_id", "cell_id", "class_id", "soft_label", "score", "n_labellers"]).to_csv(soft, index=False)
    pseudo = tmp_path / "pseudo.csv"
    pd.DataFrame({"image_id": ["v2", "v3", "v7"], "cell_id": [1, 1, 1], "pseudo_labels": ["0|6", "", ""]}).to_csv(pseudo, index=False)
    marks = _write_marks(tmp_path / "marks.csv", [("v1", "ab1", "1")])
    inputs = FinetuneInputs(soft_labels=soft, pseudo_labels=pseudo, antibody_marks=marks, train_cells=train)
    base = C.training_preset("milimed2021", 1, train_filter=False, input_size=32)
    m = C.finetune_preset("milimed2021")

    def copies(config):
        idx, ds = _finetune_data(read_cells_table(val), base, config, inputs, cache=False)
        names = [p.rsplit("/", 1)[-1][:2] for p in ds.crop_paths]
        got = {n: 0 for n in names}
        for i in idx:
            got[names[i]] += 1
        return got, dict(zip(names, ds.targets))

    got, targets = copies(m)
    assert got == {"v0": 10, "v1": 1, "v2": 2, "v3": 1, "v5": 1, "v6": 6, "v7": 3, "v8": 1, "t0": 4, "t2": 1}
    assert targets["v0"][6] == 1.0 and targets["v1"][6] == pytest.approx(0.51) and targets["v2"][6] == pytest.approx(0.99)
    assert targets["v3"][6] == pytest.approx(0.01) and targets["v5"][12] == pytest.approx(0.69) and targets["v7"][1] == 1.0
    assert targets["t0"][11] == 1.0 and targets["t2"][15] == 1.0
    # each element switches off: no class-6 duplicate and rule repeats, no borrowed cells, class-11 cells kept
    got, _ = copies(dataclasses.replace(m, duplicate_at={}, rule_classes=(), train_min={}, exclude_classes=()))
    assert got == {"v0": 1, "v1": 1, "v2": 2, "v3": 1, "v4": 1 + 4, "v5": 1, "v6": 6, "v7": 3, "v8": 1}
    # manual_last off: the late pseudo-negative (class 1) overrides the validation score, which is then not repeated
    got, targets = copies(dataclasses.replace(m, manual_last=False))
    assert got["v7"] == 1 and targets["v7"][1] == pytest.approx(0.01)

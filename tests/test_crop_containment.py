"""Issue 25.1: a crop path that leaves the cells folder is refused by every command that reads crops.

The cells table is ``tmp/cells/cells.csv``; the "secret" lies beside it in ``tmp/secret/``. Line 3
of the table points at the secret by ``..``, by an absolute path, or through a symbolic link in
``crops/``. Training, fine-tuning, the pseudo-labels (both steps), a validation table and the
labelling tool must stop with the containment error (file, line 3, column ``crop``) before any crop
is opened: the secret is a folder, so opening it would give a different error, and the crop reader
is replaced by one that records its calls.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kernel.cells.table import CSV_COLUMNS

ROW = {"image_id": "a", "cell_id": "1", "crop": "crops/a_1.png", "y0": "0", "x0": "0", "y1": "8", "x1": "8",
       "area": "64", "nucleus_cut": "0.0", "outlier_score": "0.0", "valid": "True", "labels": "0|5"}


def _cells(tmp_path, how: str):
    """``cells/cells.csv`` whose second row (line 3) reaches the secret ``how``; returns (csv, secret)."""
    from hpa_kernel.cells.builder import write_crop

    folder = tmp_path / "cells"
    (folder / "crops").mkdir(parents=True)
    secret = tmp_path / "secret" / "secret_3.png"
    secret.mkdir(parents=True)  # a folder: reading it as a crop would fail differently
    write_crop(folder / "crops" / "a_1.png", np.full((8, 8, 4), 50, np.uint8))
    crop = {"dotdot": "crops/../../secret/secret_3.png", "absolute": str(secret), "symlink": "crops/a_2.png"}[how]
    if how == "symlink":
        (folder / "crops" / "a_2.png").symlink_to(secret)
    rows = [dict(ROW), dict(ROW, cell_id="2", crop=crop)]
    path = folder / "cells.csv"
    path.write_text("\n".join([",".join(CSV_COLUMNS)] + [",".join(r[c] for c in CSV_COLUMNS) for r in rows]) + "\n")
    return path, secret


@pytest.fixture
def crop_reads(monkeypatch):
    """Every path handed to the crop reader, wherever it is imported from."""
    import hpa_kernel.cells.builder as builder
    import hpa_kernel.labelling.crops as label_crops
    import hpa_kernel.training.dataset as dataset

    calls = []
    original = builder.read_crop

    def recording(path):
        calls.append(str(path))
        return original(path)

    for module in (builder, dataset, label_crops):
        monkeypatch.setattr(module, "read_crop", recording)
    return calls


def _tiny():
    """A run that would end at once (no download, one step) if the table were wrongly accepted."""
    from hpa_kernel.training import quick_config

    return quick_config(1, input_size=32, batch_size=2, epochs=1, steps_per_epoch=1)


def _train(csv, tmp_path):
    from hpa_kernel.training import RunOptions, train_group

    train_group(_tiny(), csv, tmp_path / "w", options=RunOptions(device="cpu", progress=False))


def _validation(csv, tmp_path):
    from hpa_kernel.training import RunOptions, TrainInputs, train_group

    good = tmp_path / "good"
    (good / "crops").mkdir(parents=True)
    (good / "crops" / "a_1.png").write_bytes((csv.parent / "crops" / "a_1.png").read_bytes())
    (good / "cells.csv").write_text(csv.read_text().splitlines()[0] + "\n" + csv.read_text().splitlines()[1] + "\n")
    train_group(_tiny(), good / "cells.csv", tmp_path / "w",
                inputs=TrainInputs(val_cells=csv), options=RunOptions(device="cpu", progress=False))


def _finetune(csv, tmp_path):
    from hpa_kernel.training import finetune_checkpoints

    checkpoint = tmp_path / "g1_m0.pth"
    checkpoint.write_bytes(b"not read before the table")
    finetune_checkpoints([checkpoint], csv, tmp_path / "ft")


def _pseudo_labels(csv, tmp_path):
    from hpa_kernel.training import make_pseudo_labels

    checkpoint = tmp_path / "pseudo_resnet18_m0.pth"
    checkpoint.write_bytes(b"not read before the table")
    make_pseudo_labels(csv, checkpoint, tmp_path / "pseudo.csv", device="cpu")


def _pseudo_labeller(csv, tmp_path):
    from hpa_kernel.training import PseudoLabelConfig, train_pseudo_labeller

    train_pseudo_labeller(csv, tmp_path / "pl", PseudoLabelConfig(train=_tiny()), device="cpu", progress=False)


def _label(csv, tmp_path):
    from hpa_kernel.labelling.crops import CellTable

    CellTable(csv)


COMMANDS = {"train": _train, "validation": _validation, "finetune": _finetune, "pseudo_labels": _pseudo_labels,
            "pseudo_labeller": _pseudo_labeller, "label": _label}


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_crops_outside_the_cells_folder_are_refused_unopened(tmp_path, crop_reads, command, how):
    csv, secret = _cells(tmp_path, how)
    with pytest.raises(ValueError) as err:
        COMMANDS[command](csv, tmp_path)
    message = str(err.value)
    assert str(csv) in message and "line 3, column 'crop'" in message, message
    assert "outside the crops folder" in message and str(secret) in message, message
    reason = {"dotdot": "'..'", "absolute": "absolute path", "symlink": "symbolic link"}[how]
    assert reason in message, message
    assert crop_reads == []


def test_links_and_dots_that_stay_inside_are_read(tmp_path):
    from hpa_kernel.cells.table import read_cells_table

    csv, _ = _cells(tmp_path, "dotdot")
    (csv.parent / "crops" / "alias.png").symlink_to(csv.parent / "crops" / "a_1.png")
    csv.write_text(csv.read_text().replace("crops/../../secret/secret_3.png", "crops/../crops/alias.png"))
    table = read_cells_table(csv)
    assert table["crop_path"].tolist() == [str((csv.parent / "crops" / "a_1.png").resolve())] * 2


def test_the_labelling_crops_folder_is_the_root_it_checks(tmp_path):
    """``CellTable(crops_dir=...)``: a crop beside the csv but outside ``crops_dir`` is refused too."""
    from hpa_kernel.labelling.crops import CellTable

    csv, _ = _cells(tmp_path, "dotdot")
    csv.write_text(csv.read_text().replace("crops/../../secret/secret_3.png", "other.png"))
    (csv.parent / "other.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"line 3, column 'crop'.*outside the crops folder"):
        CellTable(csv)

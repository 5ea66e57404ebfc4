"""The training notebooks run under papermill on a tiny toy cells table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from toy_training import make_toy_cells

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TINY = dict(input_size=32, batch_size=4, epochs=2, steps_per_epoch=1, device="cpu")


def _run(name: str, out: Path, parameters: dict) -> dict:
    papermill = pytest.importorskip("papermill")
    out_nb = out / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out_nb), parameters=parameters, kernel_name="python3",
                               progress_bar=False, cwd=str(out))
    return json.loads(out_nb.read_text())


def _has_parameters_cell(name: str) -> bool:
    nb = json.loads((NOTEBOOKS / name).read_text())
    return any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])


@pytest.mark.parametrize("name", ["train.ipynb", "finetune.ipynb", "pseudo_labels.ipynb"])
def test_notebooks_have_one_parameters_cell(name):
    assert _has_parameters_cell(name)


@pytest.mark.slow
def test_train_finetune_and_pseudo_notebooks(tmp_path):
    cells = make_toy_cells(tmp_path / "toy", n_images=4, cells_per_image=3, size=48, seed=2)
    _run("train.ipynb", tmp_path, {"cells_csv": str(cells), "out_dir": str(tmp_path / "w"), "group": 2, "pretrained": None,
                                    **TINY})
    assert (tmp_path / "w" / "g2_m1.pth").is_file() and (tmp_path / "w" / "runs" / "g2" / "curves.png").is_file()
    _run("finetune.ipynb", tmp_path, {"checkpoints": [str(tmp_path / "w" / "g2_m0.pth")], "cells_csv": str(cells),
                                       "out_dir": str(tmp_path / "ft"), "epoch_size": 4, "batch_size": 4, "device": "cpu"})
    assert (tmp_path / "ft" / "g2_m0.pth").is_file()
    params = {k: v for k, v in TINY.items() if k != "epochs"}
    _run("pseudo_labels.ipynb", tmp_path, {"cells_csv": str(cells), "out_dir": str(tmp_path / "pl"), **params})
    table = pd.read_csv(tmp_path / "pl" / "pseudo_labels.csv")
    assert len(table) == 4 * 3 and {"pseudo_labels", "rule", "checkpoint_sha256"} <= set(table.columns)

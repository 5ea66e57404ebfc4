"""The submission and validation notebooks, run with papermill on synthetic data and small random checkpoints.

The checks are that the notebooks run top to bottom with injected parameters, write a valid
submission.csv and the figures, and export to HTML; not the score (the checkpoints are untrained).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    from hpa_kernel.demo import random_ensemble

    folder = tmp_path_factory.mktemp("nb_weights")
    random_ensemble(folder, sizes=(1, 1, 2), arch="efficientnet_b0", input_size=64)
    return folder


def _parameters_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    return nb, tagged[0]


@pytest.mark.parametrize("name", ["submission.ipynb", "validate.ipynb"])
def test_notebook_is_thin_and_typed(name):
    nb, params = _parameters_cell(NOTEBOOKS / name)
    lines = [ln for ln in params.source.splitlines() if ln and not ln.startswith(("#", "from typing"))]
    assert lines and all(":" in ln.split("=")[0] and "#" in ln for ln in lines), "every parameter is typed and commented"
    names = {ln.split(":")[0] for ln in lines}
    assert set(papermill.inspect_notebook(str(NOTEBOOKS / name))) == names, "papermill sees every parameter"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.count("/kaggle/input") == 1  # the install cell is the only place that knows it
    assert not any("/kaggle" in c.source for c in code[1:])
    assert "pip\", \"install\", \"--no-index\", \"--find-links\"" in code[0].source
    assert all(len(c.source.splitlines()) <= 25 for c in code[1:]), "logic belongs in hpa_kernel, not in the notebook"
    assert not any(c.outputs for c in code), "notebooks are stored without outputs"


@pytest.mark.slow
def test_submission_notebook_writes_a_valid_file(synthetic_competition, small_weights, tmp_path):
    from hpa_kernel.submission import check_submission

    out = tmp_path / "submission.csv"
    executed = tmp_path / "submission.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "submission.ipynb"), str(executed), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters=dict(data_dir=str(synthetic_competition.root), weights_dir=str(small_weights), output=str(out),
                        budget_hours=0.25, device="cpu", batch_size=16, workers=0, tta=False, segmenter="classic",
                        torch_threads=1, progress=False),
    )
    assert check_submission(out, synthetic_competition.sample_submission).ok
    text = json.dumps(nbformat.read(executed, as_version=4).cells[-2].outputs)
    assert "3 predicted, 0 fallback" in text


@pytest.mark.slow
def test_validate_notebook_scores_plots_and_exports_html(synthetic_competition, small_weights, tmp_path):
    from nbconvert import HTMLExporter

    executed = tmp_path / "validate.out.ipynb"
    out_dir = tmp_path / "validate_out"
    papermill.execute_notebook(
        str(NOTEBOOKS / "validate.ipynb"), str(executed), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters=dict(data_dir=str(synthetic_competition.root), weights_dir=str(small_weights), out_dir=str(out_dir),
                        budget_hours=0.25, device="cpu", batch_size=16, workers=0, tta=False, segmenter="classic",
                        torch_threads=1, n_overlays=2),
    )
    assert (out_dir / "per_class_ap.png").stat().st_size > 1000
    assert (out_dir / "per_class_ap_vs_baseline.png").stat().st_size > 1000 and (out_dir / "cells_top3.png").stat().st_size > 1000
    assert (out_dir / "overlays.png").stat().st_size > 1000
    nb = nbformat.read(executed, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "mAP@0.6 (box IoU)" in text and "mAP@0.6 (mask IoU)" in text
    assert "image/png" in text  # the figures are in the notebook
    html, _ = HTMLExporter().from_notebook_node(nb)
    (tmp_path / "validate.html").write_text(html)
    assert "mAP@0.6 (mask IoU)" in html and "<img" in html

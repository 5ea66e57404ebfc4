"""``hpa-kernel ablate``: variants of a recipe on one labelled set, cells and crops computed once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.ablation import AblationConfig, ablation_variants, run_ablation
from hpa_kernel.metric import parse_prediction_string


def test_variants_switch_off_one_element_each():
    v = ablation_variants("milimed2021")
    base = v["recipe"]
    assert v["no cell/image blend"].blend is False and v["no border cleaner"].border_cleaner is None
    assert v["no outlier cleaner"].outlier_cleaner is None and v["no Negative rule"].negative == "none"
    assert v["TTA on"].tta is True and base.tta is False
    assert base.crop == "milimed2021" and v["kit crop (8-bit, INTER_AREA, re-masked)"].crop == "kit2025"
    for name, recipe in v.items():  # everything else as in the recipe
        differs = [f for f in base.__dataclass_fields__ if getattr(recipe, f) != getattr(base, f)]
        assert len(differs) == (0 if name == "recipe" else 1), (name, differs)
    assert "TTA off" in ablation_variants("kit2025")


def test_ablation_runs_cells_once_and_the_classifier_once_per_tta_setting(tmp_path, monkeypatch):
    from hpa_kernel.cells import CellPipeline
    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.demo import random_ensemble
    from hpa_kernel.synthetic import make_competition

    comp = make_competition(tmp_path / "data", n_train=1, n_test=2, size=256, seed=7)
    random_ensemble(tmp_path / "weights", sizes=(1,), weights=(1.0,), arch="resnet18", input_size=32)
    runs, views = [], []
    original_run, original_predict = CellPipeline.run, Ensemble.predict

    def counting_run(self, *args, **kwargs):
        runs.append(1)
        return original_run(self, *args, **kwargs)

    def counting_predict(self, crops, **kwargs):
        views.append((tuple(kwargs.get("tta") or ()), crops.dtype.name))
        return original_predict(self, crops, **kwargs)

    monkeypatch.setattr(CellPipeline, "run", counting_run)
    monkeypatch.setattr(Ensemble, "predict", counting_predict)
    result = run_ablation(AblationConfig(data=comp.root, weights=tmp_path / "weights", out=tmp_path / "out"))
    assert len(runs) == 1
    # the recipe's uint16 crops without and with TTA, and the kit crop's uint8 crops for its row
    calls = [(("identity",), "uint16"), (("identity", "hflip", "vflip"), "uint16"), (("identity",), "uint8")]
    assert sorted(views) == sorted(calls * result.n_images)
    assert [r.name for r in result.rows] == list(ablation_variants("milimed2021"))
    assert result.n_images == 2 and result.n_cells > 0
    for row in result.rows:
        assert set(row.scores) == {"box", "mask"} and all(0 <= s <= 1 for s in row.scores.values())

    def negatives(path):
        sub = pd.read_csv(path, dtype=str, keep_default_na=False)
        return np.array([c for text in sub["PredictionString"] for label, c, _ in parse_prediction_string(text) if label == 18])

    by_name = {r.name: r for r in result.rows}
    assert (negatives(by_name["no Negative rule"].submission) == 0).all()
    assert (negatives(by_name["recipe"].submission) > 0).any()
    table = (tmp_path / "out" / "ablation.md").read_text().splitlines()
    assert len(table) == 2 + len(result.rows) and table[2].startswith("| the recipe (milimed2021) |")


def test_ablation_config_checks():
    with pytest.raises(ValueError, match="unknown recipe"):
        AblationConfig(data="d", weights="w", out="o", recipe="x")
    with pytest.raises(ValueError, match="together"):
        AblationConfig(data="d", weights="w", out="o", truth_cells="c.csv")

"""The simulated annotator of the data-centric loop (hpa_kernel.demo_loop): right answers, its noise rate,
nested draws, and the way through the labelling store and export (no training here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.demo_loop import LoopConfig, annotator_scores, simulate_annotator


def _table(n_images: int = 40, cells: int = 6, seed: int = 0):
    """A cells table: image i is labelled (i % 3, 5); each cell's truth is a random non-empty subset or Negative."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for i in range(n_images):
        image = (i % 3, 5)
        for k in range(1, cells + 1):
            rows.append({"image_id": f"im{i:02d}", "cell_id": k, "valid": k != cells, "label_ids": image})
            r = rng.random()
            truth.append((18,) if r < 0.15 else tuple(c for c in image if rng.random() < 0.6) or (image[0],))
    return pd.DataFrame(rows), truth


def test_noise_free_annotator_scores_the_truth():
    table, truth = _table()
    rows = annotator_scores(table, truth, n_per_class=20, noise=0.0, seed=3, classes=(0, 5))
    by_key = {(i, k): t for i, k, t in zip(table["image_id"], table["cell_id"], truth)}
    valid = {(i, k) for i, k, v in zip(table["image_id"], table["cell_id"], table["valid"]) if v}
    assert len(rows) == 40  # 20 per class: class 0 has 14 images x 5 valid cells, class 5 all
    for image_id, cell_id, c, score in rows:
        assert (image_id, cell_id) in valid  # only valid cells of images labelled with c
        assert c in table.loc[(table["image_id"] == image_id)].iloc[0]["label_ids"]
        assert (score >= 4) == (c in by_key[(image_id, cell_id)]), (image_id, cell_id, c, score)


def test_noise_rate_and_nested_draws():
    table, truth = _table(n_images=300, seed=1)
    by_key = {(i, k): t for i, k, t in zip(table["image_id"], table["cell_id"], truth)}
    rows = annotator_scores(table, truth, n_per_class=1000, noise=0.2, seed=5, classes=(5,))
    wrong = np.mean([(s >= 4) != (c in by_key[(i, k)]) for i, k, c, s in rows])
    assert len(rows) == 1000 and abs(wrong - 0.2) < 0.04  # 1000 Bernoulli(0.2): sd 0.013
    small = annotator_scores(table, truth, n_per_class=30, noise=0.2, seed=5, classes=(5,))
    assert small == rows[:30]  # the cells of a smaller N are the first of a larger one


def test_answers_go_through_the_store_and_export(tmp_path):
    from hpa_kernel.labelling.export import DEFAULT_MAPPING, read_soft_labels, write_soft_labels
    from hpa_kernel.labelling.store import LabelStore

    table, truth = _table(n_images=6)
    rows = annotator_scores(table, truth, n_per_class=5, noise=0.0, seed=0, classes=(0, 1, 5))
    assert simulate_annotator(tmp_path / "labels.sqlite", rows) == len(rows)
    with LabelStore(tmp_path / "labels.sqlite") as store:
        assert write_soft_labels(store, tmp_path / "soft.csv") == len(rows)
    soft = read_soft_labels(tmp_path / "soft.csv")
    for image_id, cell_id, c, score in rows:
        assert soft[(image_id, cell_id)][c] == DEFAULT_MAPPING[score]


def test_loop_config_checks_its_fields():
    with pytest.raises(ValueError, match="noise"):
        LoopConfig(noise=0.7)
    with pytest.raises(ValueError, match="n_per_class"):
        LoopConfig(n_per_class=())
    assert LoopConfig(n_per_class=[10, 30]).n_per_class == (10, 30)

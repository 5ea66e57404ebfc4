"""Learning asserted, not assumed: the demo's training fits its cells and beats the frequency baseline.

One short, seeded training of an EfficientNet-B0 (the demo's settings, :func:`hpa_kernel.demo.demo_config`)
on the truth cells of a small synthetic competition, each cell with its own truth labels, shared by
the two tests:

* the fit check: the cell-level mAP on the training cells themselves reaches 0.95 (a network that
  cannot fit ~100 cells cannot learn anything from real data either);
* the learning check: on held-out cells of other images it beats the label-frequency baseline
  (every cell scored with each class's training frequency) by at least ``MARGIN``, with the cell
  mAP counted as the competition does: class c is ranked over the cells of the images that have c
  (the metric drops detections of classes absent from an image). Counted over all cells instead:
  0.19 against 0.16. The margin is small and stated as such: the network fits its ~110 cells but
  generalises little from so few (see benchmarks/RESULTS.md, "Learning"); the test guards that it
  does not fall back to the baseline.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kernel.training.metrics import classification_average_precision, mean_average_precision

STEPS = 150  # optimizer steps of batch 16
FIT = 0.95  # training-set cell mAP the fit check requires
MARGIN = 0.02  # held-out cell mAP above the frequency baseline (measured +0.038: 0.669 vs 0.631)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from hpa_kernel.demo import demo_config, truth_training_cells
    from hpa_kernel.synthetic import make_competition
    from hpa_kernel.training import RunOptions, train_group
    from hpa_kernel.training.dataset import build_targets, read_cells_table
    from hpa_kernel.training.pseudo import predict_cells

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("learning")
    comp = make_competition(root / "data", n_train=14, n_test=8, size=512, seed=13, cover_classes=True)
    train_csv = truth_training_cells(comp, root / "train_cells", "train")
    test_csv = truth_training_cells(comp, root / "test_cells", "test")
    config = demo_config(1, epochs=1, steps_per_epoch=STEPS)
    model = train_group(config, train_csv, root / "w", options=RunOptions(device="cpu", progress=False, manifest=False))[-1]
    out = {}
    for split, csv in (("train", train_csv), ("test", test_csv)):
        table = read_cells_table(csv)
        out[split] = (build_targets(table)[0], _nineteen(predict_cells(model, table)), table["image_id"].to_numpy())
    return out


def _nineteen(probs: np.ndarray) -> np.ndarray:
    """19 columns: an 18-output model's Negative is ``1 - max`` of the others (as at inference)."""
    return np.concatenate([probs, 1.0 - probs.max(axis=1, keepdims=True)], axis=1) if probs.shape[1] == 18 else probs


def test_fit_check_on_truth_labelled_cells(trained):
    targets, probs, _ = trained["train"]
    assert len(targets) >= 80
    score, _ = mean_average_precision(targets, probs)
    assert score >= FIT, f"training-set cell mAP {score:.3f} < {FIT}: the network does not fit its own cells"
    # the predictions separate the cells, not a near-constant output that only ties rank well
    assert probs.std(axis=0).mean() > 0.15


def _within_image_map(targets: np.ndarray, scores: np.ndarray, images: np.ndarray) -> float:
    """Cell mAP as the competition counts it: class c is ranked only over the cells of images that have c."""
    per_class = []
    for c in range(targets.shape[1]):
        present = np.isin(images, np.unique(images[targets[:, c] >= 0.5]))
        if present.any():
            per_class.append(classification_average_precision(targets[present, c] >= 0.5, scores[present, c]))
    return float(np.mean(per_class))


def test_short_training_beats_the_frequency_baseline(trained):
    (train_targets, _, _), (targets, probs, images) = trained["train"], trained["test"]
    assert len(targets) >= 40 and len(np.unique(images)) >= 6
    freq = (train_targets >= 0.5).mean(axis=0)
    rng = np.random.default_rng(0)  # the baseline's ties broken at random, averaged over draws
    baseline = np.mean([_within_image_map(targets, freq + 1e-9 * rng.random(targets.shape), images) for _ in range(20)])
    score = _within_image_map(targets, probs, images)
    assert score - baseline >= MARGIN, f"held-out cell mAP {score:.3f} vs frequency baseline {baseline:.3f}"

"""Learning asserted, not assumed: the demo's training fits its cells and beats the frequency baseline.

One short, seeded training of an EfficientNet-B0 (the demo's settings, :func:`hpa_kernel.demo.demo_config`)
on the truth cells of a small synthetic competition, each cell with its own truth labels, shared by
the two tests:

* the fit check: the cell-level mAP on the training cells themselves reaches 0.95 (a network that
  cannot fit ~100 cells cannot learn anything from real data either);
* the learning check: on held-out cells of other images it beats the label-frequency baseline
  (every cell scored with each class's training frequency) by at least ``MARGIN``.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kernel.training.metrics import mean_average_precision

STEPS = 150  # optimizer steps of batch 16
FIT = 0.95  # training-set cell mAP the fit check requires
MARGIN = 0.25  # held-out cell mAP above the frequency baseline


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from hpa_kernel.demo import demo_config, truth_training_cells
    from hpa_kernel.synthetic import make_competition
    from hpa_kernel.training import train_group
    from hpa_kernel.training.dataset import build_targets, read_cells_table
    from hpa_kernel.training.pseudo import predict_cells

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("learning")
    comp = make_competition(root / "data", n_train=14, n_test=8, size=512, seed=13, cover_classes=True)
    train_csv = truth_training_cells(comp, root / "train_cells", "train")
    test_csv = truth_training_cells(comp, root / "test_cells", "test")
    config = demo_config(1, epochs=1, steps_per_epoch=STEPS)
    model = train_group(config, train_csv, root / "w", device="cpu", progress=False, manifest=False)[-1]
    out = {}
    for split, csv in (("train", train_csv), ("test", test_csv)):
        table = read_cells_table(csv)
        out[split] = (build_targets(table)[0], _nineteen(predict_cells(model, table)))
    return out


def _nineteen(probs: np.ndarray) -> np.ndarray:
    """19 columns: an 18-output model's Negative is ``1 - max`` of the others (as at inference)."""
    return np.concatenate([probs, 1.0 - probs.max(axis=1, keepdims=True)], axis=1) if probs.shape[1] == 18 else probs


def test_fit_check_on_truth_labelled_cells(trained):
    targets, probs = trained["train"]
    assert len(targets) >= 80
    score, _ = mean_average_precision(targets, probs)
    assert score >= FIT, f"training-set cell mAP {score:.3f} < {FIT}: the network does not fit its own cells"
    # the predictions separate the cells, not a near-constant output that only ties rank well
    assert probs.std(axis=0).mean() > 0.15


def _frequency_map(train_targets: np.ndarray, test_targets: np.ndarray, draws: int = 20) -> float:
    """Held-out cell mAP of every cell scored with its class's training frequency (ties broken at random)."""
    freq = (train_targets >= 0.5).mean(axis=0)
    rng = np.random.default_rng(0)
    scores = [mean_average_precision(test_targets, freq + 1e-9 * rng.random(test_targets.shape))[0] for _ in range(draws)]
    return float(np.mean(scores))


def test_short_training_beats_the_frequency_baseline(trained):
    (train_targets, _), (targets, probs) = trained["train"], trained["test"]
    assert len(targets) >= 40
    score, _ = mean_average_precision(targets, probs)
    baseline = _frequency_map(train_targets, targets)
    assert score - baseline >= MARGIN, f"held-out cell mAP {score:.3f} vs frequency baseline {baseline:.3f}"

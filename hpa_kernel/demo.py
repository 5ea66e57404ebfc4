"""The end-to-end demo on a synthetic competition, as library steps (``hpa-kernel demo`` runs them).

1. :func:`make_demo_competition`: a synthetic competition (:func:`hpa_kernel.synthetic.make_competition`).
2. :func:`build_training_cells`: training cells from the train split, the way real data is
   prepared: classic segmentation, crops and heuristics (:mod:`hpa_kernel.cells`), each cell with
   its image's labels from ``train.csv`` (weak labels).
3. :func:`train_demo_ensemble`: the three groups (1, 2 and 4 snapshots) with
   :func:`hpa_kernel.training.train_group` and :func:`demo_config`; the manifest is written with
   pinned hashes. :func:`random_ensemble` writes an untrained ensemble instead (tests, notebooks).
4. :func:`hpa_kernel.submission.run_submission` with the classic segmenter (the demo has no HPA
   segmentation weights), then the file is validated.
5. :func:`score_submission` in both IoU modes, and :func:`frequency_baseline`: the same cells with
   every class predicted at its training frequency, for comparison; :func:`oracle_submission` gives
   the same cells the labels of their best-matching truth cell (the ceiling of the data), and
   :func:`bootstrap_difference` an interval over test images for ensemble minus baseline.

The demo's training is :data:`DEMO_TRAINING`, one small override of the default training preset
(:func:`demo_config`). What kept the earlier demo from learning, measured on ~200 synthetic cells
with per-cell truth labels (training-set cell mAP after 300 steps of batch 16, 64 px, B0): focal
loss with flips and 90-degree rotations 0.36; BCE with them 0.59-0.63 (lr 1e-3 or 3e-3); BCE
without augmentation 0.98 (0.98 already at 200 steps). At 64 px and a few hundred steps the flips
and rotations multiply the views the network must learn, and the focal loss shrinks the gradient of
the few positives; neither the learning rate nor BatchNorm at batch 16 (train- and eval-mode
scores agree) was the limit. See ``benchmarks/RESULTS.md`` ("Learning").

What caps the demo near 0.78 box (ceiling 0.986), measured in ``benchmarks/RESULTS.md`` ("What
limits learning on the synthetic data"): the network's generalisation from a few hundred cells.
Fed the truth, the recipe's confidences score 0.975; the training and inference crops are
bit-identical; a logistic regression on hand features of the same 64-px crops reaches 0.93-0.95
held-out cell mAP (0.908 box through the recipe) where the B0 reaches 0.783, and weak labels cost
it only 0.02. More images and steps add little (see ``benchmarks/bench_learning_curve.py``), so
the demo keeps its 60 images and 2 x 80 steps per group: about 3 minutes of training on 2 quiet
cores. :mod:`hpa_kernel.demo_loop` runs and scores the data-centric loop on the same data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpa_kernel.training.config import DEFAULT_RECIPE, LossConfig, TrainConfig, training_preset

__all__ = [
    "DEMO_TRAINING",
    "DemoConfig",
    "DemoResult",
    "demo_config",
    "make_demo_competition",
    "build_training_cells",
    "truth_training_cells",
    "oracle_submission",
    "cell_predictions",
    "bootstrap_scores",
    "bootstrap_difference",
    "random_ensemble",
    "train_demo_ensemble",
    "label_frequencies",
    "frequency_baseline",
    "score_submission",
    "per_class_table",
    "plot_per_class_ap",
    "plot_cells_top3",
    "write_report",
    "run_demo",
]

logger = logging.getLogger(__name__)


#: The demo's training settings: one override of the default training preset (:func:`demo_config`).
#: A few hundred CPU steps on 64-px crops: BCE for every group (the focal loss hardly moves the few
#: positives of a small set), no augmentation (flips and rotations at 64 px and this length keep a
#: B0 from fitting), AdamW 1e-3 with a warm-up cosine over the steps (the recipe's per-epoch cosine
#: does not decay within so short a run), random initialisation (nothing downloads), no dropout, no
#: validation split, and the snapshots spread over the end of training instead of chosen epochs;
#: see the module docstring. The network is the recipe's (tf_efficientnet_b0) with timm's BatchNorm
#: momentum (0.1) and no stochastic depth: with the team's momentum 0.01 and drop path 0.2 this short
#: run fails tests/test_learning.py (the running statistics lag a 160-step run).
DEMO_TRAINING: dict = dict(
    input_size=64, batch_size=16, epochs=2, steps_per_epoch=80, lr=1e-3, warmup=0.05, snapshot_fraction=0.5,
    ensemble_epochs=(), optimizer="adamw", schedule="warmup_cosine", weight_decay=1e-5, pretrained=None,
    loss=LossConfig("bce"), val_fraction=0.0, amp=False, channels_last=False, drop_rate=0.0,
    batchnorm="timm", drop_path_rate=0.0,
)
#: The augmentation fields that :func:`demo_config` switches off in the preset's augmentation.
DEMO_AUGMENT_OFF: dict = dict(flip=False, rotate90=False, rotate_p=0.0, resize_p=0.0, pad_p=0.0)


def demo_config(group: int, **overrides) -> TrainConfig:
    """The default training preset of ``group`` with :data:`DEMO_TRAINING` (then ``overrides``) applied.

    The preset is the default recipe's (:data:`hpa_kernel.training.config.DEFAULT_RECIPE`), so the
    demo's checkpoints have that recipe's outputs (18 under milimed2021). Each group gets its own
    seed, so that the ensemble's members differ.

    >>> cfg = demo_config(3, steps_per_epoch=5)
    >>> cfg.n_checkpoints, cfg.loss.name, cfg.input_size, cfg.steps_per_epoch, cfg.seed, cfg.num_classes
    (4, 'bce', 64, 5, 3, 18)
    """
    base = training_preset(DEFAULT_RECIPE, group)
    augment = dataclasses.replace(base.augment, **DEMO_AUGMENT_OFF)
    return dataclasses.replace(base, **{**DEMO_TRAINING, "augment": augment, "seed": group, **overrides})


def make_demo_competition(out: str | os.PathLike, n_train: int = 60, n_test: int = 60, size: int = 512, seed: int = 2021):
    """A synthetic competition in ``out`` whose train split covers all 19 classes when ``n_train >= 19``.

    See :func:`hpa_kernel.synthetic.make_competition` (``cover_classes=True``).
    """
    from hpa_kernel.synthetic import make_competition

    return make_competition(out, n_train=n_train, n_test=n_test, size=size, seed=seed, cover_classes=True)


def build_training_cells(competition, out: str | os.PathLike, crop_size: int = 64, workers: int | None = None, progress: bool = False) -> Path:
    """Write ``out/cells.csv`` and ``out/crops/*.png`` from the train split, as on real data.

    The train images are segmented with the classic segmenter and cut into crops by
    :func:`hpa_kernel.cells.build_training_set`; each cell carries its image's labels from
    ``train.csv`` (weak labels, as in the competition), and border-cut and outlier cells are
    marked ``valid=False``.

    Returns
    -------
    Path
        The ``cells.csv``.
    """
    from hpa_kernel.cells import CellConfig
    from hpa_kernel.cells.builder import BuildOptions, build_training_set
    from hpa_kernel.segmentation import create_segmenter

    return build_training_set(
        competition.root, out, create_segmenter("classic"), CellConfig(crop_size=crop_size),
        BuildOptions(workers=workers, progress=progress),
    )


def truth_training_cells(competition, out: str | os.PathLike, split: str = "train", crop_size: int = 64) -> Path:
    """Write ``out/cells.csv`` and crops of the truth cells of ``split``, each with its own truth labels.

    The cells are cut by the truth masks (no segmentation) and carry their per-cell labels, not the
    image's: the data of the fit check (can the network learn the cells at all?) and of the
    "trained on truth labels" comparison.

    Returns
    -------
    Path
        The ``cells.csv`` (the columns of :data:`hpa_kernel.cells.table.CSV_COLUMNS`).
    """
    import pandas as pd

    from hpa_kernel.cells.builder import CSV_COLUMNS, write_crop
    from hpa_kernel.cells.crops import cell_boxes, crop_cells
    from hpa_kernel.io import read_image

    truth = pd.read_csv(competition.truth_cells(split), dtype={"ImageID": str, "Labels": str}, keep_default_na=False)
    masks = np.load(competition.truth_masks(split))
    folder = competition.train_dir if split == "train" else competition.test_dir
    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, cells in truth.groupby("ImageID", sort=True):
        label = masks[image_id]
        boxes = cell_boxes(label)
        ids = [int(k) for k in cells["CellID"]]
        crops = crop_cells(read_image(folder, image_id), label, ids, size=crop_size, boxes=boxes)
        for k, crop, labels in zip(ids, crops, cells["Labels"], strict=True):
            name = f"crops/{image_id}_{k}.png"
            write_crop(out / name, crop)
            y0, x0, y1, x1 = boxes[k]
            rows.append((image_id, k, name, y0, x0, y1, x1, int((label == k).sum()), 0.0, 0.0, True, labels))
    path = out / "cells.csv"
    pd.DataFrame(rows, columns=list(CSV_COLUMNS)).to_csv(path, index=False)
    return path


def _best_truth(masks: list[np.ndarray], label: np.ndarray) -> list[int]:
    """For each predicted mask, the truth cell id of largest IoU (0 when it overlaps none)."""
    n = int(label.max()) + 1
    areas = np.bincount(label.ravel(), minlength=n)
    best = []
    for mask in masks:
        inter = np.bincount(label[mask], minlength=n)
        inter[0] = 0
        iou = inter / np.maximum(1, mask.sum() + areas - inter)
        best.append(int(np.argmax(iou)) if inter.any() else 0)
    return best


def cell_predictions(submission: str | os.PathLike, competition) -> list[dict]:
    """Each predicted cell of ``submission`` with its confidences and its best-matching truth cell.

    Returns
    -------
    list of dict
        ``image_id``, ``mask`` (bool (H, W)), ``probs`` (19 confidences, 0 for a class not
        listed), ``truth_id`` (0: no overlap) and ``truth`` (the matched cell's labels, () if none).
    """
    import pandas as pd

    from hpa_kernel.classes import NUM_CLASSES, parse_labels
    from hpa_kernel.metric import parse_prediction_string
    from hpa_kernel.submission.rle import decode_mask

    truth = pd.read_csv(competition.truth_cells("test"), dtype={"ImageID": str, "Labels": str}, keep_default_na=False)
    labels = {(i, int(k)): parse_labels(t) for i, k, t in zip(truth["ImageID"], truth["CellID"], truth["Labels"])}
    masks = np.load(competition.truth_masks("test"))
    sub = pd.read_csv(submission, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    cells = []
    for image_id, h, w, text in zip(sub["ID"], sub["ImageHeight"], sub["ImageWidth"], sub["PredictionString"], strict=True):
        probs: dict[str, np.ndarray] = {}
        for c, conf, m in parse_prediction_string(text):
            probs.setdefault(m, np.zeros(NUM_CLASSES))[c] = conf
        decoded = [decode_mask(m, int(h), int(w)) for m in probs]
        for (m, p), mask, t in zip(probs.items(), decoded, _best_truth(decoded, masks[image_id]), strict=True):
            cells.append({"image_id": image_id, "mask": mask, "probs": p, "truth_id": t, "truth": labels.get((image_id, t), ())})
    return cells


def oracle_submission(submission: str | os.PathLike, competition, out: str | os.PathLike) -> Path:
    """The cells of ``submission``, each given the labels of its best-matching truth cell (confidence 1).

    Its score is the ceiling of the data for these cells: what a perfect classifier would reach
    with this segmentation. A cell that overlaps no truth cell gets confidence 0 everywhere.
    """
    import pandas as pd

    from hpa_kernel.classes import labels_to_multihot
    from hpa_kernel.metric import parse_prediction_string
    from hpa_kernel.submission import prediction_string_for_cells, write_submission

    cells = cell_predictions(submission, competition)
    sub = pd.read_csv(submission, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    rows = {}
    k = 0
    for image_id, text in zip(sub["ID"], sub["PredictionString"], strict=True):
        masks = list(dict.fromkeys(m for _, _, m in parse_prediction_string(text)))
        here = cells[k:k + len(masks)]
        k += len(masks)
        probs = np.array([labels_to_multihot(c["truth"]) for c in here]) if masks else None
        rows[image_id] = prediction_string_for_cells(masks, probs) if masks else ""
    return write_submission(rows, competition.sample_submission, out)


def bootstrap_scores(submissions: dict, competition, n: int = 200, seed: int = 0, iou: str = "box") -> tuple[dict, list[dict]]:
    """The mAP of each submission on the test images, then on ``n`` resamples of them (with replacement).

    Every submission is scored on the same resamples. Returns ``(point, draws)``: ``{name: mAP}`` and
    one such dict per resample.
    """
    import pandas as pd

    from hpa_kernel.metric import load_truth, score_submission

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    truth = load_truth(competition.truth_cells("test"), competition.truth_masks("test"))
    subs = {k: pd.read_csv(p, dtype={"ID": str, "PredictionString": str}, keep_default_na=False).set_index("ID")
            for k, p in submissions.items()}
    ids = sorted(truth)

    def scores(pick) -> dict:
        keys = [f"{ids[i]}#{j}" for j, i in enumerate(pick)]
        t = {key: truth[ids[i]] for key, i in zip(keys, pick)}
        out = {}
        for name, sub in subs.items():
            rows = sub.loc[[ids[i] for i in pick]].reset_index()
            rows["ID"] = keys
            out[name] = score_submission(rows, truth=t, iou=iou).map
        return out

    point = scores(np.arange(len(ids)))
    rng = np.random.default_rng(seed)
    return point, [scores(rng.integers(0, len(ids), len(ids))) for _ in range(n)]


def bootstrap_difference(a: str | os.PathLike, b: str | os.PathLike, competition, n: int = 200, seed: int = 0,
                         iou: str = "box") -> tuple[float, float, float]:
    """mAP(a) - mAP(b) and its 95 % percentile interval over test images resampled with replacement.

    Returns
    -------
    (difference, low, high) : tuple of float
    """
    point, draws = bootstrap_scores({"a": a, "b": b}, competition, n, seed, iou)
    low, high = np.percentile([d["a"] - d["b"] for d in draws], [2.5, 97.5])
    return point["a"] - point["b"], float(low), float(high)


def random_ensemble(
    weights_dir: str | os.PathLike,
    sizes: tuple[int, ...] = (1, 2, 4),
    weights: tuple[float, ...] = (0.2, 0.4, 0.4),
    arch: str = "efficientnet_b0",
    input_size: int = 64,
    seed: int = 0,
    recipe: str | None = None,
):
    """Write an untrained ensemble (random weights) with its pinned manifest; returns the Manifest.

    For tests and notebook smoke runs: the files are real checkpoints in the kit's format, with the
    number of outputs of ``recipe`` (default the default recipe's: 18).
    """
    import torch

    from hpa_kernel import manifest as mf
    from hpa_kernel.classifier import CheckpointConfig, create_classifier, save_checkpoint
    from hpa_kernel.recipe import get_recipe

    spec = get_recipe(recipe)
    weights_dir = Path(weights_dir)
    layout = mf.default_manifest(sizes, weights)
    for gi, group in enumerate(layout.groups):
        for k, ck in enumerate(group.checkpoints):
            torch.manual_seed(seed + 100 * gi + k)
            model = create_classifier(arch, num_classes=spec.num_outputs)
            config = CheckpointConfig(arch=arch, input_size=input_size, group=gi + 1, num_classes=spec.num_outputs, recipe=spec.name)
            save_checkpoint(model, config, weights_dir / ck.file)
    path = mf.write_manifest(layout, weights_dir / mf.MANIFEST_NAME)
    return mf.update_hashes(path, weights_dir, segmentation=False)


def _recipe_of(weights_dir: Path) -> str:
    """The recipe the ensemble in ``weights_dir`` was made for: the first checkpoint's recorded
    ``recipe``, else the first preset whose number of outputs fits it."""
    from hpa_kernel.classifier import load_config
    from hpa_kernel.manifest import load_manifest
    from hpa_kernel.recipe import DEFAULT_RECIPE, recipes_for_outputs

    manifest = load_manifest(weights_dir=weights_dir, verify=False)
    config = load_config(manifest.checkpoint_paths()[0][0])
    fits = recipes_for_outputs(config.num_classes)
    return config.recipe or (fits[0] if fits else DEFAULT_RECIPE)


def train_demo_ensemble(
    cells_csv: str | os.PathLike,
    weights_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    progress: bool = False,
    **overrides,
):
    """Train the three groups with :func:`demo_config` (plus ``overrides``); returns the Manifest.

    Group g keeps its snapshot count (1, 2, 4); :func:`hpa_kernel.training.train_group` pins the
    hashes in ``weights_dir/weights_manifest.json``.
    """
    from hpa_kernel.manifest import load_manifest
    from hpa_kernel.training import RunOptions, train_group

    weights_dir = Path(weights_dir)
    for group in (1, 2, 3):
        config = demo_config(group, **overrides)
        t = time.perf_counter()
        paths = train_group(config, cells_csv, weights_dir, options=RunOptions(device=device, progress=progress))
        logger.info("group %d: %d snapshot(s) in %.1f s", group, len(paths), time.perf_counter() - t)
    return load_manifest(weights_dir=weights_dir, require_segmentation=False)


def label_frequencies(competition) -> np.ndarray:
    """Fraction of the training images (``train.csv``) that carry each class; shape (19,)."""
    from hpa_kernel.classes import NUM_CLASSES, labels_to_multihot

    train = competition.read_train()
    if len(train) == 0:
        return np.zeros(NUM_CLASSES)
    return np.mean([labels_to_multihot(ls) for ls in train["labels"]], axis=0)


def frequency_baseline(submission: str | os.PathLike, competition, out: str | os.PathLike) -> Path:
    """The label-frequency baseline on the same cells as ``submission``.

    Every cell mask of each row of ``submission`` is kept and every class gets its training
    frequency (:func:`label_frequencies`) as confidence. Written to ``out``.
    """
    import pandas as pd

    from hpa_kernel.metric import parse_prediction_string
    from hpa_kernel.submission import prediction_string_for_cells, write_submission

    freq = label_frequencies(competition)
    sub = pd.read_csv(submission, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    rows = {}
    for image_id, text in zip(sub["ID"], sub["PredictionString"], strict=True):
        masks = list(dict.fromkeys(m for _, _, m in parse_prediction_string(text)))
        rows[image_id] = prediction_string_for_cells(masks, np.tile(freq, (len(masks), 1))) if masks else ""
    return write_submission(rows, competition.sample_submission, out)


def score_submission(submission: str | os.PathLike, competition) -> dict:
    """``{"box": MetricResult, "mask": MetricResult}`` against the synthetic test truth."""
    from hpa_kernel.metric import score_submission

    return {
        mode: score_submission(submission, competition.truth_cells("test"), competition.truth_masks("test"), iou=mode)
        for mode in ("box", "mask")
    }


def per_class_table(scores: dict, baseline_scores: dict, mode: str = "box") -> str:
    """A printable table: class, name, #GT cells, ensemble AP, baseline AP, difference."""
    from hpa_kernel.classes import CLASS_NAMES

    ours, base = scores[mode], baseline_scores[mode]
    lines = [f"  {'class':>5}  {'name':<28} {'#GT':>5}  {'ensemble':>8}  {'baseline':>8}  {'diff':>6}"]
    for c, name in enumerate(CLASS_NAMES):
        a, b = ours.per_class_ap[c], base.per_class_ap[c]
        if a is None:
            lines.append(f"  {c:>5}  {name[:28]:<28} {0:>5}  {'-':>8}  {'-':>8}  {'-':>6}")
            continue
        lines.append(f"  {c:>5}  {name[:28]:<28} {ours.num_gt[c]:>5}  {a:>8.3f}  {b:>8.3f}  {a - b:>+6.3f}")
    return "\n".join(lines)


@dataclass
class DemoResult:
    """Where the demo put its files and what it scored (``oracle``: the data's ceiling, :func:`oracle_submission`)."""

    out: Path
    submission: Path
    baseline: Path
    weights_dir: Path
    data_dir: Path
    scores: dict = field(default_factory=dict)
    baseline_scores: dict = field(default_factory=dict)
    oracle_scores: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    report: list = field(default_factory=list)

    def margin(self, mode: str = "box") -> float:
        """Ensemble mAP minus label-frequency baseline mAP."""
        return self.scores[mode].map - self.baseline_scores[mode].map

    def summary(self) -> str:
        lines = ["hpa-kernel demo"]
        lines.append(f"  submission    {self.submission} ({'valid' if not self.problems else f'{len(self.problems)} problems'})")
        for mode in ("box", "mask"):
            if mode in self.scores:
                ceiling = f"   ceiling {self.oracle_scores[mode].map:.4f}" if mode in self.oracle_scores else ""
                lines.append(
                    f"  mAP@0.6 {mode:<4}  ensemble {self.scores[mode].map:.4f}   "
                    f"label-frequency baseline {self.baseline_scores[mode].map:.4f}   "
                    f"margin {self.margin(mode):+.4f}{ceiling}"
                )
        if "box" in self.scores:
            lines.append("  per-class AP (box IoU):")
            lines.append(per_class_table(self.scores, self.baseline_scores, "box"))
        lines.append(f"  baseline      {self.baseline}")
        lines.append(f"  weights       {self.weights_dir}")
        lines.append(f"  data          {self.data_dir}")
        for path in self.report:
            lines.append(f"  report        {path}")
        lines.append("  timings       " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        return "\n".join(lines)


def plot_per_class_ap(scores: dict, baseline_scores: dict, path: str | os.PathLike, mode: str = "box",
                      ceiling: float | None = None) -> Path:
    """Bar chart (PNG) of the per-class AP of a submission beside the label-frequency baseline.

    ``scores`` and ``baseline_scores`` as :func:`score_submission` returns them; ``ceiling``, a mAP
    drawn as a dashed line (e.g. the :func:`oracle_submission` score). Needs matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpa_kernel.classes import CLASS_NAMES

    x = np.arange(len(CLASS_NAMES))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for k, (name, result) in enumerate((("ensemble", scores[mode]), ("label-frequency baseline", baseline_scores[mode]))):
        ap = [np.nan if result.per_class_ap[c] is None else result.per_class_ap[c] for c in x]
        ax.bar(x + (k - 0.5) * 0.4, ap, width=0.4, label=f"{name} (mAP {result.map:.3f})")
    if ceiling is not None:
        ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"ceiling (mAP {ceiling:.3f})")
    ax.set_xticks(x, [f"{c} {n[:16]}" for c, n in enumerate(CLASS_NAMES)], rotation=70, fontsize=8)
    ax.set_ylabel(f"AP at IoU 0.6 ({mode})")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_cells_top3(submission: str | os.PathLike, competition, path: str | os.PathLike, n: int = 8, seed: int = 0) -> Path:
    """PNG of ``n`` random test cells of ``submission``, each titled with its truth and top-3 predictions.

    The truth is that of the best-matching truth cell (:func:`cell_predictions`). Needs matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpa_kernel.classes import CLASS_NAMES
    from hpa_kernel.io import read_image
    from hpa_kernel.synthetic import render_composite

    cells = [c for c in cell_predictions(submission, competition) if c["truth_id"]]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(cells), size=min(n, len(cells)), replace=False).tolist()) if cells else []
    fig, axes = plt.subplots(2, max(1, (len(pick) + 1) // 2), figsize=(3.2 * max(1, (len(pick) + 1) // 2), 7.4), squeeze=False)
    images: dict[str, np.ndarray] = {}
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick):
        cell = cells[i]
        if cell["image_id"] not in images:
            images[cell["image_id"]] = render_composite(read_image(competition.test_dir, cell["image_id"]), outlines=False)
        ys, xs = np.nonzero(cell["mask"])
        rgb = images[cell["image_id"]][ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()
        rgb[~cell["mask"][ys.min():ys.max() + 1, xs.min():xs.max() + 1]] //= 3
        ax.imshow(rgb)
        top = np.argsort(-cell["probs"])[:3]
        pred = "\n".join(f"{c} {CLASS_NAMES[c][:18]} {cell['probs'][c]:.2f}" for c in top)
        truth = ", ".join(f"{c} {CLASS_NAMES[c][:14]}" for c in cell["truth"])
        ax.set_title(f"truth: {truth}\n{pred}", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def write_report(result: DemoResult, competition, out: str | os.PathLike | None = None) -> list[Path]:
    """The demo's pictures: ``per_class_ap.png`` (ensemble vs baseline) and ``cells_top3.png``.

    Needs matplotlib (the ``notebooks`` extra). Returns the two paths.
    """
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("the demo report needs matplotlib: pip install 'hpa-kernel[notebooks]'")
    out = Path(out) if out is not None else result.out
    out.mkdir(parents=True, exist_ok=True)
    ceiling = result.oracle_scores["box"].map if "box" in result.oracle_scores else None
    return [plot_per_class_ap(result.scores, result.baseline_scores, out / "per_class_ap.png", ceiling=ceiling),
            plot_cells_top3(result.submission, competition, out / "cells_top3.png")]


@dataclass(frozen=True)
class DemoConfig:
    """What :func:`run_demo` builds: the synthetic data, the training override and the run.

    ``training`` holds overrides of :data:`DEMO_TRAINING` (e.g. ``{"steps_per_epoch": 4}``);
    ``train=False`` uses :func:`random_ensemble` (fast smoke runs); ``torch_threads`` sets
    ``torch.set_num_threads`` for the whole process (more threads than free cores slow training
    down many times over on a shared machine); ``report`` writes :func:`write_report`'s pictures.
    """

    n_train: int = 60
    n_test: int = 60
    size: int = 512
    seed: int = 2021
    training: dict = field(default_factory=dict)
    train: bool = True
    workers: int | None = None
    budget_s: float = 1800.0
    torch_threads: int | None = 1
    progress: bool = False
    report: bool = False

    def __post_init__(self):
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {self.torch_threads}")
        unknown = set(self.training) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"training: unknown TrainConfig fields {sorted(unknown)}")


def run_demo(out: str | os.PathLike = "demo_out", config: DemoConfig | None = None, **kwargs) -> DemoResult:
    """Run every step of the demo into ``out``; see the module doc.

    ``config`` (or its fields as keyword arguments) sets the data, the training and the run.
    """
    from hpa_kernel.submission import SubmitConfig, run_submission

    config = dataclasses.replace(config or DemoConfig(), **kwargs)
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.perf_counter()
    comp = make_demo_competition(out / "data", config.n_train, config.n_test, config.size, config.seed)
    timings["data"] = time.perf_counter() - t
    weights_dir = out / "weights"
    input_size = config.training.get("input_size", DEMO_TRAINING["input_size"])
    t = time.perf_counter()
    if config.train:
        cells_csv = build_training_cells(comp, out / "train_cells", crop_size=input_size, workers=config.workers,
                                         progress=config.progress)
        timings["cells"] = time.perf_counter() - t
        t = time.perf_counter()
        train_demo_ensemble(cells_csv, weights_dir, progress=config.progress, **config.training)
    else:
        random_ensemble(weights_dir, input_size=input_size)
    timings["ensemble"] = time.perf_counter() - t
    t = time.perf_counter()
    report = run_submission(SubmitConfig(
        out=out / "submission.csv", data=comp.root, weights=weights_dir, budget_s=config.budget_s, segmenter="classic",
        device="cpu", workers=config.workers, progress=config.progress, recipe=_recipe_of(weights_dir),
    ))
    timings["submission"] = time.perf_counter() - t
    t = time.perf_counter()
    baseline = frequency_baseline(report.path, comp, out / "baseline_submission.csv")
    oracle = oracle_submission(report.path, comp, out / "oracle_submission.csv")
    result = DemoResult(
        out=out, submission=report.path, baseline=baseline, weights_dir=weights_dir, data_dir=comp.root,
        scores=score_submission(report.path, comp), baseline_scores=score_submission(baseline, comp),
        oracle_scores=score_submission(oracle, comp), problems=list(report.problems or []),
    )
    timings["scoring"] = time.perf_counter() - t
    if config.report:
        result.report = write_report(result, comp)
    result.timings = timings
    return result

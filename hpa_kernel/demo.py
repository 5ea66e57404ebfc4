"""The end-to-end demo on a synthetic competition, as library steps (``hpa-kernel demo`` runs them).

1. :func:`make_demo_competition`: a synthetic competition (:func:`hpa_kernel.synthetic.make_competition`).
2. :func:`build_training_cells`: training cells from the train split, the way real data is
   prepared: classic segmentation, crops and heuristics (:mod:`hpa_kernel.cells`), each cell with
   its image's labels from ``train.csv`` (weak labels).
3. :func:`train_demo_ensemble`: the three groups (1, 2 and 4 snapshots) with
   :func:`hpa_kernel.training.train_group` on a small CPU preset; the manifest is written with
   pinned hashes. :func:`random_ensemble` writes an untrained ensemble instead (tests, notebooks).
4. :func:`hpa_kernel.submission.run_submission` with the classic segmenter (the demo has no HPA
   segmentation weights), then the file is validated.
5. :func:`score_submission` in both IoU modes, and :func:`frequency_baseline`: the same cells with
   every class predicted at its training frequency, for comparison.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DemoResult",
    "make_demo_competition",
    "build_training_cells",
    "random_ensemble",
    "train_demo_ensemble",
    "label_frequencies",
    "frequency_baseline",
    "score_submission",
    "run_demo",
]

logger = logging.getLogger(__name__)


def make_demo_competition(out: str | os.PathLike, n_train: int = 24, n_test: int = 6, size: int = 512, seed: int = 2021):
    """A synthetic competition in ``out`` (see :func:`hpa_kernel.synthetic.make_competition`)."""
    from hpa_kernel.synthetic import make_competition

    return make_competition(out, n_train=n_train, n_test=n_test, size=size, seed=seed)


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
    from hpa_kernel.cells.builder import build_training_set
    from hpa_kernel.segmentation import create_segmenter

    return build_training_set(
        competition.root, out, create_segmenter("classic"), CellConfig(crop_size=crop_size), workers=workers, progress=progress
    )


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
    input_size: int = 64,
    epochs: int = 1,
    steps_per_epoch: int = 40,
    batch_size: int = 16,
    arch: str = "efficientnet_b0",
    device: str = "cpu",
    progress: bool = False,
):
    """Train the three groups with :func:`hpa_kernel.training.quick_config` overrides; returns the Manifest.

    Group g keeps its snapshot count (1, 2, 4); :func:`hpa_kernel.training.train_group` pins the
    hashes in ``weights_dir/weights_manifest.json``.
    """
    from hpa_kernel.manifest import load_manifest
    from hpa_kernel.training import quick_config, train_group

    weights_dir = Path(weights_dir)
    for group in (1, 2, 3):
        config = quick_config(group, input_size=input_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
                              batch_size=batch_size, arch=arch)
        t = time.perf_counter()
        paths = train_group(config, cells_csv, weights_dir, device=device, progress=progress)
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


@dataclass
class DemoResult:
    """Where the demo put its files and what it scored."""

    out: Path
    submission: Path
    baseline: Path
    weights_dir: Path
    data_dir: Path
    scores: dict = field(default_factory=dict)
    baseline_scores: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = ["hpa-kernel demo"]
        lines.append(f"  submission    {self.submission} ({'valid' if not self.problems else f'{len(self.problems)} problems'})")
        for mode in ("box", "mask"):
            if mode in self.scores:
                lines.append(
                    f"  mAP@0.6 {mode:<4}  ensemble {self.scores[mode].map:.4f}   "
                    f"label-frequency baseline {self.baseline_scores[mode].map:.4f}"
                )
        lines.append(f"  baseline      {self.baseline}")
        lines.append(f"  weights       {self.weights_dir}")
        lines.append(f"  data          {self.data_dir}")
        lines.append("  timings       " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        return "\n".join(lines)


def run_demo(
    out: str | os.PathLike = "demo_out",
    *,
    n_train: int = 24,
    n_test: int = 6,
    size: int = 512,
    seed: int = 2021,
    input_size: int = 64,
    epochs: int = 1,
    steps_per_epoch: int = 40,
    train: bool = True,
    workers: int | None = None,
    budget_s: float = 1800.0,
    torch_threads: int | None = 1,
    progress: bool = False,
) -> DemoResult:
    """Run every step of the demo into ``out``; see the module doc.

    ``train=False`` uses :func:`random_ensemble` instead of training (fast smoke runs).
    ``torch_threads`` sets ``torch.set_num_threads`` for the whole process (default 1: on a small,
    shared machine more threads than free cores slow training down many times over).
    """
    from hpa_kernel.submission import SubmitConfig, run_submission

    if torch_threads is not None:
        import torch

        if torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {torch_threads}")
        torch.set_num_threads(torch_threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.perf_counter()
    comp = make_demo_competition(out / "data", n_train, n_test, size, seed)
    timings["data"] = time.perf_counter() - t
    weights_dir = out / "weights"
    t = time.perf_counter()
    if train:
        cells_csv = build_training_cells(comp, out / "train_cells", crop_size=input_size, workers=workers, progress=progress)
        train_demo_ensemble(cells_csv, weights_dir, input_size=input_size, epochs=epochs, steps_per_epoch=steps_per_epoch, progress=progress)
    else:
        random_ensemble(weights_dir, input_size=input_size)
    timings["ensemble"] = time.perf_counter() - t
    t = time.perf_counter()
    report = run_submission(SubmitConfig(
        out=out / "submission.csv", data=comp.root, weights=weights_dir, budget_s=budget_s, segmenter="classic",
        device="cpu", workers=workers, progress=progress, recipe=_recipe_of(weights_dir),
    ))
    timings["submission"] = time.perf_counter() - t
    t = time.perf_counter()
    baseline = frequency_baseline(report.path, comp, out / "baseline_submission.csv")
    result = DemoResult(
        out=out, submission=report.path, baseline=baseline, weights_dir=weights_dir, data_dir=comp.root,
        scores=score_submission(report.path, comp), baseline_scores=score_submission(baseline, comp),
        problems=list(report.problems or []),
    )
    timings["scoring"] = time.perf_counter() - t
    result.timings = timings
    return result

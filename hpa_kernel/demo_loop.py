"""The data-centric loop on a synthetic competition, measured (``hpa-kernel demo --loop``).

The loop of the 4th-place team, step by step, each step scored on the same test images:

1. **image labels**: one model of the demo's settings (:func:`hpa_kernel.demo.demo_config`,
   group 1) trained on the classic segmenter's training cells, each cell with its image's labels.
2. **pseudo labels**: that model relabels the training cells with the recipe's rules
   (:func:`hpa_kernel.training.pseudo.apply_pseudo_rules`: an image label is dropped from a cell
   whose probability is below 0.3) and a model of the same settings is trained on them.
3. **a simulated annotator** scores ``N`` cells per class 1-5 through the labelling page's own store
   (:class:`hpa_kernel.labelling.store.LabelStore`), from the synthetic truth with a stated noise
   rate (:func:`simulate_annotator`); the scores are exported as soft labels by
   :func:`hpa_kernel.labelling.export.write_soft_labels`, as ``hpa-kernel label export`` does.
4. **fine-tuning** the step-2 model on the training cells with those soft labels
   (:func:`hpa_kernel.training.finetune_checkpoints`, the recipe's fine-tuning preset).

The test images are segmented once (:func:`segment_test`); each step's model is run on the same crops
and its confidences go through the recipe (:func:`submit_cells`), and :func:`bootstrap_maps` gives
every step's mAP with a 95 % interval over resampled test images.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "LoopConfig",
    "LoopResult",
    "segment_test",
    "submit_cells",
    "bootstrap_maps",
    "match_truth_cells",
    "annotator_scores",
    "simulate_annotator",
    "write_pseudo_labels",
    "run_loop",
    "plot_loop",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """What :func:`run_loop` builds and measures.

    Parameters
    ----------
    n_train, n_test, size, seed : int
        The synthetic competition (:func:`hpa_kernel.demo.make_demo_competition`).
    n_per_class : tuple of int
        Cells the simulated annotator scores per class, one fine-tuning run each.
    noise : float
        Probability that the annotator's answer is the wrong one (a positive cell scored 1-2 or a
        negative one 4-5).
    steps : int
        Optimizer steps of the step-1 and step-2 trainings (batch 16, the demo's settings).
    finetune_lr : float, optional
        The fine-tuning learning rate; None keeps the recipe's (3e-5 under milimed2021).
    bootstrap : int
        Resamples of the test images for the intervals.
    torch_threads : int, optional
        ``torch.set_num_threads`` for the run (None leaves torch's default).
    workers : int, optional
        Post-processing processes of the cells stage (None: all cores).
    """

    n_train: int = 60
    n_test: int = 60
    size: int = 512
    seed: int = 2021
    n_per_class: tuple[int, ...] = (10, 30, 100)
    noise: float = 0.1
    steps: int = 160
    finetune_lr: float | None = None
    bootstrap: int = 200
    torch_threads: int | None = 1
    workers: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "n_per_class", tuple(int(n) for n in self.n_per_class))
        if not self.n_per_class or any(n < 1 for n in self.n_per_class):
            raise ValueError(f"n_per_class must be a non-empty tuple of integers >= 1, got {self.n_per_class}")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {self.noise}")
        if self.steps < 1 or self.bootstrap < 1:
            raise ValueError(f"steps and bootstrap must be >= 1, got {self.steps} and {self.bootstrap}")
        if self.finetune_lr is not None and self.finetune_lr <= 0:
            raise ValueError(f"finetune_lr must be positive or None, got {self.finetune_lr}")


@dataclass
class LoopResult:
    """Each step's submission and its box/mask mAP with a 95 % bootstrap interval (box).

    ``rows``: ``(step, submission, box, box_low, box_high, mask)`` in the order of the loop;
    ``cpu_s``: process CPU seconds (children included) of each stage.
    """

    out: Path
    rows: list = field(default_factory=list)
    cpu_s: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)

    def markdown(self) -> str:
        """The rows as a markdown table."""
        lines = ["| step | box mAP@0.6 [95 % interval] | mask mAP@0.6 |", "| --- | --- | --- |"]
        for step, _, box, low, high, mask in self.rows:
            lines.append(f"| {step} | {box:.3f} [{low:.3f}, {high:.3f}] | {mask:.3f} |")
        return "\n".join(lines)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (``resource.getrusage``)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def segment_test(competition, crop_size: int = 64, workers: int | None = None) -> dict:
    """The test images' cells, once: ``{image_id: (table, encoded masks, crops)}``.

    The classic segmenter and the cells stage as in :func:`hpa_kernel.submission.run_submission`;
    an image that fails gets no entry (and no detections).
    """
    from hpa_kernel.cells import CellConfig, CellPipeline, PipelineOptions
    from hpa_kernel.segmentation import create_segmenter
    from hpa_kernel.submission import read_sample

    pipeline = CellPipeline(create_segmenter("classic"), CellConfig(crop_size=crop_size), workers, None,
                            options=PipelineOptions(encode_masks=True))
    ids = [s[0] for s in read_sample(competition.sample_submission)]
    cells = {}
    for result in pipeline.run(competition.test_dir, ids, progress=False):
        if not result.ok:
            logger.warning("test image %s failed (%s): no detections", result.image_id, result.reason)
            continue
        cells[result.image_id] = (result.table, result.encoded, result.crops)
    return cells


def submit_cells(ensemble, cells: dict, competition, out: str | os.PathLike, recipe: str | None = None) -> Path:
    """A submission for the cells of :func:`segment_test`: ``ensemble`` (no TTA), then the recipe's confidences.

    ``ensemble`` is an :class:`hpa_kernel.classifier.Ensemble` (or any object with its ``predict``) or
    a list of checkpoint paths (one group, equal weights).
    """
    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.confidence import recipe_confidence
    from hpa_kernel.submission import prediction_string_for_cells, write_submission

    if not hasattr(ensemble, "predict"):
        paths = [str(p) for p in ensemble]
        ensemble = Ensemble.from_checkpoints([paths], [1.0], recipe=recipe)
    rows = {}
    for image_id, (table, encoded, crops) in cells.items():
        if len(table) == 0:
            rows[image_id] = ""
            continue
        probs = ensemble.predict(crops, tta=False, batch_size=64)
        rows[image_id] = prediction_string_for_cells(encoded, recipe_confidence(probs, table, recipe))
    return write_submission(rows, competition.sample_submission, out)


def bootstrap_maps(submissions: dict, competition, n: int = 200, seed: int = 0, iou: str = "box") -> dict:
    """mAP of each submission and its 95 % percentile interval over test images resampled with replacement.

    Every submission is scored on the same resamples (:func:`hpa_kernel.demo.bootstrap_scores`).
    Returns ``{name: (map, low, high)}``.
    """
    from hpa_kernel.demo import bootstrap_scores

    point, draws = bootstrap_scores(submissions, competition, n, seed, iou)
    return {k: (point[k], *map(float, np.percentile([d[k] for d in draws], [2.5, 97.5]))) for k in submissions}


def match_truth_cells(table, competition, split: str = "train", min_iou: float = 0.5) -> list:
    """The truth labels of each row of a cells table (tuple of class ids), matched by box IoU; None if unmatched.

    A row matches the truth cell of its image whose bounding box overlaps its own most, when that
    box IoU is at least ``min_iou``.
    """
    import pandas as pd

    from hpa_kernel.cells.crops import cell_boxes
    from hpa_kernel.classes import parse_labels

    truth = pd.read_csv(competition.truth_cells(split), dtype={"ImageID": str, "Labels": str}, keep_default_na=False)
    labels = {(i, int(k)): parse_labels(t) for i, k, t in zip(truth["ImageID"], truth["CellID"], truth["Labels"])}
    masks = np.load(competition.truth_masks(split))
    boxes_of: dict = {}
    out = []
    for image_id, y0, x0, y1, x1 in zip(table["image_id"], table["y0"], table["x0"], table["y1"], table["x1"]):
        if image_id not in boxes_of:
            boxes_of[image_id] = cell_boxes(masks[image_id]) if image_id in masks else {}
        best, best_iou = None, min_iou
        for k, (b0, b1, b2, b3) in boxes_of[image_id].items():
            inter = max(0, min(y1, b2) - max(y0, b0)) * max(0, min(x1, b3) - max(x0, b1))
            iou = inter / ((y1 - y0) * (x1 - x0) + (b2 - b0) * (b3 - b1) - inter)
            if iou >= best_iou:
                best, best_iou = labels.get((image_id, k)), iou
        out.append(best)
    return out


def annotator_scores(table, truth: list, n_per_class: int, noise: float, seed: int = 0,
                     classes=range(18)) -> list[tuple[str, int, int, int]]:
    """What the simulated annotator answers: ``(image_id, cell_id, class_id, score)`` rows.

    For each class, ``n_per_class`` cells (or all there are) drawn at random among the valid cells
    of images labelled with the class and matched to a truth cell. A right answer is 5 (or 4, one
    time in five) for a cell that shows the class and 1 (or 2) for one that does not; with
    probability ``noise`` the answer is the wrong one. The draws are nested: with the same ``seed``,
    the cells of a smaller ``n_per_class`` are the first of a larger one.
    """
    rng = np.random.default_rng(seed)
    valid = table["valid"].to_numpy(dtype=bool)
    rows = []
    for c in classes:
        pool = [i for i, (labels, t) in enumerate(zip(table["label_ids"], truth))
                if valid[i] and t is not None and c in labels]
        order = rng.permutation(len(pool))
        flips, sure = rng.random(len(pool)), rng.random(len(pool))
        for k in order[:n_per_class]:
            i = pool[k]
            says = (c in truth[i]) != (flips[k] < noise)
            score = (5 if sure[k] < 0.8 else 4) if says else (1 if sure[k] < 0.8 else 2)
            rows.append((str(table["image_id"].iloc[i]), int(table["cell_id"].iloc[i]), int(c), score))
    return rows


def simulate_annotator(store_path: str | os.PathLike, rows, labeller: str = "simulated") -> int:
    """Record ``rows`` (:func:`annotator_scores`) in a labelling store, one event per answer; returns the count."""
    from hpa_kernel.labelling.store import LabelStore

    with LabelStore(store_path) as store:
        for image_id, cell_id, class_id, score in rows:
            store.record(image_id, cell_id, class_id, score, labeller)
    return len(rows)


def write_pseudo_labels(checkpoint: str | os.PathLike, cells_csv: str | os.PathLike, out_csv: str | os.PathLike) -> Path:
    """Pseudo labels of the training cells from ``checkpoint`` with the recipe's rules; the file training reads.

    :func:`hpa_kernel.training.pseudo.make_pseudo_labels` on the CPU (an 18-output model's Negative is
    ``1 - max`` of the others, as at inference).
    """
    from hpa_kernel.training.pseudo import make_pseudo_labels

    make_pseudo_labels(cells_csv, checkpoint, out_csv, device="cpu")
    return Path(out_csv)


def _train_one(cells_csv, out_dir: Path, steps: int, pseudo_labels=None) -> Path:
    """One group-1 model of the demo's settings; returns its last snapshot."""
    from hpa_kernel.demo import demo_config
    from hpa_kernel.training import RunOptions, TrainInputs, train_group

    config = demo_config(1, epochs=1, steps_per_epoch=steps)
    return train_group(config, cells_csv, out_dir, inputs=TrainInputs(pseudo_labels=pseudo_labels),
                       options=RunOptions(device="cpu", progress=False, manifest=False))[-1]


def _finetune(checkpoint: Path, cells_csv, soft_csv: Path, out_dir: Path, lr: float | None) -> Path:
    """The recipe's fine-tuning of ``checkpoint`` with the exported soft labels."""
    from hpa_kernel.classifier import load_config
    from hpa_kernel.training import RunOptions, finetune_checkpoints
    from hpa_kernel.training.config import finetune_preset

    recipe = load_config(checkpoint).recipe
    config = finetune_preset(recipe, **({} if lr is None else {"lr": lr}))
    return finetune_checkpoints([checkpoint], cells_csv, out_dir, soft_labels=soft_csv, config=config,
                                options=RunOptions(device="cpu", progress=False, manifest=False))[0]


def _annotate_and_finetune(config: LoopConfig, out: Path, comp, cells_csv, start: Path, cpu: dict) -> tuple[dict, dict]:
    """Steps 3 and 4 for each ``n_per_class``: ``{n: fine-tuned checkpoint}``, ``{n: answers}``; CPU in ``cpu``."""
    from hpa_kernel.labelling.export import write_soft_labels
    from hpa_kernel.labelling.store import LabelStore
    from hpa_kernel.training.dataset import read_cells_table

    table = read_cells_table(cells_csv)
    truth = match_truth_cells(table, comp, "train")
    logger.info("annotator: %d of %d training cells matched to a truth cell", sum(t is not None for t in truth), len(truth))
    models, answers = {}, {}
    for n in config.n_per_class:
        t = cpu_seconds()
        rows = annotator_scores(table, truth, n, config.noise, seed=config.seed)
        store_path = out / f"labels_n{n}.sqlite"
        store_path.unlink(missing_ok=True)
        answers[n] = simulate_annotator(store_path, rows)
        with LabelStore(store_path) as store:
            write_soft_labels(store, out / f"soft_labels_n{n}.csv")
        cpu[f"annotate n={n}"] = cpu_seconds() - t
        t = cpu_seconds()
        models[n] = _finetune(start, cells_csv, out / f"soft_labels_n{n}.csv", out / f"w_finetune_n{n}", config.finetune_lr)
        cpu[f"fine-tune n={n}"] = cpu_seconds() - t
    return models, answers


def _data_and_cells(out: Path, config: LoopConfig):
    """The competition and its training cells in ``out``; a finished earlier run's are reused."""
    from hpa_kernel.demo import build_training_cells, make_demo_competition
    from hpa_kernel.io import Competition

    cells_csv = out / "train_cells" / "cells.csv"
    if (out / "data" / "sample_submission.csv").is_file() and cells_csv.is_file():
        logger.info("reusing the competition and training cells in %s", out)
        return Competition(out / "data"), cells_csv
    comp = make_demo_competition(out / "data", config.n_train, config.n_test, config.size, config.seed)
    return comp, build_training_cells(comp, out / "train_cells", workers=config.workers)


def run_loop(out: str | os.PathLike = "loop_out", config: LoopConfig | None = None, **kwargs) -> LoopResult:
    """Run the four steps into ``out`` and score each on the same test cells; see the module doc.

    The synthetic competition and the training cells of an earlier run in ``out`` are reused
    (delete ``out`` to start afresh after changing the data settings).
    """
    from hpa_kernel.demo import frequency_baseline, oracle_submission

    config = dataclasses.replace(config or LoopConfig(), **kwargs)
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cpu: dict = {}
    t = cpu_seconds()
    comp, cells_csv = _data_and_cells(out, config)
    test_cells = segment_test(comp, workers=config.workers)
    cpu["data and cells"] = cpu_seconds() - t
    t = cpu_seconds()
    models = {"1 image labels": _train_one(cells_csv, out / "w_image", config.steps)}
    cpu["train on image labels"] = cpu_seconds() - t
    t = cpu_seconds()
    pseudo = write_pseudo_labels(models["1 image labels"], cells_csv, out / "pseudo_labels.csv")
    models["2 pseudo labels"] = _train_one(cells_csv, out / "w_pseudo", config.steps, pseudo_labels=pseudo)
    cpu["pseudo labels + train"] = cpu_seconds() - t
    tuned, answers = _annotate_and_finetune(config, out, comp, cells_csv, models["2 pseudo labels"], cpu)
    models.update({f"3+4 annotate {n}/class, fine-tune": p for n, p in tuned.items()})
    t = cpu_seconds()
    subs = {name: submit_cells([path], test_cells, comp, out / f"submission_{k}.csv") for k, (name, path) in enumerate(models.items())}
    first = next(iter(subs.values()))
    subs = {"label-frequency baseline": frequency_baseline(first, comp, out / "baseline_submission.csv"), **subs,
            "ceiling (truth labels of the matched cells)": oracle_submission(first, comp, out / "oracle_submission.csv")}
    box = bootstrap_maps(subs, comp, n=config.bootstrap, seed=0, iou="box")
    mask = bootstrap_maps(subs, comp, n=1, seed=0, iou="mask")
    cpu["score"] = cpu_seconds() - t
    rows = [(name, subs[name], *box[name], mask[name][0]) for name in subs]
    return LoopResult(out, rows, cpu, answers)


def _short(name: str) -> str:
    """A step's name for an axis label: "3+4 annotate 30/class, fine-tune" -> "3+4: 30/class\nfine-tuned"."""
    if name.startswith("3+4 annotate "):
        return "3+4: " + name.split()[2] + "\nfine-tuned"
    return name.split(" (")[0].replace("label-frequency ", "").replace(" ", "\n", 1)


def plot_loop(result: LoopResult, path: str | os.PathLike) -> Path:
    """PNG of the box mAP after each step with its bootstrap interval. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in result.rows]
    y = np.array([r[2] for r in result.rows])
    err = np.clip(np.array([[r[2] - r[3] for r in result.rows], [r[4] - r[2] for r in result.rows]]), 0, None)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.errorbar(np.arange(len(y)), y, yerr=err, fmt="o", capsize=4)
    ax.set_xticks(np.arange(len(y)), [_short(n) for n in names], fontsize=8)
    ax.set_ylabel("box mAP@0.6 (95 % bootstrap interval)")
    ax.set_title("The data-centric loop on synthetic data: score after each step", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)

"""The training ablation: one ensemble group trained with each of the team's elements switched back in turn.

:func:`training_ablation_variants` gives the recipe's :class:`~hpa_kernel.training.config.TrainConfig`
of one group, then one variant per element of :data:`TRAINING_SWITCHES` (each a
``dataclasses.replace`` of that config back to the kit's choice). :func:`run_training_ablation`
trains each variant on one cells table and scores it with the inference recipe on one labelled
set whose cells are segmented and cut once; ``benchmarks/bench_ablation.py --training`` runs it on
the demo's synthetic competition.

On synthetic data the table measures the synthetic data and a short CPU run: it cannot decide
between training recipes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpa_kernel.training.config import TrainConfig, training_preset

__all__ = [
    "LABEL_SWITCHES", "TRAINING_SWITCHES", "TrainingAblationConfig", "TrainingAblationResult",
    "run_training_ablation", "training_ablation_variants",
]

logger = logging.getLogger(__name__)

Switch = Callable[[TrainConfig], TrainConfig]
replace = dataclasses.replace

#: The team's training elements, each switched back to the kit's choice: ``{name: config -> config}``.
TRAINING_SWITCHES: dict[str, Switch] = {
    "kit train filter": lambda c: replace(c, filter_column="penalty"),
    "kit training crops": lambda c: replace(c, train_crop="kit2025"),
    "kit network (adapted stem, timm BN, no drop path)": lambda c: replace(
        c, stem="adapt", batchnorm="timm", drop_path_rate=0.0),
    "loss on logits": lambda c: replace(c, loss=replace(c.loss, on="logits")),
    "epoch = number of cells": lambda c: replace(c, sampler=replace(c.sampler, epoch_size=None)),
}

#: The team's label rules, each switched back to the kit's: ``{name: config -> config}``.
LABEL_SWITCHES: dict[str, Switch] = {
    "kit pseudo-label scope (every class)": lambda c: replace(c, labels=replace(c.labels, pseudo_scope="all")),
    "no class-6 antibody rule": lambda c: replace(c, labels=replace(c.labels, antibody_class=None)),
    "duplicates from manual scores only": lambda c: replace(c, sampler=replace(c.sampler, duplicate_source="manual")),
}

IOU_MODES = ("box", "mask")


def training_ablation_variants(recipe: str = "milimed2021", group: int = 1, **overrides) -> dict[str, TrainConfig]:
    """The preset of ``recipe`` and ``group`` (with ``overrides``), then one element switched back at a time.

    ``overrides`` (sizes, lengths, seed) apply to every variant. A switch that changes nothing in
    this preset (the kit's own recipe) is left out.

    >>> list(training_ablation_variants("milimed2021", 1))  # doctest: +NORMALIZE_WHITESPACE
    ['recipe', 'kit train filter', 'kit training crops', 'kit network (adapted stem, timm BN, no drop path)',
     'loss on logits', 'epoch = number of cells', 'kit pseudo-label scope (every class)',
     'no class-6 antibody rule', 'duplicates from manual scores only']
    >>> list(training_ablation_variants("kit2025", 1))
    ['recipe']
    """
    base = training_preset(recipe, group, **overrides)
    variants = {"recipe": base}
    for name, switch in {**TRAINING_SWITCHES, **LABEL_SWITCHES}.items():
        config = switch(base)
        if config == base:
            logger.info("%s: no change in the %s preset, left out", name, recipe)
            continue
        variants[name] = config
    return variants


@dataclass(frozen=True)
class TrainingAblationConfig:
    """Settings of :func:`run_training_ablation`.

    Parameters
    ----------
    cells_csv : path
        Training cells (``hpa-kernel cells``: both crop kinds).
    data : path
        Competition folder: ``sample_submission.csv``, ``test/`` and the synthetic truth
        (``truth/test_cells.csv``, ``truth/test_masks.npz``).
    out : path
        Folder for each variant's checkpoints, submissions and ``training_ablation.md``.
    recipe : str
        Training and inference recipe.
    group : int
        The ensemble group trained.
    overrides : dict
        :class:`TrainConfig` fields applied to every variant (sizes, lengths).
    seeds : tuple of int
        The full recipe is trained once per seed (the spread is the noise); variants use the first.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, for training and scoring.
    """

    cells_csv: Path
    data: Path
    out: Path
    recipe: str = "milimed2021"
    group: int = 1
    overrides: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"

    def __post_init__(self):
        for name in ("cells_csv", "data", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if "seed" in self.overrides:
            raise ValueError("give the seed through seeds, not overrides")
        training_preset(self.recipe, self.group)


@dataclass
class TrainingAblationResult:
    """Rows ``(name, {mode: mAP}, CPU seconds of training)``; ``rows[0]`` is the full recipe."""

    rows: list[tuple[str, dict, float]]
    n_images: int
    n_cells: int

    def markdown(self) -> str:
        """A table: variant, mAP per IoU mode, the change against the full recipe, training CPU seconds."""
        base = self.rows[0][1]
        head = "| variant | " + " | ".join(f"mAP {m} | Δ {m}" for m in IOU_MODES) + " | train CPU s |"
        lines = [head, "|---|" + "---:|---:|" * len(IOU_MODES) + "---:|"]
        for k, (name, scores, cpu) in enumerate(self.rows):
            cells = []
            for m in IOU_MODES:
                cells += [f"{scores[m]:.4f}", "" if k == 0 else f"{scores[m] - base[m]:+.4f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {cpu:.0f} |")
        return "\n".join(lines)


def _score(paths, images, competition, truth, out: Path, recipe, device: str) -> dict:
    """mAP per IoU mode of the ensemble of ``paths`` (one group) under the inference ``recipe``."""
    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.confidence import recipe_confidence
    from hpa_kernel.metric import score_submission
    from hpa_kernel.submission import prediction_string_for_cells, write_submission

    ensemble = Ensemble.from_checkpoints([list(paths)], [1.0], device, recipe=recipe)
    predictions = {}
    for image_id, (table, encoded, crops) in images.items():
        if not len(table):
            predictions[image_id] = ""
            continue
        probs = ensemble.predict(crops, tta=recipe.tta)
        predictions[image_id] = prediction_string_for_cells(encoded, recipe_confidence(probs, table, recipe))
    path = write_submission(predictions, competition.sample_submission, out)
    return {mode: score_submission(path, iou=mode, truth=truth).map for mode in IOU_MODES}


def _runs(config: TrainingAblationConfig) -> list[tuple[str, TrainConfig]]:
    """(row name, config) to train: the recipe once per seed, then each variant with the first seed."""
    seed0 = config.seeds[0]
    variants = training_ablation_variants(config.recipe, config.group, **config.overrides, seed=seed0)
    runs = [(f"the recipe ({config.recipe}, seed {seed0})", variants.pop("recipe"))]
    base = runs[0][1]
    runs += [(f"the recipe ({config.recipe}, seed {s})", replace(base, seed=s)) for s in config.seeds[1:]]
    return runs + list(variants.items())


def run_training_ablation(config: TrainingAblationConfig) -> TrainingAblationResult:
    """Train and score every variant (see the module doc); also writes ``out/training_ablation.md``."""
    from hpa_kernel.demo_loop import segment_test
    from hpa_kernel.io import find_competition
    from hpa_kernel.metric import load_truth
    from hpa_kernel.recipe import get_recipe
    from hpa_kernel.training import RunOptions, train_group

    runs = _runs(config)
    competition = find_competition(config.data)
    truth = load_truth(competition.truth_cells("test"), competition.truth_masks("test"))
    images = segment_test(competition, runs[0][1].input_size, workers=0)
    recipe = get_recipe(config.recipe)
    config.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, train_config) in enumerate(runs):
        t = time.process_time()
        paths = train_group(train_config, config.cells_csv, config.out / f"variant{k}",
                            options=RunOptions(device=config.device, manifest=False))
        cpu = time.process_time() - t
        scores = _score(paths, images, competition, truth, config.out / f"variant{k}.csv", recipe, config.device)
        rows.append((name, scores, cpu))
        logger.info("%s: %s, %.0f CPU s", name, ", ".join(f"mAP {m} {s:.4f}" for m, s in scores.items()), cpu)
    result = TrainingAblationResult(rows, len(images), int(sum(len(v[0]) for v in images.values())))
    (config.out / "training_ablation.md").write_text(result.markdown() + "\n")
    return result

"""The ablation table: one labelled set scored under a recipe with each element switched off in turn.

:func:`run_ablation` segments the images and cuts the crops once, runs the ensemble once without
TTA (and once more with it, for the TTA row; and once on the other crop mode's crops, cut from the
same label images, for the crop row), and keeps per image only the cells table, the encoded masks
and the probabilities. Each variant (:func:`ablation_variants`, a
``dataclasses.replace`` of the recipe) then only recomputes the confidence step
(:func:`hpa_kernel.confidence.recipe_confidence`), writes its submission and is scored in both IoU
modes (:func:`hpa_kernel.metric.score_submission`). :meth:`AblationResult.markdown` is a table like the
team's ablation (their ``MILIMED ablation study.xlsx``), with the change against the full recipe.

The table is the tool for a real labelled set. On synthetic data it measures the synthetic data:
it cannot decide between recipes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hpa_kernel.recipe import InferenceRecipe, get_recipe

__all__ = ["AblationConfig", "AblationRow", "AblationResult", "ablation_variants", "run_ablation"]

logger = logging.getLogger(__name__)

IOU_MODES = ("box", "mask")


def ablation_variants(recipe: InferenceRecipe | str | None = None) -> dict[str, InferenceRecipe]:
    """The recipe, then one element switched off at a time (TTA switched on, or off if it was on;
    the other crop mode of :data:`hpa_kernel.cells.crops.CROP_MODES`).

    >>> list(ablation_variants("milimed2021"))
    ['recipe', 'no cell/image blend', 'no border cleaner', 'no outlier cleaner', 'no Negative rule', 'TTA on', 'kit crop (8-bit, INTER_AREA, re-masked)']
    >>> ablation_variants("kit2025")["team crop (16-bit, INTER_LINEAR, soft edge)"].crop
    'milimed2021'
    """
    recipe = get_recipe(recipe)
    replace = dataclasses.replace
    return {
        "recipe": recipe,
        "no cell/image blend": replace(recipe, blend=False),
        "no border cleaner": replace(recipe, border_cleaner=None),
        "no outlier cleaner": replace(recipe, outlier_cleaner=None),
        "no Negative rule": replace(recipe, negative="none"),
        ("TTA off" if recipe.tta else "TTA on"): replace(recipe, tta=not recipe.tta),
        _CROP_VARIANTS[recipe.crop]: replace(recipe, crop=_OTHER_CROP[recipe.crop]),
    }


#: The ablation row that swaps the crop mode, named by the recipe's own mode.
_CROP_VARIANTS = {"milimed2021": "kit crop (8-bit, INTER_AREA, re-masked)", "kit2025": "team crop (16-bit, INTER_LINEAR, soft edge)"}
_OTHER_CROP = {"milimed2021": "kit2025", "kit2025": "milimed2021"}


@dataclass(frozen=True)
class AblationConfig:
    """Settings of :func:`run_ablation`.

    Parameters
    ----------
    data : path
        Competition folder: ``sample_submission.csv`` and ``test/`` (the images to score).
    weights : path
        Weights folder with ``weights_manifest.json``.
    out : path
        Folder for the variants' submissions and ``ablation.md``.
    recipe : str
        The recipe whose elements are switched off.
    truth_cells, truth_masks, truth_annotations : path, optional
        The truth (see :func:`hpa_kernel.metric.score_submission`); default the synthetic competition's
        ``truth/test_cells.csv`` and ``truth/test_masks.npz``.
    segmenter : {"classic", "hpa"}
        ``"hpa"`` needs the manifest's segmentation weights.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None: CUDA when available, else the CPU
        (:func:`hpa_kernel.paths.resolve_device`).
    workers : int
        Post-processing processes (0 = in process).
    batch_size : int
        Cells per classifier batch.
    """

    data: Path
    weights: Path
    out: Path
    recipe: str = "milimed2021"
    truth_cells: Path | None = None
    truth_masks: Path | None = None
    truth_annotations: Path | None = None
    segmenter: str = "classic"
    device: str | None = None
    workers: int = 0
    batch_size: int = 32

    def __post_init__(self):
        for name in ("data", "weights", "out", "truth_cells", "truth_masks", "truth_annotations"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        get_recipe(self.recipe)
        if self.segmenter not in ("classic", "hpa"):
            raise ValueError(f"segmenter must be 'classic' or 'hpa', got {self.segmenter!r}")
        if (self.truth_cells is None) != (self.truth_masks is None):
            raise ValueError("truth_cells and truth_masks must be given together")
        if self.truth_annotations is not None and self.truth_cells is not None:
            raise ValueError("give the truth one way: truth_cells with truth_masks, or truth_annotations")
        if self.workers < 0 or self.batch_size < 1:
            raise ValueError(f"workers must be >= 0 and batch_size >= 1, got {self.workers} and {self.batch_size}")


@dataclass(frozen=True)
class AblationRow:
    """One variant: its name, recipe, scores per IoU mode and its submission file."""

    name: str
    recipe: InferenceRecipe
    scores: dict
    submission: Path


@dataclass
class AblationResult:
    """The variants' scores; ``rows[0]`` is the full recipe."""

    rows: list[AblationRow]
    n_images: int
    n_cells: int
    timings: dict = field(default_factory=dict)

    def markdown(self) -> str:
        """A table: variant, mAP per IoU mode and the change against the full recipe."""
        base = self.rows[0].scores
        head = "| change | " + " | ".join(f"mAP {m} | Δ {m}" for m in IOU_MODES) + " |"
        lines = [head, "|---|" + "---:|---:|" * len(IOU_MODES)]
        for row in self.rows:
            cells = []
            for m in IOU_MODES:
                delta = "" if row is self.rows[0] else f"{row.scores[m] - base[m]:+.4f}"
                cells += [f"{row.scores[m]:.4f}", delta]
            name = f"the recipe ({row.recipe.name})" if row is self.rows[0] else row.name
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _truth(config: AblationConfig, competition) -> dict:
    """Keyword arguments of :func:`hpa_kernel.metric.score_submission` with the truth loaded once."""
    from hpa_kernel.metric import load_truth, load_truth_annotations

    if config.truth_annotations is not None:
        return {"truth": load_truth_annotations(config.truth_annotations)}
    cells = config.truth_cells or competition.truth_cells("test")
    masks = config.truth_masks or competition.truth_masks("test")
    for path in (cells, masks):
        if not Path(path).is_file():
            raise FileNotFoundError(f"truth file {path} not found (give --truth-cells/--truth-masks or --truth-annotations)")
    return {"truth": load_truth(cells, masks)}


def _cells_and_probs(config: AblationConfig, competition, ensemble, image_ids, needed: set[tuple[str, bool]]):
    """Per image: (table, encoded masks, {(crop mode, tta): probs}) for the ``needed`` pairs;
    segmentation runs once, the crops once per mode."""
    from hpa_kernel.cells import CellConfig, CellPipeline, PipelineOptions
    from hpa_kernel.classifier.ensemble import DEFAULT_TTA
    from hpa_kernel.segmentation import create_segmenter

    if config.segmenter == "hpa":
        from hpa_kernel.manifest import load_manifest

        manifest = load_manifest(weights_dir=config.weights, verify=False)
        seg = manifest.segmentation
        from hpa_kernel.segmentation.hpa import HPAParams

        segmenter = create_segmenter(
            "hpa", nuclei=manifest.path_of(seg.nuclei), cell=manifest.path_of(seg.cell),
            params=HPAParams(device=config.device),
        )
    else:
        segmenter = create_segmenter("classic")
    crop_size = max(m.config.input_size for m in ensemble.members)
    main_crop = ensemble.recipe.crop
    pipeline = CellPipeline(
        segmenter, CellConfig(crop_size=crop_size, crop=main_crop), config.workers, None,
        options=PipelineOptions(encode_masks=True, keep_labels=any(crop != main_crop for crop, _ in needed)),
    )
    images = {}
    for result in pipeline.run(competition.test_dir, image_ids, progress=False):
        if not result.ok:
            logger.warning("image %s failed (%s): it gets no detections in every variant", result.image_id, result.reason)
            continue
        crops = {main_crop: result.crops}
        probs = {}
        for crop, tta in sorted(needed):
            if crop not in crops:
                crops[crop] = _recrop(competition, result, crop, crop_size)
            probs[crop, tta] = ensemble.predict(crops[crop], tta=DEFAULT_TTA if tta else ("identity",), batch_size=config.batch_size)
        images[result.image_id] = (result.table, result.encoded, probs)
    return images


def _recrop(competition, result, crop: str, crop_size: int):
    """The crops of ``result``'s cells in the other crop mode, from its kept label image."""
    from hpa_kernel.cells.crops import crop_cells
    from hpa_kernel.io import read_image

    boxes = {int(r[0]): tuple(int(v) for v in r[1:]) for r in result.table[["cell_id", "y0", "x0", "y1", "x1"]].to_numpy()}
    image = read_image(competition.test_dir, result.image_id)
    return crop_cells(image, result.cell_label, list(boxes), size=crop_size, boxes=boxes, mode=crop)


def run_ablation(config: AblationConfig) -> AblationResult:
    """Score every variant of :func:`ablation_variants` on one labelled set; see the module doc.

    Returns
    -------
    AblationResult
        Also written as ``config.out / "ablation.md"``.
    """
    import time

    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.confidence import recipe_confidence
    from hpa_kernel.io import find_competition
    from hpa_kernel.manifest import load_manifest
    from hpa_kernel.metric import score_submission
    from hpa_kernel.paths import resolve_device
    from hpa_kernel.submission import prediction_string_for_cells, read_sample, write_submission

    config = dataclasses.replace(config, device=resolve_device(config.device))  # resolved once, for both stages
    timings = {}
    t = time.perf_counter()
    variants = ablation_variants(config.recipe)
    competition = find_competition(config.data)
    truth = _truth(config, competition)
    image_ids = [s[0] for s in read_sample(competition.sample_submission)]
    manifest = load_manifest(weights_dir=config.weights, require_segmentation=config.segmenter == "hpa")
    ensemble = Ensemble.from_manifest(manifest, config.device, variants["recipe"])
    images = _cells_and_probs(config, competition, ensemble, image_ids, {(r.crop, r.tta) for r in variants.values()})
    timings["cells and classifier"] = time.perf_counter() - t
    t = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, recipe) in enumerate(variants.items()):
        predictions = {
            image_id: prediction_string_for_cells(encoded, recipe_confidence(probs[recipe.crop, recipe.tta], table, recipe)) if len(table) else ""
            for image_id, (table, encoded, probs) in images.items()
        }
        path = write_submission(predictions, competition.sample_submission, config.out / f"variant{k}.csv")
        scores = {mode: score_submission(path, iou=mode, **truth).map for mode in IOU_MODES}
        rows.append(AblationRow(name, recipe, scores, path))
        logger.info("%s: %s", name, ", ".join(f"mAP {m} {s:.4f}" for m, s in scores.items()))
    timings["variants"] = time.perf_counter() - t
    result = AblationResult(rows, len(images), int(sum(len(v[0]) for v in images.values())), timings)
    (config.out / "ablation.md").write_text(result.markdown() + "\n")
    return result


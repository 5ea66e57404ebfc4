"""The budgeted submission driver: test images → cells → ensemble → ``submission.csv``, on time.

:func:`run_submission` resolves and verifies the weights once
(:func:`~hpa_kernel.submission.weights.resolve_weights`), then processes the test images in the order
of ``sample_submission.csv``. Before each image it asks a
:class:`~hpa_kernel.submission.budget.BudgetPlanner` for the richest
:class:`~hpa_kernel.submission.budget.Plan` that still fits the time left, using per-image costs
measured so far (:class:`~hpa_kernel.submission.budget.CostTracker`: the wall time spent waiting for
the cells pipeline, and the classifier time per cell and forward pass; before the first image is
measured, a conservative prior, :func:`~hpa_kernel.submission.budget.prior_costs`, so that the first
image is not started when it cannot finish):

1. TTA and every checkpoint of the manifest;
2. no TTA, every checkpoint;
3. fewer checkpoints, down to one per group (the largest group gives one up first);
4. fewer groups (the lightest weight goes first), down to a single checkpoint;
5. no prediction: the remaining images get the fallback row.

A valid ``submission.csv`` exists from the start (every row the fallback, written before any model
is loaded), is rewritten every ``checkpoint_every_s`` seconds, and is written a last time with a
``reserve_s`` margin before the budget ends: a timer writes it then even if the run is still busy
loading models or with one slow image, and nothing is written after it. Where ``out`` already
holds a complete submission of the same sample (a rerun), that file is kept instead, untouched
until the final write: a rerun that is killed or fails leaves it as it was. The models are loaded
only when the time left covers an estimate of their loading (:func:`load_estimate_s`); otherwise
every row gets the fallback and the file is written within the budget. Run as a program,
``hpa-kernel submit`` counts the budget from the process start (imports and start-up included). A fallback row is an empty PredictionString ("no
detections", :data:`hpa_kernel.submission.writer.FALLBACK_PREDICTION`), given to images that failed (logged
with the reason) and to those that the budget did not reach. An image in which no cell was found is
not a fallback: it gets the recipe's no-cells row (milimed2021: the sample submission's row, as the
team; kit2025: empty).

The segmenter is ``"hpa"`` when the manifest's segmentation weights are in the weights folder; if
they are not, the run stops with an error unless ``segmenter="classic"`` was asked for explicitly.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpa_kernel.options import say_option
from hpa_kernel.recipe import DEFAULT_RECIPE, InferenceRecipe, get_recipe
from hpa_kernel.submission.budget import BudgetPlanner, CostEstimates, CostTracker, Plan, plan_ladder, prior_costs
from hpa_kernel.submission.weights import ResolvedWeights, resolve_weights

if TYPE_CHECKING:
    from hpa_kernel.cells import CellPipeline
    from hpa_kernel.classifier import Ensemble

__all__ = [
    "HOUR",
    "SubmitConfig",
    "ImageOutcome",
    "SubmitReport",
    "run_submission",
    "process_start_monotonic",
    "holds_complete_submission",
    "load_estimate_s",
    "runtime_report",
    "predict_image",
]

logger = logging.getLogger(__name__)

HOUR = 3600.0


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class SubmitConfig:
    """Settings of :func:`run_submission`; every field checks itself.

    Parameters
    ----------
    out : path
        The ``submission.csv`` to write.
    data : path, optional
        Competition folder; default ``$HPA_KERNEL_DATA`` then the Kaggle input folders.
    weights : path, optional
        Weights folder; default ``$HPA_KERNEL_WEIGHTS`` then the Kaggle input folders.
    budget_s : float
        Seconds from the start of :func:`run_submission` to a final ``submission.csv``.
    reserve_s : float, optional
        Margin kept for the last write; default 3 % of the budget, between 2 s and 10 min.
    device : str, optional
        ``"cuda"``, ``"cpu"``...; default CUDA when available.
    batch_size : int
        Cells per classifier batch.
    seg_batch_size : int
        Images per segmentation ``predict`` call.
    workers : int, optional
        Post-processing worker processes; default every core (0 = in process).
    recipe : str
        The inference recipe (:mod:`hpa_kernel.recipe`): ``"milimed2021"`` (default, the team's
        code: 18-output checkpoints) or ``"kit2025"`` (19 outputs).
    tta : bool, optional
        Allow flip TTA (hflip, vflip) when the budget permits; default the recipe's choice
        (off for milimed2021, on for kit2025).
    segmenter : {"hpa", "classic"} or None
        None: ``"hpa"``, which needs the manifest's segmentation weights.
    padding : bool
        The HPA segmenter's ``padding`` (hpacellseg's, default True as the team ran it): every
        image size works. False needs sides whose quarter is a multiple of 32 (2048, 3072, not 1728).
    crop_size : int, optional
        Cell crop side; default the largest input size of the ensemble's checkpoints.
    checkpoint_every_s : float
        Rewrite ``submission.csv`` with the images done so far at this interval.
    validate : bool
        Check the final file with :func:`hpa_kernel.submission.writer.check_submission` when time is left.
    limit : int, optional
        Process only the first ``limit`` images of the sample (the rest get the fallback); for trials.
    cache_dir : path, optional
        Cells cache (:mod:`hpa_kernel.cells.cache`).
    progress : bool
        tqdm bars.
    torch_threads : int, optional
        ``torch.set_num_threads`` for the classifier on the CPU (the process-wide setting is changed);
        default: leave torch's choice.
    cell_weight, image_weight : float, optional
        Override of the recipe's blend weights (both or neither; they sum to 1); default the
        recipe's 0.7 and 0.3.
    """

    out: Path
    data: Path | None = None
    weights: Path | None = None
    budget_s: float = 8.5 * HOUR
    reserve_s: float | None = None
    device: str | None = None
    batch_size: int = 32
    seg_batch_size: int = 1
    workers: int | None = None
    tta: bool | None = None
    segmenter: str | None = None
    padding: bool = True
    crop_size: int | None = None
    checkpoint_every_s: float = 15 * 60.0
    validate: bool = True
    limit: int | None = None
    cache_dir: Path | None = None
    progress: bool = True
    torch_threads: int | None = None
    cell_weight: float | None = None
    image_weight: float | None = None
    recipe: str = DEFAULT_RECIPE

    def __post_init__(self):
        for name in ("out", "data", "weights", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if self.out.is_dir():
            raise ValueError(f"out: {self.out} is a folder; expected the path of the CSV file to write, e.g. {self.out / 'submission.csv'}")
        if not math.isfinite(self.budget_s) or self.budget_s < 0:
            raise ValueError(f"budget_s must be a finite number >= 0, got {self.budget_s}")
        if self.reserve_s is not None and self.reserve_s < 0:
            raise ValueError(f"reserve_s must be >= 0, got {self.reserve_s}")
        if self.batch_size < 1 or self.seg_batch_size < 1:
            raise ValueError(f"batch_size and seg_batch_size must be >= 1, got {self.batch_size} and {self.seg_batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not isinstance(self.padding, bool):
            raise ValueError(f"padding must be True or False, got {self.padding!r}")
        if self.segmenter not in (None, "hpa", "classic"):
            raise ValueError(f"segmenter must be 'hpa', 'classic' or None, got {self.segmenter!r}")
        if self.crop_size is not None and (not isinstance(self.crop_size, int) or self.crop_size < 8):
            raise ValueError(f"crop_size must be an int >= 8, got {self.crop_size!r}")
        if self.checkpoint_every_s <= 0:
            raise ValueError(f"checkpoint_every_s must be > 0, got {self.checkpoint_every_s}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if (self.cell_weight is None) != (self.image_weight is None):
            raise ValueError(f"give both cell_weight and image_weight or neither, got {self.cell_weight} and {self.image_weight}")
        if self.cell_weight is not None and (
            self.cell_weight < 0 or self.image_weight < 0 or abs(self.cell_weight + self.image_weight - 1.0) > 1e-6
        ):
            raise ValueError(f"cell_weight and image_weight must be >= 0 and sum to 1, got {self.cell_weight} and {self.image_weight}")
        if self.tta is not None and not isinstance(self.tta, bool):
            raise ValueError(f"tta must be True, False or None (the recipe's choice), got {self.tta!r}")
        self.inference_recipe  # noqa: B018 - an unknown recipe name fails here, listing the known ones

    @property
    def inference_recipe(self) -> InferenceRecipe:
        """The named recipe with this config's overrides (TTA, blend weights) applied."""
        import dataclasses

        recipe = get_recipe(self.recipe)
        changes = {}
        if self.tta is not None:
            changes["tta"] = self.tta
        if self.cell_weight is not None:
            changes.update(blend_cell=self.cell_weight, blend_image=self.image_weight)
        return dataclasses.replace(recipe, **changes) if changes else recipe

    @property
    def reserve(self) -> float:
        if self.reserve_s is not None:
            return self.reserve_s
        return min(600.0, max(2.0, 0.03 * self.budget_s))


@dataclass
class SubmitReport:
    """What :func:`run_submission` did."""

    path: Path
    n_images: int
    n_predicted: int
    fallback: dict[str, str] = field(default_factory=dict)
    plans: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    segmenter: str | None = None
    problems: list | None = None

    @property
    def n_fallback(self) -> int:
        return len(self.fallback)

    def summary(self) -> str:
        reasons = Counter(r.split(":")[0] for r in self.fallback.values())
        plan_text = "; ".join(f"{n} x {p}" for p, n in self.plans.most_common()) or "none"
        fb = ", ".join(f"{n} {r}" for r, n in reasons.items()) or "none"
        valid = "not checked" if self.problems is None else ("valid" if not self.problems else f"{len(self.problems)} problems")
        return (
            f"{self.path}: {self.n_images} rows, {self.n_predicted} predicted, {self.n_fallback} fallback ({fb}); "
            f"plans: {plan_text}; segmenter {self.segmenter}; {self.elapsed_s:.1f} s; {valid}"
        )


def predict_image(result, ensemble, plan: Plan, batch_size: int = 32, recipe: InferenceRecipe | str | None = None) -> str:
    """PredictionString of one :class:`hpa_kernel.cells.ImageCells` under ``plan``.

    Ensemble probabilities (:meth:`~hpa_kernel.classifier.Ensemble.predict`), then
    :func:`hpa_kernel.confidence.recipe_confidence` with the cells table.

    Parameters
    ----------
    result : ImageCells
        From a :class:`~hpa_kernel.cells.CellPipeline` run with ``encode_masks=True``.
    ensemble : Ensemble
    plan : Plan
        Its TTA views and checkpoints per group are used.
    batch_size : int
        Cells per forward pass.
    recipe : InferenceRecipe or str, optional
        Default the ensemble's recipe.

    Returns
    -------
    str
        The PredictionString; empty for an image without cells.

    Raises
    ------
    ValueError
        If the cells have no encoded masks.
    """
    from hpa_kernel.confidence import recipe_confidence
    from hpa_kernel.submission.writer import prediction_string_for_cells

    table = result.table
    if len(table) == 0:
        return ""
    if result.encoded is None:
        raise ValueError(f"image {result.image_id}: the cells have no encoded masks (run the pipeline with encode_masks=True)")
    probs = ensemble.predict(result.crops, tta=plan.tta, checkpoints_per_group=plan.checkpoints_per_group, batch_size=batch_size)
    final = recipe_confidence(probs, table, ensemble.recipe if recipe is None else recipe)
    return prediction_string_for_cells(result.encoded, final)


def runtime_report(config: SubmitConfig, segmenter_name: str | None = None, padding: bool | None = None) -> str:
    """One line saying what the run segments with: segmenter, padding, scikit-image, watershed.

    Logged (INFO) by :func:`run_submission` in the main process and printed by the notebook.

    Parameters
    ----------
    config : SubmitConfig
    segmenter_name : str, optional
        The segmenter actually used; default ``config.segmenter``, else ``"hpa"``.
    padding : bool, optional
        The segmenter's own ``padding`` when it was built elsewhere; default ``config.padding``.
    """
    from hpa_kernel.segmentation import watershed
    from hpa_kernel.segmentation.postprocess import skimage_version

    name = segmenter_name or config.segmenter or "hpa"
    padding = (config.padding if padding is None else padding) if name == "hpa" else "n/a"
    return f"runtime: segmenter {name}, padding {padding}, scikit-image {skimage_version()}, watershed {watershed.DESCRIPTION}"


def _log_runtime(config: SubmitConfig, segmenter_name: str, padding: bool | None = None) -> None:
    """Log the runtime line once, in the main process."""
    logger.info("%s", runtime_report(config, segmenter_name, padding))


def _write(rows: dict[str, str], samples, out: Path) -> None:
    """Write every sample row: the prediction where there is one, else the fallback (logged by the caller)."""
    from hpa_kernel.submission.writer import FALLBACK_PREDICTION, write_submission

    write_submission(rows, _samples_frame(samples), out, FALLBACK_PREDICTION, log_each_fallback=False)


class _SubmissionWriter:
    """Owns the rows predicted so far and writes ``submission.csv`` from them, until the deadline closes it.

    :meth:`add` records one image's PredictionString. :meth:`close_at` starts a timer thread that,
    at the deadline (real seconds), writes the rows predicted so far a last time and closes the
    writer; later rows and writes (from a run still busy loading models or predicting an image) are
    refused, so the last write is never late.

    With ``keep`` (``out`` already holds a complete submission of the same sample), the file is not
    touched until the final write: no placeholder, no partial checkpoints, and after an error the
    previous file stays as it was.
    """

    def __init__(self, samples, out: Path, keep: bool = False):
        self.samples = samples
        self.out = out
        self.keep = keep
        self.lock = threading.Lock()
        self.closed = False
        self.rows: dict[str, str] = {}
        self.final_rows: dict[str, str] | None = None
        self._timer: threading.Timer | None = None

    def add(self, image_id: str, row: str) -> bool:
        """Record the PredictionString of ``image_id``; False (not recorded) if the writer is closed."""
        with self.lock:
            if self.closed:
                return False
            self.rows[image_id] = row
            return True

    def write(self, final: bool = False) -> bool:
        """Write the rows so far (the other sample rows get the fallback); False if the writer is closed."""
        with self.lock:
            if self.closed:
                return False
            snapshot = dict(self.rows)
            _write(snapshot, self.samples, self.out)
            if final:
                self.closed = True
                self.final_rows = snapshot
            return True

    def checkpoint(self) -> bool:
        """Write the rows so far as a partial file; False (nothing written) when keeping a previous file or closed."""
        return False if self.keep else self.write()

    def abort(self) -> None:
        """After an error: write the rows so far a last time, unless a previous complete file is kept; close."""
        self.cancel()
        if not self.keep:
            self.write(final=True)
            return
        with self.lock:
            self.closed = True

    def close_at(self, seconds: float) -> None:
        """Write the rows a last time after ``seconds`` real seconds, unless :meth:`cancel` comes first."""

        def fire():
            from hpa_kernel.diskspace import DiskFullError

            try:
                wrote = self.write(final=True)
            except DiskFullError as exc:  # in this thread: logged, not a traceback; the main thread's write reports it
                logger.error("deadline: %s", exc)
                return
            if wrote:
                logger.warning("deadline: wrote %s with the %d images predicted so far; later results are dropped", self.out, len(self.final_rows))

        self._timer = threading.Timer(max(0.0, seconds), fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def holds_complete_submission(out: Path, samples: Sequence[tuple[str, int, int]]) -> bool:
    """True when ``out`` is a complete ``submission.csv`` of ``samples``: the header, then one line per
    sample row with its ID, ImageWidth and ImageHeight, in order, and nothing else.

    A light check (the PredictionStrings are not decoded): enough to know that a rerun would
    replace a finished file, which it then keeps until its own file is complete.
    """
    from hpa_kernel.submission.writer import SUBMISSION_HEADER

    if not out.is_file():
        return False
    try:
        with open(out, encoding="ascii", newline="") as fh:
            if fh.readline() != ",".join(SUBMISSION_HEADER) + "\n":
                return False
            for image_id, width, height in samples:
                line = fh.readline()
                if not line.endswith("\n") or line.count(",") != 3 or line.split(",")[:3] != [image_id, str(width), str(height)]:
                    return False
            return fh.readline() == ""
    except (OSError, UnicodeDecodeError):
        return False


def process_start_monotonic() -> float:
    """The ``time.monotonic()`` reading at which this process started (Linux); elsewhere, now.

    The command line counts its budget from here, so that interpreter start-up and imports count.
    """
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5), starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_s
    except (OSError, ValueError, IndexError, AttributeError) as exc:
        logger.debug("process start time unknown (%s); the budget starts now", exc)
        return time.monotonic()
    return time.monotonic() - min(max(0.0, age), 3600.0)


def _samples_frame(samples):
    import pandas as pd

    return pd.DataFrame(
        {"ID": [s[0] for s in samples], "ImageWidth": [s[1] for s in samples], "ImageHeight": [s[2] for s in samples]}
    )


def _refused_ids(ids: Sequence[str]) -> dict[str, str]:
    """``{ID: reason}`` for the IDs that are not plain names (they would become paths outside test/)."""
    from hpa_kernel.io import check_image_id

    refused = {}
    for image_id in ids:
        try:
            check_image_id(image_id)
        except ValueError as exc:
            logger.error("%s; it gets the fallback row", exc)
            refused[image_id] = f"refused: {exc}"
    return refused


@dataclass(frozen=True)
class ImageOutcome:
    """What became of one image: its PredictionString, or the reason it gets the fallback row.

    ``plan`` is the plan it was processed under; ``row`` is None exactly when ``reason`` is given.
    """

    image_id: str
    plan: Plan
    row: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class _Run:
    """The fixed facts of one run, read by its steps: the config, the competition folder, the
    images to predict (in order) with their sample sizes, and the budget clock."""

    config: SubmitConfig
    competition: Any
    todo: tuple[str, ...]
    sizes: dict[str, tuple[int, int]]
    elapsed: Callable[[], float]


@dataclass(frozen=True)
class _Models:
    """The loaded models: the ensemble and the cells pipeline around the segmenter."""

    ensemble: Ensemble
    pipeline: CellPipeline


def run_submission(
    config: SubmitConfig, clock: Callable[[], float] = time.monotonic, segmenter=None, started: float | None = None
) -> SubmitReport:
    """Write ``config.out`` within ``config.budget_s`` seconds; see the module doc.

    Parameters
    ----------
    config : SubmitConfig
    clock : callable
        Seconds, monotonic; tests pass a fake clock. With the real clock (``time.monotonic``), a
        timer also writes the file a last time at ``budget_s - reserve`` even if the run is still
        busy (loading models, or one slow image); with another clock only the planner keeps the budget.
    segmenter : BaseSegmenter, optional
        A ready segmenter instead of ``config.segmenter`` (tests, notebooks).
    started : float, optional
        The ``clock()`` reading at which the budget started (the CLI passes the process start, see
        :func:`process_start_monotonic`); default: now.

    Returns
    -------
    SubmitReport
    """
    from hpa_kernel.io import find_competition
    from hpa_kernel.submission.writer import read_sample

    budget_start = clock() if started is None else float(started)

    def elapsed() -> float:
        return clock() - budget_start

    competition = find_competition(config.data)
    samples = read_sample(competition.sample_submission)
    ids = [s[0] for s in samples]
    limited = ids if config.limit is None else ids[: config.limit]
    refused = _refused_ids(limited)
    todo = tuple(image_id for image_id in limited if image_id not in refused)
    writer = _SubmissionWriter(samples, config.out, keep=holds_complete_submission(config.out, samples))
    if writer.keep:
        logger.info("%s holds a complete submission of this sample: it is kept until this run's file is complete "
                    "(no placeholder, no partial checkpoints); budget %.0f s, reserve %.0f s", config.out, config.budget_s, config.reserve)
    else:
        writer.write()  # a valid file from the start
        logger.info("wrote the initial all-fallback %s (%d rows); budget %.0f s, reserve %.0f s",
                    config.out, len(ids), config.budget_s, config.reserve)
    if clock is time.monotonic:
        writer.close_at(config.budget_s - config.reserve - elapsed())
    run = _Run(config, competition, todo, {image_id: (width, height) for image_id, width, height in samples}, elapsed)
    try:
        segmenter_name, outcomes = _predict(run, writer, segmenter)
    except BaseException:
        # keep what was predicted before the error (or Ctrl-C), the other rows with the fallback;
        # or, where a previous complete file is kept, leave that file as it is
        writer.abort()
        if writer.final_rows is not None:  # written now, or by the deadline timer before the error
            logger.error("the run stopped early; %s holds the %d images predicted so far", config.out, len(writer.final_rows))
        else:
            logger.error("the run stopped early; the previous %s is kept unchanged", config.out)
        raise
    writer.cancel()
    writer.write(final=True)  # False when the deadline timer wrote it: its rows are the final ones
    fallback = _fallback_reasons(refused, outcomes, todo, ids[len(limited):])
    if fallback:
        shown = ", ".join(f"{i} ({r})" for i, r in list(fallback.items())[:5])
        logger.warning("%d of %d images got the fallback row (empty PredictionString), e.g. %s", len(fallback), len(ids), shown)
    problems = _validate(run)
    plans = Counter(o.plan.describe() for o in outcomes if o.row is not None)
    report = SubmitReport(config.out, len(ids), len(writer.final_rows), fallback, plans, elapsed(), segmenter_name, problems)
    logger.info("%s", report.summary())
    return report


def _predict(run: _Run, writer: _SubmissionWriter, segmenter=None) -> tuple[str | None, list[ImageOutcome]]:
    """Resolve the weights, plan the budget, load the models when there is work, and predict.

    Returns the segmenter's name for the report (when start-up left no time: the one asked for,
    or None) and the outcome of every image processed; each predicted row goes to ``writer`` as it
    comes (an image finished after the deadline is refused by the writer and becomes a fallback outcome).
    """
    config = run.config
    if writer.closed or run.elapsed() >= config.budget_s - config.reserve:
        # start-up spent the budget: stop now rather than hash weights and import the segmenter
        logger.warning("budget: start-up took %.1f s of the %.1f s budget; no model is loaded", run.elapsed(), config.budget_s)
        return config.segmenter, []
    weights = resolve_weights(config.weights, config.segmenter, custom_segmenter=segmenter is not None)
    if segmenter is None:
        _log_runtime(config, weights.segmenter)
    else:
        _log_runtime(config, getattr(segmenter, "name", weights.segmenter), getattr(segmenter, "padding", None))
    segmenter_name = weights.segmenter if segmenter is None else type(segmenter).__name__
    from hpa_kernel.classifier.ensemble import DEFAULT_TTA

    recipe = config.inference_recipe
    logger.info("%s", recipe.describe())
    ladder = plan_ladder(weights.group_sizes, weights.group_weights, DEFAULT_TTA if recipe.tta else None)
    planner = BudgetPlanner(config.budget_s, len(run.todo), config.reserve, ladder)
    if not run.todo or planner.choose(run.elapsed(), 0, CostEstimates()).fallback:
        return segmenter_name, []
    loading, left = load_estimate_s(weights, segmenter is None), planner.time_left(run.elapsed())
    if loading * planner.safety > left:
        logger.warning("budget: %.1f s left, loading the models takes about %.1f s; no image is predicted", left, loading)
        return segmenter_name, []
    models = _load_models(config, weights, segmenter)
    planner = planner.with_prior(_first_image_prior(run, models, networks=segmenter is None and weights.segmenter == "hpa"))
    return segmenter_name, _record(run, writer, _predict_images(run, models, planner, lambda: writer.closed))


def _first_image_prior(run: _Run, models: _Models, networks: bool) -> CostEstimates:
    """The prior costs (:func:`~hpa_kernel.submission.budget.prior_costs`) of the first image to
    predict, on the ensemble's device and at its largest input size."""
    width, height = run.sizes[run.todo[0]]
    input_size = max(m.config.input_size for m in models.ensemble.members)
    prior = prior_costs(width * height / 1e6, str(models.ensemble.device), input_size, networks)
    logger.debug("prior for the first image: %s", prior)
    return prior


#: The prior of :func:`load_estimate_s`: seconds to build the models, plus reading their files at this rate.
LOAD_BASE_S = 1.0
LOAD_BYTES_PER_S = 200e6


def load_estimate_s(weights: ResolvedWeights, with_segmentation: bool = True) -> float:
    """A conservative prior of the seconds that loading the models takes, before anything is measured:
    :data:`LOAD_BASE_S` plus the weight files (checkpoints and, with ``with_segmentation``, the
    segmentation files) read at :data:`LOAD_BYTES_PER_S`."""
    files = [p for group in weights.checkpoint_paths for p in group]
    if with_segmentation and weights.segmentation_paths is not None:
        files += list(weights.segmentation_paths)
    size = sum(p.stat().st_size for p in files if p.is_file())
    return LOAD_BASE_S + size / LOAD_BYTES_PER_S


def _record(run: _Run, writer: _SubmissionWriter, outcomes: Iterable[ImageOutcome]) -> list[ImageOutcome]:
    """Hand each predicted row to ``writer``, rewriting the file every ``checkpoint_every_s``; stop
    once the writer is closed. Returns the outcomes as recorded."""
    recorded = []
    last_checkpoint = run.elapsed()
    for outcome in outcomes:
        if outcome.row is not None and not writer.add(outcome.image_id, outcome.row):
            outcome = ImageOutcome(outcome.image_id, outcome.plan, reason="budget: finished after the deadline")
        recorded.append(outcome)
        if writer.closed:
            break
        if run.elapsed() - last_checkpoint >= run.config.checkpoint_every_s:
            if writer.checkpoint():
                logger.info("checkpoint: %s with %d predicted images", run.config.out, len(writer.rows))
            last_checkpoint = run.elapsed()
    return recorded


def _load_models(config: SubmitConfig, weights: ResolvedWeights, segmenter=None) -> _Models:
    """The ensemble and the cells pipeline, from the resolved weights (``segmenter``: a ready one)."""
    from hpa_kernel.cells import CellConfig, CellPipeline, PipelineOptions
    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.paths import resolve_device
    from hpa_kernel.segmentation import create_segmenter
    from hpa_kernel.segmentation.hpa import HPAParams

    device = resolve_device(config.device)
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    ensemble = Ensemble.from_manifest(weights.manifest, device, config.inference_recipe)
    if segmenter is None:
        if weights.segmenter == "hpa":
            segmenter = create_segmenter("hpa", **weights.segmenter_kwargs(), params=HPAParams(device=device, padding=config.padding))
        else:
            logger.warning("using the classic segmenter (asked for explicitly); its cells differ from HPA-Cell-Segmentation's")
            segmenter = create_segmenter("classic")
    crop_size = config.crop_size or max(m.config.input_size for m in ensemble.members)
    pipeline = CellPipeline(
        segmenter, CellConfig(crop_size=crop_size, crop=config.inference_recipe.crop), config.workers, config.cache_dir,
        options=PipelineOptions(batch_size=config.seg_batch_size, encode_masks=True),
    )
    return _Models(ensemble, pipeline)


def _predict_images(run: _Run, models: _Models, planner: BudgetPlanner, stop: Callable[[], bool]) -> Iterator[ImageOutcome]:
    """Yield the outcome of each image of ``run.todo`` in order, under the plan the planner
    chooses from the costs measured so far; end when the planner gives the fallback or ``stop()``."""
    tracker = CostTracker()
    current = None
    results = models.pipeline.run(run.competition.test_dir, list(run.todo), progress=run.config.progress)
    try:
        for done, image_id in enumerate(run.todo):
            plan = planner.choose(run.elapsed(), done, tracker.estimates())
            if plan != current:
                logger.info("image %d/%d: plan %s (%.0f s left)", done + 1, len(run.todo), plan.describe(), planner.time_left(run.elapsed()))
                current = plan
            if plan.fallback and done == 0 and planner.prior is not None:
                logger.warning("budget: %.1f s left, the first image takes about %.1f s at the cheapest plan (prior); "
                               "no image is predicted", planner.time_left(run.elapsed()),
                               planner.prior.per_image(planner.ladder[-1]) * planner.safety)  # fmt: skip
            if plan.fallback or stop():
                return
            wait_start = run.elapsed()
            result = next(results)
            cells_ready = run.elapsed()
            outcome = _image_outcome(run, models, result, image_id, plan)
            classified = run.elapsed()
            n_cells = len(result.table) if outcome.row is not None else 0
            tracker.add(base_s=cells_ready - wait_start, n_cells=n_cells, classify_s=classified - cells_ready, passes=plan.passes)
            yield outcome
    finally:
        results.close()


def _image_outcome(run: _Run, models: _Models, result, image_id: str, plan: Plan) -> ImageOutcome:
    """The row of one image from its cells ``result``, or the reason it gets the fallback (logged)."""
    if result.image_id != image_id:
        raise RuntimeError(f"the cells pipeline returned {result.image_id} where {image_id} was expected")
    if not result.ok:
        return ImageOutcome(image_id, plan, reason=f"failed: {result.reason}")
    width, height = run.sizes[image_id]
    if (result.width, result.height) != (width, height):
        logger.error(
            "image %s: the sample says ImageWidth x ImageHeight = %d x %d but the files are %d x %d; "
            "it gets the fallback row", image_id, width, height, result.width, result.height,
        )
        return ImageOutcome(image_id, plan, reason=f"size: sample {width}x{height}, files {result.width}x{result.height}")
    if len(result.table) == 0:
        return ImageOutcome(image_id, plan, row=_no_cells_row(run, image_id, width, height))
    try:
        return ImageOutcome(image_id, plan, row=predict_image(result, models.ensemble, plan, run.config.batch_size))
    except Exception as exc:  # noqa: BLE001 - one image's error must not sink the submission
        logger.error("image %s: prediction failed (%s: %s); it gets the fallback row", image_id, type(exc).__name__, exc)
        return ImageOutcome(image_id, plan, reason=f"failed: {type(exc).__name__}: {exc}")


def _no_cells_row(run: _Run, image_id: str, width: int, height: int) -> str:
    """The row of an image in which no cell was found, by the recipe's ``no_cells_row``: the
    sample submission's row (:func:`~hpa_kernel.submission.writer.no_cells_prediction`), or empty."""
    from hpa_kernel.submission.writer import no_cells_prediction, read_sample_submission

    if run.config.inference_recipe.no_cells_row == "empty":
        return ""
    sample = read_sample_submission(run.competition.sample_submission)
    text = sample.loc[sample["ID"] == image_id, "PredictionString"]
    return no_cells_prediction(text.iloc[0] if len(text) else "", width, height)


def _fallback_reasons(
    refused: dict[str, str], outcomes: Sequence[ImageOutcome], todo: Sequence[str], beyond_limit: Sequence[str]
) -> dict[str, str]:
    """``{ID: reason}`` of every row that got the fallback: refused IDs, failed images, those beyond
    ``--limit``, and those the budget did not reach."""
    fallback = dict(refused)
    fallback.update((o.image_id, o.reason) for o in outcomes if o.reason is not None)
    fallback.update((image_id, f"limit: beyond {say_option('limit')}") for image_id in beyond_limit)
    processed = {o.image_id for o in outcomes}
    fallback.update((image_id, "budget: not reached before the deadline") for image_id in todo if image_id not in processed)
    return fallback


def _validate(run: _Run) -> list | None:
    """The problems of the written file (:func:`~hpa_kernel.submission.writer.check_submission`), or
    None when validation is off or no time is left for it."""
    if not run.config.validate:
        return None
    if run.elapsed() >= run.config.budget_s:
        logger.warning("no time left to validate %s", run.config.out)
        return None
    from hpa_kernel.submission.writer import check_submission

    problems = check_submission(run.config.out, run.competition.sample_submission).problems
    for problem in problems[:20]:
        logger.error("submission problem: %s", problem)
    return problems

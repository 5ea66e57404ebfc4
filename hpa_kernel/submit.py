"""The budgeted submission driver: test images → cells → ensemble → ``submission.csv``, on time.

:func:`run_submission` processes the test images in the order of ``sample_submission.csv``. Before
each image it asks a :class:`BudgetPlanner` for the richest :class:`Plan` that still fits the time
left, using per-image costs measured so far (:class:`CostTracker`: the wall time spent waiting for
the cells pipeline, and the classifier time per cell and forward pass):

1. TTA and every checkpoint of the manifest;
2. no TTA, every checkpoint;
3. fewer checkpoints, down to one per group (the largest group gives one up first);
4. fewer groups (the lightest weight goes first), down to a single checkpoint;
5. no prediction: the remaining images get the fallback row.

A valid ``submission.csv`` exists from the start (every row the fallback, written before any model
is loaded), is rewritten every ``checkpoint_every_s`` seconds, and is written a last time with a
``reserve_s`` margin before the budget ends: a timer writes it then even if the run is still busy
loading models or with one slow image, and nothing is written after it. Run as a program,
``hpa-kernel submit`` counts the budget from the process start (imports and start-up included). A fallback row is an empty PredictionString ("no
detections", :data:`hpa_kernel.submission.FALLBACK_PREDICTION`), given to images that failed (logged
with the reason) and to those that the budget did not reach.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


from hpa_kernel.recipe import DEFAULT_RECIPE, InferenceRecipe, get_recipe

__all__ = [
    "Plan",
    "FALLBACK_PLAN",
    "plan_ladder",
    "CostEstimates",
    "CostTracker",
    "BudgetPlanner",
    "SubmitConfig",
    "SubmitReport",
    "run_submission",
    "process_start_monotonic",
    "runtime_report",
    "predict_image",
]

logger = logging.getLogger(__name__)

HOUR = 3600.0


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """What to run for an image: the TTA views and how many checkpoints of each group.

    ``fallback=True`` means: do not process, write the fallback row.
    """

    checkpoints_per_group: tuple[int, ...] = ()
    tta: tuple[str, ...] = ("identity",)
    fallback: bool = False

    @property
    def passes(self) -> int:
        """Forward passes per cell."""
        return 0 if self.fallback else sum(self.checkpoints_per_group) * len(self.tta)

    def describe(self) -> str:
        if self.fallback:
            return "fallback"
        views = "+".join(self.tta) if len(self.tta) > 1 else "no TTA"
        return f"checkpoints {'/'.join(map(str, self.checkpoints_per_group))}, {views}"


FALLBACK_PLAN = Plan(fallback=True)


def plan_ladder(sizes: Sequence[int], weights: Sequence[float], tta: Sequence[str] | None = None) -> list[Plan]:
    """The plans from richest to cheapest, for groups of ``sizes`` checkpoints with ``weights``.

    With ``tta`` views (more than the identity), the first plan uses them with every checkpoint.
    Then every checkpoint without TTA; then one checkpoint less at a time from the group with the
    most (ties: the later group), down to one per group; then whole groups are dropped, lightest
    weight first (ties: the earlier group), down to one checkpoint.

    >>> [p.checkpoints_per_group for p in plan_ladder((1, 2, 4), (0.2, 0.4, 0.4))]
    [(1, 2, 4), (1, 2, 3), (1, 2, 2), (1, 2, 1), (1, 1, 1), (0, 1, 1), (0, 0, 1)]
    >>> plan_ladder((1, 2), (0.5, 0.5), tta=("identity", "hflip"))[0].passes
    6
    """
    sizes = tuple(int(s) for s in sizes)
    if not sizes or min(sizes) < 1 or len(weights) != len(sizes):
        raise ValueError(f"sizes must be positive checkpoint counts, one per weight; got {sizes} and {tuple(weights)}")
    ladder = []
    if tta is not None and tuple(tta) != ("identity",):
        ladder.append(Plan(sizes, tuple(tta)))
    current = list(sizes)
    ladder.append(Plan(tuple(current)))
    while max(current) > 1:
        top = max(current)
        k = max(i for i, n in enumerate(current) if n == top)
        current[k] -= 1
        ladder.append(Plan(tuple(current)))
    order = sorted(range(len(sizes)), key=lambda i: (weights[i], i))
    for i in order[:-1]:
        current[i] = 0
        ladder.append(Plan(tuple(current)))
    return ladder


# --------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class CostEstimates:
    """Measured costs: seconds per image outside the classifier, seconds per cell and forward
    pass, and cells per image. ``None`` while unmeasured."""

    base_s: float | None = None
    pass_s: float | None = None
    cells_per_image: float | None = None

    @property
    def known(self) -> bool:
        return self.base_s is not None and self.pass_s is not None and self.cells_per_image is not None

    def per_image(self, plan: Plan) -> float:
        """Estimated seconds for one image under ``plan`` (0 for the fallback)."""
        if plan.fallback:
            return 0.0
        if not self.known:
            raise ValueError("costs are not measured yet")
        return self.base_s + self.cells_per_image * self.pass_s * plan.passes


class CostTracker:
    """Accumulates what each processed image cost; :meth:`estimates` gives running means."""

    def __init__(self):
        self.images = 0
        self.base_total = 0.0
        self.cells_total = 0
        self.classify_total = 0.0
        self.cell_passes = 0

    def add(self, base_s: float, n_cells: int, classify_s: float, passes: int) -> None:
        """Record one image: ``base_s`` outside the classifier, ``classify_s`` for ``n_cells`` x ``passes``."""
        self.images += 1
        self.base_total += max(0.0, base_s)
        self.cells_total += int(n_cells)
        if n_cells and passes:
            self.classify_total += max(0.0, classify_s)
            self.cell_passes += int(n_cells) * int(passes)

    def estimates(self) -> CostEstimates:
        if not self.images:
            return CostEstimates()
        pass_s = self.classify_total / self.cell_passes if self.cell_passes else (0.0 if self.cells_total == 0 else None)
        return CostEstimates(self.base_total / self.images, pass_s, self.cells_total / self.images)


class BudgetPlanner:
    """Chooses the richest plan whose projected time for the remaining images fits the budget.

    Parameters
    ----------
    budget_s : float
        The whole budget, counted from the start of the run (clock time 0).
    n_images : int
        Images to process.
    reserve_s : float
        Kept free at the end for writing (and checking) the submission.
    ladder : list of Plan
        From :func:`plan_ladder`, richest first.
    safety : float
        Projected costs are multiplied by this factor (>= 1).

    Notes
    -----
    ``choose(elapsed, done, costs)``: with ``left = budget_s - reserve_s - elapsed`` and ``n`` images
    to go, the first plan of the ladder with ``n * cost(plan) * safety <= left`` is chosen. If none
    fits every remaining image, the cheapest plan is used while one more image fits; after that,
    and whenever ``left <= 0``, the fallback. Before anything is measured, the richest plan is
    chosen (the first image measures the costs).

    Examples
    --------
    >>> ladder = plan_ladder((1, 2), (0.5, 0.5), tta=("identity", "hflip"))
    >>> planner = BudgetPlanner(100.0, n_images=10, reserve_s=10.0, ladder=ladder, safety=1.0)
    >>> costs = CostEstimates(base_s=1.0, pass_s=0.1, cells_per_image=10)  # 1 s + 1 s per pass
    >>> planner.choose(0.0, 0, costs).describe()   # 10 x 7 s = 70 s <= 90 s
    'checkpoints 1/2, identity+hflip'
    >>> planner.choose(40.0, 5, costs).describe()  # 5 x 7 s = 35 s <= 50 s
    'checkpoints 1/2, identity+hflip'
    >>> planner.choose(60.0, 5, costs).describe()  # 30 s left: 35 s does not fit, 5 x 4 s = 20 s does
    'checkpoints 1/2, no TTA'
    >>> planner.choose(88.0, 5, costs).describe()  # 2 s left: only one more image, at the cheapest plan
    'checkpoints 0/1, no TTA'
    >>> planner.choose(89.5, 5, costs).describe()
    'fallback'
    """

    def __init__(self, budget_s: float, n_images: int, reserve_s: float, ladder: Sequence[Plan], safety: float = 1.15):
        if not math.isfinite(budget_s) or budget_s < 0:
            raise ValueError(f"budget_s must be a finite number >= 0, got {budget_s}")
        if n_images < 0:
            raise ValueError(f"n_images must be >= 0, got {n_images}")
        if reserve_s < 0:
            raise ValueError(f"reserve_s must be >= 0, got {reserve_s}")
        if not ladder or any(p.fallback for p in ladder):
            raise ValueError("ladder must be a non-empty list of non-fallback plans")
        if safety < 1:
            raise ValueError(f"safety must be >= 1, got {safety}")
        self.budget_s = float(budget_s)
        self.n_images = int(n_images)
        self.reserve_s = float(reserve_s)
        self.ladder = list(ladder)
        self.safety = float(safety)

    def time_left(self, elapsed: float) -> float:
        return self.budget_s - self.reserve_s - elapsed

    def choose(self, elapsed: float, done: int, costs: CostEstimates) -> Plan:
        """The plan for the next image; see the class notes."""
        left = self.time_left(elapsed)
        remaining = self.n_images - done
        if left <= 0 or remaining <= 0:
            return FALLBACK_PLAN
        if not costs.known:
            return self.ladder[0]
        for plan in self.ladder:
            if remaining * costs.per_image(plan) * self.safety <= left:
                return plan
        cheapest = self.ladder[-1]
        if costs.per_image(cheapest) * self.safety <= left:
            return cheapest
        return FALLBACK_PLAN


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
        Check the final file with :func:`hpa_kernel.submission.check_submission` when time is left.
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
    from hpa_kernel.submission import prediction_string_for_cells

    table = result.table
    if len(table) == 0:
        return ""
    if result.encoded is None:
        raise ValueError(f"image {result.image_id}: the cells have no encoded masks (run the pipeline with encode_masks=True)")
    probs = ensemble.predict(result.crops, tta=plan.tta, checkpoints_per_group=plan.checkpoints_per_group, batch_size=batch_size)
    final = recipe_confidence(probs, table, ensemble.recipe if recipe is None else recipe)
    return prediction_string_for_cells(result.encoded, final)


def _choose_segmenter(config: SubmitConfig, manifest) -> str:
    if config.segmenter == "classic":
        return "classic"
    if manifest.segmentation_present():
        return "hpa"
    names = ", ".join(f.file for f in manifest.segmentation.files())
    raise FileNotFoundError(
        f"the HPA segmentation weights ({names}) are not in the weights folder {manifest.weights_dir}; "
        "attach them, or pass --segmenter classic explicitly to use the weight-free classic segmenter"
    )


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
    from hpa_kernel.submission import FALLBACK_PREDICTION, write_submission

    write_submission(rows, _samples_frame(samples), out, FALLBACK_PREDICTION, log_each_fallback=False)


class _SubmissionWriter:
    """Writes ``submission.csv`` from the rows so far, until the deadline closes it.

    :meth:`close_at` starts a timer thread that, at the deadline (real seconds), writes the rows
    predicted so far a last time and closes the writer; later writes (from a run still busy
    loading models or predicting an image) are skipped, so the last write is never late.
    """

    def __init__(self, samples, out: Path):
        self.samples = samples
        self.out = out
        self.lock = threading.Lock()
        self.closed = False
        self.final_rows: dict[str, str] | None = None
        self._timer: threading.Timer | None = None

    def write(self, rows: dict[str, str], final: bool = False) -> bool:
        """Write ``rows`` (the other sample rows get the fallback); False if the writer is closed."""
        with self.lock:
            if self.closed:
                return False
            snapshot = dict(rows)
            _write(snapshot, self.samples, self.out)
            if final:
                self.closed = True
                self.final_rows = snapshot
            return True

    def close_at(self, seconds: float, rows: dict[str, str]) -> None:
        """Write ``rows`` a last time after ``seconds`` real seconds, unless :meth:`cancel` comes first."""

        def fire():
            if self.write(rows, final=True):
                logger.warning("deadline: wrote %s with the %d images predicted so far; later results are dropped", self.out, len(self.final_rows))

        self._timer = threading.Timer(max(0.0, seconds), fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


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
    from hpa_kernel.submission import read_sample

    t0 = clock() if started is None else float(started)

    def elapsed() -> float:
        return clock() - t0

    competition = find_competition(config.data)
    samples = read_sample(competition.sample_submission)
    ids = [s[0] for s in samples]
    limited = ids if config.limit is None else ids[: config.limit]
    out = config.out
    rows: dict[str, str] = {}
    fallback: dict[str, str] = _refused_ids(limited)
    todo = [image_id for image_id in limited if image_id not in fallback]
    report = SubmitReport(out, len(ids), 0)
    writer = _SubmissionWriter(samples, out)
    writer.write(rows)  # a valid file from the start
    if clock is time.monotonic:
        writer.close_at(config.budget_s - config.reserve - elapsed(), rows)
    logger.info("wrote the initial all-fallback %s (%d rows); budget %.0f s, reserve %.0f s", out, len(ids), config.budget_s, config.reserve)

    # Cheap checks first, so that a zero budget still validates its inputs.
    from hpa_kernel.manifest import load_manifest

    manifest = load_manifest(weights_dir=config.weights, verify=False)
    seg_name = "custom" if segmenter is not None else _choose_segmenter(config, manifest)
    report.segmenter = seg_name if segmenter is None else type(segmenter).__name__
    if segmenter is None:
        _log_runtime(config, seg_name)
    else:
        _log_runtime(config, getattr(segmenter, "name", seg_name), getattr(segmenter, "padding", None))
    from hpa_kernel.classifier.ensemble import DEFAULT_TTA

    recipe = config.inference_recipe
    logger.info("%s", recipe.describe())
    ladder = plan_ladder([len(g.checkpoints) for g in manifest.groups], manifest.weights, DEFAULT_TTA if recipe.tta else None)
    planner = BudgetPlanner(config.budget_s, len(todo), config.reserve, ladder)
    tracker = CostTracker()

    if not planner.choose(elapsed(), 0, tracker.estimates()).fallback and todo:
        try:
            _predict_all(config, manifest, seg_name, segmenter, competition, writer, todo, planner, tracker, rows, fallback, report, elapsed)
        except BaseException:
            # keep what was predicted before the error (or Ctrl-C); the other rows get the fallback
            writer.cancel()
            writer.write(rows, final=True)
            logger.error("the run stopped early; %s holds the %d images predicted so far", out, len(rows))
            raise
    for image_id in ids[len(limited):]:
        fallback[image_id] = "limit: beyond --limit"
    writer.cancel()
    if not writer.write(rows, final=True):
        # the deadline timer wrote the file: report what it holds
        late = [i for i in rows if i not in writer.final_rows]
        for image_id in late:
            del rows[image_id]
            fallback[image_id] = "budget: finished after the deadline"
    for image_id in todo:
        if image_id not in rows and image_id not in fallback:
            fallback[image_id] = "budget: not reached before the deadline"
    report.fallback = fallback
    report.n_predicted = len(rows)
    if fallback:
        shown = ", ".join(f"{i} ({r})" for i, r in list(fallback.items())[:5])
        logger.warning("%d of %d images got the fallback row (empty PredictionString), e.g. %s", len(fallback), len(ids), shown)
    if config.validate:
        if elapsed() < config.budget_s:
            from hpa_kernel.submission import check_submission

            report.problems = check_submission(out, competition.sample_submission).problems
            for problem in report.problems[:20]:
                logger.error("submission problem: %s", problem)
        else:
            logger.warning("no time left to validate %s", out)
    report.elapsed_s = elapsed()
    logger.info("%s", report.summary())
    return report


def _predict_all(config, manifest, seg_name, segmenter, competition, writer, todo, planner, tracker, rows, fallback, report, elapsed) -> None:
    """Load the models, then predict ``todo`` in order into ``rows`` (or ``fallback``) while the planner allows."""
    from hpa_kernel.cells import CellConfig, CellPipeline
    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.manifest import verify_files
    from hpa_kernel.paths import resolve_device
    from hpa_kernel.segmentation import create_segmenter
    from hpa_kernel.segmentation.hpa import HPAParams

    device = resolve_device(config.device)
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    verify_files(manifest, segmentation=seg_name == "hpa")
    ensemble = Ensemble.from_manifest(manifest, device, config.inference_recipe)
    if segmenter is None:
        if seg_name == "hpa":
            seg = manifest.segmentation
            segmenter = create_segmenter(
                "hpa", nuclei=manifest.path_of(seg.nuclei), cell=manifest.path_of(seg.cell),
                params=HPAParams(device=device, padding=config.padding),
            )
        else:
            logger.warning("using the classic segmenter (asked for explicitly); its cells differ from HPA-Cell-Segmentation's")
            segmenter = create_segmenter("classic")
    crop_size = config.crop_size or max(m.config.input_size for m in ensemble.members)
    pipeline = CellPipeline(
        segmenter, CellConfig(crop_size=crop_size), config.workers, config.cache_dir,
        batch_size=config.seg_batch_size, encode_masks=True,
    )
    last_checkpoint = elapsed()
    results = pipeline.run(competition.test_dir, todo, progress=config.progress)
    current = None
    sizes = {image_id: (width, height) for image_id, width, height in writer.samples}
    try:
        for done, image_id in enumerate(todo):
            plan = planner.choose(elapsed(), done, tracker.estimates())
            if plan != current:
                logger.info("image %d/%d: plan %s (%.0f s left)", done + 1, len(todo), plan.describe(), planner.time_left(elapsed()))
                current = plan
            if plan.fallback or writer.closed:
                break
            t_a = elapsed()
            result = next(results)
            t_b = elapsed()
            n_cells = 0
            if result.image_id != image_id:
                raise RuntimeError(f"the cells pipeline returned {result.image_id} where {image_id} was expected")
            if not result.ok:
                fallback[image_id] = f"failed: {result.reason}"
            elif (result.width, result.height) != sizes[image_id]:
                width, height = sizes[image_id]
                logger.error(
                    "image %s: the sample says ImageWidth x ImageHeight = %d x %d but the files are %d x %d; "
                    "it gets the fallback row", image_id, width, height, result.width, result.height,
                )
                fallback[image_id] = f"size: sample {width}x{height}, files {result.width}x{result.height}"
            else:
                try:
                    rows[image_id] = predict_image(result, ensemble, plan, config.batch_size)
                    n_cells = len(result.table)
                    report.plans[plan.describe()] += 1
                except Exception as exc:  # noqa: BLE001 - one image's error must not sink the submission
                    logger.error("image %s: prediction failed (%s: %s); it gets the fallback row", image_id, type(exc).__name__, exc)
                    fallback[image_id] = f"failed: {type(exc).__name__}: {exc}"
            t_c = elapsed()
            tracker.add(base_s=t_b - t_a, n_cells=n_cells, classify_s=t_c - t_b, passes=plan.passes)
            if t_c - last_checkpoint >= config.checkpoint_every_s:
                writer.write(rows)
                last_checkpoint = elapsed()
                logger.info("checkpoint: %s with %d predicted images", config.out, len(rows))
    finally:
        results.close()

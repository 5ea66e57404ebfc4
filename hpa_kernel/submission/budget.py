"""The time budget of a submission run: plans, their measured costs, and the planner.

A :class:`Plan` says what to run for one image (the TTA views and how many checkpoints of each
group); :func:`plan_ladder` lists the plans from richest to cheapest; :class:`CostTracker`
accumulates what each processed image cost and gives :class:`CostEstimates`; :class:`BudgetPlanner`
chooses, before each image, the richest plan whose projected time for the remaining images still
fits the budget; before the first image is measured it uses a prior (:func:`prior_costs`).
Everything here is pure (no clock, no I/O): the driver
(:mod:`hpa_kernel.submission.driver`) passes the elapsed time in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Plan",
    "FALLBACK_PLAN",
    "plan_ladder",
    "CostEstimates",
    "CostTracker",
    "BudgetPlanner",
    "prior_costs",
]


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


# The prior: what one image is assumed to cost before any image is measured (the first image). The
# numbers are deliberately high, so that the first image is not started when it cannot finish; once
# an image is measured, the measured costs replace them. Sources: benchmarks/RESULTS.md, "Submission
# pipeline stages" (a loaded 2-core CPU, so pessimistic up to 2x) and the CPU-stage benchmark.
#: Seconds per image whatever its size: reading the four channels, starting the workers, set-up.
PRIOR_IMAGE_S = 1.0
#: Seconds per megapixel of the CPU stage (restore the maps, ``label_cell``, crops, masks): measured
#: 0.2 + 1.63 + 0.82 + 0.07 + 0.5 = 3.2 s for a 2048 x 2048 image (0.8 s/MP) under load.
PRIOR_CELLS_S_PER_MPIX = 1.0
#: Seconds of the HPA segmentation networks per image (none for the classic or a caller's segmenter):
#: CPU measured 25.1 s under load; CUDA estimated 0.29 s on a T4, raised for the first call's warm-up.
PRIOR_NETWORKS_S = {"cpu": 25.0, "cuda": 5.0}
#: Seconds per cell and forward pass of a 512-px checkpoint (scaled by the input area): CPU measured
#: 0.86 s for EfficientNet-B0; CUDA estimated 0.5 ms on a T4, taken 10x higher.
PRIOR_PASS_S_512 = {"cpu": 0.86, "cuda": 0.005}
#: Cells per image: RESULTS.md's 559-image estimate counts 20-40; the upper end.
PRIOR_CELLS_PER_IMAGE = 40


def prior_costs(megapixels: float, device: str = "cpu", input_size: int = 512, networks: bool = True) -> CostEstimates:
    """The prior :class:`CostEstimates` of an image of ``megapixels`` before anything is measured.

    Parameters
    ----------
    megapixels : float
        Width x height / 1e6 of the image.
    device : str
        ``"cuda"`` (or ``"cuda:N"``) takes the CUDA numbers; anything else the CPU's.
    input_size : int
        The classifier's input size in pixels; a pass costs in proportion to its area.
    networks : bool
        Whether the HPA segmentation networks run (False for the classic or a caller's segmenter).

    Examples
    --------
    >>> prior = prior_costs(2048 * 2048 / 1e6, "cpu")  # 1 s + 4.19 MP x 1 s + 25 s; 40 cells x 0.86 s
    >>> round(prior.base_s, 2), prior.pass_s, prior.cells_per_image
    (30.19, 0.86, 40)
    >>> prior_costs(1.0, "cuda:0", input_size=256, networks=False).per_image(Plan((1,)))  # 2 s + 40 x 1.25 ms
    2.05
    """
    if not math.isfinite(megapixels) or megapixels < 0:
        raise ValueError(f"megapixels must be a finite number >= 0, got {megapixels}")
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1 pixel, got {input_size}")
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    base = PRIOR_IMAGE_S + PRIOR_CELLS_S_PER_MPIX * megapixels + (PRIOR_NETWORKS_S[kind] if networks else 0.0)
    pass_s = PRIOR_PASS_S_512[kind] * (input_size / 512) ** 2
    return CostEstimates(base_s=base, pass_s=pass_s, cells_per_image=PRIOR_CELLS_PER_IMAGE)


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
    prior : CostEstimates, optional
        The costs assumed before anything is measured (:func:`prior_costs`); without it, the
        richest plan is chosen then.

    Notes
    -----
    ``choose(elapsed, done, costs)``: with ``left = budget_s - reserve_s - elapsed`` and ``n`` images
    to go, the first plan of the ladder with ``n * cost(plan) * safety <= left`` is chosen. If none
    fits every remaining image, the cheapest plan is used while one more image fits; after that,
    and whenever ``left <= 0``, the fallback. Before anything is measured, the same rule runs on
    the ``prior`` costs: the first image is not started when even the cheapest plan's prior does
    not fit the time left (without a prior: the richest plan). Measured costs replace the prior.

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
    >>> prior = CostEstimates(base_s=30.0, pass_s=1.0, cells_per_image=10)  # 30 s + 10 s per pass
    >>> careful = planner.with_prior(prior)
    >>> careful.choose(0.0, 0, CostEstimates()).describe()    # 10 x 40 s = 400 s > 90 s; one image: 40 s fits
    'checkpoints 0/1, no TTA'
    >>> careful.choose(60.0, 0, CostEstimates()).describe()   # 30 s left < 40 s: not started
    'fallback'
    >>> careful.choose(60.0, 0, costs).describe()             # measured costs win: 10 x 3 s fits
    'checkpoints 1/1, no TTA'
    """

    def __init__(
        self, budget_s: float, n_images: int, reserve_s: float, ladder: Sequence[Plan], safety: float = 1.15,
        prior: CostEstimates | None = None,
    ):
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
        if prior is not None and not prior.known:
            raise ValueError(f"prior must give every cost (base_s, pass_s, cells_per_image), got {prior}")
        self.budget_s = float(budget_s)
        self.n_images = int(n_images)
        self.reserve_s = float(reserve_s)
        self.ladder = list(ladder)
        self.safety = float(safety)
        self.prior = prior

    def with_prior(self, prior: CostEstimates | None) -> BudgetPlanner:
        """This planner with ``prior`` as the costs assumed before anything is measured."""
        return BudgetPlanner(self.budget_s, self.n_images, self.reserve_s, self.ladder, self.safety, prior)

    def time_left(self, elapsed: float) -> float:
        return self.budget_s - self.reserve_s - elapsed

    def choose(self, elapsed: float, done: int, costs: CostEstimates) -> Plan:
        """The plan for the next image; see the class notes."""
        left = self.time_left(elapsed)
        remaining = self.n_images - done
        if left <= 0 or remaining <= 0:
            return FALLBACK_PLAN
        if not costs.known:
            if self.prior is None:
                return self.ladder[0]
            costs = self.prior
        for plan in self.ladder:
            if remaining * costs.per_image(plan) * self.safety <= left:
                return plan
        cheapest = self.ladder[-1]
        if costs.per_image(cheapest) * self.safety <= left:
            return cheapest
        return FALLBACK_PLAN

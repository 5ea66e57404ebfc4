"""The time budget of a submission run: plans, their measured costs, and the planner.

A :class:`Plan` says what to run for one image (the TTA views and how many checkpoints of each
group); :func:`plan_ladder` lists the plans from richest to cheapest; :class:`CostTracker`
accumulates what each processed image cost and gives :class:`CostEstimates`; :class:`BudgetPlanner`
chooses, before each image, the richest plan whose projected time for the remaining images still
fits the budget. Everything here is pure (no clock, no I/O): the driver
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

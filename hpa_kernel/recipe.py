"""Inference recipes: how ensemble probabilities become the submission's confidences.

A recipe is a frozen, self-checking :class:`InferenceRecipe`. Two named presets exist, and
:func:`get_recipe` is the one way to get them:

``"milimed2021"`` (the default)
    The 4th-place team's submission code (``CroDoc/HPA2021-data-centric-approach``,
    ``HPAsubmission.ipynb`` In[11], In[19]-In[25]; facts in ``shared/reference/recipe``):
    checkpoints with 18 outputs, Negative = 1 - max of the 18 ensemble probabilities; the cell
    value ``v`` = border cleaner (flat-edge ratios of the nucleus's bounding box, x0.01 for a
    nucleus without blue) x outlier cleaner (per-cell channel sums, 0.077 / 0.05 of the means,
    x0.001); every class x ``v``; then ``0.7 * (v * p) + 0.3 * mean(p over the image's cells
    with v == 1, the cell itself included)`` for every class except 11 and 18; no TTA; the team's
    16-bit crops (:mod:`hpa_kernel.cells.crops`); an image without cells gets the sample row.

``"kit2025"``
    The kit's behaviour before the recipe existed: 19 outputs with Negative learned as a class;
    the ellipse estimate of the nucleus cut with penalty ``clip(1 - cut, 0.05, 1)``; the
    4-feature robust-z outlier vote (the cells table's ``outlier`` flag) with x0.2; the blend
    ``(0.7 p + 0.3 mean(p over the image's *other valid* cells)) x penalty`` over all 19
    classes; flip TTA; 8-bit crops, INTER_AREA when shrinking, re-masked after the resize; an
    image without cells gets an empty PredictionString.

An experiment is a ``dataclasses.replace`` of a preset (this is how ``hpa-kernel ablate`` switches
elements off), never an edit of the registry.

Examples
--------
>>> r = get_recipe("milimed2021")
>>> r.num_outputs, r.negative, r.border_cleaner, r.tta
(18, 'one_minus_max', 'milimed', False)
>>> import dataclasses
>>> dataclasses.replace(r, blend=False).blend
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpa_kernel.cells.crops import CROP_MODES
from hpa_kernel.classes import NUM_CLASSES

__all__ = [
    "InferenceRecipe",
    "DEFAULT_RECIPE",
    "RECIPES",
    "NEGATIVE_RULES",
    "BORDER_CLEANERS",
    "OUTLIER_CLEANERS",
    "BLEND_CONTEXTS",
    "CROP_MODES",
    "NO_CELLS_ROWS",
    "get_recipe",
    "recipe_names",
    "recipes_for_outputs",
]

DEFAULT_RECIPE = "milimed2021"

#: How class 18 (Negative) is obtained: 1 - max of the 18 other outputs, a 19th trained output, or
#: not at all (confidence 0; the ablation's "no Negative rule").
NEGATIVE_RULES = ("one_minus_max", "learned", "none")
#: Border cleaners: the team's flat-edge ratios, the kit's ellipse cut estimate, or None (off).
BORDER_CLEANERS = ("milimed", "ellipse", None)
#: Outlier cleaners: the team's channel-sum rule, the kit's robust-z vote, or None (off).
OUTLIER_CLEANERS = ("milimed", "robust_z", None)
#: Which cells form a cell's image term in the blend (see :class:`InferenceRecipe`).
BLEND_CONTEXTS = ("clean_cells", "other_valid_cells")
#: The row of an image in which no cell was found: the sample submission's row (the team) or an
#: empty PredictionString; see :func:`hpa_kernel.submission.writer.no_cells_prediction`.
NO_CELLS_ROWS = ("sample", "empty")


@dataclass(frozen=True)
class InferenceRecipe:
    """How per-cell ensemble probabilities become the final 19 confidences.

    Parameters
    ----------
    name : str
        The preset it came from (kept by ``dataclasses.replace``; for logs and checkpoint JSON).
    num_outputs : {18, 19}
        Outputs every checkpoint must have: 18 (classes 0-17) or 19 (Negative included).
    negative : {"one_minus_max", "learned", "none"}
        Class 18: ``1 - max`` of classes 0-17 (needs 18 or 19 outputs; a 19th is ignored), the
        19th output (needs 19), or 0 (not predicted).
    border_cleaner : {"milimed", "ellipse", None}
        ``"milimed"``: x0.01 if the nucleus has no blue, else ``m(ud_ratio) * m(lr_ratio)`` of the
        nucleus's bounding box (:func:`hpa_kernel.cells.heuristics.flat_edge_multiplier`).
        ``"ellipse"``: ``clip(1 - ellipse_cut_slope * nucleus_cut, ellipse_min, 1)``. None: 1.
    outlier_cleaner : {"milimed", "robust_z", None}
        ``"milimed"``: among the cells whose value after the border cleaner is > 0.01, a cell whose
        red sum is below ``0.077 x`` their mean, or whose blue sum x yellow sum is below ``0.05 x``
        their mean, gets x0.001. ``"robust_z"``: the table's ``outlier`` flag gets
        ``robust_z_factor``. None: 1.
    blend : bool
        Blend each cell's confidence with its image's (False: ``v * p`` only).
    blend_cell, blend_image : float
        The blend weights; non-negative, summing to 1.
    blend_skip_classes : tuple of int
        Classes left out of the blend (the team: 11, mitotic spindle, and 18, Negative).
    blend_context : {"clean_cells", "other_valid_cells"}
        ``"clean_cells"`` (team): ``blend_cell * v * p + blend_image * mean(p over the cells with
        v == 1, itself included)``; no blend in an image without such a cell.
        ``"other_valid_cells"`` (kit): ``(blend_cell * p + blend_image * mean(p over the *other*
        cells of the table's ``valid`` column; own p if none)) * v``.
    tta : bool
        Flip TTA (identity, hflip, vflip) when the time budget allows.
    crop : {"milimed2021", "kit2025"}
        How cells are cropped (:data:`hpa_kernel.cells.crops.CROP_MODES`): the team's uint16 crop
        (INTER_LINEAR, no re-masking) or the kit's uint8 crop (INTER_AREA when shrinking,
        re-masked).
    no_cells_row : {"sample", "empty"}
        PredictionString of an image in which no cell was found: ``"sample"`` (team) the sample
        submission's row for it, ``"empty"`` no detections. Images that fail get an empty row
        under both.
    """

    name: str = DEFAULT_RECIPE
    num_outputs: int = 18
    negative: str = "one_minus_max"
    border_cleaner: str | None = "milimed"
    outlier_cleaner: str | None = "milimed"
    blend: bool = True
    blend_cell: float = 0.7
    blend_image: float = 0.3
    blend_skip_classes: tuple[int, ...] = (11, 18)
    blend_context: str = "clean_cells"
    tta: bool = False
    crop: str = "milimed2021"
    no_cells_row: str = "sample"
    no_nucleus_factor: float = 0.01
    outlier_candidate_min: float = 0.01
    outlier_red_ratio: float = 0.077
    outlier_by_ratio: float = 0.05
    outlier_factor: float = 0.001
    ellipse_cut_slope: float = 1.0
    ellipse_min: float = 0.05
    robust_z_factor: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.num_outputs not in (18, 19):
            raise ValueError(f"num_outputs must be 18 or 19, got {self.num_outputs!r}")
        for field_name, allowed in (
            ("negative", NEGATIVE_RULES),
            ("border_cleaner", BORDER_CLEANERS),
            ("outlier_cleaner", OUTLIER_CLEANERS),
            ("blend_context", BLEND_CONTEXTS),
            ("crop", CROP_MODES),
            ("no_cells_row", NO_CELLS_ROWS),
        ):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{field_name} must be one of {allowed}, got {getattr(self, field_name)!r}")
        if self.negative == "learned" and self.num_outputs != 19:
            raise ValueError(f"negative='learned' needs num_outputs=19 (a trained Negative output), got {self.num_outputs}")
        if not isinstance(self.blend, bool) or not isinstance(self.tta, bool):
            raise ValueError(f"blend and tta must be bool, got {self.blend!r} and {self.tta!r}")
        w_c, w_i = self.blend_cell, self.blend_image
        if not (math.isfinite(w_c) and math.isfinite(w_i)) or w_c < 0 or w_i < 0 or abs(w_c + w_i - 1.0) > 1e-6:
            raise ValueError(f"blend_cell and blend_image must be >= 0 and sum to 1, got {w_c} and {w_i}")
        skip = tuple(self.blend_skip_classes)
        if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < NUM_CLASSES for c in skip):
            raise ValueError(f"blend_skip_classes must be class ids 0..{NUM_CLASSES - 1}, got {skip!r}")
        object.__setattr__(self, "blend_skip_classes", tuple(sorted(set(skip))))
        for field_name in ("no_nucleus_factor", "outlier_factor", "ellipse_min", "robust_z_factor"):
            value = getattr(self, field_name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{field_name} must be in (0, 1], got {value!r}")
        for field_name in ("outlier_candidate_min", "outlier_red_ratio", "outlier_by_ratio", "ellipse_cut_slope"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{field_name} must be a finite number >= 0, got {value!r}")

    def describe(self) -> str:
        """One line for logs."""
        blend = (
            f"blend {self.blend_cell:g}/{self.blend_image:g} over {self.blend_context}"
            + (f" except {','.join(map(str, self.blend_skip_classes))}" if self.blend_skip_classes else "")
            if self.blend
            else "no blend"
        )
        return (
            f"recipe {self.name}: {self.num_outputs} outputs, Negative {self.negative}, border {self.border_cleaner}, "
            f"outlier {self.outlier_cleaner}, {blend}, TTA {'on' if self.tta else 'off'}, crop {self.crop}"
        )


RECIPES: dict[str, InferenceRecipe] = {
    "milimed2021": InferenceRecipe(),
    "kit2025": InferenceRecipe(
        name="kit2025",
        num_outputs=19,
        negative="learned",
        border_cleaner="ellipse",
        outlier_cleaner="robust_z",
        blend_skip_classes=(),
        blend_context="other_valid_cells",
        tta=True,
        crop="kit2025",
        no_cells_row="empty",
    ),
}


def recipe_names() -> tuple[str, ...]:
    """The names :func:`get_recipe` accepts."""
    return tuple(RECIPES)


def get_recipe(name: str | InferenceRecipe | None = None) -> InferenceRecipe:
    """The preset called ``name`` (None: :data:`DEFAULT_RECIPE`); a recipe is returned as is.

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.

    Examples
    --------
    >>> get_recipe().name
    'milimed2021'
    >>> get_recipe("kit2025").num_outputs
    19
    """
    if isinstance(name, InferenceRecipe):
        return name
    key = DEFAULT_RECIPE if name is None else name
    if key not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[key]


def recipes_for_outputs(num_outputs: int) -> tuple[str, ...]:
    """The preset names whose checkpoints have ``num_outputs`` outputs (for error messages)."""
    return tuple(n for n, r in RECIPES.items() if r.num_outputs == num_outputs)

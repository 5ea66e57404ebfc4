"""Final per-cell confidences: from ensemble probabilities to the 19 confidences of the submission.

:func:`recipe_confidence` is the one way in at inference: it follows an
:class:`~hpa_kernel.recipe.InferenceRecipe` (the Negative rule, the cell value ``v`` from the
cleaners, the blend), in the order of the team's code for ``milimed2021``::

    q        = the 19 classes: probs[:, :18] and Negative = 1 - max(probs[:, :18])
    v        = border cleaner x outlier cleaner (per cell, from the cells table)
    pen      = q * v                                    (every class, Negative included)
    ctx[c]   = mean of pen[j, c] over the image's cells j with v[j] == 1 (itself included)
    final    = 0.7 * pen + 0.3 * ctx  for c not in (11, 18); pen for 11 and 18

and, for ``kit2025`` (the ``"other_valid_cells"`` blend), :func:`final_confidence` below.

The kit's blend (:func:`final_confidence`). For cell ``i`` of an image and class ``c``::

    image[i, c] = mean of probs[j, c] over the image's valid cells j != i
    final[i, c] = (cell_weight * probs[i, c] + image_weight * image[i, c]) * penalty[i]

"Valid" is the cells stage's ``valid`` column: border cells (nucleus cut by the image edge) and
outliers are excluded from the image mean, but they still get a final confidence of their own.

When a cell has no *other* valid cell in its image (it is the only valid cell, or there is none),
the image term is the cell's own prediction, so ``final = (cell_weight + image_weight) * probs[i]
* penalty[i]``: a lone cell is judged on its own evidence rather than on an empty mean.
"""

from __future__ import annotations

import logging

from typing import TYPE_CHECKING

import numpy as np

from hpa_kernel.classes import NEGATIVE, NUM_CLASSES
from hpa_kernel.recipe import InferenceRecipe, get_recipe

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CELL_WEIGHT",
    "IMAGE_WEIGHT",
    "image_context",
    "final_confidence",
    "with_negative",
    "cell_values",
    "clean_cell_blend",
    "recipe_confidence",
]

logger = logging.getLogger(__name__)

CELL_WEIGHT = 0.7
IMAGE_WEIGHT = 0.3


def _validate(probs, valid, penalty):
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point, got {probs.dtype}")
    if probs.size and (not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1):
        raise ValueError(f"probs must be finite and in [0, 1], got range [{np.nanmin(probs)}, {np.nanmax(probs)}]")
    n = probs.shape[0]
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid)
    if valid.shape != (n,) or valid.dtype != bool:
        raise ValueError(f"valid must be a bool array of shape ({n},), got {valid.dtype} {valid.shape}")
    if penalty is None:
        penalty = np.ones((n, 1))
    else:
        penalty = np.asarray(penalty, dtype=np.float64)
        if penalty.shape == (n,):
            penalty = penalty[:, None]
        if penalty.shape not in ((n, 1), probs.shape):
            raise ValueError(f"penalty must have shape ({n},) or {probs.shape}, got {penalty.shape}")
        if penalty.size and (not np.isfinite(penalty).all() or penalty.min() < 0 or penalty.max() > 1):
            raise ValueError(f"penalty must be in [0, 1], got range [{penalty.min()}, {penalty.max()}]")
    return probs, valid, penalty


def image_context(probs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per cell, the mean prediction of the image's other valid cells (own prediction if there are none).

    Parameters
    ----------
    probs : ndarray, shape (N, C)
        Per-cell probabilities of ONE image.
    valid : ndarray of bool, shape (N,), optional
        Cells that may contribute to the mean; default all.

    Returns
    -------
    ndarray, shape (N, C), float64

    Examples
    --------
    >>> p = np.array([[0.2], [0.4], [0.9]])
    >>> np.round(image_context(p, np.array([True, True, False])).ravel(), 6).tolist()
    [0.4, 0.2, 0.3]
    """
    probs, valid, _ = _validate(probs, valid, None)
    return _image_context(probs.astype(np.float64), valid)


def _image_context(p: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """:func:`image_context` on checked inputs: ``p`` float64 (N, C), ``valid`` bool (N,)."""
    n_valid = int(valid.sum())
    total = p[valid].sum(axis=0)
    # others = valid cells except i: a valid cell removes itself from the sum and the count.
    count = np.where(valid, n_valid - 1, n_valid).astype(np.float64)
    sums = total[None, :] - np.where(valid[:, None], p, 0.0)
    out = p.copy()  # documented fallback: no other valid cell -> own prediction
    has_others = count > 0
    out[has_others] = sums[has_others] / count[has_others, None]
    return out


def final_confidence(
    probs: np.ndarray,
    valid: np.ndarray | None = None,
    penalty: np.ndarray | None = None,
    cell_weight: float = CELL_WEIGHT,
    image_weight: float = IMAGE_WEIGHT,
) -> np.ndarray:
    """Blend each cell's probabilities with its image's other valid cells, then apply the penalties.

    Parameters
    ----------
    probs : ndarray, shape (N, C)
        Ensemble probabilities in [0, 1] for the N cells of ONE image.
    valid : ndarray of bool, shape (N,), optional
        The cells table's ``valid`` column; invalid cells are left out of the image mean.
    penalty : ndarray, shape (N,) or (N, C), optional
        Multipliers in [0, 1] (the cells table's ``penalty`` column); default 1.
    cell_weight, image_weight : float
        Non-negative, summing to 1 (within 1e-6). Defaults 0.7 and 0.3.

    Returns
    -------
    ndarray, shape (N, C), float32, in [0, 1]

    Examples
    --------
    Three cells, one class; the third cell is a border cell with penalty 0.5:

    >>> p = np.array([[0.2], [0.4], [0.9]])
    >>> out = final_confidence(p, valid=np.array([True, True, False]), penalty=np.array([1, 1, 0.5]))
    >>> [round(float(v), 4) for v in out.ravel()]  # 0.7*0.2+0.3*0.4, 0.7*0.4+0.3*0.2, (0.7*0.9+0.3*0.3)*0.5
    [0.26, 0.34, 0.36]
    """
    if cell_weight < 0 or image_weight < 0 or abs(cell_weight + image_weight - 1.0) > 1e-6:
        raise ValueError(f"cell_weight and image_weight must be >= 0 and sum to 1, got {cell_weight} and {image_weight}")
    probs, valid, penalty = _validate(probs, valid, penalty)
    if probs.shape[0] == 0:
        return np.zeros(probs.shape, dtype=np.float32)
    p = probs.astype(np.float64)
    out = _other_cells_blend(p, valid, cell_weight, image_weight) * penalty
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _other_cells_blend(p: np.ndarray, valid: np.ndarray, cell_weight: float, image_weight: float, skip=()) -> np.ndarray:
    """The kit's blend on checked inputs: ``cell_weight * p + image_weight * image_context``; the
    columns in ``skip`` keep ``p``."""
    blended = cell_weight * p + image_weight * _image_context(p, valid)
    if skip:
        blended[:, list(skip)] = p[:, list(skip)]
    return blended


def with_negative(probs: np.ndarray, rule: str) -> np.ndarray:
    """The 19 class probabilities from a model's 18 or 19 outputs, by the Negative ``rule``.

    ``"one_minus_max"``: classes 0-17 as given and Negative = 1 - their maximum (a 19th output is
    ignored); ``"learned"``: the 19 outputs as given; ``"none"``: Negative = 0.

    >>> p = np.array([[0.2, 0.7] + [0.1] * 16])
    >>> round(float(with_negative(p, "one_minus_max")[0, 18]), 6)
    0.3
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] not in (NUM_CLASSES - 1, NUM_CLASSES):
        raise ValueError(f"probs must have shape (N, 18) or (N, 19), got {probs.shape}")
    out = np.zeros((probs.shape[0], NUM_CLASSES))
    out[:, :NEGATIVE] = probs[:, :NEGATIVE]
    if rule == "one_minus_max":
        out[:, NEGATIVE] = 1.0 - probs[:, :NEGATIVE].max(axis=1) if probs.shape[0] else 0.0
    elif rule == "learned":
        if probs.shape[1] != NUM_CLASSES:
            raise ValueError(f"the 'learned' Negative rule needs 19 outputs, got {probs.shape[1]}")
        out[:, NEGATIVE] = probs[:, NEGATIVE]
    elif rule != "none":
        raise ValueError(f"rule must be 'one_minus_max', 'learned' or 'none', got {rule!r}")
    return out


def cell_values(table: pd.DataFrame, recipe: InferenceRecipe | str | None = None) -> np.ndarray:
    """The cell value ``v`` of each cell of ONE image: border cleaner x outlier cleaner of ``recipe``.

    ``table`` is the image's cells table (:data:`hpa_kernel.cells.heuristics.TABLE_COLUMNS`).
    The team's outlier cleaner looks at the values left by the border cleaner, so the two run in
    that order. Returns float64 (N,) in (0, 1].
    """
    from hpa_kernel.cells import heuristics as h

    recipe = get_recipe(recipe)
    n = len(table)
    if recipe.border_cleaner == "milimed":
        v = h.milimed_border_values(table, recipe.no_nucleus_factor)
    elif recipe.border_cleaner == "ellipse":
        v = h.ellipse_border_values(table["nucleus_cut"].to_numpy(dtype=np.float64), recipe.ellipse_cut_slope, recipe.ellipse_min)
    else:
        v = np.ones(n)
    if recipe.outlier_cleaner == "milimed":
        v = h.milimed_outlier_values(
            table, v, recipe.outlier_candidate_min, recipe.outlier_red_ratio, recipe.outlier_by_ratio, recipe.outlier_factor
        )
    elif recipe.outlier_cleaner == "robust_z":
        v = np.where(table["outlier"].to_numpy(dtype=bool), v * recipe.robust_z_factor, v)
    return np.asarray(v, dtype=np.float64)


def clean_cell_blend(penalised: np.ndarray, values: np.ndarray, cell_weight: float, image_weight: float, skip=()) -> np.ndarray:
    """The team's blend of one image: ``cell_weight * pen + image_weight * mean(pen over cells with v == 1)``.

    The mean includes the cell itself when its ``v`` is 1; columns in ``skip`` are left as they
    are, and so is every column when no cell has ``v == 1``.

    >>> pen = np.array([[0.2], [0.4], [0.45]])  # the third cell: p = 0.9, v = 0.5
    >>> [round(float(x), 4) for x in clean_cell_blend(pen, np.array([1.0, 1.0, 0.5]), 0.7, 0.3).ravel()]
    [0.23, 0.37, 0.405]
    """
    out = np.array(penalised, dtype=np.float64)
    clean = np.asarray(values) == 1.0
    if not clean.any():
        return out
    cols = [c for c in range(out.shape[1]) if c not in set(skip)]
    context = out[clean][:, cols].mean(axis=0)
    out[:, cols] = cell_weight * out[:, cols] + image_weight * context[None, :]
    return out


def recipe_confidence(probs: np.ndarray, table: pd.DataFrame, recipe: InferenceRecipe | str | None = None) -> np.ndarray:
    """The 19 final confidences of ONE image's cells under ``recipe`` (see the module doc).

    Parameters
    ----------
    probs : ndarray, shape (N, recipe.num_outputs)
        Ensemble probabilities in [0, 1], rows in table order.
    table : pandas.DataFrame
        The image's cells table; the cleaners' columns and, for the kit blend, ``valid``.
    recipe : InferenceRecipe or str, optional
        Default :data:`hpa_kernel.recipe.DEFAULT_RECIPE`.

    Returns
    -------
    ndarray, shape (N, 19), float32 in [0, 1]
    """
    recipe = get_recipe(recipe)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != recipe.num_outputs:
        raise ValueError(f"probs must have shape (N, {recipe.num_outputs}) for recipe {recipe.name}, got {probs.shape}")
    if len(table) != probs.shape[0]:
        raise ValueError(f"table has {len(table)} rows but probs has {probs.shape[0]}")
    probs, _, _ = _validate(probs, None, None)
    if probs.shape[0] == 0:
        return np.zeros((0, NUM_CLASSES), dtype=np.float32)
    q = with_negative(probs, recipe.negative)
    v = cell_values(table, recipe)
    skip = recipe.blend_skip_classes
    if recipe.blend and recipe.blend_context == "clean_cells":
        out = clean_cell_blend(q * v[:, None], v, recipe.blend_cell, recipe.blend_image, skip)
    elif recipe.blend:
        valid = table["valid"].to_numpy(dtype=bool)
        out = _other_cells_blend(q, valid, recipe.blend_cell, recipe.blend_image, skip) * v[:, None]
    else:
        out = q * v[:, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)

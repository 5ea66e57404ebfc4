"""Final per-cell confidences: a cell's own prediction blended with its image's, then penalised.

For cell ``i`` of an image and class ``c``::

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

import numpy as np

__all__ = ["CELL_WEIGHT", "IMAGE_WEIGHT", "image_context", "final_confidence"]

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
    out = (cell_weight * p + image_weight * _image_context(p, valid)) * penalty
    return np.clip(out, 0.0, 1.0).astype(np.float32)

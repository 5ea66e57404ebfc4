"""Cell-level validation mAP for training (crops only, no masks).

The competition metric (:mod:`hpa_kernel.metric`) needs masks and a submission; during training we
only have crops, so validation uses the average precision of each class over the validation cells,
with the (image-level or soft) targets binarised at ``threshold``, averaged over the classes that
have at least one positive. It is a proxy: image-level labels are weak for single cells.
"""

from __future__ import annotations

import numpy as np

__all__ = ["classification_average_precision", "mean_average_precision"]


def classification_average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class: the mean of the precision at the rank of each positive.

    Ties are broken by the original order (stable sort). NaN when there is no positive.

    >>> classification_average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.1]))
    0.8333333333333333
    """
    truth = np.asarray(truth).astype(bool)
    scores = np.asarray(scores, dtype=float)
    if truth.shape != scores.shape or truth.ndim != 1:
        raise ValueError(f"truth and scores must be 1-D of the same length, got {truth.shape} and {scores.shape}")
    n_pos = int(truth.sum())
    if n_pos == 0:
        return float("nan")
    hits = truth[np.argsort(-scores, kind="stable")]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / n_pos)


def mean_average_precision(targets: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> tuple[float, np.ndarray]:
    """Mean over classes with a positive of :func:`classification_average_precision`; also the per-class values (NaN if absent).

    >>> t = np.array([[1, 0], [0, 1], [0, 0]], float)
    >>> s = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.5]])
    >>> m, per_class = mean_average_precision(t, s)
    >>> m, per_class.tolist()
    (0.75, [1.0, 0.5])
    """
    targets = np.asarray(targets)
    scores = np.asarray(scores)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(f"targets and scores must both be (N, C), got {targets.shape} and {scores.shape}")
    per_class = np.array([classification_average_precision(targets[:, c] >= threshold, scores[:, c]) for c in range(targets.shape[1])])
    valid = ~np.isnan(per_class)
    return (float(per_class[valid].mean()) if valid.any() else float("nan")), per_class

"""Cell matching: a predicted label image against a truth label image, one-to-one by IoU.

Pure numpy plus scipy's Hungarian assignment, like StarDist's ``matching.py``. It scores segmenters
on synthetic fields (:mod:`hpa_kernel.synthetic`), where each cell's truth mask is known; the
competition metric itself is :mod:`hpa_kernel.metric.score`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CellMatch", "match_cells"]


@dataclass(frozen=True)
class CellMatch:
    """One-to-one matching of predicted to truth cells.

    Attributes
    ----------
    n_truth, n_pred : int
        Number of truth and predicted cells.
    mean_iou : float
        Mean over truth cells of the IoU with their matched prediction (0 when unmatched).
    mean_matched_iou : float
        Mean IoU over matched pairs with IoU >= ``iou_threshold``.
    recall, precision : float
        Fraction of truth (predicted) cells matched with IoU >= ``iou_threshold``.
    iou_threshold : float
    """

    n_truth: int
    n_pred: int
    mean_iou: float
    mean_matched_iou: float
    recall: float
    precision: float
    iou_threshold: float


def match_cells(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.6) -> CellMatch:
    """Match predicted cells to truth cells one-to-one by IoU (Hungarian assignment).

    Parameters
    ----------
    pred, truth : (H, W) integer ndarray
        Label images, 0 = background.
    iou_threshold : float
        A pair counts as found when its IoU is at least this.

    Returns
    -------
    CellMatch

    Examples
    --------
    >>> truth = np.zeros((4, 6), int); truth[:, :3] = 1; truth[:, 3:] = 2
    >>> pred = np.zeros((4, 6), int); pred[:, :2] = 5
    >>> m = match_cells(pred, truth)
    >>> m.n_truth, m.n_pred, round(m.mean_iou, 3), m.recall
    (2, 1, 0.333, 0.5)
    """
    from scipy.optimize import linear_sum_assignment

    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"pred and truth: expected two 2-D label images of one shape, got {pred.shape} and {truth.shape}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    truth_ids, truth_index = np.unique(truth, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    n_t, n_p = truth_ids.size, pred_ids.size
    joint = np.bincount(truth_index.ravel() * n_p + pred_index.ravel(), minlength=n_t * n_p).reshape(n_t, n_p)
    # drop the background row/column
    t_keep, p_keep = truth_ids != 0, pred_ids != 0
    inter = joint[np.ix_(t_keep, p_keep)].astype(np.float64)
    t_area, p_area = joint.sum(axis=1)[t_keep], joint.sum(axis=0)[p_keep]
    n_truth, n_pred = int(t_keep.sum()), int(p_keep.sum())
    if n_truth == 0 or n_pred == 0:
        return CellMatch(n_truth, n_pred, 0.0, 0.0, 0.0 if n_truth else 1.0, 0.0 if n_pred else 1.0, iou_threshold)
    iou = inter / (t_area[:, None] + p_area[None, :] - inter)
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    good = matched >= iou_threshold
    return CellMatch(
        n_truth=n_truth,
        n_pred=n_pred,
        mean_iou=float(matched.sum() / n_truth),
        mean_matched_iou=float(matched[good].mean()) if good.any() else 0.0,
        recall=float(good.sum() / n_truth),
        precision=float(good.sum() / n_pred),
        iou_threshold=float(iou_threshold),
    )

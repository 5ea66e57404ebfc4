"""The metric stage: the competition's mAP@0.6 and one-to-one cell matching.

* :mod:`hpa_kernel.metric.score`: the competition metric (:func:`score_submission`), mean average
  precision at IoU 0.6 over the 19 classes, in the organisers' box-IoU mode and a mask-IoU mode.
* :mod:`hpa_kernel.metric.matching`: :func:`match_cells`, a predicted label image against a truth
  label image (Hungarian matching by IoU), used to check segmenters on synthetic fields.

Import from here: ``from hpa_kernel.metric import score_submission, match_cells``.
"""

from __future__ import annotations

from hpa_kernel.metric.matching import CellMatch, match_cells
from hpa_kernel.metric.score import (
    IOU_MODES,
    IOU_THRESHOLD,
    MetricResult,
    TruthImage,
    detection_average_precision,
    load_truth,
    load_truth_annotations,
    parse_prediction_string,
    score_submission,
)

__all__ = [
    "IOU_MODES",
    "IOU_THRESHOLD",
    "MetricResult",
    "TruthImage",
    "detection_average_precision",
    "score_submission",
    "load_truth",
    "load_truth_annotations",
    "parse_prediction_string",
    "CellMatch",
    "match_cells",
]

"""The metric stage: the competition's mAP@0.6 and one-to-one cell matching.

* :mod:`hpa_kernel.metric.score`: the competition metric (:func:`score_submission`), mean average
  precision at IoU 0.6 over the 19 classes, in the organisers' box-IoU mode and a mask-IoU mode.
* :mod:`hpa_kernel.metric.matching`: :func:`match_cells`, a predicted label image against a truth
  label image (Hungarian matching by IoU), used to check segmenters on synthetic fields.

Import from here: ``from hpa_kernel.metric import score_submission, match_cells``.
"""

from __future__ import annotations

from hpa_kernel.metric import matching, score
from hpa_kernel.metric.matching import *  # noqa: F403 - the package re-exports each module's public names
from hpa_kernel.metric.score import *  # noqa: F403

__all__ = [*score.__all__, *matching.__all__]

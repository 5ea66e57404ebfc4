"""Submission: the EncodedMask codec, the writer and validator, the budget planner and the driver.

The stages of ``test images → submission.csv``, one module each:

- :mod:`~hpa_kernel.submission.rle`: the competition's EncodedMask codec;
- :mod:`~hpa_kernel.submission.writer`: reading the sample, writing ``submission.csv``, checking it;
- :mod:`~hpa_kernel.submission.budget`: plans, their measured costs, and the budget planner (pure);
- :mod:`~hpa_kernel.submission.weights`: the run's weights, resolved and verified once;
- :mod:`~hpa_kernel.submission.driver`: :func:`run_submission`, which puts them together on time.

The per-cell confidence (:mod:`hpa_kernel.confidence`) is a stage of its own between the classifier
and the writer, and the metric (:mod:`hpa_kernel.metric`) scores what the writer wrote.
"""

from hpa_kernel.submission.budget import FALLBACK_PLAN, BudgetPlanner, CostEstimates, CostTracker, Plan, plan_ladder
from hpa_kernel.submission.driver import (
    HOUR,
    ImageOutcome,
    SubmitConfig,
    SubmitReport,
    predict_image,
    process_start_monotonic,
    run_submission,
    runtime_report,
)
from hpa_kernel.submission.rle import decode_mask, encode_label_image, encode_mask
from hpa_kernel.submission.weights import ResolvedWeights, resolve_weights
from hpa_kernel.submission.writer import (
    FALLBACK_PREDICTION,
    SUBMISSION_HEADER,
    Problem,
    ValidationReport,
    check_submission,
    format_prediction_string,
    prediction_string_for_cells,
    read_sample,
    validate_submission,
    write_submission,
)

__all__ = [
    "FALLBACK_PLAN",
    "FALLBACK_PREDICTION",
    "HOUR",
    "SUBMISSION_HEADER",
    "BudgetPlanner",
    "CostEstimates",
    "CostTracker",
    "ImageOutcome",
    "Plan",
    "Problem",
    "ResolvedWeights",
    "SubmitConfig",
    "SubmitReport",
    "ValidationReport",
    "check_submission",
    "decode_mask",
    "encode_label_image",
    "encode_mask",
    "format_prediction_string",
    "plan_ladder",
    "predict_image",
    "prediction_string_for_cells",
    "process_start_monotonic",
    "read_sample",
    "resolve_weights",
    "run_submission",
    "runtime_report",
    "validate_submission",
    "write_submission",
]

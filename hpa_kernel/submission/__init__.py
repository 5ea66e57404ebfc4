"""Submission: the EncodedMask codec, the writer and validator, the budget planner and the driver.

The stages of ``test images → submission.csv``, one module each:

- :mod:`~hpa_kernel.submission.rle`: the competition's EncodedMask codec;
- :mod:`~hpa_kernel.submission.writer`: reading the sample, writing ``submission.csv``, checking it;
- :mod:`~hpa_kernel.submission.budget`: plans, their measured costs, and the budget planner (pure);
- :mod:`~hpa_kernel.submission.weights`: the run's weights, resolved and verified once;
- :mod:`~hpa_kernel.submission.driver`: :func:`run_submission`, which puts them together on time.

The public names of ``budget``, ``weights``, ``writer`` and ``driver`` are importable from the
package itself (``from hpa_kernel.submission import run_submission, check_submission``); the codec
is used as :mod:`hpa_kernel.submission.rle`.

The per-cell confidence (:mod:`hpa_kernel.confidence`) is a stage of its own between the classifier
and the writer, and the metric (:mod:`hpa_kernel.metric`) scores what the writer wrote.
"""

# The public names of each stage (their ``__all__``), so that a name added to a stage is exported here too.
from hpa_kernel.submission import budget, driver, weights, writer
from hpa_kernel.submission.budget import *  # noqa: F403
from hpa_kernel.submission.driver import *  # noqa: F403
from hpa_kernel.submission.weights import *  # noqa: F403
from hpa_kernel.submission.writer import *  # noqa: F403

__all__ = [*budget.__all__, *weights.__all__, *writer.__all__, *driver.__all__]

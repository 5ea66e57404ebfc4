"""Manual relabelling of rare classes, one cell at a time, in a local web page.

The labeller takes one image-level class (say Mitotic spindle) and, for every cell crop of the
images that carry it, answers 1 to 5 for how sure they are that the cell shows it. The answers go
to SQLite at once (:mod:`~hpa_kernel.labelling.store`) and are exported as soft labels for
training and as a validation set (:mod:`~hpa_kernel.labelling.export`).

* :class:`CellTable` reads ``cells.csv`` (``hpa-kernel cells``) and guards the crops folder.
* :class:`LabelStore` is the score database, an append-only event log.
* :class:`LabelApp` and :func:`serve` are the web page and its server (``hpa-kernel label``).
* :func:`write_soft_labels`, :func:`read_soft_labels` and :func:`write_validation` are the exports
  (``hpa-kernel label export``).
"""

from hpa_kernel.labelling.crops import CellTable, LabelCell, read_crop, render_crop
from hpa_kernel.labelling.descriptions import CLASS_DESCRIPTIONS, describe
from hpa_kernel.labelling.export import (
    DEFAULT_MAPPING,
    load_mappings,
    parse_mapping,
    read_soft_labels,
    write_soft_labels,
    write_validation,
)
from hpa_kernel.labelling.server import LabelApp, make_server, serve
from hpa_kernel.labelling.store import LabelStore, ScoreEvent

__all__ = [
    "CellTable",
    "LabelCell",
    "read_crop",
    "render_crop",
    "CLASS_DESCRIPTIONS",
    "describe",
    "DEFAULT_MAPPING",
    "load_mappings",
    "parse_mapping",
    "read_soft_labels",
    "write_soft_labels",
    "write_validation",
    "LabelApp",
    "make_server",
    "serve",
    "LabelStore",
    "ScoreEvent",
]

"""Cells: from segmented images to per-cell tables, 512 x 512 crops and a training set.

* :mod:`~hpa_kernel.cells.config`: :class:`CellConfig`, the crop geometry and heuristic settings.
* :mod:`~hpa_kernel.cells.crops`: square, zero-padded, resized 4-channel crops of single cells.
* :mod:`~hpa_kernel.cells.heuristics`: nucleus cut by the border, outlier segments, flags, penalty.
* :mod:`~hpa_kernel.cells.cache`: the resumable, atomic per-image cache.
* :mod:`~hpa_kernel.cells.pipeline`: :class:`CellPipeline`, segmentation in the main process and
  the CPU work in a pool of worker processes, results in input order.
* :mod:`~hpa_kernel.cells.builder`: the training set on disk (``cells.csv`` + crop PNGs), shards.
"""

from __future__ import annotations

from hpa_kernel.cells.builder import BuildOptions, build_training_set, merge_shards, read_crop, write_crop
from hpa_kernel.cells.config import CellConfig
from hpa_kernel.cells.crops import crop_cells
from hpa_kernel.cells.heuristics import OutlierReference, nucleus_cut_fraction, score_cells
from hpa_kernel.cells.pipeline import CellPipeline, ImageCells, ImageFailure, PipelineOptions, default_workers, process_image

__all__ = [
    "BuildOptions",
    "CellConfig",
    "CellPipeline",
    "ImageCells",
    "ImageFailure",
    "OutlierReference",
    "PipelineOptions",
    "build_training_set",
    "crop_cells",
    "default_workers",
    "merge_shards",
    "nucleus_cut_fraction",
    "process_image",
    "read_crop",
    "score_cells",
    "write_crop",
]

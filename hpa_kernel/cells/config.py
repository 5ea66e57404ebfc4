"""Settings of the cells stage: crop geometry and the border/outlier heuristics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["CellConfig", "OUTLIER_FEATURES"]

#: Per-cell statistics that the outlier heuristic may compare (columns of the cell table).
OUTLIER_FEATURES: tuple[str, ...] = (
    "red_mean",
    "green_mean",
    "blue_mean",
    "yellow_mean",
    "by_mean",
    "area",
)


@dataclass(frozen=True)
class CellConfig:
    """How cells are cropped and scored. Validated on creation; override with ``dataclasses.replace``.

    Parameters
    ----------
    crop_size : int
        Side S of the square (S, S, 4) crops.
    margin : int
        Pixels added around the cell's bounding box before squaring (pixels outside the cell are
        zeroed anyway, so the margin only adds empty context around the cell).
    crop : {"kit2025", "milimed2021"}
        The crop mode (:data:`hpa_kernel.cells.crops.CROP_MODES`): the kit's uint8 crop (default;
        the training set's PNGs are 8-bit) or the team's uint16 test crop. Inference sets the
        recipe's (:attr:`hpa_kernel.recipe.InferenceRecipe.crop`).
    max_train_cut : float
        A cell whose estimated nucleus fraction outside the image (``nucleus_cut``) exceeds this is
        flagged ``border`` and dropped from training (``valid=False``).
    cut_penalty : float
        Slope of the border penalty: ``penalty = 1 - cut_penalty * nucleus_cut`` (clipped). The
        table's ``penalty`` column; at inference the recipe (:mod:`hpa_kernel.recipe`) computes
        the cell value from the table's columns with its own constants (kit2025's equal these
        defaults).
    min_penalty : float
        Lower bound of the penalty multiplier, in (0, 1].
    outlier_features : tuple of str
        Table columns compared between cells; intensities and area are compared on a log scale.
        Default: mean red, mean blue x yellow, mean yellow and area.
    outlier_votes : int
        The outlier score is the ``outlier_votes``-th largest robust |z| over the features, so a
        cell must be odd in that many features at once. A single feature (e.g. the bright red of a
        rounded mitotic cell) flagged a tenth of the real cells; debris is odd in several.
    outlier_threshold : float
        A cell whose outlier score exceeds this is an outlier. The defaults (4 features, 2 votes,
        threshold 6) were chosen on synthetic images with planted debris (seeds 10000-10029,
        512 x 512); benchmarks/RESULTS.md reports precision and recall on other seeds.
    outlier_penalty : float
        Confidence multiplier of an outlier cell, in (0, 1].
    outlier_min_cells : int
        The image-level comparison needs at least this many other cells; below it the image-level
        score is 0 (a dataset reference, if given, still applies).
    mad_floor : float
        Lower bound of the scaled MAD (log units) so that images of near-identical cells do not
        turn small differences into huge z-scores.
    """

    crop_size: int = 512
    margin: int = 0
    crop: str = "kit2025"
    max_train_cut: float = 0.1
    cut_penalty: float = 1.0
    min_penalty: float = 0.05
    outlier_features: tuple[str, ...] = ("red_mean", "by_mean", "yellow_mean", "area")
    outlier_votes: int = 2
    outlier_threshold: float = 6.0
    outlier_penalty: float = 0.2
    outlier_min_cells: int = 5
    mad_floor: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.crop_size, int) or self.crop_size < 8:
            raise ValueError(f"crop_size must be an int >= 8, got {self.crop_size!r}")
        if not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"margin must be an int >= 0, got {self.margin!r}")
        from hpa_kernel.cells.crops import CROP_MODES

        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        for name in ("max_train_cut",):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name in ("min_penalty", "outlier_penalty"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if self.cut_penalty < 0 or not math.isfinite(self.cut_penalty):
            raise ValueError(f"cut_penalty must be a finite number >= 0, got {self.cut_penalty!r}")
        if not self.outlier_threshold > 0:
            raise ValueError(f"outlier_threshold must be > 0, got {self.outlier_threshold!r}")
        if not isinstance(self.outlier_min_cells, int) or self.outlier_min_cells < 2:
            raise ValueError(f"outlier_min_cells must be an int >= 2, got {self.outlier_min_cells!r}")
        if not self.mad_floor > 0:
            raise ValueError(f"mad_floor must be > 0, got {self.mad_floor!r}")
        features = tuple(self.outlier_features)
        unknown = [f for f in features if f not in OUTLIER_FEATURES]
        if not features or unknown:
            raise ValueError(
                f"outlier_features must be a non-empty subset of {', '.join(OUTLIER_FEATURES)}, got {features!r}"
            )
        if len(set(features)) != len(features):
            raise ValueError(f"outlier_features has duplicates: {features!r}")
        object.__setattr__(self, "outlier_features", features)
        if not isinstance(self.outlier_votes, int) or not 1 <= self.outlier_votes <= len(features):
            raise ValueError(
                f"outlier_votes must be an int in [1, {len(features)}] (the number of outlier_features), "
                f"got {self.outlier_votes!r}"
            )

    def table_settings(self) -> dict:
        """The settings that change the per-cell table (part of the cache key); crop geometry is not."""
        settings = asdict(self)
        settings.pop("crop_size")
        settings.pop("margin")
        settings.pop("crop")
        settings["outlier_features"] = list(self.outlier_features)
        return settings

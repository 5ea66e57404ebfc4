"""The training set on disk: a folder of cell crops and ``cells.csv``, built in shards if wanted.

Layout of ``out``::

    cells.csv                     image_id, cell_id, crop, y0, x0, y1, x1, area, nucleus_cut,
                                  outlier_score, valid, labels, then the extra heuristic columns
    crops/{image_id}_{cell_id}.png        the kit's crops (valid cells)
    train_crops/{image_id}_{cell_id}.png  the team's training crops (see below)
    failures.csv                  image_id, reason (images that could not be processed)
    cache/                        the resumable cache (default; see hpa_kernel.cells.cache)

Crops are 4-channel PNGs written by ``cv2.imwrite`` from the (S, S, 4) uint8 (or, for
``train_crops/``, uint16) R, G, B, Y array as is; :func:`read_crop` (``cv2.imread`` unchanged) returns exactly that array. Other viewers show
the planes as B, G, R, alpha. ``crop`` is the path relative to ``cells.csv``.

Which cells get a crop: every cell is listed. A cell flagged at the image level (nucleus cut by
the border beyond ``max_train_cut``, or an outlier among its image's cells) has ``valid=False``
and no crop file (``crop`` empty). Those ``crop`` files are the kit's crops (the ``kit2025``
training crop).

The team's training cleaner and crops (``milimed2021``): ``train_value`` is the team's training
cleaner value (:func:`~hpa_kernel.cells.heuristics.milimed_train_values`), and ``train_crop`` the
path of the team's training crop (:func:`~hpa_kernel.cells.crops.milimed_train_crop`, a 16-bit
4-plane PNG under ``train_crops/``), written for every cell that the team's train filter can keep:
``train_value == 1`` or an image labelled 11 (mitotic spindle); empty otherwise, and for every cell
when ``BuildOptions.train_crops`` is off. When the shards are merged, the outlier score is recomputed
against the whole dataset's medians/MADs (:class:`~hpa_kernel.cells.heuristics.OutlierReference`);
a cell that only then becomes an outlier gets ``valid=False`` but keeps its crop file. Training
reads the rows with ``valid=True``.

Sharding: shard ``i`` of ``n`` takes ``sorted(ids)[i::n]`` and writes ``cells.shard-i-of-n.csv``;
:func:`merge_shards` joins them into ``cells.csv``. With ``n = 1`` the merge happens at once.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_kernel.cells.config import CellConfig
from hpa_kernel.cells.table import CSV_COLUMNS, parse_flag  # the schema lives with the reader; re-exported
from hpa_kernel.io import atomic_write

__all__ = [
    "BuildOptions",
    "CSV_COLUMNS",
    "EXTRA_COLUMNS",
    "build_training_set",
    "merge_shards",
    "apply_dataset_reference",
    "read_crop",
    "write_crop",
    "parse_flag",
    "parse_shard",
    "shard_ids",
]

logger = logging.getLogger(__name__)

#: Heuristic columns written after :data:`CSV_COLUMNS`.
EXTRA_COLUMNS: tuple[str, ...] = (
    "nucleus_area", "touches_border", "red_mean", "green_mean", "blue_mean", "yellow_mean", "by_mean",
    "image_outlier_score", "border", "outlier", "penalty",
    "nucleus_blue_sum", "nucleus_rows", "nucleus_cols", "nucleus_top", "nucleus_bottom", "nucleus_left", "nucleus_right",
    "red_sum", "blue_sum", "yellow_sum", "train_value", "train_crop",
)

_SHARD_RE = re.compile(r"^cells\.shard-(\d+)-of-(\d+)\.csv$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``.

    >>> parse_shard("1/4")
    (1, 4)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}")
    i, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: expected 0 <= i < n and n >= 1")
    return i, n


def shard_ids(ids, index: int, count: int) -> list[str]:
    """The ids of shard ``index`` of ``count``: ``sorted(ids)[index::count]``.

    >>> shard_ids(["c", "a", "b", "d"], 1, 2)
    ['b', 'd']
    """
    return sorted(str(i) for i in ids)[index::count]


def write_crop(path: str | Path, crop: np.ndarray) -> None:
    """Write an (S, S, 4) uint8 or uint16 crop as a 4-plane PNG (8 or 16 bits), atomically (tmp file + ``os.replace``)."""
    from hpa_kernel._cv2 import cv2

    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 4 or crop.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"crop must be an (S, S, 4) uint8 or uint16 array, got {crop.shape} {crop.dtype}")
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(crop))
    if not ok:
        raise ValueError(f"cannot encode the crop for {path}")
    # a Python write: a full disk raises OSError(ENOSPC), where numpy's tofile gives only "n requested and m written"
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.tobytes()), needed_bytes=buf.nbytes)


def read_crop(path: str | Path) -> np.ndarray:
    """Read a crop written by :func:`write_crop`: the (S, S, 4) uint8 or uint16 R, G, B, Y array.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not a 4-plane 8- or 16-bit image.
    """
    from hpa_kernel._cv2 import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"crop file {path} does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    crop = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if crop is None or crop.ndim != 3 or crop.shape[2] != 4 or crop.dtype not in (np.uint8, np.uint16):
        found = "undecodable" if crop is None else f"{crop.shape} {crop.dtype}"
        raise ValueError(f"crop file {path}: expected a 4-plane 8- or 16-bit PNG, got {found}")
    return crop


def _plain_ids(ids: list[str]) -> tuple[list[str], list[dict]]:
    """Split ``ids`` into plain names and failure rows for the others (an ID becomes a crop file name)."""
    from hpa_kernel.io import check_image_id

    good, failures = [], []
    for image_id in ids:
        try:
            good.append(check_image_id(image_id))
        except ValueError as exc:
            logger.error("cells: image %r refused: %s", image_id, exc)
            failures.append({"image_id": image_id, "reason": f"refused: {exc}"})
    return good, failures


def _write_csv(df, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


@dataclass(frozen=True)
class BuildOptions:
    """How :func:`build_training_set` reads and runs, apart from the cell geometry.

    Attributes
    ----------
    split : str
        Sub-folder of the competition folder to read.
    shard : (int, int)
        ``(i, n)``: process ``sorted(ids)[i::n]``.
    workers : int, optional
        Worker processes of the :class:`~hpa_kernel.cells.pipeline.CellPipeline`.
    cache_dir : path, optional
        Default ``out/cache``.
    batch_size : int
        Images per ``segmenter.predict`` call.
    image_ids : iterable of str, optional
        Default: the ids of ``train.csv`` for the train split, else every image in the folder.
    progress : bool
        Show a progress bar.
    train_crops : bool
        Also write the team's training crops (``train_crops/``, column ``train_crop``) of the cells
        that the team's train filter can keep.
    """

    split: str = "train"
    shard: tuple[int, int] = (0, 1)
    workers: int | None = None
    cache_dir: str | os.PathLike | None = None
    batch_size: int = 1
    image_ids: object = None
    progress: bool = True
    train_crops: bool = True


def _image_labels(data: Path) -> dict[str, str]:
    """``{image id: label string}`` of ``data/train.csv``; empty when there is none."""
    from hpa_kernel.io import Competition

    competition = Competition(data)
    if not competition.train_csv.is_file():
        return {}
    train = competition.read_train()
    return dict(zip(train["ID"], train["Label"]))


def _train_crops(out: Path, result, image, keep: np.ndarray, size: int) -> list[str]:
    """Write the team's training crops of the cells ``keep`` of one image; their paths (others empty)."""
    from hpa_kernel.cells.crops import milimed_train_crop

    names = []
    for (cell_id, y0, x0, y1, x1), wanted in zip(result.table[["cell_id", "y0", "x0", "y1", "x1"]].to_numpy(), keep):
        name = ""
        if wanted:
            name = f"train_crops/{result.image_id}_{int(cell_id)}.png"
            crop = milimed_train_crop(image, result.cell_label, int(cell_id), (int(y0), int(x0), int(y1), int(x1)), size)
            write_crop(out / name, crop)
        names.append(name)
    return names


def _image_table(out: Path, result, labels: dict[str, str], train_crops=None):
    """The ``cells.csv`` rows of one processed image; writes its crops under ``out/crops`` (valid cells).

    ``train_crops``: None, or ``(image, crop size)`` to write the team's training crops under
    ``out/train_crops`` (cells with ``train_value == 1`` or of an image labelled 11).
    """
    from hpa_kernel.cells.heuristics import milimed_train_values
    from hpa_kernel.classes import MITOTIC_SPINDLE, parse_labels

    table = result.table.copy()
    names = []
    for k, (cell_id, valid) in enumerate(zip(table["cell_id"], table["valid"])):
        if valid:
            name = f"crops/{result.image_id}_{int(cell_id)}.png"
            write_crop(out / name, result.crops[k])
        else:
            name = ""
        names.append(name)
    table.insert(0, "image_id", result.image_id)
    table["crop"] = names
    table["labels"] = labels.get(result.image_id, "")
    table["train_value"] = milimed_train_values(table)
    table["train_crop"] = ""
    if train_crops is not None:
        exempt = MITOTIC_SPINDLE in parse_labels(labels.get(result.image_id, ""))
        keep = exempt | (table["train_value"].to_numpy() >= 1.0)
        table["train_crop"] = _train_crops(out, result, train_crops[0], keep, train_crops[1])
    return table[list(CSV_COLUMNS) + list(EXTRA_COLUMNS)]


def _segment_and_crop(pipeline, folder: Path, ids: list[str], out: Path, labels: dict[str, str], options: BuildOptions,
                      crop_size: int):
    """(the cells table, the failure rows) of the images ``ids``: runs the pipeline and writes the crops."""
    import pandas as pd

    from hpa_kernel.io import read_image

    frames, failures = [], []
    for result in pipeline.run(folder, ids, progress=options.progress):
        if result.ok:
            train_crops = (read_image(folder, result.image_id), crop_size) if options.train_crops else None
            frames.append(_image_table(out, result, labels, train_crops))
        else:
            failures.append({"image_id": result.image_id, "reason": result.reason})
    columns = list(CSV_COLUMNS) + list(EXTRA_COLUMNS)
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return cells, failures


def build_training_set(
    data: str | os.PathLike,
    out: str | os.PathLike,
    segmenter,
    config: CellConfig | None = None,
    options: BuildOptions = BuildOptions(),
) -> Path:
    """Segment and crop a split of a competition folder into ``out`` (see the module docstring).

    Parameters
    ----------
    data : path
        Competition folder: ``{split}/`` with the channel files and, for labels, ``train.csv``.
    out : path
        Output folder (created).
    segmenter : BaseSegmenter
    config : CellConfig, optional
    options : BuildOptions
        Split, shard, workers, cache folder, segmentation batch size, image ids, progress bar,
        whether to write the team's training crops.

    Returns
    -------
    Path
        ``cells.csv`` when ``n == 1``, else this shard's ``cells.shard-i-of-n.csv``.
    """
    import pandas as pd

    from hpa_kernel.cells.pipeline import CellPipeline, PipelineOptions
    from hpa_kernel.io import list_image_ids

    config = CellConfig() if config is None else config
    data, out = Path(data), Path(out)
    folder = data / options.split
    if not folder.is_dir():
        raise FileNotFoundError(f"data: the folder {folder} does not exist (expected {data}/{options.split}/ with the images)")
    index, count = options.shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {options.shard!r}")
    labels = _image_labels(data)
    image_ids = options.image_ids
    if image_ids is None:
        image_ids = list(labels) if options.split == "train" and labels else list_image_ids(folder)
    ids, refused = _plain_ids(shard_ids(image_ids, index, count))
    (out / "crops").mkdir(parents=True, exist_ok=True)
    if options.train_crops:
        (out / "train_crops").mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache" if options.cache_dir is None else options.cache_dir
    pipeline = CellPipeline(
        segmenter, config, workers=options.workers, cache_dir=cache_dir,
        options=PipelineOptions(batch_size=options.batch_size, encode_masks=False, keep_labels=options.train_crops),
    )
    logger.info("cells: shard %d/%d, %d images from %s, %s workers", index, count, len(ids), folder, pipeline.workers)
    cells, failed = _segment_and_crop(pipeline, folder, ids, out, labels, options, config.crop_size)
    failures = refused + failed
    path = out / f"cells.shard-{index}-of-{count}.csv"
    _write_csv(cells, path)
    _write_csv(pd.DataFrame(failures, columns=["image_id", "reason"]), out / f"failures.shard-{index}-of-{count}.csv")
    logger.info("cells: %d cells from %d images, %d failed -> %s", len(cells), len(ids) + len(refused) - len(failures),
                len(failures), path)
    if count == 1:
        return merge_shards(out, config)
    return path


def apply_dataset_reference(cells, config: CellConfig | None = None):
    """Re-score outliers against the whole table's medians/MADs and update the flags, in place.

    Each image's cells are scored again with :func:`~hpa_kernel.cells.heuristics.outlier_scores`
    and the dataset reference; ``outlier``, ``valid`` and ``penalty`` follow. Returns the
    reference used (None for an empty table).
    """
    from hpa_kernel.cells.heuristics import OutlierReference, apply_flags, outlier_scores

    config = CellConfig() if config is None else config
    if len(cells) == 0:
        return None
    reference = OutlierReference.from_table(cells, config.outlier_features)
    score = np.zeros(len(cells))
    for _, rows in cells.groupby("image_id", sort=False).indices.items():
        score[rows] = outlier_scores(cells.iloc[rows], config, reference)[1]
    cells["outlier_score"] = score
    apply_flags(cells, config)
    return reference


def _add_team_columns(cells) -> None:
    """Shards written before ``train_value``/``train_crop`` existed: compute the value, no team crop."""
    from hpa_kernel.cells.heuristics import milimed_train_values

    if "train_value" not in cells.columns:
        values = np.zeros(len(cells))
        for _, rows in cells.groupby("image_id", sort=False).indices.items():
            values[rows] = milimed_train_values(cells.iloc[rows])
        cells["train_value"] = values
        logger.warning("cells: shards without train_value: computed it from the table; no training crops of the team")
    if "train_crop" not in cells.columns:
        cells["train_crop"] = ""


def merge_shards(out: str | os.PathLike, config: CellConfig | None = None) -> Path:
    """Join the ``cells.shard-i-of-n.csv`` of ``out`` into ``cells.csv``, with dataset-level outliers.

    Raises
    ------
    FileNotFoundError
        If there is no shard file, or shards of the set are missing (naming them).
    ValueError
        If shard files of different counts ``n`` are mixed.
    """
    import json

    import pandas as pd

    out = Path(out)
    found = {}
    for p in sorted(out.glob("cells.shard-*-of-*.csv")):
        m = _SHARD_RE.match(p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    if not found:
        raise FileNotFoundError(f"no cells.shard-i-of-n.csv files in {out}")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise ValueError(f"{out} mixes shard sets of different sizes n = {counts}; delete the stale ones")
    n = counts[0]
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise FileNotFoundError(f"{out}: shard(s) {', '.join(f'{i}/{n}' for i in missing)} not built yet")
    from hpa_kernel.cells.table import read_cells_table

    parts = [read_cells_table(found[(i, n)], valid_only=False, allow_empty=True) for i in range(n)]
    parts = [p for p in parts if len(p)]
    columns = list(CSV_COLUMNS) + list(EXTRA_COLUMNS)
    cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    cells = cells.sort_values(["image_id", "cell_id"], kind="stable").reset_index(drop=True)
    _add_team_columns(cells)
    reference = apply_dataset_reference(cells, config)
    path = out / "cells.csv"
    _write_csv(cells[columns], path)
    fails = [pd.read_csv(out / f"failures.shard-{i}-of-{n}.csv", dtype=str, keep_default_na=False)
             for i in range(n) if (out / f"failures.shard-{i}-of-{n}.csv").is_file()]
    if fails:
        _write_csv(pd.concat(fails, ignore_index=True), out / "failures.csv")
    if reference is not None:
        text = json.dumps(reference.to_dict(), indent=1)
        atomic_write(out / "outlier_reference.json", lambda tmp: tmp.write_text(text))
    logger.info("cells: merged %d shard(s), %d cells (%d valid) -> %s", n, len(cells), int(cells["valid"].sum()) if len(cells) else 0, path)
    return path

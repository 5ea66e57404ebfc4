"""The one reader of ``cells.csv`` (and of its shards ``cells.shard-i-of-n.csv``).

``cells.csv`` is written by ``hpa-kernel cells`` (:mod:`hpa_kernel.cells.builder`); training
(:mod:`hpa_kernel.training.dataset`), the labelling tool (:mod:`hpa_kernel.labelling.crops`) and the
shard merge all read it through :func:`read_cells_table`, so they agree on what a well-formed table
is: every column of :data:`~hpa_kernel.cells.builder.CSV_COLUMNS`, integer ``cell_id``, a strict
boolean ``valid`` (:func:`~hpa_kernel.cells.builder.parse_flag`), a crop file for every valid cell,
one row per ``(image_id, cell_id)`` and readable ``labels``. Every error names the file (and the
line, counting the header as line 1).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpa_kernel.cells.builder import CSV_COLUMNS, parse_flag
from hpa_kernel.classes import parse_labels

__all__ = ["read_cells_table"]

logger = logging.getLogger(__name__)


def _line(row: int) -> int:
    """The csv line of DataFrame row ``row`` (the header is line 1)."""
    return int(row) + 2


def _read_frame(path: Path):
    """The raw table, with the columns and file errors checked."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(
            f"cells file {path} not found: expected the cells table written by `hpa-kernel cells`"
        )
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "labels": str, "crop": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; expected a header {', '.join(CSV_COLUMNS)} and one row per cell") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; found {', '.join(map(str, df.columns)) or 'none'}, "
            f"expected {', '.join(CSV_COLUMNS)}"
        )
    return df


def _parse_columns(df, path: Path) -> None:
    """Parse ``cell_id`` (int), ``valid`` (bool) and ``labels`` (``label_ids``) in place."""
    ids = []
    for row, value in enumerate(df["cell_id"]):
        try:
            ids.append(int(str(value).strip()))
        except ValueError:
            raise ValueError(f"{path}: line {_line(row)}: cell_id {value!r} is not an integer") from None
    df["cell_id"] = ids
    df["valid"] = [parse_flag(v, f"{path}: column valid, line {_line(row)}") for row, v in enumerate(df["valid"])]
    labels = []
    for row, value in enumerate(df["labels"]):
        try:
            labels.append(parse_labels(value))
        except ValueError as exc:
            raise ValueError(f"{path}: line {_line(row)}: column labels: {exc}") from None
    df["label_ids"] = labels


def _check_rows(df, path: Path) -> None:
    """One row per ``(image_id, cell_id)``, and a crop file for every valid cell."""
    duplicated = df.duplicated(["image_id", "cell_id"])
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise ValueError(
            f"{path}: line {_line(row)}: duplicate cell {df['image_id'].iat[row]} {df['cell_id'].iat[row]}"
        )
    no_crop = (df["valid"] & (df["crop"].str.strip() == "")).to_numpy()
    if no_crop.any():
        row = int(no_crop.nonzero()[0][0])
        raise ValueError(
            f"{path}: line {_line(row)}: a valid cell has no crop file (column crop is empty; "
            f"{int(no_crop.sum())} such cells, first {df['image_id'].iat[row]}/{df['cell_id'].iat[row]})"
        )


def read_cells_table(path: str | os.PathLike, valid_only: bool = True, *, allow_empty: bool = False):
    """Read ``cells.csv`` into a DataFrame with ``crop_path`` (absolute) and parsed ``label_ids``.

    Parameters
    ----------
    path : path
        The ``cells.csv`` written by ``hpa-kernel cells`` (or one of its shards).
    valid_only : bool
        Keep only the rows whose ``valid`` column is true.
    allow_empty : bool
        Return an empty table instead of raising when no (valid) row is left; the shard merge
        uses it, since a shard may hold no cell.

    Returns
    -------
    pandas.DataFrame
        The columns of the file, ``cell_id`` as int, ``valid`` as bool, plus ``label_ids``
        (tuples of class ids) and ``crop_path`` (the crop file, resolved against the csv's
        folder), in file order with a fresh index.

    Raises
    ------
    FileNotFoundError
        If the csv does not exist.
    ValueError
        Naming the file (and line): if it is empty, a column of ``CSV_COLUMNS`` is missing,
        ``cell_id`` is not an integer, ``valid`` is not a boolean, ``labels`` is not a label
        field, two rows share an ``(image_id, cell_id)``, a valid cell has no crop, or (unless
        ``allow_empty``) no (valid) cell is left.
    """
    path = Path(path)
    df = _read_frame(path)
    _parse_columns(df, path)
    _check_rows(df, path)
    if valid_only:
        df = df[df["valid"]]
    if df.empty and not allow_empty:
        raise ValueError(f"{path}: no {'valid ' if valid_only else ''}cells in the table")
    df = df.reset_index(drop=True)
    df["crop_path"] = [str((path.parent / c).resolve()) for c in df["crop"]]
    return df

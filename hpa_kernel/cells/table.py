"""The one reader of ``cells.csv`` (and of its shards ``cells.shard-i-of-n.csv``).

``cells.csv`` is written by ``hpa-kernel cells`` (:mod:`hpa_kernel.cells.builder`); training
(:mod:`hpa_kernel.training.dataset`), the labelling tool (:mod:`hpa_kernel.labelling.crops`) and the
shard merge all read it through :func:`read_cells_table`, so they agree on what a well-formed table
is: every column of :data:`CSV_COLUMNS`, integer ``cell_id``, numbers in the box and score columns,
a strict boolean ``valid`` (:func:`parse_flag`), a crop file for every valid cell, one row per
``(image_id, cell_id)``, readable ``labels`` and every crop inside the cells folder. Every error
names the file, the line (counting the header as line 1) and the column.

Containment: a crop path is relative to the csv's folder and must resolve, symbolic links followed,
inside that folder (or inside the ``crops_root`` given), so that no command that reads crops
(training, fine-tuning, pseudo-labels, labelling) opens a file elsewhere: ``..``, absolute paths
and links pointing out are refused when the table is read, before any crop is opened.

This module holds the schema of ``cells.csv`` (:data:`CSV_COLUMNS`, :func:`parse_flag`); the
writer (:mod:`hpa_kernel.cells.builder`) builds on it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePath

from hpa_kernel.classes import parse_labels
from hpa_kernel.readers import parse_column, read_csv

__all__ = ["CSV_COLUMNS", "NUMBER_COLUMNS", "parse_flag", "read_cells_table"]

logger = logging.getLogger(__name__)

#: The columns of ``cells.csv`` fixed by docs/DESIGN.md, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "image_id", "cell_id", "crop", "y0", "x0", "y1", "x1", "area", "nucleus_cut", "outlier_score", "valid", "labels",
)
#: The columns of :data:`CSV_COLUMNS` that hold numbers (an empty field reads as NaN).
NUMBER_COLUMNS: tuple[str, ...] = ("y0", "x0", "y1", "x1", "area", "nucleus_cut", "outlier_score")

_TRUE = frozenset({"true", "1", "yes", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "f", "n", ""})


def parse_flag(value, where: str = "valid") -> bool:
    """Read a boolean column of ``cells.csv`` (``True``/``False`` as written, ``1``/``0``, yes/no).

    >>> parse_flag("True"), parse_flag(" 0 "), parse_flag(False)
    (True, False, False)

    Raises
    ------
    ValueError
        Naming ``where`` and the value, for anything else.
    """
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: {value!r} is not a boolean: expected True/False or 1/0")


def parse_number(value) -> float:
    """A numeric field: a float, an empty field as NaN.

    >>> parse_number(" 2.5"), str(parse_number(""))
    (2.5, 'nan')
    """
    text = str(value).strip()
    return float(text) if text else float("nan")


def _line(row: int) -> int:
    """The csv line of DataFrame row ``row`` (the header is line 1)."""
    return int(row) + 2


def _read_frame(path: Path):
    """The raw table, with the columns and file errors checked."""
    if not path.is_file():
        raise FileNotFoundError(
            f"cells file {path} not found: expected the cells table written by `hpa-kernel cells`"
        )
    df = read_csv(path, "cells file", dtype={"image_id": str, "labels": str, "crop": str})
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
    from pandas.api.types import is_numeric_dtype

    for column in NUMBER_COLUMNS:
        if not is_numeric_dtype(df[column]):  # pandas found a field that is not a number
            parse_column(df[column], parse_number, path=path, column=column, expected="a number")


def _crop_path(crop: str, folder: Path, root: Path, path: Path, row: int) -> str:
    """The resolved file of one crop; ValueError unless it lies inside ``root``."""
    if not crop.strip():
        return str(folder.resolve())  # an invalid cell without a crop file (checked by _check_rows)
    resolved = (folder / crop).resolve()
    if resolved.is_relative_to(root):
        return str(resolved)
    pure = PurePath(crop)
    reason = ("an absolute path" if pure.is_absolute() else "'..' leads out of the folder" if ".." in pure.parts
              else "a symbolic link points out of the folder")
    raise ValueError(f"{path}, line {_line(row)}, column 'crop': expected a file inside the crops folder {root}, "
                     f"got {crop!r}, which lies outside the crops folder ({reason}; it resolves to {resolved})")


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


def read_cells_table(path: str | os.PathLike, valid_only: bool = True, *, allow_empty: bool = False,
                     crops_root: str | os.PathLike | None = None):
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
    crops_root : path, optional
        The folder every crop must lie in (symbolic links followed); default the csv's folder.

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
        field, a box or score column is not a number, two rows share an ``(image_id, cell_id)``, a
        valid cell has no crop, a crop lies outside ``crops_root``, the file is not UTF-8, or
        (unless ``allow_empty``) no (valid) cell is left.
    """
    path = Path(path)
    df = _read_frame(path)
    _parse_columns(df, path)
    _check_rows(df, path)
    root = Path(crops_root if crops_root is not None else path.parent).resolve()
    df["crop_path"] = [_crop_path(c, path.parent, root, path, row) for row, c in enumerate(df["crop"])]
    if valid_only:
        df = df[df["valid"]]
    if df.empty and not allow_empty:
        raise ValueError(f"{path}: no {'valid ' if valid_only else ''}cells in the table")
    return df.reset_index(drop=True)

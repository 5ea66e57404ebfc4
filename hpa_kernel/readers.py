"""What every file reader of the kit shares: errors that name the file, the line and the column.

The kit's text inputs (``cells.csv``, soft and pseudo labels, ``train.csv``, the sample submission,
``weights_manifest.json``) are read through these helpers, so that a bad file is reported the same
way everywhere:

* :func:`read_text` decodes a file as UTF-8 (a byte-order mark is allowed) and turns a decoding
  error into ``ValueError("<file>, line L, column C: expected UTF-8 text, got the byte 0xff")``;
* :func:`read_csv` reads a CSV through :func:`read_text` into a DataFrame;
* :func:`parse_column` parses one column value by value and reports the first bad value as
  ``"<file>, line L, column 'name': expected <what>, got <value>"`` (:func:`field_error`).

Lines count from 1 and the CSV header is line 1, so DataFrame row ``r`` is line ``r + 2`` (for a
file whose fields hold no line break). This module imports nothing else from the kit.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["field_error", "parse_field", "parse_column", "read_text", "read_csv", "csv_line", "json_position"]


def csv_line(row: int) -> int:
    """The line of DataFrame row ``row`` in its CSV file (the header is line 1).

    >>> csv_line(0)
    2
    """
    return int(row) + 2


def field_error(path, line: int, column: str, expected: str, value) -> ValueError:
    """The error for one bad field: file, line, column, what was expected and what was found.

    >>> str(field_error("cells.csv", 3, "penalty", "a number", "high"))
    "cells.csv, line 3, column 'penalty': expected a number, got 'high'"
    """
    return ValueError(f"{path}, line {line}, column {column!r}: expected {expected}, got {value!r}")


def parse_field(value, parse: Callable, *, path, line: int, column: str, expected: str):
    """``parse(value)``, or the :func:`field_error` of that field when it raises ValueError or TypeError.

    >>> parse_field("0.5", float, path="soft.csv", line=2, column="soft_label", expected="a number")
    0.5
    """
    try:
        return parse(value)
    except (ValueError, TypeError):
        raise field_error(path, line, column, expected, value) from None


def parse_column(values: Iterable, parse: Callable, *, path, column: str, expected: str, first_line: int = 2) -> list:
    """``[parse(v) for v in values]``, raising :func:`field_error` for the first value that fails.

    Parameters
    ----------
    values : iterable
        The column's values in file order.
    parse : callable
        Turns one value into the parsed one; raises ``ValueError`` (or ``TypeError``) when it cannot.
    path : path
        The file, for the message.
    column : str
        The column's name, for the message.
    expected : str
        What a value should be (``"an integer"``, ``"a number in [0, 1]"``).
    first_line : int
        The line of the first value (2: the line after the header).

    Examples
    --------
    >>> parse_column(["1", " 2"], int, path="t.csv", column="cell_id", expected="an integer")
    [1, 2]
    >>> parse_column(["1", "x"], int, path="t.csv", column="cell_id", expected="an integer")
    Traceback (most recent call last):
    ...
    ValueError: t.csv, line 3, column 'cell_id': expected an integer, got 'x'
    """
    return [parse_field(value, parse, path=path, line=line, column=column, expected=expected)
            for line, value in enumerate(values, start=first_line)]


def _decode_error(path: Path, data: bytes, start: int, what: str) -> ValueError:
    """The error for the undecodable byte at offset ``start`` of ``data``."""
    line = data.count(b"\n", 0, start) + 1
    line_start = data.rfind(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
    return ValueError(
        f"{what} {path}, line {line}, column {column}: expected UTF-8 text, got the byte 0x{data[start]:02x}"
        " (save the file as UTF-8)"
    )


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of ``path`` decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (naming ``what``).
    ValueError
        If the file is not UTF-8 text: names ``what``, the file, and the line and column (counting
        characters from 1) of the first byte that is not.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # utf-8-sig counts after the byte-order mark
        raise _decode_error(path, data, exc.start + bom, what) from None


def read_csv(path: str | os.PathLike, what: str = "CSV file", dtype: dict | None = None):
    """Read a CSV file through :func:`read_text` with empty fields kept as ``""``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming ``what`` and the file: not UTF-8 (with line and column), empty, or not a CSV table
        (pandas' message, which names the line).
    """
    import pandas as pd

    text = read_text(path, what)
    try:
        return pd.read_csv(io.StringIO(text), dtype=dtype, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} {path} is empty: expected a header line and one row per line") from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"{what} {path} is not a well-formed CSV table: {exc}") from None


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_child(text: str, pos: int, key, decoder: json.JSONDecoder) -> int | None:
    """The offset of member ``key`` (a str in an object, an int in an array) of the value at ``pos``."""
    opening = text[pos]
    if (opening, isinstance(key, str)) not in (("{", True), ("[", False)):
        return None
    pos = _skip_space(text, pos + 1)
    index = 0
    while pos < len(text) and text[pos] not in "}]":
        if opening == "{":
            name, pos = json.decoder.scanstring(text, pos + 1)
            pos = _skip_space(text, _skip_space(text, pos) + 1)  # past the ':'
            found = name == key
        else:
            found, index = index == key, index + 1
        if found:
            return pos
        pos = _skip_space(text, decoder.raw_decode(text, pos)[1])
        if pos < len(text) and text[pos] == ",":
            pos = _skip_space(text, pos + 1)
    return None


def json_position(text: str, keys) -> tuple[int, int] | None:
    r"""The (line, column) of the JSON value at ``keys`` (object keys and array indices) in ``text``.

    Lines and columns count from 1; None when the path is not in the document.

    >>> json_position('{"a": [1,\n  {"b": 2}]}', ("a", 1, "b"))
    (2, 9)
    """
    decoder = json.JSONDecoder()
    try:
        pos = _skip_space(text, 0)
        for key in keys:
            pos = _json_child(text, pos, key, decoder)
            if pos is None:
                return None
    except (ValueError, IndexError):
        return None
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1

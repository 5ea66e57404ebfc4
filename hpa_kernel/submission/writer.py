"""Writing and checking ``submission.csv``.

The format is ``../shared/reference/metric/README.md`` section 5::

    ID,ImageWidth,ImageHeight,PredictionString
    <id>,<W>,<H>,<label> <confidence> <EncodedMask> <label> <confidence> <EncodedMask> ...
    <id>,<W>,<H>,

One row per test image in the order of ``sample_submission.csv``, LF line ends, no quoting, no
index column; triples joined by single spaces; a mask with several classes is repeated per class.

Fallback row
    An image of the sample for which no prediction is given gets an **empty PredictionString**
    (``FALLBACK_PREDICTION``), and a WARNING naming the image and the reason is logged. An empty
    field is the format's own "no detections" and needs no image size, so it is always valid; the
    metric counts the image's cells as misses. The alternative, an empty-mask placeholder triple,
    scores exactly the same (empty masks are dropped before matching) but must be encoded at the
    image's size to decode at all.

No-cells row
    An image in which no cell was found is not a fallback: the recipe decides its row
    (:attr:`hpa_kernel.recipe.InferenceRecipe.no_cells_row`). ``milimed2021`` writes the sample
    submission's row as the team did (:func:`no_cells_prediction`), ``kit2025`` an empty string.

Confidences
    Written as Python's shortest round-trip text of the float (``repr``: ``0.25``, ``1.0``,
    ``3e-12``), as the team's ``str(float)``: two different values never print alike, and the
    text reads back to the same float. (The kit wrote ``%.6f`` before, which tied every value
    below 5e-7 at 0.)
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hpa_kernel.classes import NUM_CLASSES
from hpa_kernel.diskspace import DiskFullError, is_disk_full
from hpa_kernel.submission.rle import decode_runs, encode_mask

if TYPE_CHECKING:
    import pandas as pd

    SampleSource = str | os.PathLike | pd.DataFrame

__all__ = [
    "SUBMISSION_HEADER",
    "FALLBACK_PREDICTION",
    "Problem",
    "format_confidence",
    "no_cells_prediction",
    "ValidationReport",
    "format_prediction_string",
    "prediction_string_for_cells",
    "read_sample",
    "read_sample_submission",
    "split_prediction_string",
    "parse_label",
    "parse_confidence",
    "write_submission",
    "check_submission",
    "validate_submission",
]

logger = logging.getLogger(__name__)

SUBMISSION_HEADER: tuple[str, ...] = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
#: PredictionString written for a sample image without a prediction: no detections.
FALLBACK_PREDICTION = ""

# Confidences this far outside [0, 1] are rounding noise and are clipped; anything further is an error.
_CLIP_SLACK = 1e-6
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


# --------------------------------------------------------------------------- writing


def format_confidence(value: float) -> str:
    """A confidence as the shortest text that reads back to the same float (``repr``); -0.0 as 0.0.

    Different floats never give the same text, however small:

    >>> [format_confidence(v) for v in (0.25, 1.0, 0.0, 1e-09, 2e-09, 3e-12, 0.1 + 0.2)]
    ['0.25', '1.0', '0.0', '1e-09', '2e-09', '3e-12', '0.30000000000000004']
    """
    return repr(float(value) + 0.0)


def format_prediction_string(triples: Iterable[tuple[int, float, str]]) -> str:
    """Join ``(label, confidence, EncodedMask)`` triples into a PredictionString.

    Tokens are separated by single spaces; confidences are written by :func:`format_confidence`
    (shortest round-trip text), after clipping values within 1e-6 outside [0, 1] (float rounding)
    to [0, 1].

    Raises
    ------
    ValueError
        For a label outside 0..18, a confidence that is not finite or outside [0, 1], or a mask that
        is empty or not base64 text.

    Examples
    --------
    >>> format_prediction_string([(0, 0.25, "eNoLCAgIMAEABJkBdQ=="), (18, 1, "eNoLCAgIMAEABJkBdQ==")])
    '0 0.25 eNoLCAgIMAEABJkBdQ== 18 1.0 eNoLCAgIMAEABJkBdQ=='
    >>> format_prediction_string([])
    ''
    """
    parts = []
    for k, triple in enumerate(triples):
        try:
            label, confidence, encoded = triple
        except (TypeError, ValueError):
            raise ValueError(f"triple {k} must be (label, confidence, EncodedMask), got {triple!r}") from None
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < NUM_CLASSES:
            raise ValueError(f"triple {k}: label must be an integer 0..{NUM_CLASSES - 1}, got {label!r}")
        try:
            confidence = float(confidence)
        except (TypeError, ValueError):
            raise ValueError(f"triple {k}: confidence must be a finite number in [0, 1], got {confidence!r}") from None
        if not (math.isfinite(confidence) and -_CLIP_SLACK <= confidence <= 1.0 + _CLIP_SLACK):
            raise ValueError(f"triple {k}: confidence must be a finite number in [0, 1], got {confidence!r}")
        confidence = min(max(confidence, 0.0), 1.0)  # float rounding of a probability, e.g. 1.0000000000000002
        if not isinstance(encoded, str) or not encoded or not set(encoded) <= _B64_CHARS:
            raise ValueError(f"triple {k}: EncodedMask must be non-empty base64 text, got {str(encoded)[:40]!r}")
        parts.append(f"{int(label)} {format_confidence(confidence)} {encoded}")
    return " ".join(parts)


def prediction_string_for_cells(encoded_masks: list[str], probs: np.ndarray) -> str:
    """PredictionString for cells with a probability for each of the 19 classes.

    Every cell gets all 19 classes (its mask repeated once per class), cell by cell, class 0..18.

    Parameters
    ----------
    encoded_masks : list of str
        EncodedMask of each cell, N entries.
    probs : ndarray, shape (N, 19)
        Confidence of each class for each cell, in [0, 1].

    Examples
    --------
    >>> s = prediction_string_for_cells(["eNoLCAgIMAEABJkBdQ=="], np.full((1, 19), 0.5))
    >>> len(s.split(" ")), s.split(" ")[:3]
    (57, ['0', '0.5', 'eNoLCAgIMAEABJkBdQ=='])
    """
    probs = np.asarray(probs, dtype=np.float64)
    encoded_masks = list(encoded_masks)
    if probs.ndim != 2 or probs.shape != (len(encoded_masks), NUM_CLASSES):
        raise ValueError(f"probs must have shape (N, {NUM_CLASSES}) with N = {len(encoded_masks)} masks, got {probs.shape}")
    return format_prediction_string(
        (c, probs[i, c], mask) for i, mask in enumerate(encoded_masks) for c in range(NUM_CLASSES)
    )


def no_cells_prediction(sample_text: str, width: int, height: int) -> str:
    """The team's PredictionString for an image in which no cell was found.

    The team wrote such an image's row of ``sample_submission.csv`` as it was (their In[25]); on
    Kaggle that is ``0 1 eNoLCAgIMAEABJkBdQ==``, class 0 at confidence 1 on an empty 2048 x 2048
    mask. The metric drops empty masks, so it scores as an empty row. This returns
    ``sample_text`` when it is a well-formed PredictionString whose masks decode at
    ``height`` x ``width``; otherwise (an empty sample row, or the 2048-pixel string on a 1728 or
    3072 image, which would not decode) the same placeholder at the image's own size:
    ``0 1 <empty H x W mask>``.

    >>> no_cells_prediction("0 1 eNoLCAgIMAEABJkBdQ==", 2048, 2048)
    '0 1 eNoLCAgIMAEABJkBdQ=='
    >>> no_cells_prediction("", 2048, 2048)
    '0 1 eNoLCAgIMAEABJkBdQ=='
    >>> no_cells_prediction("0 1 eNoLCAgIMAEABJkBdQ==", 4, 4)
    '0 1 eNpLMAAAAPIAkQ=='
    """
    if _decodes(sample_text, width, height):
        return sample_text
    return f"0 1 {encode_mask(np.zeros((height, width), dtype=bool))}"


def _decodes(text: str, width: int, height: int) -> bool:
    """Whether ``text`` is a non-empty, well-formed PredictionString whose masks decode at H x W."""
    if not isinstance(text, str) or not text or any(ch in text for ch in ",\n\r\"\t"):
        return False
    triples, problems = split_prediction_string(text)
    if problems:
        return False
    try:
        for label, confidence, mask in triples:
            parse_label(label)
            parse_confidence(confidence)
            decode_runs(mask, height, width)
    except ValueError:
        return False
    return True


def _sample_frame(sample: SampleSource, what: str, require_predictions: bool):
    """The sample as a DataFrame and the name its errors use; the columns checked."""
    import pandas as pd

    if isinstance(sample, pd.DataFrame):
        name = f"{what} (DataFrame)"
        need = SUBMISSION_HEADER if require_predictions else SUBMISSION_HEADER[:3]
        wrong = [c for c in need if c not in sample.columns] + [c for c in sample.columns if c not in SUBMISSION_HEADER]
        if wrong:
            raise ValueError(f"{name}: expected columns {','.join(need)}, got {','.join(map(str, sample.columns))}")
        return sample, name
    path = Path(sample)
    name = f"{what} {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    from hpa_kernel.readers import read_text

    text = read_text(path, what)  # not UTF-8: an error naming the line and column
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:  # empty, malformed
        raise ValueError(f"{name} cannot be read as CSV: {type(exc).__name__}: {exc}") from None
    # the four columns by name, in any order; others (e.g. Kaggle's "Usage") are ignored
    missing = [c for c in SUBMISSION_HEADER if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: expected columns {','.join(SUBMISSION_HEADER)}, got {','.join(map(str, frame.columns))} "
                         f"(missing {','.join(missing)})")
    extra = [str(c) for c in frame.columns if c not in SUBMISSION_HEADER]
    if extra:
        logger.info("%s: the column(s) %s are ignored; only %s are read", name, ",".join(extra), ",".join(SUBMISSION_HEADER))
    return frame[list(SUBMISSION_HEADER)], name


def _positive_int(value) -> int:
    """``value`` as an int > 0 (an int, an integral float or a decimal string); ValueError otherwise."""
    if isinstance(value, str):
        if not (value.strip().isascii() and value.strip().isdigit()):
            raise ValueError(value)
        number = int(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        number = int(value)
    else:
        raise ValueError(value)
    if number <= 0:
        raise ValueError(value)
    return number


def _is_positive_int(value) -> bool:
    try:
        _positive_int(value)
    except ValueError:
        return False
    return True


def read_sample_submission(sample: SampleSource, what: str = "sample submission", *, require_predictions: bool = False):
    """Read ``sample_submission.csv`` (or a submission in its format): the one reader of that format.

    Parameters
    ----------
    sample : path or DataFrame
        A file must have the columns ``ID,ImageWidth,ImageHeight,PredictionString``, read by
        name; other columns (Kaggle's ``Usage``) are ignored, which is logged. A
        DataFrame (an in-memory sample) needs ``ID``, ``ImageWidth`` and ``ImageHeight`` and
        ``PredictionString`` when ``require_predictions``, and no other column.
    what : str
        What the file is, for the error messages (``"sample submission"``, ``"submission"``).
    require_predictions : bool
        Refuse a DataFrame without a ``PredictionString`` column (a file always needs one).

    Returns
    -------
    pandas.DataFrame
        ``ID`` (str), ``ImageWidth`` and ``ImageHeight`` (int > 0) and ``PredictionString`` (str;
        empty where missing), in the sample's order, with a fresh index.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        Naming the file (or ``what``) and the ID: unreadable CSV, wrong columns, an image size
        that is not an integer > 0, or an ID listed more than once.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = read_sample_submission(pd.DataFrame({"ID": ["a"], "ImageWidth": [8], "ImageHeight": ["6"]}))
    >>> frame.to_dict("records")
    [{'ID': 'a', 'ImageWidth': 8, 'ImageHeight': 6, 'PredictionString': ''}]
    """
    import pandas as pd

    frame, name = _sample_frame(sample, what, require_predictions)
    ids = [str(i) for i in frame["ID"]]
    sizes = []
    for line, (image_id, width, height) in enumerate(zip(ids, frame["ImageWidth"], frame["ImageHeight"]), start=2):
        try:
            sizes.append((_positive_int(width), _positive_int(height)))
        except ValueError:
            column = "ImageHeight" if _is_positive_int(width) else "ImageWidth"
            raise ValueError(f"{name}: ID {image_id}: ImageWidth {width!r} and ImageHeight {height!r} must be integers > 0 "
                             f"(line {line}, column {column!r})") from None
    seen: set[str] = set()
    twice = sorted({i for i in ids if i in seen or seen.add(i)})
    if twice:
        shown = ", ".join(twice[:5]) + (f" and {len(twice) - 5} more" if len(twice) > 5 else "")
        raise ValueError(f"{name}: lists ID(s) more than once: {shown}")
    texts = frame["PredictionString"] if "PredictionString" in frame.columns else [""] * len(ids)
    texts = ["" if t is None or (isinstance(t, float) and math.isnan(t)) else str(t) for t in texts]
    return pd.DataFrame({"ID": ids, "ImageWidth": [w for w, _ in sizes], "ImageHeight": [h for _, h in sizes],
                         "PredictionString": texts}, columns=list(SUBMISSION_HEADER))


def read_sample(sample: SampleSource) -> list[tuple[str, int, int]]:
    """``sample_submission.csv`` (path or DataFrame) as ``[(ID, ImageWidth, ImageHeight), ...]`` in file order.

    A view of :func:`read_sample_submission`, which checks the file.
    """
    frame = read_sample_submission(sample)
    return list(zip(frame["ID"], frame["ImageWidth"].tolist(), frame["ImageHeight"].tolist()))


_SPACING_PROBLEMS = (
    (lambda t: t != t.strip(" "), "PredictionString has a leading or trailing space; the evaluator splits on single spaces and would lose or shift a triple"),
    (lambda t: "  " in t, "PredictionString has a double space; the evaluator splits on single spaces, which shifts the triples"),
    (lambda t: any(ch in t for ch in "\t\r\n\v\f"), "PredictionString contains a tab or another non-space whitespace character"),
)


def split_prediction_string(text: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Tokenise a PredictionString: the ``(label, confidence, EncodedMask)`` token triples and its format problems.

    The one tokeniser of the format, shared by the writer, the validator and the metric. The
    evaluator splits on single spaces, so a leading, trailing or double space, or other whitespace,
    is a problem; the triples are then still read from the whitespace-separated tokens, so that a
    validator can go on checking them. A token count that is not a multiple of 3 gives no triples.

    Parameters
    ----------
    text : str
        The PredictionString; empty means no detections.

    Returns
    -------
    triples : list of (str, str, str)
        The token triples, unparsed (see :func:`parse_label` and :func:`parse_confidence`).
    problems : list of str
        Format problems, empty for a well-formed string.

    Examples
    --------
    >>> split_prediction_string("3 0.5 eNoLCAgIMAEABJkBdQ== 18 1 eNoLCAgIMAEABJkBdQ==")
    ([('3', '0.5', 'eNoLCAgIMAEABJkBdQ=='), ('18', '1', 'eNoLCAgIMAEABJkBdQ==')], [])
    >>> split_prediction_string("3 0.5")
    ([], ['PredictionString has 2 tokens, not a multiple of 3 (label confidence EncodedMask); the triples cannot be read'])
    """
    problems = [message for broken, message in _SPACING_PROBLEMS if broken(text)]
    tokens = text.split()
    if len(tokens) % 3:
        problems.append(f"PredictionString has {len(tokens)} tokens, not a multiple of 3 (label confidence EncodedMask); the triples cannot be read")
        return [], problems
    return [tuple(tokens[k : k + 3]) for k in range(0, len(tokens), 3)], problems


def parse_label(text: str) -> int:
    """A label token as a class id: ASCII digits naming 0..18.

    >>> parse_label("18")
    18

    Raises
    ------
    ValueError
        ``label '<text>' is not an integer 0..18`` (``+3``, ``3.0`` and ``19`` included).
    """
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) < NUM_CLASSES:
        raise ValueError(f"label {text[:30]!r} is not an integer 0..{NUM_CLASSES - 1}")
    return int(text)


def parse_confidence(text: str) -> float:
    """A confidence token as a float in [0, 1].

    >>> parse_confidence("0.25")
    0.25

    Raises
    ------
    ValueError
        If it is not a number, not finite or outside [0, 1].
    """
    try:
        confidence = float(text)
    except ValueError:
        raise ValueError(f"confidence {text[:30]!r} is not a number") from None
    if not math.isfinite(confidence):
        raise ValueError(f"confidence {text!r} is not finite")
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence {text} is outside [0, 1]")
    return confidence


def _check_prediction_text(image_id: str, text: str) -> None:
    if not isinstance(text, str):
        raise ValueError(f"prediction of image {image_id} must be a str, got {type(text).__name__}")
    if any(ch in text for ch in ",\n\r\"\t"):
        raise ValueError(f"prediction of image {image_id} contains a comma, quote, tab or line break")
    problems = split_prediction_string(text)[1]
    if problems:
        raise ValueError(f"prediction of image {image_id} is not single-space separated triples: {problems[0]}")


def _csv_bytes(rows: Mapping[str, str], samples: list[tuple[str, int, int]], fallback: str) -> int:
    """The size in bytes of the file :func:`write_submission` writes (ASCII, one byte per character)."""
    size = len(",".join(SUBMISSION_HEADER)) + 1
    for image_id, width, height in samples:
        size += len(f"{image_id},{width},{height},") + len(rows.get(image_id, fallback)) + 1
    return size


def write_submission(
    rows: Mapping[str, str],
    sample: SampleSource,
    out: str | os.PathLike,
    fallback: str = FALLBACK_PREDICTION,
    log_each_fallback: bool = True,
) -> Path:
    """Write ``submission.csv`` in the order of the sample submission.

    Parameters
    ----------
    rows : mapping
        ImageID -> PredictionString (for example from :func:`prediction_string_for_cells`).
    sample : path or DataFrame
        ``sample_submission.csv``; gives the IDs, their order, ImageWidth and ImageHeight.
    out : path
        Output file; written to a temporary file in the same folder, then moved into place.
    fallback : str
        PredictionString of a sample image missing from ``rows`` (default empty: no detections);
        each such image is logged as a WARNING unless ``log_each_fallback`` is False (the caller
        logs them); the count is logged either way.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ValueError
        If ``rows`` has IDs that are not in the sample, a PredictionString is malformed, or ``out``
        is an existing folder.
    hpa_kernel.diskspace.DiskFullError
        If the disk is full; ``out`` is left as it was and no temporary file remains.
    """
    if Path(out).is_dir():
        raise ValueError(f"out: {out} is a folder; expected the path of the CSV file to write, e.g. {Path(out) / 'submission.csv'}")
    samples = read_sample(sample)
    known = {image_id for image_id, _, _ in samples}
    extra = [i for i in rows if i not in known]
    if extra:
        raise ValueError(f"rows has {len(extra)} IDs that are not in the sample submission, e.g. {extra[:3]}")
    _check_prediction_text("(fallback)", fallback)
    for image_id, text in rows.items():
        _check_prediction_text(image_id, text)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; submission.csv is an ordinary file that others read
    n_fallback = 0
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as fh:
            fh.write(",".join(SUBMISSION_HEADER) + "\n")
            for image_id, width, height in samples:
                text = rows.get(image_id)
                if text is None and log_each_fallback:
                    logger.warning("image %s: no prediction row; writing the fallback (%s)", image_id,
                                   "empty PredictionString = no detections" if fallback == "" else "given fallback string")
                if text is None:
                    text = fallback
                    n_fallback += 1
                fh.write(f"{image_id},{width},{height},{text}\n")
        os.replace(tmp, out)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise DiskFullError(out, _csv_bytes(rows, samples, fallback)) from exc
        raise
    logger.info("wrote %s: %d rows, %d with the fallback", out, len(samples), n_fallback)
    return out


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Problem:
    """One problem found in a submission file.

    ``line`` is the 1-based line number in the file (None for a problem of the whole file),
    ``image_id`` the row's ID where known.
    """

    line: int | None
    image_id: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.image_id is not None:
            where.append(f"ID {self.image_id}")
        return f"{', '.join(where) or 'file'}: {self.message}"


@dataclass
class ValidationReport:
    """Result of :func:`check_submission`: the problems and what the file holds."""

    problems: list[Problem] = field(default_factory=list)
    num_rows: int = 0
    num_empty_rows: int = 0
    num_triples: int = 0
    num_distinct_masks: int = 0
    num_empty_masks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"{self.num_rows} rows ({self.num_empty_rows} with no prediction), {self.num_triples} triples, "
            f"{self.num_distinct_masks} distinct masks ({self.num_empty_masks} empty)"
        )


def _iter_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text without its line end, ended with CRLF) for each line, streamed."""
    with open(path, encoding="utf-8", errors="strict", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            crlf = line.endswith("\r\n")
            yield number, line.rstrip("\r\n") if crlf else line.rstrip("\n"), crlf


def _split_fields(text: str) -> list[str]:
    if '"' not in text:
        return text.split(",")
    return next(csv.reader(io.StringIO(text)))


def _check_prediction(line: int, image_id: str, width: int, height: int, text: str, report: ValidationReport) -> None:
    problems = report.problems
    if text == "":
        report.num_empty_rows += 1
        return
    triples, found = split_prediction_string(text)
    problems.extend(Problem(line, image_id, message) for message in found)
    masks: dict[str, str | None] = {}
    for n, (label_text, conf_text, mask) in enumerate(triples):
        report.num_triples += 1
        for parse, token in ((parse_label, label_text), (parse_confidence, conf_text)):
            try:
                parse(token)
            except ValueError as exc:
                problems.append(Problem(line, image_id, f"triple {n}: {exc}"))
        if mask not in masks:
            try:
                starts, ends = decode_runs(mask, height, width)
            except ValueError as exc:
                masks[mask] = str(exc)
            else:
                masks[mask] = None
                report.num_distinct_masks += 1
                if not starts.size:
                    report.num_empty_masks += 1
        if masks[mask] is not None:
            problems.append(Problem(line, image_id, f"triple {n}: mask does not decode at ImageHeight x ImageWidth = {height} x {width}: {masks[mask]}"))


def _check_header(text: str, problems: list[Problem]) -> None:
    """Check the header line (a byte-order mark, then the exact four names)."""
    if text.startswith("\ufeff"):
        problems.append(Problem(1, None, "the file starts with a byte-order mark (BOM)"))
        text = text[1:]
    if text != ",".join(SUBMISSION_HEADER):
        problems.append(Problem(1, None, f"header is {text[:100]!r}; expected exactly {','.join(SUBMISSION_HEADER)!r}"))


def _check_row(number: int, text: str, expected: dict[str, tuple[int, int]], seen: dict[str, int], report: ValidationReport) -> None:
    """Check data line ``number``: its fields, its ID (``seen`` records it), its size and its masks."""
    problems = report.problems
    if text == "":
        problems.append(Problem(number, None, "empty line"))
        return
    try:
        fields = _split_fields(text)
    except (csv.Error, StopIteration) as exc:
        problems.append(Problem(number, None, f"cannot parse the CSV row ({exc})"))
        return
    if '"' in text:
        problems.append(Problem(number, fields[0] if fields else None, "the row uses quotes; the format has no quoting"))
    if len(fields) != 4:
        problems.append(Problem(number, fields[0] if fields else None, f"row has {len(fields)} fields; expected 4 (ID,ImageWidth,ImageHeight,PredictionString)"))
        return
    image_id, width_text, height_text, prediction = fields
    report.num_rows += 1
    if image_id in seen:
        problems.append(Problem(number, image_id, f"duplicate ID (first on line {seen[image_id]})"))
        return
    seen[image_id] = number
    if image_id not in expected:
        problems.append(Problem(number, image_id, "ID is not in the sample submission"))
        return
    want_width, want_height = expected[image_id]
    sizes = {}
    for name, value, want in (("ImageWidth", width_text, want_width), ("ImageHeight", height_text, want_height)):
        if not (value.isascii() and value.isdigit() and int(value) > 0):
            problems.append(Problem(number, image_id, f"{name} {value!r} is not a positive integer (sample: {want})"))
        else:
            sizes[name] = int(value)
            if int(value) != want:
                problems.append(Problem(number, image_id, f"{name} is {value}; the sample has {want}"))
    if len(sizes) == 2 and (sizes["ImageWidth"], sizes["ImageHeight"]) != (want_width, want_height):
        # reported above; not decoded at a size the sample does not vouch for (bounds the inflation)
        if prediction:
            problems.append(Problem(number, image_id, "masks not checked: the row's image size differs from the sample's"))
    elif len(sizes) == 2:
        # The evaluator decodes at the row's own size, which here is the sample's.
        _check_prediction(number, image_id, sizes["ImageWidth"], sizes["ImageHeight"], prediction, report)
    elif prediction:
        problems.append(Problem(number, image_id, "masks not checked: the row's image size is unreadable"))


def check_submission(path: str | os.PathLike, sample: SampleSource) -> ValidationReport:
    """Check a submission file against the sample submission, streaming it row by row.

    Checks: the exact header; LF line ends and UTF-8/ASCII text; four fields per row; the set of IDs
    equals the sample's (missing, extra and duplicate IDs); ImageWidth/ImageHeight equal the
    sample's; PredictionString made of single-space separated triples, with labels that are integers
    0..18, confidences that are finite numbers in [0, 1], and masks that decode at
    ImageHeight x ImageWidth (base64, zlib and RLE errors, a total length other than H * W).

    Parameters
    ----------
    path : path
        The submission file.
    sample : path or DataFrame
        ``sample_submission.csv``.

    Returns
    -------
    ValidationReport
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} does not exist")
    expected = {image_id: (width, height) for image_id, width, height in read_sample(sample)}
    report = ValidationReport()
    problems = report.problems
    seen: dict[str, int] = {}
    crlf_lines = 0
    header_seen = False
    lines = _iter_lines(path)
    try:
        for number, text, crlf in lines:
            crlf_lines += crlf
            if number == 1:
                header_seen = True
                _check_header(text, problems)
            else:
                _check_row(number, text, expected, seen, report)
    except UnicodeDecodeError as exc:
        problems.append(Problem(None, None, f"the file is not UTF-8 text ({exc}); stopped reading"))
    if not header_seen:
        problems.append(Problem(None, None, f"the file is empty; expected the header {','.join(SUBMISSION_HEADER)!r} and one row per image"))
    if crlf_lines:
        problems.append(Problem(None, None, f"{crlf_lines} lines end with CRLF; the format uses LF line ends"))
    missing = [i for i in expected if i not in seen]
    for image_id in missing:
        problems.append(Problem(None, image_id, "ID of the sample submission has no row"))
    return report


def validate_submission(path: str | os.PathLike, sample: SampleSource) -> list[Problem]:
    """The problems of a submission file (empty list: the file is valid); see :func:`check_submission`."""
    return check_submission(path, sample).problems

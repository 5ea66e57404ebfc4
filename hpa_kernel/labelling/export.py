"""Export manual scores as soft labels for training and as a validation set.

Soft labels (``hpa-kernel label export --out soft_labels.csv``)
--------------------------------------------------------------
Long format, one row per scored (cell, class), sorted by ``image_id, cell_id, class_id``::

    image_id,cell_id,class_id,soft_label,score,n_labellers
    a1b2,3,11,0.9,4.0,1

``soft_label`` is the mean, over the labellers who scored the cell for the class, of their score
mapped through the class's mapping (default :data:`DEFAULT_MAPPING`, 1:0.0, 2:0.2, 3:0.7, 4:0.9,
5:1.0); ``score`` is their mean raw score. Skips are left out. A training dataset reads it with
:func:`read_soft_labels` and uses ``soft_label`` in place of the image-level 0/1 target of that
class for that cell; classes without a row keep the image-level target.

Validation set (``hpa-kernel label export --validation val_cells.csv``)
-----------------------------------------------------------------------
One row per cell with at least one decided class, in the ``ImageID,CellID,Labels`` layout of the
truth files, plus the classes that were decided::

    ImageID,CellID,Labels,Judged
    a1b2,3,11,11|15

A class is *positive* for a cell when the mean score is >= ``positive_min`` (default 4) and
*negative* when it is <= ``negative_max`` (default 2); a mean in between is undecided and left out.
``Labels`` holds the positive classes and ``Judged`` the positive and negative ones, so a metric
should count only the classes of ``Judged`` for that cell.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from hpa_kernel.classes import CLASS_NAMES, class_id, format_labels
from hpa_kernel.io import read_json_object
from hpa_kernel.labelling.store import SCORES, LabelStore
from hpa_kernel.readers import parse_field, read_text

__all__ = [
    "DEFAULT_MAPPING",
    "SOFT_COLUMNS",
    "VALIDATION_COLUMNS",
    "parse_mapping",
    "parse_mapping_option",
    "load_mappings",
    "soft_label_rows",
    "write_soft_labels",
    "read_soft_labels",
    "validation_rows",
    "write_validation",
]

logger = logging.getLogger(__name__)

DEFAULT_MAPPING: dict[int, float] = {1: 0.0, 2: 0.2, 3: 0.7, 4: 0.9, 5: 1.0}
SOFT_COLUMNS = ("image_id", "cell_id", "class_id", "soft_label", "score", "n_labellers")
VALIDATION_COLUMNS = ("ImageID", "CellID", "Labels", "Judged")


def _check_mapping(mapping: Mapping, where: str) -> dict[int, float]:
    try:
        out = {int(k): float(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{where}: scores and soft labels must be numbers, got {dict(mapping)!r}") from None
    if sorted(out) != list(SCORES):
        raise ValueError(f"{where}: expected a soft label for each score 1..5, got scores {sorted(out)}")
    bad = {k: v for k, v in out.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"{where}: soft labels must lie in [0, 1], got {bad}")
    values = [out[s] for s in SCORES]
    if values != sorted(values):
        logger.warning("%s: the mapping %s is not increasing with the score", where, out)
    return out


def parse_mapping(text: str) -> dict[int, float]:
    """Parse ``"1:0,2:0.2,3:0.7,4:0.9,5:1"`` into ``{score: soft label}``.

    >>> parse_mapping("1:0, 2:0.1, 3:0.5, 4:0.9, 5:1")
    {1: 0.0, 2: 0.1, 3: 0.5, 4: 0.9, 5: 1.0}
    """
    pairs = {}
    for part in str(text).split(","):
        key, sep, value = part.partition(":")
        if not sep:
            raise ValueError(f"mapping {text!r}: {part.strip()!r} is not score:soft_label (e.g. 3:0.7)")
        pairs[key.strip()] = value.strip()
    return _check_mapping(pairs, f"mapping {text!r}")


def parse_mapping_option(text: str) -> tuple[int, dict[int, float]]:
    """Parse a ``--mapping`` option, ``"CLASS=1:0,2:0.1,3:0.5,4:0.9,5:1"`` (class name or id).

    >>> parse_mapping_option("Mitotic spindle=1:0,2:0.1,3:0.5,4:0.9,5:1")[0]
    11
    """
    name, sep, spec = str(text).partition("=")
    if not sep:
        raise ValueError(f"--mapping {text!r}: expected CLASS=1:a,2:b,3:c,4:d,5:e")
    return class_id(name.strip()), parse_mapping(spec)


def load_mappings(
    options: list[str] | tuple[str, ...] = (), json_path: str | Path | None = None
) -> tuple[dict[int, float], dict[int, dict[int, float]]]:
    """The default mapping and the per-class overrides from a JSON file and ``--mapping`` options.

    The JSON file maps a class name or id (or ``"default"``) to either ``{"1": 0, ..., "5": 1}``
    or ``"1:0,2:0.2,3:0.7,4:0.9,5:1"``. Options given on the command line win over the file.

    Returns
    -------
    default : dict
        ``{score: soft label}`` for classes without an override.
    per_class : dict
        ``{class id: {score: soft label}}``.
    """
    default, per_class = dict(DEFAULT_MAPPING), {}
    if json_path is not None:
        json_path = Path(json_path)
        spec = read_json_object(json_path, "mapping file (an object of class -> mapping)")
        for key, value in spec.items():
            where = f"{json_path} [{key!r}]"
            if isinstance(value, str):
                mapping = parse_mapping(value)
            elif isinstance(value, dict):
                mapping = _check_mapping(value, where)
            else:
                raise ValueError(f"{where}: expected an object or a '1:a,...,5:e' string, got {value!r}")
            if str(key).strip().lower() == "default":
                default = mapping
            else:
                per_class[class_id(key)] = mapping
    for option in options:
        cid, mapping = parse_mapping_option(option)
        per_class[cid] = mapping
    return default, per_class


def _grouped(store: LabelStore, labeller: str | None):
    groups: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for event in store.current(labeller=labeller):
        if event.score is not None:
            groups[(event.image_id, event.cell_id, event.class_id)].append(event.score)
    return dict(sorted(groups.items()))


def soft_label_rows(
    store: LabelStore,
    default: Mapping[int, float] = DEFAULT_MAPPING,
    per_class: Mapping[int, Mapping[int, float]] | None = None,
    labeller: str | None = None,
) -> list[dict]:
    """One dict per scored (cell, class) with the columns of :data:`SOFT_COLUMNS`."""
    per_class = per_class or {}
    rows = []
    for (image_id, cell_id, cid), scores in _grouped(store, labeller).items():
        mapping = per_class.get(cid, default)
        soft = sum(mapping[s] for s in scores) / len(scores)
        rows.append(
            {
                "image_id": image_id,
                "cell_id": cell_id,
                "class_id": cid,
                "soft_label": round(soft, 6),
                "score": round(sum(scores) / len(scores), 6),
                "n_labellers": len(scores),
            }
        )
    return rows


def _write_csv(out: str | Path, columns, rows) -> Path:
    """Write the CSV atomically: a failed write (a full disk included) leaves the previous file and no temporary one."""
    from hpa_kernel.io import atomic_write

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(out, write)


def write_soft_labels(
    store: LabelStore,
    out: str | Path,
    default: Mapping[int, float] = DEFAULT_MAPPING,
    per_class: Mapping[int, Mapping[int, float]] | None = None,
    labeller: str | None = None,
) -> int:
    """Write the soft-label CSV (schema in the module docstring); returns the number of rows."""
    rows = soft_label_rows(store, default, per_class, labeller)
    _write_csv(out, SOFT_COLUMNS, rows)
    by_class = defaultdict(int)
    for row in rows:
        by_class[row["class_id"]] += 1
    logger.info(
        "%s: %d soft labels (%s)", out, len(rows), ", ".join(f"{CLASS_NAMES[c]} {n}" for c, n in sorted(by_class.items())) or "none"
    )
    return len(rows)


def read_soft_labels(path: str | Path) -> dict[tuple[str, int], dict[int, float]]:
    """Read a soft-label CSV as ``{(image_id, cell_id): {class_id: soft_label}}``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a column is missing, a value is out of range or the file is not UTF-8 (naming the
        file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"soft-label file {path} does not exist (write it with `hpa-kernel label export`)")
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    with io.StringIO(read_text(path, "soft-label file"), newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("image_id", "cell_id", "class_id", "soft_label") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(SOFT_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            where = {"path": path, "line": line}
            key = (row["image_id"], parse_field(row["cell_id"], int, column="cell_id", expected="an integer", **where))
            cid = parse_field(row["class_id"], class_id, column="class_id", expected="a class id 0..18 or name", **where)
            soft = parse_field(row["soft_label"], float, column="soft_label", expected="a number in [0, 1]", **where)
            if not 0.0 <= soft <= 1.0:
                raise ValueError(f"{path}:{line}: soft_label {soft} outside [0, 1] "
                                 f"(line {line}, column 'soft_label': expected a number in [0, 1])")
            out[key][cid] = soft
    return dict(out)


def validation_rows(
    store: LabelStore, positive_min: float = 4, negative_max: float = 2, labeller: str | None = None
) -> list[dict]:
    """One dict per cell with a decided class, columns :data:`VALIDATION_COLUMNS`."""
    if not 1 <= negative_max < positive_min <= 5:
        raise ValueError(f"need 1 <= negative_max < positive_min <= 5, got negative_max={negative_max}, positive_min={positive_min}")
    cells: dict[tuple[str, int], tuple[set, set]] = {}
    for (image_id, cell_id, cid), scores in _grouped(store, labeller).items():
        mean = sum(scores) / len(scores)
        if negative_max < mean < positive_min:
            continue
        positive, judged = cells.setdefault((image_id, cell_id), (set(), set()))
        judged.add(cid)
        if mean >= positive_min:
            positive.add(cid)
    return [
        {"ImageID": image_id, "CellID": cell_id, "Labels": format_labels(positive), "Judged": format_labels(judged)}
        for (image_id, cell_id), (positive, judged) in sorted(cells.items())
    ]


def write_validation(
    store: LabelStore, out: str | Path, positive_min: float = 4, negative_max: float = 2, labeller: str | None = None
) -> int:
    """Write the validation CSV (schema in the module docstring); returns the number of cells."""
    rows = validation_rows(store, positive_min, negative_max, labeller)
    _write_csv(out, VALIDATION_COLUMNS, rows)
    logger.info("%s: %d validation cells", out, len(rows))
    return len(rows)

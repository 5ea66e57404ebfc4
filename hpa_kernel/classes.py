"""The 19 subcellular-location classes of the HPA single-cell competition.

The ``Label`` column of ``train.csv`` and the truth files hold class ids joined by ``|``,
for example ``"0|5|16"``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "NEGATIVE",
    "MITOTIC_SPINDLE",
    "class_id",
    "parse_labels",
    "format_labels",
    "labels_to_multihot",
]

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
NUM_CLASSES: int = len(CLASS_NAMES)
NEGATIVE: int = 18
MITOTIC_SPINDLE: int = 11

_BY_NAME = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}


def class_id(name_or_id: str | int) -> int:
    """Return the class id for a class name (case-insensitive), an id, or an id given as text.

    >>> class_id("Mitotic spindle"), class_id("11"), class_id(11)
    (11, 11, 11)
    """
    if isinstance(name_or_id, (int, np.integer)):
        cid = int(name_or_id)
    else:
        text = str(name_or_id).strip()
        if text.lower() in _BY_NAME:
            return _BY_NAME[text.lower()]
        if not text.isdigit():
            raise ValueError(
                f"unknown class {name_or_id!r}: expected an id 0..{NUM_CLASSES - 1} "
                f"or one of the names {', '.join(CLASS_NAMES)}"
            )
        cid = int(text)
    if not 0 <= cid < NUM_CLASSES:
        raise ValueError(f"class id {cid} out of range: expected 0..{NUM_CLASSES - 1}")
    return cid


def parse_labels(text: str | float | None) -> tuple[int, ...]:
    """Parse a ``Label`` field such as ``"0|5|16"`` into sorted, unique class ids.

    An empty field (or a pandas NaN) gives an empty tuple.

    >>> parse_labels("16|0|5")
    (0, 5, 16)
    >>> parse_labels("")
    ()
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ()
    text = str(text).strip()
    if not text:
        return ()
    ids = set()
    for part in text.split("|"):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"bad label field {text!r}: {part!r} is not a class id 0..{NUM_CLASSES - 1}")
        ids.add(class_id(int(part)))
    return tuple(sorted(ids))


def format_labels(ids: Iterable[int]) -> str:
    """Format class ids as a ``Label`` field: sorted, unique, ``|``-separated.

    >>> format_labels([16, 0, 5, 5])
    '0|5|16'
    """
    return "|".join(str(i) for i in sorted({class_id(int(i)) for i in ids}))


def labels_to_multihot(ids: Iterable[int], dtype=np.float32) -> np.ndarray:
    """A length-19 multi-hot vector for the given class ids.

    >>> labels_to_multihot([0, 18]).nonzero()[0].tolist()
    [0, 18]
    """
    out = np.zeros(NUM_CLASSES, dtype=dtype)
    for i in ids:
        out[class_id(int(i))] = 1
    return out

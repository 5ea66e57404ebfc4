"""The competition's EncodedMask codec: COCO run-length encoding, zlib level 9, base64.

A binary (H, W) mask is read in column-major (Fortran) order and cut into runs that alternate
background / foreground, starting with a background run (of length 0 when the first pixel is
foreground); only that leading run can be empty. The run lengths are written as a COCO "compressed
counts" string, exactly as ``pycocotools.mask.encode(...)["counts"]`` does, then compressed with
``zlib.compress(..., 9)`` and base64-encoded as ASCII. ``../shared/reference/metric/README.md``
(section 5) is the specification; :func:`encode_mask` reproduces its vectors byte for byte.

COCO counts string
    Each run length ``c[i]`` is first replaced by ``x = c[i] - c[i - 2]`` for ``i > 2``. The signed
    integer ``x`` is then written in little-endian groups of 5 bits, one character per group: the
    character is ``48 + group``, plus 32 when another group follows. Writing stops once the remaining
    bits are all zero (all one, for a negative value) and the sign bit (16) of the last group agrees.

The codec is written in numpy from that description and needs no pycocotools. Three encoders share
it: :func:`encode_mask` (a full mask), :func:`encode_label_crop` (one cell of a label image, from its
bounding-box crop only, without building an (H, W) mask) and :func:`encode_label_image` (every cell).
"""

from __future__ import annotations

import base64
import binascii
import logging
import zlib
from collections.abc import Iterable

import numpy as np

__all__ = [
    "EMPTY_MASK_2048",
    "encode_mask",
    "decode_mask",
    "decode_runs",
    "encode_label_crop",
    "encode_label_image",
    "mask_area",
    "max_counts_length",
    "runs_to_counts_string",
    "counts_string_to_runs",
]

logger = logging.getLogger(__name__)

#: The all-background mask of a 2048 x 2048 image: the usual "no cell" placeholder of public notebooks.
EMPTY_MASK_2048 = "eNoLCAgIMAEABJkBdQ=="

# A run length is an unsigned 32-bit integer in pycocotools, so a delta needs at most 7 groups of 5 bits.
_MAX_GROUPS = 7
_SHIFTS = np.arange(_MAX_GROUPS, dtype=np.int64) * 5


# --------------------------------------------------------------------------- counts strings


def runs_to_counts_string(counts: np.ndarray) -> bytes:
    """Write COCO run lengths as a compressed counts string (pycocotools' ``rleToString``).

    >>> runs_to_counts_string(np.array([13, 3, 3, 4, 2, 3, 3, 3, 8, 1, 5]))
    b'=331OO105NM'
    """
    x = np.asarray(counts, dtype=np.int64).copy()
    if x.size > 3:
        x[3:] -= np.asarray(counts, dtype=np.int64)[1:-2]
    # groups[i, k] = bits 5k..5k+4 of x[i]; arithmetic shift keeps the sign of negative deltas.
    shifted = x[:, None] >> _SHIFTS[None, :]
    groups = shifted & 0x1F
    rest = shifted >> 5  # what is left after group k
    sign = (groups & 0x10) != 0
    more = np.where(sign, rest != -1, rest != 0)
    if more[:, -1].any():
        raise ValueError(f"run length {int(x[more[:, -1]][0])} does not fit in {_MAX_GROUPS} groups of 5 bits")
    # A value uses groups 0..n-1, where n-1 is the first group after which nothing more is needed.
    n_groups = np.argmin(more, axis=1) + 1
    chars = (groups + 48 + np.where(more, 32, 0)).astype(np.uint8)
    keep = _SHIFTS[None, :] < (n_groups[:, None] * 5)
    return chars[keep].tobytes()


def counts_string_to_runs(text: bytes) -> np.ndarray:
    """Read a compressed counts string back into run lengths (pycocotools' ``rleFrString``).

    Raises ``ValueError`` for characters outside ``'0'..'o'``, a truncated last number, a number of
    more than 7 groups or a negative run length.

    >>> counts_string_to_runs(b'=331OO105NM').tolist()
    [13, 3, 3, 4, 2, 3, 3, 3, 8, 1, 5]
    """
    raw = np.frombuffer(text, dtype=np.uint8).astype(np.int64) - 48
    if raw.size == 0:
        raise ValueError("RLE counts string is empty")
    if raw.min() < 0 or raw.max() > 63:
        bad = int(np.flatnonzero((raw < 0) | (raw > 63))[0])
        raise ValueError(f"RLE counts string has an invalid character {chr(text[bad])!r} at offset {bad} (expected '0'..'o')")
    last = (raw & 0x20) == 0  # the group ends a number
    if not last[-1]:
        raise ValueError("RLE counts string is truncated: its last number has a continuation flag")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_GROUPS:
        raise ValueError(f"RLE counts string has a number of {int(lengths.max())} groups; at most {_MAX_GROUPS} fit a run length")
    position = np.arange(raw.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((raw & 0x1F) << (5 * position), starts)
    negative = (raw[ends] & 0x10) != 0
    values = values - np.where(negative, np.left_shift(1, 5 * lengths), 0)
    counts = values.copy()
    if counts.size > 3:
        counts[1::2] = np.cumsum(values[1::2])
        counts[2::2] = np.cumsum(values[2::2])
    if counts.min() < 0:
        raise ValueError(f"RLE counts string decodes to a negative run length at run {int(np.argmin(counts))}")
    return counts


# --------------------------------------------------------------------------- runs


def _pack(counts: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(runs_to_counts_string(counts), 9)).decode("ascii")


def _intervals_to_counts(starts: np.ndarray, ends: np.ndarray, total: int) -> np.ndarray:
    """Foreground intervals [start, end) in column-major order -> COCO run lengths."""
    if starts.size:
        # Merge a run that ends at the bottom of one column with one starting at the top of the next.
        joined = ends[:-1] == starts[1:]
        if joined.any():
            starts = starts[np.concatenate(([True], ~joined))]
            ends = ends[np.concatenate((~joined, [True]))]
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = ends
    bounds[-1] = total
    counts = np.diff(bounds)
    if counts.size > 1 and counts[-1] == 0:  # the mask ends with foreground: no trailing background run
        counts = counts[:-1]
    return counts


def _column_intervals(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Foreground runs inside each row of ``columns`` (one row per image column).

    Returns (column index, start row, column index, end row), sorted in column-major order.
    """
    n_cols, n_rows = columns.shape
    padded = np.zeros((n_cols, n_rows + 2), dtype=np.int8)
    padded[:, 1:-1] = columns
    step = np.diff(padded, axis=1)
    start_col, start_row = np.nonzero(step == 1)
    end_col, end_row = np.nonzero(step == -1)
    return start_col, start_row, end_col, end_row


def _check_size(height, width) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(height), int(width)


def _check_binary(mask, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {mask.shape}")
    if mask.shape[0] < 1 or mask.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"{name} must be bool or a numeric 0/1 array, got dtype {mask.dtype}")
    if np.any((mask != 0) & (mask != 1)):
        raise ValueError(f"{name} must hold only 0 and 1, got values in [{mask.min()}, {mask.max()}]")
    return mask != 0


# --------------------------------------------------------------------------- public API


def encode_mask(mask: np.ndarray) -> str:
    """Encode an (H, W) binary mask as the competition's EncodedMask string.

    Parameters
    ----------
    mask : ndarray, shape (H, W)
        bool, or numbers that are all 0 or 1.

    Returns
    -------
    str
        base64 ASCII of the zlib (level 9) compressed COCO counts string of the column-major mask.

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D, is empty, or holds values other than 0 and 1.

    Examples
    --------
    >>> encode_mask(np.zeros((2048, 2048), dtype=bool))
    'eNoLCAgIMAEABJkBdQ=='
    >>> encode_mask(np.ones((4, 4), dtype=np.uint8))
    'eNozSDAAAAGDAME='
    """
    mask = _check_binary(mask)
    height, width = mask.shape
    start_col, start_row, end_col, end_row = _column_intervals(mask.T)
    return _pack(_intervals_to_counts(start_col * height + start_row, end_col * height + end_row, height * width))


def encode_label_crop(label_crop: np.ndarray, cell_id: int, bbox, height: int, width: int) -> str:
    """Encode one cell of a label image from its bounding-box crop, without an (H, W) mask.

    The result equals ``encode_mask(label == cell_id)`` on the full label image, byte for byte, as
    long as the cell has no pixel outside ``bbox``.

    Parameters
    ----------
    label_crop : ndarray, shape (y1 - y0, x1 - x0)
        Integer label image cut to ``bbox``; pixels equal to ``cell_id`` are the cell.
    cell_id : int
        The cell's value in the label image.
    bbox : (y0, x0, y1, x1)
        Position of the crop in the image, ends exclusive.
    height, width : int
        Size of the full image.

    Returns
    -------
    str
        The EncodedMask of the cell at size (height, width).

    Examples
    --------
    >>> label = np.zeros((6, 8), dtype=np.int32)
    >>> label[1:4, 2:6] = 7
    >>> encode_label_crop(label[1:4, 2:6], 7, (1, 2, 4, 6), 6, 8) == encode_mask(label == 7)
    True
    """
    height, width = _check_size(height, width)
    label_crop = np.asarray(label_crop)
    if label_crop.ndim != 2:
        raise ValueError(f"label_crop must be a 2-D array, got shape {label_crop.shape}")
    try:
        y0, x0, y1, x1 = (int(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be four integers (y0, x0, y1, x1), got {bbox!r}") from None
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"bbox {(y0, x0, y1, x1)} does not lie inside an image of height {height} and width {width}")
    if label_crop.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"label_crop has shape {label_crop.shape} but bbox {(y0, x0, y1, x1)} needs {(y1 - y0, x1 - x0)}")
    return _encode_crop(label_crop == cell_id, y0, x0, height, width)


def _encode_crop(cell: np.ndarray, y0: int, x0: int, height: int, width: int) -> str:
    start_col, start_row, end_col, end_row = _column_intervals(cell.T)
    starts = (start_col + x0) * height + start_row + y0
    ends = (end_col + x0) * height + end_row + y0
    return _pack(_intervals_to_counts(starts, ends, height * width))


def encode_label_image(label: np.ndarray, ids: Iterable[int] | None = None) -> dict[int, str]:
    """Encode every cell of a label image (0 = background) from its bounding box.

    Parameters
    ----------
    label : ndarray, shape (H, W)
        Non-negative integer label image.
    ids : iterable of int, optional
        Cells to encode; default every non-zero value present.

    Returns
    -------
    dict
        Cell id -> EncodedMask at the size of ``label``, in ascending id order.

    Raises
    ------
    ValueError
        If ``label`` is not a 2-D non-negative integer array, or an id of ``ids`` is 0 or absent.

    Examples
    --------
    >>> label = np.zeros((5, 7), dtype=np.uint16)
    >>> label[0, :] = 3; label[:, 6] = 3
    >>> encode_label_image(label)
    {3: 'eNozMDQxgAMTABP/Aqo='}
    """
    from scipy import ndimage

    label = np.asarray(label)
    if label.ndim != 2 or label.shape[0] < 1 or label.shape[1] < 1:
        raise ValueError(f"label must be a non-empty 2-D array, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be an integer label image, got dtype {label.dtype}")
    if label.size and label.min() < 0:
        raise ValueError(f"label must be non-negative, got minimum {label.min()}")
    height, width = label.shape
    boxes = ndimage.find_objects(label)
    present = [i + 1 for i, box in enumerate(boxes) if box is not None]
    if ids is None:
        wanted = present
    else:
        wanted = sorted({int(i) for i in ids})
        missing = [i for i in wanted if i < 1 or i > len(boxes) or boxes[i - 1] is None]
        if missing:
            raise ValueError(f"ids {missing[:10]} are not cells of the label image (present: {len(present)} cells, ids 1..{len(boxes)})")
    out = {}
    for cell_id in wanted:
        rows, cols = boxes[cell_id - 1]
        crop = label[rows, cols] == cell_id
        out[cell_id] = _encode_crop(crop, rows.start, cols.start, height, width)
    return out


def max_counts_length(height: int, width: int) -> int:
    """The longest counts string that the RLE of a ``height`` x ``width`` mask can have: ``2 H W + 16``.

    Decompression of an EncodedMask stops there (a zlib bomb is refused, not inflated). The bound:
    with ``N = H W`` pixels, the runs ``c_0 >= 0`` and ``c_1.. >= 1`` sum to ``N``. The first three
    are written as they are, each later one as ``x_i = c_i - c_(i-2)``, ``|x_i| <= c_i + c_(i-2)``.
    A value ``v`` takes ``ceil((bit_length(|v|) + 1) / 5)`` characters, which is at most ``|v|``
    for ``|v| >= 1`` and 1 for ``v = 0``. So ``c_0`` takes at most 7 characters, ``c_1`` and
    ``c_2`` at most themselves, and ``x_i`` at most ``c_i + c_(i-2)``: in all at most
    ``7 + 2 N``. The margin of 16 rounds that up.

    >>> max_counts_length(2048, 2048)
    8388624
    """
    return 2 * int(height) * int(width) + 16


def _unpack(encoded, height: int, width: int) -> np.ndarray:
    """EncodedMask -> run lengths, checked against height * width."""
    if isinstance(encoded, str):
        try:
            data = encoded.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("EncodedMask is not ASCII text") from None
    elif isinstance(encoded, (bytes, bytearray)):
        data = bytes(encoded)
    else:
        raise ValueError(f"EncodedMask must be a str, got {type(encoded).__name__}")
    if not data:
        raise ValueError("EncodedMask is empty")
    try:
        compressed = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"EncodedMask is not valid base64 ({exc})") from None
    limit = max_counts_length(height, width)
    inflater = zlib.decompressobj()
    try:
        counts_text = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"EncodedMask base64 payload is not zlib data ({exc})") from None
    if len(counts_text) > limit:
        raise ValueError(
            f"EncodedMask inflates to more than {limit} bytes, more than the RLE of any {height} x {width} mask "
            "needs (a zlib bomb?); decompression was stopped"
        )
    if not inflater.eof:
        raise ValueError("EncodedMask base64 payload is not complete zlib data (truncated stream)")
    counts = counts_string_to_runs(counts_text)
    total = int(counts.sum())
    if total != height * width:
        raise ValueError(
            f"EncodedMask RLE covers {total} pixels but the image has height*width = {height}*{width} = {height * width}"
            " (wrong ImageWidth/ImageHeight, or a mask from another image)"
        )
    return counts


def decode_runs(encoded: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground runs of an EncodedMask as column-major pixel intervals ``[starts, ends)``.

    A pixel (row r, column c) has the column-major index ``c * height + r``. This avoids building
    the (H, W) mask when only boxes, areas or pixel lists are needed. Every interval holds at least
    one pixel: a foreground run of length 0 (which no encoder writes, but a string may hold) is left
    out, so an empty mask has no interval.

    >>> decode_runs('eNozSDAAAAGDAME=', 4, 4)
    (array([0]), array([16]))
    """
    height, width = _check_size(height, width)
    counts = _unpack(encoded, height, width)
    bounds = np.cumsum(counts)
    starts, ends = bounds[0:-1:2], bounds[1::2]
    keep = ends > starts
    return starts[keep], ends[keep]


def mask_area(encoded: str, height: int, width: int) -> int:
    """Number of foreground pixels of an EncodedMask; checks the string like :func:`decode_mask`.

    >>> mask_area('eNoLCAgIMAEABJkBdQ==', 2048, 2048)
    0
    """
    height, width = _check_size(height, width)
    return int(_unpack(encoded, height, width)[1::2].sum())


def decode_mask(encoded: str, height: int, width: int) -> np.ndarray:
    """Decode an EncodedMask into an (H, W) bool mask.

    Parameters
    ----------
    encoded : str
        base64 of the zlib-compressed COCO counts string.
    height, width : int
        ImageHeight (rows) and ImageWidth (columns) of the submission row.

    Returns
    -------
    ndarray of bool, shape (height, width)

    Raises
    ------
    ValueError
        If the text is not base64, the payload is not zlib data, the counts string is malformed, or
        the runs do not cover exactly ``height * width`` pixels.

    Examples
    --------
    >>> decode_mask('eNozMDQxgAMTABP/Aqo=', 5, 7).astype(int)[:2]
    array([[1, 1, 1, 1, 1, 1, 1],
           [0, 0, 0, 0, 0, 0, 1]])
    """
    height, width = _check_size(height, width)
    counts = _unpack(encoded, height, width)
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(width, height).T)

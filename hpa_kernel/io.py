"""Reading HPA images and the Kaggle competition folder.

An HPA image is four single-channel files, ``{ID}_red``, ``{ID}_green``, ``{ID}_blue`` and
``{ID}_yellow``, as 8-bit PNG (Kaggle), 16-bit PNG or TIFF (the public HPA data) or JPG.
:func:`read_image` returns them stacked as an (H, W, 4) array in the order R, G, B, Y with the
file's dtype preserved.

A file with several colour planes where one channel is expected is reduced to one plane:
if the colour planes are identical (a grey image saved as RGB) that plane is used, otherwise the
per-pixel maximum over the colour planes (R, G, B) is used, which recovers the signal of the
colour-coded HPA downloads (red in R, green in G, blue in B, yellow in R and G) and is logged as a
WARNING naming the file, since it changes the data. An alpha plane is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_kernel import paths
from hpa_kernel.readers import parse_column, read_csv, read_text

__all__ = [
    "CHANNELS",
    "EXTENSIONS",
    "ImageReadError",
    "check_image_id",
    "Competition",
    "channel_path",
    "read_channel",
    "read_image",
    "write_image",
    "to_float",
    "list_image_ids",
    "find_competition",
    "atomic_write",
    "read_json_object",
]

logger = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


class ImageReadError(ValueError):
    """A channel file exists but cannot be decoded, or the channels do not fit together."""


def check_image_id(image_id: str) -> str:
    """Return ``image_id`` if it is a plain file-name stem, else raise ``ValueError`` naming it.

    IDs come from CSV files (the sample submission, ``train.csv``) and become parts of file names
    (``{ID}_red.png``, ``crops/{ID}_{cell}.png``); a plain name keeps every read and write inside
    the folder it was meant for.

    Raises
    ------
    ValueError
        If the ID is not a non-empty str, or holds ``/``, ``\\``, a NUL byte or ``..``, or is
        absolute (``C:`` style included).

    Examples
    --------
    >>> check_image_id("5d4a2e3f-bba4-11e8-b2b9-ac1f6b6435d0")
    '5d4a2e3f-bba4-11e8-b2b9-ac1f6b6435d0'
    >>> check_image_id("../train/abc")
    Traceback (most recent call last):
    ...
    ValueError: image ID '../train/abc' is not a plain name: it contains a path separator; IDs must not contain '/', '\\', NUL or '..'
    """
    if not isinstance(image_id, str) or not image_id:
        reason = "it is empty" if isinstance(image_id, str) else f"it is a {type(image_id).__name__}, not a str"
    elif "/" in image_id or "\\" in image_id:
        reason = "it contains a path separator"
    elif "\x00" in image_id:
        reason = "it contains a NUL byte"
    elif ".." in image_id:
        reason = "it contains '..'"
    elif Path(image_id).is_absolute() or (len(image_id) > 1 and image_id[1] == ":"):
        reason = "it is an absolute path"
    else:
        return image_id
    raise ValueError(f"image ID {image_id!r} is not a plain name: {reason}; IDs must not contain '/', '\\', NUL or '..'")


def channel_path(folder: str | Path, image_id: str, channel: str) -> Path | None:
    """The file of one channel of an image, trying each extension of :data:`EXTENSIONS`; None if absent.

    Raises ``ValueError`` if ``image_id`` is not a plain name (:func:`check_image_id`).
    """
    check_image_id(image_id)
    folder = Path(folder)
    for ext in EXTENSIONS:
        path = folder / f"{image_id}_{channel}{ext}"
        if path.is_file():
            return path
    return None


def read_channel(path: str | Path) -> np.ndarray:
    """Read one channel file as a 2-D array with its dtype preserved.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImageReadError
        If the file cannot be decoded (corrupt or not an image) or has an unsupported layout.
    """
    from hpa_kernel._cv2 import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"channel file {path} does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError(f"cannot decode {path}: the file is corrupt or not a PNG/TIFF/JPG image")
    if image.ndim == 3:
        planes = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
        if planes.shape[2] == 1 or all(np.array_equal(planes[..., 0], planes[..., k]) for k in range(1, planes.shape[2])):
            image = planes[..., 0]
        else:
            logger.warning("%s has %d different colour planes where one channel is expected; using their per-pixel "
                           "maximum", path, planes.shape[2])
            image = planes.max(axis=2)
    if image.ndim != 2:
        raise ImageReadError(f"{path}: expected a single-channel image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def read_image(folder: str | Path, image_id: str) -> np.ndarray:
    """Read the four channels of ``image_id`` from ``folder`` as an (H, W, 4) R, G, B, Y array.

    Parameters
    ----------
    folder : path
        Folder in the Kaggle layout (``{ID}_red.png`` and so on).
    image_id : str
        The image ID.

    Returns
    -------
    image : ndarray, shape (H, W, 4)
        dtype as stored (uint8 for Kaggle PNGs, uint16 for 16-bit PNG/TIFF).

    Raises
    ------
    FileNotFoundError
        Naming every missing channel file.
    ImageReadError
        If a file is corrupt, or the channels differ in size or dtype.
    """
    folder = Path(folder)
    found = {c: channel_path(folder, image_id, c) for c in CHANNELS}
    missing = [c for c, p in found.items() if p is None]
    if missing:
        names = ", ".join(f"{image_id}_{c}.png" for c in missing)
        raise FileNotFoundError(
            f"image {image_id}: missing channel file(s) {names} in {folder} "
            f"(any of the extensions {', '.join(EXTENSIONS)} is accepted)"
        )
    planes = {c: read_channel(p) for c, p in found.items()}
    shapes = {c: a.shape for c, a in planes.items()}
    if len(set(shapes.values())) != 1:
        detail = ", ".join(f"{c} {h}x{w} ({found[c].name})" for c, (h, w) in shapes.items())
        raise ImageReadError(f"image {image_id} in {folder}: channels differ in size (HxW), expected one size: {detail}")
    dtypes = {c: a.dtype for c, a in planes.items()}
    if len(set(dtypes.values())) != 1:
        detail = ", ".join(f"{c} {d} ({found[c].name})" for c, d in dtypes.items())
        raise ImageReadError(f"image {image_id} in {folder}: channels differ in bit depth, expected one: {detail}")
    return np.stack([planes[c] for c in CHANNELS], axis=-1)


def write_image(folder: str | Path, image_id: str, image: np.ndarray, ext: str = ".png") -> list[Path]:
    """Write an (H, W, 4) R, G, B, Y array as four channel files; returns their paths.

    ``ext`` is one of :data:`EXTENSIONS`, so that :func:`read_image` finds the files.
    """
    from hpa_kernel._cv2 import cv2

    check_image_id(image_id)
    if ext not in EXTENSIONS:
        raise ValueError(f"ext must be one of {', '.join(EXTENSIONS)} (the files read_image finds), got {ext!r}")
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"image must have shape (H, W, 4), got {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image must be uint8 or uint16, got {image.dtype}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, c in enumerate(CHANNELS):
        path = folder / f"{image_id}_{c}{ext}"
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(image[..., k]))
        if not ok:
            raise ImageReadError(f"cannot encode {path}")
        buf.tofile(path)
        out.append(path)
    return out


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], needed_bytes: int | None = None) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    ``write(tmp)`` puts the content at the temporary path. Readers see the old file or the new one,
    never a partial one, and a failed write leaves no temporary file behind. Returns ``path``.

    Raises
    ------
    hpa_kernel.diskspace.DiskFullError
        When the disk or the quota is full (``ENOSPC``, ``EDQUOT``); it names ``path`` and
        ``needed_bytes`` (the size of the content, where the caller knows it).
    """
    from hpa_kernel.diskspace import disk_full_error, is_disk_full

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        tmp.unlink(missing_ok=True)
        raise disk_full_error(exc, path, needed_bytes) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json_object(path: str | os.PathLike, what: str, error: type[ValueError] = ValueError) -> dict:
    """Read a JSON file that must hold an object, with errors that name ``what`` and the file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError (or ``error``)
        If the file is not UTF-8 or not valid JSON (naming the line and column), or holds something
        other than an object.
    """
    path = Path(path)
    try:
        text = read_text(path, what)
    except ValueError as exc:  # not UTF-8: the message names the line and column
        raise error(f"{exc}; expected JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path}, line {exc.lineno}, column {exc.colno}: is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a JSON object, got {type(data).__name__}")
    return data


def to_float(image: np.ndarray) -> np.ndarray:
    """Convert an image to float32 in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1.

    Float input is returned as float32, unscaled.

    >>> to_float(np.array([[0, 255]], dtype=np.uint8)).tolist()
    [[0.0, 1.0]]
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535)
    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise ValueError(f"unsupported image dtype {image.dtype}: expected uint8, uint16, bool or float")


def list_image_ids(folder: str | Path) -> list[str]:
    """IDs in ``folder`` that have a red channel file, sorted."""
    folder = Path(folder)
    ids = set()
    for ext in EXTENSIONS:
        ids.update(p.name[: -len(f"_red{ext}")] for p in folder.glob(f"*_red{ext}"))
    return sorted(ids)


@dataclass(frozen=True)
class Competition:
    """A competition folder in the Kaggle layout.

    ``train.csv`` (ID, Label), ``sample_submission.csv`` (ID, ImageWidth, ImageHeight,
    PredictionString; read it with :func:`hpa_kernel.submission.read_sample_submission`, which
    knows that format), ``train/`` and ``test/``. The synthetic generator also writes the truth for
    its test images under ``truth/`` (``test_cells.csv`` and ``test_masks.npz``).
    """

    root: Path

    @property
    def train_csv(self) -> Path:
        return self.root / "train.csv"

    @property
    def sample_submission(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def truth_dir(self) -> Path:
        return self.root / "truth"

    def truth_cells(self, split: str = "test") -> Path:
        return self.truth_dir / f"{split}_cells.csv"

    def truth_masks(self, split: str = "test") -> Path:
        return self.truth_dir / f"{split}_masks.npz"

    def read_train(self):
        """``train.csv`` as a DataFrame with a ``labels`` column of parsed class-id tuples.

        Raises
        ------
        FileNotFoundError
            If ``train.csv`` does not exist.
        ValueError
            Naming the file, the line and the column: not UTF-8, columns other than ``ID,Label``
            first, or a ``Label`` that is not class ids joined by ``|``.
        """
        from hpa_kernel.classes import parse_labels

        df = read_csv(self.train_csv, "train.csv", dtype={"ID": str, "Label": str})
        if list(df.columns[:2]) != ["ID", "Label"]:
            raise ValueError(f"{self.train_csv}, line 1: expected columns ID,Label, got {','.join(df.columns)}")
        df["labels"] = parse_column(df["Label"], parse_labels, path=self.train_csv, column="Label",
                                    expected="class ids 0..18 joined by '|'")
        return df


def _is_competition(path: Path) -> bool:
    return (path / "sample_submission.csv").is_file() or (path / "train.csv").is_file()


def find_competition(path: str | Path | None = None, kaggle_root: Path | None = None) -> Competition:
    """Locate the competition folder: ``path``, then ``$HPA_KERNEL_DATA``, then the Kaggle input folders (:mod:`hpa_kernel.paths`).

    Raises
    ------
    FileNotFoundError
        If no folder with ``sample_submission.csv`` or ``train.csv`` is found.
    """
    root = paths.resolve_dir(path, paths.DATA_ENV, _is_competition, "competition folder", kaggle_root)
    if not _is_competition(root):
        raise FileNotFoundError(f"{root} is not a competition folder: it has neither sample_submission.csv nor train.csv")
    return Competition(root)

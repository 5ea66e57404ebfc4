"""The cells to label and their crops: reading ``cells.csv``, safe crop paths, rendering for display.

``cells.csv`` is the training set written by ``hpa-kernel cells`` (docs/DESIGN.md): columns
``image_id, cell_id, crop, ..., valid, labels`` where ``crop`` is a path relative to the csv's
folder of a 4-channel PNG whose planes are R, G, B, Y as stored, and ``labels`` the image-level
labels (``0|5|16``). The table is read by :func:`hpa_kernel.cells.table.read_cells_table`, so it
must have every column the cells stage writes (``valid`` included). The cells shown for a class are
the rows whose image labels contain the class and whose ``valid`` is true, ordered by
``(image_id, cell_id)``.
A cell that the cells stage flagged invalid has no crop file (``crop`` empty); it is kept in the
table but never shown.

Every crop must lie under one crops folder (by default ``crops/`` beside the csv). The web server
serves only the files of this table, looked up by their path relative to that folder, so a request
can never reach a file elsewhere (see :meth:`CellTable.resolve`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from hpa_kernel.cells.builder import read_crop  # read_crop is re-exported for the server
from hpa_kernel.classes import class_id

__all__ = ["LabelCell", "CellTable", "read_crop", "render_crop", "VIEWS"]

logger = logging.getLogger(__name__)

VIEWS = ("composite", "green")


@dataclass(frozen=True)
class LabelCell:
    """One cell crop: its ids, the crop path relative to the crops folder, and its image labels."""

    image_id: str
    cell_id: int
    crop: str
    labels: tuple[int, ...]
    valid: bool = True

    @property
    def key(self) -> tuple[str, int]:
        return (self.image_id, self.cell_id)


class CellTable:
    """The rows of ``cells.csv`` with their crop files checked to lie under ``crops_dir``.

    Parameters
    ----------
    cells_csv : path
        The ``cells.csv`` of ``hpa-kernel cells``.
    crops_dir : path, optional
        Folder that holds every crop; default ``crops/`` beside ``cells_csv``. Crop paths in the
        csv are relative to the csv's folder and must resolve inside this folder.

    Raises
    ------
    FileNotFoundError
        If ``cells_csv`` or ``crops_dir`` does not exist.
    ValueError
        If the table is not a well-formed ``cells.csv`` (see
        :func:`~hpa_kernel.cells.table.read_cells_table`: a column missing, a field that cannot be
        parsed, a valid cell without a crop, two rows sharing an ``(image_id, cell_id)``, no
        cell at all) or a crop lies outside ``crops_dir``.
    """

    def __init__(self, cells_csv: str | Path, crops_dir: str | Path | None = None):
        cells_csv = Path(cells_csv)
        if not cells_csv.is_file():
            raise FileNotFoundError(f"cells file {cells_csv} does not exist (write it with `hpa-kernel cells`)")
        crops_dir = Path(crops_dir) if crops_dir is not None else cells_csv.parent / "crops"
        if not crops_dir.is_dir():
            raise FileNotFoundError(f"crops folder {crops_dir} does not exist (pass the folder that holds the crops)")
        self.cells_csv = cells_csv
        self.crops_dir = crops_dir.resolve()
        self.cells: list[LabelCell] = []
        self._by_crop: dict[str, LabelCell] = {}
        self._by_key: dict[tuple[str, int], LabelCell] = {}
        self._read(cells_csv)

    def _read(self, cells_csv: Path) -> None:
        from hpa_kernel.cells.table import read_cells_table

        table = read_cells_table(cells_csv, valid_only=False, crops_root=self.crops_dir)  # refuses crops outside
        for image_id, cell_id, crop, path, labels, valid in zip(
            table["image_id"], table["cell_id"], table["crop"], table["crop_path"], table["label_ids"], table["valid"]
        ):
            relative = Path(path).relative_to(self.crops_dir).as_posix() if crop.strip() else ""
            cell = LabelCell(image_id=image_id, cell_id=int(cell_id), crop=relative, labels=labels, valid=bool(valid))
            self._by_key[cell.key] = cell
            if cell.crop:
                self._by_crop[cell.crop] = cell
            self.cells.append(cell)
        self.cells.sort(key=lambda c: c.key)
        logger.info("%s: %d cells, crops in %s", cells_csv, len(self.cells), self.crops_dir)

    def __len__(self) -> int:
        return len(self.cells)

    def for_class(self, name_or_id: str | int) -> list[LabelCell]:
        """The valid cells whose image labels contain the class, ordered by ``(image_id, cell_id)``."""
        cid = class_id(name_or_id)
        return [c for c in self.cells if c.valid and cid in c.labels]

    def classes_present(self) -> list[int]:
        """Class ids carried by at least one valid cell, sorted."""
        return sorted({k for c in self.cells if c.valid for k in c.labels})

    def get(self, image_id: str, cell_id: int) -> LabelCell | None:
        return self._by_key.get((image_id, cell_id))

    def resolve(self, relative: str) -> Path | None:
        """The file of a crop given its path relative to the crops folder, or None.

        Only crops listed in the table are found; an absolute path, a ``..`` component, a NUL
        byte or anything that resolves outside the crops folder gives None.
        """
        if not relative or "\x00" in relative or "\\" in relative:
            return None
        pure = PurePosixPath(relative)
        if pure.is_absolute() or any(part in ("..", ".", "") for part in relative.split("/")):
            return None
        if pure.as_posix() not in self._by_crop:
            return None
        path = (self.crops_dir / pure).resolve()
        if not path.is_relative_to(self.crops_dir) or not path.is_file():
            return None
        return path


def render_crop(crop: np.ndarray, view: str = "composite", size: int = 448, gain: float = 1.0) -> bytes:
    """Render a crop for display as PNG bytes.

    Parameters
    ----------
    crop : ndarray, shape (H, W, 4)
        Planes R, G, B, Y; uint8, uint16 or float in [0, 1].
    view : {"composite", "green"}
        ``composite``: the HPA colour convention, red = R + Y/2, green = G + Y/2, blue = B
        (yellow shows as yellow). ``green``: the protein channel alone, as grey.
    size : int
        The longer side of the output, in pixels (aspect kept).
    gain : float
        Brightness multiplier before clipping, for faint stains (> 0).

    Returns
    -------
    bytes
        A PNG file.
    """
    from hpa_kernel._cv2 import cv2

    from hpa_kernel.io import to_float

    if crop.ndim != 3 or crop.shape[2] != 4:
        raise ValueError(f"crop must have shape (H, W, 4), got {crop.shape}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    if not 16 <= size <= 2048:
        raise ValueError(f"size must be in 16..2048, got {size}")
    if not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    x = to_float(crop)
    r, g, b, y = (x[..., k] for k in range(4))
    if view == "composite":
        out = np.stack([b, g + 0.5 * y, r + 0.5 * y], axis=-1)  # cv2 writes B, G, R
    else:
        out = g
    out = np.clip(out * np.float32(gain), 0, 1)
    out = (out * 255 + 0.5).astype(np.uint8)
    h, w = out.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new != (w, h):
        out = cv2.resize(out, new, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", out)
    if not ok:
        raise ValueError(f"cannot encode a {out.shape} image as PNG")
    return buf.tobytes()

"""4-channel augmentations of crops (S, S, 4), numpy and OpenCV: uint8 (kit2025) or float32 in [0, 1]
(milimed2021's 16-bit crops, scaled before augmenting as the team's torchvision ran on float tensors).

Each transform is a function ``f(crop, rng) -> crop`` of the same shape and dtype; :class:`Augmenter`
chains them as a :class:`~hpa_kernel.training.config.AugmentConfig` says, in the order
RandomResizer, RandomPad, flips, rotation by a multiple of 90 degrees, arbitrary rotation. Pixels
that enter from outside the crop are zero, like the background of a cell crop.

* **RandomResizer**: with probability ``p``, resize to a random side ``R`` in
  ``[lo * S, hi * S]`` (256-384 for S = 512) and back to ``S``: the network sees a blurred cell.
* **RandomPad**: with probability ``p``, pad each of the four sides independently by a random
  ``0 .. pad_max * S`` pixels (0-200 for S = 512), then resize back to ``S``: a smaller,
  off-centre cell.

With ``resize_last`` (milimed2021, the team's order) the RandomResizer and RandomPad do not resize
back: the flips and the rotation (``rotate_p`` 1, any angle in [-90, 90], nearest neighbour as
torchvision's ``RandomRotation``) act on the smaller or padded, possibly non-square, canvas, and
one final resize returns it to ``S`` x ``S``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hpa_kernel.training.config import AugmentConfig

__all__ = [
    "random_flip", "random_rot90", "rotate", "random_resize", "random_pad", "Augmenter", "to_display", "augmentation_grid",
    "write_augmentation_figure",
]

logger = logging.getLogger(__name__)


def _check(crop: np.ndarray) -> None:
    if crop.ndim != 3 or crop.shape[0] != crop.shape[1] or crop.shape[2] != 4:
        raise ValueError(f"crop must have shape (S, S, 4), got {crop.shape}")


def random_flip(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip left-right and up-down, each with probability 0.5."""
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    return np.ascontiguousarray(crop)


def random_rot90(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by 0, 90, 180 or 270 degrees, uniformly."""
    return np.ascontiguousarray(np.rot90(crop, int(rng.integers(4))))


def rotate(crop: np.ndarray, angle: float, nearest: bool = False) -> np.ndarray:
    """Rotate about the centre by ``angle`` degrees (counter-clockwise), bilinear (or nearest), zero outside; same size.

    >>> c = np.zeros((8, 8, 4), np.uint8); c[3:5, 3:5] = 255
    >>> bool((rotate(c, 90) == np.rot90(c)).all())
    True
    """
    from hpa_kernel._cv2 import cv2

    h, w = crop.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle), 1.0)
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(crop, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def random_resize(crop: np.ndarray, rng: np.random.Generator, size_range: tuple[float, float] = (0.5, 0.75)) -> np.ndarray:
    """RandomResizer: shrink to a random side in ``size_range`` x S and resize back to S."""
    from hpa_kernel._cv2 import cv2

    s = crop.shape[0]
    r = int(round(rng.uniform(*size_range) * s))
    r = min(max(r, 1), s)
    small = cv2.resize(crop, (r, r), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)


def random_pad(crop: np.ndarray, rng: np.random.Generator, pad_max: float = 200.0 / 512.0) -> np.ndarray:
    """RandomPad: pad each side by a random 0 .. pad_max x S pixels (zeros), then resize back to S."""
    from hpa_kernel._cv2 import cv2

    s = crop.shape[0]
    top, bottom, left, right = (int(v) for v in rng.integers(0, int(round(pad_max * s)) + 1, size=4))
    padded = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(0, 0, 0, 0))
    return cv2.resize(padded, (s, s), interpolation=cv2.INTER_AREA)


class Augmenter:
    """The augmentation pipeline of one :class:`AugmentConfig`; picklable for DataLoader workers.

    >>> aug = Augmenter(AugmentConfig(resize_p=1.0, pad_p=1.0))
    >>> aug(np.full((32, 32, 4), 9, np.uint8), np.random.default_rng(0)).shape
    (32, 32, 4)
    """

    def __init__(self, config: AugmentConfig):
        if not isinstance(config, AugmentConfig):
            raise ValueError(f"config must be an AugmentConfig, got {type(config).__name__}")
        self.config = config

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check(crop)
        c = self.config
        if c.resize_last:
            return self._team_order(crop, rng)
        if c.resize_p and rng.random() < c.resize_p:
            crop = random_resize(crop, rng, c.resize_range)
        if c.pad_p and rng.random() < c.pad_p:
            crop = random_pad(crop, rng, c.pad_max)
        return self._flip_and_rotate(crop, rng)

    def _flip_and_rotate(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The flips, the 90-degree turns and the free rotation that both orders share, in this order."""
        c = self.config
        if c.flip:
            crop = random_flip(crop, rng)
        if c.rotate90:
            crop = random_rot90(crop, rng)
        if c.rotate_p and rng.random() < c.rotate_p:
            crop = rotate(crop, rng.uniform(-c.rotate_max, c.rotate_max), c.rotate_nearest)
        return crop

    def _team_order(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Resize (no way back), pad, flips, rotation on that canvas, then one resize to S."""
        from hpa_kernel._cv2 import cv2

        c, s = self.config, crop.shape[0]
        if c.resize_p and rng.random() < c.resize_p:
            r = int(rng.integers(round(c.resize_range[0] * s), round(c.resize_range[1] * s) + 1))
            crop = cv2.resize(crop, (max(r, 1), max(r, 1)), interpolation=cv2.INTER_LINEAR)
        if c.pad_p and rng.random() < c.pad_p:
            top, bottom, left, right = (int(v) for v in rng.integers(0, int(round(c.pad_max * s)) + 1, size=4))
            crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(0, 0, 0, 0))
        crop = self._flip_and_rotate(crop, rng)
        if crop.shape[:2] != (s, s):
            crop = cv2.resize(np.ascontiguousarray(crop), (s, s), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(crop)

    def __repr__(self) -> str:
        return f"Augmenter({self.config})"


def to_display(crop: np.ndarray) -> np.ndarray:
    """An RGB view of an R, G, B, Y crop for figures: yellow is added to red and green.

    Returns (S, S, 3) uint8 in RGB order.
    """
    _check(crop)
    rgb = crop[..., :3].astype(np.float32)
    rgb[..., 0] += crop[..., 3] * 0.5
    rgb[..., 1] += crop[..., 3] * 0.5
    return np.clip(rgb, 0, 255).astype(np.uint8)


def augmentation_grid(crops: list[np.ndarray], configs: dict[str, AugmentConfig], n: int = 4, seed: int = 0,
                      margin: int = 4) -> np.ndarray:
    """A figure: one row per (crop, config) pair, the original then ``n`` augmented draws.

    Returns an RGB uint8 image; write it with ``cv2.imwrite(path, grid[..., ::-1])``.
    """
    from hpa_kernel._cv2 import cv2

    if not crops:
        raise ValueError("crops is empty: need at least one (S, S, 4) crop")
    rng = np.random.default_rng(seed)
    s = crops[0].shape[0]
    rows = []
    for crop in crops:
        if crop.shape != crops[0].shape:
            raise ValueError(f"all crops must have the same shape, got {crop.shape} and {crops[0].shape}")
        for label, config in configs.items():
            aug = Augmenter(config)
            first = to_display(crop).copy()
            cv2.putText(first, f"{label}: input", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            tiles = [first] + [to_display(aug(crop, rng)) for _ in range(n)]
            rows.append(tiles)
    h = len(rows) * (s + margin) + margin
    w = (n + 1) * (s + margin) + margin
    grid = np.full((h, w, 3), 255, np.uint8)
    for i, tiles in enumerate(rows):
        for j, tile in enumerate(tiles):
            y, x = margin + i * (s + margin), margin + j * (s + margin)
            grid[y:y + s, x:x + s] = tile
    return grid


def write_augmentation_figure(cells_csv, path, n_crops: int = 2, size: int = 192, n: int = 5, seed: int = 0) -> Path:
    """Write a grid PNG of the three groups' augmentations of a few crops of ``cells_csv``.

    Rows: for each of ``n_crops`` crops (the largest valid cells), one row per group (1, 2, 3); the
    first tile is the crop, the others ``n`` random draws. ``docs/augmentations.png`` is made by this.
    """
    from hpa_kernel._cv2 import cv2

    from hpa_kernel.training.config import group_config
    from hpa_kernel.training.dataset import CellDataset, read_cells_table

    table = read_cells_table(cells_csv).sort_values("area", ascending=False).head(n_crops)
    dataset = CellDataset(table["crop_path"], np.zeros((len(table), 0), np.float32), size)
    crops = [dataset.load(i) for i in range(len(dataset))]
    configs = {f"group {g}": group_config(g).augment for g in (1, 2, 3)}
    grid = augmentation_grid(crops, configs, n=n, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(grid[..., ::-1])):
        raise ValueError(f"cannot write {path}")
    return path

"""The segmenter interface shared by the HPA port and the classic fallback."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SegmentationMaps", "BaseSegmenter"]


@dataclass
class SegmentationMaps:
    """What the prediction stage hands to post-processing for one image.

    For the HPA segmenter these are hpacellseg's ``pred_nuclei``/``pred_cells`` outputs: (H, W, 3)
    uint8, channel 1 the border class x255 and channel 2 the interior class x255. Other segmenters
    may put their own intermediate maps here; only their own ``postprocess_fn`` reads them.
    """

    nuclei: np.ndarray
    cell: np.ndarray


class BaseSegmenter:
    """Two-stage segmenter. Subclasses implement :meth:`predict` and set :attr:`postprocess_fn`."""

    name: str = "base"
    #: picklable ``(SegmentationMaps) -> (nuclei_label, cell_label)``; runs in worker processes.
    postprocess_fn: Callable[[SegmentationMaps], tuple[np.ndarray, np.ndarray]]

    def predict(self, images: Sequence[np.ndarray]) -> list[SegmentationMaps]:
        """The prediction stage.

        Parameters
        ----------
        images : sequence of (H, W, 4) ndarray
            R, G, B, Y images.

        Returns
        -------
        list of SegmentationMaps
            One per image, in the order of ``images``.
        """
        raise NotImplementedError

    def settings(self) -> dict:
        """Everything that changes the output; part of the cache key of the cells stage."""
        return {"name": self.name}

    def segment(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Predict and post-process in this process. Returns (nuclei_label, cell_label) per image."""
        return [self.postprocess_fn(maps) for maps in self.predict(images)]

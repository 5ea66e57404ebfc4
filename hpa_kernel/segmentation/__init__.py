"""Cell segmentation: the faithful HPA-Cell-Segmentation port and a weight-free classic fallback.

One factory, :func:`create_segmenter`. A segmenter works in two stages so that the network can run
batched in the main process (CPU or CUDA) while the CPU post-processing runs in worker processes:

* ``segmenter.predict(images) -> list[SegmentationMaps]``
* ``segmenter.postprocess_fn(maps) -> (nuclei_label, cell_label)``: a picklable top-level callable
  that never touches torch or CUDA.

``segmenter.segment(images)`` runs both in process.
"""

from __future__ import annotations

from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps

__all__ = ["BaseSegmenter", "SegmentationMaps", "create_segmenter", "available_segmenters", "label_cell", "label_nuclei"]

_SEGMENTERS = {
    "hpa": ("hpa_kernel.segmentation.hpa", "HPASegmenter"),
    "classic": ("hpa_kernel.segmentation.classic", "ClassicSegmenter"),
}


def available_segmenters() -> list[str]:
    """Names accepted by :func:`create_segmenter`."""
    return sorted(_SEGMENTERS)


def create_segmenter(name: str, **kwargs) -> BaseSegmenter:
    """Create a segmenter by name.

    Parameters
    ----------
    name : {"hpa", "classic"}
        ``"hpa"``: the DPN-UNet nuclei and cell models of HPA-Cell-Segmentation followed by
        ``label_cell``; needs the official weight files (``nuclei=``, ``cell=``).
        ``"classic"``: nuclei from the blue channel, cells grown from them by watershed on red and
        yellow; needs no weights.
    **kwargs
        Passed to the segmenter's constructor.
    """
    import importlib

    if name not in _SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}: expected one of {', '.join(available_segmenters())}")
    module, cls = _SEGMENTERS[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


def __getattr__(attr):
    # label_cell / label_nuclei live in postprocess; imported on first use to keep this module light.
    if attr in ("label_cell", "label_nuclei"):
        from hpa_kernel.segmentation import postprocess

        return getattr(postprocess, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")

"""The HPA-Cell-Segmentation segmenter: hpacellseg's two DPN-UNets and ``label_cell``, batched.

:class:`HPASegmenter` reproduces ``CellSegmentator(scale_factor=0.25, multi_channel_model=True)``
of hpacellseg 0.1.8 followed by ``label_cell``, without hpacellseg or pytorch_zoo:

* the nuclei network sees the blue channel (three times), the cell network red, yellow and blue,
  both downscaled by ``scale_factor`` (:mod:`.preprocess`);
* images of the same size run through each network together, ``batch_size`` at a time (the
  original runs one image per call; with the pickled BatchNorm mode reproduced per image the
  outputs are the same, see :mod:`.dpn_unet`);
* the softmax maps are restored to (H, W, 3) uint8 exactly as ``pred_nuclei``/``pred_cells`` do
  (except that non-square images keep their orientation) and handed to
  :func:`~hpa_kernel.segmentation.postprocess.label_cell`.

Create it through the factory::

    seg = create_segmenter("hpa", nuclei="dpn_unet_nuclei_v1.pth", cell="dpn_unet_cell_3ch_v1.pth",
                           params=HPAParams(device="cuda", batch_size=8))
    maps = seg.predict(images)                    # network stage, main process
    labels = [seg.postprocess_fn(m) for m in maps]  # CPU stage, picklable for worker processes

The weight files are resolved from the argument (a file, or a folder holding the official name),
then ``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders. A missing file is an error; this
segmenter never falls back to the classic one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_kernel import paths
from hpa_kernel.manifest import SegmentationWeights
from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps

__all__ = ["HPASegmenter", "HPAParams", "NUCLEI_WEIGHTS", "CELL_WEIGHTS", "postprocess_maps", "resolve_weight_file"]

logger = logging.getLogger(__name__)

#: File names of the official weights (zenodo, hpacellseg 0.1.8), as the weights manifest names them.
NUCLEI_WEIGHTS: str = SegmentationWeights().nuclei.file
CELL_WEIGHTS: str = SegmentationWeights().cell.file


def postprocess_maps(maps: SegmentationMaps) -> tuple[np.ndarray, np.ndarray]:
    """``label_cell(maps.nuclei, maps.cell)``: (nuclei_label, cell_label), both uint16.

    A top-level function so that it pickles into worker processes; it imports no torch.
    """
    from hpa_kernel.segmentation.postprocess import label_cell

    return label_cell(maps.nuclei, maps.cell)


def resolve_weight_file(
    path: str | os.PathLike | None, filename: str, what: str, kaggle_root: Path | None = None
) -> Path:
    """Find a weight file: ``path`` (a file, or a folder with ``filename``), ``$HPA_KERNEL_WEIGHTS``, Kaggle inputs.

    :func:`hpa_kernel.paths.resolve_file` with ``$HPA_KERNEL_WEIGHTS``.

    Parameters
    ----------
    path : path or None
        A file, or a folder holding ``filename``. When given it must exist; nothing else is tried.
    filename : str
        The file name looked for in folders (:data:`NUCLEI_WEIGHTS`, :data:`CELL_WEIGHTS`).
    what : str
        ``"nuclei"`` or ``"cell"``, for the error message.
    kaggle_root : path, optional
        Override of the Kaggle input folder (tests).

    Returns
    -------
    Path
        The weight file.

    Raises
    ------
    FileNotFoundError
        Naming the file and every place that was looked at.
    """
    return paths.resolve_file(
        path, paths.WEIGHTS_ENV, filename, f"{what} weights", kaggle_root, hint=f"Pass {what}=PATH explicitly."
    )


BATCHNORM_MODES: tuple[str, ...] = ("pickled", "running", "per_image")


@dataclass(frozen=True)
class HPAParams:
    """Settings of the HPA segmenter (everything but the weight files), checked on creation.

    Parameters
    ----------
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None: CUDA when available, else the CPU
        (:func:`hpa_kernel.paths.resolve_device`, resolved when the segmenter is built).
    batch_size : int
        Images per network call (images of equal size only).
    fp16 : bool
        float16 autocast for the networks (CUDA only; ignored with a warning on CPU). Changes the
        output slightly.
    channels_last : bool
        NHWC memory format (CUDA only; ignored with a warning on CPU).
    scale_factor : float
        Downscaling before the networks, in (0, 1] (hpacellseg: 0.25).
    padding : bool
        hpacellseg's ``padding`` (default True, as the 4th-place team ran it): pad the network
        input by 32 on the top/left and up to the next multiple of 32 on the bottom/right, so that
        any H x W works (1728 -> 432 is not a multiple of 32). Without it, the scaled image sides
        must already be multiples of 32 (2048 -> 512), and the output differs near the borders.
    resize_mode : {"skimage018", "skimage"}
        Anti-aliasing of the downscale; see :mod:`.preprocess`. ``"skimage018"`` is the 2021
        behaviour.
    batchnorm : {"pickled", "running", "per_image"}
        BatchNorm statistics: as pickled in the weight files (what hpacellseg does), running
        statistics, or per-image statistics.
    nuclei_sha256, cell_sha256 : str, optional
        Expected hashes of the weight files.

    Examples
    --------
    >>> HPAParams(batch_size=8, padding=False).batch_size
    8
    >>> HPAParams(scale_factor=2.0)
    Traceback (most recent call last):
    ...
    ValueError: scale_factor must be in (0, 1], got 2.0
    """

    device: str | None = None
    batch_size: int = 4
    fp16: bool = False
    channels_last: bool = False
    scale_factor: float = 0.25
    padding: bool = True
    resize_mode: str = "skimage018"
    batchnorm: str = "pickled"
    nuclei_sha256: str | None = None
    cell_sha256: str | None = None

    def __post_init__(self):
        from hpa_kernel.segmentation.preprocess import _check_mode, _check_scale

        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))  # a torch.device
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        _check_scale(self.scale_factor)
        _check_mode(self.resize_mode)
        if self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {self.batchnorm!r}")
        for name in ("fp16", "channels_last", "padding"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("nuclei_sha256", "cell_sha256"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a hex string or None, got {value!r}")


def _check_images(images: Sequence[np.ndarray]) -> None:
    if isinstance(images, np.ndarray):
        raise ValueError("images must be a list of (H, W, 4) arrays, got a single array; wrap it in a list")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 4:
            found = getattr(image, "shape", type(image))
            raise ValueError(f"images[{i}] must be an (H, W, 4) R, G, B, Y array, got {found}")
        if image.size == 0:
            raise ValueError(f"images[{i}] is empty: got shape {image.shape}, expected at least 1 x 1 pixels")
        if not (image.dtype in (np.uint8, np.uint16) or np.issubdtype(image.dtype, np.floating)):
            raise ValueError(f"images[{i}] must be uint8, uint16 or float, got {image.dtype}")


class HPASegmenter(BaseSegmenter):
    """hpacellseg's nuclei and cell DPN-UNets plus ``label_cell``, with batched inference.

    Parameters
    ----------
    nuclei, cell : path, optional
        The weight files (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth``) or folders
        holding them. When omitted: ``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders.
    params : HPAParams, optional
        All other settings; defaults when omitted.
    **overrides
        Individual :class:`HPAParams` fields, applied on top of ``params``.

    Attributes
    ----------
    params : HPAParams
        The settings as given.
    device : torch.device
        The resolved device; ``fp16``, ``channels_last``, ``batch_size``, ``scale_factor``,
        ``padding`` and ``resize_mode`` hold the settings in effect (fp16 and channels_last are
        off on the CPU).
    """

    name = "hpa"
    postprocess_fn = staticmethod(postprocess_maps)

    def __init__(
        self,
        nuclei: str | os.PathLike | None = None,
        cell: str | os.PathLike | None = None,
        params: HPAParams | None = None,
        **overrides,
    ):
        import dataclasses

        import torch

        from hpa_kernel.segmentation.weights import load_dpn_unet

        if params is not None and not isinstance(params, HPAParams):
            raise ValueError(f"params: expected HPAParams, got {type(params).__name__}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(HPAParams)}
        if unknown:
            raise ValueError(f"unknown hpa segmenter setting(s) {sorted(unknown)}: expected fields of HPAParams")
        self.params = params = dataclasses.replace(params or HPAParams(), **overrides)  # checked before any loading
        self.device = torch.device(paths.resolve_device(params.device))
        on_cuda = self.device.type == "cuda"
        if not on_cuda:
            for flag in ("fp16", "channels_last"):
                if getattr(params, flag):
                    logger.warning("%s=True only applies on CUDA; ignored on %s", flag, self.device)
        self.batch_size = int(params.batch_size)
        self.fp16 = bool(params.fp16) and on_cuda
        self.channels_last = bool(params.channels_last) and on_cuda
        self.scale_factor = float(params.scale_factor)
        self.padding = bool(params.padding)
        self.resize_mode = params.resize_mode
        self.batchnorm = params.batchnorm

        self.nuclei_path = resolve_weight_file(nuclei, NUCLEI_WEIGHTS, "nuclei")
        self.cell_path = resolve_weight_file(cell, CELL_WEIGHTS, "cell")
        self.nuclei_net, self.nuclei_weights = load_dpn_unet(self.nuclei_path, params.nuclei_sha256, self.device, params.batchnorm)
        self.cell_net, self.cell_weights = load_dpn_unet(self.cell_path, params.cell_sha256, self.device, params.batchnorm)
        for net in (self.nuclei_net, self.cell_net):
            net.requires_grad_(False)
            if self.channels_last:
                net.to(memory_format=torch.channels_last)

    # -- settings ---------------------------------------------------------------------------------
    def settings(self) -> dict:
        """Everything that changes the output (cache key of the cells stage)."""
        from hpa_kernel.segmentation.postprocess import skimage_version

        return {
            "name": self.name,
            "nuclei_sha256": self.nuclei_weights.sha256,
            "cell_sha256": self.cell_weights.sha256,
            "nuclei_batchnorm_per_image": sorted(k for k, v in self.nuclei_net.batchnorm_stats().items() if v),
            "cell_batchnorm_per_image": sorted(k for k, v in self.cell_net.batchnorm_stats().items() if v),
            "scale_factor": self.scale_factor,
            "padding": self.padding,
            "resize_mode": self.resize_mode,
            "device": self.device.type,
            "fp16": self.fp16,
            "channels_last": self.channels_last,
            "postprocess": "label_cell",
            "skimage": skimage_version(),
        }

    # -- prediction -------------------------------------------------------------------------------
    def _network_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        from hpa_kernel.segmentation.preprocess import network_shape

        h, w = network_shape(shape, self.scale_factor, self.padding)
        if not self.padding and (h % 32 or w % 32):
            raise ValueError(
                f"an image of {shape[0]}x{shape[1]} scales to {h}x{w} at scale_factor={self.scale_factor}, "
                f"which is not a multiple of 32; use padding=True (or a scale that gives multiples of 32)"
            )
        return h, w

    def _run(self, net, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, 3, h, w) float32 for a float32 input batch."""
        import torch

        x = torch.from_numpy(batch).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.fp16:
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    logits = net(x)
            else:
                logits = net(x)
            prob = torch.softmax(logits.float(), dim=1)
        return prob.cpu().numpy()

    def _predict_group(self, images: list[np.ndarray]) -> list[SegmentationMaps]:
        from hpa_kernel.segmentation import preprocess

        geometry = {"scale_factor": self.scale_factor, "padding": self.padding}  # shared by input and restore
        resize = {**geometry, "resize_mode": self.resize_mode}
        shape = images[0].shape[:2]
        nuclei_in = np.stack([preprocess.nuclei_input(im[..., 2], **resize) for im in images])
        cell_in = np.stack([preprocess.cell_input(im[..., 0], im[..., 3], im[..., 2], **resize) for im in images])
        nuclei_prob = self._run(self.nuclei_net, nuclei_in)
        cell_prob = self._run(self.cell_net, cell_in)
        return [
            SegmentationMaps(
                nuclei=preprocess.restore_nuclei(nuclei_prob[i], shape, **geometry),
                cell=preprocess.restore_cell(cell_prob[i], shape, **geometry),
            )
            for i in range(len(images))
        ]

    def predict(self, images: Sequence[np.ndarray]) -> list[SegmentationMaps]:
        """Network stage for a list of (H, W, 4) R, G, B, Y images; the order of ``images`` is kept.

        Returns
        -------
        list of SegmentationMaps
            ``nuclei`` and ``cell``: (H, W, 3) uint8, channel 1 border x255, channel 2 interior
            x255, channel 0 zero (hpacellseg's ``pred_nuclei``/``pred_cells``).
        """
        _check_images(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            shape = image.shape[:2]
            self._network_shape(shape)
            groups.setdefault(shape, []).append(i)
        out: list[SegmentationMaps | None] = [None] * len(images)
        for shape, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                logger.debug("segmenting %d image(s) of %dx%d", len(chunk), *shape)
                for i, maps in zip(chunk, self._predict_group([images[i] for i in chunk])):
                    out[i] = maps
        return out

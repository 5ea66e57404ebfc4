"""The weights of a submission run, resolved and verified once.

:func:`resolve_weights` reads the weights manifest, chooses the segmenter, and checks every file the
run will read: the ensemble's checkpoints (present, each with its ``.json`` config, pinned hashes
matching) and, for the HPA segmenter, the two segmentation files (present). Everything downstream of
:func:`hpa_kernel.submission.run_submission` takes the :class:`ResolvedWeights` it returns and looks
nothing up again.

Each file is hashed once: the checkpoints here, the segmentation files by their loader
(:func:`hpa_kernel.segmentation.weights.load_weights`, which hashes every file it reads anyway), to
which :meth:`ResolvedWeights.segmenter_kwargs` passes the pinned hashes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpa_kernel.manifest import Manifest

__all__ = ["ResolvedWeights", "resolve_weights"]

logger = logging.getLogger(__name__)

SEGMENTERS = ("hpa", "classic", "custom")


@dataclass(frozen=True)
class ResolvedWeights:
    """The verified weights of one run.

    Parameters
    ----------
    manifest : Manifest
        The loaded manifest; its ``weights_dir`` is the folder every path below is in.
    segmenter : {"hpa", "classic", "custom"}
        The segmenter the run uses: ``"custom"`` when the caller passes a ready one.
    checkpoint_paths : tuple of tuple of Path
        The ensemble's checkpoints, group by group (verified).
    group_weights : tuple of float
        One weight per group; they sum to 1.
    checkpoint_weights : tuple of tuple of float
        Per group, the weights of its checkpoints; each tuple sums to 1.
    segmentation_paths : tuple of Path, optional
        ``(nuclei, cell)`` for the HPA segmenter (present); None otherwise.
    segmentation_sha256 : tuple of (str or None), optional
        Their pinned hashes (None: not pinned), checked when the segmenter loads them.
    """

    manifest: Manifest
    segmenter: str
    checkpoint_paths: tuple[tuple[Path, ...], ...]
    group_weights: tuple[float, ...]
    checkpoint_weights: tuple[tuple[float, ...], ...]
    segmentation_paths: tuple[Path, Path] | None = None
    segmentation_sha256: tuple[str | None, str | None] | None = None

    def __post_init__(self):
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}")
        if (self.segmenter == "hpa") != (self.segmentation_paths is not None):
            raise ValueError(f"segmentation_paths must be given exactly for the 'hpa' segmenter; got {self.segmentation_paths!r} for {self.segmenter!r}")

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """Checkpoints per group."""
        return tuple(len(g) for g in self.checkpoint_paths)

    def segmenter_kwargs(self) -> dict:
        """The keywords of ``create_segmenter("hpa", ...)`` that name the weights: the two paths,
        and the pinned hashes (only those that are pinned), which the loader checks as it reads."""
        if self.segmentation_paths is None:
            raise ValueError(f"the {self.segmenter!r} segmenter has no segmentation weights")
        nuclei, cell = self.segmentation_paths
        kwargs = {"nuclei": nuclei, "cell": cell}
        for key, digest in zip(("nuclei_sha256", "cell_sha256"), self.segmentation_sha256 or (None, None), strict=True):
            if digest is not None:
                kwargs[key] = digest
        return kwargs


def _choose_segmenter(requested: str | None, manifest: Manifest) -> str:
    if requested == "classic":
        return "classic"
    if manifest.segmentation_present():
        return "hpa"
    from hpa_kernel.options import say_option

    names = ", ".join(f.file for f in manifest.segmentation.files())
    raise FileNotFoundError(
        f"the HPA segmentation weights ({names}) are not in the weights folder {manifest.weights_dir}; "
        f"attach them, or set {say_option('segmenter', 'classic')} explicitly to use the weight-free classic segmenter"
    )


def resolve_weights(
    weights_dir: str | os.PathLike | None = None, segmenter: str | None = None, custom_segmenter: bool = False
) -> ResolvedWeights:
    """Load the manifest, choose the segmenter and verify every file the run will read.

    Parameters
    ----------
    weights_dir : path, optional
        The weights folder; default ``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders.
    segmenter : {"hpa", "classic"} or None
        The segmenter asked for; None means ``"hpa"``, which needs the manifest's segmentation files.
    custom_segmenter : bool
        The caller brings a ready segmenter: no segmentation file is needed.

    Returns
    -------
    ResolvedWeights

    Raises
    ------
    FileNotFoundError
        The weights folder, the manifest or a file the run needs is missing (the message names it;
        for the segmentation files it also names the classic segmenter, as
        :func:`hpa_kernel.options.say_option` spells it for the caller).
    ManifestError
        The manifest is malformed, or a checkpoint's sha256 differs from the pinned one.
    """
    from hpa_kernel.manifest import load_manifest, verify_files

    manifest = load_manifest(weights_dir=weights_dir, verify=False)
    chosen = "custom" if custom_segmenter else _choose_segmenter(segmenter, manifest)
    verify_files(manifest, segmentation=False)  # the segmentation hashes are checked by their loader
    seg_paths = seg_sha = None
    if chosen == "hpa":
        seg = manifest.segmentation
        seg_paths = (manifest.path_of(seg.nuclei), manifest.path_of(seg.cell))
        seg_sha = (seg.nuclei.sha256, seg.cell.sha256)
        unpinned = [entry.file for entry in seg.files() if entry.sha256 is None]
        if unpinned:
            logger.warning("%d segmentation weight file(s) have no pinned sha256 and are used unchecked: %s", len(unpinned), ", ".join(unpinned))
    return ResolvedWeights(
        manifest=manifest,
        segmenter=chosen,
        checkpoint_paths=tuple(tuple(paths) for paths in manifest.checkpoint_paths()),
        group_weights=manifest.weights,
        checkpoint_weights=manifest.checkpoint_weights,
        segmentation_paths=seg_paths,
        segmentation_sha256=seg_sha,
    )

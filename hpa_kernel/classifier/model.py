"""Classifier factory over timm."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpa_kernel.classes import NUM_CLASSES

__all__ = ["create_classifier", "IMAGENET"]

logger = logging.getLogger(__name__)

#: ``pretrained`` value for timm's own ImageNet weights (timm downloads them: online only).
IMAGENET = "imagenet"


def create_classifier(arch: str = "efficientnet_b0", *, in_chans: int = 4, num_classes: int = NUM_CLASSES,
                      pretrained: str | os.PathLike | None = None, **kwargs):
    """Create a timm classifier, with random weights unless ``pretrained`` is given.

    Parameters
    ----------
    arch : str
        Any timm architecture name; the ensemble uses ``"efficientnet_b0"`` and the pseudo-labeller
        ``"resnet18"``.
    in_chans : int
        Input channels, 4 for R, G, B, Y.
    num_classes : int
        Outputs (logits), 19 by default.
    pretrained : str or path, optional
        None: random weights, nothing downloads. A file: ImageNet weights of ``arch`` from that
        local file (a timm state_dict, ``.pth``/``.bin``/``.safetensors``, with 3 input channels), loaded
        by timm's own mechanism (``pretrained_cfg_overlay=dict(file=...)``): timm adapts the stem
        to ``in_chans`` and drops the 1000-class head. ``"imagenet"``: timm fetches the weights
        from its hub (online only).
    **kwargs
        Passed to ``timm.create_model`` (e.g. ``drop_rate``).

    Returns
    -------
    torch.nn.Module
    """
    import timm

    if kwargs.pop("pretrained_cfg_overlay", None) is not None:
        raise ValueError("pass a local weight file as pretrained=PATH, not pretrained_cfg_overlay")
    if in_chans < 1 or num_classes < 1:
        raise ValueError(f"in_chans and num_classes must be positive, got {in_chans} and {num_classes}")
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r}")
    if pretrained is True:
        raise ValueError(f"pretrained=True would download weights; pass pretrained={IMAGENET!r} to fetch timm's "
                         "ImageNet weights (online), or a local weight file")
    if pretrained is None or pretrained is False:
        return timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
    if str(pretrained) == IMAGENET:
        logger.info("%s: ImageNet weights from timm's hub (needs the internet; offline pass pretrained=PATH)", arch)
        try:
            return timm.create_model(arch, pretrained=True, in_chans=in_chans, num_classes=num_classes, **kwargs)
        except OSError as exc:
            raise ValueError(f"cannot fetch the ImageNet weights of {arch} from timm's hub ({exc}); offline, pass a local "
                             "weight file (--pretrained PATH) or start from random weights (--pretrained none)") from exc
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weight file {path} not found (a timm state_dict of {arch}, or 'imagenet' or None)")
    logger.info("%s: ImageNet weights from %s (stem adapted to %d channels)", arch, path, in_chans)
    try:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=in_chans,
                                 num_classes=num_classes, **kwargs)
    except RuntimeError as exc:  # the state_dict does not fit the architecture
        raise ValueError(f"pretrained weight file {path} does not fit {arch}: {str(exc).splitlines()[0]}") from exc

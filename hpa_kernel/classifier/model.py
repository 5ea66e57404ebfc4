"""Classifier factory over timm."""

from __future__ import annotations

import logging

from hpa_kernel.classes import NUM_CLASSES

__all__ = ["create_classifier"]

logger = logging.getLogger(__name__)


def create_classifier(arch: str = "efficientnet_b0", *, in_chans: int = 4, num_classes: int = NUM_CLASSES, **kwargs):
    """Create a timm classifier with random weights (``pretrained=False``: nothing downloads).

    Parameters
    ----------
    arch : str
        Any timm architecture name; the ensemble uses ``"efficientnet_b0"`` and the pseudo-labeller
        ``"resnet18"``.
    in_chans : int
        Input channels, 4 for R, G, B, Y.
    num_classes : int
        Outputs (logits), 19 by default.
    **kwargs
        Passed to ``timm.create_model`` (e.g. ``drop_rate``).

    Returns
    -------
    torch.nn.Module
    """
    import timm

    if "pretrained" in kwargs and kwargs["pretrained"]:
        raise ValueError("pretrained=True would download weights; hpa-kernel never downloads at run time")
    kwargs.pop("pretrained", None)
    if in_chans < 1 or num_classes < 1:
        raise ValueError(f"in_chans and num_classes must be positive, got {in_chans} and {num_classes}")
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r}")
    return timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)

"""Classifier factory over timm."""

from __future__ import annotations

import logging
import os

from hpa_kernel.classes import NUM_CLASSES
from hpa_kernel.classifier.pretrained import HUB, IMAGENET

__all__ = ["create_classifier", "IMAGENET", "HUB"]

logger = logging.getLogger(__name__)


def create_classifier(arch: str = "efficientnet_b0", *, in_chans: int = 4, num_classes: int = NUM_CLASSES,
                      pretrained: str | os.PathLike | None = None, stem: str = "adapt", **kwargs):
    """Create a timm classifier, with random weights unless ``pretrained`` is given.

    Parameters
    ----------
    arch : str
        Any timm architecture name; the ensemble uses ``"tf_efficientnet_b0"`` (milimed2021) or
        ``"efficientnet_b0"`` (kit2025), the pseudo-labeller ``"resnet18"``.
    in_chans : int
        Input channels, 4 for R, G, B, Y.
    num_classes : int
        Outputs (logits), 19 by default.
    pretrained : str or path, optional
        None: random weights, nothing downloads. ``"imagenet"``: ImageNet weights from a local file
        found under its standard name (``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders; see
        :mod:`hpa_kernel.classifier.pretrained`); nothing downloads, a missing file fails at once.
        A path: ImageNet weights of ``arch`` from that file (or a folder holding the standard name):
        a 3-channel timm state_dict (``.pth``/``.bin``/``.safetensors``) or efficientnet_pytorch's
        B0 file. ``"hub"``: timm fetches the weights from its hub (online only). The 1000-class head
        is dropped.
    stem : str
        How the 3-channel ImageNet stem becomes ``in_chans`` channels: ``"adapt"`` (timm's
        ``adapt_input_conv``) or ``"random"`` (a new randomly initialised stem, as efficientnet_pytorch's
        ``from_pretrained(in_channels=4)``). Unused without ``pretrained``.
    **kwargs
        Passed to ``timm.create_model`` (e.g. ``drop_rate``, ``drop_path_rate``, ``bn_eps``).

    Returns
    -------
    torch.nn.Module
    """
    import timm

    from hpa_kernel.classifier import pretrained as imagenet

    if kwargs.pop("pretrained_cfg_overlay", None) is not None:
        raise ValueError("pass a local weight file as pretrained=PATH, not pretrained_cfg_overlay")
    if in_chans < 1 or num_classes < 1:
        raise ValueError(f"in_chans and num_classes must be positive, got {in_chans} and {num_classes}")
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r}")
    if stem not in imagenet.STEMS:
        raise ValueError(f"stem must be one of {imagenet.STEMS}, got {stem!r}")
    if pretrained is True:
        raise ValueError(f"pretrained=True would download weights; pass pretrained={HUB!r} to fetch timm's ImageNet weights "
                         f"(online), {IMAGENET!r} to find a local file by name, or a local weight file")
    model = timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
    if pretrained is None or pretrained is False:
        return model
    source = imagenet.resolve_pretrained(pretrained, arch)
    if source == HUB:
        state = imagenet.hub_state(arch)
    else:
        state = imagenet.read_imagenet_state(source)
        logger.info("%s: ImageNet weights from %s (stem: %s, %d channels)", arch, source, stem, in_chans)
    return imagenet.load_imagenet(model, state, stem=stem, source=source)

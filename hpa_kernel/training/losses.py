"""Multi-label losses on logits that accept soft targets in [0, 1]: focal and binary cross-entropy.

With ``p = sigmoid(x)`` and a target ``t``, the focal loss of one (cell, class) element is

    ``-(a * t * (1 - p)**gamma * log(p) + b * (1 - t) * p**gamma * log(1 - p))``

with ``a = alpha, b = 1 - alpha`` (or ``a = b = 1`` when ``alpha`` is None). ``gamma = 0`` and
``alpha = None`` give the binary cross-entropy. Both losses average over all elements.

The team's form (:func:`focal_loss_pt`, ``LossConfig(form="pt")``) weights the whole binary
cross-entropy of an element, ``BCE = -(t log p + (1 - t) log(1 - p))``, by ``alpha * (1 - pt)**gamma``
with ``pt = exp(-BCE)``. For hard targets the two forms agree (``alpha`` None or 1); for soft
targets they differ.
"""

from __future__ import annotations

import logging

from hpa_kernel.training.config import LossConfig

__all__ = ["focal_loss", "focal_loss_pt", "bce_loss", "create_loss"]

logger = logging.getLogger(__name__)


def _check(logits, targets) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")


def focal_loss(logits, targets, gamma: float = 2.0, alpha: float | None = None):
    """Mean focal loss over all elements; soft targets allowed.

    >>> import torch
    >>> round(focal_loss(torch.zeros(1, 1), torch.ones(1, 1)).item(), 5)  # 0.5**2 * log(2)
    0.17329
    """
    import torch.nn.functional as F

    _check(logits, targets)
    logits = logits.float()
    targets = targets.float()
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)
    p = log_p.exp()
    a, b = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    pos = a * targets * (1.0 - p).pow(gamma) * log_p
    neg = b * (1.0 - targets) * p.pow(gamma) * log_q
    return -(pos + neg).mean()


def focal_loss_pt(logits, targets, gamma: float = 2.0, alpha: float | None = 1.0):
    """Mean of ``alpha * (1 - pt)**gamma * BCE`` with ``pt = exp(-BCE)`` per element; soft targets allowed.

    >>> import torch
    >>> round(focal_loss_pt(torch.zeros(1, 1), torch.ones(1, 1)).item(), 5)  # 0.5**2 * log(2)
    0.17329
    """
    import torch.nn.functional as F

    _check(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    pt = (-bce).exp()
    return ((1.0 if alpha is None else alpha) * (1.0 - pt).pow(gamma) * bce).mean()


def bce_loss(logits, targets):
    """Mean binary cross-entropy on logits; soft targets allowed.

    >>> import torch
    >>> round(bce_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.3]])).item(), 5)  # log(2)
    0.69315
    """
    import torch.nn.functional as F

    _check(logits, targets)
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def create_loss(config: LossConfig):
    """The loss callable ``loss(logits, targets) -> scalar`` of a :class:`LossConfig`."""
    if not isinstance(config, LossConfig):
        raise ValueError(f"config must be a LossConfig, got {type(config).__name__}")
    if config.name == "bce":
        return bce_loss
    gamma, alpha = config.gamma, config.alpha
    focal = focal_loss_pt if config.form == "pt" else focal_loss

    def loss(logits, targets):
        return focal(logits, targets, gamma=gamma, alpha=alpha)

    return loss

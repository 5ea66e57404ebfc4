"""Multi-label losses on logits that accept soft targets in [0, 1]: focal and binary cross-entropy.

With ``p = sigmoid(x)`` and a target ``t``, the focal loss of one (cell, class) element is

    ``-(a * t * (1 - p)**gamma * log(p) + b * (1 - t) * p**gamma * log(1 - p))``

with ``a = alpha, b = 1 - alpha`` (or ``a = b = 1`` when ``alpha`` is None). ``gamma = 0`` and
``alpha = None`` give the binary cross-entropy. Both losses average over all elements.

The team's form (:func:`focal_loss_pt`, ``LossConfig(form="pt")``) weights the whole binary
cross-entropy of an element, ``BCE = -(t log p + (1 - t) log(1 - p))``, by ``alpha * (1 - pt)**gamma``
with ``pt = exp(-BCE)``. For hard targets the two forms agree (``alpha`` None or 1); for soft
targets they differ.

``on="probabilities"`` (the team's, ``LossConfig(on="probabilities")``, the BCE and the ``"pt"``
focal loss only): the sigmoid is taken first, in float32, and the binary cross-entropy is computed
on the probability as ``torch.nn.functional.binary_cross_entropy`` does, each log clamped at -100.
Far from zero the two differ: at logit 20 and target 0, ``sigmoid(20)`` rounds to 1.0 in float32,
so the loss is 100 with gradient 0, where the loss on logits is 20 with gradient 1.
"""

from __future__ import annotations

import logging

from hpa_kernel.training.config import LossConfig

__all__ = ["focal_loss", "focal_loss_pt", "bce_loss", "bce_elements", "create_loss"]

logger = logging.getLogger(__name__)


def _check(logits, targets) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")


def bce_elements(logits, targets, on: str = "logits"):
    """The binary cross-entropy of each element, from logits (``on="logits"``) or through the probabilities.

    ``on="probabilities"``: ``p = sigmoid(logits)`` in float32, then
    ``-(t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))``, with PyTorch's gradient of that
    formula (``binary_cross_entropy``): 0 wherever ``p`` rounds to 0 or 1.

    >>> import torch
    >>> x, t = torch.tensor([[20.0, 0.0]]), torch.zeros(1, 2)
    >>> bce_elements(x, t).tolist()[0][0], bce_elements(x, t, "probabilities").tolist()[0][0]
    (20.0, 100.0)
    """
    import torch
    import torch.nn.functional as F

    _check(logits, targets)
    logits, targets = logits.float(), targets.float()
    if on == "logits":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if on == "probabilities":
        return F.binary_cross_entropy(torch.sigmoid(logits), targets, reduction="none")
    raise ValueError(f"on must be 'logits' or 'probabilities', got {on!r}")


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


def focal_loss_pt(logits, targets, gamma: float = 2.0, alpha: float | None = 1.0, on: str = "logits"):
    """Mean of ``alpha * (1 - pt)**gamma * BCE`` with ``pt = exp(-BCE)`` per element; soft targets allowed.

    ``on`` is as in :func:`bce_elements` (the team: ``"probabilities"``).

    >>> import torch
    >>> round(focal_loss_pt(torch.zeros(1, 1), torch.ones(1, 1)).item(), 5)  # 0.5**2 * log(2)
    0.17329
    """
    bce = bce_elements(logits, targets, on)
    pt = (-bce).exp()
    return ((1.0 if alpha is None else alpha) * (1.0 - pt).pow(gamma) * bce).mean()


def bce_loss(logits, targets, on: str = "logits"):
    """Mean binary cross-entropy; soft targets allowed; ``on`` as in :func:`bce_elements` (the team's ``nn.BCELoss``: probabilities).

    >>> import torch
    >>> round(bce_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.3]])).item(), 5)  # log(2)
    0.69315
    """
    return bce_elements(logits, targets, on).mean()


def create_loss(config: LossConfig):
    """The loss callable ``loss(logits, targets) -> scalar`` of a :class:`LossConfig`."""
    if not isinstance(config, LossConfig):
        raise ValueError(f"config must be a LossConfig, got {type(config).__name__}")
    gamma, alpha, on = config.gamma, config.alpha, config.on

    def loss(logits, targets):
        if config.name == "bce":
            return bce_loss(logits, targets, on)
        if config.form == "pt":
            return focal_loss_pt(logits, targets, gamma=gamma, alpha=alpha, on=on)
        return focal_loss(logits, targets, gamma=gamma, alpha=alpha)

    return loss

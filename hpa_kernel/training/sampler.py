"""Semi-balanced sampling of training cells, sharded for DistributedDataParallel.

The weight of cell ``i`` with positive classes ``P_i`` (soft target >= ``threshold``):

    ``f_c``  = fraction of cells positive for class c
    ``h_c``  = 1 + hardness * (1 - recall_c)          (recall of the model on class c; 1 when unknown)
    ``w_c``  = (1 / f_c) ** alpha * h_c
    ``w_i``  = max_{c in P_i} w_c / |P_i| ** label_power

A cell without any positive class gets the smallest class weight ``min_c w_c``. Sampling is with
replacement, proportional to ``w_i``. ``alpha = 0`` is uniform sampling and ``alpha = 1`` fully
inverse-frequency; the maximum over the labels lets a rare class lift its cells, and the division by
``|P_i| ** label_power`` keeps images with many labels from being over-used. The hardness term
oversamples classes whose positives the model still misses (recall from the previous epoch).

Sharding: every process draws the same ``num_samples * num_replicas`` indices from a generator
seeded with ``seed + epoch`` (call :meth:`SemiBalancedSampler.set_epoch` each epoch), and rank ``r``
takes ``indices[r::num_replicas]``, so the shards are disjoint slices of one draw.
"""

from __future__ import annotations

import logging
import math

import numpy as np

__all__ = ["class_weights", "sample_weights", "SemiBalancedSampler", "ShuffledSampler"]

logger = logging.getLogger(__name__)


def class_weights(targets: np.ndarray, alpha: float = 0.5, hardness: float = 0.0, recall: np.ndarray | None = None,
                  threshold: float = 0.5) -> np.ndarray:
    """Per-class weights ``w_c = (1 / f_c) ** alpha * (1 + hardness * (1 - recall_c))``; 0 for absent classes.

    >>> t = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], float)
    >>> class_weights(t, alpha=1.0).round(3).tolist()
    [1.333, 4.0]
    """
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must have shape (N, C), got {targets.shape}")
    freq = (targets >= threshold).mean(axis=0)
    w = np.zeros(targets.shape[1])
    present = freq > 0
    w[present] = (1.0 / freq[present]) ** alpha
    if recall is not None and hardness:
        recall = np.asarray(recall, dtype=float)
        if recall.shape != (targets.shape[1],):
            raise ValueError(f"recall must have shape ({targets.shape[1]},), got {recall.shape}")
        w *= 1.0 + hardness * (1.0 - np.clip(np.nan_to_num(recall, nan=1.0), 0.0, 1.0))
    return w


def sample_weights(targets: np.ndarray, alpha: float = 0.5, label_power: float = 0.5, hardness: float = 0.0,
                   recall: np.ndarray | None = None, threshold: float = 0.5) -> np.ndarray:
    """Per-cell sampling probabilities (sum 1) of the semi-balanced scheme in the module docstring.

    >>> t = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], float)
    >>> sample_weights(t, alpha=1.0, label_power=0.0).round(3).tolist()
    [0.167, 0.167, 0.167, 0.5]
    """
    targets = np.asarray(targets)
    if targets.ndim != 2 or len(targets) == 0:
        raise ValueError(f"targets must have shape (N, C) with N > 0, got {targets.shape}")
    cw = class_weights(targets, alpha=alpha, hardness=hardness, recall=recall, threshold=threshold)
    pos = targets >= threshold
    n_pos = pos.sum(axis=1)
    best = np.where(pos, cw[None, :], 0.0).max(axis=1)
    floor = cw[cw > 0].min() if (cw > 0).any() else 1.0
    w = np.where(n_pos > 0, best / np.maximum(n_pos, 1) ** label_power, floor)
    return w / w.sum()


class SemiBalancedSampler:
    """Weighted sampling with replacement; each rank yields a disjoint slice of one shared draw.

    Parameters
    ----------
    weights : array (N,)
        Sampling weights (need not sum to 1).
    num_samples : int
        Indices per rank per epoch.
    num_replicas, rank : int
        World size and this process's rank.
    seed : int
        The draw of epoch ``e`` uses ``seed + e``.
    """

    def __init__(self, weights: np.ndarray, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.epoch = 0
        self.set_weights(weights)

    def set_weights(self, weights: np.ndarray) -> None:
        """Replace the weights (e.g. after the hardness term changed)."""
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError("weights must be a non-empty 1-D array of non-negative numbers with a positive sum")
        self.weights = weights / weights.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch."""
        rng = np.random.default_rng(self.seed + self.epoch)
        total = self.num_samples * self.num_replicas
        drawn = rng.choice(len(self.weights), size=total, replace=True, p=self.weights)
        return drawn[self.rank::self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShuffledSampler:
    """A fixed list of indices (repeats allowed), shuffled per epoch and sharded across ranks.

    The list is padded by wrapping around to a multiple of ``num_replicas``; rank ``r`` takes
    every ``num_replicas``-th element starting at ``r``.
    """

    def __init__(self, indices, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.base = np.asarray(indices, dtype=np.int64)
        if self.base.ndim != 1 or len(self.base) == 0:
            raise ValueError(f"indices must be a non-empty 1-D list, got shape {self.base.shape}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_replicas, self.rank, self.seed, self.epoch = int(num_replicas), int(rank), int(seed), 0
        self.num_samples = math.ceil(len(self.base) / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        order = self.base[np.random.default_rng(self.seed + self.epoch).permutation(len(self.base))]
        total = self.num_samples * self.num_replicas
        order = np.resize(order, total)
        return order[self.rank::self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

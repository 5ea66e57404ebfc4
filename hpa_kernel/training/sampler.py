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

The quota sampler (milimed2021, :class:`QuotaSampler`) fills fixed per-class quotas each epoch.
Each class ``c`` has a pool: the cells labelled ``c``, plus a second copy of those whose manual
soft label of ``c`` is >= ``duplicate_min`` (0.9). The Negative pool (key ``-1``) holds the cells
with none of the trained classes. A pool is walked in a fresh random order, again and again, and a
cell is accepted with probability ``(1 / n_labels) ** label_power`` (0.5) until the class has its
quota; a cell can come through several classes (class 12 is extended further, see
``SamplerConfig.extra_passes``). The mitotic-spindle pool is special: its
positives (target > 0) are repeated ``spindle_repeats`` (41) times, those manually scored >= 0.99
three times as often, and every visited entry is accepted. The team's quotas are for about 316 666 draws an
epoch (:data:`~hpa_kernel.training.config.MILIMED_QUOTAS`); here they are shares of
``epoch_size``, rounded by largest remainder, and the share of a class without cells goes to
the others.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["class_weights", "sample_weights", "SemiBalancedSampler", "ShuffledSampler", "QuotaRules", "quota_pools",
           "quota_counts", "draw_quotas", "SamplerShard", "QuotaSampler", "acceptance_of"]

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


@dataclass(frozen=True)
class QuotaRules:
    """How :func:`quota_pools` extends the pools beyond the labelled cells.

    Attributes
    ----------
    duplicate_min : float
        A cell whose manual target of the class is >= this is in the class's pool twice.
    spindle_class : int
        The class whose positives (target > 0) are repeated ``spindle_repeats`` times, those
        manually scored >= 0.99 three times as often.
    spindle_repeats : int
    extra_passes : mapping, optional
        ``{class: thresholds}``: after the duplicates, the pool is extended by its own manually
        scored entries >= each threshold in turn.

    Examples
    --------
    >>> QuotaRules(extra_passes={12: (0.7, 0.9)}).spindle_repeats
    41
    """

    duplicate_min: float = 0.9
    spindle_class: int = 11
    spindle_repeats: int = 41
    extra_passes: dict | None = None


def quota_pools(labels: np.ndarray, targets: np.ndarray, manual: np.ndarray, quotas, trained: int,
                rules: QuotaRules | None = None) -> dict[int, np.ndarray]:
    """The pool of cell indices of each quota key (class id, or -1 for Negative); empty pools left out.

    Parameters
    ----------
    labels : bool array (N, 19)
        The cell's labels (image labels, pseudo labels or manually scored classes).
    targets : array (N, 19)
        The training targets (for the duplicates and the spindle positives).
    manual : bool array (N, 19)
        Where a manual score set the target, or (the team's ``SamplerConfig.duplicate_source="any"``)
        where any label rule did: only these soft labels count for the duplicates and passes.
    quotas : mapping
        The quota keys to build.
    trained : int
        Number of trained classes; a cell with none of ``0 .. trained - 1`` is in the Negative pool.
    rules : QuotaRules, optional
        Duplicates, spindle repeats and extra passes; default ``QuotaRules()``.

    Examples
    --------
    >>> lab = np.zeros((3, 19), bool); lab[0, 1] = lab[1, 1] = lab[2, 18] = True
    >>> t = lab.astype(float); man = np.zeros_like(lab); man[1, 1] = True
    >>> {k: v.tolist() for k, v in quota_pools(lab, t, man, {1: 1, -1: 1}, 18).items()}
    {1: [0, 1, 1], -1: [2]}
    """
    labels = np.asarray(labels, dtype=bool)
    targets = np.round(np.asarray(targets, dtype=float), 6)  # float32 0.9 is 0.89999998: compare the soft labels as written
    manual = np.asarray(manual, dtype=bool)
    if labels.ndim != 2 or targets.shape != labels.shape or manual.shape != labels.shape:
        raise ValueError(f"labels, targets and manual must have one shape (N, C), got {labels.shape}, {targets.shape}, {manual.shape}")
    rules = QuotaRules() if rules is None else rules
    duplicate_min, spindle_class, spindle_repeats = rules.duplicate_min, rules.spindle_class, rules.spindle_repeats
    pools = {}
    for key in quotas:
        if key == -1:
            pool = np.flatnonzero(~labels[:, :trained].any(axis=1))
        elif key == spindle_class:
            members = np.flatnonzero(labels[:, key])
            best = members[manual[members, key] & (targets[members, key] >= 0.99)]
            base = np.concatenate([members, best, best])
            pos = base[targets[base, key] > 0]
            pool = np.concatenate([base] + [pos] * (spindle_repeats - 1))
        else:
            members = np.flatnonzero(labels[:, key])
            dup = members[manual[members, key] & (targets[members, key] >= duplicate_min)]
            pool = np.concatenate([members, dup])
            for t in (rules.extra_passes or {}).get(key, ()):
                pool = np.concatenate([pool, pool[manual[pool, key] & (targets[pool, key] >= t)]])
        if len(pool):
            pools[int(key)] = pool.astype(np.int64)
    return pools


def quota_counts(quotas, present, epoch_size: int) -> dict[int, int]:
    """Draws per quota key: the shares of the present keys scaled to ``epoch_size`` (largest remainder).

    >>> quota_counts({0: 40_000, 1: 10_000, 2: 10_000, -1: 20_000}, [0, 1, -1], 14)
    {0: 8, 1: 2, -1: 4}
    """
    keys = [k for k in quotas if k in set(present) and quotas[k] > 0]
    if not keys:
        raise ValueError("no quota class has any cell: nothing to draw")
    share = np.array([quotas[k] for k in keys], dtype=float)
    exact = share / share.sum() * epoch_size
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: epoch_size - counts.sum()]:
        counts[i] += 1
    return {k: int(n) for k, n in zip(keys, counts)}


def draw_quotas(pools: dict[int, np.ndarray], counts: dict[int, int], acceptance: np.ndarray, rng: np.random.Generator,
                no_test: tuple[int, ...] = ()) -> dict[int, np.ndarray]:
    """Fill each key's count from its pool: shuffled passes, each entry accepted with ``acceptance[cell]``.

    Keys in ``no_test`` accept every entry. Returns ``{key: drawn cell indices}``.
    """
    out = {}
    for key, n in counts.items():
        pool, got, need = pools[key], [], n
        if need and key not in no_test and not (acceptance[pool] > 0).any():
            raise ValueError(f"quota class {key}: no cell can be accepted")
        while need > 0:
            order = pool[rng.permutation(len(pool))]
            if key not in no_test:
                order = order[rng.random(len(order)) < acceptance[order]]
            got.append(order[:need])
            need -= len(got[-1])
        out[key] = np.concatenate(got) if got else np.zeros(0, np.int64)
    return out


@dataclass(frozen=True)
class SamplerShard:
    """A rank's place in a (distributed) run: ``rank`` of ``num_replicas``, and the seed all ranks share.

    >>> SamplerShard(num_replicas=2, rank=1).seed
    0
    """

    num_replicas: int = 1
    rank: int = 0
    seed: int = 0


class QuotaSampler:
    """The per-class quota sampler; each rank yields a disjoint slice of one shared, shuffled draw.

    Parameters
    ----------
    pools : dict
        From :func:`quota_pools`.
    quotas : mapping
        Relative draws per key.
    acceptance : array (N,)
        Acceptance probability of each cell, ``(1 / n_labels) ** label_power``.
    num_samples : int
        Indices per rank per epoch; the epoch draws ``num_samples * num_replicas``.
    shard : SamplerShard, optional
        This rank, the number of ranks and the shared seed; default ``SamplerShard()`` (one process, seed 0).
    no_test : tuple of int
        Keys drawn without the acceptance test (mitotic spindle).
    """

    def __init__(self, pools: dict[int, np.ndarray], quotas, acceptance: np.ndarray, num_samples: int,
                 shard: SamplerShard | None = None, no_test: tuple[int, ...] = ()):
        shard = SamplerShard() if shard is None else shard
        num_replicas, rank, seed = shard.num_replicas, shard.rank, shard.seed
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.pools, self.acceptance, self.no_test = pools, np.asarray(acceptance, dtype=float), tuple(no_test)
        self.num_samples, self.num_replicas, self.rank, self.seed, self.epoch = int(num_samples), int(num_replicas), int(rank), int(seed), 0
        self.counts = quota_counts(quotas, list(pools), self.num_samples * self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self) -> dict[int, np.ndarray]:
        """The whole epoch's draw by quota key (the same on every rank)."""
        return draw_quotas(self.pools, self.counts, self.acceptance, np.random.default_rng(self.seed + self.epoch), self.no_test)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch."""
        drawn = np.concatenate(list(self.draw().values()))
        drawn = drawn[np.random.default_rng(self.seed + self.epoch + 7919).permutation(len(drawn))]
        return drawn[self.rank::self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


def acceptance_of(labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """``(1 / max(1, n_labels)) ** power`` per cell.

    >>> acceptance_of(np.array([[1, 0, 0, 0], [1, 1, 1, 1]], bool)).tolist()
    [1.0, 0.5]
    """
    n = np.maximum(np.asarray(labels, dtype=bool).sum(axis=1), 1)
    return (1.0 / n) ** power

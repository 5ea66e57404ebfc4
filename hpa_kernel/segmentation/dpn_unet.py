"""The DPN-92 U-Net of HPA-Cell-Segmentation, rebuilt on timm's DPN-92 blocks.

HPA-Cell-Segmentation (hpacellseg 0.1.8) ships its nuclei and cell networks as pickles of
pytorch_zoo's ``DPNUnet(target_channel_num=3, input_channel_num=3, encoder_name='dpn92')``.
:class:`DPNUnet` here has the same parameter layout (595 ``state_dict`` entries, same order, names
and shapes), so the official weights load with ``strict=True``, and the same forward pass:

* encoder: timm's ``dpn92`` feature blocks, cut into five stages (H/2, H/4, H/8, H/16, H/32 with
  64, 336, 704, 1552 and 2688 channels); a stage's output is its ``(resid, dense)`` pair
  concatenated along channels;
* decoder: four times nearest x2 upsampling + 3x3 conv + ReLU, each followed by a 3x3 conv + ReLU
  on the concatenation with the encoder skip of that resolution;
* head: nearest x2 upsampling + 3x3 conv + ReLU, then a 3x3 conv to ``num_classes`` logits.

The network applies no activation; hpacellseg takes ``softmax(dim=1)`` of the logits. Input height
and width must be multiples of 32.

BatchNorm statistics
--------------------
hpacellseg never calls ``.eval()``, so the networks run in whatever train/eval mode was pickled.
A BatchNorm layer pickled in train mode normalises each image by the statistics of its own batch,
which for hpacellseg's batch of one image is that image's own per-channel mean and variance.
:meth:`DPNUnet.set_batchnorm_stats` reproduces that per image, also when several images run in
one batch (it uses instance normalisation with the BatchNorm affine parameters), and never
updates the running statistics.
"""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DPNUnet", "ENCODER_FILTERS", "STAGE_NAMES", "reference_fill_state_dict"]

logger = logging.getLogger(__name__)

#: Output channels of the five encoder stages (H/2 ... H/32).
ENCODER_FILTERS: tuple[int, ...] = (64, 336, 704, 1552, 2688)

#: Names of the intermediate outputs returned by :meth:`DPNUnet.forward_stages`, in execution order.
STAGE_NAMES: tuple[str, ...] = (
    "enc0", "enc1", "enc2", "enc3", "enc4",
    "decoder_stages3", "bottlenecks0", "decoder_stages2", "bottlenecks1",
    "decoder_stages1", "bottlenecks2", "decoder_stages0", "bottlenecks3",
    "last_upsample",
)  # fmt: skip


def _batchnorm_act_class() -> type[nn.Module]:
    from timm.layers import BatchNormAct2d

    return BatchNormAct2d


class _DualModeBatchNormAct2d(nn.Module):
    """Marker base: see :func:`_make_dual_mode`. Never instantiated directly."""


@functools.lru_cache(maxsize=None)
def _make_dual_mode(bn_act_cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of timm's ``BatchNormAct2d`` that can normalise with per-image statistics.

    Only ``forward`` differs, and only when ``per_image_stats`` is set: the input is normalised by
    each image's own channel mean and (biased) variance, exactly what BatchNorm in train mode does
    with a batch of one, then the affine parameters, the dropout and the activation of the layer
    are applied. The running statistics are left untouched.
    """

    class DualModeBatchNormAct2d(bn_act_cls, _DualModeBatchNormAct2d):
        per_image_stats: bool = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.per_image_stats:
                return super().forward(x)
            x = F.instance_norm(x, None, None, self.weight, self.bias, use_input_stats=True, eps=self.eps)
            return self.act(self.drop(x))

    return DualModeBatchNormAct2d


class _ConvRelu(nn.Module):
    """``cat([dec, enc])`` -> 3x3 conv (with bias) -> ReLU. State keys ``seq.0.*``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, dec: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        return self.seq(torch.cat([dec, enc], dim=1))


class _UpConvRelu(nn.Module):
    """Nearest x2 upsampling -> 3x3 conv (with bias) -> ReLU. State keys ``layer.1.*``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _CatStage(nn.Module):
    """Runs a sequence of DPN blocks and returns their final ``(resid, dense)`` pair concatenated."""

    def __init__(self, blocks: Iterable[nn.Module]):
        super().__init__()
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)

    def forward(self, x):
        for block in self._modules.values():
            x = block(x)
        return torch.cat(x, dim=1) if isinstance(x, tuple) else x


class DPNUnet(nn.Module):
    """U-Net with a DPN-92 encoder; the architecture of hpacellseg's nuclei and cell networks.

    Parameters
    ----------
    num_classes : int
        Output channels (hpacellseg: 3 = background, border, interior).
    in_chans : int
        Input channels (hpacellseg: 3).

    Examples
    --------
    >>> net = DPNUnet()                                     # doctest: +SKIP
    >>> net(torch.zeros(1, 3, 64, 96)).shape                # doctest: +SKIP
    torch.Size([1, 3, 64, 96])
    """

    def __init__(self, num_classes: int = 3, in_chans: int = 3):
        super().__init__()
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
        import timm

        f = ENCODER_FILTERS
        # Registration order fixes the state_dict order of the original: bottlenecks, decoder
        # stages, last upsample, final, encoder stages.
        self.bottlenecks = nn.ModuleList([_ConvRelu(2 * c, c) for c in reversed(f[:-1])])
        self.decoder_stages = nn.ModuleList([_UpConvRelu(f[i + 1], f[i]) for i in range(4)])
        self.last_upsample = _UpConvRelu(f[0], f[0])
        self.final = nn.Sequential(nn.Conv2d(f[0], num_classes, 3, padding=1))

        dpn = timm.create_model("dpn92", pretrained=False, in_chans=in_chans)
        feats = dpn.features
        blocks = dict(feats.named_children())
        stem = nn.Sequential(blocks["conv1_1"].conv, blocks["conv1_1"].bn)  # bn includes the ReLU
        stage1 = _CatStage([blocks["conv1_pool"]] + [blocks[f"conv2_{i}"] for i in range(1, 4)])
        stage2 = _CatStage(blocks[f"conv3_{i}"] for i in range(1, 5))
        stage3 = _CatStage(blocks[f"conv4_{i}"] for i in range(1, 21))
        stage4 = _CatStage([blocks[f"conv5_{i}"] for i in range(1, 4)] + [blocks["conv5_bn_ac"]])
        self.encoder_stages = nn.ModuleList([stem, stage1, stage2, stage3, stage4])
        del dpn
        self._install_dual_mode_batchnorm()

    # -- BatchNorm mode ---------------------------------------------------------------------------
    def _install_dual_mode_batchnorm(self) -> None:
        # timm's DualPathBlock builds its BatchNormAct2d layers itself (no norm_layer argument), so
        # each instance is re-classed to a subclass that only adds the per-image forward branch.
        # Attributes, parameters and buffers stay exactly as timm created them.
        base = _batchnorm_act_class()
        dual = _make_dual_mode(base)
        for module in self.modules():
            if type(module) is base:
                module.__class__ = dual

    def batchnorm_layers(self) -> dict[str, nn.Module]:
        """All BatchNorm layers by their state_dict prefix (e.g. ``encoder_stages.0.1``)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, _DualModeBatchNormAct2d)}

    def set_batchnorm_stats(self, per_image: bool | dict[str, bool]) -> None:
        """Choose running statistics (eval mode) or per-image statistics (pickled train mode).

        Parameters
        ----------
        per_image : bool or dict
            ``True`` for every BatchNorm layer, ``False`` for none, or a mapping from layer name
            (see :meth:`batchnorm_layers`) to a flag; layers missing from the mapping use running
            statistics.
        """
        layers = self.batchnorm_layers()
        if isinstance(per_image, dict):
            unknown = sorted(set(per_image) - set(layers))
            if unknown:
                raise ValueError(f"per_image names unknown BatchNorm layers: {unknown[:5]} (of {len(unknown)})")
            flags = {name: bool(per_image.get(name, False)) for name in layers}
        else:
            flags = dict.fromkeys(layers, bool(per_image))
        for name, module in layers.items():
            module.per_image_stats = flags[name]

    def batchnorm_stats(self) -> dict[str, bool]:
        """Current per-image flag of each BatchNorm layer."""
        return {name: bool(m.per_image_stats) for name, m in self.batchnorm_layers().items()}

    # -- forward ----------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"input must be (N, C, H, W), got shape {tuple(x.shape)}")
        in_chans = self.encoder_stages[0][0].in_channels
        if x.shape[1] != in_chans:
            raise ValueError(f"input must have {in_chans} channels (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(x.shape[2:])}")

    def _forward(self, x: torch.Tensor, stages: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits; with ``stages``, every output named in :data:`STAGE_NAMES` is also stored there."""
        self._check_input(x)
        record = stages.__setitem__ if stages is not None else lambda name, value: None
        enc = []
        for i, stage in enumerate(self.encoder_stages):
            x = stage(x)
            enc.append(x)
            record(f"enc{i}", x)
        for j in range(4):
            x = self.decoder_stages[3 - j](x)
            record(f"decoder_stages{3 - j}", x)
            x = self.bottlenecks[j](x, enc[3 - j])
            record(f"bottlenecks{j}", x)
        x = self.last_upsample(x)
        record("last_upsample", x)
        return self.final(x)

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits plus every intermediate output named in :data:`STAGE_NAMES` (for debugging)."""
        stages: dict[str, torch.Tensor] = {}
        return self._forward(x, stages), stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W); no activation."""
        return self._forward(x)


def reference_fill_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic, seed-per-key weights for every state_dict entry (the reference fill recipe).

    The recipe of ``shared/reference/segmentation/README.md`` section 2: each key draws from
    ``numpy.random.default_rng(crc32(key))`` (a leading ``module.`` is ignored for the seed);
    BatchNorm weights ~ 1 + 0.1 N(0, 1), biases and running means ~ 0.1 N(0, 1), running variances
    ~ U(0.5, 1.5), conv weights ~ N(0, 1) * sqrt(g / fan_in) with g = 64 for ``final.0.weight``
    and 1 otherwise, ``num_batches_tracked`` = 0. Values are drawn in float64 and returned in the
    dtype of the model's entry (float32 for a fresh model). Used by the tests and the benchmark in
    place of the official weights.

    Returns
    -------
    dict
        A state_dict for ``model.load_state_dict``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, ref in model.state_dict().items():
        base = key[len("module."):] if key.startswith("module.") else key
        shape = tuple(ref.shape)
        leaf = base.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        rng = np.random.default_rng(zlib.crc32(base.encode("utf-8")))
        if leaf == "running_mean" or leaf == "bias":
            values = 0.1 * rng.standard_normal(shape)
        elif leaf == "running_var":
            values = rng.uniform(0.5, 1.5, shape)
        elif leaf == "weight" and len(shape) == 1:
            values = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "weight" and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            gain = 64.0 if base == "final.0.weight" else 1.0
            values = rng.standard_normal(shape) * np.sqrt(gain / fan_in)
        else:
            raise ValueError(f"no fill rule for state_dict key {key!r} with shape {shape}")
        out[key] = torch.from_numpy(values.astype(np.float32)).to(ref.dtype)
    return out

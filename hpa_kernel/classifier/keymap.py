"""The names of one network in two libraries: efficientnet_pytorch's B0 keys and timm's.

The team's checkpoints (:mod:`hpa_kernel.classifier.milimed`) and efficientnet_pytorch's ImageNet file
(:mod:`hpa_kernel.classifier.pretrained`) both carry efficientnet_pytorch names; this module maps them
onto timm's ``tf_efficientnet_b0``. It imports nothing of the kit, so both can use it.
"""

from __future__ import annotations

__all__ = ["B0_STAGE_DEPTHS", "milimed_key_map"]

#: Blocks per stage of EfficientNet-B0.
B0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _block_map(index: int, stage: int, pos: int) -> dict[str, str]:
    """efficientnet_pytorch ``_blocks.index.*`` -> timm ``blocks.stage.pos.*`` for one block."""
    src, dst = f"_blocks.{index}.", f"blocks.{stage}.{pos}."
    if index == 0:  # expand ratio 1: timm's DepthwiseSeparableConv
        convs = {"_depthwise_conv": "conv_dw", "_project_conv": "conv_pw"}
        bns = {"_bn1": "bn1", "_bn2": "bn2"}
    else:  # timm's InvertedResidual
        convs = {"_expand_conv": "conv_pw", "_depthwise_conv": "conv_dw", "_project_conv": "conv_pwl"}
        bns = {"_bn0": "bn1", "_bn1": "bn2", "_bn2": "bn3"}
    out = {f"{src}{a}.weight": f"{dst}{b}.weight" for a, b in convs.items()}
    out.update({f"{src}{a}.{p}": f"{dst}{b}.{p}" for a, b in bns.items() for p in _BN})
    for a, b in (("_se_reduce", "se.conv_reduce"), ("_se_expand", "se.conv_expand")):
        out.update({f"{src}{a}.{p}": f"{dst}{b}.{p}" for p in ("weight", "bias")})
    return out


def milimed_key_map() -> dict[str, str]:
    """Every ``efficientnet_pytorch`` B0 key (with the team's ``_fc.0`` head) and its timm name.

    >>> m = milimed_key_map()
    >>> len(m), m["_blocks.1._expand_conv.weight"], m["_fc.0.bias"]
    (360, 'blocks.1.0.conv_pw.weight', 'classifier.bias')
    """
    out = {"_conv_stem.weight": "conv_stem.weight"}
    out.update({f"_bn0.{p}": f"bn1.{p}" for p in _BN})
    index = 0
    for stage, depth in enumerate(B0_STAGE_DEPTHS):
        for pos in range(depth):
            out.update(_block_map(index, stage, pos))
            index += 1
    out["_conv_head.weight"] = "conv_head.weight"
    out.update({f"_bn1.{p}": f"bn2.{p}" for p in _BN})
    out.update({"_fc.0.weight": "classifier.weight", "_fc.0.bias": "classifier.bias"})
    return out

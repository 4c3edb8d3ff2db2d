"""MobileNetV1 feature extractor, layer for layer as qfgaohao/pytorch-ssd ``vision/nn/mobilenet.py``.

Only the ``model`` Sequential is used by the SSD (``MobileNetV1(1001).model``), so that is what we build: 14
blocks, ``conv_bn`` then 13 ``conv_dw``. State-dict keys below ``base_net.`` are therefore
``<block>.<layer>.<param>``, e.g. ``base_net.1.3.weight`` (the pointwise conv of block 1).
``width_mult`` scales every channel count by ``int(c * width_mult)`` (at 1.0 the original's shapes).
"""

from __future__ import annotations

from torch import nn

# (out_channels, stride) of the 13 depthwise-separable blocks after the first conv (32 channels, stride 2)
_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


def scaled(c: int, width_mult: float) -> int:
    return max(1, int(c * width_mult))


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def mobilenet_v1_features(width_mult: float = 1.0) -> nn.Sequential:
    """The 14-block MobileNetV1 body (no pooling / classifier)."""
    c = scaled(32, width_mult)
    layers: list[nn.Module] = [conv_bn(3, c, 2)]
    for out, stride in _V1_BLOCKS:
        o = scaled(out, width_mult)
        layers.append(conv_dw(c, o, stride))
        c = o
    return nn.Sequential(*layers)

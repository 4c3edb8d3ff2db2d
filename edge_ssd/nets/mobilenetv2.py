"""MobileNetV2 feature extractor as qfgaohao/pytorch-ssd ``vision/nn/mobilenet_v2.py`` (``.features``).

ReLU6 everywhere (pytorch-ssd's default ``onnx_compatible=False``), batch norm on. 19 entries: ``conv_bn``,
17 ``InvertedResidual`` blocks, ``conv_1x1_bn`` to ``last_channel`` (1280, only scaled when width > 1).
"""

from __future__ import annotations

from torch import nn

# t (expansion), c (channels), n (repeats), s (stride of the first repeat)
_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _relu(onnx_compatible: bool) -> type[nn.Module]:
    return nn.ReLU if onnx_compatible else nn.ReLU6


def conv_bn(inp: int, oup: int, stride: int, onnx_compatible: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), _relu(onnx_compatible)(inplace=True)
    )


def conv_1x1_bn(inp: int, oup: int, onnx_compatible: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), _relu(onnx_compatible)(inplace=True)
    )


class InvertedResidual(nn.Module):
    """pw (unless expand_ratio == 1) -> dw -> pw-linear, with a residual when stride 1 and inp == oup.

    The layers live in ``self.conv`` (keys ``conv.<i>.*``) exactly as in pytorch-ssd.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float, onnx_compatible: bool = False):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        relu = _relu(onnx_compatible)
        self.stride = stride
        hidden = round(inp * expand_ratio)
        self.hidden_dim = hidden
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), relu(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            relu(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


def mobilenet_v2_features(width_mult: float = 1.0, onnx_compatible: bool = False) -> nn.Sequential:
    c = int(32 * width_mult)
    last = int(1280 * width_mult) if width_mult > 1.0 else 1280
    layers: list[nn.Module] = [conv_bn(3, c, 2, onnx_compatible)]
    for t, ch, n, s in _V2_SETTING:
        out = int(ch * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(c, out, s if i == 0 else 1, expand_ratio=t, onnx_compatible=onnx_compatible))
            c = out
    layers.append(conv_1x1_bn(c, last, onnx_compatible))
    return nn.Sequential(*layers)

"""Build the three pytorch-ssd MobileNet-SSD variants and load their checkpoints.

``create_net("mb1-ssd" | "mb1-ssd-lite" | "mb2-ssd-lite", num_classes, width_mult, is_test)`` mirrors
pytorch-ssd's ``create_mobilenetv1_ssd``, ``create_mobilenetv1_ssd_lite`` and ``create_mobilenetv2_ssd_lite``;
at ``width_mult=1.0`` the state-dict keys and shapes are exactly those of the author's checkpoints.
"""

from __future__ import annotations

import errno
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import BatchNorm2d, Conv2d, ModuleList, ReLU, Sequential

from ..errors import UserError
from .mobilenetv1 import mobilenet_v1_features, scaled
from .mobilenetv2 import InvertedResidual, mobilenet_v2_features
from .ssd import SSD, GraphPath

ARCHS = ("mb1-ssd", "mb1-ssd-lite", "mb2-ssd-lite")


def _sep_conv_v1(in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, padding: int = 0) -> Sequential:
    """mobilenetv1_ssd_lite.SeperableConv2d: depthwise conv (bias) -> ReLU -> pointwise conv (bias)."""
    return Sequential(
        Conv2d(in_ch, in_ch, kernel_size=kernel_size, groups=in_ch, stride=stride, padding=padding),
        ReLU(),
        Conv2d(in_ch, out_ch, kernel_size=1),
    )


def _sep_conv_v2(in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, padding: int = 0) -> Sequential:
    """mobilenet_v2_ssd_lite.SeperableConv2d: depthwise conv (bias) -> BN -> ReLU6 -> pointwise conv (bias)."""
    return Sequential(
        Conv2d(in_ch, in_ch, kernel_size=kernel_size, groups=in_ch, stride=stride, padding=padding),
        BatchNorm2d(in_ch),
        nn.ReLU6(),
        Conv2d(in_ch, out_ch, kernel_size=1),
    )


def _mb1_ssd(num_classes: int, width_mult: float, is_test: bool, lite: bool) -> SSD:
    base = mobilenet_v1_features(width_mult)
    c19, c10 = scaled(512, width_mult), scaled(1024, width_mult)
    if lite:
        extras = ModuleList(
            [
                Sequential(Conv2d(c10, 256, kernel_size=1), ReLU(), _sep_conv_v1(256, 512, 3, 2, 1)),
                Sequential(Conv2d(512, 128, kernel_size=1), ReLU(), _sep_conv_v1(128, 256, 3, 2, 1)),
                Sequential(Conv2d(256, 128, kernel_size=1), ReLU(), _sep_conv_v1(128, 256, 3, 2, 1)),
                Sequential(Conv2d(256, 128, kernel_size=1), ReLU(), _sep_conv_v1(128, 256, 3, 2, 1)),
            ]
        )

        def heads(per_box: int) -> ModuleList:
            return ModuleList(
                [_sep_conv_v1(c, 6 * per_box, 3, 1, 1) for c in (c19, c10, 512, 256, 256)]
                + [Conv2d(256, 6 * per_box, kernel_size=1)]
            )
    else:
        extras = ModuleList(
            [
                Sequential(Conv2d(i, m, 1), ReLU(), Conv2d(m, o, 3, stride=2, padding=1), ReLU())
                for i, m, o in ((c10, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256))
            ]
        )

        def heads(per_box: int) -> ModuleList:
            return ModuleList(
                [Conv2d(c, 6 * per_box, kernel_size=3, padding=1) for c in (c19, c10, 512, 256, 256, 256)]
            )

    arch = "mb1-ssd-lite" if lite else "mb1-ssd"
    return SSD(num_classes, base, [12, 14], extras, heads(num_classes), heads(4), is_test, arch, width_mult)


def _mb2_ssd_lite(num_classes: int, width_mult: float, is_test: bool) -> SSD:
    base = mobilenet_v2_features(width_mult)
    # pytorch-ssd writes round(576 * width_mult); the real channel count is block 14's expansion, which is the
    # same number at every usual width (1.0, 0.75, 0.5) and stays correct at the others
    c19 = base[14].hidden_dim
    c10 = base[-1][0].out_channels  # 1280 unless width_mult > 1
    extras = ModuleList(
        [
            InvertedResidual(c10, 512, stride=2, expand_ratio=0.2),
            InvertedResidual(512, 256, stride=2, expand_ratio=0.25),
            InvertedResidual(256, 256, stride=2, expand_ratio=0.5),
            InvertedResidual(256, 64, stride=2, expand_ratio=0.25),
        ]
    )

    def heads(per_box: int) -> ModuleList:
        return ModuleList(
            [_sep_conv_v2(c, 6 * per_box, 3, 1, 1) for c in (c19, c10, 512, 256, 256)]
            + [Conv2d(64, 6 * per_box, kernel_size=1)]
        )

    return SSD(
        num_classes, base, [GraphPath(14, "conv", 3), 19], extras, heads(num_classes), heads(4), is_test,
        "mb2-ssd-lite", width_mult,
    )  # fmt: skip


def create_net(arch: str, num_classes: int, width_mult: float = 1.0, is_test: bool = False) -> SSD:
    """Build an SSD of ``arch`` (one of :data:`ARCHS`) for ``num_classes`` classes (background included)."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; use --arch with one of {', '.join(ARCHS)}")
    if int(num_classes) < 2:
        raise UserError(f"num_classes must be >= 2 (BACKGROUND plus at least one class), got {num_classes}")
    if not (0.0 < float(width_mult) <= 4.0):
        raise UserError(f"width multiplier must be in (0, 4], got {width_mult}; use --width-mult 1.0 for the originals")
    if arch == "mb2-ssd-lite":
        return _mb2_ssd_lite(int(num_classes), float(width_mult), is_test)
    return _mb1_ssd(int(num_classes), float(width_mult), is_test, lite=(arch == "mb1-ssd-lite"))


def xavier_init(net: nn.Module) -> nn.Module:
    """pytorch-ssd's ``SSD.init()``: xavier-uniform on every conv weight (biases and BN left at defaults)."""

    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)

    net.apply(_init)
    return net


# --------------------------------------------------------------------------------------------- checkpoints


def _load_problem(e: BaseException) -> str:
    text = str(e)
    low = text.lower()
    if "central directory" in low or "zip archive" in low or isinstance(e, (EOFError, zipfile.BadZipFile)):
        return "the file is truncated or corrupt"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, OSError) and e.errno == errno.EINVAL:  # a seek past the end of a cut-short zip
        return "the file is truncated or corrupt"
    if "weights only load failed" in low or isinstance(e, pickle.UnpicklingError):
        return "not a PyTorch tensor checkpoint (or it holds pickled objects other than tensors)"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:120]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a pytorch-ssd checkpoint: a plain state dict, or a dict holding one under "state_dict"/"model"
    (a ``module.`` prefix from DataParallel is stripped). Errors are one-line ``UserError``\\ s."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file {str(p)!r} not found; pass --weights with a pytorch-ssd .pth checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise UserError(
            f"cannot read weights {str(p)!r}: {_load_problem(e)}; pass a pytorch-ssd .pth state dict "
            "(download it again with edge-ssd fetch-model if it was cut short)"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"{str(p)!r} is a torch file but not a state dict of tensors; save it with torch.save(net.state_dict())"
        )
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def describe_state_dict(sd: Mapping[str, torch.Tensor]) -> dict:
    """Best guess of (arch, width_mult, num_classes) from a checkpoint's keys and shapes (values may be None)."""
    arch = None
    if "base_net.1.conv.0.weight" in sd or "base_net.18.0.weight" in sd:
        arch = "mb2-ssd-lite"
    elif "base_net.13.3.weight" in sd:
        arch = "mb1-ssd-lite" if "extras.0.2.0.weight" in sd else "mb1-ssd"
    width = None
    w0 = sd.get("base_net.0.0.weight")
    if w0 is not None and w0.dim() == 4:
        width = round(float(w0.shape[0]) / 32.0, 3)
    num_classes = None
    cls = sorted(
        k for k in sd if k.startswith("classification_headers.0.") and k.endswith("weight") and sd[k].dim() == 4
    )
    if cls:
        last = max(cls, key=lambda k: [int(t) if t.isdigit() else 0 for t in k.split(".")])
        out = int(sd[last].shape[0])
        if out % 6 == 0:
            num_classes = out // 6
    return {"arch": arch, "width_mult": width, "num_classes": num_classes}


def _hint(sd: Mapping[str, torch.Tensor], net: SSD) -> str:
    d = describe_state_dict(sd)
    parts = []
    if d["arch"] and d["arch"] != net.arch:
        parts.append(f"--arch {d['arch']}")
    if d["width_mult"] and abs(d["width_mult"] - net.width_mult) > 1e-6:
        parts.append(f"--width-mult {d['width_mult']:g}")
    if d["num_classes"] and d["num_classes"] != net.num_classes:
        parts.append(f"a labels file with {d['num_classes']} lines (BACKGROUND first), not {net.num_classes}")
    if parts:
        return "the checkpoint needs " + ", ".join(parts)
    return "check --arch, --width-mult and the labels file against the checkpoint"


def check_state_dict(net: SSD, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise ``UserError`` naming the first key whose presence or shape differs between ``net`` and ``sd``."""
    want = net.state_dict()
    for k, v in want.items():
        if k not in sd:
            raise UserError(
                f"{source} does not fit {net.arch} (width {net.width_mult:g}, {net.num_classes} classes): "
                f"key {k!r} {tuple(v.shape)} is missing; {_hint(sd, net)}"
            )
        if tuple(sd[k].shape) != tuple(v.shape):
            raise UserError(
                f"{source} does not fit {net.arch} (width {net.width_mult:g}, {net.num_classes} classes): "
                f"{k!r} expected shape {tuple(v.shape)}, found {tuple(sd[k].shape)}; {_hint(sd, net)}"
            )
    for k in sd:
        if k not in want:
            raise UserError(
                f"{source} does not fit {net.arch} (width {net.width_mult:g}, {net.num_classes} classes): "
                f"unexpected key {k!r} {tuple(sd[k].shape)}; {_hint(sd, net)}"
            )


def load_weights(net: SSD, path: str | os.PathLike) -> SSD:
    """Strictly load a pytorch-ssd checkpoint into ``net`` (in place; returns ``net``)."""
    sd = read_state_dict(path)
    check_state_dict(net, sd, source=f"weights {Path(path).name!r}")
    net.load_state_dict(sd, strict=True)
    return net

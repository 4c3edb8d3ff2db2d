"""The SSD head composition of qfgaohao/pytorch-ssd (``vision/ssd/ssd.py``), module for module.

Attribute names (``base_net``, ``source_layer_add_ons``, ``extras``, ``classification_headers``,
``regression_headers``) are what make pytorch-ssd checkpoints load with ``strict=True``. The priors are a
non-persistent buffer, so they follow ``.to(device)`` but never appear in the state dict.
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from ..model.priors import CENTER_VARIANCE, IMAGE_SIZE, MOBILENET_SSD_SPECS, SIZE_VARIANCE, generate_priors

# A header source taken from inside a base-net block: ``base_net[s0].<name>[:s1]`` (mb2-ssd-lite's 19x19 map).
GraphPath = namedtuple("GraphPath", ["s0", "name", "s1"])


def convert_locations_to_boxes(locations, priors, center_variance: float, size_variance: float):
    """pytorch-ssd ``box_utils.convert_locations_to_boxes`` (same op order, so the ONNX tail is the same)."""
    if priors.dim() + 1 == locations.dim():
        priors = priors.unsqueeze(0)
    return torch.cat(
        [
            locations[..., :2] * center_variance * priors[..., 2:] + priors[..., :2],
            torch.exp(locations[..., 2:] * size_variance) * priors[..., 2:],
        ],
        dim=locations.dim() - 1,
    )


def center_form_to_corner_form(locations):
    return torch.cat(
        [locations[..., :2] - locations[..., 2:] / 2, locations[..., :2] + locations[..., 2:] / 2],
        locations.dim() - 1,
    )


class SSD(nn.Module):
    """MobileNet-SSD.

    ``forward(x)`` returns ``(confidences, locations)``: raw logits ``(B, N, C)`` and raw offsets ``(B, N, 4)``
    in training mode (``is_test=False``) or when ``raw=True``; with ``is_test=True`` softmaxed scores and
    corner-form boxes (0..1) decoded against ``self.priors``, exactly like pytorch-ssd.
    """

    def __init__(
        self,
        num_classes: int,
        base_net: nn.Sequential,
        source_layer_indexes: list,
        extras: nn.ModuleList,
        classification_headers: nn.ModuleList,
        regression_headers: nn.ModuleList,
        is_test: bool = False,
        arch: str = "",
        width_mult: float = 1.0,
        specs=MOBILENET_SSD_SPECS,
        image_size: int = IMAGE_SIZE,
        center_variance: float = CENTER_VARIANCE,
        size_variance: float = SIZE_VARIANCE,
    ):
        super().__init__()
        self.num_classes = int(num_classes)
        self.base_net = base_net
        self.source_layer_indexes = list(source_layer_indexes)
        self.extras = extras
        self.classification_headers = classification_headers
        self.regression_headers = regression_headers
        self.is_test = bool(is_test)
        self.raw = False
        self.arch = arch
        self.width_mult = float(width_mult)
        self.specs = tuple(specs)
        self.image_size = image_size
        self.center_variance = float(center_variance)
        self.size_variance = float(size_variance)
        # as pytorch-ssd: extra layers given as (index, module) tuples are registered here (none for our archs)
        self.source_layer_add_ons = nn.ModuleList(
            [t[1] for t in self.source_layer_indexes if isinstance(t, tuple) and not isinstance(t, GraphPath)]
        )
        self.register_buffer("priors", torch.from_numpy(generate_priors(self.specs, image_size)), persistent=False)

    @property
    def num_priors(self) -> int:
        return int(self.priors.shape[0])

    def compute_header(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        confidence = self.classification_headers[i](x)
        confidence = confidence.permute(0, 2, 3, 1).contiguous()
        confidence = confidence.view(confidence.size(0), -1, self.num_classes)
        location = self.regression_headers[i](x)
        location = location.permute(0, 2, 3, 1).contiguous()
        location = location.view(location.size(0), -1, 4)
        return confidence, location

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        confidences = []
        locations = []
        start = 0
        header = 0
        end = 0
        for src in self.source_layer_indexes:
            path = None
            added = None
            if isinstance(src, GraphPath):
                path, end = src, src.s0
            elif isinstance(src, tuple):
                end, added = src[0], src[1]
            else:
                end = src
            for layer in self.base_net[start:end]:
                x = layer(x)
            y = added(x) if added is not None else x
            if path is not None:
                sub = getattr(self.base_net[end], path.name)
                for layer in sub[: path.s1]:
                    x = layer(x)
                y = x
                for layer in sub[path.s1 :]:
                    x = layer(x)
                end += 1
            start = end
            conf, loc = self.compute_header(header, y)
            header += 1
            confidences.append(conf)
            locations.append(loc)
        for layer in self.base_net[end:]:
            x = layer(x)
        for layer in self.extras:
            x = layer(x)
            conf, loc = self.compute_header(header, x)
            header += 1
            confidences.append(conf)
            locations.append(loc)
        confidences = torch.cat(confidences, 1)
        locations = torch.cat(locations, 1)
        if self.is_test and not self.raw:
            confidences = F.softmax(confidences, dim=2)
            boxes = convert_locations_to_boxes(locations, self.priors, self.center_variance, self.size_variance)
            boxes = center_form_to_corner_form(boxes)
            return confidences, boxes
        return confidences, locations

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, num_classes={self.num_classes}, width_mult={self.width_mult}, is_test={self.is_test}"
        )

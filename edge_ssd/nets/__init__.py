"""PyTorch MobileNet-SSD networks compatible with qfgaohao/pytorch-ssd checkpoints.

The names below are loaded on first use (PEP 562), so ``edge_ssd.nets.fetch`` and ``edge_ssd.nets.export``'s
torch-free helpers import on a device without torch; ``create_net`` and friends need ``edge-ssd[train]``."""

from __future__ import annotations

import importlib

_FROM = {
    "ARCHS": "build", "check_state_dict": "build", "create_net": "build", "describe_state_dict": "build",
    "load_weights": "build", "read_state_dict": "build", "xavier_init": "build", "SSD": "ssd", "GraphPath": "ssd",
}
__all__ = sorted(_FROM)


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
    globals()[name] = value
    return value

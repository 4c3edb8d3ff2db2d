"""PyTorch MobileNet-SSD networks compatible with qfgaohao/pytorch-ssd checkpoints."""

from .build import (
    ARCHS,
    check_state_dict,
    create_net,
    describe_state_dict,
    load_weights,
    read_state_dict,
    xavier_init,
)
from .ssd import SSD, GraphPath

__all__ = [
    "ARCHS",
    "SSD",
    "GraphPath",
    "check_state_dict",
    "create_net",
    "describe_state_dict",
    "load_weights",
    "read_state_dict",
    "xavier_init",
]

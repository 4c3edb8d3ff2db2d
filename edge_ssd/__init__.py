"""edge-ssd: MobileNet-SSD on edge devices: convert, run, publish."""

__version__ = "0.1.0"

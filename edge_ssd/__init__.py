"""edge-ssd: MobileNet-SSD on edge devices: convert, run, publish."""

__version__ = "0.1.0"
# where users report problems (Home Assistant shows it as the discovery origin's support URL)
SUPPORT_URL = "https://github.com/edge-ssd/edge-ssd"

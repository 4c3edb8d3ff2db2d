"""Dataset readers (VOC, Open Images CSV, image folders) shared by training, calibration and evaluation."""

from .datasets import (
    VOC_CLASSES,
    ImageFolder,
    OpenImagesDataset,
    Sample,
    VOCDataset,
    dataset_format,
    open_dataset,
    read_labels,
    write_labels,
)

__all__ = [
    "VOC_CLASSES",
    "ImageFolder",
    "OpenImagesDataset",
    "Sample",
    "VOCDataset",
    "dataset_format",
    "open_dataset",
    "read_labels",
    "write_labels",
]

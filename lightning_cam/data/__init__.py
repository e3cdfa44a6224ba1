"""Data: the embedded procedural ``shapes`` dataset and Lightning data modules."""

from lightning_cam.data.datamodules import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CIFAR10DataModule,
    DatasetUnavailableError,
    ImageFolderDataModule,
    ShapesDataModule,
)
from lightning_cam.data.shapes import CLASSES, MARKER_COLOURS, SHAPES_MEAN, SHAPES_STD, ShapesDataset
from lightning_cam.data.shapes_tasks import ShapesMultiLabel, ShapesSegmentation

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CLASSES",
    "CIFAR10DataModule",
    "DatasetUnavailableError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataModule",
    "MARKER_COLOURS",
    "SHAPES_MEAN",
    "SHAPES_STD",
    "ShapesDataModule",
    "ShapesDataset",
    "ShapesMultiLabel",
    "ShapesSegmentation",
]

"""Segmentation networks: a small CAM-ready one and torchvision's, by name.

* :class:`SmallSeg`: a conv trunk ``features`` (stride 4, dilated later blocks), a 1x1
  convolution ``classifier`` and bilinear upsampling to the input size: ``(B, C, H, W)`` scores.
* torchvision's ``lraspp_mobilenet_v3_large``, ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``,
  ``deeplabv3_resnet50`` (and the resnet101 ones), built by :func:`lightning_cam.models.build_model`
  with :func:`segmentation_weights`; they return torchvision's ``OrderedDict`` ``{"out": (B, C, H, W)}``. Random weights
  unless ``pretrained`` (online only): with 21 classes the full COCO-VOC weights, else the
  ImageNet backbone under a fresh head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Segmentation networks build_model knows, with their usual CAM target layer (the backbone's
# last stage: its IntermediateLayerGetter returns a dict, so the layer is the stage inside it).
SEGMENTATION_MODELS: dict[str, str] = {
    "smallseg": "features",
    "lraspp_mobilenet_v3_large": "backbone.16",
    "deeplabv3_mobilenet_v3_large": "backbone.16",
    "fcn_resnet50": "backbone.layer4",
    "fcn_resnet101": "backbone.layer4",
    "deeplabv3_resnet50": "backbone.layer4",
    "deeplabv3_resnet101": "backbone.layer4",
}
VOC_CLASSES = 21  # the classes of torchvision's pretrained segmentation weights


def _conv(cin: int, cout: int, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallSeg(nn.Module):
    """A compact segmentation CNN for the embedded dataset (~0.14 M parameters).

    ``features``: conv-BN-ReLU blocks of ``widths``, a 2x2 max-pool after the first two
    (feature maps of ``S / 4``: 16x16 at 64x64), the later blocks dilated 1, 2, 4, ...
    (receptive field ~63 px: a whole object); then ``classifier``, a 1x1 convolution to
    ``num_classes`` maps, upsampled bilinearly to the input size. Target layer: ``features``.
    """

    def __init__(self, num_classes: int = 7, in_channels: int = 3, widths: tuple[int, ...] | list[int] = (16, 32, 64, 64, 128),
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers += _conv(cin, w, dilation=2 ** max(0, i - 2))
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(cin, num_classes, 1)
        self.min_image_size = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.classifier(self.dropout(self.features(x)))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_weights(num_classes: int, pretrained: bool) -> dict[str, Any]:
    """``get_model`` keyword arguments of a torchvision segmentation network: ``weights=None,
    weights_backbone=None`` (nothing is downloaded) unless ``pretrained``: then
    ``weights="DEFAULT"`` when ``num_classes`` is 21, else the ImageNet backbone
    (``weights_backbone="DEFAULT"``) under a fresh head for ``num_classes``."""
    weights = "DEFAULT" if pretrained and num_classes == VOC_CLASSES else None
    backbone = "DEFAULT" if pretrained and weights is None else None
    return {"weights": weights, "weights_backbone": backbone, "num_classes": num_classes}


def segmentation_scores(out: Any) -> torch.Tensor:
    """The ``(B, C, H, W)`` scores of a segmentation network's output: torchvision's ``out["out"]``,
    else the output itself (a tensor; no type check, so that ``torch.fx`` can trace through it)."""
    if isinstance(out, Mapping):
        if "out" not in out:
            raise TypeError(f"a segmentation network's dict output needs the key 'out'; got keys {list(out)}")
        return out["out"]
    return out

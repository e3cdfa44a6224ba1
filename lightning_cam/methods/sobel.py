"""Sobel-CAM: an edge map of the input, the floor an explanation should beat (no model involved)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass

__all__ = ["SobelCAM", "sobel_edges"]

_GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,H,W): ``(|S_x * I| + |S_y * I|) / 2`` on the grey image ``I``.

    ``I = 0.299 R + 0.587 G + 0.114 B`` for 3 channels (the channel mean otherwise),
    3x3 Sobel kernels, borders reflected without repeating the edge (cv2's default
    ``BORDER_REFLECT_101``): pytorch-grad-cam's ``sobel_cam`` without its uint8 rounding.
    """
    if images.shape[1] == 3:
        gray = torch.einsum("c,bchw->bhw", images.new_tensor(_GRAY), images)[:, None]
    else:
        gray = images.mean(dim=1, keepdim=True)
    sx = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sx, sx.t()])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    edges = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="reflect"), kernels)
    return edges.abs().mean(dim=1)


class SobelCAM(BaseCAM):
    """Sobel-CAM (pytorch-grad-cam ``sobel_cam``): the input's edge magnitude, see :func:`sobel_edges`.

    Ignores the model, the layer and the class: a baseline that any explanation should beat
    on the metrics. Computed on the images as given to the model (normalised, if they are)
    at the input resolution.
    """

    name = "sobelcam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        return self._explanation(layer_pass, sobel_edges(layer_pass.x.to(layer_pass.activation.dtype)), None)

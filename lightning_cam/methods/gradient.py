"""Gradient-based CAMs: one backward through the head gives ``g = dt/dA`` (``t`` the target, default the class logit ``y_c``).

All share :attr:`LayerPass.gradient`, so any number of them cost one forward
pass plus one backward through the layers after the target layer.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map
from lightning_cam.methods.layout import Reshape
from lightning_cam.outputs import OutputTransform

__all__ = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"]


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``alpha_k = mean_ij g_kij``."""

    name = "gradcam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        weights = layer_pass.gradient.mean(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018).

    ``alpha_k = sum_ij a_kij ReLU(g_kij)``, ``a = g^2 / (2 g^2 + (sum_ab A_kab) g^3 + eps)``
    (0 where ``g`` or the denominator is 0), the paper's closed form for exponential
    scores applied to the logit gradient, as in its reference code.

    ``eps = 0`` (default) is the paper's formula. pytorch-grad-cam adds ``eps = 1e-6``: an
    absolute constant next to ``2 g^2``, so it changes the weights wherever ``|g| <~ 1e-3``
    (ViT tokens with a random or std-0.02 head: every ``2 g^2`` is below it and its ``a``
    becomes ``~ g^2 / 1e-6`` instead of ``~ 1/2``). ``eps=1e-6`` reproduces pytorch-grad-cam.
    """

    name = "gradcam++"

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, eps: float = 0.0, *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}.")
        self.eps = float(eps)

    def compute(self, layer_pass: LayerPass) -> Explanation:
        g, activation = layer_pass.gradient, layer_pass.activation
        g2 = g.pow(2)
        denominator = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g.pow(3) + self.eps
        nonzero = (denominator != 0) & (g != 0)
        a = torch.where(nonzero, g2 / torch.where(nonzero, denominator, torch.ones_like(denominator)), torch.zeros_like(g2))
        weights = (a * torch.relu(g)).sum(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., BMVC 2020): ``alpha_k = sum_ij (A_kij / sum_ab A_kab) g_kij``.

    Channels whose activations sum to 0 get ``alpha_k = 0``.
    """

    name = "xgradcam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        g, activation = layer_pass.gradient, layer_pass.activation
        total = activation.sum(dim=(2, 3), keepdim=True)
        nonzero = total != 0
        share = torch.where(nonzero, activation / torch.where(nonzero, total, torch.ones_like(total)), torch.zeros_like(activation))
        weights = (share * g).sum(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin, 2020): map ``ReLU(sum_k g_kij A_kij)``."""

    name = "hirescam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        return self._explanation(layer_pass, torch.relu(self.channel_terms(layer_pass, None).sum(dim=1)), None)

    def channel_terms(self, layer_pass: LayerPass, explanation: Explanation | None) -> torch.Tensor:
        return layer_pass.gradient * layer_pass.activation


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., TIP 2021): map ``ReLU(sum_k ReLU(g_kij) A_kij)``."""

    name = "layercam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        return self._explanation(layer_pass, torch.relu(self.channel_terms(layer_pass, None).sum(dim=1)), None)

    def channel_terms(self, layer_pass: LayerPass, explanation: Explanation | None) -> torch.Tensor:
        return torch.relu(layer_pass.gradient) * layer_pass.activation

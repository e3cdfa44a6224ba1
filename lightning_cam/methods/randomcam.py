"""RandomCAM: the random-coefficient control (pytorch-grad-cam's ``RandomCAM``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map

__all__ = ["RandomCAM"]


class RandomCAM(BaseCAM):
    """``alpha_k ~ U(-1, 1)`` i.i.d. per image and channel; map ``ReLU(sum_k alpha_k A_k)``.

    The floor every metric should beat (a method no better than this explains
    nothing). The coefficients come from a ``torch.Generator`` on the
    activations' device seeded with ``seed`` at every call: the same batch gives
    the same maps, and the global RNG is never touched. Drawn as
    ``2 * torch.rand((B, K), generator=g) - 1``.
    """

    name = "randomcam"

    def __init__(self, model: nn.Module, target_layer=None, seed: int = 0, **options: Any) -> None:
        super().__init__(model, target_layer, **options)
        self.seed = int(seed)

    def compute(self, layer_pass: LayerPass) -> Explanation:
        activation = layer_pass.activation
        generator = torch.Generator(device=activation.device).manual_seed(self.seed)
        weights = (2 * torch.rand(activation.shape[:2], generator=generator, device=activation.device) - 1).to(activation.dtype)
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)

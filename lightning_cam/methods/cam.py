"""CAM (Zhou et al., CVPR 2016)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map

__all__ = ["CAM"]


class CAM(BaseCAM):
    """CAM: ``alpha_k = W[c, k]`` of the fully connected layer after global average pooling.

    Needs the part after the target layer to be ``GAP -> Linear`` (possibly
    with flatten / dropout / identity); this is checked numerically on every
    batch (``W mean_ij(A) + b`` must reproduce the logits) and a clear error
    names the methods to use otherwise.
    """

    name = "cam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        linear = self._classifier(layer_pass.activation.shape[1], layer_pass.logits.shape[1])
        pooled = layer_pass.activation.mean(dim=(2, 3))
        predicted = torch.nn.functional.linear(pooled, linear.weight.float(), None if linear.bias is None else linear.bias.float())
        scale = layer_pass.logits.abs().max().clamp_min(1.0)
        # the head ran in the model's dtype: allow a few of its roundings (bf16: 2**-7, fp16: 2**-10)
        tol = max(1e-4, 4 * torch.finfo(layer_pass.split.dtype).eps)
        if not torch.allclose(predicted, layer_pass.logits, rtol=tol, atol=tol * float(scale)):
            raise ValueError(self._not_gap_linear())
        weights = linear.weight.detach().float()[layer_pass.targets]
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)

    def _classifier(self, channels: int, num_classes: int) -> nn.Linear:
        linears = [
            m for m in self.model.modules()
            if isinstance(m, nn.Linear) and m.in_features == channels and m.out_features == num_classes
        ]
        if not linears:
            raise ValueError(self._not_gap_linear())
        return linears[-1]

    def _not_gap_linear(self) -> str:
        return (
            f"CAM needs global average pooling followed by one Linear layer right after the target layer; "
            f"{type(self.model).__name__} after {self.layer_name!r} is not like that. "
            "Use GradCAM (identical to CAM on such heads) or LiftCAM instead."
        )

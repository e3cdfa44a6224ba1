"""Guided Backpropagation and Guided Grad-CAM (input-resolution gradient maps).

* Guided Backpropagation (Springenberg et al., ICLR 2015 workshop, arXiv 1412.6806):
  ``dt/dx`` (``t`` the target, default ``y_c``) where every ReLU passes back only positive gradients at positive inputs,
  ``grad_in = grad_out * [x > 0] * [grad_out > 0]`` (pytorch-grad-cam ``GuidedBackpropReLUModel``).
* Guided Grad-CAM (Selvaraju et al., ICCV 2017): that gradient times the upsampled Grad-CAM map.

Both need a backward through the WHOLE network (the input gradient), so they cost one more
forward and backward of the model on top of the shared pass. The ReLUs are swapped by a
``TorchFunctionMode`` for the duration of that pass (functional and module ReLUs alike);
the model is never modified.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lightning_cam.maps import normalize_maps
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map
from lightning_cam.outputs import accumulation_dtype

__all__ = ["GuidedBackprop", "GuidedGradCAM", "guided_gradients"]


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward keeps ``grad_out * [x > 0] * [grad_out > 0]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * ((x > 0) & (grad > 0)).to(grad.dtype)


_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _GuidedMode(TorchFunctionMode):
    """Every ReLU call (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or not) becomes :class:`_GuidedReLU`."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _RELUS:
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_gradients(layer_pass: LayerPass) -> torch.Tensor:
    """(B,C,H,W) guided-backpropagation gradient of each image's target score w.r.t. its input
    (at least float32, as every map)."""
    x = layer_pass.x.detach().clone().requires_grad_(True)
    with _GuidedMode():
        scores = layer_pass.model_scores(x)
    score = layer_pass.target(scores, layer_pass.index).sum()
    return torch.autograd.grad(score, x)[0].detach().to(accumulation_dtype(x.dtype))


def _magnitude(gradients: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,H,W): ``max_c |.|``, the saliency reduction of Simonyan et al. (2014)."""
    return gradients.abs().amax(dim=1)


class GuidedBackprop(BaseCAM):
    """Guided Backpropagation (Springenberg et al., 2015): map ``max_c |G_c|`` of the guided gradient ``G``.

    The gradient itself is :func:`guided_gradients`; equal to pytorch-grad-cam's
    ``GuidedBackpropReLUModel`` output. The target layer is not used (any layer works).
    """

    name = "guidedbackprop"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        return self._explanation(layer_pass, _magnitude(guided_gradients(layer_pass)), None)


class GuidedGradCAM(BaseCAM):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017): map ``max_c |G_c * S|``, ``S`` the Grad-CAM
    saliency (ReLU'd map upsampled to the input, min-max scaled), ``G`` the guided gradient.

    ``G * S`` is pytorch-grad-cam's ``cam_mask * gb`` (its usage example; it has no class for it).
    """

    name = "guidedgradcam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        weights = layer_pass.gradient.mean(dim=(2, 3))
        saliency = normalize_maps(weighted_map(weights, layer_pass.activation), tuple(layer_pass.x.shape[-2:]))
        return self._explanation(layer_pass, saliency * _magnitude(guided_gradients(layer_pass)), weights)

    def channel_terms(self, layer_pass: LayerPass, explanation: Explanation | None) -> None:
        return None  # the product with the input gradient has no per-channel decomposition

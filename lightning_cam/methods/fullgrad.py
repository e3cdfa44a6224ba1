"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, arXiv 1905.00780), as pytorch-grad-cam 1.5.7 computes it.

``map = S(|x * dy/dx|) + sum_l sum_k S(|b_lk * dy/dz_lk|)``: the input-gradient term and, for
every ``Conv2d`` / ``BatchNorm2d`` with a bias, the bias-gradient terms (``b`` of an eval-mode
batch norm is its effective bias ``beta - mu gamma / sqrt(var + eps)``). ``S`` min-max scales
each channel (``(m - min) / (max(m - min) + 1e-7)``) and upsamples it bilinearly to the input;
upsampling is linear, so the channels of a layer are summed first and upsampled once.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_cam.maps import upsample_maps
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass
from lightning_cam.methods.compose import _scale
from lightning_cam.outputs import accumulation_dtype

__all__ = ["FullGrad", "bias_layers"]


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The ``Conv2d`` and ``BatchNorm2d`` modules with a bias (pytorch-grad-cam's selection, exact types)."""
    return [m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]


def effective_bias(layer: nn.Module) -> torch.Tensor:
    """The bias added per channel: ``b`` of a convolution, ``beta - mu gamma / sqrt(var + eps)`` of a batch norm."""
    if isinstance(layer, nn.BatchNorm2d):
        return layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return layer.bias


def _channel_sum(terms: torch.Tensor) -> torch.Tensor:
    """(B,K,h,w) -> (B,h,w): ``sum_k`` of the min-max scaled channels."""
    return _scale(terms.flatten(0, 1)).view_as(terms).sum(dim=1)


class FullGrad(BaseCAM):
    """FullGrad: input-gradient and bias-gradient terms of every layer, scaled per channel and summed.

    The target layer is not used: every bias layer of the model is. Costs one forward and one
    backward of the whole network (not only the head) plus one pass over the bias layers'
    outputs; the outputs are hooked only during that pass. Maps are at the input resolution.
    """

    name = "fullgrad"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        layers = bias_layers(layer_pass.model)
        calls: list[tuple[nn.Module, torch.Tensor]] = []  # in call order (a module may run twice)

        def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            calls.append((module, out))
            return out.clone()  # a later in-place op (ReLU(inplace=True)) must not overwrite the kept output

        handles = [layer.register_forward_hook(keep) for layer in layers]
        x = layer_pass.x.detach().clone().requires_grad_(True)
        try:
            scores = layer_pass.model_scores(x)
        finally:
            for handle in handles:
                handle.remove()
        score = layer_pass.target(scores, layer_pass.index).sum()
        grads = torch.autograd.grad(score, [x, *(out for _, out in calls)], allow_unused=True)
        size, dtype = tuple(x.shape[-2:]), accumulation_dtype(x.dtype)
        total = _channel_sum((x.detach() * grads[0]).abs().to(dtype))
        for (layer, output), grad in zip(calls, grads[1:]):
            grad = torch.zeros_like(output) if grad is None else grad
            terms = (effective_bias(layer).detach()[None, :, None, None] * grad).abs().to(dtype)
            total = total + upsample_maps(_channel_sum(terms), size)
        return self._explanation(layer_pass, total, None)

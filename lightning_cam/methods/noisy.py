"""Noise- and path-averaged CAMs (torchcam's definitions): SmoothGrad-CAM++, SS-CAM, IS-CAM.

All three need extra forward passes of the network on perturbed inputs. They
run as large batches of at most ``batch_size`` rows; the noise comes from a
``torch.Generator`` on the input's device seeded with ``seed`` at every call
(the same batch gives the same result; the global RNG is never touched).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map
from lightning_cam.methods.split import batched_flags
from lightning_cam.outputs import accumulation_dtype

__all__ = ["SmoothGradCAMPlusPlus", "SSCAM", "ISCAM", "activation_gradient"]

_TORCHCAM_EPS = 1e-8  # torchcam's denominators (CAM normalisation, SmoothGrad-CAM++ alpha)


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value!r}.")


def activation_gradient(layer_pass: LayerPass, images: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, dt/dA)`` of the target layer on other ``images``, row ``r`` explained as image ``index[r]``.

    Runs the body once (no grad) and differentiates the head only, like :class:`LayerPass`.
    """
    split = layer_pass.split
    with torch.no_grad():
        activation, crossings = split.body(images)
    leaf = activation.detach().to(accumulation_dtype(activation.dtype)).requires_grad_(True)
    local = dataclasses.replace(split, batched_crossings=batched_flags(crossings, images.shape[0]), batch=images.shape[0])
    out = local.run_head(leaf, crossings, torch.arange(images.shape[0], device=images.device))
    score = layer_pass.target(out, index).sum()
    grad = torch.autograd.grad(score, leaf)[0].detach()
    layout = layer_pass.layout  # token / channels-last layers: the map entries of the raw tensors
    return layout.to_maps(leaf.detach()), layout.to_maps(grad)


class SmoothGradCAMPlusPlus(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al., 2019, arXiv 1908.01224) as torchcam computes it.

    ``N = num_samples`` noisy copies ``x + eps_n``, ``eps_n ~ N(0, std^2)`` per
    pixel, give gradients ``g_n`` at the target layer;
    ``D2 = mean_n g_n^2``, ``D3 = mean_n g_n^3``;
    ``a_kij = D2_kij / (2 D2_kij + sum_ab A_kab D3_kab + 1e-8)`` (torchcam's
    correction of the paper's numerator, and its channel-wise sum of ``A D3``),
    ``A`` the clean activations; ``alpha_k = sum_ij a_kij ReLU(G_kij)``.
    ``gradient="mean"`` (default): ``G = mean_n g_n``, the smoothed gradient of
    the paper; ``gradient="last"``: ``G = g_N``, the last noisy gradient, which
    is what torchcam 0.5's code uses. Noise: for each sample in order,
    ``std * torch.randn(x.shape, generator)``; ``batch_size // B`` samples run
    per batch.
    """

    name = "smoothgradcam++"

    def __init__(
        self, model: nn.Module, target_layer=None, num_samples: int = 4, std: float = 0.3, seed: int = 0,
        batch_size: int = 64, gradient: str = "mean", **options: Any,
    ) -> None:
        super().__init__(model, target_layer, **options)
        _check_positive(num_samples=num_samples, std=std, batch_size=batch_size)
        if gradient not in ("mean", "last"):
            raise ValueError(f"gradient must be 'mean' (paper) or 'last' (torchcam's code), got {gradient!r}.")
        self.num_samples, self.std, self.seed = int(num_samples), float(std), int(seed)
        self.batch_size, self.gradient = int(batch_size), gradient

    def compute(self, layer_pass: LayerPass) -> Explanation:
        x, activation = layer_pass.x, layer_pass.activation
        batch = x.shape[0]
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        g1, g2, g3 = (torch.zeros_like(activation) for _ in range(3))
        last = g1
        per_batch = max(1, self.batch_size // batch)
        for start in range(0, self.num_samples, per_batch):
            count = min(per_batch, self.num_samples - start)
            noisy = torch.cat([
                x + self.std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for _ in range(count)
            ])
            _, g = activation_gradient(layer_pass, noisy, layer_pass.index.repeat(count))
            g = g.view(count, *activation.shape)
            g1, g2, g3 = g1 + g.sum(0), g2 + g.pow(2).sum(0), g3 + g.pow(3).sum(0)
            last = g[-1]
        d2, d3 = g2 / self.num_samples, g3 / self.num_samples
        alpha = d2 / (2 * d2 + (d3 * activation).sum(dim=(2, 3), keepdim=True) + _TORCHCAM_EPS)
        gradient = g1 / self.num_samples if self.gradient == "mean" else last
        weights = (alpha * torch.relu(gradient)).sum(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)


def _minmax_channels(activation: torch.Tensor) -> torch.Tensor:
    """torchcam's per-channel normalisation: ``(A - min) / (max(A - min) + 1e-8)`` at layer resolution."""
    shifted = activation - activation.amin(dim=(2, 3), keepdim=True)
    return shifted / (shifted.amax(dim=(2, 3), keepdim=True) + _TORCHCAM_EPS)


class _ScoreAveraged(BaseCAM):
    """Score-CAM variants averaging ``y_c(masked) - y_c(x)`` over ``num_samples`` masked inputs per channel.

    ``M_k`` = ``A_k`` min-max scaled per channel (torchcam's order: scale at
    layer resolution, then bilinear upsampling); ``y_c`` the target's value (the class logit by default);
    ``alpha = softmax_k(mean_i (y_c(X_ik) - y_c(x)))``. The ``N*B*K`` rows
    (sample-major, then image, then channel) run through the model in chunks
    of ``batch_size``; masks are upsampled per chunk.
    """

    def __init__(
        self, model: nn.Module, target_layer=None, num_samples: int = 10, batch_size: int = 128, **options: Any
    ) -> None:
        super().__init__(model, target_layer, **options)
        _check_positive(num_samples=num_samples, batch_size=batch_size)
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)

    def _inputs(self, masks: torch.Tensor, images: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def _generator(self, device: torch.device) -> torch.Generator | None:
        return None

    def compute(self, layer_pass: LayerPass) -> Explanation:
        activation, x = layer_pass.activation, layer_pass.x
        batch, channels = activation.shape[:2]
        low = _minmax_channels(activation)
        baseline = layer_pass.target(layer_pass.logits, layer_pass.index)
        pairs, total = batch * channels, self.num_samples * batch * channels
        sums = activation.new_zeros(pairs)
        generator = self._generator(x.device)
        with torch.no_grad():
            for start in range(0, total, self.batch_size):
                rows = torch.arange(start, min(start + self.batch_size, total), device=x.device)
                sample, pair = rows // pairs, rows % pairs
                b, k = pair // channels, pair % channels
                masks = F.interpolate(low[b, k][:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                out = layer_pass.model_scores(self._inputs(masks.to(x.dtype), x[b], sample, generator))
                sums.index_add_(0, pair, layer_pass.target(out, b) - baseline[b])
        weights = (sums / self.num_samples).view(batch, channels).softmax(dim=1)
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)


class SSCAM(_ScoreAveraged):
    """SS-CAM (Wang et al., 2020, arXiv 2006.14255) as torchcam computes it.

    ``X_ik = (M_k + delta_ik) * x`` with ``delta_ik ~ N(0, std^2)`` per pixel
    (noise on the upsampled mask); ``alpha = softmax_k(mean_i y_c(X_ik) - y_c(x))``.
    Noise: per chunk of rows, ``std * torch.randn((rows, H, W), generator)``
    (with ``batch_size = B*K`` that is one (B,K,H,W) draw per sample, torchcam's order).
    """

    name = "sscam"

    def __init__(
        self, model: nn.Module, target_layer=None, num_samples: int = 35, std: float = 2.0, seed: int = 0,
        batch_size: int = 128, **options: Any,
    ) -> None:
        super().__init__(model, target_layer, num_samples, batch_size, **options)
        _check_positive(std=std)
        self.std, self.seed = float(std), int(seed)

    def _generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def _inputs(self, masks, images, sample, generator):
        noise = self.std * torch.randn(masks.shape, generator=generator, device=masks.device, dtype=masks.dtype)
        return (masks + noise) * images


class ISCAM(_ScoreAveraged):
    """IS-CAM (Naidu et al., 2020, arXiv 2010.03023) as torchcam computes it.

    ``X_ik = c_i (M_k * x)`` with ``c_i = sum_{j=1..i} j / N`` (i = 1..N);
    ``alpha = softmax_k(mean_i y_c(X_ik) - y_c(x))``. Deterministic.
    """

    name = "iscam"

    def _inputs(self, masks, images, sample, generator):
        steps = torch.arange(1, self.num_samples + 1, device=masks.device, dtype=torch.float64)
        coefficients = torch.cumsum(steps / self.num_samples, 0).to(masks.dtype)
        return coefficients[sample].view(-1, 1, 1, 1) * (masks * images)

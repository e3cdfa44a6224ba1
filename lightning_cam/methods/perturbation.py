"""Perturbation CAMs: many forward passes, run as large memory-bounded batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_cam.outputs import OutputTransform
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map
from lightning_cam.methods.layout import Reshape

__all__ = ["ScoreCAM", "AblationCAM"]


def _pairs(batch: int, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, channel) index of every one of the ``batch * channels`` perturbations."""
    images = torch.arange(batch, device=device).repeat_interleave(channels)
    return images, torch.arange(channels, device=device).repeat(batch)


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al., CVPRW 2020).

    ``M_k`` = ``A_k`` upsampled bilinearly to the input and min-max scaled to
    [0,1] (``(u - min) / (max - min + 1e-8)``); ``s_k = softmax(f(x * M_k))_c``
    (the target's probability, :meth:`~lightning_cam.targets.Target.probability`;
    ``score="logit"``, or a target without probability, uses the target's value, e.g. the
    raw logit, as pytorch-grad-cam does with its target); ``alpha = softmax_k(s)``, as the authors' released code and
    pytorch-grad-cam do (the paper's formula uses the increase over a baseline
    image instead; a softmax over channels is invariant to that constant
    shift when the baseline score is shared, so only the temperature differs).

    The ``B*K`` masked images are built per chunk of ``batch_size`` and run
    through the full model, so peak memory is set by ``batch_size``.
    """

    name = "scorecam"

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, batch_size: int = 128,
        score: str = "softmax", align_corners: bool = False, *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        if score not in ("softmax", "logit"):
            raise ValueError(f"score must be 'softmax' or 'logit', got {score!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size, self.score, self.align_corners = batch_size, score, align_corners

    def compute(self, layer_pass: LayerPass) -> Explanation:
        activation, x = layer_pass.activation, layer_pass.x
        batch, channels = activation.shape[:2]
        images, chans = _pairs(batch, channels, x.device)
        scores = activation.new_empty(batch * channels)
        with torch.no_grad():
            for start in range(0, images.numel(), self.batch_size):
                rows = slice(start, start + self.batch_size)
                b, k = images[rows], chans[rows]
                masks = F.interpolate(
                    activation[b, k][:, None], size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
                )
                flat = masks.flatten(1)
                lo = flat.min(dim=1).values[:, None, None, None]
                hi = flat.max(dim=1).values[:, None, None, None]
                masks = (masks - lo) / (hi - lo + 1e-8)
                out = layer_pass.model_scores(x[b] * masks)
                scores[rows] = self._score(layer_pass, out, b)
        weights = scores.view(batch, channels).softmax(dim=1)
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)

    def _score(self, layer_pass: LayerPass, out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``s`` of the rows ``out`` of ``images``: the target's probability (``score="softmax"``, where the
        target has one) or its value."""
        target = layer_pass.target
        if self.score == "softmax" and target.has_probability:
            return target.probability(out, images)
        return target(out, images)


class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): ``alpha_k = (t - t^{A_k := 0}) / t`` for the target ``t``
    (default: the class logit ``y_c``).

    Only the part of the network after the target layer is rerun, on the
    ``B*K`` ablated activations in chunks of ``batch_size``.
    """

    name = "ablationcam"

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, batch_size: int = 256, *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size = batch_size

    def compute(self, layer_pass: LayerPass) -> Explanation:
        activation = layer_pass.activation
        batch, channels = activation.shape[:2]
        images, chans = _pairs(batch, channels, activation.device)
        ablated_scores = []
        with torch.no_grad():
            for start in range(0, images.numel(), self.batch_size):
                b, k = images[start : start + self.batch_size], chans[start : start + self.batch_size]
                keep = 1.0 - F.one_hot(k, channels).to(activation.dtype)
                rows = activation[b] * keep[:, :, None, None]
                ablated_scores.append(layer_pass.target_scores(rows, b))
        ablated = torch.cat(ablated_scores).view(batch, channels)
        original = layer_pass.target(layer_pass.logits, layer_pass.index)[:, None]
        weights = (original - ablated) / original
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)

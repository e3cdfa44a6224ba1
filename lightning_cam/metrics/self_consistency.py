"""Coherency and ARCC, as pytorch-grad-cam 1.5.7 ``metrics/arcc.py`` (Poppi et al., "Revisiting
the Evaluation of Class Activation Mapping for Explainability: A Novel Metric and Experimental
Analysis", CVPR-W 2021, arXiv 2104.10252).

* Coherency: the map should not change when the image is masked by it,
  ``(pearson(E(x), E(x * E(x))) + 1) / 2`` (higher is better).
* ARCC: the harmonic mean of Coherency, ``1 - Complexity`` (Complexity = mean |E|, the L1 norm per
  pixel, not Quantus' entropy) and ``clip(2 * ROAD combined, 0, 1)`` (higher is better).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cam.metrics._common import Explain, TargetsLike, check_images, explain_maps, explain_targets, saliency_to_size
from lightning_cam.metrics.faithfulness import RoadScore, road

__all__ = ["ARCC_PERCENTAGES", "ArccResult", "arcc", "coherency", "l1_complexity"]

#: pytorch-grad-cam's ``ARCC(road_percentiles=[20, 40, 60, 80])``.
ARCC_PERCENTAGES: tuple[int, ...] = (20, 40, 60, 80)
_EPS = 1e-8  # pytorch-grad-cam's eps in the Pearson correlation and the harmonic mean


def _pearson_sample(a: Tensor, b: Tensor) -> Tensor:
    """pytorch-grad-cam's ``batch_pearson_coherency``: sample covariance / (sample stds + 1e-8)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    n = a.shape[1]
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    cov = (a * b).sum(1) / (n - 1)
    std = ((a**2).sum(1) / (n - 1)).sqrt() * ((b**2).sum(1) / (n - 1)).sqrt()
    return cov / (std + _EPS)


def coherency(explain: Explain, images: Tensor, saliency: Tensor, targets: TargetsLike) -> Tensor:
    """Coherency (Poppi et al. 2021; pytorch-grad-cam ``Coherency``): ``(rho + 1) / 2`` with ``rho``
    the Pearson correlation of the [0, 1] map E (at input size) and ``explain(x * E)``, the map of the
    image masked by it. 1 = the map reproduces itself (higher is better). Returns (B,) float32."""
    images = check_images(images)
    b, _, h, w = images.shape
    sal = saliency_to_size(saliency, b, (h, w)).to(images)
    targets = explain_targets(targets, b, images.device)
    again = saliency_to_size(explain_maps(explain, images * sal[:, None], targets), b, (h, w))
    return ((_pearson_sample(again, sal) + 1) / 2).float()


def l1_complexity(saliency: Tensor) -> Tensor:
    """pytorch-grad-cam's ``Complexity``: ``mean |E|`` over the pixels (0 = empty map, 1 = all ones)."""
    return saliency.flatten(1).abs().double().mean(1).float()


@dataclass
class ArccResult:
    """Per-image parts of ARCC (B,): coherency, complexity (mean |E|), road (``clip(2 * combined, 0, 1)``), arcc."""

    coherency: Tensor
    complexity: Tensor
    road: Tensor
    arcc: Tensor


def arcc(
    model: nn.Module,
    explain: Explain,
    images: Tensor,
    saliency: Tensor,
    targets: TargetsLike,
    *,
    percentages: Sequence[float] = ARCC_PERCENTAGES,
    noise: float = 0.01,
    score: RoadScore = "logit",
    generator: torch.Generator | None = None,
    batch_size: int = 32,
) -> ArccResult:
    """ARCC (pytorch-grad-cam 1.5.7 ``ARCC``): ``3 / (1/(Coh + 1e-8) + 1/(1 - Cx + 1e-8) + 1/(R + 1e-8))``
    with Coh = :func:`coherency`, Cx = :func:`l1_complexity` of the [0, 1] map at input size and
    ``R = clip(2 * ROAD combined, 0, 1)`` (:func:`~lightning_cam.metrics.faithfulness.road`, percentages 20/40/60/80).
    Higher is better."""
    images = check_images(images)
    b, _, h, w = images.shape
    sal = saliency_to_size(saliency, b, (h, w)).to(images)
    coh = coherency(explain, images, sal, targets)
    cx = l1_complexity(sal)
    r = road(model, images, sal, targets, percentages=percentages, noise=noise, score=score, generator=generator,
             batch_size=batch_size).combined
    r = (2 * r).clamp(0, 1)
    value = 3 / (1 / (coh.double() + _EPS) + 1 / ((1 - cx.double()) + _EPS) + 1 / (r.double() + _EPS))
    return ArccResult(coh, cx, r.float(), value.float())

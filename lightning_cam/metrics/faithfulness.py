"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022, arXiv 2202.00449), batched on the model's device.

Remove the most (MoRF) or least (LeRF) relevant ``p`` % of the pixels, fill them by *noisy
linear imputation* (each removed pixel = the weighted mean of its 8 neighbours, weights 1/6 for
the 4-neighbours and 1/12 for the diagonals, renormalised at the border; one sparse linear system
per image and channel, plus Gaussian noise), score the model, and average over the percentages.

The linear system is solved on the device by Jacobi-preconditioned conjugate gradients (the
matrix is symmetric positive definite as soon as one pixel is kept), every image, channel and
percentage at once: each iteration is one 3x3 convolution. References: pytorch-grad-cam 1.5.7
``metrics/road.py`` (``NoisyLinearImputer``, ``ROADMostRelevantFirstAverage``,
``ROADLeastRelevantFirstAverage``, ``ROADCombined``; scipy ``spsolve``) and Quantus 0.6 ``ROAD``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cam._checks import check_device
from lightning_cam.metrics._common import (
    TargetsLike,
    check_batch_size,
    check_images,
    evaluating,
    forward_chunks,
    resolve_target,
    saliency_to_size,
    target_scores,
)
from lightning_cam.outputs import OutputTransform, check_output_transform
from lightning_cam.targets import Target

__all__ = ["ROAD_PERCENTAGES", "RoadResult", "noisy_linear_imputation", "removal_masks", "road"]

#: The percentages of pytorch-grad-cam's ROAD averages (Rong et al. use 10..90 as well).
ROAD_PERCENTAGES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
#: Neighbour weights of the imputation (Rong et al.): 1/6 for the 4-neighbours, 1/12 diagonally.
_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))

RoadScore = Literal["logit", "softmax", "accuracy"]
Removal = Literal["threshold", "count"]
Order = Literal["morf", "lerf"]


def _neighbour_sum(x: Tensor) -> Tensor:
    """``sum_j w_j x_j`` over the 8 neighbours inside the image, for (N, 1, H, W) ``x``."""
    k = torch.tensor(_KERNEL, dtype=x.dtype, device=x.device)[None, None]
    return F.conv2d(x, k, padding=1)


def _cg_solve(b: Tensor, removed: Tensor, degree: Tensor, rtol: float, max_iter: int) -> tuple[Tensor, bool]:
    """Solve ``d_i x_i - sum_(j removed) w_ij x_j = b_i`` on the removed pixels of every (N,1,H,W)
    system by Jacobi-preconditioned conjugate gradients (Hestenes & Stiefel 1952); x = 0 on the kept
    pixels. Stops when every ``||r|| <= rtol ||b||``; returns (x, converged)."""
    m = removed.to(b.dtype)

    def apply(p: Tensor) -> Tensor:
        return m * (degree * p - _neighbour_sum(m * p))

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum(dim=(1, 2, 3), keepdim=True)

    x = torch.zeros_like(b)
    r = b.clone()
    z = r / degree
    p = z.clone()
    rz = dot(r, z)
    stop = (rtol * dot(b, b).sqrt()).clamp_min(torch.finfo(b.dtype).tiny)
    for it in range(max_iter):
        ap = apply(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        if it % 8 == 7 and bool((dot(r, r).sqrt() <= stop).all()):  # one device sync per 8 iterations
            return x, True
        z = r / degree
        rz_new = dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return x, bool((dot(r, r).sqrt() <= stop).all())


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    noise: float = 0.01,
    *,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
    max_iter: int | None = None,
) -> Tensor:
    """Fill the ``removed`` pixels of ``images`` by noisy linear imputation (Rong et al. 2022).

    Every removed pixel ``i`` (all channels) becomes the weighted mean of its in-image neighbours,
    ``d_i x_i = sum_j w_ij x_j`` with ``w`` = 1/6 (4-neighbours), 1/12 (diagonals) and
    ``d_i = sum_j w_ij`` (less than 1 at the border); neighbours that are removed too are unknowns of
    the same sparse linear system (pytorch-grad-cam's / Quantus' ``NoisyLinearImputer``, solved here
    by conjugate gradients on the device). Then ``noise * N(0, 1)`` is added to the removed pixels
    (``noise=0``: deterministic).

    Args:
        images: (B, C, H, W) floating point.
        removed: (B, H, W) bool, True where a pixel is removed.
        noise: standard deviation of the added Gaussian noise (pytorch-grad-cam, Quantus: 0.01).
        generator: torch.Generator on the images' device for the noise (None: the global RNG).
        rtol: relative residual at which conjugate gradients stop (default 1e-5 in float32, 1e-12 in
            float64); max_iter: its iteration cap (default ``10 * max(H, W) + 100``; a warning when
            it is reached).

    Returns the imputed (B, C, H, W) images (kept pixels unchanged).
    """
    images = check_images(images)
    b, c, h, w = images.shape
    if not isinstance(removed, Tensor) or removed.shape != (b, h, w) or removed.dtype != torch.bool:
        got = tuple(removed.shape) if isinstance(removed, Tensor) else type(removed).__name__
        raise ValueError(f"removed must be a bool tensor of shape {(b, h, w)} (True = removed pixel), got {got}; "
                         "e.g. removed=saliency > saliency.flatten(1).median(1).values[:, None, None]")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (the imputation noise's standard deviation), got {noise!r}; e.g. noise=0.01")
    dtype = images.dtype
    rtol = (1e-5 if dtype == torch.float32 else 1e-12) if rtol is None else rtol
    max_iter = 10 * max(h, w) + 100 if max_iter is None else max_iter
    m = removed.to(images.device)[:, None].repeat_interleave(c, 0)  # (B*C, 1, H, W)
    v = images.reshape(b * c, 1, h, w)
    degree = _neighbour_sum(torch.ones((1, 1, h, w), dtype=dtype, device=images.device))
    rhs = m * _neighbour_sum(v * ~m)
    x, converged = _cg_solve(rhs, m, degree, rtol, max_iter)
    if not converged:
        warnings.warn(f"noisy_linear_imputation: conjugate gradients stopped after max_iter={max_iter} iterations above "
                      f"rtol={rtol}; pass a larger max_iter", RuntimeWarning, stacklevel=2)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=generator, dtype=dtype, device=x.device)
    return torch.where(m, x, v).reshape(b, c, h, w)


def removal_masks(saliency: Tensor, percentages: Sequence[float], order: Order, removal: Removal = "threshold") -> Tensor:
    """(P, B, H, W) bool: the pixels that ROAD removes at each percentage ``p`` of (B, H, W) ``saliency``.

    ``removal="threshold"`` (pytorch-grad-cam): key ``k = s`` (MoRF) or ``1 - s`` (LeRF); removed
    where ``k >= quantile(k, (100 - p)/100)`` (linear interpolation computed in float64 and rounded to
    the key's dtype, as ``np.percentile``, so that a threshold that falls on a value of the map picks
    the same pixels; ties are removed together). ``removal="count"`` (Quantus, MoRF only there): exactly ``floor(H*W*p/100)`` pixels,
    the first in a stable descending (MoRF) or ascending (LeRF) sort of ``s``.
    """
    flat = saliency.flatten(1)
    b, n = flat.shape
    if removal == "threshold":
        key = flat if order == "morf" else 1.0 - flat
        wide = torch.float32 if key.device.type == "mps" else torch.float64  # MPS has no float64
        q = torch.as_tensor([(100.0 - float(p)) / 100.0 for p in percentages], dtype=wide, device=flat.device)
        thresholds = torch.quantile(key.to(wide), q, dim=1).to(key.dtype)  # (P, B)
        out = key[None] >= thresholds[:, :, None]
    else:
        order_idx = flat.argsort(dim=1, descending=(order == "morf"), stable=True)
        rank = torch.empty_like(order_idx).scatter_(1, order_idx, torch.arange(n, device=flat.device).expand(b, n))
        counts = torch.as_tensor([int(n * float(p) / 100) for p in percentages], device=flat.device)
        out = rank[None] < counts[:, None, None]
    return out.reshape(len(percentages), *saliency.shape)


@dataclass
class RoadResult:
    """Per-image ROAD curves (tensors on the images' device).

    percentages: the removed percentages (P,). clean: (B,) score of the target on the image.
    morf_curve / lerf_curve: (B, P) score after removing the most / least relevant p %, or None
    when that order was not run. Score: the target's logit, softmax probability, or 1.0 / 0.0 for
    "top-1 prediction is still the target" (``score="accuracy"``, Quantus). targets: (B,) the class
    scored (None for a target without classes); target: the bound Target.
    """

    percentages: tuple[float, ...]
    clean: Tensor
    morf_curve: Tensor | None
    lerf_curve: Tensor | None
    targets: Tensor | None
    target: Target | None = None

    @property
    def morf(self) -> Tensor:
        """(B,) ``mean_p(score_p) - clean`` after removing the MOST relevant pixels (lower is better;
        pytorch-grad-cam's ``ROADMostRelevantFirstAverage``)."""
        return _mean_change(self.morf_curve, self.clean, "morf")

    @property
    def lerf(self) -> Tensor:
        """(B,) ``mean_p(score_p) - clean`` after removing the LEAST relevant pixels (higher is better)."""
        return _mean_change(self.lerf_curve, self.clean, "lerf")

    @property
    def combined(self) -> Tensor:
        """(B,) ``(LeRF - MoRF) / 2`` (higher is better; pytorch-grad-cam's ``ROADCombined``)."""
        return (self.lerf - self.morf) / 2


def _mean_change(curve: Tensor | None, clean: Tensor, order: str) -> Tensor:
    if curve is None:
        raise ValueError(f"this ROAD result has no {order} curve; run road(..., orders=('morf', 'lerf'))")
    return curve.mean(dim=1) - clean


def _still_predicted(target: Target, scores: Tensor, index: Tensor | None) -> Tensor:
    """(N,) 1.0 where the model still predicts the target, else 0.0: ``argmax(y) == c`` for a class
    target, ``target(y) > 0`` for binary (the predicted side is ``c``) and multi-label (``sigmoid(y_c) > 1/2``)."""
    if target.kind == "class" and target.classes is not None:
        classes = target.classes.to(scores.device)
        return (scores.argmax(dim=1) == (classes if index is None else classes[index])).float()
    if target.kind in ("binary", "multilabel"):
        return (target(scores, index) > 0).float()
    raise ValueError(
        f"score='accuracy' (is the target still predicted?) has no meaning for a {target.kind} target ({target!r}); "
        "use score='logit'"
    )


def _scores(target: Target, logits: Tensor, index: Tensor | None, score: RoadScore) -> Tensor:
    if score == "accuracy":
        return _still_predicted(target, logits, index)
    return target_scores(target, logits, index, score)


def road(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    targets: TargetsLike = None,
    *,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    orders: Sequence[Order] = ("morf", "lerf"),
    noise: float = 0.01,
    removal: Removal = "threshold",
    score: RoadScore = "logit",
    generator: torch.Generator | None = None,
    batch_size: int = 32,
    output_transform: OutputTransform | None = None,
    clean_logits: Tensor | None = None,
) -> RoadResult:
    """ROAD (Rong et al., ICML 2022): the model's score after removing the most (MoRF) / least (LeRF)
    relevant ``p`` % of the pixels and filling them by :func:`noisy_linear_imputation`.

    ``MoRF = mean_p s(x_MoRF,p) - s(x)`` (lower is better: the map finds what the model needs),
    ``LeRF = mean_p s(x_LeRF,p) - s(x)`` (higher is better), ``combined = (LeRF - MoRF) / 2``
    (higher is better). Defaults follow pytorch-grad-cam's ``ROADCombined``: percentages 10..90,
    noise 0.01, threshold removal, the target's logit (``ClassifierOutputTarget``). Quantus' ``ROAD``
    is ``orders=("morf",), removal="count", score="accuracy"`` with its percentages ``range(1, 100, 2)``.

    Args:
        saliency: (B, h, w) maps (upsampled bilinearly to the images); only their order matters.
        targets: anything :func:`~lightning_cam.targets.resolve_target` accepts (None: the top-1
            prediction on the clean image, or the default of the output's shape), bound once to the
            clean scores; ``score="softmax"`` needs a target with a probability.
        generator: torch.Generator for the imputation noise (seeded: reproducible).
        batch_size: images per forward pass; clean_logits: the model's output on ``images`` if known.

    Every (percentage, order) image of the batch is imputed in one solve and scored in chunks of
    ``batch_size``: ``B * P * len(orders)`` forward passes.
    """
    images = check_images(images)
    batch_size = check_batch_size(batch_size)
    output_transform = check_output_transform(output_transform)
    if score not in ("logit", "softmax", "accuracy"):
        raise ValueError(f"score must be 'logit', 'softmax' or 'accuracy', got {score!r}; e.g. score='logit'")
    if removal not in ("threshold", "count"):
        raise ValueError(f"removal must be 'threshold' (pytorch-grad-cam) or 'count' (Quantus), got {removal!r}")
    bad_orders = [o for o in orders if o not in ("morf", "lerf")]
    if bad_orders or not orders:
        raise ValueError(f"orders must be a non-empty subset of ('morf', 'lerf'), got {tuple(orders)!r}; e.g. orders=('morf',)")
    if not percentages or any(not 0 < float(p) < 100 for p in percentages):
        raise ValueError(f"percentages must lie strictly between 0 and 100, got {tuple(percentages)!r}; e.g. percentages=(10, 50, 90)")
    check_device(model, images)
    b, c, h, w = images.shape
    sal = saliency_to_size(saliency, b, (h, w)).to(images.device)
    with evaluating(model, images.device):
        logits = forward_chunks(model, images, batch_size, output_transform) if clean_logits is None else clean_logits.detach()
        target = resolve_target(targets, logits)
        clean = _scores(target, logits.float(), None, score)
        curves: dict[str, Tensor] = {}
        for order in orders:
            removed = removal_masks(sal, percentages, order, removal)  # (P, B, H, W)
            p = removed.shape[0]
            filled = noisy_linear_imputation(images.repeat(p, 1, 1, 1), removed.reshape(p * b, h, w), noise, generator=generator)
            out = forward_chunks(model, filled, batch_size, output_transform)
            rows = torch.arange(b, device=images.device).repeat(p)
            curves[order] = _scores(target, out.float(), rows, score).reshape(p, b).T
    return RoadResult(tuple(float(p) for p in percentages), clean, curves.get("morf"), curves.get("lerf"),
                      target.classes, target)

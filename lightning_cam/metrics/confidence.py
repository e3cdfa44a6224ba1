"""Average Drop, Increase in Confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018) and
Average Drop in Deletion (the LIFT-CAM authors' line of work)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cam.maps import normalize_maps
from lightning_cam._checks import check_device
from lightning_cam.metrics._common import (
    Score,
    TargetsLike,
    check_batch_size,
    check_images,
    check_score,
    clean_output,
    evaluating,
    model_scores,
    require_probability,
    resolve_target,
    saliency_to_size,
    target_scores,
)
from lightning_cam.outputs import OutputTransform, check_output_transform
from lightning_cam.targets import Target

__all__ = ["ConfidenceResult", "confidence_change"]

_RANGE_TOL = 1e-6


@dataclass
class ConfidenceResult:
    """Per-image confidence changes (tensors on the images' device).

    score: Y, the score of ``targets`` on x. masked_score: O, on ``x * E``.
    deleted_score: D, on ``x * (1 - E)``.
    drop: ``max(0, Y - O) / Y`` (fraction). increase: ``O > Y`` (bool).
    drop_in_deletion: ``(Y - D) / Y`` (fraction; can be negative).
    Images whose Y is 0 (softmax underflow) get drop = drop_in_deletion = 0.
    targets: (B,) the class scored (None for a target without classes); target: the bound Target.
    """

    score: Tensor
    masked_score: Tensor
    deleted_score: Tensor
    drop: Tensor
    increase: Tensor
    drop_in_deletion: Tensor
    targets: Tensor | None
    target: Target | None = None

    @property
    def average_drop(self) -> float:
        """Average Drop in %: ``mean(max(0, Y - O) / Y) * 100`` (lower is better)."""
        return float(self.drop.mean()) * 100.0

    @property
    def increase_in_confidence(self) -> float:
        """Increase in Confidence in %: ``mean(O > Y) * 100`` (higher is better)."""
        return float(self.increase.float().mean()) * 100.0

    @property
    def average_drop_in_deletion(self) -> float:
        """Average Drop in Deletion in %: ``mean((Y - D) / Y) * 100`` (higher is better)."""
        return float(self.drop_in_deletion.mean()) * 100.0


def explanation_map(saliency: Tensor, batch: int, size: tuple[int, int], normalize: bool) -> Tensor:
    """E: saliency upsampled (bilinear) to ``size``, optionally min-max scaled per image, checked in [0, 1]."""
    e = saliency_to_size(saliency, batch, size)
    if normalize:
        e = normalize_maps(e)
    elif bool((e < -_RANGE_TOL).any() or (e > 1 + _RANGE_TOL).any()):
        raise ValueError(
            f"saliency must lie in [0, 1] (got values in [{float(e.min()):.4g}, {float(e.max()):.4g}]); "
            "pass normalize=True to min-max scale each map, or use Explanation.saliency()"
        )
    return e.clamp(0.0, 1.0)


def confidence_change(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    targets: TargetsLike = None,
    *,
    score: Score = "softmax",
    normalize: bool = False,
    batch_size: int = 256,
    output_transform: OutputTransform | None = None,
    clean_logits: Tensor | None = None,
    deletion: bool = True,
) -> ConfidenceResult:
    """Average Drop / Increase in Confidence (Grad-CAM++) and Average Drop in Deletion.

    ``Y`` = score of class c on x (c = top-1 prediction, or ``targets``); ``O`` = score on
    ``x * E`` and ``D`` = score on ``x * (1 - E)``, with E the [0, 1] map upsampled bilinearly to
    the input. Average Drop % = ``mean(max(0, Y-O)/Y) * 100``; Increase in Confidence % =
    ``mean(O > Y) * 100``; Average Drop in Deletion % = ``mean((Y-D)/Y) * 100``.

    The images are multiplied by E *in normalised input space*, as the Grad-CAM++ authors' code
    (and torchcam, pytorch-grad-cam) does: masked pixels go to the normalised value 0, i.e. the
    dataset mean, not to black.

    Both need a positive, bounded score: they have no meaning for a target without a probability
    (a regression output, per-image callables), which raises ValueError. For the other kinds Y is
    the target's ``probability`` (``softmax(y)_c``; ``sigmoid`` for binary / multi-label; the mean
    class probability inside the mask for segmentation).

    Args:
        saliency: (B,H,W) or (B,h,w) maps in [0, 1] (e.g. ``Explanation.saliency()``); raw maps
            need ``normalize=True`` (per-image min-max; a constant map becomes zeros).
        targets: anything :func:`~lightning_cam.targets.resolve_target` accepts (None: the default
            of the output's shape), bound once to the clean scores.
        score: ``"softmax"`` (the target's probability, the paper) or ``"logit"`` (its value; a
            model ending in softmax). With ``"logit"`` every Y must be > 0, else ValueError (ratios undefined).
        output_transform: callable reading the (N, C) scores from the model's output when it is
            not a tensor, a tuple/list, a dict with ``"logits"`` or an object with ``.logits``.
        clean_logits: the model's scores on ``images`` ((B,), (B, C) or (B, C, H, W)) when already known
            (e.g. ``Explanation.logits`` of the explanation pass); saves the clean forward pass.
        deletion: also score ``x * (1 - E)`` (Average Drop in Deletion); ``False`` halves the
            forward passes and leaves ``deleted_score`` / ``drop_in_deletion`` NaN.

    Images are cast to the model's dtype for each forward pass; scores are float32. An image
    whose Y or O is not finite gets a NaN ``drop`` (never a silent 0); ``drop_in_deletion`` is
    NaN when Y or D is not.
    """
    score = check_score(score)
    batch_size = check_batch_size(batch_size)
    output_transform = check_output_transform(output_transform)
    images = check_images(images)
    b, _, h, w = images.shape
    device = images.device
    check_device(model, images)
    e = explanation_map(saliency, b, (h, w), normalize).to(device)[:, None]

    with evaluating(model, device):
        logits = clean_output(model, images, batch_size, clean_logits, output_transform)
        target = resolve_target(targets, logits)
        require_probability(
            target, "Average Drop / Increase in Confidence need a positive, bounded score (the target's probability)",
            f"they have no meaning for a {target.kind} target (the ratio (Y - O) / Y of an unbounded score "
            "that may be negative or zero); use insertion_deletion(..., score='logit') or road(...) instead",
        )
        y = target_scores(target, logits, None, score)
        if score == "logit" and bool((y <= 0).any()):  # NaN compares False: reported as NaN below
            raise ValueError(
                "Average Drop divides by the clean score Y, which must be > 0; with score='logit' images "
                f"{(y <= 0).nonzero().flatten().tolist()} have Y <= 0. Use score='softmax'."
            )
        # x*E and x*(1-E) for all images, chunked together (2B images)
        outs = []
        total = 2 * b if deletion else b
        for i in range(0, total, batch_size):
            idx = torch.arange(i, min(i + batch_size, total), device=device)
            img_idx = idx % b
            m = e[img_idx]
            m = torch.where((idx < b)[:, None, None, None], m, 1.0 - m)
            outs.append(target_scores(target, model_scores(model, images[img_idx] * m, output_transform), img_idx, score))
        both = torch.cat(outs)
    o = both[:b]
    d = both[b:] if deletion else torch.full_like(o, float("nan"))
    valid = y > 0
    denom = torch.where(valid, y, torch.ones_like(y))
    drop = torch.where(valid, (y - o).clamp_min(0) / denom, torch.zeros_like(y))
    drop_in_deletion = torch.where(valid, (y - d) / denom, torch.zeros_like(y))
    nonfinite = ~(torch.isfinite(y) & torch.isfinite(o))
    drop = drop.masked_fill(nonfinite, float("nan"))
    drop_in_deletion = drop_in_deletion.masked_fill(nonfinite | ~torch.isfinite(d), float("nan"))
    if not deletion:
        drop_in_deletion = torch.full_like(o, float("nan"))
    return ConfidenceResult(
        score=y,
        masked_score=o,
        deleted_score=d,
        drop=drop,
        increase=o > y,
        drop_in_deletion=drop_in_deletion,
        targets=target.classes,
        target=target,
    )

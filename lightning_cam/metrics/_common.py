"""Shared helpers of the metrics: input checks, model evaluation context, scoring.

Every metric follows a :class:`~lightning_cam.targets.Target` bound once to the clean scores
(:func:`~lightning_cam.targets.resolve_target`): ``score="softmax"`` follows its bounded
``target.probability``, ``score="logit"`` its value ``target(scores, index)``
(:func:`target_scores`); the model's scores are read by one helper, :func:`model_scores`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_cam._checks import check_images as check_image_batch
from lightning_cam._state import autocast_off, eval_mode, model_dtype, to_model_dtype
from lightning_cam.maps import upsample_maps
from lightning_cam.outputs import OutputTransform, accumulation_dtype, float_logits
from lightning_cam.targets import Target, TargetsLike, resolve_target

__all__ = [
    "Explain", "Score", "TargetsLike", "check_batch_size", "check_images", "check_score", "clean_output",
    "evaluating", "explain_maps", "explain_targets", "forward_chunks", "model_scores", "require_probability",
    "resolve_target", "saliency_to_size", "target_scores",
]

Score = Literal["softmax", "logit"]

_SCORES = ("softmax", "logit")


@contextlib.contextmanager
def evaluating(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, ``no_grad`` and autocast off (float32) for the duration; the
    per-module ``training`` flags are restored exactly afterwards.

    Works inside ``torch.inference_mode()`` (nothing here needs autograd).
    """
    with eval_mode(model), torch.no_grad(), autocast_off(device.type):
        yield


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """(B,C,H,W) float32 (float64 stays float64) view/copy of finite floating-point ``images``;
    clear ValueError otherwise."""
    images = check_image_batch(images, name)
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (normalised model input), got {images.dtype}")
    images = images.detach().to(accumulation_dtype(images.dtype))
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return images



def check_score(score: str) -> Score:
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    return score  # type: ignore[return-value]


def saliency_to_size(saliency: Tensor, batch: int, size: tuple[int, int], name: str = "saliency") -> Tensor:
    """Validate a saliency batch and upsample it bilinearly (align_corners=False) to ``size``.

    Accepts (B,h,w) or (B,1,h,w); returns float32 (B,H,W) on the same device.
    """
    if not isinstance(saliency, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, h, w), got {type(saliency).__name__}")
    if saliency.ndim == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.ndim != 3:
        raise ValueError(f"{name} must have shape (B, h, w) or (B, 1, h, w), got shape {tuple(saliency.shape)}")
    if saliency.shape[0] != batch:
        raise ValueError(f"{name} has batch size {saliency.shape[0]} but there are {batch} images/masks")
    if saliency.shape[1] == 0 or saliency.shape[2] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(saliency.shape[1:])}")
    saliency = saliency.detach().float()
    bad = ~torch.isfinite(saliency).flatten(1).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or infinite values (images {bad.nonzero().flatten().tolist()})")
    return upsample_maps(saliency, size)


def require_probability(
    target: Target,
    needs: str = "score='softmax' follows the target's probability (a bounded score)",
    remedy: str = "pass score='logit' to follow the target's value (the raw output) instead",
) -> None:
    """A clear ValueError when ``target`` has no bounded score (regression outputs, per-image callables)."""
    if not target.has_probability:
        raise ValueError(f"{needs}, and a {target.kind} target ({target!r}) has none; {remedy}")


def target_scores(target: Target, scores: Tensor, index: Tensor | None, score: Score) -> Tensor:
    """(N,) the score a metric follows on the rows ``scores`` of the images ``index`` (None: the B
    images in order): ``target.probability(scores, index)`` for ``score="softmax"`` (the softmax
    probability ``softmax(y)_c`` of a class target, ``sigmoid`` for binary / multi-label, the mean
    class probability inside the mask for segmentation), ``target(scores, index)`` for ``"logit"``."""
    if score == "logit":
        return target(scores, index)
    require_probability(target)
    return target.probability(scores, index)


def explain_targets(targets: TargetsLike, batch: int, device: torch.device) -> TargetsLike:
    """The ``targets`` an :data:`Explain` function receives: a :class:`~lightning_cam.targets.Target`
    unchanged (bound: re-explaining a perturbed image explains the same target), class indices as a
    (B,) long tensor."""
    if isinstance(targets, Target):
        return targets
    return torch.as_tensor(targets, device=device).long().reshape(-1).expand(batch)


def model_scores(model: nn.Module, images: Tensor, output_transform: OutputTransform | None = None) -> Tensor:
    """The scores of ``model`` on ``images`` (cast to the model's dtype first): (N,), (N, C) or
    (N, C, H, W), in float32 (float64 for a float64 model). The one place the metrics read scores.

    The output may be anything :func:`lightning_cam.outputs.logits_of` understands, or
    what ``output_transform`` turns into scores.
    """
    return float_logits(model(to_model_dtype(images, model)), output_transform)


def forward_chunks(
    model: nn.Module, images: Tensor, batch_size: int, output_transform: OutputTransform | None = None
) -> Tensor:
    """:func:`model_scores` for ``images`` evaluated ``batch_size`` images at a time."""
    outs = [model_scores(model, images[i : i + batch_size], output_transform) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def clean_output(
    model: nn.Module, images: Tensor, batch_size: int, clean_logits: Tensor | None,
    output_transform: OutputTransform | None = None,
) -> Tensor:
    """The model's scores on the clean ``images`` (float32; float64 for a float64 model): ``clean_logits``
    when given (checked), else a forward pass."""
    if clean_logits is None:
        return forward_chunks(model, images, batch_size, output_transform)
    if not isinstance(clean_logits, Tensor) or clean_logits.ndim == 0 or clean_logits.shape[0] != images.shape[0]:
        shape = tuple(clean_logits.shape) if isinstance(clean_logits, Tensor) else type(clean_logits).__name__
        raise ValueError(
            f"clean_logits must be the model's output on the images: {images.shape[0]} rows of scores, shape (B,), "
            f"(B, num_classes) or (B, num_classes, H, W); got {shape}. Example: clean_logits=explanation.logits"
        )
    # the dtype the masked scores come in (model_scores), so that clean and masked compare alike
    return clean_logits.detach().to(device=images.device, dtype=accumulation_dtype(model_dtype(model)))


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


#: An explanation function of the robustness / randomisation metrics: (B, C, H, W) images and the
#: targets ((B,) classes, or a bound :class:`~lightning_cam.targets.Target`) -> (B, h, w) maps, e.g. ``lambda x, t: explain_all(model, "layer4", x, ["gradcam"], t)["gradcam"].saliency(x.shape[-2:])``.
Explain = Callable[[Tensor, TargetsLike], Tensor]


def explain_maps(explain: Explain, images: Tensor, targets: TargetsLike, name: str = "explain") -> Tensor:
    """``explain(images, targets)`` checked: a (B, h, w) floating-point tensor (a (B, 1, h, w) one is squeezed)."""
    if not callable(explain):
        raise ValueError(f"{name} must be a callable (images, targets) -> (B, h, w) maps, got {type(explain).__name__}; "
                         "e.g. explain=lambda x, t: explain_all(model, 'layer4', x, ['gradcam'], t)['gradcam'].saliency(x.shape[-2:])")
    maps = explain(images, targets)
    if isinstance(maps, Tensor) and maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != images.shape[0] or not maps.is_floating_point():
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"{name} must return floating-point (B, h, w) maps for B = {images.shape[0]} images, got {got}")
    return maps.detach()

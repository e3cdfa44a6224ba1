"""Insertion and deletion curves (Petsiuk et al., "RISE", BMVC 2018), batched on the model's device.

Protocol of the authors' evaluation code (``evaluation.py`` of eclique/RISE), which the
published numbers use:

* score: softmax probability of class ``c``, ``c`` = top-1 prediction on the clean image,
  fixed along the whole curve (for any :class:`~lightning_cam.targets.Target`: its bounded
  ``probability``, or its value with ``score="logit"``, bound once on the clean image);
* pixel order: saliency at input resolution sorted descending, ties in stable (raster) order;
* ``n_steps = ceil(H*W / step)``, ``n_steps + 1`` points; point ``i`` takes the pixels of rank
  ``< i*step`` (all channels) from the *finish* image and the rest from the *start* image;
* deletion: start = image, finish = zeros; insertion: start = blurred image, finish = image;
  the blur is the authors' ``gkern(11, 5)`` applied per channel with ``conv2d(padding=5)``;
* AUC of a curve ``s`` of ``n`` points: ``(sum(s) - s[0]/2 - s[-1]/2) / (n - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    resolve_target,
    saliency_to_size,
    target_scores,
)
from lightning_cam.outputs import OutputTransform, check_output_transform
from lightning_cam.targets import Target

Substrate = Union[str, float, int, Tensor]

__all__ = [
    "InsertionDeletionResult",
    "auc",
    "blur",
    "gaussian_kernel",
    "insertion_deletion",
    "make_substrate",
    "pixel_ranks",
]


def gaussian_kernel(size: int = 11, sigma: float = 5.0, truncate: float = 4.0) -> Tensor:
    """The RISE authors' blur kernel ``gkern(size, sigma)``, computed in torch (no scipy).

    ``gkern`` filters a ``size x size`` delta with ``scipy.ndimage.gaussian_filter(delta, sigma)``
    (mode ``'reflect'``, ``truncate=4``). With ``sigma=5`` the Gaussian (radius 20) is wider than
    the 11-pixel window, so the reflections fold its tails back in and the result is nearly flat:
    it is NOT a truncated Gaussian. The filter is separable and so is the delta, hence the kernel is
    ``outer(k1, k1)`` with ``k1`` the 1-D reflect-mode filtering of a 1-D delta. Computed in float64
    and returned as float32 of shape (size, size), like the authors' ``float32`` kernel.
    """
    if size < 1 or sigma <= 0:
        raise ValueError(f"gaussian_kernel needs size >= 1 and sigma > 0, got size={size}, sigma={sigma}")
    radius = int(truncate * float(sigma) + 0.5)  # scipy.ndimage._gaussian_kernel1d
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * offsets**2 / float(sigma) ** 2)
    weights = weights / weights.sum()
    # scipy 'reflect' (half-sample symmetric): ... c b a | a b c ... period 2*size
    period = 2 * size
    positions = torch.arange(size, dtype=torch.long)[:, None] + offsets.long()[None, :]  # (size, 2r+1)
    folded = positions % period
    folded = torch.where(folded >= size, period - 1 - folded, folded)
    delta = torch.zeros(size, dtype=torch.float64)
    delta[size // 2] = 1.0
    k1 = (delta[folded] * weights[None, :]).sum(dim=1)
    return torch.outer(k1, k1).float()


def blur(images: Tensor, kernel: Tensor | None = None) -> Tensor:
    """Blur (B,C,H,W) per channel with ``kernel`` (default :func:`gaussian_kernel`), zero padding.

    Equals the authors' ``conv2d(x, kern, padding=klen//2)`` with ``kern[c, c] = k``.
    """
    if kernel is None:
        kernel = gaussian_kernel()
    k = kernel.to(device=images.device, dtype=images.dtype)
    channels = images.shape[1]
    weight = k[None, None].expand(channels, 1, *k.shape).contiguous()
    return F.conv2d(images, weight, padding=(k.shape[0] // 2, k.shape[1] // 2), groups=channels)


def make_substrate(substrate: Substrate, images: Tensor) -> Tensor:
    """The substrate image for ``images`` (B,C,H,W), possibly an expanded (stride-0) view.

    ``"zeros"``: zeros (in normalised input space); ``"blur"``: :func:`blur`; a number: that
    constant everywhere; a tensor broadcastable to (B,C,H,W): e.g. the dataset mean per channel
    as a (C,) tensor (in the model's input space, i.e. normalised like ``images``).
    """
    b, c, h, w = images.shape
    if isinstance(substrate, str):
        if substrate in ("zeros", "zero"):
            return images.new_zeros(()).expand(b, c, h, w)
        if substrate == "blur":
            return blur(images)
        raise ValueError(f"substrate must be 'zeros', 'blur', a number or a tensor, got {substrate!r}")
    if isinstance(substrate, (int, float)) and not isinstance(substrate, bool):
        if not math.isfinite(float(substrate)):
            raise ValueError(f"a constant substrate must be finite, got {substrate!r}")
        return images.new_tensor(float(substrate)).expand(b, c, h, w)
    if isinstance(substrate, Tensor):
        s = substrate.detach().to(device=images.device, dtype=images.dtype)
        if s.ndim == 1 and s.shape[0] == c:  # per-channel values, e.g. the dataset mean
            s = s[:, None, None]
        try:
            s = s.expand(b, c, h, w)
        except RuntimeError:
            raise ValueError(
                f"a tensor substrate must be (C,) = ({c},) per-channel values or broadcastable to "
                f"(B, C, H, W) = {(b, c, h, w)}, got shape {tuple(substrate.shape)}"
            ) from None
        if not bool(torch.isfinite(s).all()):
            raise ValueError("the substrate tensor contains NaN or infinite values")
        return s
    raise ValueError(f"substrate must be 'zeros', 'blur', a number or a tensor, got {type(substrate).__name__}")


def _same_substrate(a: Substrate, b: Substrate) -> bool:
    """Whether two substrate specs give the same image (then the all-substrate point is shared)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    if isinstance(a, str) and isinstance(b, str):
        alias = {"zero": "zeros"}
        return alias.get(a, a) == alias.get(b, b)
    if isinstance(a, str) or isinstance(b, str):
        return False
    return float(a) == float(b)


def auc(curve: Tensor) -> Tensor:
    """RISE's AUC over the last dim: ``(sum(s) - s[0]/2 - s[-1]/2) / (n - 1)`` (trapezoid on [0, 1])."""
    n = curve.shape[-1]
    if n < 2:
        raise ValueError(f"an AUC needs a curve of at least 2 points, got {n}")
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (n - 1)


@dataclass
class InsertionDeletionResult:
    """Per-image insertion/deletion results (all tensors on the images' device).

    insertion, deletion: (B,) AUCs (higher insertion / lower deletion = more faithful).
    insertion_curve, deletion_curve: (B, n_steps + 1) scores along the curves.
    targets: (B,) the class scored (None for a target without classes: regression, callables).
    clean_score: (B,) its score on the clean image.
    fractions: (n_steps + 1,) fraction of pixels taken from the finish image at each point.
    target: the bound :class:`~lightning_cam.targets.Target` the curves follow.
    """

    insertion: Tensor
    deletion: Tensor
    insertion_curve: Tensor
    deletion_curve: Tensor
    targets: Tensor | None
    clean_score: Tensor
    fractions: Tensor
    target: Target | None = None

    @property
    def n_steps(self) -> int:
        return self.insertion_curve.shape[1] - 1

    @property
    def mean_insertion(self) -> float:
        return float(self.insertion.mean())

    @property
    def mean_deletion(self) -> float:
        return float(self.deletion.mean())


def pixel_ranks(saliency: Tensor) -> Tensor:
    """``rank[b, p]``: position of pixel ``p`` of (B,H,W) ``saliency`` in the descending, stable order.

    The curves depend on the saliency only through these ranks: two maps with equal ranks give
    identical insertion / deletion curves.
    """
    b = saliency.shape[0]
    flat = saliency.reshape(b, -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


def _thresholds(hw: int, step: int | None, n_steps: int | None, device: torch.device) -> Tensor:
    """Number of pixels taken from the finish image at each curve point, (n_steps + 1,) long."""
    if step is not None and n_steps is not None:
        raise ValueError("give either step or n_steps, not both")
    if n_steps is not None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 1 <= n_steps <= hw:
            raise ValueError(f"n_steps must be an int in [1, H*W = {hw}], got {n_steps!r}")
        return torch.div(torch.arange(n_steps + 1, device=device) * hw, n_steps, rounding_mode="floor")
    if step is None:
        step = 224
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive int (pixels per curve step), got {step!r}")
    n = -(-hw // step)
    return torch.arange(n + 1, device=device) * step


def insertion_deletion(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    targets: TargetsLike = None,
    step: int | None = None,
    batch_size: int = 256,
    *,
    n_steps: int | None = None,
    score: Score = "softmax",
    deletion_substrate: Substrate = "zeros",
    insertion_substrate: Substrate = "blur",
    output_transform: OutputTransform | None = None,
    clean_logits: Tensor | None = None,
) -> InsertionDeletionResult:
    """Insertion and deletion curves and AUCs (Petsiuk et al., RISE, BMVC 2018).

    Defaults follow the authors' evaluation code exactly (see the module docstring):
    ``score = softmax(model(x))[c]`` with ``c`` the top-1 class of the clean image (or ``targets``),
    pixels ranked by descending saliency (stable ties), ``n_steps = ceil(H*W/step)`` (``step``
    defaults to 224), point ``i`` = pixels of rank ``< i*step`` from the finish image;
    deletion zeros -> AUC ``(sum(s) - s0/2 - s_last/2)/(n-1)``; insertion from the blurred image.

    Args:
        model: returns scores (N,), (N, num_classes) or (N, num_classes, H, W) (see
            :mod:`lightning_cam.outputs`); left untouched (modes restored, no grads).
        images: (B,C,H,W) normalised model inputs, on the model's device.
        saliency: (B,H,W) or layer-resolution (B,h,w) maps (upsampled bilinearly,
            align_corners=False); only the pixel order matters.
        targets: None (the default of the output's shape: top-1 class, predicted side, predicted
            segmentation class), an int, B ints or a (B,) integer tensor (e.g. labels), a
            :mod:`lightning_cam.targets` built-in or B per-image callables (pytorch-grad-cam's
            target objects); bound once to the clean scores (:func:`~lightning_cam.targets.resolve_target`).
        step: pixels per curve step (default 224). Exclusive with ``n_steps``.
        batch_size: images per forward pass; peak memory is set by it, not by B * n_steps.
        n_steps: exactly ``n_steps + 1`` points; point ``i`` takes ``floor(i*H*W/n_steps)`` pixels
            (identical to ``step = H*W/n_steps`` when that divides).
        score: ``"softmax"``: the target's bounded ``probability`` (the paper: ``softmax(y)_c``;
            ``sigmoid`` for binary / multi-label; the mean class probability inside the mask for
            segmentation); ``"logit"``: the target's value ``target(y)`` (raw model output; also the
            right choice for a model that already ends in a softmax, and the only one for a
            regression or callable target, which have no probability: ValueError otherwise).
        deletion_substrate / insertion_substrate: ``"zeros"``, ``"blur"``, a constant, or a tensor
            broadcastable to the images (e.g. a (C,) per-channel dataset mean, in input space).
        output_transform: callable reading the (N, C) scores from the model's output when it is
            not a tensor, a tuple/list, a dict with ``"logits"`` or an object with ``.logits``.

    Images are cast to the model's dtype for each forward pass (bf16 / fp16 / float64 models);
    curves and AUCs are float32. A non-finite model output gives that image NaN curves and AUCs.
        clean_logits: the model's scores on ``images`` ((B,), (B, C) or (B, C, H, W)) when already known
            (e.g. ``Explanation.logits`` of the explanation pass); saves the clean forward pass.

    Both curves share the clean image's score at the image end (deletion point 0, insertion
    point n), so ``B * (2*n_steps + 1)`` images are evaluated (one fewer per image when both
    substrates are the same, which then share the all-substrate point). Curve images are built per chunk
    with ``torch.where`` on the rank tensor from (image, step) indices: no per-image loop.
    Note: the authors rank with ``np.flip(np.argsort(...))`` which orders *tied* pixels
    differently; on tie-free maps the curves are identical.
    """
    score = check_score(score)
    batch_size = check_batch_size(batch_size)
    output_transform = check_output_transform(output_transform)
    images = check_images(images)
    b, c, h, w = images.shape
    hw = h * w
    device = images.device
    check_device(model, images)
    sal = saliency_to_size(saliency, b, (h, w)).to(device)
    thresholds = _thresholds(hw, step, n_steps, device)
    n = thresholds.shape[0] - 1

    rank = pixel_ranks(sal)

    with evaluating(model, device):
        clean_logits = clean_output(model, images, batch_size, clean_logits, output_transform)
        target = resolve_target(targets, clean_logits)
        clean = target_scores(target, clean_logits, None, score)
        del clean_logits

        # Deletion jobs j in [0, B*n): image j // n, point j % n + 1 (points 1..n; point 0 = clean).
        # Insertion jobs j in [B*n, B*n + B*ni): image jj // ni, point jj % ni + shared (points up to
        # n-1; point n = clean). When both curves use the same substrate, insertion point 0 (all
        # substrate) is deletion point n and is not evaluated twice (shared = 1).
        shared = int(_same_substrate(deletion_substrate, insertion_substrate))
        del_sub = make_substrate(deletion_substrate, images)
        substrates = (del_sub, del_sub if shared else make_substrate(insertion_substrate, images))
        ni = n - shared
        per_kind = b * n
        total = per_kind + b * ni
        scores = torch.empty(total, device=device, dtype=torch.float32)
        for j0 in range(0, total, batch_size):
            j1 = min(j0 + batch_size, total)
            j = torch.arange(j0, j1, device=device)
            kind = (j >= per_kind).long()
            jj = j - kind * per_kind
            width = torch.where(kind.bool(), max(ni, 1), n)
            img_idx = torch.div(jj, width, rounding_mode="floor")
            point = jj - img_idx * width + torch.where(kind.bool(), shared, 1)
            from_finish = rank[img_idx] < thresholds[point][:, None]
            # deletion: finish = substrate; insertion: start = substrate
            take_substrate = (from_finish ^ kind.bool()[:, None]).view(-1, 1, h, w)
            chunk = torch.empty((j1 - j0, c, h, w), device=device, dtype=images.dtype)
            split = min(max(per_kind - j0, 0), j1 - j0)  # rows [0, split) are deletion jobs
            for k, lo, hi in ((0, 0, split), (1, split, j1 - j0)):
                if hi > lo:
                    idx = img_idx[lo:hi]
                    torch.where(
                        take_substrate[lo:hi],
                        substrates[k][:1] if substrates[k].stride(0) == 0 else substrates[k][idx],
                        images[idx],
                        out=chunk[lo:hi],
                    )
            # advanced indexing (t[idx]) rather than index_select: the latter is ~35x slower on CPU
            # for 4-D tensors in torch 2.x
            out = model_scores(model, chunk, output_transform)
            del chunk
            scores[j0:j1] = target_scores(target, out, img_idx, score)

    deletion_curve = torch.cat([clean[:, None], scores[:per_kind].view(b, n)], dim=1)
    first = [deletion_curve[:, -1:]] if shared else []
    insertion_curve = torch.cat([*first, scores[per_kind:].view(b, ni), clean[:, None]], dim=1)
    fractions = thresholds.clamp(max=hw).float() / hw
    return InsertionDeletionResult(
        insertion=auc(insertion_curve),
        deletion=auc(deletion_curve),
        insertion_curve=insertion_curve,
        deletion_curve=deletion_curve,
        targets=target.classes,
        clean_score=clean,
        fractions=fractions,
        target=target,
    )

"""Random Logit (Sixt et al., "When Explanations Lie: Why Many Modified BP Attributions Fail",
ICML 2020; Quantus 0.6 ``RandomLogit``): how similar the map of the explained class is to the map of
a random other class. Lower is better (the map depends on the class). The model-parameter
randomisation check is :func:`lightning_cam.metrics.model_randomization`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cam.metrics._common import Explain, TargetsLike, check_images, explain_maps
from lightning_cam.targets import Target

__all__ = ["random_logit", "random_other_class", "ssim_1d"]

SSIM_WINDOW = 7  # skimage's default win_size
SSIM_K1, SSIM_K2 = 0.01, 0.03


def ssim_1d(a: Tensor, b: Tensor, window: int = SSIM_WINDOW) -> Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004) of the rows of two (B, n) tensors, as Quantus'
    ``ssim(batched=True)``: skimage ``structural_similarity`` of the FLATTENED maps (1-D, uniform
    window of 7, sample covariance ``* w / (w - 1)``, ``data_range = max - min`` over both rows,
    ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``), averaged over the windows that lie inside the row."""
    a, b = a.double(), b.double()
    if a.shape[1] < window:
        raise ValueError(f"ssim_1d needs rows of at least window={window} values, got {a.shape[1]}")
    both = torch.cat([a, b], dim=1)
    r = both.amax(dim=1) - both.amin(dim=1)
    c1, c2 = ((SSIM_K1 * r) ** 2)[:, None], ((SSIM_K2 * r) ** 2)[:, None]

    def mean(x: Tensor) -> Tensor:
        return F.avg_pool1d(x[:, None], window, stride=1)[:, 0]

    ua, ub = mean(a), mean(b)
    cov = window / (window - 1)
    va, vb, vab = cov * (mean(a * a) - ua**2), cov * (mean(b * b) - ub**2), cov * (mean(a * b) - ua * ub)
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
    return s.mean(dim=1).float()


def random_other_class(targets: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A class drawn uniformly from the ``num_classes - 1`` classes other than each target."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (a class other than the target must exist), got {num_classes!r}; "
                         "e.g. num_classes=10")
    shift = torch.randint(1, num_classes, targets.shape, generator=generator, device=targets.device)
    return (targets + shift) % num_classes


def _classes(targets: TargetsLike, images: Tensor) -> tuple[TargetsLike, Tensor]:
    """(what ``explain`` explains, (B,) its classes) for class indices or a class / multi-label Target."""
    if not isinstance(targets, Target):
        classes = torch.as_tensor(targets, device=images.device).long().reshape(-1).expand(images.shape[0])
        return classes, classes
    if targets.kind not in ("class", "multilabel") or targets.classes is None:
        raise ValueError(
            f"Random Logit explains a random other class of a (B, num_classes) output; it has no meaning for a "
            f"{targets.kind} target ({targets!r})"
        )
    return targets, targets.classes.to(images.device)


def random_logit(
    explain: Explain,
    images: Tensor,
    targets: TargetsLike,
    num_classes: int,
    saliency: Tensor | None = None,
    *,
    off_targets: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random Logit (Sixt et al., ICML 2020; Quantus ``RandomLogit``): ``SSIM(E(x, c), E(x, c'))``
    for a random other class ``c'`` (:func:`random_other_class`, or ``off_targets``), with
    :func:`ssim_1d` as Quantus. Lower is better. Pass maps in [0, 1] (``Explanation.saliency()``):
    Quantus divides each map by its maximum first, which leaves them unchanged.

    ``targets``: (B,) classes, or a bound class / multi-label :class:`~lightning_cam.targets.Target`
    (explained as given; ``c'`` is drawn from its classes and explained as class indices). It has no
    meaning for a target without a class among ``num_classes`` outputs (binary, segmentation,
    regression, callables): ValueError.

    Returns (B,) float32.
    """
    images = check_images(images)
    explained, classes = _classes(targets, images)
    a = explain_maps(explain, images, explained) if saliency is None else saliency.detach()
    off = random_other_class(classes, num_classes, generator) if off_targets is None else off_targets.to(images.device)
    return ssim_1d(a.flatten(1), explain_maps(explain, images, off).flatten(1))

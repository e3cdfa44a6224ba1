"""Localisation: pointing game (Zhang et al., ECCV 2016) and energy-based pointing game
(Wang et al., Score-CAM, CVPR-W 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cam.metrics._common import saliency_to_size
from lightning_cam.targets import Target

__all__ = ["PointingResult", "energy_share", "pointing_game", "target_masks"]


@dataclass
class PointingResult:
    """Per-image localisation results.

    hits: (B,) bool, the map's maximum lies in the (dilated) mask.
    energy: (B,) ``sum(map * mask) / sum(map)`` (0 when the map sums to 0).
    valid: (B,) bool, False where the mask is empty; such images have hits False and energy 0
    and are excluded from :attr:`accuracy` / :attr:`mean_energy` (and from the Metric class).
    """

    hits: Tensor
    energy: Tensor
    valid: Tensor

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def accuracy(self) -> float:
        """Pointing game accuracy: hits / valid images (0.0 when no image has a non-empty mask)."""
        n = self.num_valid
        return float((self.hits & self.valid).sum()) / n if n else 0.0

    @property
    def mean_energy(self) -> float:
        """Mean energy-based pointing game over valid images (0.0 when none)."""
        n = self.num_valid
        return float(torch.where(self.valid, self.energy, torch.zeros_like(self.energy)).sum()) / n if n else 0.0


def _masks(masks: Tensor, batch: int) -> Tensor:
    if not isinstance(masks, Tensor):
        raise ValueError(f"masks must be a torch.Tensor of shape (B, H, W), got {type(masks).__name__}")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (B, H, W) or (B, 1, H, W), got shape {tuple(masks.shape)}")
    if masks.shape[0] != batch:
        raise ValueError(f"masks has batch size {masks.shape[0]} but saliency has {batch}")
    if masks.dtype != torch.bool:
        if masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("masks must be bool or contain only 0 and 1")
        masks = masks != 0
    return masks.detach()


def dilate(masks: Tensor, tolerance: int, shape: Literal["square", "disk"] = "square") -> Tensor:
    """Dilate (B,H,W) bool masks by ``tolerance`` px: square = Chebyshev distance (``max_pool2d``),
    disk = Euclidean distance (TorchRay's pointing game)."""
    if tolerance == 0:
        return masks
    m = masks[:, None].float()
    k = 2 * tolerance + 1
    if shape == "square":
        out = F.max_pool2d(m, kernel_size=k, stride=1, padding=tolerance)
    else:
        r = torch.arange(-tolerance, tolerance + 1, device=masks.device, dtype=torch.float32)
        disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= tolerance**2).float()[None, None]
        out = F.conv2d(m, disk, padding=tolerance)
    return out[:, 0] > 0


def target_masks(target: Target | None) -> Tensor:
    """(B, H, W) bool: the region a bound segmentation target scores (its mask ``M``, at the
    output's resolution), the natural object mask of the pointing games when none is given."""
    masks = getattr(target, "masks", None)
    if target is None or target.kind != "segmentation" or not isinstance(masks, Tensor):
        kind = "no" if target is None else f"a {target.kind}"
        raise ValueError(
            f"the pointing games need masks=(B, H, W) object masks; with {kind} target there are none to take "
            "(only a bound segmentation target carries its region: target=resolve_target(SegmentationClass(c), scores))"
        )
    return masks > 0


def pointing_game(
    saliency: Tensor,
    masks: Tensor | None = None,
    tolerance: int = 0,
    *,
    tolerance_shape: Literal["square", "disk"] = "square",
    target: Target | None = None,
) -> PointingResult:
    """Pointing game and energy-based pointing game.

    The map (B,h,w), non-negative, is upsampled bilinearly (align_corners=False) to the mask size.
    Hit (Zhang et al., ECCV 2016): its maximum pixel (first in raster order on ties) lies in the
    mask dilated by ``tolerance`` px (the reference uses 15 px at 224; ``tolerance_shape="square"``
    dilates with ``max_pool2d``, ``"disk"`` uses the Euclidean distance as TorchRay). A constant
    map (all zeros included) has no maximum and counts as a miss.
    Energy (Wang et al., Score-CAM): ``sum(map * mask) / sum(map)``, 0 when the map sums to 0.
    Images with an empty mask are marked ``valid = False`` and left out of the averages.
    ``masks=None`` with a bound segmentation ``target``: its region (:func:`target_masks`), the
    pixels whose class is explained.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int (pixels), got {tolerance!r}")
    if tolerance_shape not in ("square", "disk"):
        raise ValueError(f"tolerance_shape must be 'square' or 'disk', got {tolerance_shape!r}")
    if not isinstance(saliency, Tensor):
        raise ValueError(f"saliency must be a torch.Tensor of shape (B, h, w), got {type(saliency).__name__}")
    if saliency.ndim not in (3, 4):
        raise ValueError(f"saliency must have shape (B, h, w) or (B, 1, h, w), got shape {tuple(saliency.shape)}")
    batch = saliency.shape[0]
    m = _masks(target_masks(target) if masks is None else masks, batch)
    sal = saliency_to_size(saliency, batch, (m.shape[1], m.shape[2])).to(m.device)
    if bool((sal < 0).any()):
        raise ValueError("saliency must be non-negative (ReLU'd or [0, 1] maps) for the energy pointing game")
    flat = sal.flatten(1)
    mflat = m.flatten(1)
    valid = mflat.any(dim=1)
    peak = flat.argmax(dim=1)
    informative = flat.max(dim=1).values > flat.min(dim=1).values
    hits = dilate(m, tolerance, tolerance_shape).flatten(1).gather(1, peak[:, None]).squeeze(1)
    hits = hits & informative & valid
    energy, _ = energy_share(sal, m)
    return PointingResult(hits=hits, energy=energy, valid=valid)


def energy_share(saliency: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """``sum(S * R) / sum(S)`` per image for (B,H,W) non-negative maps and (B,H,W) bool masks of
    the same size -> (energy (B,), valid (B,)). 0 for an all-zero map; ``valid`` is False (and
    the energy 0) where the mask is empty."""
    flat = saliency.flatten(1)
    mflat = masks.flatten(1)
    valid = mflat.any(dim=1)
    total = flat.sum(dim=1)
    inside = (flat * mflat).sum(dim=1)
    energy = torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    return torch.where(valid, energy, torch.zeros_like(energy)), valid

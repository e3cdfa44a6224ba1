"""From raw layer-resolution maps to user-facing saliency maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalize_maps", "upsample_maps"]


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of (B,h,w) maps to (B,H,W)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B,h,w), got shape {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def normalize_maps(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Upsample (optional) and min-max scale each map to [0, 1].

    ``(m - min) / (max - min)`` per image; a constant map becomes all zeros
    (never NaN).
    """
    if size is not None:
        maps = upsample_maps(maps, size)
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.view_as(maps)

"""Input checks shared by the explainers and the metrics (one copy)."""

from __future__ import annotations

import torch

__all__ = ["check_images"]


def check_images(x: object, name: str = "images") -> torch.Tensor:
    """``x`` itself when it is a non-empty (B, C, H, W) tensor; a clear ValueError otherwise."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (add a batch dimension with x[None])" if x.dim() == 3 else ""
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0); pass at least one image")
    return x

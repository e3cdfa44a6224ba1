"""Input checks shared by the explainers and the metrics (one copy)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_device", "check_images"]


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


def check_device(model: nn.Module, x: torch.Tensor) -> None:
    """A clear ValueError when ``model``'s parameters and the images ``x`` are on different devices."""
    param = next(model.parameters(), None)
    if param is not None and param.device != x.device:
        raise ValueError(
            f"The images are on {x.device} but the model's parameters are on {param.device}; move one of them, "
            f"e.g. images.to({str(param.device)!r})."
        )

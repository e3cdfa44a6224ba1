"""Normalise the ``targets`` argument shared by the explainers and the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

__all__ = ["TargetsLike", "resolve_targets", "targets_or_top1"]

TargetsLike = Union[None, int, Sequence[int], Tensor]


def resolve_targets(targets: TargetsLike, batch: int, num_classes: int, device: torch.device) -> Tensor | None:
    """None, an int, a sequence of B ints or an integer tensor of shape () / (B,) -> (B,) long, or None."""
    if targets is None:
        return None
    allowed = "None, an int, a list of B ints or an integer tensor of shape () or (B,)"
    if isinstance(targets, bool):
        raise ValueError(f"targets must be {allowed}; got a bool")
    if isinstance(targets, int):
        t = torch.full((batch,), targets, dtype=torch.long)
    elif isinstance(targets, Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f"targets must be {allowed}; got a tensor of dtype {targets.dtype}")
        if targets.ndim == 0:
            t = targets.reshape(1).expand(batch)
        elif targets.ndim == 1:
            t = targets
        else:
            raise ValueError(f"targets must be {allowed}; got a tensor of shape {tuple(targets.shape)}")
        t = t.detach().long()
    elif isinstance(targets, Sequence) and not isinstance(targets, (str, bytes)):
        items = list(targets)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise ValueError(f"targets must be {allowed}; got a sequence containing non-int values")
        t = torch.tensor(items, dtype=torch.long)
    else:
        raise ValueError(f"targets must be {allowed}; got {type(targets).__name__}")
    if t.shape[0] != batch:
        raise ValueError(f"targets has {t.shape[0]} entries but there are {batch} images")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes - 1}] (the model has {num_classes} outputs)")
    return t.to(device)


def targets_or_top1(targets: TargetsLike, logits: Tensor) -> Tensor:
    """:func:`resolve_targets` for the (B, C) ``logits``; ``None`` -> the top-1 prediction of each image."""
    resolved = resolve_targets(targets, logits.shape[0], logits.shape[1], logits.device)
    return logits.argmax(dim=1) if resolved is None else resolved

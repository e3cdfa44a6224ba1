"""Run explanations without disturbing the model or the caller's context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Context for explanation work on ``model``.

    Inside: every module in eval mode (no batch-norm statistics updates, no
    dropout), gradients enabled, inference mode off and autocast off (float32).
    On exit the per-module ``training`` flags are restored exactly and the
    caller's grad / inference / autocast state comes back with the contexts.
    Parameter ``.grad`` is never touched: explainers take gradients with
    ``torch.autograd.grad`` w.r.t. activations only.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            for device_type in _autocast_device_types():
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            yield
    finally:
        for module, training in modes:
            module.training = training


def _autocast_device_types() -> list[str]:
    types = ["cpu"]
    if torch.cuda.is_available():
        types.append("cuda")
    return types


def as_float_input(x: torch.Tensor) -> torch.Tensor:
    """A float32 copy-free view of ``x`` usable with autograd.

    Tensors created under ``torch.inference_mode`` cannot enter autograd, so
    they are cloned (outside inference mode) first.
    """
    if x.is_inference():
        with torch.inference_mode(False):
            x = x.clone()
    if x.dtype != torch.float32:
        x = x.float()
    return x

"""Run explanations without disturbing the model or the caller's context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside; each module's own ``training`` flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def autocast_off(device_type: str | None = None) -> Iterator[None]:
    """Disable autocast (compute in the model's own dtype) on CPU, CUDA and ``device_type``."""
    types = {"cpu"}
    if torch.cuda.is_available():
        types.add("cuda")
    if device_type is not None:
        types.add(device_type)
    with contextlib.ExitStack() as stack:
        for kind in sorted(types):
            with contextlib.suppress(RuntimeError, ValueError):  # device types without autocast
                stack.enter_context(torch.autocast(device_type=kind, enabled=False))
        yield


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
    param = next(model.parameters(), None)
    device_type = param.device.type if param is not None else None
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad(), autocast_off(device_type):
        yield


def as_float_input(x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """``x`` as a floating tensor usable with autograd, in the model's dtype.

    Tensors created under ``torch.inference_mode`` cannot enter autograd, so
    they are cloned (outside inference mode) first. The dtype is float32, or
    the dtype of the model's parameters for models stored in half precision
    (Lightning's ``"16-true"`` / ``"bf16-true"``); maps are float32 either way.
    """
    if x.is_inference():
        with torch.inference_mode(False):
            x = x.clone()
    return to_model_dtype(x, model)


def to_model_dtype(x: torch.Tensor, model: nn.Module | None) -> torch.Tensor:
    """``x`` in the dtype the model computes in: its parameters' floating dtype.

    float32 inputs go to a bf16 / fp16 / float64 model (Lightning's
    ``"bf16-true"``, ``"16-true"``, ``"64-true"``) as that dtype; models under
    ``"16-mixed"`` / ``"bf16-mixed"`` keep float32 parameters and get float32
    (autocast is off during explanations). ``model=None`` means float32.
    """
    dtype = model_dtype(model) if model is not None else torch.float32
    return x if x.dtype == dtype else x.to(dtype)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 when it has none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32

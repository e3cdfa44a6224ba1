"""DeepLIFT's RevealCancel rule (Shrikumar et al., ICML 2017, Sec. 3.5.3) for :class:`DeepLiftMode`.

At an elementwise nonlinearity ``y = f(z)`` whose input comes from a linear
layer (``Linear`` / ``Conv2d``, optionally through eval-mode ``BatchNorm``),
the difference ``dz = z - z'`` is split into the sum of the positive terms
``dz+ = sum_i [w_i dx_i > 0] w_i dx_i`` and of the negative ones ``dz-``
(terms with ``dx_i = 0`` go half to each, as in the authors' ``deeplift``
code). With ``x0 = z'`` (the reference input of the unit)::

    dy+ = 1/2 (f(x0 + dz+) - f(x0)) + 1/2 (f(x0 + dz- + dz+) - f(x0 + dz-))
    dy- = 1/2 (f(x0 + dz-) - f(x0)) + 1/2 (f(x0 + dz+ + dz-) - f(x0 + dz+))
    m+ = dy+ / dz+,   m- = dy- / dz-

and a positive term ``w_i dx_i`` inherits ``m+``, a negative one ``m-``. Since
``dy+ + dy- = f(z) - f(z')`` completeness (summation-to-delta) still holds.
Where ``|dz+|`` (or ``|dz-|``) is below ``eps`` the Rescale multiplier is used.

Implementation: the linear layer returns its ordinary output with two
differentiable companions attached, ``Z+`` and ``Z-`` (the layer applied to the
input masked by the sign of ``dx``, with the positive / negative parts of the
weights; ``Z+ + Z- = W x``); the nonlinearity returns
``f(z).detach() + m+ (Z+ - Z+.detach()) + m- (Z- - Z-.detach())``, so autograd
routes ``m+`` to the positive terms and ``m-`` to the negative ones. A
nonlinearity whose input has no companions (e.g. after a residual addition or
a max-pool) uses Rescale; :attr:`DeepLiftMode.rescale_fallbacks` counts those.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lightning_cam.outputs import accumulation_dtype

__all__ = ["RULES", "linear_companions", "batch_norm_companions", "reveal_cancel"]

RULES = ("rescale", "revealcancel")
_ATTRIBUTE = "_lightning_cam_revealcancel"
_BATCH_NORM = inspect.signature(F.batch_norm)


def _companions(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    return getattr(z, _ATTRIBUTE, None)


def linear_companions(func: Callable, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor:
    """Attach ``(Z+, Z-)`` to the output of ``F.linear`` / ``F.conv2d`` on a ``[actual; reference]`` batch."""
    x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    rest = dict(kwargs)
    rest.pop("weight", None)
    rest.pop("bias", None)
    extra = args[3:] if func is F.conv2d else ()  # stride, padding, dilation, groups
    actual, reference = x.detach().chunk(2)
    dx = torch.cat(2 * [actual - reference])
    positive, negative = (dx > 0).to(x.dtype), (dx < 0).to(x.dtype)
    zero = 1 - positive - negative
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)

    def apply(inputs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return func(inputs, w, None, *extra, **rest)

    half_zero = apply(x * zero, weight) / 2
    z_pos = apply(x * positive, w_pos) + apply(x * negative, w_neg) + half_zero
    z_neg = apply(x * negative, w_pos) + apply(x * positive, w_neg) + half_zero
    setattr(out, _ATTRIBUTE, (z_pos, z_neg))
    return out


def batch_norm_companions(args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor:
    """Carry ``(Z+, Z-)`` through eval-mode batch norm: ``s = weight / sqrt(var + eps)`` per channel; a negative ``s`` swaps them."""
    bound = _BATCH_NORM.bind(*args, **kwargs)
    bound.apply_defaults()
    p = bound.arguments
    parts = _companions(p["input"])
    if parts is None or p["training"] or p["running_var"] is None:
        return out
    scale = torch.rsqrt(p["running_var"] + p["eps"])
    if p["weight"] is not None:
        scale = scale * p["weight"]
    shape = (1, -1) + (1,) * (out.dim() - 2)
    s_pos, s_neg = scale.clamp(min=0).view(shape), scale.clamp(max=0).view(shape)
    z_pos, z_neg = parts
    setattr(out, _ATTRIBUTE, (s_pos * z_pos + s_neg * z_neg, s_pos * z_neg + s_neg * z_pos))
    return out


def reveal_cancel(
    func: Callable, z: torch.Tensor, out: torch.Tensor, rest: tuple, kwargs: dict, rescale: torch.Tensor, eps: float
) -> torch.Tensor | None:
    """RevealCancel output for ``out = func(z, *rest)``; ``None`` when ``z`` has no companions (use Rescale)."""
    parts = _companions(z)
    if parts is None:
        return None
    z_pos, z_neg = parts
    wide = accumulation_dtype(z.dtype)  # half precision computed in float32
    with torch.no_grad():
        f = lambda t: func(t, *rest, **kwargs).to(wide)  # noqa: E731
        z_ref = z.detach().to(wide).chunk(2)[1]
        y_act, y_ref = out.detach().to(wide).chunk(2)
        d_pos = torch.sub(*z_pos.detach().to(wide).chunk(2))
        d_neg = torch.sub(*z_neg.detach().to(wide).chunk(2))
        y_pos, y_neg = f(z_ref + d_pos), f(z_ref + d_neg)
        dy_pos = 0.5 * (y_pos - y_ref) + 0.5 * (y_act - y_neg)
        dy_neg = 0.5 * (y_neg - y_ref) + 0.5 * (y_act - y_pos)
        m = rescale.to(wide).chunk(2)[0]
        small_pos, small_neg = d_pos.abs() < eps, d_neg.abs() < eps
        m_pos = torch.where(small_pos, m, dy_pos / torch.where(small_pos, torch.ones_like(d_pos), d_pos))
        m_neg = torch.where(small_neg, m, dy_neg / torch.where(small_neg, torch.ones_like(d_neg), d_neg))
        m_pos, m_neg = torch.cat(2 * [m_pos]).to(z.dtype), torch.cat(2 * [m_neg]).to(z.dtype)
    return out.detach() + (z_pos - z_pos.detach()) * m_pos + (z_neg - z_neg.detach()) * m_neg

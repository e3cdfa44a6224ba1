"""DeepLIFT (Rescale rule) propagation through the head of a network.

The head runs once on the concatenated batch ``[A; A']`` (actual activations
and the reference ``A' = 0``), exactly as captum's ``DeepLift`` does with
``[inputs; baselines]``. A :class:`~torch.overrides.TorchFunctionMode`
intercepts every nonlinear torch call made while the head runs — module or
functional, however often a module is reused (the captum pitfall with
torchvision's shared ``ReLU`` modules does not arise) — and gives it the
DeepLIFT backward multiplier through a straight-through term whose value is
exactly zero::

    out = s(z).detach() + (z - z.detach()) * m,   m = (s(z) - s(z')) / (z - z')

Rules (Shrikumar et al., ICML 2017; captum's conventions):

* elementwise nonlinearities (ReLU, GELU, SiLU, Hardswish, sigmoid, tanh, ...):
  Rescale; where ``|z - z'| < eps`` the ordinary gradient ``s'(z)``;
* max pooling: captum's rule (the difference of the pooled outputs is routed to
  the arg-max of whichever of actual/reference is larger); overlapping windows
  accumulate, which equals captum's unpooling for non-overlapping ones;
* products of two activation-dependent tensors (squeeze-excitation gates,
  ``matmul``): the exact two-player rule
  ``Δ(ab) = ā Δb + Δa b̄`` with ``ā = (a + a')/2``;
* division by an activation-dependent tensor: reciprocal (Rescale) then product;
* layer / group normalisation: statistics frozen at the actual input (the
  "LN-rule" of Ali et al., ICML 2022), exact when the reference input is
  constant over the normalised dimensions (e.g. ConvNeXt's head, where it is 0);
* everything linear (conv, linear, pooling by averaging, eval batch norm,
  dropout, additions, reshapes) keeps its gradient.

Any other nonlinear call is recorded in :attr:`DeepLiftMode.unhandled`; the
callers warn and report the completeness residual, which exposes the error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lightning_cam.methods.revealcancel import RULES, batch_norm_companions, linear_companions, reveal_cancel

__all__ = ["DeepLiftMode", "EPS"]

EPS = 1e-10

_INPLACE_TO_OUTPLACE: dict[Callable, Callable] = {
    torch.relu_: torch.relu,
    torch.Tensor.relu_: torch.relu,
    F.relu_: torch.relu,
    torch.sigmoid_: torch.sigmoid,
    torch.Tensor.sigmoid_: torch.sigmoid,
    torch.tanh_: torch.tanh,
    torch.Tensor.tanh_: torch.tanh,
    F.hardtanh_: F.hardtanh,
    F.elu_: F.elu,
    F.leaky_relu_: F.leaky_relu,
    F.threshold_: F.threshold,
    torch.Tensor.clamp_: torch.clamp,
    torch.Tensor.exp_: torch.exp,
}

_ELEMENTWISE: set[Callable] = {
    F.relu, torch.relu, torch.Tensor.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.selu,
    F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.softplus, F.logsigmoid,
    F.sigmoid, torch.sigmoid, torch.Tensor.sigmoid, F.tanh, torch.tanh, torch.Tensor.tanh,
    torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log, torch.sqrt, torch.Tensor.sqrt,
    torch.rsqrt, torch.Tensor.rsqrt, torch.reciprocal, torch.Tensor.reciprocal,
    torch.abs, torch.Tensor.abs, torch.square, torch.Tensor.square, torch.sin, torch.cos,
    torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip, torch.erf,
    F.hardshrink, F.softshrink, F.tanhshrink, F.softsign, F.threshold,
} | set(_INPLACE_TO_OUTPLACE)

_BILINEAR: set[Callable] = {
    torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm,
}
_DIVISION: set[Callable] = {torch.div, torch.Tensor.div, torch.Tensor.__truediv__}

# Nonlinear calls without a rule here; reported, never silently trusted.
_KNOWN_UNHANDLED: set[Callable] = {
    F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, torch.log_softmax,
    torch.Tensor.log_softmax, torch.max, torch.Tensor.max, torch.amax, torch.Tensor.amax,
    torch.min, torch.Tensor.min, torch.amin, F.adaptive_max_pool2d, F.adaptive_max_pool1d,
    torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.norm, torch.Tensor.norm,
    torch.topk, torch.sort, torch.einsum, torch.Tensor.__rtruediv__, F.normalize,
    torch.nn.functional.local_response_norm, torch.nn.functional.instance_norm,
    torch.nn.functional.max_pool1d, torch.nn.functional.max_pool3d,
}

_MAXPOOL_SIGNATURE = inspect.signature(
    lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False: None
)


class DeepLiftMode(TorchFunctionMode):
    """Apply DeepLIFT rules to every call on a ``[actual; reference]`` batch of ``2 * n``."""

    def __init__(self, batch_size: int, eps: float = EPS, rule: str = "rescale") -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"DeepLIFT rule must be one of {RULES}, got {rule!r}; e.g. rule='rescale'.")
        self.batch_size = batch_size  # 2 * n: actual and reference halves
        self.eps = eps
        self.rule = rule
        self.unhandled: set[str] = set()
        #: RevealCancel only: nonlinearities whose input has no linear-layer split (Rescale used there)
        self.rescale_fallbacks = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        try:
            if func in _ELEMENTWISE:
                return self._elementwise(func, args, kwargs)
            if func is F.max_pool2d:
                return self._maxpool(args, kwargs)
            if func in _BILINEAR:
                return self._bilinear(func, args, kwargs)
            if func in _DIVISION:
                return self._division(func, args, kwargs)
            if func is F.layer_norm:
                return self._layer_norm(args, kwargs)
            if func is F.group_norm:
                return self._group_norm(args, kwargs)
            if self.rule == "revealcancel" and func in (F.linear, F.conv2d, F.batch_norm):
                out = func(*args, **kwargs)
                if not self._tracked(args[0]):
                    return out
                if func is F.batch_norm:
                    return batch_norm_companions(args, kwargs, out)
                return linear_companions(func, args, kwargs, out)
        except TypeError:
            # Unhashable callables (bound builtins) are never in our tables.
            pass
        if func in _KNOWN_UNHANDLED and self._tracked(*args, *kwargs.values()):
            self.unhandled.add(getattr(func, "__qualname__", getattr(func, "__name__", str(func))))
        return func(*args, **kwargs)

    # ----------------------------------------------------------------- helpers
    def _tracked(self, *values: object) -> bool:
        """A tensor of the [actual; reference] batch that depends on the activations."""
        return any(
            isinstance(v, torch.Tensor) and v.requires_grad and v.dim() > 0 and v.shape[0] == self.batch_size
            and not isinstance(v, torch.nn.Parameter)
            for v in values
        )

    def _eps(self, dtype: torch.dtype) -> float:
        """``eps`` in float32/64; the dtype's resolution for half precision."""
        return self.eps if dtype in (torch.float32, torch.float64) else max(self.eps, torch.finfo(dtype).eps)

    def _pair_mean(self, t: torch.Tensor) -> torch.Tensor:
        actual, reference = t.detach().chunk(2)
        mean = (actual + reference) / 2
        return torch.cat([mean, mean])

    def _elementwise(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        func = _INPLACE_TO_OUTPLACE.get(func, func)
        if "inplace" in kwargs:
            kwargs = {**kwargs, "inplace": False}
        z = args[0]
        out = func(*args, **kwargs)
        if not self._tracked(z):
            return out
        rest = args[1:]
        with torch.no_grad():
            z_a, z_r = z.detach().float().chunk(2)
            o_a, o_r = out.detach().float().chunk(2)
            dz = z_a - z_r
            small = dz.abs() < self._eps(z.dtype)
            m = (o_a - o_r) / torch.where(small, torch.ones_like(dz), dz)
            if z.dtype not in (torch.float32, torch.float64):  # half precision: keep it finite
                m = m.clamp(-torch.finfo(z.dtype).max, torch.finfo(z.dtype).max)
            m = torch.cat([m, m]).to(z.dtype)
            small = torch.cat([small, small])
        if bool(small.any()):
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                grad = torch.autograd.grad(func(zz, *rest, **kwargs), zz, torch.ones_like(out))[0]
            m = torch.where(small, grad, m)
        if self.rule == "revealcancel":
            revealed = reveal_cancel(func, z, out, rest, kwargs, m, self._eps(z.dtype))
            if revealed is not None:
                return revealed
            self.rescale_fallbacks += 1
        return out.detach() + (z - z.detach()) * m

    def _maxpool(self, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = _MAXPOOL_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        z = p["input"]
        if p["return_indices"] or not self._tracked(z):
            if self._tracked(z):
                self.unhandled.add("max_pool2d(return_indices=True)")
            return F.max_pool2d(*args, **kwargs)
        stride = p["stride"] if p["stride"] not in (None, [], ()) else p["kernel_size"]
        return _MaxPoolRescale.apply(
            z, _pair(p["kernel_size"]), _pair(stride), _pair(p["padding"]), _pair(p["dilation"]),
            bool(p["ceil_mode"]), self._eps(z.dtype),
        )

    def _bilinear(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        if len(args) < 2 or not (self._tracked(args[0]) and self._tracked(args[1])):
            return func(*args, **kwargs)
        if func is torch.Tensor.__rmul__:
            func, args = torch.mul, (args[1], args[0], *args[2:])
        a, b = args[0], args[1]
        rest = args[2:]
        out = func(a, b, *rest, **kwargs)
        a_mean, b_mean = self._pair_mean(a), self._pair_mean(b)
        # Δ(ab) = ā Δb + Δa b̄ (exact for any bilinear op); value unchanged.
        return out.detach() + func(a - a.detach(), b_mean, *rest, **kwargs) + func(a_mean, b - b.detach(), *rest, **kwargs)

    def _division(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        if len(args) < 2 or not self._tracked(args[1]) or kwargs.get("rounding_mode") is not None:
            return func(*args, **kwargs)
        reciprocal = self._elementwise(torch.reciprocal, (args[1],), {})
        if self._tracked(args[0]):
            return self._bilinear(torch.mul, (args[0], reciprocal), {})
        return args[0] * reciprocal

    def _layer_norm(self, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = inspect.signature(F.layer_norm).bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        z = p["input"]
        out = F.layer_norm(*args, **kwargs)
        if not self._tracked(z):
            return out
        dims = tuple(range(-len(p["normalized_shape"]), 0))
        return self._frozen_norm(z, out, dims, p["weight"], p["eps"], lambda t, w: t * w)

    def _group_norm(self, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = inspect.signature(F.group_norm).bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        z = p["input"]
        out = F.group_norm(*args, **kwargs)
        if not self._tracked(z):
            return out
        groups = p["num_groups"]
        shape = z.shape
        grouped = z.reshape(shape[0], groups, -1)
        centred = grouped - grouped.mean(-1, keepdim=True)
        inv = torch.rsqrt(grouped.detach().var(-1, unbiased=False, keepdim=True) + p["eps"])
        inv = torch.cat([inv.chunk(2)[0]] * 2)
        linear = (centred * inv).reshape(shape)
        if p["weight"] is not None:
            linear = linear * p["weight"].view(1, -1, *([1] * (len(shape) - 2)))
        return out.detach() + (linear - linear.detach())

    def _frozen_norm(self, z, out, dims, weight, eps, scale) -> torch.Tensor:
        centred = z - z.mean(dims, keepdim=True)
        inv = torch.rsqrt(z.detach().var(dims, unbiased=False, keepdim=True) + eps)
        inv = torch.cat([inv.chunk(2)[0]] * 2)  # actual-input statistics for both halves
        linear = centred * inv
        if weight is not None:
            linear = scale(linear, weight)
        return out.detach() + (linear - linear.detach())


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


class _MaxPoolRescale(torch.autograd.Function):
    """captum's DeepLIFT rule for max pooling on a [actual; reference] batch."""

    @staticmethod
    def forward(ctx, z, kernel, stride, padding, dilation, ceil_mode, eps):  # type: ignore[override]
        out, indices = F.max_pool2d(z, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        ctx.save_for_backward(z, out, indices)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        z, out, indices = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.args

        def unpool(g: torch.Tensor) -> torch.Tensor:
            return torch.ops.aten.max_pool2d_with_indices_backward(
                g, z, list(kernel), list(stride), list(padding), list(dilation), ceil_mode, indices
            )

        z_a, z_r = z.chunk(2)
        o_a, o_r = out.chunk(2)
        dz = torch.cat(2 * [z_a - z_r])
        cross_max = torch.maximum(o_a, o_r)
        d_out = torch.cat([cross_max - o_r, o_a - cross_max])
        routed_a, routed_r = unpool(grad_out * d_out).chunk(2)
        routed = torch.cat(2 * [routed_a + routed_r])
        small = dz.abs() < ctx.eps
        grad_in = torch.where(small, unpool(grad_out), routed / torch.where(small, torch.ones_like(dz), dz))
        return grad_in, None, None, None, None, None, None

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
* softmax / log-softmax: ``exp(z - c) / sum exp(z - c)`` with one constant ``c``
  per row shared by the actual and reference halves (softmax is shift
  invariant), the exp (and log) by Rescale, the division by the rules above;
* attention: ``scaled_dot_product_attention`` and ``multi_head_attention_forward``
  (``nn.MultiheadAttention``) are decomposed into their products, masks and
  softmax, each with its rule above;
* layer normalisation: where the reference input is constant over the
  normalised dimensions (e.g. 0 right after the target layer), statistics frozen
  at the actual input (the "LN-rule" of Ali et al., ICML 2022), which is exact
  there; elsewhere (inside transformer blocks, after residual additions)
  ``centred * rsqrt(mean(centred^2) + eps)`` with Rescale on the square and the
  rsqrt and the product rule, which is exact too. Group normalisation: frozen
  statistics;
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

from lightning_cam.outputs import accumulation_dtype
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
_SOFTMAX: set[Callable] = {F.softmax, torch.softmax, torch.Tensor.softmax}
_LOG_SOFTMAX: set[Callable] = {F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax}
_SDPA_SIGNATURE = inspect.signature(
    lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False: None
)
_KNOWN_UNHANDLED: set[Callable] = {
    torch.max, torch.Tensor.max, torch.amax, torch.Tensor.amax,
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
            if func in _SOFTMAX or func in _LOG_SOFTMAX:
                return self._softmax_call(func, args, kwargs)
            if func is F.scaled_dot_product_attention:
                return self._sdpa(args, kwargs)
            if func is F.multi_head_attention_forward:
                return self._multi_head_attention(args, kwargs)
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
        """A tensor of the [actual; reference] batch that depends on the activations.

        Its first dimension is the batch, possibly merged with an inner one
        (Swin's windows: (2n * windows, ...)), so its halves are actual and reference.
        """
        return any(
            isinstance(v, torch.Tensor) and v.requires_grad and v.dim() > 0 and v.shape[0] > 0
            and v.shape[0] % self.batch_size == 0 and not isinstance(v, torch.nn.Parameter)
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
            wide = accumulation_dtype(z.dtype)  # half precision computed in float32
            z_a, z_r = z.detach().to(wide).chunk(2)
            o_a, o_r = out.detach().to(wide).chunk(2)
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
        dtype = z.dtype
        z = z.to(accumulation_dtype(dtype))  # half precision: the square would overflow beyond |z - mean| = 256
        centred = z - z.mean(dims, keepdim=True)
        constant = (centred.detach().chunk(2)[1] == 0).all(dim=dims, keepdim=True)
        if bool(constant.all()):
            return self._frozen_norm(z, out, dims, p["weight"], p["eps"], lambda t, w: t * w)
        # Exact decomposition: centred * rsqrt(mean(centred^2) + eps).
        variance = self._elementwise(torch.square, (centred,), {}).mean(dims, keepdim=True)
        scale = self._elementwise(torch.rsqrt, (variance + p["eps"],), {})
        linear = self._bilinear(torch.mul, (centred, scale), {})
        if bool(constant.any()):
            frozen = centred * torch.cat([torch.rsqrt(z.detach().var(dims, unbiased=False, keepdim=True) + p["eps"]).chunk(2)[0]] * 2)
            linear = torch.where(torch.cat([constant, constant]), frozen, linear)
        if p["weight"] is not None:
            linear = linear * p["weight"]
        return out.detach() + (linear - linear.detach()).to(dtype)

    def _softmax_call(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        z = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        dtype = kwargs.get("dtype", args[3] if func in (F.softmax, F.log_softmax) and len(args) > 3 else args[2] if func not in (F.softmax, F.log_softmax) and len(args) > 2 else None)
        if dim is None or not self._tracked(z):
            if dim is None and self._tracked(z):
                self.unhandled.add("softmax(dim=None)")
            return func(*args, **kwargs)
        if dtype is not None:
            z = z.to(dtype)
        return self._softmax(z, dim, log=func in _LOG_SOFTMAX)

    def _softmax(self, z: torch.Tensor, dim: int, log: bool = False) -> torch.Tensor:
        """``exp(z - c) / sum exp(z - c)`` (or its log), ``c`` shared by actual and reference rows.

        Computed in float32 for half-precision ``z``: with ``c`` shared, one half's ``exp`` can
        underflow float16 and the reciprocal of its sum overflow it."""
        dtype = z.dtype
        z = z.to(accumulation_dtype(dtype))
        with torch.no_grad():
            z_a, z_r = z.detach().chunk(2)
            c = torch.maximum(z_a.amax(dim, keepdim=True), z_r.amax(dim, keepdim=True))
            c = torch.cat(2 * [torch.where(torch.isfinite(c), c, torch.zeros_like(c))])
            finite = torch.isfinite(z.detach())  # masked (-inf) logits stay out of every rule
        shifted = torch.where(finite, z - c, torch.zeros_like(z))
        exp = torch.where(finite, self._elementwise(torch.exp, (shifted,), {}), torch.zeros_like(z))
        total = exp.sum(dim, keepdim=True)
        if log:
            out = shifted - self._elementwise(torch.log, (total,), {})
            return torch.where(finite, out, torch.full_like(out, float("-inf"))).to(dtype)
        return self._bilinear(torch.mul, (exp, self._elementwise(torch.reciprocal, (total,), {})), {}).to(dtype)

    def _sdpa(self, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = _SDPA_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        q, k, v = p["query"], p["key"], p["value"]
        if not self._tracked(q, k, v):
            return F.scaled_dot_product_attention(*args, **kwargs)
        if p["dropout_p"]:
            self.unhandled.add("scaled_dot_product_attention(dropout_p > 0)")
            return F.scaled_dot_product_attention(*args, **kwargs)
        if p["enable_gqa"] and k.shape[-3] != q.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        return self._attention(q, k, v, p["attn_mask"], p["is_causal"], p["scale"])[0]

    def _attention(self, q, k, v, mask, is_causal, scale) -> tuple[torch.Tensor, torch.Tensor]:
        """``softmax(q k^T * scale + mask) v`` with the product and softmax rules; also the probabilities."""
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = self._bilinear(torch.matmul, (q * scale, k.transpose(-2, -1)), {})
        if is_causal:
            allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = self._softmax(scores, -1)
        return self._bilinear(torch.matmul, (probs, v), {}), probs

    def _multi_head_attention(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention``'s functional form, decomposed (inputs are (L, N, E))."""
        bound = inspect.signature(F.multi_head_attention_forward).bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        query, key, value = p["query"], p["key"], p["value"]
        batch_first = [t.transpose(0, 1) if t.dim() == 3 else t for t in (query, key, value)]
        if not self._tracked(*batch_first):
            return F.multi_head_attention_forward(*args, **kwargs)
        unsupported = [
            name for name, bad in (
                ("bias_k/bias_v", p["bias_k"] is not None or p["bias_v"] is not None), ("add_zero_attn", p["add_zero_attn"]),
                ("static_k/static_v", p["static_k"] is not None or p["static_v"] is not None),
                ("key_padding_mask", p["key_padding_mask"] is not None), ("dropout", p["training"] and p["dropout_p"] > 0),
                ("unbatched input", query.dim() != 3),
            ) if bad
        ]
        if unsupported:
            self.unhandled.add(f"multi_head_attention_forward({', '.join(unsupported)})")
            return F.multi_head_attention_forward(*args, **kwargs)
        heads = p["num_heads"]
        if p["use_separate_proj_weight"]:
            weights = (p["q_proj_weight"], p["k_proj_weight"], p["v_proj_weight"])
        else:
            weights = p["in_proj_weight"].chunk(3)
        biases = p["in_proj_bias"].chunk(3) if p["in_proj_bias"] is not None else (None, None, None)
        q, k, v = (
            F.linear(t, w, b).unflatten(-1, (heads, -1)).transpose(1, 2) for t, w, b in zip(batch_first, weights, biases)
        )  # (N, heads, L, head_dim)
        mask = p["attn_mask"]
        if mask is not None:
            mask = ~mask if mask.dtype == torch.bool else mask  # MHA: True = masked; sdpa: True = allowed
            if mask.dim() == 3:
                mask = mask.view(q.shape[0], heads, *mask.shape[1:])
        out, probs = self._attention(q, k, v, mask, p["is_causal"] and mask is None, None)
        out = F.linear(out.transpose(1, 2).flatten(2), p["out_proj_weight"], p["out_proj_bias"]).transpose(0, 1)
        if not p["need_weights"]:
            return out, None
        return out, probs.mean(dim=1) if p["average_attn_weights"] else probs

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
        return out.detach() + (linear - linear.detach()).to(out.dtype)


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

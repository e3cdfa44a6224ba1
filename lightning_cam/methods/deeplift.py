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
  accumulate, which equals captum's unpooling for non-overlapping ones. The same
  rule for ``max`` / ``amax`` / ``min`` / ``amin`` over non-batch dimensions and
  global ``adaptive_max_pool``;
* ``pow``, ``c / z``, ``maximum`` / ``minimum`` with one constant argument: Rescale;
* norms ``(sum_i |z_i|^p)^(1/p)``: Rescale on ``|t|^p`` and ``t^(1/p)``, the sum
  linear (``p = inf``: ``|z|`` then the max rule); ``F.normalize`` as
  ``z / max(||z||, eps)`` and ``cosine_similarity`` as the summed product of two
  unit vectors, by the norm, clamp (Rescale), division and product rules;
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

Default-deny: the head's input is tracked (:meth:`DeepLiftMode.track`) and so is
everything computed from it; a call on a tracked tensor that is neither linear
(the allow-lists of :mod:`lightning_cam.methods.deeplift_ops`) nor covered by a
rule is recorded by name in :attr:`DeepLiftMode.unhandled` (``sort``, a custom
``autograd.Function``, a comparison, ``.item()``...); LIFT-CAM warns with the
names and checks the completeness residual against a float tolerance.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from lightning_cam.methods import deeplift_ops as ops
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
    F.hardshrink, F.softshrink, F.tanhshrink, F.softsign, F.threshold, F.prelu, torch.clamp_min, torch.Tensor.clamp_min,
    torch.clamp_max, torch.Tensor.clamp_max, torch.log1p, torch.Tensor.log1p, torch.expm1, torch.Tensor.erf, torch.erfc,
    torch.Tensor.__abs__, torch.sign, torch.Tensor.sign,
} | set(_INPLACE_TO_OUTPLACE)

_BILINEAR: set[Callable] = {
    torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.bmm, torch.Tensor.bmm,
    torch.multiply,
}
_DIVISION: set[Callable] = {torch.div, torch.divide, torch.true_divide, torch.Tensor.div, torch.Tensor.__truediv__}

_SOFTMAX: set[Callable] = {F.softmax, torch.softmax, torch.Tensor.softmax}
_LOG_SOFTMAX: set[Callable] = {F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax}
_SDPA_SIGNATURE = inspect.signature(
    lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False: None
)
#: elementwise in their first argument when the second is a constant (both dependent: no rule)
_BINARY_ELEMENTWISE: set[Callable] = {
    torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.Tensor.__rpow__, torch.Tensor.__rtruediv__,
    torch.maximum, torch.minimum, torch.fmax, torch.fmin,
}
_SYMMETRIC: set[Callable] = {torch.maximum, torch.minimum, torch.fmax, torch.fmin}
_MAX: set[Callable] = {torch.max, torch.Tensor.max, torch.amax, torch.Tensor.amax}
_MIN: set[Callable] = {torch.min, torch.Tensor.min, torch.amin, torch.Tensor.amin}
_NORM: set[Callable] = {torch.norm, torch.Tensor.norm, torch.linalg.vector_norm}
_NORM_SIGNATURE = inspect.signature(lambda input, p="fro", dim=None, keepdim=False, out=None, dtype=None: None)
_VECTOR_NORM_SIGNATURE = inspect.signature(lambda x, ord=2, dim=None, keepdim=False, *, dtype=None: None)
_NORMALIZE_SIGNATURE = inspect.signature(F.normalize)
_COSINE_SIGNATURE = inspect.signature(lambda x1, x2, dim=1, eps=1e-8: None)
_ADAPTIVE_MAX = {F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2}
_DEPENDENT = "_lightning_cam_dependent"  # attribute naming the DeepLiftMode whose activations a tensor depends on

_MAXPOOL_SIGNATURE = inspect.signature(
    lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False: None
)


class DeepLiftMode(TorchFunctionMode):
    """Apply DeepLIFT rules to every call on a ``[actual; reference]`` batch of ``2 * n``.

    Default-deny: :meth:`track` the head's input; every call that receives a
    tensor depending on it is linear (:mod:`~lightning_cam.methods.deeplift_ops`),
    has a rule here, or is named in :attr:`unhandled`.
    """

    def __init__(self, batch_size: int, eps: float = EPS, rule: str = "rescale") -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"DeepLIFT rule must be one of {RULES}, got {rule!r}; e.g. rule='rescale'.")
        self.batch_size = batch_size  # 2 * n: actual and reference halves
        self.eps = eps
        self.rule = rule
        #: names of the calls on activation-dependent tensors that had neither a rule nor linearity
        self.unhandled: set[str] = set()
        #: RevealCancel only: nonlinearities whose input has no linear-layer split (Rescale used there)
        self.rescale_fallbacks = 0
        self._rules: dict[Callable, Callable[[Callable, tuple, dict], Any]] = {
            **dict.fromkeys(_ELEMENTWISE, self._elementwise), F.max_pool2d: self._maxpool,
            **dict.fromkeys(ops.DIVISIONS, self._division),
            F.layer_norm: self._layer_norm, F.group_norm: self._group_norm,
            **dict.fromkeys(_SOFTMAX | _LOG_SOFTMAX, self._softmax_call), F.scaled_dot_product_attention: self._sdpa,
            F.multi_head_attention_forward: self._multi_head_attention,
            **dict.fromkeys(_BINARY_ELEMENTWISE, self._binary_elementwise), **dict.fromkeys(_MAX | _MIN, self._max_call),
            **dict.fromkeys(_ADAPTIVE_MAX, self._adaptive_max), **dict.fromkeys(_NORM, self._norm_call),
            F.normalize: self._normalize, F.cosine_similarity: self._cosine_similarity, torch.cosine_similarity: self._cosine_similarity,
        }

    def track(self, t: torch.Tensor) -> torch.Tensor:
        """Mark ``t`` (the head's input) as the activations every later call is checked against."""
        setattr(t, _DEPENDENT, self)
        return t

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not any(self._dependent(v) for v in tree_leaves((args, kwargs))):
            return func(*args, **kwargs)  # constants (parameters, masks, shapes): not DeepLIFT's business
        out = self._dispatch(func, args, kwargs)
        if not ops.find(ops.CONSTANT_RESULTS, func):
            self._mark(func, args, kwargs, out)
        return out

    def _dispatch(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """A rule, a linear call, or the plain call with ``func`` named in :attr:`unhandled`."""
        if not torch.is_grad_enabled():  # a custom autograd.Function's forward, or torch.no_grad in the head
            self._report(_no_grad_name(func))
            return func(*args, **kwargs)
        rule = self._rules.get(func) if ops.find(self._rules, func) else None
        if rule is not None:
            return rule(func, args, kwargs)
        if ops.find(ops.CONSTANT_RESULTS, func):
            return func(*args, **kwargs)
        if ops.find(ops.PRODUCTS, func):
            return self._product(func, args, kwargs)
        if ops.find(ops.LINEAR, func):
            problem = ops.linear_problem(func, args, kwargs, self._dependent)
            if problem is not None:
                self._report(problem)
            elif self.rule == "revealcancel" and func in (F.linear, F.conv2d, F.batch_norm):
                return self._companions(func, args, kwargs)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if ops.find(ops.VALUE_READS, func):
            self._report(f"{ops.op_name(func)} (a value of the activations read by Python)")
        elif any(isinstance(v, torch.Tensor) for v in tree_leaves(out)):
            self._report(ops.op_name(func))
        return out

    def _companions(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """RevealCancel: the linear layer's output with its positive and negative parts attached."""
        out = func(*args, **kwargs)
        if not self._tracked(args[0]):
            return out
        if func is F.batch_norm:
            return batch_norm_companions(args, kwargs, out)
        return linear_companions(func, args, kwargs, out)

    # ----------------------------------------------------------------- helpers
    def _dependent(self, v: object) -> bool:
        """``v`` is a tensor computed from this mode's tracked activations."""
        return isinstance(v, torch.Tensor) and getattr(v, _DEPENDENT, None) is self

    def _mark(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        """Mark the outputs of a call on dependent tensors (and what an in-place call wrote to)."""
        written = [kwargs.get("out")]
        name = getattr(func, "__name__", "")
        if args and (name == "__setitem__" or name.startswith("__i") or (name.endswith("_") and not name.endswith("__"))):
            written.append(args[0])
        for v in [*tree_leaves(out), *tree_leaves(written)]:
            if isinstance(v, torch.Tensor):
                setattr(v, _DEPENDENT, self)

    def _report(self, name: str) -> None:
        self.unhandled.add(name)

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

    def _untracked(self, func: Callable | str, *values: object) -> bool:
        """No value is :meth:`_tracked` (the rule does not apply); reported if one still depends on the activations."""
        if self._tracked(*values):
            return False
        if any(self._dependent(v) for v in values):
            name = func if isinstance(func, str) else ops.op_name(func)
            self._report(f"{name}(batch of actual and reference rows not in dimension 0)")
        return True

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
        rest = args[1:]
        if any(self._dependent(v) for v in tree_leaves((rest, kwargs))):
            self._report(f"{ops.op_name(func)}(several activation-dependent inputs)")
            return out
        if self._untracked(func, z):
            return out
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
            # where z = z' the unit contributes nothing itself; an infinite slope there (sqrt at 0) would turn
            # the zero of the straight-through term into NaN: 0 instead
            m = torch.where(small, torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad)), m)
        if self.rule == "revealcancel":
            revealed = reveal_cancel(func, z, out, rest, kwargs, m, self._eps(z.dtype))
            if revealed is not None:
                return revealed
            self.rescale_fallbacks += 1
        return out.detach() + (z - z.detach()) * m

    def _maxpool(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = _MAXPOOL_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        z = p["input"]
        if self._untracked(func, z):
            return F.max_pool2d(*args, **kwargs)
        if p["return_indices"]:
            self._report("max_pool2d(return_indices=True)")
            return F.max_pool2d(*args, **kwargs)
        stride = p["stride"] if p["stride"] not in (None, [], ()) else p["kernel_size"]
        return _MaxPoolRescale.apply(
            z, _pair(p["kernel_size"]), _pair(stride), _pair(p["padding"]), _pair(p["dilation"]),
            bool(p["ceil_mode"]), self._eps(z.dtype),
        )

    def _product(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """Linear with at most one activation-dependent factor; the two-player rule with two."""
        factors = [v for v in tree_leaves((args, kwargs)) if self._dependent(v) and v.requires_grad]  # not a mask
        if len(factors) < 2:
            return func(*args, **kwargs)
        name = ops.op_name(func)
        if func is torch.einsum and _batch_first_einsum(args, kwargs):
            equation = args[0]
            func, args = (lambda a, b: torch.einsum(equation, a, b)), args[1:]
        elif func not in _BILINEAR or len(args) < 2 or not all(self._dependent(v) for v in args[:2]):
            self._report(f"{name}(several activation-dependent factors)")
            return func(*args, **kwargs)
        if self._untracked(name, args[0]) or self._untracked(name, args[1]):
            return func(*args, **kwargs)
        return self._bilinear(func, args, kwargs)

    def _bilinear(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """``Δ(ab) = ā Δb + Δa b̄`` with ``ā = (a + a')/2``: exact for any bilinear ``func``."""
        if len(args) < 2 or not (self._tracked(args[0]) and self._tracked(args[1])):
            return func(*args, **kwargs)
        if func is torch.Tensor.__rmul__:
            func, args = torch.mul, (args[1], args[0], *args[2:])
        if func is torch.Tensor.__rmatmul__:
            func, args = torch.matmul, (args[1], args[0], *args[2:])
        a, b = args[0], args[1]
        rest = args[2:]
        out = func(a, b, *rest, **kwargs)
        a_mean, b_mean = self._pair_mean(a), self._pair_mean(b)
        # Δ(ab) = ā Δb + Δa b̄ (exact for any bilinear op); value unchanged.
        return out.detach() + func(a - a.detach(), b_mean, *rest, **kwargs) + func(a_mean, b - b.detach(), *rest, **kwargs)

    def _division(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """Linear by a constant divisor; by a dependent one, :meth:`_divide`."""
        dividend = args[0] if args else kwargs.get("input")
        divisor = args[1] if len(args) > 1 else kwargs.get("other")
        if kwargs.get("rounding_mode") is not None:
            self._report(f"{ops.op_name(func)}(rounding_mode={kwargs['rounding_mode']!r})")
            return func(*args, **kwargs)
        if not self._dependent(divisor):
            return func(*args, **kwargs)
        if func not in _DIVISION or len(args) != 2 or kwargs:
            self._report(f"{ops.op_name(func)}(in place or by keyword, by activation-dependent values)")
            return func(*args, **kwargs)
        if self._untracked(func, divisor):
            return func(*args, **kwargs)
        return self._divide(dividend, divisor)

    def _divide(self, a: torch.Tensor | float, b: torch.Tensor) -> torch.Tensor:
        """``a / b``: ``1 / b`` by Rescale, then the product rule (a constant ``a``: linear)."""
        reciprocal = self._elementwise(torch.reciprocal, (b,), {})
        if self._tracked(a):
            return self._bilinear(torch.mul, (a, reciprocal), {})
        return a * reciprocal

    def _binary_elementwise(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """``pow``, ``c / z``, ``maximum`` ... with one constant argument: Rescale in the other."""
        if len(args) == 2 and not kwargs and not self._dependent(args[0]):
            if func in _SYMMETRIC:
                return self._elementwise(func, (args[1], args[0]), {})
            base = args[0]  # torch.pow(c, z)
            return self._elementwise(lambda t: func(base, t), (args[1],), {})
        return self._elementwise(func, args, kwargs)

    def _max_call(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``max`` / ``min`` over dimensions (the max-pool rule), or elementwise against a constant."""
        other = args[1] if len(args) > 1 else kwargs.get("other")
        if isinstance(other, torch.Tensor):  # torch.max(a, b): elementwise
            return self._binary_elementwise(torch.maximum if func in _MAX else torch.minimum, (args[0], other), {})
        z = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", ())
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        out = func(*args, **kwargs)
        if self._untracked(func, z):
            return out
        dims = _dims(dim, z.dim())
        if not dims or 0 in dims:
            self._report(f"{ops.op_name(func)}(over the batch dimension)")
            return out
        values = self._max_rule(z, dims, bool(keepdim), negate=func in _MIN)
        return type(out)((values, out[1])) if isinstance(out, tuple) else values

    def _adaptive_max(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """Global max pooling (output size 1) by the max-pool rule; other sizes are reported."""
        spatial = _ADAPTIVE_MAX[func]
        z = args[0]
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        out = func(*args, **kwargs)
        if self._untracked(func, z):
            return out
        if _pair(size) != (1, 1) or (len(args) > 2 and args[2]) or kwargs.get("return_indices"):
            self._report(f"{ops.op_name(func)}(output size {size}, or with indices)")
            return out
        return self._max_rule(z, tuple(range(z.dim() - spatial, z.dim())), True)

    def _max_rule(self, z: torch.Tensor, dims: tuple[int, ...], keepdim: bool, negate: bool = False) -> torch.Tensor:
        """captum's max-pool rule over ``dims``: ``max(o, o') - o'`` routed to the actual arg-max,
        ``o - max(o, o')`` to the reference one, each divided by ``z - z'`` there
        (the gradient where ``|z - z'| < eps``); ``min(z) = -max(-z)``."""
        s = -z if negate else z
        with torch.enable_grad():
            leaf = s.detach().requires_grad_(True)
            pooled = leaf.amax(dims, keepdim=True)
            o_a, o_r = pooled.detach().chunk(2)
            cross = torch.maximum(o_a, o_r)
            d_out = torch.cat([cross - o_r, o_a - cross])
            routed, plain = (torch.autograd.grad(pooled, leaf, g, retain_graph=True)[0] for g in (d_out, torch.ones_like(pooled)))
        routed_a, routed_r = routed.chunk(2)
        s_a, s_r = s.detach().chunk(2)
        dz = torch.cat(2 * [s_a - s_r])
        small = dz.abs() < self._eps(z.dtype)
        m = torch.where(small, plain, torch.cat(2 * [routed_a + routed_r]) / torch.where(small, torch.ones_like(dz), dz))
        values = pooled.detach() + ((s - s.detach()) * m).sum(dims, keepdim=True)
        values = -values if negate else values
        return values if keepdim else values.squeeze(dims)

    def _norm_call(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """``torch.norm`` / ``linalg.vector_norm`` over some dimensions: see :meth:`_vector_norm`."""
        signature = _VECTOR_NORM_SIGNATURE if func is torch.linalg.vector_norm else _NORM_SIGNATURE
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        p = dict(bound.arguments)
        z = p.pop("x") if func is torch.linalg.vector_norm else p.pop("input")
        order = p.pop("ord") if func is torch.linalg.vector_norm else p.pop("p")
        out = func(*args, **kwargs)
        if self._untracked(func, z):
            return out
        dims = _dims(p["dim"], z.dim())
        order = 2 if order == "fro" else order
        if p.get("dtype") is not None or p.get("out") is not None or not dims or 0 in dims or not isinstance(order, (int, float)) or order == 0:
            self._report(f"{ops.op_name(func)}(p={order!r}, dim={p['dim']!r})")
            return out
        return out.detach() + _straight_through(self._vector_norm(z, float(order), dims, bool(p["keepdim"])))

    def _vector_norm(self, z: torch.Tensor, order: float, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
        """``(sum_i |z_i|^p)^(1/p)``: Rescale on ``|t|^p`` and ``t^(1/p)``, the sum linear
        (``p = 2``: square and sqrt); ``p = ±inf``: ``|z|`` then the max rule (exact throughout)."""
        if math.isinf(order):
            return self._max_rule(self._elementwise(torch.abs, (z,), {}), dims, keepdim, negate=order < 0)
        powered = self._elementwise(torch.square if order == 2 else _abs_pow(order), (z,), {})
        total = powered.sum(dims, keepdim=keepdim)
        if order == 1:
            return total
        return self._elementwise(torch.sqrt if order == 2 else _abs_pow(1 / order), (total,), {})

    def _normalize(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """``F.normalize``: ``z / max(||z||_p, eps)`` by the norm, Rescale (clamp) and division rules."""
        bound = _NORMALIZE_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        out = func(*args, **kwargs)
        z = p["input"]
        if self._untracked(func, z):
            return out
        if p["out"] is not None or not isinstance(p["p"], (int, float)) or p["p"] == 0 or 0 in _dims(p["dim"], z.dim()):
            self._report(f"normalize(p={p['p']!r}, dim={p['dim']!r})")
            return out
        return out.detach() + _straight_through(self._unit(z, float(p["p"]), p["dim"], p["eps"]))

    def _unit(self, z: torch.Tensor, order: float, dim: int, eps: float) -> torch.Tensor:
        """``z / max(||z||_p, eps)`` along ``dim``, with the rules (a constant ``z``: as it is)."""
        if not self._tracked(z):
            return F.normalize(z, order, dim, eps)
        norm = self._vector_norm(z, order, _dims(dim, z.dim()), keepdim=True)
        return self._divide(z, self._elementwise(torch.clamp_min, (norm, eps), {}))

    def _cosine_similarity(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """``sum_dim (x1 / max(||x1||, eps)) (x2 / max(||x2||, eps))``: unit vectors by
        :meth:`_unit`, then the product rule (linear against a constant)."""
        bound = _COSINE_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        out = func(*args, **kwargs)
        x1, x2 = torch.broadcast_tensors(p["x1"], p["x2"])
        if self._untracked(func, x1, x2):
            return out
        if 0 in _dims(p["dim"], x1.dim()):
            self._report("cosine_similarity(dim=0, the batch)")
            return out
        u1, u2 = (self._unit(x, 2.0, p["dim"], p["eps"]) for x in (x1, x2))
        return out.detach() + _straight_through(self._bilinear(torch.mul, (u1, u2), {}).sum(p["dim"]))

    def _layer_norm(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = inspect.signature(F.layer_norm).bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        z = p["input"]
        out = F.layer_norm(*args, **kwargs)
        if self._untracked(func, z):
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
        if self._untracked(func, z):
            return func(*args, **kwargs)
        if dim is None:
            self._report(f"{ops.op_name(func)}(dim=None)")
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

    def _sdpa(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = _SDPA_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        q, k, v = p["query"], p["key"], p["value"]
        if self._untracked(func, q, k, v):
            return F.scaled_dot_product_attention(*args, **kwargs)
        if p["dropout_p"]:
            self._report("scaled_dot_product_attention(dropout_p > 0)")
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

    def _multi_head_attention(self, func: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention``'s functional form, decomposed (inputs are (L, N, E))."""
        bound = inspect.signature(F.multi_head_attention_forward).bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        query, key, value = p["query"], p["key"], p["value"]
        batch_first = [t.transpose(0, 1) if t.dim() == 3 else t for t in (query, key, value)]
        if self._untracked(func, *batch_first):
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
            self._report(f"multi_head_attention_forward({', '.join(unsupported)})")
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

    def _group_norm(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        bound = inspect.signature(F.group_norm).bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        z = p["input"]
        out = F.group_norm(*args, **kwargs)
        if self._untracked(func, z):
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


def _straight_through(t: torch.Tensor) -> torch.Tensor:
    """``t - t.detach()``: zero, with ``t``'s DeepLIFT multipliers (added to the op's own output)."""
    return t - t.detach()


def _dims(dim: int | tuple[int, ...] | list[int] | None, ndim: int) -> tuple[int, ...]:
    """Dimensions as non-negative ints; ``None`` / ``()`` (all of them, the batch included) as ``()``."""
    if dim is None:
        return ()
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % ndim for d in dims)


def _batch_first_einsum(args: tuple, kwargs: dict) -> bool:
    """``einsum("b...,b...->b...", a, b)``: two operands and the output all start with one batch index."""
    if kwargs or len(args) != 3 or not isinstance(args[0], str) or "->" not in args[0]:
        return False
    inputs, output = args[0].replace(" ", "").split("->")
    terms = inputs.split(",")
    return len(terms) == 2 and all(t[:1] == output[:1] and t[:1].isalpha() for t in terms)


def _abs_pow(order: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``t -> |t|^order``, an elementwise function for the Rescale rule."""
    return lambda t: t.abs().pow(order)


def _no_grad_name(func: Callable) -> str:
    """The custom ``autograd.Function`` whose ``forward`` is running, else the op under ``torch.no_grad``."""
    frame = inspect.currentframe()
    while frame is not None:
        ctx = frame.f_locals.get("ctx")
        if isinstance(ctx, torch.autograd.function.BackwardCFunction):
            return f"{type(ctx).__name__.removesuffix('Backward')}.apply (a custom autograd.Function)"
        frame = frame.f_back
    return f"{ops.op_name(func)} (under torch.no_grad)"


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

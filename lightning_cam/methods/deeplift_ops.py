"""Which torch calls :class:`~lightning_cam.methods.deeplift.DeepLiftMode` may let pass: the allow-lists.

DeepLIFT is default-deny: a call that receives a tensor depending on the target
layer's activations is either

* linear (or affine) in them, or a pure re-arrangement, and keeps its gradient
  (:data:`LINEAR`; the products and divisions of :data:`PRODUCTS` /
  :data:`DIVISIONS` when at most one factor, resp. only the dividend, depends
  on the activations; ``where`` / ``masked_fill`` with a constant condition;
  batch norm and dropout in eval mode);
* one with a DeepLIFT rule (the tables in :mod:`lightning_cam.methods.deeplift`);
* or reported by name (:attr:`DeepLiftMode.unhandled`), never trusted silently.

Calls whose result holds no tensor (``.shape``, ``.dim()``, ``.size()``) pass,
except reads of values (``.item()``, ``bool(t)``), which make the head's control
flow depend on the activations. Tensors made "like" an activation
(``zeros_like``, ``new_zeros``) are constants.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LINEAR", "PRODUCTS", "DIVISIONS", "CONSTANT_RESULTS", "VALUE_READS", "find", "op_name", "linear_problem"]

T = torch.Tensor


def _getter(name: str) -> Callable:
    return getattr(T, name).__get__


LINEAR: frozenset[Callable] = frozenset({
    # layers
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.batch_norm, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    F.interpolate, F.pad, torch.constant_pad_nd, F.pixel_shuffle, F.pixel_unshuffle, F.unfold, F.fold,
    # sums and differences
    torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__, torch.sub, torch.subtract, T.sub, T.sub_,
    T.__sub__, T.__rsub__, T.__isub__, torch.rsub, torch.neg, torch.negative, T.neg, T.neg_, T.__neg__, T.__pos__,
    torch.sum, T.sum, torch.mean, T.mean, torch.nansum, torch.cumsum, T.cumsum, torch.diff, torch.trace,
    torch.where, T.where, T.masked_fill, T.masked_fill_,
    # re-arrangements
    torch.flatten, T.flatten, torch.unflatten, T.unflatten, T.view, T.view_as, torch.reshape, T.reshape, T.reshape_as,
    torch.permute, T.permute, torch.transpose, T.transpose, torch.t, T.t, torch.swapaxes, T.swapaxes, torch.swapdims,
    T.swapdims, torch.movedim, T.movedim, torch.moveaxis, T.moveaxis, torch.squeeze, T.squeeze, torch.unsqueeze,
    T.unsqueeze, T.expand, T.expand_as, torch.broadcast_to, T.broadcast_to, torch.broadcast_tensors, T.repeat,
    torch.repeat_interleave, T.repeat_interleave, torch.tile, T.tile, T.contiguous, torch.clone, T.clone,
    T.__getitem__, T.__setitem__, torch.index_select, T.index_select, torch.gather, T.gather, torch.take_along_dim,
    torch.narrow, T.narrow, torch.select, T.select, torch.chunk, T.chunk, torch.split, T.split, torch.unbind, T.unbind,
    torch.tensor_split, torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack,
    torch.roll, T.roll, torch.flip, T.flip, torch.rot90, torch.diagonal, T.diagonal, torch.diag_embed, torch.tril,
    T.tril, torch.triu, T.triu, torch.index_copy, T.index_copy, T.index_copy_, torch.index_add, T.index_add,
    T.index_add_, torch.index_put, T.index_put, T.index_put_, torch.scatter, T.scatter, T.scatter_, torch.scatter_add,
    T.scatter_add, T.scatter_add_, T.index_fill, T.index_fill_, T.masked_scatter, T.masked_scatter_, T.copy_, T.zero_,
    T.fill_, _getter("T"), _getter("mT"), _getter("H"), _getter("mH"), _getter("real"),
    # casts
    T.to, T.float, T.double, T.half, T.bfloat16, T.type, T.type_as, T.cpu, T.cuda, T.requires_grad_,
})

#: products: linear with at most one activation-dependent factor; the out-of-place ones with two
#: use the exact two-player rule of :class:`DeepLiftMode`
PRODUCTS: frozenset[Callable] = frozenset({
    torch.mul, torch.multiply, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__, torch.matmul, T.matmul,
    T.__matmul__, T.__rmatmul__, torch.bmm, T.bmm, torch.mm, T.mm, torch.mv, torch.einsum, torch.tensordot,
    torch.outer, torch.inner, torch.dot, torch.kron,
})
#: divisions: linear when the divisor is a constant; an activation-dependent divisor has a rule
DIVISIONS: frozenset[Callable] = frozenset({
    torch.div, torch.divide, torch.true_divide, T.div, T.div_, T.__truediv__, T.__itruediv__,
})
#: tensors shaped like an activation but constant
CONSTANT_RESULTS: frozenset[Callable] = frozenset({
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like,
    torch.randint_like, T.new_zeros, T.new_ones, T.new_empty, T.new_full, T.new_tensor,
})
#: reads of values: the head's control flow would depend on the activations
VALUE_READS: frozenset[Callable] = frozenset({
    T.item, T.tolist, T.numpy, T.__bool__, T.__float__, T.__int__, T.__index__, T.__complex__, T.__array__,
})

_TRAINING_FLAG: dict[Callable, inspect.Signature] = {
    f: inspect.signature(f) for f in (F.batch_norm, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
}
_CONDITION_ARGUMENT: dict[Callable, int] = {torch.where: 0, T.where: 1, T.masked_fill: 1, T.masked_fill_: 1}


def find(table: frozenset[Callable] | dict, func: Callable) -> bool:
    """``func in table``, ``False`` for unhashable callables (bound builtins are in no table)."""
    try:
        return func in table
    except TypeError:
        return False


def op_name(func: Callable) -> str:
    """A readable name: ``Tensor.sort``, ``cosine_similarity``, ``Tensor.data`` (a property)."""
    owner = getattr(func, "__self__", None)
    if type(owner).__name__ == "getset_descriptor":
        return f"Tensor.{owner.__name__}"
    name = getattr(func, "__name__", None) or str(func)
    qualname = getattr(func, "__qualname__", "") or ""
    return f"Tensor.{name}" if qualname.startswith(("TensorBase.", "Tensor.")) else name


def linear_problem(func: Callable, args: tuple, kwargs: dict, dependent: Callable[[Any], bool]) -> str | None:
    """Why a call of :data:`LINEAR` is not linear here (``"batch_norm(training=True)"``), or ``None``."""
    if func in _TRAINING_FLAG:
        bound = _TRAINING_FLAG[func].bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        if p["training"] and p.get("p", 1.0) != 0:
            return f"{op_name(func)}(training=True)"
    position = _CONDITION_ARGUMENT.get(func)
    if position is not None:
        condition = args[position] if len(args) > position else kwargs.get("condition", kwargs.get("mask"))
        if len(args) + len(kwargs) == 1:
            return f"{op_name(func)}(condition only)"  # torch.where(c): the indices of the non-zeros
        if dependent(condition):
            return f"{op_name(func)}(a condition computed from the activations)"
    return None

"""CAM (Zhou et al., CVPR 2016)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map

__all__ = ["CAM", "head_is_gap_linear"]

_PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity)
_SHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "size", "contiguous"}
_SPATIAL_DIMS = ((2, 3), (-2, -1), [2, 3], [-2, -1])


def _spatial_mean(node: torch.fx.Node) -> bool:
    """``x.mean((2, 3))`` / ``x.mean(dim=(-2, -1))``: a global average pool written as a mean."""
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return dim in _SPATIAL_DIMS


def _module_ok(module: nn.Module) -> tuple[bool, int]:
    """(allowed in a GAP+Linear head, number of Linear layers in it)."""
    if isinstance(module, nn.Sequential):
        parts = [_module_ok(m) for m in module]
        return all(ok for ok, _ in parts), sum(n for _, n in parts)
    if isinstance(module, nn.Linear):
        return True, 1
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        return size in (1, (1, 1)), 0
    return isinstance(module, _PASS_THROUGH), 0


def head_is_gap_linear(model: nn.Module, layer_name: str) -> bool | None:
    """Whether the traced graph after ``layer_name`` is global average pooling, reshapes/dropout and ONE Linear.

    Structural check (works on a ``meta``-device model, no data): the app uses
    it to refuse ``cam`` before training. ``None`` when the model cannot be
    traced (the numerical check in :meth:`CAM.compute` still applies).
    """
    import torch.nn.functional as F

    from lightning_cam.methods.split import split_model

    split = split_model(model, layer_name)
    if not split.traced:
        return None
    linears = 0
    for node in split.head.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            ok, count = _module_ok(split.head.get_submodule(node.target))
            linears += count
        elif node.op == "call_method":
            ok = node.target in _SHAPE_METHODS or (node.target == "mean" and _spatial_mean(node))
        elif node.op == "call_function":
            ok = node.target in (torch.flatten, F.dropout, getattr) or (
                node.target is F.adaptive_avg_pool2d
                and node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None) in (1, (1, 1))
            )
            if node.target is F.linear:
                ok, linears = True, linears + 1
        else:
            ok = False
        if not ok:
            return False
    return linears == 1


def _as_columns(logits: torch.Tensor) -> torch.Tensor | None:
    """(B, C) scores as they are, (B,) as (B, 1); None for other shapes (segmentation)."""
    if logits.dim() == 2:
        return logits
    return logits[:, None] if logits.dim() == 1 else None


def _target_slope(layer_pass: LayerPass) -> torch.Tensor:
    """(B, C) ``dt/dy`` of the target at the scores ``y`` (one-hot ``e_c`` for the class logit)."""
    scores = layer_pass.logits.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        slope = torch.autograd.grad(layer_pass.target(scores, layer_pass.index).sum(), scores)[0]
    return _as_columns(slope)


class CAM(BaseCAM):
    """CAM: ``alpha_k = W[c, k]`` of the fully connected layer after global average pooling.

    For another target ``t`` of the scores ``y``: ``alpha = (dt/dy) W`` (``-W[0]`` for the
    negative side of a one-logit model; the chain rule through the linear layer).

    Needs the part after the target layer to be ``GAP -> Linear`` (possibly
    with flatten / dropout / identity); this is checked numerically on every
    batch (``W mean_ij(A) + b`` must reproduce the logits) and a clear error
    names the methods to use otherwise.
    """

    name = "cam"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        logits = _as_columns(layer_pass.logits)
        if logits is None:
            raise ValueError(self._not_gap_linear())
        linear = self._classifier(layer_pass.activation.shape[1], logits.shape[1])
        pooled = layer_pass.activation.mean(dim=(2, 3))
        dtype = pooled.dtype  # float32, or float64 for a float64 model
        predicted = torch.nn.functional.linear(pooled, linear.weight.to(dtype), None if linear.bias is None else linear.bias.to(dtype))
        scale = logits.abs().max().clamp_min(1.0)
        # the head ran in the model's dtype: allow a few of its roundings (bf16: 2**-7, fp16: 2**-10)
        tol = max(1e-4, 4 * torch.finfo(layer_pass.split.dtype).eps)
        if not torch.allclose(predicted, logits, rtol=tol, atol=tol * float(scale)):
            raise ValueError(self._not_gap_linear())
        weights = _target_slope(layer_pass).to(dtype) @ linear.weight.detach().to(dtype)
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)

    def _classifier(self, channels: int, num_classes: int) -> nn.Linear:
        linears = [
            m for m in self.model.modules()
            if isinstance(m, nn.Linear) and m.in_features == channels and m.out_features == num_classes
        ]
        if not linears:
            raise ValueError(self._not_gap_linear())
        return linears[-1]

    def _not_gap_linear(self) -> str:
        return (
            f"CAM needs global average pooling followed by one Linear layer right after the target layer; "
            f"{type(self.model).__name__} after {self.layer_name!r} is not like that. "
            "Use GradCAM (identical to CAM on such heads) or LiftCAM instead."
        )

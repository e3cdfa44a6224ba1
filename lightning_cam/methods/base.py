"""The shared forward pass and the base class of every explanation method."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_cam.layers import default_target_layer, resolve_layer, unwrap_model
from lightning_cam.maps import normalize_maps
from lightning_cam.methods.layout import Layout, Reshape, infer_layout
from lightning_cam.methods.split import SplitModel, batched_flags, split_model
from lightning_cam.outputs import OutputTransform, accumulation_dtype, check_output_transform, float_logits
from lightning_cam.targets import Target, TargetsLike, resolve_target, target_classes

__all__ = ["Explanation", "LayerPass", "BaseCAM", "Score", "Targets", "weighted_map"]

#: what ``targets=`` accepts (:mod:`lightning_cam.targets`)
Targets = TargetsLike
#: a differentiable score of the head's rows: (scores (N, ...), index (N,) of their images) -> (N,); every
#: bound :class:`~lightning_cam.targets.Target` is one
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Explanation:
    """What one method says about one batch.

    ``maps`` (B,h,w): ReLU'd map at the target layer's resolution.
    ``weights`` (B,K): channel coefficients, ``None`` for methods without them.
    ``targets`` (B,): the class explained (``-1`` for targets without classes: regression,
    per-image callables). ``logits``: the model's scores, whatever their shape ((B, C), (B,),
    (B, C, H, W)). ``target``: the bound :class:`~lightning_cam.targets.Target` ``t`` explained.
    ``delta`` (B,): completeness residual ``sum_k phi_k - (t(A) - t(0))``
    for LIFT-CAM, ``None`` otherwise. ``seconds``: wall time of this method
    including the shared forward pass (its cost when run alone).
    """

    method: str
    maps: torch.Tensor
    weights: torch.Tensor | None
    targets: torch.Tensor
    logits: torch.Tensor
    delta: torch.Tensor | None = None
    seconds: float = 0.0
    input_size: tuple[int, int] | None = None
    target: Target | None = None

    def saliency(self, size: tuple[int, int] | torch.Size | None = None) -> torch.Tensor:
        """(B,H,W) map in [0,1]: bilinear upsampling (to the input size by default) then per-image min-max."""
        if size is None:
            size = self.input_size if self.input_size is not None else tuple(self.maps.shape[-2:])
        return normalize_maps(self.maps, tuple(size)[-2:])


class LayerPass:
    """One forward pass of a batch, split at the target layer, shared by all methods.

    Holds ``A`` (the layer's output as (B, K, h, w) maps, see
    :mod:`~lightning_cam.methods.layout` for token and channels-last layers),
    the model's scores ``logits``, the explained ``target`` ``t`` (bound to the clean
    scores, :func:`~lightning_cam.targets.resolve_target`), its classes ``targets`` (B,)
    (``-1`` where the target has none) and, computed on first use, ``g = dt/dA``
    (taken with ``torch.autograd.grad`` through the head only: no parameter gradients,
    no backward through the layers before ``L``). ``output_transform`` reads the scores
    from the model's output (default: :func:`lightning_cam.outputs.logits_of`).
    """

    def __init__(
        self, model: nn.Module, layer_name: str, x: torch.Tensor, targets: Targets = None, reshape: Reshape | None = None,
        output_transform: OutputTransform | None = None,
    ) -> None:
        start = time.perf_counter()
        self.model = model
        self.x = x
        self.output_transform = output_transform
        self.split: SplitModel = split_model(model, layer_name)
        self.split.output_transform = output_transform
        with torch.no_grad():
            activation, crossings = self.split.body(x)
        self.crossings = crossings
        self.split.batched_crossings = batched_flags(crossings, x.shape[0])
        self.split.batch = int(x.shape[0])
        self.split.dtype = activation.dtype
        self.split.plan_readout(activation, crossings)
        self.layout: Layout = infer_layout(model, layer_name, activation, (int(x.shape[-2]), int(x.shape[-1])), reshape)
        self.activation = self.layout.to_maps(activation.detach().to(accumulation_dtype(activation.dtype)))
        self._leaf = self.activation.clone().requires_grad_(True)
        self.index = torch.arange(x.shape[0], device=x.device)
        self._head_out = self.head(self._leaf, self.index)
        self.logits = self._head_out.detach()
        self.set_target(resolve_target(targets, self.logits))
        self._grad: torch.Tensor | None = None
        self.seconds = time.perf_counter() - start

    def set_target(self, target: Target) -> None:
        """Explain the bound ``target`` (of these N images) from now on: ``t``, its classes, ``g = dt/dA``."""
        self.target = target
        self.targets = target_classes(target, self.x.shape[0], self.x.device)
        self._grad = None

    @property
    def gradient(self) -> torch.Tensor:
        """``g = dt/dA`` (B,K,h,w), computed once (from the shared pass's head graph while it is kept)."""
        if self._grad is None:
            if self._head_out is None:  # the target changed after the shared graph was used
                self._grad = self.score_gradient()[1].detach()
            else:
                score = self.target(self._head_out, self.index).sum()
                self._grad = torch.autograd.grad(score, self._leaf)[0].detach()
                self._head_out = None  # free the head graph
        return self._grad

    def score_gradient(self, score: Score | None = None, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, d score/dA)`` for ``score`` (default: the target) of the head's scores, from one more head pass.

        ``A`` is a fresh leaf holding the activations; ``create_graph=True`` keeps the graph
        of the gradient for a second derivative (a Hessian-vector product w.r.t. ``A``), with
        attention in its math kernel (the fused kernels have no double backward).
        """
        leaf = self.activation.clone().requires_grad_(True)
        kernels = sdpa_kernel([SDPBackend.MATH]) if create_graph else contextlib.nullcontext()
        with kernels:
            total = (score or self.target)(self.head(leaf, self.index), self.index).sum()
        return leaf, torch.autograd.grad(total, leaf, create_graph=create_graph)[0]

    def head(self, activations: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits of the head on ``activations`` (B', K, h, w maps of images ``index``)."""
        return self.split.run_head(self.layout.to_raw(activations, index), self.crossings, index)

    def model_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the whole model on images ``x`` (cast to the model's dtype), at least float32."""
        return float_logits(self.model(x.to(self.x.dtype)), self.output_transform)

    def target_scores(self, activations: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``t`` of the head on activation rows of images ``index`` (no grad): (N,)."""
        with torch.no_grad():
            return self.target(self.head(activations, index), index)


def weighted_map(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)``: (B,K) x (B,K,h,w) -> (B,h,w)."""
    return torch.relu(torch.einsum("bk,bkhw->bhw", weights, activation))




def layer_list(target_layer: object) -> list:
    """``target_layer`` as a non-empty list (one layer, or several to fuse)."""
    layers = list(target_layer) if isinstance(target_layer, Sequence) and not isinstance(target_layer, str) else [target_layer]
    if not layers:
        raise ValueError("target_layer is an empty list; give one layer or several, e.g. ['layer3', 'layer4'].")
    return layers


class BaseCAM:
    """Base class: resolves the layer, runs the shared pass, times the method.

    Subclasses implement :meth:`compute` from a :class:`LayerPass`.
    ``reshape``: optional callable turning the layer's raw output into
    (B, K, h, w) (like pytorch-grad-cam's ``reshape_transform``); token and
    channels-last layouts are recognised without it.
    ``output_transform``: callable reading the scores ((B, C), (B,), (B, C, H, W)) from
    the model's output, for outputs that are not a tensor, a tuple/list, a dict
    with ``"logits"`` / ``"out"`` or an object with ``.logits``.
    """

    name: ClassVar[str] = ""
    #: the map is already a principal-component projection (``eigen_smooth`` leaves it alone)
    projects: ClassVar[bool] = False
    output_transform: OutputTransform | None = None

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
        *,
        reshape: Reshape | None = None,
        output_transform: OutputTransform | None = None,
    ) -> None:
        self.output_transform = check_output_transform(output_transform)
        self.model = unwrap_model(model)
        self.reshape = reshape
        if target_layer is None:
            target_layer = default_target_layer(self.model)
        resolved = [resolve_layer(self.model, layer) for layer in layer_list(target_layer)]
        #: every target layer; maps of several layers are fused (see :mod:`lightning_cam.methods.compose`)
        self.layer_names = [name for name, _ in resolved]
        self.layer_name, self.layer = resolved[0]

    def __call__(self, x: torch.Tensor, targets: Targets = None, **options: Any) -> torch.Tensor:
        """(B,H,W) saliency in [0,1] on ``x``'s device (``options``: see :meth:`explain`)."""
        return self.explain(x, targets, **options).saliency()

    def explain(
        self, x: torch.Tensor, targets: Targets = None, aug_smooth: bool = False, eigen_smooth: bool = False,
        fusion: str = "mean",
    ) -> Explanation:
        """Full :class:`Explanation` of the batch ``x`` for ``targets`` (default: the output's default
        target, e.g. the top-1 class; see :mod:`lightning_cam.targets`).

        ``aug_smooth``, ``eigen_smooth`` and the ``fusion`` of several target
        layers follow pytorch-grad-cam (see :mod:`lightning_cam.methods.compose`).
        """
        from lightning_cam.methods.explain import explain_all  # the one shared pass (imports this module)

        return explain_all(
            self.model, self.layer_names, x, methods=[self], targets=targets, aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth, fusion=fusion, reshape=self.reshape, output_transform=self.output_transform,
        )[self.name]

    def timed_compute(self, layer_pass: LayerPass) -> Explanation:
        start = time.perf_counter()
        explanation = self.compute(layer_pass)
        explanation.seconds = time.perf_counter() - start + layer_pass.seconds
        return explanation

    def compute(self, layer_pass: LayerPass) -> Explanation:  # pragma: no cover - abstract
        raise NotImplementedError

    def channel_terms(self, layer_pass: LayerPass, explanation: Explanation | None) -> torch.Tensor | None:
        """(B,K,h,w) per-channel terms whose sum over ``K`` is the map before ReLU.

        ``w_k A_k`` for methods with channel coefficients; ``None`` where a
        method has no such decomposition. ``eigen_smooth`` projects these.
        """
        if explanation is None or explanation.weights is None:
            return None
        return explanation.weights[:, :, None, None] * layer_pass.activation

    def _explanation(self, layer_pass: LayerPass, maps: torch.Tensor, weights: torch.Tensor | None, delta: torch.Tensor | None = None) -> Explanation:
        return Explanation(
            method=self.name, maps=maps.detach(), weights=None if weights is None else weights.detach(),
            targets=layer_pass.targets, logits=layer_pass.logits, delta=None if delta is None else delta.detach(),
            input_size=(int(layer_pass.x.shape[-2]), int(layer_pass.x.shape[-1])), target=layer_pass.target,
        )

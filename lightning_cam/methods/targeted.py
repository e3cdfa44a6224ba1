"""Gradient CAMs on another score than the class logit, or with a second derivative.

* ShapleyCAM (Cai et al., 2025, arXiv 2501.06261): ``alpha_k = mean_ij (g - H·A / 2)_kij``.
* FinerCAM (Zhang et al., CVPR 2025, arXiv 2501.11309): Grad-CAM of the target
  ``sum_j w_j (y_c - alpha y_j) / sum_j w_j`` against the classes j closest to ``y_c``
  (:class:`~lightning_cam.targets.ClassMinusSimilar`).

Both reuse the shared pass's activations ``A`` and differentiate one more pass through
the head (:meth:`LayerPass.score_gradient`): no backward through the layers before ``L``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, Score, weighted_map
from lightning_cam.methods.layout import Reshape
from lightning_cam.outputs import OutputTransform
from lightning_cam.targets import ClassMinusSimilar, ClassReST, comparison_classes

__all__ = ["FinerCAM", "ShapleyCAM", "comparison_classes", "finer_target", "gradient_and_hvp"]


def _classes(layer_pass: LayerPass, method: str) -> torch.Tensor:
    """The (B,) classes of the pass's target; a clear error for targets without classes."""
    if layer_pass.target.kind not in ("class", "multilabel") or layer_pass.target.classes is None:
        raise ValueError(
            f"{method} compares class scores of a (B, num_classes) output; the target {layer_pass.target!r} on scores of "
            f"shape {tuple(layer_pass.logits.shape)} has no class column. Use it with a class target, e.g. targets=3."
        )
    return layer_pass.targets


def gradient_and_hvp(layer_pass: LayerPass, score: Score | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, H·A)``: ``g = d score/dA`` (default score: the pass's target) and the Hessian-vector product
    ``H·A = d<g, A>/dA`` through the head (one more head pass, its backward and one double backward);
    ``H·A = 0`` for a head that is linear in ``A`` after the first derivative (ReLU, max-pool, linear)."""
    leaf, g = layer_pass.score_gradient(score, create_graph=True)
    hvp = torch.zeros_like(g)
    if g.requires_grad:  # a linear head leaves g constant in A: H = 0
        found = torch.autograd.grad(g, leaf, grad_outputs=layer_pass.activation, allow_unused=True)[0]
        hvp = hvp if found is None else found
    return g.detach(), hvp.detach()


class ShapleyCAM(BaseCAM):
    """ShapleyCAM (Cai et al., 2025): ``alpha_k = mean_ij (g - 1/2 H·A)_kij``, ``H·A = d<g, A>/dA``.

    ``g = dt/dA`` and the Hessian-vector product go through the head only. The Hessian
    term vanishes for piecewise-linear heads (ReLU, max-pool, linear), where ShapleyCAM is
    Grad-CAM. ``score="logit"`` (default): the target ``t`` (the class logit by default, as
    pytorch-grad-cam's default target); ``"rest"``: logit minus cross-entropy of the target's
    class (the paper's ``ClassifierOutputReST``, :class:`~lightning_cam.targets.ClassReST`).

    Token layouts: ``H·A`` is taken over the map's entries (patch tokens) with the prefix
    tokens held at their values, the layout's convention; pytorch-grad-cam differentiates
    w.r.t. all tokens (``+ H_patch,cls A_cls``). Attention runs in its math kernel for
    the double backward.
    """

    name = "shapleycam"

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, score: str = "logit", *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        if score not in SCORES:
            raise ValueError(f"score must be one of {sorted(SCORES)}, got {score!r}.")
        self.score = score

    def compute(self, layer_pass: LayerPass) -> Explanation:
        score = ClassReST(_classes(layer_pass, "ShapleyCAM(score='rest')")).bind(layer_pass.logits) if self.score == "rest" else None
        g, hvp = gradient_and_hvp(layer_pass, score)
        weights = (g - 0.5 * hvp).mean(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)


#: ShapleyCAM's ``score`` options
SCORES = ("logit", "rest")


def finer_target(layer_pass: LayerPass, alpha: float, ranks: Sequence[int]) -> ClassMinusSimilar:
    """The pass's target when it already is a :class:`~lightning_cam.targets.ClassMinusSimilar`, else that
    target for the pass's classes, ``alpha`` and comparison ``ranks``, bound to the clean scores."""
    if isinstance(layer_pass.target, ClassMinusSimilar):
        return layer_pass.target
    target = ClassMinusSimilar(_classes(layer_pass, "FinerCAM"), alpha=alpha, ranks=ranks).bind(layer_pass.logits)
    assert isinstance(target, ClassMinusSimilar)
    return target


class FinerCAM(BaseCAM):
    """FinerCAM (Zhang et al., CVPR 2025): Grad-CAM of ``sum_j w_j (y_c - alpha y_j) / sum_j w_j``.

    The target :class:`~lightning_cam.targets.ClassMinusSimilar` of the explained class ``c``
    (or the one given as ``targets=``): ``j`` runs over the classes at ``comparison_ranks``
    (default 1, 2, 3) when sorted by ``|y_j - y_c|``, ``w_j = softmax(y)_j`` (differentiated
    too), ``alpha = 1``: the defaults of pytorch-grad-cam's ``FinerCAM`` /
    ``FinerWeightedTarget``. ``alpha = 0`` is Grad-CAM.
    """

    name = "finercam"

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, alpha: float = 1.0,
        comparison_ranks: Sequence[int] = (1, 2, 3), *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        self.alpha, self.comparison_ranks = float(alpha), tuple(int(r) for r in comparison_ranks)

    def compute(self, layer_pass: LayerPass) -> Explanation:
        _, g = layer_pass.score_gradient(finer_target(layer_pass, self.alpha, self.comparison_ranks))
        weights = g.mean(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)

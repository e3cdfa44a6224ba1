"""Gradient CAMs on another score than the class logit, or with a second derivative.

* ShapleyCAM (Cai et al., 2025, arXiv 2501.06261): ``alpha_k = mean_ij (g - H·A / 2)_kij``.
* FinerCAM (Zhang et al., CVPR 2025, arXiv 2501.11309): Grad-CAM of the score
  ``sum_j w_j (y_c - alpha y_j) / sum_j w_j`` against the classes j closest to ``y_c``.

Both reuse the shared pass's activations ``A`` and differentiate one more pass through
the head (:meth:`LayerPass.score_gradient`): no backward through the layers before ``L``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, Score, weighted_map
from lightning_cam.methods.layout import Reshape
from lightning_cam.outputs import OutputTransform

__all__ = ["FinerCAM", "ShapleyCAM", "finer_score", "gradient_and_hvp", "logit_score", "rest_score"]


def logit_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``y_c``: the class logit (pytorch-grad-cam ``ClassifierOutputTarget``)."""
    return logits.gather(1, targets[:, None])[:, 0]


def rest_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``y_c + log softmax(y)_c = y_c - CE(y, c)`` (pytorch-grad-cam ``ClassifierOutputReST``, the paper's)."""
    return logit_score(logits, targets) + logit_score(F.log_softmax(logits, dim=1), targets)


SCORES: dict[str, Score] = {"logit": logit_score, "rest": rest_score}


def gradient_and_hvp(layer_pass: LayerPass, score: Score = logit_score) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, H·A)``: ``g = d score/dA`` and the Hessian-vector product ``H·A = d<g, A>/dA`` through the
    head (one more head pass, its backward and one double backward); ``H·A = 0`` for a head that is
    linear in ``A`` after the first derivative (ReLU, max-pool, linear)."""
    leaf, g = layer_pass.score_gradient(score, create_graph=True)
    hvp = torch.zeros_like(g)
    if g.requires_grad:  # a linear head leaves g constant in A: H = 0
        found = torch.autograd.grad(g, leaf, grad_outputs=layer_pass.activation, allow_unused=True)[0]
        hvp = hvp if found is None else found
    return g.detach(), hvp.detach()


class ShapleyCAM(BaseCAM):
    """ShapleyCAM (Cai et al., 2025): ``alpha_k = mean_ij (g - 1/2 H·A)_kij``, ``H·A = d<g, A>/dA``.

    ``g = dy/dA`` and the Hessian-vector product go through the head only. The Hessian
    term vanishes for piecewise-linear heads (ReLU, max-pool, linear), where ShapleyCAM is
    Grad-CAM. ``score="logit"`` (default, as pytorch-grad-cam's default target) or
    ``"rest"`` (logit minus cross-entropy, the paper's ``ClassifierOutputReST``).

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
        g, hvp = gradient_and_hvp(layer_pass, SCORES[self.score])
        weights = (g - 0.5 * hvp).mean(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)


def comparison_classes(logits: torch.Tensor, targets: torch.Tensor, ranks: Sequence[int]) -> torch.Tensor:
    """(B, J) classes at ``ranks`` when sorted by ``|y_j - y_c|`` (rank 0 is ``c`` itself).

    pytorch-grad-cam's ``FinerCAM`` ranks by the same distance; ranks past ``C - 1`` are dropped.
    """
    distance = (logits - logit_score(logits, targets)[:, None]).abs()
    distance = distance.scatter(1, targets[:, None], -1.0)  # c first, even if another class ties with it
    order = distance.argsort(dim=1, stable=True)
    kept = [r for r in ranks if 0 < r < logits.shape[1]]
    if not kept:
        raise ValueError(f"FinerCAM needs a comparison rank in [1, {logits.shape[1] - 1}], got {list(ranks)}.")
    return order[:, kept]


def finer_score(classes: torch.Tensor, alpha: float) -> Score:
    """``sum_j w_j (y_c - alpha y_j) / sum_j w_j`` with ``w_j = softmax(y)_j`` over the (B, J) ``classes``.

    ``w_j / sum_j w_j`` is computed as a softmax over the compared logits only (the same
    value without underflow); pytorch-grad-cam adds ``1e-9`` to ``sum_j w_j``.
    """

    def score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        others = logits.gather(1, classes)
        share = torch.softmax(others, dim=1)
        return (share * (logit_score(logits, targets)[:, None] - alpha * others)).sum(dim=1)

    return score


class FinerCAM(BaseCAM):
    """FinerCAM (Zhang et al., CVPR 2025): Grad-CAM of ``sum_j w_j (y_c - alpha y_j) / sum_j w_j``.

    ``j`` runs over the classes at ``comparison_ranks`` (default 1, 2, 3) when sorted by
    ``|y_j - y_c|``, ``w_j = softmax(y)_j`` (differentiated too), ``alpha = 1``: the
    defaults of pytorch-grad-cam's ``FinerCAM`` / ``FinerWeightedTarget``. ``alpha = 0``
    is Grad-CAM.
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
        classes = comparison_classes(layer_pass.logits, layer_pass.targets, self.comparison_ranks)
        _, g = layer_pass.score_gradient(finer_score(classes, self.alpha))
        weights = g.mean(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)

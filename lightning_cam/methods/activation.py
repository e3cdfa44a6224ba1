"""Class-agnostic CAMs from the activations alone (no gradient, no target class).

* FEM (Fuad et al., IPTA 2020): channel weight = share of the channel's positions above
  ``mean + k * std`` (k-sigma rule); map ``ReLU(sum_k w_k A_k)``.
* KPCA-CAM (Karmani et al., 2024, arXiv 2410.00267): EigenCAM with kernel PCA, i.e. the
  first kernel principal component of the pixels' channel vectors.

Both follow pytorch-grad-cam 1.5.7 (``FEM``, ``KPCA_CAM``), batched in torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map
from lightning_cam.methods.layout import Reshape
from lightning_cam.outputs import OutputTransform, accumulation_dtype

__all__ = ["FEM", "KPCACAM", "kernel_first_component"]


class FEM(BaseCAM):
    """FEM (Fuad et al., IPTA 2020): ``w_k = mean_ij [A_kij > mu_k + k sigma_k]``, map ``ReLU(sum_k w_k A_k)``.

    ``mu_k``, ``sigma_k``: mean and population standard deviation of ``A_k`` over space;
    ``k = 2`` as pytorch-grad-cam's ``FEM``. Of ``n`` values none lies above ``mu + k sigma``
    when ``sqrt(n - 1) <= k``: the map is 0 on grids of 5 positions or fewer (k = 2).
    """

    name = "fem"

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, k: float = 2.0, *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        self.k = float(k)

    def compute(self, layer_pass: LayerPass) -> Explanation:
        activation = layer_pass.activation
        std, mean = torch.std_mean(activation, dim=(2, 3), correction=0, keepdim=True)
        weights = (activation > mean + self.k * std).to(activation.dtype).mean(dim=(2, 3))
        return self._explanation(layer_pass, weighted_map(weights, activation), weights)


def _kernel(x: torch.Tensor, kind: str, gamma: float) -> torch.Tensor:
    """scikit-learn's pairwise kernels on (B, n, K) rows (``coef0 = 1``, ``degree = 3``)."""
    if kind == "rbf":
        return torch.exp(-gamma * torch.cdist(x, x).pow(2))
    inner = x @ x.transpose(1, 2)
    if kind == "linear":
        return inner
    if kind == "poly":
        return (gamma * inner + 1).pow(3)
    return torch.tanh(gamma * inner + 1)  # sigmoid


KERNELS = ("sigmoid", "rbf", "linear", "poly")


def kernel_first_component(activation: torch.Tensor, kind: str = "sigmoid", gamma: float | None = None) -> torch.Tensor:
    """(B,K,h,w) -> (B,h,w): scikit-learn ``KernelPCA(n_components=1).fit_transform`` per image.

    ``X`` = the (h·w, K) activations centred over pixels (NaN -> 0); kernel matrix
    ``G = kernel(X, X)`` (``gamma = 1/K`` by default), double-centred; projection
    ``sqrt(lambda_1) v_1`` for the largest eigenvalue, with scikit-learn's sign rule
    (``svd_flip``: the largest-magnitude entry of ``v_1`` is positive).
    """
    batch, channels = activation.shape[:2]
    x = torch.nan_to_num(activation.to(accumulation_dtype(activation.dtype)), nan=0.0).flatten(2).transpose(1, 2)
    x = x - x.mean(dim=1, keepdim=True)
    g = _kernel(x, kind, 1.0 / channels if gamma is None else float(gamma))
    g = g - g.mean(dim=1, keepdim=True) - g.mean(dim=2, keepdim=True) + g.mean(dim=(1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(g)
    v = vectors[..., -1]  # (B, n)
    peak = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
    v = v * torch.where(peak < 0, -1.0, 1.0)
    projection = v * values[:, -1:].clamp_min(0).sqrt()
    return projection.view(batch, *activation.shape[2:])


class KPCACAM(BaseCAM):
    """KPCA-CAM (Karmani et al., 2024): map ``ReLU`` of the first kernel principal component of ``A``.

    ``kernel`` in ``("sigmoid", "rbf", "linear", "poly")`` (default ``"sigmoid"``) and
    ``gamma`` (default ``1/K``) as pytorch-grad-cam's ``KPCA_CAM``; see
    :func:`kernel_first_component`. Class-agnostic; costs one (h·w)² eigenproblem per image.
    """

    name = "kpcacam"
    projects = True

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, kernel: str = "sigmoid",
        gamma: float | None = None, *, reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
        if gamma is not None and not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive number or None, got {gamma!r}.")
        self.kernel, self.gamma = kernel, gamma

    def compute(self, layer_pass: LayerPass) -> Explanation:
        maps = torch.relu(kernel_first_component(layer_pass.activation, self.kernel, self.gamma))
        return self._explanation(layer_pass, maps, None)

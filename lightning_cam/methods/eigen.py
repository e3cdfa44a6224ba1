"""Principal-component CAMs and the element-wise Grad-CAM (pytorch-grad-cam's definitions).

* EigenCAM (Muhammad & Yeasin, IJCNN 2020, arXiv 2008.00299): the projection of
  the feature maps on their first principal component; class-agnostic, no gradient.
* EigenGradCAM (pytorch-grad-cam): the same projection of ``g * A``.
* GradCAMElementWise (pytorch-grad-cam): ``ReLU(sum_k ReLU(g_kij A_kij))``.

:func:`first_component` is also what ``eigen_smooth=True`` applies to any
method's per-channel terms.
"""

from __future__ import annotations

import torch

from lightning_cam.outputs import accumulation_dtype
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass

__all__ = ["EigenCAM", "EigenGradCAM", "GradCAMElementWise", "first_component"]


def first_component(terms: torch.Tensor) -> torch.Tensor:
    """Projection of (B,K,h,w) terms on their first principal component -> (B,h,w).

    As pytorch-grad-cam's ``get_2d_projection``: per image, the (h*w, K) matrix
    ``X`` of pixels x channels is centred over pixels (NaN set to 0) and
    projected on its first right singular vector ``v``: ``X v``. The sign of an
    SVD is arbitrary (LAPACK builds differ); here ``v`` is oriented so that
    ``sum_k v_k >= 0``, which is the same as making the projection positively
    correlated with the plain map ``sum_k terms_k`` (because
    ``X^T X v = s^2 v``). Batched on the tensor's device.
    """
    batch, channels = terms.shape[:2]
    x = torch.nan_to_num(terms.to(accumulation_dtype(terms.dtype)), nan=0.0).flatten(2).transpose(1, 2)  # (B, hw, K)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:, 0, :]  # (B, K)
    sign = torch.where(v.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    projection = torch.einsum("bpk,bk->bp", x, v * sign)
    return projection.view(batch, *terms.shape[2:])


class EigenCAM(BaseCAM):
    """EigenCAM: map ``ReLU(X v)``, ``X`` the centred (pixels x channels) activations,
    ``v`` their first principal direction (see :func:`first_component`).

    Class-agnostic: the target class does not enter; no gradient is taken.
    """

    name = "eigencam"
    projects = True

    def compute(self, layer_pass: LayerPass) -> Explanation:
        maps = torch.relu(first_component(layer_pass.activation))
        return self._explanation(layer_pass, maps, None)


class EigenGradCAM(BaseCAM):
    """EigenGradCAM (pytorch-grad-cam): ``ReLU`` of the first-component projection of ``g * A``."""

    name = "eigengradcam"
    projects = True

    def compute(self, layer_pass: LayerPass) -> Explanation:
        maps = torch.relu(first_component(layer_pass.gradient * layer_pass.activation))
        return self._explanation(layer_pass, maps, None)


class GradCAMElementWise(BaseCAM):
    """Grad-CAM element-wise (pytorch-grad-cam): map ``ReLU(sum_k ReLU(g_kij A_kij))``."""

    name = "gradcamelementwise"

    def compute(self, layer_pass: LayerPass) -> Explanation:
        maps = self.channel_terms(layer_pass, None).sum(dim=1)
        return self._explanation(layer_pass, torch.relu(maps), None)

    def channel_terms(self, layer_pass: LayerPass, explanation: Explanation | None) -> torch.Tensor:
        return torch.relu(layer_pass.gradient * layer_pass.activation)

"""Shapley values of the feature maps: the ground truth LIFT-CAM estimates."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_cam.outputs import OutputTransform
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map
from lightning_cam.methods.layout import Reshape

__all__ = ["ShapCAM", "exact_shapley_matrix"]


def exact_shapley_matrix(players: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``2^K`` coalitions as a (2^K, K) bool mask and the (2^K, K) weights with
    ``phi = weights.T @ v``: ``+|S|-1)!(K-|S|)!/K!`` where ``k in S``, ``-|S|!(K-|S|-1)!/K!`` otherwise."""
    codes = torch.arange(2**players, device=device)
    masks = (codes[:, None] >> torch.arange(players, device=device)) & 1 == 1
    size = masks.sum(dim=1)
    fact = [math.factorial(i) for i in range(players + 1)]
    inside = torch.tensor([fact[s - 1] * fact[players - s] / fact[players] if s > 0 else 0.0 for s in range(players + 1)], dtype=torch.float64, device=device)
    outside = torch.tensor([fact[s] * fact[players - s - 1] / fact[players] if s < players else 0.0 for s in range(players + 1)], dtype=torch.float64, device=device)
    weights = torch.where(masks, inside[size][:, None], -outside[size][:, None])
    return masks, weights


class ShapCAM(BaseCAM):
    """Shapley-value CAM: exact Shapley values of the K "map k present" players.

    ``v(S) = t(A_S)`` (``t`` the target, default the class logit ``y_c``) with absent maps set to
    the reference 0;
    ``phi_k = sum_{S not containing k} |S|!(K-|S|-1)!/K! (v(S+k) - v(S))``.
    Exact enumeration of the ``2^K`` coalitions when ``K <= max_exact_channels``,
    otherwise Monte-Carlo over ``num_permutations`` seeded permutations in
    antithetic pairs (each permutation and its reverse). Only the head after
    the target layer is evaluated, in chunks of ``batch_size``. Efficiency
    (``sum_k phi_k = v(all) - v(empty)``) holds in both modes.
    """

    name = "shap"

    def __init__(
        self, model: nn.Module, target_layer: str | nn.Module | None = None, num_permutations: int = 64,
        max_exact_channels: int = 12, batch_size: int = 512, seed: int = 0, *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        if num_permutations < 2 or num_permutations % 2:
            raise ValueError(f"num_permutations must be an even number >= 2 (antithetic pairs), got {num_permutations}.")
        if max_exact_channels > 20:
            raise ValueError("max_exact_channels above 20 would enumerate more than a million coalitions per image.")
        self.num_permutations, self.max_exact_channels = num_permutations, max_exact_channels
        self.batch_size, self.seed = batch_size, seed

    def compute(self, layer_pass: LayerPass) -> Explanation:
        channels = layer_pass.activation.shape[1]
        if channels <= self.max_exact_channels:
            weights = self._exact(layer_pass)
        else:
            weights = self._sampled(layer_pass)
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights)

    def _values(self, layer_pass: LayerPass, masks: torch.Tensor) -> torch.Tensor:
        """``v(S)`` for every image and every coalition row of ``masks`` (B, N)."""
        activation = layer_pass.activation
        batch, count = activation.shape[0], masks.shape[0]
        values = activation.new_empty(batch, count)
        step = max(1, self.batch_size)
        with torch.no_grad():
            for b in range(batch):
                index = torch.full((step,), b, device=activation.device, dtype=torch.long)
                for start in range(0, count, step):
                    chunk = masks[start : start + step]
                    rows = activation[b][None] * chunk[:, :, None, None].to(activation.dtype)
                    values[b, start : start + chunk.shape[0]] = layer_pass.target_scores(rows, index[: chunk.shape[0]])
        return values

    def _exact(self, layer_pass: LayerPass) -> torch.Tensor:
        masks, weights = exact_shapley_matrix(layer_pass.activation.shape[1], layer_pass.activation.device)
        values = self._values(layer_pass, masks)
        return (values.double() @ weights).to(values.dtype)

    def _sampled(self, layer_pass: LayerPass) -> torch.Tensor:
        activation = layer_pass.activation
        channels = activation.shape[1]
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        half = [torch.randperm(channels, generator=generator) for _ in range(self.num_permutations // 2)]
        perms = torch.stack(half + [p.flip(0) for p in half]).to(activation.device)  # (P, K)
        ranks = torch.empty_like(perms)
        ranks.scatter_(1, perms, torch.arange(channels, device=activation.device).expand_as(perms))
        positions = torch.arange(channels + 1, device=activation.device)
        # Row (p, j): the first j players of permutation p are present.
        masks = (ranks[:, None, :] < positions[None, :, None]).reshape(-1, channels)
        values = self._values(layer_pass, masks).view(activation.shape[0], len(perms), channels + 1)
        marginal = values[:, :, 1:] - values[:, :, :-1]  # contribution of the player at position j
        phi = activation.new_zeros(activation.shape[0], channels)
        phi.scatter_add_(1, perms[None].expand(activation.shape[0], -1, -1).reshape(activation.shape[0], -1), marginal.reshape(activation.shape[0], -1))
        return phi / len(perms)

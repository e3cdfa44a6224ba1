"""Localisation against ground-truth masks, as Quantus 0.6 ``localisation``: Relevance Rank Accuracy
(Arras et al. 2022), Top-K Intersection (Theiner et al. 2021), Attribution Localisation
(Kohlbrenner et al. 2020) and the ROC AUC of the map as a mask detector (Fawcett 2006).

All take (B, h, w) maps (upsampled bilinearly to the masks) and (B, H, W) masks, and return (B,)
float32 with NaN where the mask is empty (Quantus' convention). Rankings break ties in pixel
order (a stable sort; Quantus' ``np.argsort`` breaks them arbitrarily). The pointing games are in
:mod:`lightning_cam.metrics.pointing`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_cam.metrics._common import saliency_to_size
from lightning_cam.metrics.monitoring import average_ranks
from lightning_cam.metrics.pointing import _masks

__all__ = ["attribution_localisation", "localisation_auc", "relevance_rank_accuracy", "top_k_intersection"]


def _flat_pair(saliency: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """(B, H*W) map at the masks' size and (B, H*W) bool mask."""
    if not isinstance(saliency, Tensor):
        raise ValueError(f"saliency must be a torch.Tensor of shape (B, h, w), got {type(saliency).__name__}")
    m = _masks(masks, saliency.shape[0])
    s = saliency_to_size(saliency, m.shape[0], tuple(m.shape[1:])).to(m.device)
    return s.flatten(1), m.flatten(1)


def _nan_where_empty(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.any(dim=1), values, torch.full_like(values, float("nan"))).float()


def _hits_in_order(s: Tensor, m: Tensor) -> Tensor:
    """(B, n) mask values in the order of decreasing saliency (ties in pixel order)."""
    return m.gather(1, s.argsort(dim=1, descending=True, stable=True))


def relevance_rank_accuracy(saliency: Tensor, masks: Tensor) -> Tensor:
    """Relevance Rank Accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022; Quantus
    ``RelevanceRankAccuracy``): with ``K = |mask|``, the share of the K highest-ranked pixels that
    lie in the mask, ``|top_K(S) ∩ mask| / K``. 1 = the mask holds the top of the map (higher is better)."""
    s, m = _flat_pair(saliency, masks)
    k = m.sum(dim=1, keepdim=True)
    in_top = torch.arange(s.shape[1], device=s.device)[None] < k
    hits = (_hits_in_order(s, m) & in_top).sum(dim=1).double()
    return _nan_where_empty(hits / k[:, 0].clamp_min(1), m)


def top_k_intersection(saliency: Tensor, masks: Tensor, k: int = 1000, *, concept_influence: bool = False) -> Tensor:
    """Top-K Intersection (Theiner et al., "Interpretable Semantic Photo Geolocation", WACV 2022;
    Quantus ``TopKIntersection``, default k = 1000): ``|top_k(S) ∩ mask| / k`` (higher is better).
    ``concept_influence``: multiplied by ``H*W / |mask|`` (Quantus' option)."""
    s, m = _flat_pair(saliency, masks)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be an int in [1, H*W = {s.shape[1]}] (pixels of the masks), got {k!r}; "
                         f"e.g. k={max(1, s.shape[1] // 10)}")
    tki = _hits_in_order(s, m)[:, :k].double().mean(dim=1)
    if concept_influence:
        tki = tki * s.shape[1] / m.sum(dim=1).clamp_min(1)
    return _nan_where_empty(tki, m)


def attribution_localisation(saliency: Tensor, masks: Tensor, *, weighted: bool = False, positive: bool = False) -> Tensor:
    """Attribution Localisation (Kohlbrenner et al., "Towards Best Practice in Explaining Neural
    Network Decisions with LRP", IJCNN 2020; Quantus ``AttributionLocalisation``, ``abs=True``):
    ``sum(|S| * mask) / (sum |S| + 1e-9)`` (higher is better). ``positive``: ``max(S, 0)`` before the
    absolute value; ``weighted``: multiplied by the mask's area share ``|mask| / (H*W)`` (Quantus
    divides by a size that is not H*W there). NaN where the mask is empty or the ratio exceeds 1."""
    s, m = _flat_pair(saliency, masks)
    s = (s.clamp_min(0) if positive else s).abs().double()
    ratio = (s * m).sum(dim=1) / (s.sum(dim=1) + 1e-9)
    ratio = torch.where(ratio > 1, torch.full_like(ratio, float("nan")), ratio)
    if weighted:
        ratio = ratio * m.sum(dim=1) / m.shape[1]
    return _nan_where_empty(ratio, m)


def localisation_auc(saliency: Tensor, masks: Tensor) -> Tensor:
    """ROC AUC of the map as a detector of the mask's pixels (Fawcett, "An introduction to ROC
    analysis", 2006; Quantus ``AUC``: sklearn ``roc_curve`` + ``auc``): the Mann-Whitney statistic
    ``(sum of the mask pixels' average ranks - P (P + 1) / 2) / (P N)``, ties counted one half.
    0.5 = chance, 1 = every mask pixel above every other (higher is better). NaN where the mask is
    empty or full."""
    s, m = _flat_pair(saliency, masks)
    pos = m.sum(dim=1).double()
    neg = m.shape[1] - pos
    rank_sum = (average_ranks(s.double()) * m).sum(dim=1)
    value = (rank_sum - pos * (pos + 1) / 2) / (pos * neg).clamp_min(1)
    return _nan_where_empty(torch.where(neg > 0, value, torch.full_like(value, float("nan"))), m)

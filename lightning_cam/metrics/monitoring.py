"""Monitoring explanations over training: pure, batched torch functions.

* :func:`spearman` - per-image Spearman rank correlation of two map batches (average ranks
  for ties); the stability of a method between two evaluations, ``1`` = same pixel order,
  ``-1`` = reversed.
* :func:`method_agreement` - mean pairwise Spearman correlation between methods' maps.
* :func:`region_energy` - share of the saliency energy inside each named region mask,
  ``sum(S * R) / sum(S)`` (the energy pointing game is ``R = object``).
* :func:`sparseness` - Gini index of ``|S| + 1e-7`` sorted ascending (Chalasani et al., ICML
  2020; Quantus ``Sparseness``).
* :func:`complexity` - entropy of ``|S| / sum |S|`` (Bhatt et al., IJCAI 2020; Quantus
  ``Complexity``).
* :func:`randomized_models` / :func:`model_randomization` - model-parameter randomisation
  (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018; Quantus ``MPRT``).

Every function works on ``(B, h, w)`` (or ``(B, 1, h, w)``) maps on any device and returns
per-image values; averaging is the caller's choice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_cam.metrics._common import saliency_to_size
from lightning_cam.metrics.pointing import _masks, energy_share

__all__ = [
    "RandomizationResult",
    "average_ranks",
    "complexity",
    "method_agreement",
    "model_randomization",
    "randomizable_modules",
    "randomized_models",
    "region_energy",
    "sparseness",
    "spearman",
]

SPARSENESS_EPS = 1e-7  # Quantus Sparseness: a + 1e-7 before the Gini index
COMPLEXITY_EPS = 1e-12  # Quantus Complexity: log(p + 1e-12)


def _flat(maps: Tensor, name: str) -> Tensor:
    """(B, n) float view of (B, h, w) / (B, 1, h, w) maps; clear error otherwise (non-finite values
    are kept: the comparisons give NaN for those images, see :func:`spearman`)."""
    if not isinstance(maps, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, h, w), got {type(maps).__name__}")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[1] * maps.shape[2] == 0:
        raise ValueError(f"{name} must have shape (B, h, w) with h, w > 0, e.g. (32, 7, 7); got {tuple(maps.shape)}")
    flat = maps.detach().flatten(1)
    return flat if flat.is_floating_point() else flat.float()


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..n along dim 1 of a (B, n) tensor; ties share their mean rank (as scipy's
    ``rankdata(method="average")``). Fully batched: one sort, no loop over rows."""
    b, n = x.shape
    vals, order = x.sort(dim=1, stable=True)
    pos = torch.arange(n, device=x.device).expand(b, n)
    new = torch.ones_like(vals, dtype=torch.bool)
    new[:, 1:] = vals[:, 1:] != vals[:, :-1]
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]
    first_pos = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=1).values
    last_pos = torch.where(last, pos, torch.full_like(pos, n)).flip(1).cummin(dim=1).values.flip(1)
    mean_rank = (first_pos + last_pos).double() / 2 + 1
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def row_pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the rows of two (B, n) tensors, in float64 -> (B,) float32; NaN where
    a row is constant (undefined, as scipy)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.to(a.device).double() - b.to(a.device).double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    out = (a * b).sum(1) / den.clamp_min(torch.finfo(den.dtype).tiny)
    return torch.where(den > 0, out.clamp(-1, 1), torch.full_like(out, float("nan"))).float()


def row_spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the rows of two (B, n) tensors: :func:`row_pearson` of the
    average ranks (ties share their mean rank, as ``scipy.stats.spearmanr``)."""
    return row_pearson(average_ranks(a), average_ranks(b.to(a.device)))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Spearman rank correlation of two map batches (B, h, w) -> (B,) float32.

    Pearson correlation of the average ranks (ties share their mean rank, as
    ``scipy.stats.spearmanr``), computed in float64. NaN where either map is constant (the
    correlation is undefined; scipy gives NaN too): average with ``nanmean``.
    """
    fa, fb = _flat(a, "a"), _flat(b, "b")
    if fa.shape != fb.shape:
        raise ValueError(f"the two map batches must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    bad = ~(torch.isfinite(fa).all(1) & torch.isfinite(fb).all(1))
    if not bool(bad.any()):
        return row_spearman(fa, fb)
    out = row_spearman(fa.nan_to_num(0.0, 0.0, 0.0), fb.nan_to_num(0.0, 0.0, 0.0))
    return out.masked_fill(bad.to(out.device), float("nan"))


def method_agreement(maps: Mapping[str, Tensor]) -> tuple[list[str], Tensor]:
    """Mean pairwise Spearman correlation between methods' maps of the same images.

    ``maps``: ``{method: (B, h, w)}``, all of one shape. Returns the method names and a
    symmetric (M, M) float32 matrix: entry (i, j) is the mean over images (NaN-ignoring) of
    ``spearman(maps[i], maps[j])``; 1 on the diagonal; NaN where no image has two
    non-constant maps.
    """
    names = list(maps)
    if not names:
        raise ValueError("method_agreement needs at least one method's maps, e.g. {'liftcam': maps}")
    ranks = {}
    shape = None
    for name in names:
        flat = _flat(maps[name], f"maps[{name!r}]")
        if shape is not None and flat.shape != shape:
            raise ValueError(
                f"all methods' maps must have one shape; maps[{names[0]!r}] is {tuple(maps[names[0]].shape)} "
                f"but maps[{name!r}] is {tuple(maps[name].shape)}"
            )
        shape = flat.shape
        r = average_ranks(flat)
        r = r - r.mean(1, keepdim=True)
        ranks[name] = r / r.norm(dim=1, keepdim=True)  # NaN rows for constant maps
    stacked = torch.stack([ranks[n] for n in names])  # (M, B, n)
    per_image = torch.einsum("mbn,kbn->mkb", stacked, stacked).clamp(-1, 1)
    out = per_image.nanmean(dim=2).float()
    out.diagonal().fill_(1.0)
    return names, out


def region_energy(saliency: Tensor, regions: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Share of the saliency energy inside each named region: ``sum(S * R) / sum(S)``.

    ``saliency``: (B, h, w) non-negative maps, upsampled bilinearly to each mask's size;
    ``regions``: ``{name: (B, H, W) bool}``, e.g. ``{"object": ..., "marker": ...}``.
    Returns ``{name: (energy (B,), valid (B,))}``; ``valid`` is False where the region is
    empty (energy 0 there; leave those images out of the mean). An all-zero map has energy 0.
    """
    out: dict[str, tuple[Tensor, Tensor]] = {}
    resized: dict[tuple[int, int], Tensor] = {}
    for name, mask in regions.items():
        m = _masks(mask, saliency.shape[0])
        size = (int(m.shape[1]), int(m.shape[2]))
        if size not in resized:
            resized[size] = saliency_to_size(saliency, saliency.shape[0], size).to(m.device)
            if bool((resized[size] < 0).any()):
                raise ValueError("saliency must be non-negative (ReLU'd or [0, 1] maps) for region energy")
        out[name] = energy_share(resized[size], m)
    return out


def _abs_max_normalised(flat: Tensor, normalise: bool) -> Tensor:
    a = flat.double().abs()
    if normalise:
        top = a.max(dim=1, keepdim=True).values
        a = torch.where(top > 0, a / top.clamp_min(torch.finfo(a.dtype).tiny), a)
    return a


def sparseness(maps: Tensor, *, normalise: bool = True) -> Tensor:
    """Gini index of each map (Chalasani et al., ICML 2020; Quantus ``Sparseness``) -> (B,).

    ``a = |S| (/ max|S| per image) + 1e-7`` sorted ascending, ``n`` pixels:
    ``G = sum_i (2i - n - 1) a_(i) / (n sum_i a_i)``, i = 1..n. 0 = uniform, ``1 - 1/n`` =
    one-hot; higher = more concentrated. Quantus 0.6 divides by the maximum of the whole
    batch (``normalise_by_max`` over all axes), we by each map's own maximum (a map's score
    does not depend on its batch); the two agree on maps whose maximum is 1 (our [0, 1] maps).
    """
    a = _abs_max_normalised(_flat(maps, "maps"), normalise) + SPARSENESS_EPS
    a, _ = a.sort(dim=1)
    n = a.shape[1]
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    return (((2 * i - n - 1) * a).sum(1) / (n * a.sum(1))).float()


def complexity(maps: Tensor, *, normalise: bool = True) -> Tensor:
    """Entropy of each normalised map (Bhatt et al., IJCAI 2020; Quantus ``Complexity``) -> (B,).

    ``p = |S| / sum |S|``; ``H = -sum p log(p + 1e-12)`` (natural log). 0 = one pixel holds
    everything, ``log n`` = uniform; lower = simpler. An all-zero map (Quantus: NaN) is
    treated as uniform, ``log n``. ``normalise`` (divide by max|S|, as Quantus) does not
    change ``p``; kept for symmetry with :func:`sparseness`.
    """
    a = _abs_max_normalised(_flat(maps, "maps"), normalise)
    total = a.sum(1, keepdim=True)
    n = a.shape[1]
    p = torch.where(total > 0, a / total.clamp_min(torch.finfo(a.dtype).tiny), torch.full_like(a, 1.0 / n))
    return (-(p * torch.log(p + COMPLEXITY_EPS)).sum(1)).float()


# ---- model-parameter randomisation (Adebayo et al. 2018; Quantus MPRT) -------------------------

RandomizationOrder = Literal["full", "cascading"]


def randomizable_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose parameters a randomisation re-initialises: every module with a
    ``reset_parameters`` method (Conv, Linear, BatchNorm, LayerNorm, ...), in ``named_modules``
    order (input to output), as Quantus' ``get_random_layer_generator``."""
    return [name for name, m in model.named_modules() if callable(getattr(m, "reset_parameters", None))]


def randomized_models(
    model: nn.Module, *, order: RandomizationOrder = "full", seed: int = 42
) -> Iterator[tuple[str, nn.Module]]:
    """Copies of ``model`` with re-initialised parameters; ``model`` itself is never changed.

    A deep copy is made once; each module of :func:`randomizable_modules` is reset with its own
    ``reset_parameters`` after ``torch.manual_seed(seed + 1)``, exactly as Quantus' MPRT does,
    so the random weights equal Quantus'. ``order="cascading"``: from the output layer down,
    yielding ``(module name, copy)`` after each reset (the copy is the same object, randomised
    one more layer each time); ``order="full"``: one ``("all", copy)`` with every module reset
    (equal to the last cascading step). The global RNG (CPU and the model's CUDA device) is
    forked, so the caller's random streams are exactly as before.
    """
    if order not in ("full", "cascading"):
        raise ValueError(f"order must be 'full' or 'cascading', got {order!r}; e.g. order='full'")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.inference_mode(False):
        twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    names = randomizable_modules(twin)[::-1]  # top down: output layer first
    if not names:
        raise ValueError(f"{type(model).__name__} has no module with reset_parameters() to randomise")
    for k, name in enumerate(names):
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), torch.inference_mode(False):
            torch.manual_seed(seed + 1)
            modules[name].reset_parameters()
        if order == "cascading":
            yield name, twin
        elif k == len(names) - 1:
            yield "all", twin


@dataclass
class RandomizationResult:
    """Spearman correlation of the trained model's maps with the randomised model's maps.

    ``per_image``: (B,) for the fully randomised model (Quantus ``return_last_correlation``);
    ``layers``: ``{module name: (B,)}`` after each cascading step (``order="cascading"``),
    output layer first. Low = the explanation depends on the model (passes the check).
    """

    per_image: Tensor
    layers: dict[str, Tensor] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(self.per_image.nanmean())


ExplainFn = Callable[[nn.Module, Tensor, Tensor | None], "Tensor | Mapping[str, Tensor]"]


def model_randomization(
    model: nn.Module,
    images: Tensor,
    explain: ExplainFn,
    targets: Tensor | None = None,
    *,
    order: RandomizationOrder = "full",
    seed: int = 42,
    maps: Tensor | Mapping[str, Tensor] | None = None,
) -> RandomizationResult | dict[str, RandomizationResult]:
    """Model-parameter randomisation test (Adebayo et al., NeurIPS 2018; Quantus ``MPRT``).

    ``explain(model, images, targets) -> (B, h, w)`` maps; it is called on the trained
    ``model`` (unless its ``maps`` are given) and on the randomised copies from
    :func:`randomized_models`, with the same ``targets`` (pass the trained model's
    predictions: the randomised model explains the same class). Each comparison is
    :func:`spearman` per image (Quantus' default similarity; its ``abs`` and normalisation do
    not change the ranks of non-negative maps); NaN for an image whose map is not finite.
    ``explain`` may return ``{method: (B, h, w)}`` (several methods from one pass): the result
    is then ``{method: RandomizationResult}``.
    """
    if maps is None:
        maps = explain(model, images, targets)
    named = dict(maps) if isinstance(maps, Mapping) else {"": maps}
    layers: dict[str, dict[str, Tensor]] = {m: {} for m in named}
    last: dict[str, Tensor] = {}
    for name, twin in randomized_models(model, order=order, seed=seed):
        rand = explain(twin, images, targets)
        rand = dict(rand) if isinstance(rand, Mapping) else {"": rand}
        for m, m_maps in named.items():
            last[m] = spearman(m_maps, rand[m])
            if order == "cascading":
                layers[m][name] = last[m]
    results = {m: RandomizationResult(per_image=last[m], layers=layers[m]) for m in named}
    return results if isinstance(maps, Mapping) else results[""]

"""Robustness of the explanation to small input noise, as Quantus 0.6 ``robustness``:
Max- and Avg-Sensitivity (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations",
NeurIPS 2019) and Relative Input Stability (Agarwal et al., "Rethinking Stability for
Attribution-based Explanations", 2022). Lower is better for all three.

Every sample explains the whole batch at once on the model's device. The noise is drawn from a
``torch.Generator`` (reproducible when seeded), or injected with ``noise=`` (shape (S, B, C, H, W)),
which is how the parity tests feed Quantus the same noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cam.metrics._common import Explain, TargetsLike, check_images, evaluating, explain_maps, explain_targets, model_scores
from lightning_cam.outputs import OutputTransform

__all__ = ["SensitivityResult", "relative_input_stability", "sensitivity"]

#: Quantus' defaults: Max/Avg-Sensitivity add U(-0.2, 0.2); Relative Input Stability U(0.02, 0.2).
SENSITIVITY_RADIUS = 0.2
RIS_BOUNDS = (0.02, 0.2)
RIS_EPS_MIN = 1e-6  # Quantus' eps_min


@dataclass
class SensitivityResult:
    """Per-image Max- and Avg-Sensitivity (B,) and the per-sample ratios (B, S)."""

    max: Tensor
    avg: Tensor
    ratios: Tensor


def _check_samples(nr_samples: int, noise: Tensor | None, images: Tensor) -> int:
    if noise is not None:
        if not isinstance(noise, Tensor) or noise.ndim != 5 or noise.shape[1:] != images.shape:
            got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(f"noise must have shape (samples, *images.shape) = (S, {', '.join(map(str, images.shape))}), "
                             f"got {got}; e.g. noise=torch.rand(8, *images.shape) * 0.4 - 0.2")
        return noise.shape[0]
    if isinstance(nr_samples, bool) or not isinstance(nr_samples, int) or nr_samples < 1:
        raise ValueError(f"nr_samples must be an int >= 1, got {nr_samples!r}; e.g. nr_samples=10")
    return nr_samples


def _perturbed(
    images: Tensor, noise: Tensor | None, samples: int, low: float, high: float, generator: torch.Generator | None
) -> Iterator[Tensor]:
    """The perturbed batches ``x + u``, u ~ U(low, high) per entry (or the injected ``noise[s]``)."""
    for s in range(samples):
        if noise is not None:
            u = noise[s].to(images)
        else:
            u = torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device) * (high - low) + low
        yield images + u


def _top1(model: nn.Module | None, x: Tensor, output_transform: OutputTransform | None) -> Tensor | None:
    """(B,) top-1 prediction of ``model`` on ``x`` (None without a model)."""
    if model is None:
        return None
    with evaluating(model, x.device):
        return model_scores(model, x, output_transform).argmax(1)


def _nan_where_changed(values: Tensor, clean_top1: Tensor | None, model: nn.Module | None, xs: Tensor,
                       output_transform: OutputTransform | None) -> Tensor:
    """``values`` with NaN where the top-1 prediction on ``xs`` differs from ``clean_top1`` (unchanged without a model)."""
    if clean_top1 is None:
        return values
    changed = _top1(model, xs, output_transform) != clean_top1
    return torch.where(changed, torch.full_like(values, float("nan")), values)


def _setup(explain: Explain, images: Tensor, targets: TargetsLike, saliency: Tensor | None) -> tuple[Tensor, TargetsLike, Tensor]:
    images = check_images(images)
    targets = explain_targets(targets, images.shape[0], images.device)
    a = explain_maps(explain, images, targets) if saliency is None else saliency.detach()
    return images, targets, a.flatten(1).double()


def sensitivity(
    explain: Explain,
    images: Tensor,
    targets: TargetsLike,
    saliency: Tensor | None = None,
    *,
    nr_samples: int = 200,
    radius: float = SENSITIVITY_RADIUS,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    model: nn.Module | None = None,
    output_transform: OutputTransform | None = None,
) -> SensitivityResult:
    """Max- and Avg-Sensitivity (Yeh et al., NeurIPS 2019; Quantus ``MaxSensitivity`` /
    ``AvgSensitivity`` with their defaults: uniform noise, Frobenius norms, no normalisation).

    For samples ``x_s = x + u_s``, ``u_s ~ U(-radius, radius)`` per entry:
    ``r_s = ||E(x_s) - E(x)||_F / ||E(x)||_F``; Max-Sensitivity = ``max_s r_s``, Avg = ``mean_s r_s``
    (lower is better: the map does not move under noise the model hardly notices).

    Args:
        explain: (images, targets) -> (B, h, w) maps (see :data:`~lightning_cam.metrics._common.Explain`).
        saliency: the maps on ``images`` when already known (else ``explain(images, targets)``).
        nr_samples: S (Quantus: 200); noise: injected (S, B, C, H, W) noise instead of sampling.
        model: when given, an image whose top-1 prediction changes on any sample gets NaN (Quantus'
            ``return_nan_when_prediction_changes=True``).
    """
    images, targets, a = _setup(explain, images, targets, saliency)
    samples = _check_samples(nr_samples, noise, images)
    den = a.norm(dim=1)
    clean = _top1(model, images, output_transform)
    ratios = []
    for xs in _perturbed(images, noise, samples, -radius, radius, generator):
        r = (explain_maps(explain, xs, targets).flatten(1).double() - a).norm(dim=1) / den
        ratios.append(_nan_where_changed(r, clean, model, xs, output_transform))
    ratio = torch.stack(ratios, dim=1)
    return SensitivityResult(ratio.amax(dim=1).float(), ratio.mean(dim=1).float(), ratio.float())


def relative_input_stability(
    explain: Explain,
    images: Tensor,
    targets: TargetsLike,
    saliency: Tensor | None = None,
    *,
    nr_samples: int = 200,
    bounds: tuple[float, float] = RIS_BOUNDS,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    model: nn.Module | None = None,
    output_transform: OutputTransform | None = None,
    eps_min: float = RIS_EPS_MIN,
) -> Tensor:
    """Relative Input Stability (Agarwal et al. 2022; Quantus ``RelativeInputStability``):

    ``RIS = max_s ||(e - e_s) / e||_2 / max(||(x - x_s) / x||_2, eps_min)``, with ``x_s = x + u_s``,
    ``u_s ~ U(bounds)`` per entry (Quantus: U(0.02, 0.2)) and each ``0`` in a denominator replaced by
    ``eps_min``. Lower is better. With ``model`` (Quantus' default), an image whose top-1 prediction
    changes on any sample gets NaN. Returns (B,) float32.
    """
    images, targets, a = _setup(explain, images, targets, saliency)
    samples = _check_samples(nr_samples, noise, images)
    x = images.flatten(1).double()
    safe_a = a + (a == 0) * eps_min
    safe_x = x + (x == 0) * eps_min
    clean = _top1(model, images, output_transform)
    values = []
    for xs in _perturbed(images, noise, samples, bounds[0], bounds[1], generator):
        num = ((a - explain_maps(explain, xs, targets).flatten(1).double()) / safe_a).norm(dim=1)
        den = ((x - xs.flatten(1).double()) / safe_x).norm(dim=1)
        ris = num / (den + (den == 0) * eps_min)
        values.append(_nan_where_changed(ris, clean, model, xs, output_transform))
    return torch.stack(values, dim=1).amax(dim=1).float()

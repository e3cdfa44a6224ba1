"""torchmetrics ``Metric`` classes over the functional metrics.

Every state is a sum (``dist_reduce_fx="sum"``): under DDP each process accumulates its own
images and ``compute()`` sums the states across processes before dividing, so the result equals
the mean over all images seen by all processes (not a mean of per-process means).
Images with a non-finite score (a diverging model) are left out of the means and counted in
the ``"nonfinite"`` entry of ``compute()``.
The model is held by reference and is not a sub-module of the metric: ``metric.to(...)`` and
``metric.state_dict()`` do not touch it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_cam.metrics._common import Score, TargetsLike
from lightning_cam.metrics.confidence import ConfidenceResult, confidence_change
from lightning_cam.metrics.rise import InsertionDeletionResult, Substrate, insertion_deletion
from lightning_cam.metrics.pointing import PointingResult, pointing_game
from lightning_cam.outputs import OutputTransform, check_output_transform
from lightning_cam.targets import Target

__all__ = ["ConfidenceChange", "InsertionDeletion", "PointingGame"]


class _ModelRef:
    """Holds the model without registering it as a sub-module of the metric."""

    def __init__(self, model: nn.Module | None) -> None:
        self.model = model


def _get_model(ref: _ModelRef, name: str) -> nn.Module:
    if ref.model is None:
        raise ValueError(f"{name} was created without a model; pass model=... or update() with a result object")
    return ref.model


def _finite(*values: Tensor) -> Tensor:
    """(B,) bool: every per-image value is finite."""
    ok = torch.ones_like(values[0], dtype=torch.bool)
    for v in values:
        ok &= torch.isfinite(v)
    return ok


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return num / den.clamp_min(1) if bool(den > 0) else torch.zeros_like(num)


class InsertionDeletion(Metric):
    """Mean insertion and deletion AUCs (RISE, Petsiuk et al., BMVC 2018) over all images seen.

    ``update(images, saliency, targets=None)`` runs :func:`insertion_deletion` with the options
    given here; ``update(result)`` accumulates a precomputed :class:`InsertionDeletionResult`.
    ``compute()`` -> ``{"insertion": mean AUC, "deletion": mean AUC, "nonfinite": #images left out}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None  # insertion: higher, deletion: lower

    insertion_sum: Tensor
    deletion_sum: Tensor
    total: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        step: int | None = None,
        batch_size: int = 256,
        *,
        n_steps: int | None = None,
        score: Score = "softmax",
        deletion_substrate: Substrate = "zeros",
        insertion_substrate: Substrate = "blur",
        output_transform: OutputTransform | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._ref = _ModelRef(model)
        self.options: dict[str, Any] = dict(
            step=step,
            batch_size=batch_size,
            n_steps=n_steps,
            score=score,
            deletion_substrate=deletion_substrate,
            insertion_substrate=insertion_substrate,
            output_transform=check_output_transform(output_transform),
        )
        self.add_state("insertion_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("deletion_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        images: Tensor | InsertionDeletionResult,
        saliency: Tensor | None = None,
        targets: TargetsLike = None,
    ) -> None:
        if isinstance(images, InsertionDeletionResult):
            r = images
        else:
            if saliency is None:
                raise ValueError("update(images, saliency, targets=None): saliency is required")
            r = insertion_deletion(_get_model(self._ref, "InsertionDeletion"), images, saliency, targets, **self.options)
        ok = _finite(r.insertion, r.deletion)
        self.insertion_sum += r.insertion[ok].sum().to(self.insertion_sum)
        self.deletion_sum += r.deletion[ok].sum().to(self.deletion_sum)
        self.total += int(ok.sum())
        self.nonfinite += int((~ok).sum())

    def compute(self) -> dict[str, Tensor]:
        return {
            "insertion": _ratio(self.insertion_sum, self.total),
            "deletion": _ratio(self.deletion_sum, self.total),
            "nonfinite": self.nonfinite.clone(),
        }


class ConfidenceChange(Metric):
    """Average Drop %, Increase in Confidence % (Grad-CAM++, Chattopadhyay et al., WACV 2018) and
    Average Drop in Deletion % over all images seen.

    ``update(images, saliency, targets=None)`` or ``update(result)``;
    ``compute()`` -> ``{"average_drop", "increase_in_confidence", "average_drop_in_deletion"}`` in %,
    and ``"nonfinite"``: the number of images left out (non-finite scores).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    drop_sum: Tensor
    increase_sum: Tensor
    drop_in_deletion_sum: Tensor
    total: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        score: Score = "softmax",
        normalize: bool = False,
        batch_size: int = 256,
        output_transform: OutputTransform | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._ref = _ModelRef(model)
        self.options: dict[str, Any] = dict(
            score=score, normalize=normalize, batch_size=batch_size,
            output_transform=check_output_transform(output_transform),
        )
        self.add_state("drop_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("increase_sum", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("drop_in_deletion_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        images: Tensor | ConfidenceResult,
        saliency: Tensor | None = None,
        targets: TargetsLike = None,
    ) -> None:
        if isinstance(images, ConfidenceResult):
            r = images
        else:
            if saliency is None:
                raise ValueError("update(images, saliency, targets=None): saliency is required")
            r = confidence_change(_get_model(self._ref, "ConfidenceChange"), images, saliency, targets, **self.options)
        ok = _finite(r.score, r.masked_score, r.deleted_score)
        self.drop_sum += r.drop[ok].sum().to(self.drop_sum)
        self.increase_sum += r.increase[ok].sum().to(self.increase_sum)
        self.drop_in_deletion_sum += r.drop_in_deletion[ok].sum().to(self.drop_in_deletion_sum)
        self.total += int(ok.sum())
        self.nonfinite += int((~ok).sum())

    def compute(self) -> dict[str, Tensor]:
        return {
            "average_drop": _ratio(self.drop_sum, self.total) * 100.0,
            "increase_in_confidence": _ratio(self.increase_sum.to(self.drop_sum), self.total) * 100.0,
            "average_drop_in_deletion": _ratio(self.drop_in_deletion_sum, self.total) * 100.0,
            "nonfinite": self.nonfinite.clone(),
        }


class PointingGame(Metric):
    """Pointing game accuracy (Zhang et al., ECCV 2016) and energy-based pointing game
    (Wang et al., Score-CAM) over all images with a non-empty mask.

    ``update(saliency, masks)``, ``update(saliency, target=bound_segmentation_target)`` (its
    region is the mask) or ``update(result)``;
    ``compute()`` -> ``{"pointing_game": hits / valid, "energy": mean energy, "excluded": #empty masks}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    hits: Tensor
    energy_sum: Tensor
    total: Tensor
    excluded: Tensor

    def __init__(
        self, tolerance: int = 0, *, tolerance_shape: Literal["square", "disk"] = "square", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.tolerance = tolerance
        self.tolerance_shape: Literal["square", "disk"] = tolerance_shape
        self.add_state("hits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("energy_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("excluded", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self, saliency: Tensor | PointingResult, masks: Tensor | None = None, target: Target | None = None
    ) -> None:
        if isinstance(saliency, PointingResult):
            r = saliency
        else:
            if masks is None and target is None:
                raise ValueError("update(saliency, masks): masks are required (or target= a bound segmentation target)")
            r = pointing_game(saliency, masks, self.tolerance, tolerance_shape=self.tolerance_shape, target=target)
        valid = r.valid
        self.hits += (r.hits & valid).sum().to(self.hits)
        self.energy_sum += torch.where(valid, r.energy, torch.zeros_like(r.energy)).sum().to(self.energy_sum)
        n = int(valid.sum())
        self.total += n
        self.excluded += valid.shape[0] - n

    def compute(self) -> dict[str, Tensor]:
        return {
            "pointing_game": _ratio(self.hits.to(self.energy_sum), self.total),
            "energy": _ratio(self.energy_sum, self.total),
            "excluded": self.excluded.clone(),
        }

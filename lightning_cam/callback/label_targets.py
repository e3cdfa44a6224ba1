"""What the callback explains: its ``target`` option, and labels that are not one class per image.

``target`` is ``"prediction"`` (the default target of the model's output: the top-1 class, the
predicted side of a 1-logit model, the most frequent predicted non-background class of a
segmentation model), ``"label"`` (the held-out labels, whatever their kind), a
:mod:`lightning_cam.targets` built-in (bound to the images of every evaluation, so it holds
no per-image data) or a callable in pytorch-grad-cam's convention, applied to every image
(``ClassifierOutputTarget(3)``, ``lambda out: out[3] - out[5]``).

Labels may be one class per image, a segmentation mask per image ((H, W) integers, 0 the
background) or a multi-hot vector per image ((C,) for a multi-label model):

* a segmentation label explains its object's class (the most frequent non-background
  value) summed over the labelled region, and that region is the pointing games' mask;
* multi-hot labels with ``target="label"`` expand the held-out set into one row per
  (image, positive label), each explained as that label's logit and pointed at that
  label's own region when the data name regions by class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from lightning_cam.targets import LabelLogit, SegmentationClass, Target

__all__ = ["check_target", "dense_label_classes", "expand_positive_labels", "explained_rows", "is_segmentation_labels", "targets_for"]

TARGET_WORDS = ("prediction", "label")


def check_target(target: Any, owner: str) -> Any:
    """``target`` if the callback understands it; a ValueError naming the accepted forms otherwise."""
    if isinstance(target, str) and target in TARGET_WORDS or isinstance(target, Target) or (
        callable(target) and not isinstance(target, str)
    ):
        return target
    raise ValueError(
        f"{owner}target must be 'prediction' (explain the model's own prediction), 'label' (explain the true "
        "labels), a lightning_cam.targets built-in or a callable taking one image's output; got "
        f"{target!r}. Examples: target='label', target=lightning_cam.targets.LabelLogit(), "
        "target=pytorch_grad_cam.utils.model_targets.ClassifierOutputTarget(3)"
    )


def is_segmentation_labels(dense: Tensor | None) -> bool:
    """``dense`` holds one (H, W) integer class map per image."""
    return dense is not None and dense.ndim == 3 and not dense.is_floating_point() and dense.dtype != torch.bool


def dense_label_classes(dense: Tensor) -> Tensor:
    """(N,) the object class of each (H, W) label mask: its most frequent non-zero value (0 when the
    image is all background)."""
    flat = dense.flatten(1).long()
    counts = torch.zeros(flat.shape[0], int(flat.max()) + 1, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    counts[:, 0] = 0
    return torch.where(counts.max(dim=1).values > 0, counts.argmax(dim=1), torch.zeros_like(counts[:, 0]))


def expand_positive_labels(held: Any, class_names: Sequence[str] | None) -> Any:
    """The held-out set as one row per (image, positive label) of its multi-hot labels: ``labels``
    the label, ``masks`` that label's named region (``regions[class_names[c]]``) when there is one,
    else the image's mask. ``images_of`` maps each row to its image in the unexpanded set."""
    images, classes = (held.dense_labels > 0).nonzero(as_tuple=True)
    masks = held.masks[images] if held.masks is not None else None
    regions = dict(held.regions or {})
    names = [str(c) for c in class_names] if class_names is not None else []
    if names and all(names[c] in regions for c in classes.unique().tolist()):
        masks = torch.stack([regions[names[c]][i] for i, c in zip(images.tolist(), classes.tolist())])
    # the regions named by class become each row's "object" (its own label's region), not a column each
    rows_regions = {k: v[images] for k, v in regions.items() if k not in names}
    if masks is not None and regions:
        rows_regions["object"] = masks
    return replace(
        held, images=held.images[images], labels=classes, masks=masks, dense_labels=None,
        regions=rows_regions or None, images_of=images,
        indices=None if held.indices is None else [held.indices[i] for i in images.tolist()],
    )


def explained_rows(target: Any, held: Any, class_names: Sequence[str] | None) -> Any:
    """The rows the callback explains: the held-out set, or, for ``target="label"`` with multi-hot
    labels, one row per (image, positive label) (:func:`expand_positive_labels`)."""
    multi_hot = held.dense_labels is not None and held.dense_labels.ndim == 2
    return expand_positive_labels(held, class_names) if target == "label" and multi_hot else held


def targets_for(target: Any, held: Any, rows: Tensor, multilabel: bool) -> Any:
    """The engine's ``targets`` for the held-out ``rows`` under the callback's ``target`` option."""
    if isinstance(target, Target):
        return target
    if target == "prediction":
        return None
    if target != "label":  # a per-image callable, the same for every image (pytorch-grad-cam's run batched)
        return [target] * int(rows.numel())
    if held.labels is None:
        raise ValueError(
            "CAMCallback(target='label') explains the true labels, but the held-out set has none (the "
            "validation dataset yields no labels); pass images=... and labels=..., or target='prediction'"
        )
    classes = torch.as_tensor(held.labels)[rows]
    if is_segmentation_labels(held.dense_labels):
        return SegmentationClass(classes, masks=held.dense_labels[rows] == classes[:, None, None])
    return LabelLogit(classes) if multilabel else classes

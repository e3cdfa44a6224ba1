"""Several target layers (fusion) and pytorch-grad-cam's ``aug_smooth`` / ``eigen_smooth``.

Rules (pytorch-grad-cam 1.5's ``BaseCAM``, so results equal it):

* ``eigen_smooth``: each method's per-channel terms
  (:meth:`~lightning_cam.methods.base.BaseCAM.channel_terms`, e.g. ``w_k A_k``)
  are projected on their first principal component instead of summed
  (:func:`~lightning_cam.methods.eigen.first_component`), then ReLU.
  EigenCAM / EigenGradCAM already are projections and are left as they are.
* fusion of layers ``L_1..L_n``: each layer's ReLU'd map is min-max scaled at
  its resolution (``(m - min) / (max - min + 1e-7)``, pytorch-grad-cam's
  ``scale_cam_image``), upsampled bilinearly to the input, then combined
  pixel-wise: ``fusion="mean"`` (pytorch-grad-cam) or ``fusion="max"``
  (torchcam's ``fuse_cams``), and min-max scaled again. ``fusion="prod"``:
  pytorch-grad-cam's ``RefineCAM`` (Grad-CAM++ by default there), the product of
  the layers' maps, each min-max scaled once more after upsampling (its per-layer
  call scales its output again), then scaled.
* ``aug_smooth``: the 6 test-time augmentations of pytorch-grad-cam (ttach
  ``HorizontalFlip`` x ``Multiply([0.9, 1, 1.1])``) run as ONE batch of
  ``6B`` images; each augmentation's (fused) map is flipped back where the
  image was flipped, and the 6 maps are averaged. The explained target is the
  one bound on the original image (its class, its region) for every augmentation (pytorch-grad-cam takes each
  augmented image's own top-1 when ``targets`` is None; equal when given targets).

One :class:`~lightning_cam.methods.base.LayerPass` per layer, shared by all
methods; the result's ``maps`` are at input resolution when several layers or
``aug_smooth`` are used (``weights``/``delta`` then None), else at the layer's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lightning_cam._state import as_float_input, explaining
from lightning_cam.maps import upsample_maps
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, Targets
from lightning_cam.methods.eigen import first_component
from lightning_cam.methods.layout import Reshape
from lightning_cam.outputs import OutputTransform
from lightning_cam.targets import resolve_target

__all__ = ["explain_composed", "AUGMENTATIONS", "FUSIONS"]

#: (horizontal flip, multiply) in ttach's product order, as pytorch-grad-cam's default ``tta_transforms``
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple((flip, f) for flip in (False, True) for f in (0.9, 1.0, 1.1))
FUSIONS = ("mean", "max", "prod")
_PGC_EPS = 1e-7


def _scale(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` without resizing: ``(m - min) / (max(m - min) + 1e-7)``."""
    flat = maps.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (flat.max(dim=1, keepdim=True).values + _PGC_EPS)).view_as(maps)


def _fuse(maps: list[torch.Tensor], fusion: str) -> torch.Tensor:
    """Scaled (B,H,W) maps of the layers, combined pixel-wise by ``fusion`` and scaled (see module doc)."""
    if fusion == "prod":
        return _scale(torch.stack([_scale(m) for m in maps]).prod(dim=0))
    stacked = torch.stack(maps)
    return _scale(stacked.mean(dim=0) if fusion == "mean" else stacked.amax(dim=0))


def _method_maps(explainer: BaseCAM, layer_pass: LayerPass, eigen_smooth: bool) -> Explanation:
    explanation = explainer.timed_compute(layer_pass)
    if eigen_smooth and not explainer.projects:
        terms = explainer.channel_terms(layer_pass, explanation)
        if terms is None:
            raise ValueError(
                f"eigen_smooth needs per-channel terms, which {type(explainer).__name__} does not have; "
                "use it without eigen_smooth, or e.g. GradCAM(model, layer).explain(x, eigen_smooth=True)."
            )
        explanation.maps = torch.relu(first_component(terms)).detach()
    return explanation


def explain_composed(
    model: torch.nn.Module,
    layer_names: Sequence[str],
    x: torch.Tensor,
    explainers: Mapping[str, BaseCAM],
    targets: Targets = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    fusion: str = "mean",
    reshape: Reshape | None = None,
    output_transform: OutputTransform | None = None,
) -> dict[str, Explanation]:
    """Explain ``x`` at every layer of ``layer_names`` with every explainer, fused and smoothed (see module doc)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}; e.g. fusion='mean'.")
    batch, size = x.shape[0], (int(x.shape[-2]), int(x.shape[-1]))
    with explaining(model):
        x = as_float_input(x, model)
        images = torch.cat([x.flip(-1) * f if flip else x * f for flip, f in AUGMENTATIONS]) if aug_smooth else x
        clean = AUGMENTATIONS.index((False, 1.0)) if aug_smooth else 0
        copies = images.shape[0] // batch
        per_layer: dict[str, list[Explanation]] = {name: [] for name in explainers}
        resolved = bound = None
        for layer_name in layer_names:
            layer_pass = LayerPass(model, layer_name, images, None, reshape, output_transform=output_transform)
            if resolved is None:  # the original image's target, for every augmentation and layer
                bound = resolve_target(targets, layer_pass.logits[clean * batch : (clean + 1) * batch])
                resolved = bound.select(torch.arange(batch, device=images.device).repeat(copies)) if copies > 1 else bound
            layer_pass.set_target(resolved)
            for name, explainer in explainers.items():
                per_layer[name].append(_method_maps(explainer, layer_pass, eigen_smooth))
    rows = slice(clean * batch, (clean + 1) * batch)
    results = {}
    for name, explanations in per_layer.items():
        first = explanations[0]
        seconds = sum(e.seconds for e in explanations)
        if len(layer_names) == 1 and not aug_smooth:  # nothing to fuse: the layer's own explanation
            first.seconds = seconds
            results[name] = first
            continue
        fused = _fuse([upsample_maps(_scale(e.maps), size) for e in explanations], fusion)
        if aug_smooth:
            views = fused.view(copies, batch, *size)
            fused = torch.stack([v.flip(-1) if flip else v for v, (flip, _) in zip(views, AUGMENTATIONS)]).mean(dim=0)
        results[name] = Explanation(
            method=first.method, maps=fused, weights=None, targets=first.targets[rows], logits=first.logits[rows],
            seconds=seconds, input_size=size, target=bound,
        )
    return results

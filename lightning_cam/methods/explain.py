"""``explain_all``: several methods from one shared forward pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_cam._checks import check_device, check_images
from lightning_cam._state import as_float_input, explaining
from lightning_cam.layers import default_target_layer, resolve_layer, unwrap_model
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, Targets, layer_list
from lightning_cam.methods.layout import Reshape
from lightning_cam.methods.registry import get_method
from lightning_cam.outputs import OutputTransform, check_output_transform

__all__ = ["explain_all"]


def explain_all(
    model: nn.Module,
    target_layer: str | nn.Module | None,
    x: torch.Tensor,
    methods: Sequence[str | BaseCAM] = ("liftcam",),
    targets: Targets = None,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    fusion: str = "mean",
    reshape: Reshape | None = None,
    output_transform: OutputTransform | None = None,
) -> dict[str, Explanation]:
    """Explain ``x`` with several methods from ONE shared forward pass.

    The layers up to ``target_layer`` run once; gradient methods share one
    backward through the head; LIFT-CAM, Ablation-CAM and ShapCAM rerun only
    the head. Returns ``{method name: Explanation}`` in the order given;
    ``Explanation.seconds`` includes the shared pass (the method's standalone cost).
    ``method_kwargs`` passes constructor options by name, e.g.
    ``{"scorecam": {"batch_size": 64}}``. A list ``target_layer`` fuses the
    layers' maps (``fusion="mean"`` as pytorch-grad-cam, ``"max"`` as torchcam, ``"prod"`` as
    pytorch-grad-cam's RefineCAM);
    ``aug_smooth`` / ``eigen_smooth`` as pytorch-grad-cam
    (:mod:`lightning_cam.methods.compose`). ``reshape``: optional callable turning the
    layer's raw output into (B, K, h, w) (token and channels-last layouts are
    recognised without it; see :mod:`lightning_cam.methods.layout`).
    ``output_transform`` reads the scores from the model's output when it is
    not understood by default (see :func:`lightning_cam.outputs.logits_of`). ``targets``: what
    every method explains (:mod:`lightning_cam.targets`: a class, a built-in target, B per-image
    callables; default: the output's default target).
    """
    output_transform = check_output_transform(output_transform)
    model = unwrap_model(model)
    x = check_images(x)
    check_device(model, x)
    if target_layer is None:
        target_layer = default_target_layer(model, tuple(x.shape[:1]) + tuple(x.shape[1:]))
    layer_names = [resolve_layer(model, layer)[0] for layer in layer_list(target_layer)]
    layer_name = layer_names[0]
    method_kwargs = dict(method_kwargs or {})
    explainers: dict[str, BaseCAM] = {}
    for method in methods:
        if isinstance(method, BaseCAM):
            explainers[method.name] = method
        else:
            cls = get_method(method)
            explainers[cls.name] = cls(model, layer_names, **dict(method_kwargs.get(cls.name, method_kwargs.get(method, {}))))
    if len(layer_names) > 1 or aug_smooth or eigen_smooth or fusion != "mean":
        from lightning_cam.methods.compose import explain_composed

        options = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth, "fusion": fusion, "reshape": reshape,
                   "output_transform": output_transform}
        return explain_composed(model, layer_names, x, explainers, targets, **options)
    with explaining(model):
        layer_pass = LayerPass(
            model, layer_name, as_float_input(x, model), targets, reshape, output_transform=output_transform
        )
        return {name: explainer.timed_compute(layer_pass) for name, explainer in explainers.items()}

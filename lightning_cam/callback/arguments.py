"""The callback's options, checked once at construction with messages that say what is allowed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.outputs import check_output_transform

__all__ = ["ON_ERROR", "Options", "check_display", "check_options"]

ON_ERROR = ("warn", "raise")
SANITY_ORDERS = ("full", "cascading")
TARGETS = ("prediction", "label")
FUSIONS = (None, "mean", "max")
DEFAULT_N_STEPS = 16  # 17 points per curve unless step / n_steps are given


@dataclass
class Options:
    """Validated :class:`~lightning_cam.CAMCallback` options (see its docstring for each one)."""

    target_layers: list[str | nn.Module | None]
    methods: list[str]
    num_samples: int = 32
    every_n_epochs: int = 1
    seed: int = 0
    step: int | None = None
    n_steps: int | None = None
    metric_batch_size: int = 256
    explain_batch_size: int = 64
    shap_samples: int = 0
    on_error: str = "warn"
    max_overhead: float | None = 0.10
    method_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: Tensor | None = None
    labels: Any = None
    masks: Tensor | None = None
    sanity_every_n_epochs: int | None = 0
    sanity_order: str = "full"
    sanity_seed: int = 42
    target: str = "prediction"
    output_transform: Any = None
    fusion: str | None = None

    @property
    def multi_layer(self) -> bool:
        """Several layers reported one by one (a fused list is one map per method)."""
        return len(self.target_layers) > 1 and self.fusion is None

    def curve_steps(self) -> dict[str, int | None]:
        """``step`` / ``n_steps`` for :func:`~lightning_cam.callback.evaluator.evaluate`."""
        if self.step is not None:
            return {"step": self.step, "n_steps": None}
        return {"step": None, "n_steps": self.n_steps or DEFAULT_N_STEPS}


def _method_names() -> list[str]:
    from lightning_cam.methods import METHODS

    return list(METHODS.keys()) if isinstance(METHODS, dict) else list(METHODS)


def canonical_method(name: Any) -> str | None:
    """Registry name of ``name`` (aliases such as ``"gradcampp"`` accepted), None if unknown."""
    from lightning_cam.methods import get_method

    try:
        return get_method(name).name
    except (TypeError, ValueError):
        return None


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"CAMCallback: {name} must be an int >= {minimum}, got {value!r}; e.g. {name}={max(minimum, 1)}")
    return value


def as_floats(name: str, value: Any) -> tuple[float, ...] | None:
    """``mean`` / ``std`` as a tuple of floats (accepts numbers, sequences, tensors, OmegaConf lists)."""
    if value is None:
        return None
    try:
        vals = (
            tuple(float(v) for v in value.flatten().tolist())
            if isinstance(value, Tensor)
            else (float(value),)
            if isinstance(value, (int, float))
            else tuple(float(v) for v in value)
        )
    except (TypeError, ValueError):
        raise ValueError(
            f"CAMCallback: {name} must be a number or a sequence of numbers, got {value!r}; e.g. {name}=[0.5, 0.5, 0.5]"
        ) from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"CAMCallback: {name} must be finite numbers, got {value!r}")
    return vals


def _layers(target_layer: Any) -> list[str | nn.Module | None]:
    example = "target_layer='layer4' or target_layer=['layer3', 'layer4']"
    items = list(target_layer) if isinstance(target_layer, (list, tuple)) or _is_listlike(target_layer) else [target_layer]
    if not items:
        raise ValueError(f"CAMCallback: target_layer is an empty list; e.g. {example}")
    for layer in items:
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise TypeError(
                f"CAMCallback: target_layer must be None, a dotted name, an nn.Module or a list of them, "
                f"got {layer!r}; e.g. {example}"
            )
    if len(items) > 1 and any(layer is None for layer in items):
        raise ValueError(f"CAMCallback: a list of target layers cannot hold None; name each layer, e.g. {example}")
    names = [layer if isinstance(layer, str) else id(layer) for layer in items]
    if len(set(names)) != len(names):
        raise ValueError(f"CAMCallback: target_layer lists a layer twice: {items}")
    return items


def _is_listlike(value: Any) -> bool:
    """OmegaConf ListConfig and other non-str sequences."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) or type(value).__name__ == "ListConfig"


def _methods(methods: Sequence[str] | str) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise ValueError("CAMCallback: methods is empty; pass at least one, e.g. methods=['liftcam']")
    unknown = [m for m in methods if canonical_method(m) is None]
    if unknown:
        raise ValueError(
            f"CAMCallback: unknown method(s) {unknown}; allowed: {_method_names()}; e.g. methods=['liftcam', 'gradcam']"
        )
    canonical = [canonical_method(m) for m in methods]
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"CAMCallback: duplicate methods in {canonical}; give each method once")
    return canonical  # type: ignore[return-value]


def _user_images(images: Any, labels: Any, masks: Any) -> Tensor | None:
    if images is None:
        if labels is not None or masks is not None:
            raise ValueError("CAMCallback: labels/masks were given without images; pass images=... too")
        return None
    imgs = images if isinstance(images, Tensor) else torch.stack(list(images))
    if imgs.dim() not in (3, 4) or imgs.shape[0] == 0:
        raise ValueError(f"CAMCallback: images must be (N, C, H, W), got shape {tuple(imgs.shape)}")
    if labels is not None and len(labels) != imgs.shape[0]:
        raise ValueError(f"CAMCallback: {len(labels)} labels for {imgs.shape[0]} images")
    named = dict(masks) if isinstance(masks, Mapping) else {"masks": masks}  # named regions: check each
    for name, m in named.items():
        if m is None:
            continue
        what = "masks" if name == "masks" else f"masks[{name!r}]"
        if len(m) != imgs.shape[0]:
            raise ValueError(f"CAMCallback: {len(m)} {what} for {imgs.shape[0]} images")
        if tuple(m[0].shape[-2:]) != tuple(imgs.shape[-2:]):
            raise ValueError(
                f"CAMCallback: {what} are {tuple(m[0].shape[-2:])} but images are {tuple(imgs.shape[-2:])}"
            )
    return imgs


def check_options(
    *,
    target_layer: Any,
    methods: Sequence[str] | str,
    num_samples: int,
    every_n_epochs: int,
    seed: int,
    step: int | None,
    n_steps: int | None,
    metric_batch_size: int,
    explain_batch_size: int,
    shap_samples: int,
    on_error: str,
    max_overhead: float | None,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None,
    images: Any,
    labels: Any,
    masks: Any,
    sanity_every_n_epochs: int | None = 0,
    sanity_order: str = "full",
    sanity_seed: int = 42,
    target: str = "prediction",
    output_transform: Any = None,
    fusion: str | None = None,
) -> Options:
    """Every option checked; raises ValueError / TypeError naming the option, what is allowed and an example."""
    if on_error not in ON_ERROR:
        raise ValueError(f"CAMCallback: on_error must be one of {ON_ERROR}, got {on_error!r}")
    if step is not None and n_steps is not None:
        raise ValueError("CAMCallback: give step or n_steps, not both; e.g. n_steps=16")
    if target not in TARGETS:
        raise ValueError(
            f"CAMCallback: target must be 'prediction' (explain the predicted class) or 'label' (explain the "
            f"true label), got {target!r}; e.g. target='label'"
        )
    if target == "label" and images is not None and labels is None:
        raise ValueError("CAMCallback: target='label' explains the labels, but images were given without labels; "
                         "pass labels=... too, or target='prediction'")
    if max_overhead is not None:
        if isinstance(max_overhead, bool) or not isinstance(max_overhead, (int, float)) or not max_overhead > 0:
            raise ValueError(
                f"CAMCallback: max_overhead must be a fraction of the training time > 0 (or None for no budget), "
                f"got {max_overhead!r}; e.g. max_overhead=0.1"
            )
        max_overhead = float(max_overhead)
    if sanity_order not in SANITY_ORDERS:
        raise ValueError(
            f"CAMCallback: sanity_order must be one of {SANITY_ORDERS}, got {sanity_order!r}; e.g. sanity_order='full'"
        )
    if fusion not in FUSIONS:
        raise ValueError(
            f"CAMCallback: fusion must be None (each layer of target_layer logged on its own), 'mean' "
            f"(pytorch-grad-cam) or 'max' (torchcam), got {fusion!r}; e.g. "
            f"CAMCallback(target_layer=['layer3', 'layer4'], fusion='mean')"
        )
    if sanity_every_n_epochs is not None:
        sanity_every_n_epochs = check_int("sanity_every_n_epochs", sanity_every_n_epochs, 0)
    return Options(
        target_layers=_layers(target_layer),
        methods=_methods(methods),
        num_samples=check_int("num_samples", num_samples, 1),
        every_n_epochs=check_int("every_n_epochs", every_n_epochs, 1),
        seed=check_int("seed", seed, 0),
        step=None if step is None else check_int("step", step, 1),
        n_steps=None if n_steps is None else check_int("n_steps", n_steps, 1),
        metric_batch_size=check_int("metric_batch_size", metric_batch_size, 1),
        explain_batch_size=check_int("explain_batch_size", explain_batch_size, 1),
        shap_samples=check_int("shap_samples", shap_samples, 0),
        on_error=on_error,
        max_overhead=max_overhead,
        method_kwargs={(canonical_method(k) or k): dict(v) for k, v in (method_kwargs or {}).items()},
        images=_user_images(images, labels, masks),
        labels=labels,
        masks=masks,
        sanity_every_n_epochs=sanity_every_n_epochs,
        sanity_order=sanity_order,
        sanity_seed=check_int("sanity_seed", sanity_seed, 0),
        target=target,
        output_transform=check_output_transform(output_transform, "CAMCallback: output_transform"),
        fusion=fusion,
    )


def check_display(
    *, mean: Any, std: Any, alpha: float, colormap: str, max_images: int, log_table: bool, log_curves: bool,
    table_image_size: int, method_grids: bool,
) -> Any:
    """The picture options as a :class:`~lightning_cam.callback.sinks.Display`, checked."""
    from lightning_cam import viz
    from lightning_cam.callback.sinks.media import Display

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"CAMCallback: alpha must be in [0, 1], got {alpha!r}; e.g. alpha=0.5")
    viz.colormap_lut(colormap)  # raises ValueError listing examples
    mean, std = as_floats("mean", mean), as_floats("std", std)
    if std is not None and min(std) <= 0:
        raise ValueError(f"CAMCallback: std must be > 0, got {std!r}")
    return Display(
        mean=mean, std=std, alpha=float(alpha), colormap=colormap, max_images=check_int("max_images", max_images, 1),
        table=bool(log_table), curves=bool(log_curves), method_grids=bool(method_grids),
        table_image_size=check_int("table_image_size", table_image_size, 8),
    )

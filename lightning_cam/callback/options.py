"""The callback's options: :class:`CallbackOptions`, each declared once with its default, checked once.

It extends :class:`~lightning_cam.evaluation.EvaluationOptions` (the options shared with
:func:`~lightning_cam.evaluate`) with those of a Trainer run (held-out set, cadence, budget,
sanity check, pictures). ``CAMCallback.__init__``'s signature is generated from these fields.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.callback.alerts import check_alerts
from lightning_cam.callback.label_targets import check_target
from lightning_cam.evaluation.options import EvaluationOptions, check_int

__all__ = ["ON_ERROR", "CallbackOptions", "as_floats", "callback_signature"]

ON_ERROR = ("warn", "raise")
SANITY_ORDERS = ("full", "cascading")
OWNER = "CAMCallback: "
#: EvaluationOptions fields the callback sets itself (per run), not options of the callback.
MANAGED = ("batch_size", "randomization", "randomization_seed", "curves", "curve_images", "curve_seed")


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
            f"{OWNER}{name} must be a number or a sequence of numbers, got {value!r}; e.g. {name}=[0.5, 0.5, 0.5]"
        ) from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{OWNER}{name} must be finite numbers, got {value!r}")
    return vals


def _is_listlike(value: Any) -> bool:
    """OmegaConf ListConfig and other non-str sequences."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) or type(value).__name__ == "ListConfig"


def _layers(target_layer: Any) -> tuple[str | nn.Module | None, ...]:
    example = "target_layer='layer4' or target_layer=['layer3', 'layer4']"
    items = list(target_layer) if _is_listlike(target_layer) else [target_layer]
    if not items:
        raise ValueError(f"{OWNER}target_layer is an empty list; e.g. {example}")
    for layer in items:
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise TypeError(
                f"{OWNER}target_layer must be None, a dotted name, an nn.Module or a list of them, "
                f"got {layer!r}; e.g. {example}"
            )
    if len(items) > 1 and any(layer is None for layer in items):
        raise ValueError(f"{OWNER}a list of target layers cannot hold None; name each layer, e.g. {example}")
    names = [layer if isinstance(layer, str) else id(layer) for layer in items]
    if len(set(names)) != len(names):
        raise ValueError(f"{OWNER}target_layer lists a layer twice: {items}")
    return tuple(items)


def _user_images(images: Any, labels: Any, masks: Any) -> Tensor | None:
    if images is None:
        if labels is not None or masks is not None:
            raise ValueError(f"{OWNER}labels/masks were given without images; pass images=... too")
        return None
    imgs = images if isinstance(images, Tensor) else torch.stack(list(images))
    if imgs.dim() not in (3, 4) or imgs.shape[0] == 0:
        raise ValueError(f"{OWNER}images must be (N, C, H, W), got shape {tuple(imgs.shape)}")
    if labels is not None and len(labels) != imgs.shape[0]:
        raise ValueError(f"{OWNER}{len(labels)} labels for {imgs.shape[0]} images")
    named = dict(masks) if isinstance(masks, Mapping) else {"masks": masks}  # named regions: check each
    for name, m in named.items():
        if m is None:
            continue
        what = "masks" if name == "masks" else f"masks[{name!r}]"
        if len(m) != imgs.shape[0]:
            raise ValueError(f"{OWNER}{len(m)} {what} for {imgs.shape[0]} images")
        if tuple(m[0].shape[-2:]) != tuple(imgs.shape[-2:]):
            raise ValueError(f"{OWNER}{what} are {tuple(m[0].shape[-2:])} but images are {tuple(imgs.shape[-2:])}")
    return imgs


def _per_class(per_class: Any) -> tuple[str | int, ...] | str | None:
    """``per_class``: None, ``"all"``, or the classes (names or indices) as a tuple."""
    example = "e.g. per_class=['malignant'], per_class=[0, 2] or per_class='all'"
    if per_class is None or per_class == "all":
        return per_class
    items = list(per_class) if _is_listlike(per_class) else [per_class]
    if not items or any(isinstance(c, bool) or not isinstance(c, (str, int)) for c in items):
        raise ValueError(f"{OWNER}per_class must be 'all' or a non-empty list of class names or indices, got {per_class!r}; {example}")
    return tuple(items)


@dataclass(frozen=True)
class CallbackOptions(EvaluationOptions):
    """Every :class:`~lightning_cam.CAMCallback` option (see its docstring for each one)."""

    target_layer: Any = None
    num_samples: int = 32
    every_n_epochs: int = 1
    images: Tensor | None = None
    labels: Any = None
    masks: Any = None
    seed: int = 0
    on_error: str = "warn"
    max_overhead: float | None = 0.10
    explain_batch_size: int = 64
    sanity_every_n_epochs: int | None = 0
    sanity_order: str = "full"
    sanity_seed: int = 42
    target: Any = "prediction"
    log_images: bool = True
    max_images: int = 16
    mean: Any = None
    std: Any = None
    colormap: str = "inferno"
    alpha: float = 0.5
    log_table: bool = True
    log_curves: bool = True
    method_grids: bool = False
    save_png: bool | None = None
    table_image_size: int = 128
    class_names: Sequence[str] | None = None
    per_class: Sequence[str | int] | str | None = None
    alert: Mapping[str, float] | None = None

    def _owner(self) -> str:
        return OWNER

    def __post_init__(self) -> None:
        from lightning_cam import viz

        super().__post_init__()
        set_ = object.__setattr__
        set_(self, "target_layer", _layers(self.target_layer))
        for name, minimum in (("num_samples", 1), ("every_n_epochs", 1), ("seed", 0), ("explain_batch_size", 1),
                              ("sanity_seed", 0), ("max_images", 1), ("table_image_size", 8)):
            check_int(name, getattr(self, name), minimum, OWNER)
        if self.on_error not in ON_ERROR:
            raise ValueError(f"{OWNER}on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        check_target(self.target, OWNER)
        if self.target == "label" and self.images is not None and self.labels is None:
            raise ValueError(f"{OWNER}target='label' explains the labels, but images were given without labels; "
                             "pass labels=... too, or target='prediction'")
        if self.max_overhead is not None:
            mo = self.max_overhead
            if isinstance(mo, bool) or not isinstance(mo, (int, float)) or not mo > 0:
                raise ValueError(
                    f"{OWNER}max_overhead must be a fraction of the training time > 0 (or None for no budget), "
                    f"got {mo!r}; e.g. max_overhead=0.1"
                )
            set_(self, "max_overhead", float(mo))
        if self.sanity_order not in SANITY_ORDERS:
            raise ValueError(
                f"{OWNER}sanity_order must be one of {SANITY_ORDERS}, got {self.sanity_order!r}; e.g. sanity_order='full'"
            )
        if self.sanity_every_n_epochs is not None:
            check_int("sanity_every_n_epochs", self.sanity_every_n_epochs, 0, OWNER)
        set_(self, "images", _user_images(self.images, self.labels, self.masks))
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"{OWNER}alpha must be in [0, 1], got {self.alpha!r}; e.g. alpha=0.5")
        viz.colormap_lut(self.colormap)  # raises ValueError listing examples
        set_(self, "mean", as_floats("mean", self.mean))
        set_(self, "std", as_floats("std", self.std))
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"{OWNER}std must be > 0, got {self.std!r}")
        if self.class_names is not None:
            set_(self, "class_names", list(self.class_names))
        set_(self, "per_class", _per_class(self.per_class))
        set_(self, "alert", check_alerts(self.alert, OWNER) or None)

    @property
    def target_layers(self) -> list[str | nn.Module | None]:
        return list(self.target_layer)

    @property
    def multi_layer(self) -> bool:
        """Several layers reported one by one (a fused list is one map per method)."""
        return len(self.target_layer) > 1 and self.fusion is None

    def display(self, mean: Any = None, std: Any = None) -> Any:
        """The picture options as a :class:`~lightning_cam.callback.sinks.Display` (``mean`` / ``std``:
        the datamodule's, used when the callback was given none)."""
        from lightning_cam.callback.sinks.media import Display

        return Display(
            mean=self.mean if self.mean is not None or self.std is not None else mean,
            std=self.std if self.mean is not None or self.std is not None else std,
            alpha=float(self.alpha), colormap=self.colormap, max_images=self.max_images, table=bool(self.log_table),
            curves=bool(self.log_curves), method_grids=bool(self.method_grids), table_image_size=self.table_image_size,
        )

    def evaluation_for_run(self, sanity: bool, curve_rows: bool = True) -> EvaluationOptions:
        """The :class:`EvaluationOptions` of one run (with the randomisation check when ``sanity``)."""
        return self.evaluation(
            batch_size=self.explain_batch_size, randomization=self.sanity_order if sanity else None,
            randomization_seed=self.sanity_seed, curves=curve_rows,
        )


def callback_signature() -> inspect.Signature:
    """``CAMCallback.__init__``'s signature: ``target_layer`` and ``methods`` first, every other
    option keyword-only, with the defaults of :class:`CallbackOptions`."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    by_name = {f.name: f for f in fields(CallbackOptions) if f.name not in MANAGED}

    def default(f: Any) -> Any:
        return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]

    for name in ("target_layer", "methods"):
        f = by_name.pop(name)
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default(f),
                                        annotation=f.type))
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default(f), annotation=f.type)
               for f in by_name.values()]
    return inspect.Signature(params, return_annotation=None)

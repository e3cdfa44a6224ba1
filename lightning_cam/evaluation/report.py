"""What :func:`~lightning_cam.evaluation.evaluate` returns, and its reduction to scalars.

:class:`EvaluationReport` -> :class:`LayerReport` per layer -> :class:`MethodReport` per method,
with per-image tensors (first dimension N). The per-image metrics of a method live in
``MethodReport.values`` keyed by the names of :data:`~lightning_cam.evaluation.keys.METRIC_TABLE`
and read as attributes (``report["liftcam"].insertion``); :func:`summarise` turns a report into the
logged scalars. Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from lightning_cam.targets import Target
from lightning_cam.evaluation.keys import (
    CLASS_KINDS,
    CLASS_METRICS,
    CURVE_FIELDS,
    FINITE_FIELDS,
    METRIC_NAMES,
    METRIC_TABLE,
    area_spec,
    callback_key,
    class_metric,
    finite_mean,
    metric_key,
    region_spec,
)

__all__ = ["EvaluationReport", "LayerReport", "MethodReport", "class_groups", "class_means", "map_tensors", "summarise"]


@dataclass
class MethodReport:
    """Per-image results of one method at one layer (tensors of first dimension N).

    ``saliency`` (N,H,W) maps in [0,1]; ``maps`` (N,h,w) the raw maps at layer resolution.
    ``values``: ``{metric: (N,)}`` for every metric of the metric table that was computed, also
    read as attributes (``r.insertion``; None when not computed). Average Drop / Increase in
    Confidence are in % per image (their means are the papers' percentages); pointing games are
    NaN where the mask is empty; ``shap_*`` NaN on images not compared; ``insertion`` /
    ``deletion`` NaN on images outside the curve subset (``EvaluationReport.curve_rows``).
    ``insertion_curve`` / ``deletion_curve`` (N,T); ``shared_curves`` (N,) bool: copied from an
    earlier method with the same pixel order. ``region_energy`` (N,R): share of the map's energy in
    region r of the report's ``regions``. ``randomization_cascade`` (N,S): Spearman with the
    randomised model's map after each cascading step, output layer first. ``finite`` (N,) bool: the
    image's logits, raw map and scores are all finite (False: left out of every mean; its map is
    shown as zeros). ``seconds``: explanation time, all images.
    """

    method: str
    saliency: Tensor
    maps: Tensor | None = None
    finite: Tensor | None = None
    values: dict[str, Tensor] = field(default_factory=dict)
    insertion_curve: Tensor | None = None
    deletion_curve: Tensor | None = None
    shared_curves: Tensor | None = None
    region_energy: Tensor | None = None
    randomization_cascade: Tensor | None = None
    seconds: float = 0.0

    def __getattr__(self, name: str) -> Tensor | None:
        if name in METRIC_NAMES:
            return self.__dict__.get("values", {}).get(name)
        raise AttributeError(f"MethodReport has no attribute {name!r}")

    def finite_rows(self, values: Tensor) -> Tensor:
        """The rows of ``values`` whose image is finite (those the means use)."""
        return values if self.finite is None else values[self.finite.bool().to(values.device)]

    def update_finite(self, curve_rows: Tensor | None = None) -> None:
        """``finite`` &= every field that a finite model keeps finite is finite, per image (the curve
        fields only on ``curve_rows``, the images whose curves were scored)."""
        if self.finite is None:
            return
        ok = self.finite.bool()
        for name in FINITE_FIELDS:
            v = self.values.get(name) if name in METRIC_NAMES else getattr(self, name)
            if v is None:
                continue
            good = torch.isfinite(v).reshape(v.shape[0], -1).all(1)
            if curve_rows is not None and name in CURVE_FIELDS:
                good |= ~curve_rows.to(good.device)
            ok = ok & good
        self.finite = ok


@dataclass
class LayerReport:
    """The methods' reports at one layer: ``layer`` is the name the user gave, ``qualified`` the module's path,
    ``channels`` the layer's number of channels K (when a method reports channel weights)."""

    layer: str
    qualified: str
    methods: dict[str, MethodReport] = field(default_factory=dict)
    channels: int | None = None


@dataclass
class EvaluationReport:
    """Everything :func:`~lightning_cam.evaluation.evaluate` computed, per layer and method, for N images.

    ``predictions`` (N,) the model's prediction (the class of the default target of its output:
    top-1 class, predicted side of one logit, most frequent predicted segmentation class);
    ``target`` the bound :class:`~lightning_cam.targets.Target` explained and scored, for the rows this
    process evaluated (:func:`~lightning_cam.evaluation.add_curves` and the randomisation check use it),
    ``kind`` its kind; ``targets`` (N,) its classes (the prediction unless ``targets`` were given, e.g.
    the labels; None for a kind without classes: regression, callables); ``confidence`` (N,) the
    target's probability (``softmax(y)_c`` for a class; its value for a kind without one);
    ``logits`` (N, ...) the model's scores (from the explanation pass); ``labels`` (N,) or None;
    ``notes``: what the evaluation left out or chose for the target's kind, and why; ``fractions`` (T,) the x-axis of the curves
    (None when skipped); ``curve_rows`` (N,) bool: the images whose curves were scored;
    ``index`` (N,) each image's position in the evaluated set; ``regions``: the names of the
    columns of each method's ``region_energy``; ``region_area`` (N, R) each region's share of the image's
    area, ``sum(R) / (H * W)`` (a uniform map's energy there); ``timing``: this process's wall seconds per part
    (``explain``, ``scores``, ``randomization``, ``curves``) and the image passes it ran
    (``forwards``, ``backwards``).
    """

    layers: dict[str, LayerReport]
    predictions: Tensor
    confidence: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None
    fractions: Tensor | None = None
    index: Tensor | None = None
    timing: dict[str, float] = field(default_factory=dict)
    regions: tuple[str, ...] = ()
    targets: Tensor | None = None
    curve_rows: Tensor | None = None
    region_area: Tensor | None = None
    target: Target | None = None
    kind: str = "class"
    notes: tuple[str, ...] = ()

    @property
    def num_images(self) -> int:
        return int(self.predictions.shape[0])

    @property
    def methods(self) -> list[str]:
        first = next(iter(self.layers.values()))
        return list(first.methods)

    def __getitem__(self, method: str) -> MethodReport:
        """The report of ``method`` (single-layer reports; use :meth:`method` with ``layer=`` otherwise)."""
        return self.method(method)

    def method(self, method: str, layer: str | None = None) -> MethodReport:
        if layer is None:
            if len(self.layers) != 1:
                raise KeyError(f"this report has several layers {list(self.layers)}; pass layer=...")
            layer = next(iter(self.layers))
        return self.layers[layer].methods[method]

    def items(self) -> Iterator[tuple[str, str, MethodReport]]:
        """``(layer, method, report)`` for every layer and method."""
        for layer, lrep in self.layers.items():
            for method, mrep in lrep.methods.items():
                yield layer, method, mrep

    @property
    def explained(self) -> Tensor:
        """(N,) the class explained and scored: ``targets``, else the predictions."""
        return self.predictions if self.targets is None else self.targets

    @property
    def nonfinite(self) -> Tensor:
        """(N,) bool: images with a non-finite logit, map or score for some method at some layer."""
        bad = torch.zeros_like(self.predictions, dtype=torch.bool)
        for _, _, r in self.items():
            if r.finite is not None:
                bad |= ~r.finite.bool()
        return bad

    def misclassified(self) -> Tensor | None:
        """(N,) bool: prediction differs from the label (None without labels). A multi-label row (an
        image and one of its positive labels) is missed when the label's probability is below 0.5."""
        if self.labels is None:
            return None
        if self.kind == "multilabel":
            return self.confidence < 0.5
        return self.predictions != self.labels.to(self.predictions.device)

    def summary(self, prefix: str = "cam") -> dict[str, float]:
        """Mean of every metric over the images, keyed ``prefix/[layer/]method/metric`` (see :func:`summarise`)."""
        return summarise(self, prefix)

    def to(self, device: torch.device | str) -> EvaluationReport:
        """A copy with every tensor on ``device``."""
        return map_tensors(self, lambda t: t.to(device))


def map_tensors(report: EvaluationReport, fn: Callable[[Tensor], Tensor]) -> EvaluationReport:
    """Apply ``fn`` to every tensor of ``report`` (per-image fields, metric values and ``fractions``)."""

    def conv(obj: Any) -> Any:
        changes: dict[str, Any] = {
            f.name: fn(getattr(obj, f.name)) for f in fields(obj) if isinstance(getattr(obj, f.name), Tensor)
        }
        if isinstance(obj, MethodReport):
            changes["values"] = {k: fn(v) for k, v in obj.values.items()}
        return replace(obj, **changes)

    layers = {
        name: replace(lrep, methods={m: conv(r) for m, r in lrep.methods.items()}) for name, lrep in report.layers.items()
    }
    return replace(conv(report), layers=layers)


def class_groups(report: EvaluationReport) -> Tensor:
    """(N,) the class of each image for the per-class breakdown: its label when known, else the
    explained class; empty (no image in any class) for a target without classes and no labels."""
    if report.labels is not None:
        return report.labels.to(report.predictions.device)
    if report.targets is None and report.kind not in CLASS_KINDS:
        return torch.zeros(0, dtype=torch.long, device=report.predictions.device)
    return report.explained.to(report.predictions.device)


def class_means(
    report: EvaluationReport, classes: Sequence[int] | None = None
) -> dict[int, dict[tuple[str, str], dict[str, float]]]:
    """Per class (``classes``, default every class present in :func:`class_groups`) and per (layer,
    method): the mean over the class's finite images of each metric of
    :data:`~lightning_cam.evaluation.keys.CLASS_METRICS` and every ``energy/<region>``,
    ``mean_{i: class(i) = c} v_i``; a class without images (or without a value) is absent."""
    groups = class_groups(report)
    wanted = sorted(set(groups.tolist())) if classes is None else list(classes)
    out: dict[int, dict[tuple[str, str], dict[str, float]]] = {}
    for cls in wanted:
        rows = groups == int(cls)
        if rows.shape[0] != report.num_images or not bool(rows.any()):
            continue
        per: dict[tuple[str, str], dict[str, float]] = {}
        for layer, method, mrep in report.items():
            keep = rows if mrep.finite is None else rows & mrep.finite.bool().to(rows.device)
            columns = {m: mrep.values[m] for m in CLASS_METRICS if m in mrep.values}
            if mrep.region_energy is not None:
                columns.update((region_spec(r).name, mrep.region_energy[:, j]) for j, r in enumerate(report.regions))
            values = {m: finite_mean(v, keep) for m, v in columns.items()}
            per[(layer, method)] = {m: v for m, v in values.items() if v is not None}
        out[int(cls)] = per
    return out


def summarise(
    report: EvaluationReport, prefix: str = "cam", layer_in_key: bool | None = None, scope: str | None = None,
    per_class: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Scalars of ``report``: the mean over finite images of every per-image metric, keyed by
    :func:`~lightning_cam.evaluation.keys.metric_key`.

    ``layer_in_key`` (default: when the report has several layers) adds the layer to the keys.
    Metrics that were not computed (no masks, no ShapCAM comparison) are absent. ``scope`` names
    the callback in its callback-wide keys (``<prefix>/<scope>/nonfinite_images``) when several
    callbacks log into one run. Each region's mean area share is ``<prefix>/[<scope>/]area/<region>``.
    ``per_class``: class indices whose means (:func:`class_means`) are logged as
    ``<prefix>/<method>/class/<name>/<metric>`` (``name``: ``class_names[c]``, else ``c``).
    """
    with_layer = len(report.layers) > 1 if layer_in_key is None else layer_in_key
    out: dict[str, float] = {}
    for layer, method, mrep in report.items():
        key_layer = layer if with_layer else None
        for spec in METRIC_TABLE:
            if spec.name == "seconds":
                value: float | None = mrep.seconds / max(report.num_images, 1)
            else:
                values = mrep.values.get(spec.name)
                value = None if values is None else finite_mean(values, mrep.finite)
            if value is not None:
                out[metric_key(prefix, method, spec.name, key_layer)] = value
        for i, region in enumerate(report.regions if mrep.region_energy is not None else ()):
            value = finite_mean(mrep.region_energy[:, i], mrep.finite)
            if value is not None:
                out[metric_key(prefix, method, region_spec(region).name, key_layer)] = value
    for i, region in enumerate(report.regions if report.region_area is not None else ()):
        area = report.region_area[:, i]
        value = finite_mean(area, area > 0)  # the images where the region exists (a marker may be absent)
        if value is not None:
            out[callback_key(prefix, area_spec(region).name, scope)] = value
    for cls, rows in class_means(report, per_class or ()).items():
        name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
        for (layer, method), values in rows.items():
            for metric, value in values.items():
                out[metric_key(prefix, method, class_metric(name, metric), layer if with_layer else None)] = value
    out[callback_key(prefix, "nonfinite_images", scope)] = float(report.nonfinite.sum())
    if report.curve_rows is not None:
        out[callback_key(prefix, "curve_images", scope)] = float(report.curve_rows.sum())
    return out

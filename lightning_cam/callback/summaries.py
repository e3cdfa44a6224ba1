"""The one place that names the callback's metric keys.

Every scalar the callback logs is ``<stage prefix>/[<layer>/]<method>/<metric>``
(or ``<stage prefix>/<name>`` for the callback's own figures), where

* the stage prefix is ``cam`` for validation during ``fit``, ``cam_validate``
  for ``trainer.validate`` and ``cam_test`` for ``trainer.test``
  (:data:`STAGE_PREFIX`), so test scores never overwrite validation scores;
* ``<layer>`` appears only when the callback watches several layers (the name
  the user gave);
* ``<metric>`` is one of :data:`METRICS` or :data:`MONITORING_METRICS`, or
  ``energy/<region>`` (:func:`region_spec`): each is the mean over the held-out
  set of the per-image field of the same name in
  :class:`~lightning_cam.callback.evaluator.MethodReport` (NaN entries, e.g.
  images without a mask, are left out, and so are the images whose logits,
  map or scores are not finite for that method: ``MethodReport.finite``);
* ``<prefix>/nonfinite_images`` counts the images left out that way (any
  method, any layer), so a diverging model shows in the dashboard as a count,
  never as a silent NaN.

The app's summary table and config checks import from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from lightning_cam.callback.evaluator import EvaluationReport

__all__ = [
    "CALLBACK_KEYS",
    "ENERGY_PREFIX",
    "ALL_METRICS",
    "METRICS",
    "MONITORING_METRICS",
    "STAGE_PREFIX",
    "MetricSpec",
    "ParsedKey",
    "metric_key",
    "parse_key",
    "region_spec",
    "summarise",
]

Direction = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """A logged metric: its key part, which direction is better, a short label and a description."""

    name: str
    direction: Direction
    label: str
    description: str

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓"}.get(self.direction, "")


#: Per-method metrics, in the order of the app's summary table.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("insertion", "higher", "ins", "insertion AUC (RISE): softmax score as salient pixels are inserted into a blurred image"),
    MetricSpec("deletion", "lower", "del", "deletion AUC (RISE): softmax score as salient pixels are set to 0"),
    MetricSpec("average_drop", "lower", "AD%", "Average Drop % (Grad-CAM++): mean of max(0, Y - O) / Y * 100, O on x * map"),
    MetricSpec("increase_in_confidence", "higher", "IC%", "Increase in Confidence % (Grad-CAM++): share of images with O > Y"),
    MetricSpec("pointing_game", "higher", "PG", "pointing game: share of maps whose maximum lies in the object mask"),
    MetricSpec("energy_pointing_game", "higher", "EPG", "energy pointing game (Score-CAM): share of the map's sum inside the mask"),
    MetricSpec("completeness_residual", "lower", "Δcompl", "LIFT-CAM: mean absolute gap between sum_k phi_k and y_c(A) - y_c(0) (0 = complete)"),
    MetricSpec("shap_pearson", "higher", "ρ shap", "Pearson correlation of the channel weights with ShapCAM's exact Shapley values"),
    MetricSpec("shap_spearman", "higher", "ρs shap", "Spearman correlation (average ranks) of the channel weights with ShapCAM's"),
    MetricSpec("seconds", "lower", "s/img", "explanation wall time per image (shared forward pass included)"),
)
#: Monitoring over training (docs/monitoring.md): per-method metrics after :data:`METRICS` in the table.
MONITORING_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("stability", "higher", "stab", "Spearman correlation of each map with the previous evaluation's map (1 = settled; absent at the first)"),
    MetricSpec("stability_first", "none", "stab₀", "Spearman correlation of each map with the first evaluation's map (how far it moved since)"),
    MetricSpec("randomization_spearman", "lower", "ρ rand", "Spearman correlation with the map of the model with re-initialised parameters (Adebayo et al. 2018, Quantus MPRT; low = depends on the model)"),
    MetricSpec("sparseness", "higher", "Gini", "Gini index of the map (Chalasani et al. 2020, Quantus Sparseness; 1 = one pixel)"),
    MetricSpec("complexity", "lower", "H", "entropy of the normalised map (Bhatt et al. 2020, Quantus Complexity; log(H*W) = uniform)"),
)
#: ``energy/<region>``: share of the map's energy in a named region mask (the region's spec).
ENERGY_PREFIX = "energy"
#: Direction per region name: energy on the object is good, on a shortcut marker bad.
REGION_DIRECTIONS: dict[str, Direction] = {"object": "higher", "marker": "lower"}


def region_spec(region: str) -> MetricSpec:
    """The spec of ``energy/<region>``: sum(S * R) / sum(S) over the images where the region is not empty."""
    return MetricSpec(
        f"{ENERGY_PREFIX}/{region}", REGION_DIRECTIONS.get(region, "none"), f"E {region}",
        f"share of the map's energy (sum of the [0,1] map) inside the {region!r} region mask",
    )

#: Every per-method metric with a fixed name (``energy/<region>`` keys come from :func:`region_spec`).
ALL_METRICS: tuple[MetricSpec, ...] = METRICS + MONITORING_METRICS
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in ALL_METRICS)
#: Metrics that come from the insertion / deletion curves (reduced first under the cost budget).
CURVE_METRICS: tuple[str, ...] = ("insertion", "deletion")

#: Keys of the callback's own figures, ``<stage prefix>/<name>``.
CALLBACK_KEYS: tuple[MetricSpec, ...] = (
    MetricSpec("callback_seconds", "lower", "s", "wall time of the callback's run (explain, score, gather, log)"),
    MetricSpec("curve_every", "none", "k", "cadence of the insertion/deletion curves the cost budget affords: 1 every evaluation, k about every k-th, 0 never"),
    MetricSpec("nonfinite_images", "lower", "#", "held-out images left out of the means: non-finite logits, map or score"),
)

#: Stage of the Trainer -> key prefix (scalars and media).
STAGE_PREFIX: dict[str, str] = {"val": "cam", "validate": "cam_validate", "test": "cam_test"}


def metric_key(prefix: str, method: str, metric: str, layer: str | None = None) -> str:
    """``prefix/[layer/]method/metric``."""
    return "/".join(p for p in (prefix, layer, method, metric) if p)


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    layer: str | None
    method: str
    metric: str


def callback_key(prefix: str, name: str, scope: str | None = None) -> str:
    """A callback-wide key: ``<prefix>/<name>``, or ``<prefix>/<scope>/<name>`` when several
    CAMCallbacks share a Trainer (``scope``: the callback's layers joined by ``+``, then ``:`` and its
    methods where another callback names the same layers)."""
    return f"{prefix}/{name}" if scope is None else f"{prefix}/{scope}/{name}"


def parse_key(key: str) -> ParsedKey | None:
    """Split a per-method key (``cam/liftcam/insertion``, ``cam_test/layer3/gradcam/deletion``,
    ``cam/liftcam/energy/marker``); None otherwise."""
    parts = key.split("/")
    if len(parts) >= 4 and parts[-2] == ENERGY_PREFIX and parts[0] in STAGE_PREFIX.values():
        parts = [*parts[:-2], f"{ENERGY_PREFIX}/{parts[-1]}"]
    elif parts[0] not in STAGE_PREFIX.values() or parts[-1] not in METRIC_NAMES:
        return None
    if len(parts) == 3:
        return ParsedKey(parts[0], None, parts[1], parts[2])
    if len(parts) >= 4:
        return ParsedKey(parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1])
    return None


def _mean(values: torch.Tensor) -> float | None:
    v = values.detach().double().flatten()
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else None


def summarise(
    report: EvaluationReport, prefix: str = "cam", layer_in_key: bool | None = None, scope: str | None = None
) -> dict[str, float]:
    """Scalars of ``report``: the mean over images of every per-image metric, keyed by :func:`metric_key`.

    ``layer_in_key`` (default: when the report has several layers) adds the layer to the keys.
    Metrics that were not computed (no masks, curves skipped, no ShapCAM comparison) are absent.
    ``scope`` names the callback in its callback-wide keys (``<prefix>/<scope>/nonfinite_images``)
    when several callbacks log into one run.
    """
    with_layer = len(report.layers) > 1 if layer_in_key is None else layer_in_key
    out: dict[str, float] = {}
    for layer, lrep in report.layers.items():
        for method, mrep in lrep.methods.items():
            for spec in ALL_METRICS:
                if spec.name == "seconds":
                    value: float | None = mrep.seconds / max(report.num_images, 1)
                else:
                    field = getattr(mrep, spec.name)
                    if field is not None and mrep.finite is not None:
                        field = field[mrep.finite.bool()]
                    value = None if field is None else _mean(field)
                if value is not None and math.isfinite(value):
                    out[metric_key(prefix, method, spec.name, layer if with_layer else None)] = value
            if mrep.region_energy is not None:
                for i, region in enumerate(report.regions):
                    energy = mrep.region_energy[:, i]
                    if mrep.finite is not None:
                        energy = energy[mrep.finite.bool()]
                    value = _mean(energy)
                    if value is not None and math.isfinite(value):
                        key = metric_key(prefix, method, region_spec(region).name, layer if with_layer else None)
                        out[key] = value
    out[callback_key(prefix, "nonfinite_images", scope)] = float(report.nonfinite.sum())
    return out


def by_method(metrics: Mapping[str, float], prefixes: Iterable[str] = ("cam",)) -> dict[str, dict[str, float]]:
    """``{"[layer/]method": {metric: value}}`` of the per-method keys in ``metrics`` with one of ``prefixes``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parsed = parse_key(key)
        if parsed is None or parsed.prefix not in tuple(prefixes):
            continue
        row = parsed.method if parsed.layer is None else f"{parsed.layer}/{parsed.method}"
        out.setdefault(row, {})[parsed.metric] = float(value)
    return out

"""The one metric table and the one place that names the logged keys.

Each per-method metric is declared once in :data:`METRIC_TABLE`: its key part, which direction is
better, a short label, a description, where it comes from (``source``) and whether a finite model
gives a finite value for every image (``finite``). Everything else derives from the table: the
fields of :class:`~lightning_cam.evaluation.report.MethodReport`, the finite filter, the per-image
CSV/W&B table columns, :data:`CURVE_METRICS`, the keys and the docs' key table.

Every scalar the callback logs is ``<stage prefix>/[<layer>/]<method>/<metric>``
(or ``<stage prefix>/[<scope>/]<name>`` for the callback's own figures, :data:`CALLBACK_KEYS`), where

* the stage prefix is ``cam`` for validation during ``fit``, ``cam_validate``
  for ``trainer.validate`` and ``cam_test`` for ``trainer.test``
  (:data:`STAGE_PREFIX`), so test scores never overwrite validation scores;
* ``<layer>`` appears only when the callback watches several layers (the name the user gave);
* ``<metric>`` is a name of the table, ``energy/<region>`` (:func:`region_spec`), or
  ``class/<class name>/<metric>`` (:func:`class_metric`, the mean over that class's images): the mean over
  the held-out set of the per-image values (NaN entries, e.g. images without a mask, are left
  out, and so are the images whose logits, map or scores are not finite: :func:`finite_mean`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch

__all__ = [
    "ALL_METRICS",
    "AREA_PREFIX",
    "CLASS_KINDS",
    "CLASS_METRICS",
    "CLASS_PREFIX",
    "CALLBACK_KEYS",
    "CURVE_FIELDS",
    "CURVE_METRICS",
    "ENERGY_PREFIX",
    "EXTRA_METRICS",
    "FINITE_FIELDS",
    "METRICS",
    "METRIC_NAMES",
    "METRIC_TABLE",
    "MONITORING_METRICS",
    "PROBABILITY_KINDS",
    "PER_IMAGE_COLUMNS",
    "STAGE_PREFIX",
    "TARGET_KINDS",
    "MetricSpec",
    "ParsedKey",
    "applies",
    "area_spec",
    "by_method",
    "callback_key",
    "class_metric",
    "finite_mean",
    "left_out",
    "left_out_notes",
    "metric_key",
    "parse_key",
    "region_spec",
    "row_label",
]

Direction = Literal["higher", "lower", "none"]
#: The kinds of :class:`lightning_cam.targets.Target` (``Target.kind``).
TARGET_KINDS: tuple[str, ...] = ("class", "binary", "multilabel", "segmentation", "regression", "callable")
#: The kinds whose target has a bounded ``probability`` (Average Drop / Increase in Confidence need it).
PROBABILITY_KINDS: tuple[str, ...] = ("class", "binary", "multilabel", "segmentation")
#: The kinds whose target names a class per image (``Target.classes``; the per-class breakdown).
CLASS_KINDS: tuple[str, ...] = ("class", "binary", "multilabel", "segmentation")
#: ``scores``: one explanation pass and its scores; ``curves``: the insertion/deletion curves;
#: ``monitoring``: over training or against a randomised model; ``timing``: wall time (not per image).
Source = Literal["scores", "curves", "monitoring", "timing"]


@dataclass(frozen=True)
class MetricSpec:
    """A logged metric: key part, better direction, short label, description, source, finite rule.

    ``finite``: a finite model gives a finite value on every image, so a non-finite value marks the
    image as broken (left out of every mean); False where NaN is a value by design (no mask, not
    compared, no previous evaluation).
    ``option``: the name in ``extra_metrics`` that turns an opt-in metric on (None: always computed).
    ``kinds``: the target kinds (:data:`TARGET_KINDS`) the metric has a meaning for; ``needs``: what
    the others lack (the report's note when it is left out, :func:`left_out`).
    """

    name: str
    direction: Direction
    label: str
    description: str
    source: Source = "scores"
    finite: bool = True
    option: str | None = None
    kinds: tuple[str, ...] = TARGET_KINDS
    needs: str = ""

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓"}.get(self.direction, "")

    @property
    def per_image(self) -> bool:
        return self.source != "timing"


_BOUNDED = "a positive, bounded score (the target's probability) whose relative drop (Y - O) / Y means something"

#: Every per-method metric with a fixed name, in the order of the app's summary table.
METRIC_TABLE: tuple[MetricSpec, ...] = (
    MetricSpec("insertion", "higher", "ins", "insertion AUC (RISE): the target's probability (softmax score; its value without one) as salient pixels are inserted into a blurred image", "curves"),
    MetricSpec("deletion", "lower", "del", "deletion AUC (RISE): the target's probability (softmax score; its value without one) as salient pixels are set to 0", "curves"),
    MetricSpec("average_drop", "lower", "AD%", "Average Drop % (Grad-CAM++): mean of max(0, Y - O) / Y * 100, O on x * map",
               kinds=PROBABILITY_KINDS, needs=_BOUNDED),
    MetricSpec("increase_in_confidence", "higher", "IC%", "Increase in Confidence % (Grad-CAM++): share of images with O > Y",
               kinds=PROBABILITY_KINDS, needs=_BOUNDED),
    MetricSpec("pointing_game", "higher", "PG", "pointing game: share of maps whose maximum lies in the object mask", finite=False),
    MetricSpec("energy_pointing_game", "higher", "EPG", "energy pointing game (Score-CAM): share of the map's sum inside the mask", finite=False),
    MetricSpec("completeness_residual", "lower", "Δcompl", "LIFT-CAM: mean absolute gap between sum_k phi_k and y_c(A) - y_c(0) (0 = complete)"),
    MetricSpec("shap_pearson", "higher", "ρ shap", "Pearson correlation of the channel weights with ShapCAM's exact Shapley values", finite=False),
    MetricSpec("shap_spearman", "higher", "ρs shap", "Spearman correlation (average ranks) of the channel weights with ShapCAM's", finite=False),
    # opt-in (extra_metrics=[...]): lightning_cam.evaluation.extra, docs/metrics.md
    MetricSpec("road", "higher", "ROAD", "ROAD combined (Rong et al. 2022): (LeRF - MoRF) / 2 of the target logit, noisy linear imputation, 10..90 %", option="road"),
    MetricSpec("road_morf", "lower", "MoRF", "ROAD: mean change of the target logit when the most relevant 10..90 % are imputed", option="road"),
    MetricSpec("road_lerf", "higher", "LeRF", "ROAD: mean change of the target logit when the least relevant 10..90 % are imputed", option="road"),
    MetricSpec("max_sensitivity", "lower", "MaxSens", "Max-Sensitivity (Yeh et al. 2019, Quantus): max over noisy inputs of ||E(x+u) - E(x)|| / ||E(x)||", finite=False, option="max_sensitivity"),
    MetricSpec("avg_sensitivity", "lower", "AvgSens", "Avg-Sensitivity (Yeh et al. 2019, Quantus): mean over noisy inputs of ||E(x+u) - E(x)|| / ||E(x)||", finite=False, option="avg_sensitivity"),
    MetricSpec("relative_input_stability", "lower", "RIS", "Relative Input Stability (Agarwal et al. 2022, Quantus): max relative map change / relative input change", option="relative_input_stability"),
    MetricSpec("random_logit", "lower", "RandLogit", "Random Logit (Sixt et al. 2020, Quantus): SSIM of the maps of the target and of a random other class", finite=False, option="random_logit",
               kinds=("class", "multilabel"), needs="another class of a (B, num_classes) output to explain instead"),
    MetricSpec("coherency", "higher", "Coh", "Coherency (Poppi et al. 2021, pytorch-grad-cam): (Pearson(E(x), E(x * E(x))) + 1) / 2", option="coherency"),
    MetricSpec("arcc", "higher", "ARCC", "ARCC (pytorch-grad-cam): harmonic mean of coherency, 1 - mean|E| and clip(2 ROAD, 0, 1)", option="arcc"),
    MetricSpec("relevance_rank_accuracy", "higher", "RRA", "Relevance Rank Accuracy (Arras et al. 2022, Quantus): share of the top-|mask| pixels in the mask", finite=False, option="relevance_rank_accuracy"),
    MetricSpec("top_k_intersection", "higher", "TopK", "Top-K Intersection (Theiner et al. 2022, Quantus): share of the top 2 % pixels in the mask", finite=False, option="top_k_intersection"),
    MetricSpec("attribution_localisation", "higher", "AttrLoc", "Attribution Localisation (Kohlbrenner et al. 2020, Quantus): share of sum|E| inside the mask", finite=False, option="attribution_localisation"),
    MetricSpec("localisation_auc", "higher", "AUC", "ROC AUC of the map as a detector of the mask's pixels (Quantus AUC)", finite=False, option="localisation_auc"),
    MetricSpec("seconds", "lower", "s/img", "explanation wall time per image (shared forward pass included)", "timing"),
    MetricSpec("stability", "higher", "stab", "Spearman correlation of each map with the previous evaluation's map (1 = settled; absent at the first)", "monitoring", False),
    MetricSpec("stability_first", "none", "stab₀", "Spearman correlation of each map with the first evaluation's map (how far it moved since)", "monitoring", False),
    MetricSpec("randomization_spearman", "lower", "ρ rand", "Spearman correlation with the map of the model with re-initialised parameters (Adebayo et al. 2018, Quantus MPRT; low = depends on the model)", "monitoring", False),
    MetricSpec("sparseness", "higher", "Gini", "Gini index of the map (Chalasani et al. 2020, Quantus Sparseness; 1 = one pixel)", "monitoring"),
    MetricSpec("complexity", "lower", "H", "entropy of the normalised map (Bhatt et al. 2020, Quantus Complexity; log(H*W) = uniform)", "monitoring"),
)
ALL_METRICS = METRIC_TABLE
#: The scores of one evaluation (the app's first table) and the monitoring metrics after them.
METRICS: tuple[MetricSpec, ...] = tuple(m for m in METRIC_TABLE if m.source in ("scores", "curves", "timing"))
MONITORING_METRICS: tuple[MetricSpec, ...] = tuple(m for m in METRIC_TABLE if m.source == "monitoring")
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE)
#: The opt-in metrics: ``extra_metrics`` name -> the fields it computes.
EXTRA_METRICS: dict[str, tuple[str, ...]] = {
    o: tuple(m.name for m in METRIC_TABLE if m.option == o) for o in dict.fromkeys(m.option for m in METRIC_TABLE if m.option)
}
#: Metrics that come from the insertion / deletion curves.
CURVE_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.source == "curves")
#: The per-image fields of the curves: the AUCs and the curves themselves.
CURVE_FIELDS: tuple[str, ...] = CURVE_METRICS + tuple(f"{name}_curve" for name in CURVE_METRICS)
#: Per-image fields that are finite for every image of a finite model (the curves themselves too).
FINITE_FIELDS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.finite and m.per_image) + CURVE_FIELDS[2:]
#: Per-image fields shown in the W&B table and the CSV (when computed).
PER_IMAGE_COLUMNS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE if m.per_image)

def left_out(kind: str, extra_metrics: Iterable[str] = ()) -> tuple[MetricSpec, ...]:
    """The metrics an evaluation computes (every always-on metric, and the opt-in ones of
    ``extra_metrics``) that have no meaning for a target of ``kind``, in table order."""
    wanted = set(extra_metrics)
    return tuple(m for m in METRIC_TABLE if kind not in m.kinds and (m.option is None or m.option in wanted))


def applies(name: str, kind: str) -> bool:
    """Whether the metric ``name`` of the table has a meaning for a target of ``kind``."""
    return kind in next(m.kinds for m in METRIC_TABLE if m.name == name)


def left_out_notes(kind: str, extra_metrics: Iterable[str] = ()) -> tuple[str, ...]:
    """One note per metric :func:`left_out` of an evaluation of a ``kind`` target, saying why."""
    return tuple(f"{m.name} left out: no meaning for a {kind} target, it needs {m.needs}" for m in left_out(kind, extra_metrics))


#: ``energy/<region>``: share of the map's energy in a named region mask (the region's spec).
ENERGY_PREFIX = "energy"
#: Direction per region name: energy on the object is good, on a shortcut marker or the border bad.
REGION_DIRECTIONS: dict[str, Direction] = {"object": "higher", "marker": "lower", "border": "lower"}
#: ``<stage prefix>/area/<region>``: the region's share of the image's area (callback-wide, beside ``energy/<region>``).
AREA_PREFIX = "area"
#: ``.../<method>/class/<class name>/<metric>``: the per-class means (:func:`class_metric`).
CLASS_PREFIX = "class"
#: Metrics of the table broken down per class (with every ``energy/<region>``).
CLASS_METRICS: tuple[str, ...] = ("insertion", "deletion", "pointing_game")


def region_spec(region: str) -> MetricSpec:
    """The spec of ``energy/<region>``: sum(S * R) / sum(S) over the images where the region is not empty."""
    return MetricSpec(
        f"{ENERGY_PREFIX}/{region}", REGION_DIRECTIONS.get(region, "none"), f"E {region}",
        f"share of the map's energy (sum of the [0,1] map) inside the {region!r} region mask", "monitoring", False,
    )


def area_spec(region: str) -> MetricSpec:
    """The spec of the callback-wide ``area/<region>``: the region's share of the image, ``sum(R) / (H * W)``."""
    return MetricSpec(
        f"{AREA_PREFIX}/{region}", "none", f"A {region}",
        f"share of the image's area inside the {region!r} region: the energy of evenly spread saliency, the baseline of energy/{region}", "monitoring", False,
    )


def class_metric(class_name: str, metric: str) -> str:
    """``class/<class name>/<metric>`` (a ``/`` in the class name becomes ``_``)."""
    return f"{CLASS_PREFIX}/{str(class_name).replace('/', '_')}/{metric}"


#: Keys of the callback's own figures, ``<stage prefix>/[<scope>/]<name>``.
CALLBACK_KEYS: tuple[MetricSpec, ...] = (
    MetricSpec("callback_seconds", "lower", "s", "wall time of the callback's evaluation (explain, score, curves, gather, log, media)", "timing"),
    MetricSpec("seconds/explain", "lower", "s", "seconds of the evaluation spent explaining (all methods, the shared pass included)", "timing"),
    MetricSpec("seconds/scores", "lower", "s", "seconds spent on every score but the curves (Average Drop, pointing games, ...)", "timing"),
    MetricSpec("seconds/curves", "lower", "s", "seconds spent on the insertion/deletion curves", "timing"),
    MetricSpec("seconds/randomization", "lower", "s", "seconds spent on the model-randomisation check (0 when it did not run)", "timing"),
    MetricSpec("seconds/media", "lower", "s", "seconds spent rendering and writing pictures and tables (rank zero)", "timing"),
    MetricSpec("seconds/other", "lower", "s", "the rest: held-out set, gathering, stability, logging", "timing"),
    MetricSpec("forwards", "none", "#", "image forward passes the evaluation ran (explanation pass, scores, curves, randomisation): the floor", "timing"),
    MetricSpec("backwards", "none", "#", "image backward passes through the head (gradients, DeepLIFT)", "timing"),
    MetricSpec("curve_images", "none", "#", "held-out images whose insertion/deletion curves are scored (a fixed seeded subset, the same at every evaluation)", "timing"),
    MetricSpec("nonfinite_images", "lower", "#", "held-out images left out of the means: non-finite logits, map or score", "timing"),
)

#: Stage of the Trainer -> key prefix (scalars and media).
STAGE_PREFIX: dict[str, str] = {"val": "cam", "validate": "cam_validate", "test": "cam_test"}


def row_label(layer: str | None, method: str) -> str:
    """``method``, or ``layer/method`` when several layers are reported (table rows, columns, keys)."""
    return method if not layer else f"{layer}/{method}"


def metric_key(prefix: str, method: str, metric: str, layer: str | None = None) -> str:
    """``prefix/[layer/]method/metric``."""
    return f"{prefix}/{row_label(layer, method)}/{metric}"


def callback_key(prefix: str, name: str, scope: str | None = None) -> str:
    """A callback-wide key: ``<prefix>/<name>``, or ``<prefix>/<scope>/<name>`` when several
    CAMCallbacks share a Trainer (``scope``: the callback's layers joined by ``+``, then ``:`` and its
    methods where another callback names the same layers)."""
    return f"{prefix}/{name}" if scope is None else f"{prefix}/{scope}/{name}"


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    layer: str | None
    method: str
    metric: str
    #: the class of a per-class key (``.../<method>/class/<class name>/<metric>``), else None
    class_name: str | None = None


def parse_key(key: str) -> ParsedKey | None:
    """Split a per-method key (``cam/liftcam/insertion``, ``cam_test/layer3/gradcam/deletion``,
    ``cam/liftcam/energy/marker``, ``cam/liftcam/class/circle/energy/border``); None otherwise."""
    parts = key.split("/")
    if len(parts) >= 4 and parts[-2] == ENERGY_PREFIX and parts[0] in STAGE_PREFIX.values():
        parts = [*parts[:-2], f"{ENERGY_PREFIX}/{parts[-1]}"]
    elif parts[0] not in STAGE_PREFIX.values() or parts[-1] not in METRIC_NAMES:
        return None
    if len(parts) >= 5 and parts[-3] == CLASS_PREFIX:
        plain = parse_key("/".join([*parts[:-3], parts[-1]]))
        return None if plain is None else replace(plain, class_name=parts[-2])
    if len(parts) == 3:
        return ParsedKey(parts[0], None, parts[1], parts[2])
    if len(parts) >= 4:
        return ParsedKey(parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1])
    return None


def finite_mean(values: torch.Tensor, keep: torch.Tensor | None = None) -> float | None:
    """Mean (float64) of the finite entries of ``values`` on the rows where ``keep`` holds; None if none."""
    v = values.detach()
    if keep is not None:
        v = v[keep.bool().to(v.device)]
    v = v.double().flatten()
    v = v[torch.isfinite(v)]
    return float(v.mean()) if v.numel() else None


def by_method(metrics: Mapping[str, float], prefixes: Iterable[str] = ("cam",)) -> dict[str, dict[str, float]]:
    """``{"[layer/]method": {metric: value}}`` of the per-method keys in ``metrics`` with one of ``prefixes``
    (the per-class keys left out)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parsed = parse_key(key)
        if parsed is None or parsed.prefix not in tuple(prefixes) or parsed.class_name is not None:
            continue
        out.setdefault(row_label(parsed.layer, parsed.method), {})[parsed.metric] = float(value)
    return out

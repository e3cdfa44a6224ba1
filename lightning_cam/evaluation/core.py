"""Score explanations without a Trainer: :func:`evaluate` -> :class:`EvaluationReport`.

The pure core of :class:`~lightning_cam.CAMCallback` and the way to score
explanations in a notebook or a custom loop::

    from lightning_cam import evaluate
    report = evaluate(model, "layer4", images, labels, methods=["liftcam", "gradcam"])
    report.summary()                      # {"cam/liftcam/insertion": 0.71, ...}
    report["liftcam"].insertion           # (N,) per-image AUCs
    report["gradcam"].saliency            # (N, H, W) maps in [0, 1]

A short pipeline: resolve the layers once -> bind ONE target to the clean scores
(:func:`bind_evaluation_target`, any ``targets=`` of :func:`lightning_cam.targets.resolve_target`)
-> explain and score every batch
(:mod:`~lightning_cam.evaluation.scoring`) -> the model-randomisation check
(:func:`lightning_cam.metrics.model_randomization`) -> the insertion / deletion curves
(:mod:`~lightning_cam.evaluation.curves`). The metrics:

* insertion / deletion AUCs and curves (:func:`~lightning_cam.metrics.insertion_deletion`);
  methods whose maps put the pixels of an image in the same order share that image's curves;
* Average Drop % and Increase in Confidence % (:func:`~lightning_cam.metrics.confidence_change`);
* pointing game and energy pointing game when ``masks`` are given, and the share of
  the map's energy in every named region of ``regions`` (e.g. ``object``, ``marker``);
* sparseness (Gini index) and complexity (entropy) of every map (Quantus' ``Sparseness`` /
  ``Complexity``);
* with ``randomization="full"`` (or ``"cascading"``): the Spearman correlation of each
  map with the map of a copy of the model whose parameters are re-initialised
  (Adebayo et al. 2018's sanity check; the model itself is not touched);
* LIFT-CAM's completeness residual ``|delta|``;
* optionally the Pearson / Spearman correlation of each method's channel
  weights with ShapCAM's exact Shapley values (``shap_samples``).

Every method explains that target and every metric follows it; a metric with no meaning for the
target's kind (``MetricSpec.kinds`` of :data:`~lightning_cam.evaluation.keys.METRIC_TABLE`, e.g.
Average Drop for a regression output) is left out and named in ``report.notes``.

Images whose logits, map or scores are not finite (a diverging model) are
flagged per method (``MethodReport.finite``) and left out of the means, which
count them instead. Nothing here touches the model's modes, gradients, hooks
or RNG state beyond what the engine already guarantees, and nothing imports Lightning.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.evaluation.curves import add_curves
from lightning_cam.evaluation.options import EvaluationOptions
from lightning_cam.evaluation.regions import active, static_masks
from lightning_cam.evaluation.report import EvaluationReport
from lightning_cam.evaluation.scoring import Inputs, explain_and_score, rows_of
from lightning_cam.targets import TargetsLike

__all__ = ["add_randomization", "bind_evaluation_target", "evaluate", "layer_names", "report_layers", "target_notes"]

LayerLike = str | nn.Module | None


def layer_names(model: nn.Module, target_layer: LayerLike | Sequence[LayerLike], example: Tensor | None = None) -> dict[str, str]:
    """``{name the user gave: qualified module name}`` for one layer or a list (None = the model's default)."""
    from lightning_cam.layers import default_target_layer, resolve_layer, unwrap_model

    model = unwrap_model(model)
    layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    if not layers:
        raise ValueError("target_layer is an empty list; give at least one layer, e.g. ['layer3', 'layer4']")
    out: dict[str, str] = {}
    for layer in layers:
        if layer is None:
            layer = default_target_layer(model) if example is None else default_target_layer(model, tuple(example.shape))
        qualified, _ = resolve_layer(model, layer)
        name = layer if isinstance(layer, str) else qualified
        if name in out:
            raise ValueError(f"target_layer lists {name!r} twice; give each layer once")
        out[name] = qualified
    return out


def report_layers(model: nn.Module, target_layer: LayerLike | Sequence[LayerLike], example: Tensor | None = None,
                  fusion: str | None = None) -> dict[str, Any]:
    """The report's layers: ``{name: qualified module name}``, or with ``fusion`` and several layers one
    fused entry ``{"<name>+<name>...": [qualified names]}``."""
    names: dict[str, Any] = layer_names(model, target_layer, example)
    if fusion is not None and len(names) > 1:
        return {"+".join(names): list(names.values())}
    return names


def _check_inputs(
    images: Tensor, labels: Any, masks: Tensor | None, regions: Mapping[str, Tensor] | None,
    shap_on: Tensor | None, opts: EvaluationOptions,
) -> Inputs:
    """The inputs, checked against N, H, W once (the target is bound next, :func:`bind_evaluation_target`)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {shape}")
    n, _, h, w = images.shape
    if shap_on is None:
        shap_on = torch.arange(n) < int(opts.shap_samples)
    shap_on = torch.as_tensor(shap_on, dtype=torch.bool).reshape(-1).cpu()
    if shap_on.shape[0] != n:
        raise ValueError(f"shap_on has {shap_on.shape[0]} entries for {n} images")
    label_t = None if labels is None else torch.as_tensor(labels).reshape(-1).long()
    if label_t is not None and label_t.shape[0] != n:
        raise ValueError(f"{label_t.shape[0]} labels for {n} images")
    if masks is not None and (masks.shape[0] != n or tuple(masks.shape[-2:]) != (h, w)):
        raise ValueError(f"masks must be (N, H, W) = ({n}, {h}, {w}), got {tuple(masks.shape)}")
    regions = dict(regions or {})
    for rname, rmask in regions.items():
        if not isinstance(rmask, Tensor) or rmask.shape[0] != n or tuple(rmask.shape[-2:]) != (h, w):
            shape = tuple(rmask.shape) if isinstance(rmask, Tensor) else type(rmask).__name__
            raise ValueError(f"regions[{rname!r}] must be (N, H, W) = ({n}, {h}, {w}), got {shape}")
    if masks is None and "object" in regions:
        masks = regions["object"]
    if masks is not None and not regions:  # one object mask: its energy is the energy pointing game
        regions = {"object": masks}
    regions.update(_static(regions, opts, n, h, w))
    image_ok = torch.isfinite(images).flatten(1).all(1)
    if not bool(image_ok.all()):  # explained as zeros, flagged non-finite, left out of every mean
        images = torch.where(image_ok.view(-1, 1, 1, 1), images, torch.zeros_like(images))
    return Inputs(images=images, labels=label_t, masks=masks, regions=regions, target=None, shap_on=shap_on,
                  image_ok=image_ok.cpu())


def bind_evaluation_target(net: nn.Module, inputs: Inputs, targets: Any, opts: EvaluationOptions,
                           device: torch.device) -> Inputs:
    """``inputs`` with ONE target bound to the clean scores of all N images
    (:func:`~lightning_cam.targets.resolve_target`; one forward pass per ``batch_size`` images, the
    batches of the explanation pass), explained by every method and followed by every metric. A
    segmentation target without ``masks`` lends its region (the pixels of the explained class) as
    the object mask: the pointing games and ``energy/object`` measure the map inside it."""
    from lightning_cam.metrics._common import evaluating, model_scores
    from lightning_cam.metrics.pointing import target_masks
    from lightning_cam.targets import resolve_target

    images = inputs.images
    with evaluating(net, device):
        scores = torch.cat([model_scores(net, images[s : s + opts.batch_size].to(device), opts.output_transform)
                            for s in range(0, images.shape[0], opts.batch_size)])
    target = resolve_target(targets, scores)
    inputs = replace(inputs, target=target)
    if target.kind != "segmentation" or inputs.masks is not None:
        return inputs
    masks = _to_input_size(target_masks(target), tuple(images.shape[-2:])).to(images.device)
    regions = {"object": masks, **{k: v for k, v in inputs.regions.items() if k != "object"}}
    return replace(inputs, masks=masks, regions=regions)


def _to_input_size(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) bool masks at the output's resolution -> (N, H, W), nearest neighbour."""
    if tuple(masks.shape[-2:]) == size:
        return masks
    return torch.nn.functional.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0


def target_notes(inputs: Inputs, masks_given: bool, opts: EvaluationOptions) -> tuple[str, ...]:
    """What an evaluation of the bound ``inputs.target`` leaves out or chooses for its kind, and why."""
    from lightning_cam.evaluation.keys import left_out_notes

    target = inputs.target
    notes = list(left_out_notes(target.kind, opts.extra_metrics))
    if opts.curves and not target.has_probability:
        notes.append(f"insertion / deletion follow the target's value (score='logit'): a {target.kind} target has no probability")
    if target.kind == "segmentation" and not masks_given:
        notes.append("pointing games and energy/object use the target's region (the pixels of the explained class) as the object mask")
    return tuple(notes)


def _static(masks: Mapping[str, Tensor], opts: EvaluationOptions, n: int, h: int, w: int) -> dict[str, Tensor]:
    """The masks of the mask-free regions of ``opts.regions`` (a name may not be both a mask and a static region)."""
    static = active(opts.regions or {})
    both = sorted(set(static) & set(masks))
    if both:
        raise ValueError(
            f"regions {both} are given both as masks and as static regions (options.regions); rename one, "
            f"e.g. regions={{'{both[0]}_box': {static[both[0]]!r}}}, or switch the static one off with "
            f"regions={{'{both[0]}': None}}"
        )
    return static_masks(static, n, h, w)


def _split_regions(regions: Mapping[str, Any] | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``regions`` of :func:`evaluate` as (per-image masks: the tensor values, static regions: the rest)."""
    masks = {k: v for k, v in (regions or {}).items() if isinstance(v, Tensor)}
    return masks, {k: v for k, v in (regions or {}).items() if k not in masks}


def add_randomization(
    report: EvaluationReport, net: nn.Module, layers: Mapping[str, Any], images: Tensor, opts: EvaluationOptions
) -> EvaluationReport:
    """``report`` with the model-parameter randomisation check (``opts.randomization``: ``"full"`` or
    ``"cascading"``): each method's Spearman with its maps on the randomised copies of ``net`` (same
    targets, same batches; ``layers`` as :func:`report_layers`): ``randomization_spearman`` (fully
    random), and per cascading step ``randomization_cascade``. NaN for a non-finite map."""
    from lightning_cam.methods import explain_all
    from lightning_cam.metrics.monitoring import model_randomization

    t0 = time.perf_counter()
    device = report.predictions.device
    targets = report.explained if report.target is None else report.target
    layers_out = {}
    for name, qualified in layers.items():
        lrep = report.layers[name]

        def explain(model: nn.Module, x: Tensor, t: TargetsLike) -> dict[str, Tensor]:
            parts: dict[str, list[Tensor]] = {m: [] for m in lrep.methods}
            for s in range(0, x.shape[0], opts.batch_size):
                rows = torch.arange(s, min(s + opts.batch_size, x.shape[0]))
                exps = explain_all(
                    model, qualified, x[s : s + opts.batch_size].to(device), methods=opts.methods,
                    targets=rows_of(t, rows), method_kwargs=opts.method_kwargs,
                    output_transform=opts.output_transform, fusion=opts.fusion or "mean",
                )
                for m in parts:
                    parts[m].append(exps[m].maps)
            return {m: torch.cat(v) for m, v in parts.items()}

        maps = {m: r.maps for m, r in lrep.methods.items()}
        results = model_randomization(net, images, explain, targets, order=opts.randomization,
                                      seed=opts.randomization_seed, maps=maps)
        methods = {}
        for m, r in lrep.methods.items():
            res = results[m]
            cascade = torch.stack(list(res.layers.values()), dim=1) if res.layers else None
            methods[m] = replace(r, values={**r.values, "randomization_spearman": res.per_image},
                                 randomization_cascade=cascade)
        layers_out[name] = replace(lrep, methods=methods)
    passes = len(layers) * images.shape[0] * (1 if opts.randomization == "full" else _steps(results))
    timing = dict(report.timing, randomization=time.perf_counter() - t0)
    timing["forwards"] = timing.get("forwards", 0.0) + passes
    return replace(report, layers=layers_out, timing=timing)


def _steps(results: Mapping[str, Any]) -> int:
    return max((len(r.layers) for r in results.values()), default=1)


def evaluate(
    model: nn.Module,
    target_layer: LayerLike | Sequence[LayerLike],
    images: Tensor,
    labels: Tensor | Sequence[int] | None = None,
    masks: Tensor | None = None,
    methods: Sequence[str] | str | None = None,
    *,
    targets: TargetsLike = None,
    regions: Mapping[str, Tensor] | None = None,
    shap_on: Tensor | None = None,
    curve_rows: Tensor | None = None,
    options: EvaluationOptions | None = None,
    **option_values: Any,
) -> EvaluationReport:
    """Explain ``images`` with every method at every layer and score the maps.

    Args:
        model: any classifier ``nn.Module`` (a LightningModule works) whose output
            holds the class scores (see :mod:`lightning_cam.outputs`); its modes,
            grads and hooks are left as found.
        target_layer: a layer (dotted name, unique suffix, or module), ``None``
            for the model's default, or a list of them.
        images: (N, C, H, W) normalised model inputs (moved to the model's device).
        labels: (N,) kept in the report (for display and ``misclassified()``);
            to explain them, pass them as ``targets`` too.
        masks: (N, H, W) object masks; enable the pointing games.
        methods: registry names (``liftcam``, ``gradcam``, ``gradcam++`` ...); default
            ``options.methods`` (LIFT-CAM).
        targets: what to explain and score: anything :func:`~lightning_cam.targets.resolve_target`
            accepts (an int, (N,) classes e.g. the labels, a :mod:`lightning_cam.targets` built-in
            such as ``SegmentationClass(3)`` or ``RegressionOutput()``, N per-image callables);
            default the output's default (top-1 class per image). Bound ONCE to the clean scores
            of the N images and used for every method and every metric; the metrics that have no
            meaning for its kind are left out and named in ``report.notes`` (docs/metrics.md,
            "Metrics by target kind").
        regions: named regions: per-image masks ``{name: (N, H, W)}``, e.g. ``{"object": ...,
            "marker": ...}`` (default with ``masks``: ``{"object": masks}``; ``regions["object"]``
            is the default of ``masks``), and static regions in relative coordinates,
            ``{"top_left": (0, 0, 0.2, 0.2), "border": 0.1}``, which update ``options.regions``
            (default: the ``border`` band and the ``center``, :mod:`~lightning_cam.evaluation.regions`;
            a ``None`` value switches one off). Each method's ``region_energy`` holds ``sum(S * R) / sum(S)``
            per region and the report's ``region_area`` each region's area share.
        shap_on: (N,) bool, the images compared with ShapCAM (default: the first ``shap_samples``).
        curve_rows: (N,) bool, the images whose curves are scored (default: ``curve_images``
            seeded images, or all).
        options: an :class:`~lightning_cam.evaluation.EvaluationOptions`; or its fields as
            keyword arguments (``n_steps=8``, ``curves=False``, ``randomization="full"``,
            ``fusion="mean"``, ``batch_size=32`` ...), which override ``options``.

    Returns:
        An :class:`EvaluationReport` with per-image tensors on the model's device.
    """
    from lightning_cam.layers import unwrap_model

    changes = dict(option_values, **({} if methods is None else {"methods": methods}))
    regions, static = _split_regions(regions)
    if static:
        changes["regions"] = {**dict((options or EvaluationOptions()).regions or {}), **static}
    if shap_on is not None:  # compare the given images with ShapCAM
        changes["shap_samples"] = max(1, int(torch.as_tensor(shap_on).sum()))
    base = options or EvaluationOptions()
    opts = replace(base, **changes) if changes else base
    inputs = _check_inputs(images, labels, masks, regions, shap_on, opts)
    net = unwrap_model(model)
    param = next(net.parameters(), None)
    device = param.device if param is not None else images.device
    masks_given = inputs.masks is not None
    inputs = bind_evaluation_target(net, inputs, targets, opts, device)
    layers = report_layers(net, target_layer, images[:1], opts.fusion)
    if any(isinstance(q, list) for q in layers.values()):  # one fused "layer": no channel weights to compare
        opts = replace(opts, shap_samples=0)
        inputs = replace(inputs, shap_on=torch.zeros_like(inputs.shap_on))
    report = replace(explain_and_score(net, layers, inputs, opts, device), notes=target_notes(inputs, masks_given, opts))
    report.timing["forwards"] = report.timing.get("forwards", 0.0) + inputs.images.shape[0]  # the binding pass
    if opts.randomization is not None:
        report = add_randomization(report, net, layers, inputs.images, opts)
    if opts.curves:
        if curve_rows is None and opts.curve_images is not None:
            from lightning_cam.evaluation.curves import curve_subset

            curve_rows = curve_subset(images.shape[0], opts.curve_images, opts.curve_seed)
        report = add_curves(report, net, inputs.images, opts, rows=curve_rows)
    return report

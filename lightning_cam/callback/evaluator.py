"""Score explanations without a Trainer: :func:`evaluate` -> :class:`EvaluationReport`.

The pure core of :class:`~lightning_cam.CAMCallback` and the way to score
explanations in a notebook or a custom loop::

    from lightning_cam import evaluate
    report = evaluate(model, "layer4", images, labels, methods=["liftcam", "gradcam"])
    report.summary()                      # {"cam/liftcam/insertion": 0.71, ...}
    report["liftcam"].insertion           # (N,) per-image AUCs
    report["gradcam"].saliency            # (N, H, W) maps in [0, 1]

For each batch of ``batch_size`` images and each layer, every method is
explained from one shared forward pass (:func:`lightning_cam.explain_all`),
then scored:

* insertion / deletion AUCs and curves (:func:`~lightning_cam.metrics.insertion_deletion`);
  methods whose maps put the pixels of an image in the same order share that
  image's curves (the curves depend on the pixel order only), e.g. LIFT-CAM and
  Ablation-CAM, or Grad-CAM and XGrad-CAM, on a GAP + linear head;
* Average Drop % and Increase in Confidence % (:func:`~lightning_cam.metrics.confidence_change`);
* pointing game and energy pointing game when ``masks`` are given, and the share of
  the map's energy in every named region of ``regions`` (e.g. ``object``, ``marker``);
* sparseness (Gini index) and complexity (entropy) of every map
  (:mod:`lightning_cam.metrics.monitoring`, equal to Quantus' ``Sparseness`` /
  ``Complexity``);
* with ``randomization="full"`` (or ``"cascading"``): the Spearman correlation of each
  map with the map of a copy of the model whose parameters are re-initialised
  (Adebayo et al. 2018's sanity check; the model itself is not touched);
* LIFT-CAM's completeness residual ``|delta|``;
* optionally the Pearson / Spearman correlation of each method's channel
  weights with ShapCAM's exact Shapley values (``shap_samples``).

Images whose logits, map or scores are not finite (a diverging model) are
flagged per method (``MethodReport.finite``) and left out of the means
(:mod:`~lightning_cam.callback.summaries`), which count them instead.

The clean-image scores of the metrics come from the explanation pass's logits.
Nothing here touches the model's modes, gradients, hooks or RNG state beyond
what the engine already guarantees.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.outputs import OutputTransform

__all__ = ["EvaluationReport", "LayerReport", "MethodReport", "add_curves", "evaluate", "layer_names"]

LayerLike = str | nn.Module | None


@dataclass
class MethodReport:
    """Per-image results of one method at one layer (tensors of first dimension N).

    ``saliency`` (N,H,W) in [0,1]. ``insertion`` / ``deletion`` (N,) AUCs and
    ``insertion_curve`` / ``deletion_curve`` (N,T) (None when curves were
    skipped). ``average_drop`` (N,) in %: ``max(0, Y-O)/Y*100``;
    ``increase_in_confidence`` (N,) 100 where ``O > Y`` else 0, so their means
    are the papers' percentages. ``pointing_game`` (N,) 1/0 and
    ``energy_pointing_game`` (N,), NaN where the mask is empty (None without
    masks). ``completeness_residual`` (N,) ``|delta|`` (LIFT-CAM only).
    ``shap_pearson`` / ``shap_spearman`` (N,), NaN on images not compared.
    ``shared_curves`` (N,) bool: the curves were copied from an earlier method
    with the same pixel order. ``finite`` (N,) bool: the image's logits, raw
    map and scores are all finite (False: left out of every mean; its map is
    shown as zeros). ``seconds``: explanation time, all images.
    ``maps`` (N,h,w) the raw maps at layer resolution (for the stability series).
    ``sparseness`` / ``complexity`` (N,): Gini index / entropy of the map.
    ``region_energy`` (N,R): share of the map's energy in region r of the report's
    ``regions`` (NaN where that region is empty; None without regions).
    ``randomization_spearman`` (N,): Spearman correlation with the randomised model's
    map (None unless asked for); ``randomization_cascade`` (N,S) the same after each step of
    the cascading randomisation, output layer first (``randomization="cascading"`` only). ``stability`` / ``stability_first`` (N,): Spearman
    correlation with the previous / first evaluation's maps (filled in by the callback).
    """

    method: str
    saliency: Tensor
    average_drop: Tensor
    increase_in_confidence: Tensor
    insertion: Tensor | None = None
    deletion: Tensor | None = None
    insertion_curve: Tensor | None = None
    deletion_curve: Tensor | None = None
    shared_curves: Tensor | None = None
    pointing_game: Tensor | None = None
    energy_pointing_game: Tensor | None = None
    completeness_residual: Tensor | None = None
    shap_pearson: Tensor | None = None
    shap_spearman: Tensor | None = None
    maps: Tensor | None = None
    sparseness: Tensor | None = None
    complexity: Tensor | None = None
    region_energy: Tensor | None = None
    randomization_spearman: Tensor | None = None
    randomization_cascade: Tensor | None = None
    stability: Tensor | None = None
    stability_first: Tensor | None = None
    finite: Tensor | None = None
    seconds: float = 0.0


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
    """Everything :func:`evaluate` computed, per layer and method, for N images.

    ``predictions`` (N,) the model's top-1 class; ``targets`` (N,) the class
    explained and scored (the prediction unless ``targets`` were given, e.g.
    the labels); ``confidence`` (N,) the softmax probability of ``targets``;
    ``logits`` (N, C) the model's output (from the explanation pass);
    ``labels`` (N,) or None;
    ``fractions`` (T,) the x-axis of the curves (None when skipped);
    ``index`` (N,) each image's position in the evaluated set;
    ``regions``: the names of the columns of each method's ``region_energy``;
    ``timing``: this process's wall seconds in ``explain`` (all methods),
    ``scores`` (all scores but the curves) and ``curves`` (insertion/deletion),
    and the number of model ``forwards`` of the scores and ``curve_forwards``.
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
        """(N,) bool: prediction differs from the label (None without labels)."""
        return None if self.labels is None else self.predictions != self.labels.to(self.predictions.device)

    def summary(self, prefix: str = "cam") -> dict[str, float]:
        """Mean of every metric over the images, keyed ``prefix/[layer/]method/metric`` (see summaries)."""
        from lightning_cam.callback.summaries import summarise

        return summarise(self, prefix)

    def to(self, device: torch.device | str) -> EvaluationReport:
        """A copy with every tensor on ``device``."""
        return map_tensors(self, lambda t: t.to(device))


def map_tensors(report: EvaluationReport, fn: Any) -> EvaluationReport:
    """Apply ``fn`` to every tensor of ``report`` (per-image fields and ``fractions``)."""

    def conv(obj: Any) -> Any:
        changes = {f.name: fn(getattr(obj, f.name)) for f in fields(obj) if isinstance(getattr(obj, f.name), Tensor)}
        return replace(obj, **changes)

    layers = {
        name: replace(lrep, methods={m: conv(r) for m, r in lrep.methods.items()}) for name, lrep in report.layers.items()
    }
    return replace(conv(report), layers=layers)


def _as_list(target_layer: LayerLike | Sequence[LayerLike]) -> list[LayerLike]:
    if isinstance(target_layer, (list, tuple)):
        if not target_layer:
            raise ValueError("target_layer is an empty list; give at least one layer, e.g. ['layer3', 'layer4']")
        return list(target_layer)
    return [target_layer]


def layer_names(model: nn.Module, target_layer: LayerLike | Sequence[LayerLike], example: Tensor | None = None) -> dict[str, str]:
    """``{name the user gave: qualified module name}`` for one layer or a list (None = the model's default)."""
    from lightning_cam.layers import default_target_layer, resolve_layer, unwrap_model

    model = unwrap_model(model)
    out: dict[str, str] = {}
    for layer in _as_list(target_layer):
        if layer is None:
            layer = default_target_layer(model, None if example is None else tuple(example.shape))
        qualified, _ = resolve_layer(model, layer)
        name = layer if isinstance(layer, str) else qualified
        if name in out:
            raise ValueError(f"target_layer lists {name!r} twice; give each layer once")
        out[name] = qualified
    return out


def _correlations(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise Pearson and Spearman (average ranks for ties) of (B,K) tensors; NaN for constant rows."""
    from lightning_cam.metrics.monitoring import row_pearson, row_spearman

    return row_pearson(a, b), row_spearman(a, b)


def _nan(n: int, device: torch.device) -> Tensor:
    return torch.full((n,), float("nan"), device=device)


def _randomization(
    net: nn.Module,
    layer: str | list[str],
    xb: Tensor,
    exps: Mapping[str, Any],
    methods: Sequence[str],
    targets: Tensor,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None,
    order: str,
    twins: Callable[[], Iterable[tuple[str, nn.Module]]],
    output_transform: OutputTransform | None = None,
    fusion: str = "mean",
) -> dict[str, dict[str, Tensor]]:
    """Per method: Spearman of its maps with those of the randomised copies (same targets); the
    last step (every parameter re-initialised) as ``randomization_spearman``, and with
    ``order="cascading"`` every step, output layer first, as ``randomization_cascade`` (N, S)."""
    from lightning_cam.methods import explain_all
    from lightning_cam.metrics.monitoring import spearman

    steps: dict[str, list[Tensor]] = {m: [] for m in methods}
    for _, twin in twins():
        rand = explain_all(
            twin, layer, xb, methods=methods, targets=targets, method_kwargs=method_kwargs,
            output_transform=output_transform, fusion=fusion,
        )
        for m in methods:
            steps[m].append(spearman(exps[m].maps, rand[m].maps))
    out = {m: {"randomization_spearman": v[-1]} for m, v in steps.items()}
    if order == "cascading":
        for m, v in steps.items():
            out[m]["randomization_cascade"] = torch.stack(v, dim=1)
    return out


@torch.no_grad()
def _score_batch(
    model: nn.Module,
    xb: Tensor,
    exps: Mapping[str, Any],
    masks: Tensor | None,
    regions: Mapping[str, Tensor] | None,
    shap_weights: Tensor | None,
    shap_rows: Tensor,
    compare: bool,
    metric_batch_size: int,
    output_transform: OutputTransform | None = None,
) -> dict[str, dict[str, Tensor]]:
    from lightning_cam.metrics import confidence_change, pointing_game
    from lightning_cam.metrics.monitoring import complexity, region_energy, sparseness

    b, _, h, w = xb.shape
    device = xb.device
    out: dict[str, dict[str, Tensor]] = {}
    sals: dict[str, Tensor] = {}
    finites: dict[str, Tensor] = {}
    for m, e in exps.items():
        sal = e.saliency((h, w))
        finite = torch.isfinite(e.logits).all(1) & torch.isfinite(e.maps).flatten(1).all(1)
        finite &= torch.isfinite(sal).flatten(1).all(1)
        sals[m] = torch.where(finite[:, None, None], sal, torch.zeros_like(sal))  # NaN-free for the metrics
        finites[m] = finite
    # Average Drop / Increase in Confidence of every method in one call: the masked images of all
    # methods go through the model in batches of metric_batch_size (larger batches, fewer calls)
    k = len(exps)
    c = confidence_change(
        model, xb.repeat(k, 1, 1, 1), torch.cat(list(sals.values())),
        targets=torch.cat([e.targets for e in exps.values()]), batch_size=metric_batch_size,
        clean_logits=torch.cat([e.logits for e in exps.values()]), deletion=False, output_transform=output_transform,
    )
    for i, (m, e) in enumerate(exps.items()):
        sal, finite = sals[m], finites[m]
        rows = slice(i * b, (i + 1) * b)
        res: dict[str, Tensor] = {"saliency": sal}
        res["average_drop"] = c.drop[rows] * 100.0
        res["increase_in_confidence"] = c.increase[rows].float() * 100.0
        if masks is not None:
            p = pointing_game(sal, masks)
            res["pointing_game"] = torch.where(p.valid, p.hits.float(), _nan(b, device))
            res["energy_pointing_game"] = torch.where(p.valid, p.energy.float(), _nan(b, device))
        if regions:
            energy = region_energy(sal, regions)
            res["region_energy"] = torch.stack(
                [torch.where(v, en.float(), _nan(b, device)) for en, v in energy.values()], dim=1
            )
        res["maps"] = e.maps.detach().float()
        res["sparseness"] = sparseness(sal)
        res["complexity"] = complexity(sal)
        if e.delta is not None:
            res["completeness_residual"] = e.delta.float().abs()
        if compare and e.weights is not None and m != "shap":
            pear = spear = _nan(b, device)
            if shap_weights is not None and e.weights.shape == shap_weights.shape:
                pear, spear = _correlations(e.weights, shap_weights)
            res["shap_pearson"] = torch.where(shap_rows, pear, _nan(b, device))
            res["shap_spearman"] = torch.where(shap_rows, spear, _nan(b, device))
        res["finite"] = _finite(finite, res)
        out[m] = res
    return out


#: Per-image fields that are finite for every image of a finite model (others are NaN by design
#: on some images: no mask, not compared with ShapCAM).
_FINITE_FIELDS = (
    "average_drop", "increase_in_confidence", "insertion", "deletion", "insertion_curve", "deletion_curve",
    "completeness_residual",
)


def _finite(finite: Tensor, fields_: Mapping[str, Tensor | None]) -> Tensor:
    """``finite`` and, per image, every field of :data:`_FINITE_FIELDS` present in ``fields_`` finite."""
    for k in _FINITE_FIELDS:
        v = fields_.get(k)
        if v is not None:
            finite = finite & torch.isfinite(v).reshape(v.shape[0], -1).all(1)
    return finite


def evaluate(
    model: nn.Module,
    target_layer: LayerLike | Sequence[LayerLike],
    images: Tensor,
    labels: Tensor | Sequence[int] | None = None,
    masks: Tensor | None = None,
    methods: Sequence[str] | str = ("liftcam",),
    *,
    targets: Tensor | Sequence[int] | int | None = None,
    step: int | None = None,
    n_steps: int | None = 16,
    curves: bool = True,
    shap_samples: int = 0,
    shap_on: Tensor | None = None,
    batch_size: int = 64,
    metric_batch_size: int = 256,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    regions: Mapping[str, Tensor] | None = None,
    randomization: str | None = None,
    randomization_seed: int = 42,
    output_transform: OutputTransform | None = None,
    fusion: str | None = None,
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
        methods: registry names (``liftcam``, ``gradcam``, ``gradcam++`` ...).
        targets: classes to explain (an int, or (N,) e.g. the labels); default
            the top-1 prediction per image.
        step, n_steps: insertion/deletion granularity (``n_steps + 1`` points;
            capped at H*W); ``curves=False`` skips them.
        shap_samples: compare the channel weights with ShapCAM's on the first
            ``shap_samples`` images (``shap_on``: a (N,) bool mask instead).
        batch_size: images per explanation batch; ``metric_batch_size``:
            images per forward pass of the metrics.
        method_kwargs: constructor options per method, e.g. ``{"scorecam": {"batch_size": 64}}``.
        regions: named region masks ``{name: (N, H, W)}``, e.g. ``{"object": ..., "marker": ...}``:
            each method's ``region_energy`` holds ``sum(S * R) / sum(S)`` per region
            (default with ``masks``: ``{"object": masks}``; ``regions["object"]`` is the default
            of ``masks``).
        randomization: ``"full"`` or ``"cascading"``: the model-parameter randomisation check
            (:func:`lightning_cam.metrics.model_randomization`): each method's maps of a copy of
            the model with re-initialised parameters (seeded with ``randomization_seed``; the
            same target classes) against its maps, Spearman per image; ``"cascading"``
            re-initialises from the output layer down and reports the last (fully random) step.
        output_transform: reads the (B, num_classes) scores from the model's output when it is
            not a tensor, a tuple/list, a dict with ``"logits"`` or an object with ``.logits``.
        fusion: ``None`` (default): a list of layers is scored layer by layer (one
            :class:`LayerReport` each); ``"mean"`` (pytorch-grad-cam) or ``"max"`` (torchcam's
            ``fuse_cams``): the layers' maps are fused into one map per method
            (:mod:`lightning_cam.methods.compose`), reported as one layer named
            ``"<layer>+<layer>..."``.

    Returns:
        An :class:`EvaluationReport` with per-image tensors on the model's device.
    """
    from lightning_cam.layers import unwrap_model
    from lightning_cam.methods import explain_all, get_method
    from lightning_cam.outputs import check_output_transform

    output_transform = check_output_transform(output_transform)
    if isinstance(methods, str):
        methods = [methods]
    methods = [get_method(m).name for m in methods]
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {shape}")
    net = unwrap_model(model)
    param = next(net.parameters(), None)
    device = param.device if param is not None else images.device
    n, _, h, w = images.shape
    names: dict[str, Any] = layer_names(net, target_layer, images[:1])
    if fusion is not None:
        from lightning_cam.methods.compose import FUSIONS

        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be None or one of {FUSIONS}, got {fusion!r}; e.g. fusion='mean'")
        if len(names) > 1:  # one fused "layer"; its maps have no channel weights to compare with ShapCAM
            names = {"+".join(names): list(names.values())}
            shap_samples, shap_on = 0, None
    compare = shap_on is not None or shap_samples > 0  # the shap_* fields exist (NaN where not compared)
    if shap_on is None:
        shap_on = torch.arange(n) < int(shap_samples)
    shap_on = torch.as_tensor(shap_on, dtype=torch.bool).reshape(-1).cpu()
    if shap_on.shape[0] != n:
        raise ValueError(f"shap_on has {shap_on.shape[0]} entries for {n} images")
    label_t = None if labels is None else torch.as_tensor(labels).reshape(-1).long()
    if label_t is not None and label_t.shape[0] != n:
        raise ValueError(f"{label_t.shape[0]} labels for {n} images")
    if masks is not None and (masks.shape[0] != n or tuple(masks.shape[-2:]) != (h, w)):
        raise ValueError(f"masks must be (N, H, W) = ({n}, {h}, {w}), got {tuple(masks.shape)}")
    target_t = targets
    if isinstance(targets, (Tensor, list, tuple)):
        target_t = torch.as_tensor(targets).reshape(-1)
    regions = dict(regions or {})
    for rname, rmask in regions.items():
        if not isinstance(rmask, Tensor) or rmask.shape[0] != n or tuple(rmask.shape[-2:]) != (h, w):
            shape = tuple(rmask.shape) if isinstance(rmask, Tensor) else type(rmask).__name__
            raise ValueError(f"regions[{rname!r}] must be (N, H, W) = ({n}, {h}, {w}), got {shape}")
    if masks is None and "object" in regions:
        masks = regions["object"]
    if masks is not None and not regions:  # one object mask: its energy is the energy pointing game
        regions = {"object": masks}
    if randomization not in (None, "full", "cascading"):
        raise ValueError(f"randomization must be None, 'full' or 'cascading', got {randomization!r}")

    twins: Callable[[], Iterable[tuple[str, nn.Module]]] = lambda: ()
    if randomization == "full":  # one randomised copy serves every batch and layer
        from lightning_cam.metrics.monitoring import randomized_models

        full = list(randomized_models(net, order="full", seed=randomization_seed))
        twins = lambda: full  # noqa: E731
    elif randomization == "cascading":  # one copy re-randomised layer by layer, per batch (memory-bounded)
        from lightning_cam.metrics.monitoring import randomized_models

        twins = lambda: randomized_models(net, order="cascading", seed=randomization_seed)  # noqa: E731
    chunks: dict[str, dict[str, dict[str, list[Tensor]]]] = {name: {m: {} for m in methods} for name in names}
    seconds: dict[str, dict[str, float]] = {name: dict.fromkeys(methods, 0.0) for name in names}
    preds, explained, confs, logits = [], [], [], []
    channels: dict[str, int | None] = {}
    timing = {"explain": 0.0, "scores": 0.0, "forwards": 0.0}
    for s in range(0, n, batch_size):
        rows = slice(s, min(s + batch_size, n))
        xb = images[rows].to(device)
        mb = None if masks is None else masks[rows].to(device)
        rb = {k: v[rows].to(device) for k, v in regions.items()}
        tb = target_t[rows] if isinstance(target_t, Tensor) else target_t
        sel = shap_on[rows].to(device)
        for li, (name, qualified) in enumerate(names.items()):
            t0 = time.perf_counter()
            exps = explain_all(
                net, qualified, xb, methods=methods, targets=tb, method_kwargs=method_kwargs,
                output_transform=output_transform, fusion=fusion or "mean",
            )
            first = exps[methods[0]]
            if li == 0:
                preds.append(first.logits.argmax(dim=1))
                explained.append(first.targets)
                confs.append(torch.softmax(first.logits.float(), dim=1).gather(1, first.targets[:, None])[:, 0])
            shap_weights = None
            if bool(sel.any()):
                if "shap" in exps:
                    shap_weights = exps["shap"].weights
                else:
                    ws = explain_all(
                        net, qualified, xb[sel], methods=["shap"], targets=first.targets[sel], method_kwargs=method_kwargs,
                        output_transform=output_transform,
                    )["shap"].weights
                    shap_weights = torch.zeros((xb.shape[0], ws.shape[1]), device=device, dtype=ws.dtype)
                    shap_weights[sel] = ws
            if li == 0:
                logits.append(first.logits.float())
            channels[name] = next((e.weights.shape[1] for e in exps.values() if e.weights is not None), None)
            t1 = time.perf_counter()
            scored = _score_batch(
                net, xb, exps, mb, rb, shap_weights if compare else None, sel, compare, metric_batch_size, output_transform
            )
            t2 = time.perf_counter()
            timing["explain"] += t1 - t0
            timing["scores"] += t2 - t1  # the curve-cost estimate reads this: the sanity check stays out
            if randomization is not None:
                for m, values in _randomization(
                    net, qualified, xb, exps, methods, first.targets, method_kwargs, randomization, twins,
                    output_transform, fusion or "mean",
                ).items():
                    scored[m].update(values)
                timing["randomization"] = timing.get("randomization", 0.0) + time.perf_counter() - t2
            timing["forwards"] += xb.shape[0] * len(exps)  # confidence_change: x * E
            for m, res in scored.items():
                seconds[name][m] += float(exps[m].seconds)
                for k, v in res.items():
                    chunks[name][m].setdefault(k, []).append(v)

    layers: dict[str, LayerReport] = {}
    for name, qualified in names.items():
        reps = {}
        for m in methods:
            data = {k: torch.cat(v) for k, v in chunks[name][m].items()}
            reps[m] = MethodReport(method=m, seconds=seconds[name][m], **data)
        path = qualified if isinstance(qualified, str) else "+".join(qualified)
        layers[name] = LayerReport(layer=name, qualified=path, methods=reps, channels=channels.get(name))
    report = EvaluationReport(
        layers=layers,
        predictions=torch.cat(preds),
        targets=torch.cat(explained),
        confidence=torch.cat(confs),
        logits=torch.cat(logits),
        labels=None if label_t is None else label_t.to(device),
        index=torch.arange(n, device=device),
        timing=timing,
        regions=tuple(regions),
    )
    if curves:
        report = add_curves(report, net, images, step=step, n_steps=n_steps, batch_size=batch_size,
                            metric_batch_size=metric_batch_size, output_transform=output_transform)
    return report


def curve_forwards(report: EvaluationReport, step: int | None = None, n_steps: int | None = 16) -> int:
    """Forward passes :func:`add_curves` will run: (image, method) pairs not shared x ``2 n + 1``."""
    h, w = next(r for _, _, r in report.items()).saliency.shape[-2:]
    n = min(n_steps or 16, h * w) if step is None else -(-(h * w) // step)
    pairs = 0
    for lrep in report.layers.values():
        done: list[Tensor] = []
        for r in lrep.methods.values():
            shared = torch.zeros(report.num_images, dtype=torch.bool, device=r.saliency.device)
            for prev in done:
                shared |= _same_maps(r.saliency, prev, lrep.channels)
            pairs += int((~shared).sum())
            done.append(r.saliency)
    return pairs * (2 * n + 1)


def _same_maps(a: Tensor, b: Tensor, channels: int | None) -> Tensor:
    """(B,) whether two batches of [0, 1] maps agree to float32 rounding.

    Each map is ``ReLU(sum_k w_k A_k)`` min-max scaled: two K-term float32
    reductions (the weights, the weighted sum) per map, two maps: differences
    up to ``4 K 2**-23`` are rounding. Maps closer than that order the pixels
    identically except where two pixels differ by less than rounding.
    """
    if channels is None:
        return torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
    tol = 4 * channels * 2.0**-23
    return (a - b).abs().flatten(1).amax(1) <= tol


@torch.no_grad()
def add_curves(
    report: EvaluationReport,
    model: nn.Module,
    images: Tensor,
    *,
    step: int | None = None,
    n_steps: int | None = 16,
    batch_size: int = 64,
    metric_batch_size: int = 256,
    output_transform: OutputTransform | None = None,
) -> EvaluationReport:
    """``report`` with insertion / deletion AUCs and curves for every layer and method.

    Uses the report's saliency maps, explained classes and clean logits (no
    clean forward pass). Work giving the same result is done once: for each
    image, a method whose map equals an earlier method's map to float32
    rounding (:func:`_same_maps`; e.g. LIFT-CAM and Ablation-CAM, or Grad-CAM
    and XGrad-CAM, on a GAP + linear head) reuses that method's curves
    (``shared_curves`` marks those images). Images whose curves are not finite
    are marked in ``MethodReport.finite``.
    """
    from lightning_cam.layers import unwrap_model
    from lightning_cam.metrics import insertion_deletion

    net = unwrap_model(model)
    n, _, h, w = images.shape
    steps = {"n_steps": min(n_steps or 16, h * w)} if step is None else {"step": int(step)}
    device = report.predictions.device
    keys = ("insertion", "deletion", "insertion_curve", "deletion_curve")
    t0 = time.perf_counter()
    forwards = 0
    fractions = None
    layers = {}
    for name, lrep in report.layers.items():
        done: list[MethodReport] = []
        methods = {}
        for m, r in lrep.methods.items():
            shared = torch.zeros(n, dtype=torch.bool, device=device)
            data: dict[str, Tensor] = {}
            for prev in done:
                same = _same_maps(r.saliency, prev.saliency, lrep.channels) & ~shared
                if bool(same.any()):
                    for k in keys:
                        data.setdefault(k, torch.empty_like(getattr(prev, k)))[same] = getattr(prev, k)[same]
                    shared |= same
            need = (~shared).nonzero().flatten()
            for s in range(0, need.numel(), batch_size):
                rows = need[s : s + batch_size]
                res = insertion_deletion(
                    net, images[rows.cpu()].to(device), r.saliency[rows], targets=report.explained[rows],
                    batch_size=metric_batch_size, clean_logits=report.logits[rows], output_transform=output_transform,
                    **steps,
                )
                fractions = res.fractions
                forwards += rows.numel() * (res.insertion_curve.shape[1] + res.deletion_curve.shape[1] - 2)
                for k in keys:
                    v = getattr(res, k)
                    data.setdefault(k, torch.empty((n, *v.shape[1:]), dtype=v.dtype, device=device))[rows] = v
            finite = r.finite if r.finite is None else _finite(r.finite, data)
            new = replace(r, shared_curves=shared, finite=finite, **data)
            methods[m] = new
            done.append(new)
        layers[name] = replace(lrep, methods=methods)
    timing = dict(report.timing, curves=time.perf_counter() - t0, curve_forwards=float(forwards))
    return replace(report, layers=layers, fractions=fractions, timing=timing)

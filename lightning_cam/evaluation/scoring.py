"""Explain and score, batch by batch: every metric but the curves and the randomisation check.

For each batch of ``batch_size`` images and each layer, every method is explained from one shared
forward pass (:func:`lightning_cam.explain_all`), then scored (:func:`score_batch`): Average Drop /
Increase in Confidence of all methods in one call, pointing games, region energies, sparseness,
complexity, LIFT-CAM's completeness residual, the comparison with ShapCAM and the opt-in
``extra_metrics`` (:mod:`lightning_cam.evaluation.extra`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.evaluation.curves import same_maps
from lightning_cam.evaluation.keys import applies
from lightning_cam.evaluation.options import EvaluationOptions
from lightning_cam.evaluation.report import EvaluationReport, LayerReport, MethodReport
from lightning_cam.targets import Target, TargetsLike, resolve_target

__all__ = ["Inputs", "confidence_of", "explain_and_score", "predictions_of", "rows_of", "score_batch"]


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of one evaluation, N images: ``masks`` the object masks (pointing games),
    ``regions`` named region masks, ``target`` the :class:`~lightning_cam.targets.Target` explained and
    scored, bound to the N images' clean scores (None only until
    :func:`~lightning_cam.evaluation.core.bind_evaluation_target`), ``shap_on`` (N,) bool: images compared with ShapCAM,
    ``image_ok`` (N,) bool: the image is finite (a non-finite one is explained as zeros and flagged
    non-finite)."""

    images: Tensor
    labels: Tensor | None
    masks: Tensor | None
    regions: dict[str, Tensor]
    target: Target | None
    shap_on: Tensor
    image_ok: Tensor

    def batch(self, rows: slice, device: torch.device) -> Inputs:
        """Rows ``rows`` on ``device``."""
        return Inputs(
            images=self.images[rows].to(device),
            labels=None,
            masks=None if self.masks is None else self.masks[rows].to(device),
            regions={k: v[rows].to(device) for k, v in self.regions.items()},
            target=rows_of(self.target, torch.arange(self.images.shape[0])[rows]),
            shap_on=self.shap_on[rows].to(device),
            image_ok=self.image_ok[rows].to(device),
        )


def rows_of(target: TargetsLike, rows: Tensor) -> TargetsLike:
    """The bound target of the images ``rows`` (indices, in that order; a row may repeat): a
    :class:`~lightning_cam.targets.Target` selected, class indices indexed."""
    if isinstance(target, Target):
        return target.select(rows)
    return target[rows.to(target.device)] if isinstance(target, Tensor) else target



def predictions_of(scores: Tensor) -> Tensor:
    """(N,) the model's prediction: the class of the default target of the scores' shape (top-1 class
    of (N, C), predicted side of one logit, most frequent predicted class of (N, C, H, W))."""
    classes = resolve_target(None, scores).classes
    assert classes is not None
    return classes


def confidence_of(target: Target, scores: Tensor) -> Tensor:
    """(N,) the target's probability on the scores (``softmax(y)_c`` for a class), its value for a
    kind without one (regression, callables)."""
    return target.probability(scores) if target.has_probability else target(scores)


def _nan(n: int, device: torch.device) -> Tensor:
    return torch.full((n,), float("nan"), device=device)


def _shap_weights(net: nn.Module, layer: Any, batch: Inputs, exps: Mapping[str, Any], opts: EvaluationOptions) -> Tensor | None:
    """ShapCAM's channel weights on the compared rows of the batch (zeros elsewhere), None if none."""
    from lightning_cam.methods import explain_all

    sel = batch.shap_on
    if not bool(sel.any()):
        return None
    if "shap" in exps:
        return exps["shap"].weights
    ws = explain_all(
        net, layer, batch.images[sel], methods=["shap"], targets=batch.target.select(sel.nonzero().flatten()),
        method_kwargs=opts.method_kwargs, output_transform=opts.output_transform,
    )["shap"].weights
    out = torch.zeros((batch.images.shape[0], ws.shape[1]), device=ws.device, dtype=ws.dtype)
    out[sel] = ws
    return out


@torch.no_grad()
def score_batch(
    model: nn.Module, batch: Inputs, exps: Mapping[str, Any], shap_weights: Tensor | None, opts: EvaluationOptions,
    layer: Any = None,
) -> tuple[dict[str, MethodReport], int]:
    """Every per-image score of one batch, per method (the curves and the randomisation excepted),
    and the number of forward passes they took; ``layer``: the explained layer(s), needed by the
    ``extra_metrics`` that re-explain."""
    from lightning_cam.evaluation.extra import extra_scores
    from lightning_cam.metrics import pointing_game
    from lightning_cam.metrics.monitoring import complexity, region_energy, row_pearson, row_spearman, sparseness

    xb = batch.images
    b, _, h, w = xb.shape
    device = xb.device
    compare = opts.shap_samples > 0
    sals: dict[str, Tensor] = {}
    finites: dict[str, Tensor] = {}
    for m, e in exps.items():
        sal = e.saliency((h, w))
        finite = torch.isfinite(e.logits).reshape(b, -1).all(1) & torch.isfinite(e.maps).flatten(1).all(1)
        finite &= torch.isfinite(sal).flatten(1).all(1) & batch.image_ok
        sals[m] = torch.where(finite[:, None, None], sal, torch.zeros_like(sal))  # NaN-free for the metrics
        finites[m] = finite
    confidence, run = _confidence_scores(model, batch, exps, sals, opts)
    extra = extra_scores(model, layer, batch, exps, sals, opts)
    out: dict[str, MethodReport] = {}
    for i, (m, e) in enumerate(exps.items()):
        sal = sals[m]
        rows = slice(i * b, (i + 1) * b)
        values: dict[str, Tensor] = {k: v[rows] for k, v in confidence.items()}
        if batch.masks is not None:
            p = pointing_game(sal, batch.masks)
            values["pointing_game"] = torch.where(p.valid, p.hits.float(), _nan(b, device))
            values["energy_pointing_game"] = torch.where(p.valid, p.energy.float(), _nan(b, device))
        energy = None
        if batch.regions:
            energy = torch.stack(
                [torch.where(v, en.float(), _nan(b, device)) for en, v in region_energy(sal, batch.regions).values()], dim=1
            )
        values["sparseness"] = sparseness(sal)
        values["complexity"] = complexity(sal)
        if e.delta is not None:
            values["completeness_residual"] = e.delta.float().abs()
        if compare and e.weights is not None and m != "shap":
            pear = spear = _nan(b, device)
            if shap_weights is not None and e.weights.shape == shap_weights.shape:
                pear, spear = row_pearson(e.weights, shap_weights), row_spearman(e.weights, shap_weights)
            values["shap_pearson"] = torch.where(batch.shap_on, pear, _nan(b, device))
            values["shap_spearman"] = torch.where(batch.shap_on, spear, _nan(b, device))
        values.update(extra[m])
        rep = MethodReport(method=m, saliency=sal, maps=e.maps.detach().float(), finite=finites[m], values=values,
                           region_energy=energy, seconds=float(e.seconds))
        rep.update_finite()
        out[m] = rep
    return out, run


def _confidence_scores(
    model: nn.Module, batch: Inputs, exps: Mapping[str, Any], sals: Mapping[str, Tensor], opts: EvaluationOptions
) -> tuple[dict[str, Tensor], int]:
    """Average Drop and Increase in Confidence (%) of every method, stacked ``(M * B,)`` in method
    order, in one call, and the forward passes it took; ``{}`` for a target kind they have no meaning
    for (:func:`~lightning_cam.evaluation.keys.applies`). The masked images of all methods go
    through the model in batches of ``metric_batch_size``; an image whose map equals an earlier
    method's (to float32 rounding) is scored once."""
    from lightning_cam.metrics import confidence_change

    if not applies("average_drop", batch.target.kind):
        return {}, 0
    xb = batch.images
    b, device = xb.shape[0], xb.device
    source = _first_same_map(list(sals.values()), next((e.weights.shape[1] for e in exps.values() if e.weights is not None), None))
    run = (source == torch.arange(source.numel(), device=device)).nonzero().flatten()
    c = confidence_change(
        model, xb.repeat(len(exps), 1, 1, 1)[run], torch.cat(list(sals.values()))[run],
        targets=batch.target.select(run % b), batch_size=opts.forward_batch(device),
        clean_logits=torch.cat([e.logits for e in exps.values()])[run], deletion=False,
        output_transform=opts.output_transform,
    )
    drop = torch.empty(source.numel(), dtype=c.drop.dtype, device=device).index_put_((run,), c.drop)[source]
    increase = torch.empty(source.numel(), dtype=c.increase.dtype, device=device).index_put_((run,), c.increase)[source]
    return {"average_drop": drop * 100.0, "increase_in_confidence": increase.float() * 100.0}, int(run.numel())


def _first_same_map(sals: list[Tensor], channels: int | None) -> Tensor:
    """(M * B,) for the rows of the methods' maps stacked: the row whose scores each row reuses (itself,
    or the same image's row of the first earlier method whose map is the same, :func:`same_maps`)."""
    b = sals[0].shape[0]
    source = torch.arange(len(sals) * b, device=sals[0].device)
    for i in range(1, len(sals)):
        own = source[i * b : (i + 1) * b]
        for j in range(i):
            same = same_maps(sals[i], sals[j], channels) & (own == torch.arange(i * b, (i + 1) * b, device=own.device))
            own[same] = source[j * b : (j + 1) * b][same]
    return source


def _concat(parts: list[MethodReport]) -> MethodReport:
    """One MethodReport from the per-batch reports of one method (rows in order, seconds summed)."""
    first = parts[0]
    cat = lambda name: None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return replace(
        first, saliency=cat("saliency"), maps=cat("maps"), finite=cat("finite"), region_energy=cat("region_energy"),
        values={k: torch.cat([p.values[k] for p in parts]) for k in first.values}, seconds=sum(p.seconds for p in parts),
    )


def explain_and_score(
    net: nn.Module, layers: Mapping[str, Any], inputs: Inputs, opts: EvaluationOptions, device: torch.device
) -> EvaluationReport:
    """Explain ``inputs`` with every method at every layer (``{name: qualified layer(s)}``) and score
    the maps; the report has no curves and no randomisation check yet."""
    from lightning_cam.methods import explain_all

    n = inputs.images.shape[0]
    parts: dict[str, dict[str, list[MethodReport]]] = {name: {m: [] for m in opts.methods} for name in layers}
    preds, explained, confs, logits = [], [], [], []
    target = inputs.target
    channels: dict[str, int | None] = {}
    timing = {"explain": 0.0, "scores": 0.0, "forwards": 0.0, "backwards": 0.0}
    for s in range(0, n, opts.batch_size):
        batch = inputs.batch(slice(s, min(s + opts.batch_size, n)), device)
        b = batch.images.shape[0]
        for li, (name, qualified) in enumerate(layers.items()):
            t0 = time.perf_counter()
            exps = explain_all(
                net, qualified, batch.images, methods=opts.methods, targets=batch.target,
                method_kwargs=opts.method_kwargs, output_transform=opts.output_transform, fusion=opts.fusion or "mean",
            )
            first = next(iter(exps.values()))
            if li == 0:
                preds.append(predictions_of(first.logits))
                explained.append(batch.target.classes)
                confs.append(confidence_of(batch.target, first.logits.float()))
                logits.append(first.logits.float())
            shap_weights = _shap_weights(net, qualified, batch, exps, opts) if opts.shap_samples > 0 else None
            channels[name] = next((e.weights.shape[1] for e in exps.values() if e.weights is not None), None)
            t1 = time.perf_counter()
            scored, forwards = score_batch(net, batch, exps, shap_weights, opts, qualified)
            timing["explain"] += t1 - t0
            timing["scores"] += time.perf_counter() - t1
            timing["forwards"] += b + forwards  # the shared pass, then x * E per distinct map
            timing["backwards"] += b * _backward_passes(opts.methods)
            for m, rep in scored.items():
                parts[name][m].append(rep)

    report_layers = {}
    for name, qualified in layers.items():
        path = qualified if isinstance(qualified, str) else "+".join(qualified)
        methods = {m: _concat(p) for m, p in parts[name].items()}
        report_layers[name] = LayerReport(layer=name, qualified=path, methods=methods, channels=channels.get(name))
    return EvaluationReport(
        layers=report_layers,
        predictions=torch.cat(preds),
        targets=None if target.classes is None else torch.cat(explained).to(device),
        confidence=torch.cat(confs),
        logits=torch.cat(logits),
        labels=None if inputs.labels is None else inputs.labels.to(device),
        index=torch.arange(n, device=device),
        timing=timing,
        regions=tuple(inputs.regions),
        region_area=_areas(inputs.regions, device),
        target=target,
        kind=target.kind,
    )


def _areas(regions: Mapping[str, Tensor], device: torch.device) -> Tensor | None:
    """(N, R) each region's share of the image's area, ``sum(R) / (H * W)``, per image."""
    if not regions:
        return None
    return torch.stack([m.flatten(1).float().mean(1) for m in regions.values()], dim=1).to(device)


#: Methods that read ``g = dy/dA``: one backward pass through the head, shared by all of them.
GRADIENT_METHODS = frozenset({"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam",
                              "gradcamelementwise"})


def _backward_passes(methods: tuple[str, ...]) -> int:
    """Backward passes through the head per image: one shared by the gradient methods, one for
    LIFT-CAM's DeepLIFT pass (over the actual and the reference rows). Perturbation methods'
    head passes (Ablation-CAM, Score-CAM) are not counted: the count is a floor."""
    return int(bool(GRADIENT_METHODS.intersection(methods))) + int("liftcam" in methods)

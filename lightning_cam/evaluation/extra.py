"""The opt-in metrics of an evaluation (``extra_metrics``), per batch and method.

Each name of :data:`~lightning_cam.evaluation.keys.EXTRA_METRICS` runs one function of
:mod:`lightning_cam.metrics` on the batch's [0, 1] maps at input size, with the method itself as the
explanation function where the metric re-explains (sensitivity, Random Logit, Coherency, ARCC). The
randomised ones draw from a generator seeded with :data:`EXTRA_SEED` at every batch, so every
evaluation perturbs the same image the same way. Cost per image and method, in forward passes
(explanations count as one pass plus the method's own): ROAD ``2 * 9``; sensitivity
:data:`SENSITIVITY_SAMPLES` explanations (Max and Avg share them); Relative Input Stability as many;
Random Logit one explanation; Coherency one; ARCC one explanation and ``2 * 4``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_cam.evaluation.keys import EXTRA_METRICS, applies
from lightning_cam.targets import TargetsLike

if TYPE_CHECKING:
    from lightning_cam.evaluation.options import EvaluationOptions
    from lightning_cam.evaluation.scoring import Inputs

__all__ = ["EXTRA_SEED", "SENSITIVITY_SAMPLES", "TOP_K_SHARE", "check_extra_metrics", "extra_scores"]

#: Seed of the noise of ROAD's imputation and of the robustness metrics, at every batch.
EXTRA_SEED = 0
#: Noisy inputs per image of Max/Avg-Sensitivity and Relative Input Stability (Quantus: 200).
SENSITIVITY_SAMPLES = 8
#: Top-K Intersection's k as a share of the pixels (Quantus' 1000 of 224 x 224 is 2 %).
TOP_K_SHARE = 0.02
_MASKED = ("relevance_rank_accuracy", "top_k_intersection", "attribution_localisation", "localisation_auc")


def check_extra_metrics(names: Sequence[str] | str, owner: str = "") -> tuple[str, ...]:
    """``names`` as a tuple of known opt-in metric names, each once; ValueError naming the bad one."""
    names = [names] if isinstance(names, str) else list(names or ())
    for n in names:
        if n not in EXTRA_METRICS:
            close = difflib.get_close_matches(str(n), list(EXTRA_METRICS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{owner}unknown extra_metrics entry {n!r}{hint}; allowed: {list(EXTRA_METRICS)}; "
                             "e.g. extra_metrics=['road', 'max_sensitivity']")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}duplicate entries in extra_metrics={names}; give each once")
    return tuple(names)


def _explainer(model: nn.Module, layer: Any, method: str, opts: EvaluationOptions):
    """The method as an :data:`~lightning_cam.metrics._common.Explain`: [0, 1] maps at input size, of
    the bound target (re-explaining a perturbed image explains the same target) or of class indices."""
    from lightning_cam.methods import explain_all

    def explain(x: Tensor, targets: TargetsLike) -> Tensor:
        e = explain_all(model, layer, x, methods=[method], targets=targets, method_kwargs=opts.method_kwargs,
                        output_transform=opts.output_transform, fusion=opts.fusion or "mean")[method]
        return e.saliency(tuple(x.shape[-2:]))

    return explain


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(EXTRA_SEED)


def _scores_of(
    model: nn.Module, layer: Any, method: str, exp: Any, sal: Tensor, batch: Inputs, opts: EvaluationOptions
) -> dict[str, Tensor]:
    """The opt-in metrics of one method on one batch, keyed by field name."""
    from lightning_cam import metrics as M

    assert batch.target is not None
    want = {name for name in opts.extra_metrics if all(applies(f, batch.target.kind) for f in EXTRA_METRICS[name])}
    x, t = batch.images, batch.target
    device = x.device
    explain = _explainer(model, layer, method, opts)
    forward = {"batch_size": opts.forward_batch(device), "output_transform": opts.output_transform}
    out: dict[str, Tensor] = {}
    if "road" in want:
        r = M.road(model, x, sal, t, generator=_generator(device), clean_logits=exp.logits, **forward)
        out.update(road=r.combined, road_morf=r.morf, road_lerf=r.lerf)
    if want & {"max_sensitivity", "avg_sensitivity"}:
        s = M.sensitivity(explain, x, t, sal, nr_samples=SENSITIVITY_SAMPLES, generator=_generator(device))
        out.update({k: v for k, v in (("max_sensitivity", s.max), ("avg_sensitivity", s.avg)) if k in want})
    if "relative_input_stability" in want:
        out["relative_input_stability"] = M.relative_input_stability(
            explain, x, t, sal, nr_samples=SENSITIVITY_SAMPLES, generator=_generator(device))
    if "random_logit" in want:
        out["random_logit"] = M.random_logit(explain, x, t, exp.logits.shape[1], sal, generator=_generator(device))
    if "arcc" in want:
        a = M.arcc(model, explain, x, sal, t, generator=_generator(device), batch_size=forward["batch_size"])
        out["arcc"] = a.arcc
        if "coherency" in want:
            out["coherency"] = a.coherency
    elif "coherency" in want:
        out["coherency"] = M.coherency(explain, x, sal, t)
    if batch.masks is not None:
        k = max(1, round(TOP_K_SHARE * sal.shape[-2] * sal.shape[-1]))
        funcs = {"relevance_rank_accuracy": M.relevance_rank_accuracy, "attribution_localisation": M.attribution_localisation,
                 "localisation_auc": M.localisation_auc, "top_k_intersection": lambda s, m: M.top_k_intersection(s, m, k=k)}
        out.update({name: funcs[name](sal, batch.masks) for name in _MASKED if name in want})
    return {k: v.to(device) for k, v in out.items()}


def extra_scores(
    model: nn.Module, layer: Any, batch: Inputs, exps: Mapping[str, Any], sals: Mapping[str, Tensor], opts: EvaluationOptions
) -> dict[str, dict[str, Tensor]]:
    """``{method: {field: (B,) values}}`` of the opt-in metrics (``opts.extra_metrics``) on one batch.
    The mask-based ones are absent without masks, and those without a meaning for the target's kind
    (:func:`~lightning_cam.evaluation.keys.left_out`) are absent too."""
    if not opts.extra_metrics:
        return {m: {} for m in exps}
    return {m: _scores_of(model, layer, m, e, sals[m], batch, opts) for m, e in exps.items()}

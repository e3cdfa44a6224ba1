"""Insertion / deletion curves for a report: which (image, method) pairs to run, then running them.

:func:`plan_curves` decides once which pairs need forward passes: for each image, a method whose
map equals an earlier method's map to float32 rounding (:func:`same_maps`; e.g. LIFT-CAM and
Ablation-CAM, or Grad-CAM and XGrad-CAM, on a GAP + linear head) reuses that method's curves (the
curves depend on the pixel order only). The same plan gives the cost (:func:`curve_forwards`) and
the work (:func:`add_curves`). ``rows`` restricts the curves to a subset of the images
(:func:`curve_subset`: seeded, so the same images at every evaluation); the other images get NaN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from lightning_cam.evaluation.options import EvaluationOptions
from lightning_cam.evaluation.report import EvaluationReport, MethodReport
from lightning_cam.metrics._common import Score
from lightning_cam.targets import TargetsLike

__all__ = ["CurvePlan", "add_curves", "curve_forwards", "curve_points", "curve_score", "curve_subset", "plan_curves", "same_maps"]

_CURVE_KEYS = ("insertion", "deletion", "insertion_curve", "deletion_curve")


def same_maps(a: Tensor, b: Tensor, channels: int | None) -> Tensor:
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


def curve_subset(n: int, k: int | None, seed: int = 0) -> Tensor:
    """(n,) bool: a seeded subset of ``k`` of ``n`` images (all when ``k`` is None or >= n).

    The same ``(n, k, seed)`` always gives the same images, and a larger ``k`` keeps the smaller
    subset's images (a prefix of one seeded permutation)."""
    rows = torch.ones(n, dtype=torch.bool)
    if k is None or k >= n:
        return rows
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    rows[:] = False
    rows[order[:k]] = True
    return rows


def curve_points(size: tuple[int, int], step: int | None = None, n_steps: int | None = None) -> int:
    """``n``: the curves have ``n + 1`` points (``n_steps`` capped at H*W, or ``ceil(H*W / step)``)."""
    hw = int(size[0]) * int(size[1])
    return -(-hw // int(step)) if step is not None else min(int(n_steps or 16), hw)


@dataclass(frozen=True)
class CurvePlan:
    """Per layer and method: ``compute`` (N,) bool, the rows that need forward passes, and
    ``copies``: ``[(earlier method, (N,) bool rows)]`` whose curves are copied instead."""

    compute: dict[str, dict[str, Tensor]]
    copies: dict[str, dict[str, list[tuple[str, Tensor]]]]

    @property
    def pairs(self) -> int:
        """(image, method) pairs that run forward passes."""
        return sum(int(rows.sum()) for per_layer in self.compute.values() for rows in per_layer.values())


def plan_curves(report: EvaluationReport, rows: Tensor | None = None) -> CurvePlan:
    """Which pairs run and which copy an earlier method's curves (only ``rows``, default all; never
    an image already flagged non-finite for that method: its curves stay NaN)."""
    device = report.predictions.device
    todo = torch.ones(report.num_images, dtype=torch.bool, device=device) if rows is None else rows.to(device).bool()
    compute: dict[str, dict[str, Tensor]] = {}
    copies: dict[str, dict[str, list[tuple[str, Tensor]]]] = {}
    for name, lrep in report.layers.items():
        compute[name], copies[name] = {}, {}
        done: list[str] = []
        for m, r in lrep.methods.items():
            shared = torch.zeros_like(todo)
            copies[name][m] = []
            mine = todo if r.finite is None else todo & r.finite.to(device).bool()  # never a non-finite image
            for prev in done:
                same = same_maps(r.saliency, lrep.methods[prev].saliency, lrep.channels) & mine & ~shared
                if bool(same.any()):
                    copies[name][m].append((prev, same))
                    shared |= same
            compute[name][m] = mine & ~shared
            done.append(m)
    return CurvePlan(compute=compute, copies=copies)


def curve_forwards(report: EvaluationReport, rows: Tensor | None = None, step: int | None = None,
                   n_steps: int | None = 16) -> int:
    """Forward passes :func:`add_curves` will run: the pairs of the plan x ``2 n``."""
    size = tuple(next(r for _, _, r in report.items()).saliency.shape[-2:])
    return plan_curves(report, rows).pairs * 2 * curve_points(size, step, n_steps)


def _existing_curves(r: MethodReport) -> dict[str, Tensor]:
    """The curve fields ``r`` already holds (cloned), by key."""
    out = {k: r.values.get(k) for k in ("insertion", "deletion")}
    out.update(insertion_curve=r.insertion_curve, deletion_curve=r.deletion_curve)
    return {k: v.clone() for k, v in out.items() if v is not None}


def curve_rows_of(report: EvaluationReport, rows: Tensor | None, device: torch.device) -> Tensor:
    """(N,) bool: the rows scored so far and ``rows`` (all when ``rows`` is None)."""
    new = torch.ones(report.num_images, dtype=torch.bool, device=device) if rows is None else rows.to(device).bool()
    return new if report.curve_rows is None else new | report.curve_rows.to(device)


def curve_score(report: EvaluationReport) -> Score:
    """The score the curves follow: the target's probability (``"softmax"``, the RISE protocol) when
    it has one, else its value (``"logit"``: regression outputs, per-image callables)."""
    return "softmax" if report.target is None or report.target.has_probability else "logit"


def _curve_target(report: EvaluationReport, rows: Tensor) -> TargetsLike:
    """The report's bound target of the images ``rows`` (its explained classes for a report without one)."""
    return report.explained[rows] if report.target is None else report.target.select(rows)


@torch.no_grad()
def add_curves(
    report: EvaluationReport,
    model: nn.Module,
    images: Tensor,
    options: EvaluationOptions | None = None,
    rows: Tensor | None = None,
) -> EvaluationReport:
    """``report`` with insertion / deletion AUCs and curves for every layer and method.

    Uses the report's saliency maps, bound target and clean logits (no clean forward pass), following
    the target's probability, or its value for a kind without one (:func:`curve_score`),
    and the plan of :func:`plan_curves` (shared curves marked in ``shared_curves``). ``rows``: the
    images to score (default all; curves of rows added before are kept, others are NaN;
    ``curve_rows`` records the scored rows). Images whose
    curves are not finite are marked in ``MethodReport.finite``.
    """
    from lightning_cam.layers import unwrap_model
    from lightning_cam.metrics import insertion_deletion

    opts = options or EvaluationOptions()
    net = unwrap_model(model)
    n = images.shape[0]
    device = report.predictions.device
    plan = plan_curves(report, rows)
    t0 = time.perf_counter()
    forwards = 0
    fractions = None
    layers = {}
    for name, lrep in report.layers.items():
        methods = {}
        for m, r in lrep.methods.items():
            data = _existing_curves(r)  # curves added earlier for other rows are kept
            for prev, same in plan.copies[name][m]:
                for k in _CURVE_KEYS:
                    src = getattr(methods[prev], k)
                    data.setdefault(k, torch.full_like(src, float("nan")))[same] = src[same]
            need = plan.compute[name][m].nonzero().flatten()
            for s in range(0, need.numel(), opts.batch_size):
                idx = need[s : s + opts.batch_size]
                res = insertion_deletion(
                    net, images[idx.cpu()].to(device), r.saliency[idx], targets=_curve_target(report, idx),
                    batch_size=opts.forward_batch(device), clean_logits=report.logits[idx],
                    output_transform=opts.output_transform, score=curve_score(report), **opts.curve_steps,
                )
                fractions = res.fractions
                forwards += idx.numel() * (res.insertion_curve.shape[1] + res.deletion_curve.shape[1] - 2)
                for k in _CURVE_KEYS:
                    v = getattr(res, k)
                    data.setdefault(k, torch.full((n, *v.shape[1:]), float("nan"), dtype=v.dtype, device=device))[idx] = v
            shared = torch.zeros(n, dtype=torch.bool, device=device) if r.shared_curves is None else r.shared_curves.clone()
            for _, same in plan.copies[name][m]:
                shared |= same
            new = replace(r, values={**r.values, "insertion": data.get("insertion"), "deletion": data.get("deletion")},
                          insertion_curve=data.get("insertion_curve"), deletion_curve=data.get("deletion_curve"),
                          shared_curves=shared)
            new.values = {k: v for k, v in new.values.items() if v is not None}
            new.update_finite(curve_rows_of(report, rows, device))
            methods[m] = new
        layers[name] = replace(lrep, methods=methods)
    curve_rows = curve_rows_of(report, rows, device)
    timing = dict(report.timing, curves=report.timing.get("curves", 0.0) + time.perf_counter() - t0)
    timing["forwards"] = timing.get("forwards", 0.0) + forwards
    timing["curve_forwards"] = float(forwards)
    return replace(report, layers=layers, fractions=fractions, timing=timing, curve_rows=curve_rows)

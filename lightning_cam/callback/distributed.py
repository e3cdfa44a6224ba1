"""Share the held-out set across ranks and put the per-image results back together.

Rank ``r`` of ``W`` evaluates images ``r, r + W, r + 2W ...``; the per-image
tensors are padded to ``ceil(N / W)`` rows, gathered with the strategy's
``all_gather`` and re-interleaved, so every rank ends with the report a single
process would have computed (same images, same order). Only Lightning's
strategy primitives are used (``all_gather``, ``reduce``, ``broadcast``), and
every rank calls them (never guarded by ``is_global_zero``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from lightning_cam.evaluation.report import EvaluationReport, map_tensors

__all__ = ["any_rank", "gather_padded", "gather_report", "pad_rows", "pad_share", "shard_rows", "zero_seconds"]


def shard_rows(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """Rows of this rank (``rank::world``; ``[0]`` as a dummy row when it has none) and how many are real."""
    rows = list(range(rank, n, world))
    return (rows or [0]), len(rows)


def pad_rows(report: EvaluationReport, rows: int) -> EvaluationReport:
    """Every per-image tensor padded with zeros (or cut) to ``rows`` rows, so ranks gather equal shapes."""

    def pad(t: Tensor) -> Tensor:
        if t.ndim == 0 or t is report.fractions:
            return t
        if t.shape[0] >= rows:
            return t[:rows]
        return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])

    return map_tensors(report, pad)


def _seconds(report: EvaluationReport) -> Tensor:
    return torch.tensor([r.seconds for _, _, r in report.items()], dtype=torch.float64)


def pad_share(local: EvaluationReport, n: int, world: int) -> EvaluationReport:
    """This rank's share padded to ``ceil(N / W)`` rows, the shape every rank gathers (itself on one process)."""
    return local if world <= 1 else pad_rows(local, max(1, math.ceil(n / world)))


def gather_padded(strategy: Any, padded: EvaluationReport, local: EvaluationReport, n: int, world: int) -> EvaluationReport:
    """The full report (N images, global order) on every rank from each rank's padded share (a
    collective: every rank calls it); per-method ``seconds`` are summed over ranks."""
    if world <= 1:
        return padded
    device = padded.predictions.device

    def gather(t: Tensor) -> Tensor:
        if t is padded.fractions or t.ndim == 0:
            return t
        is_bool = t.dtype == torch.bool  # gloo gathers no bool tensors
        g = strategy.all_gather((t.to(torch.uint8) if is_bool else t).contiguous())  # (W, m_pad, ...)
        g = g.transpose(0, 1).reshape(-1, *g.shape[2:])[:n]
        return g.bool() if is_bool else g

    full = map_tensors(padded, gather)
    seconds = strategy.reduce(_seconds(local).to(device), reduce_op="sum").cpu().tolist()
    layers = {}
    it = iter(seconds)
    for name, lrep in full.layers.items():
        layers[name] = replace(lrep, methods={m: replace(r, seconds=float(next(it))) for m, r in lrep.methods.items()})
    return replace(full, layers=layers)


def gather_report(strategy: Any, local: EvaluationReport, count: int, n: int, world: int) -> EvaluationReport:
    """The full report on every rank from each rank's ``local`` share (``count`` real rows, images
    ``rank::world``): :func:`pad_share` then :func:`gather_padded`."""
    return gather_padded(strategy, pad_share(local, n, world), local, n, world)


def any_rank(strategy: Any, flag: bool, world: int) -> bool:
    """Whether ``flag`` holds on any rank (a collective: every rank must call it)."""
    return flag if world <= 1 else bool(strategy.reduce_boolean_decision(flag, all=False))


def zero_seconds(report: EvaluationReport) -> EvaluationReport:
    """``report`` with every method's explanation seconds zero (a rank's dummy row explains nothing)."""
    return replace(report, layers={
        n: replace(lr, methods={m: replace(r, seconds=0.0) for m, r in lr.methods.items()})
        for n, lr in report.layers.items()
    })

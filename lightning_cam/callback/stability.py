"""The stability series: each evaluation's maps against the previous and the first evaluation's.

Per image and method, :func:`lightning_cam.metrics.spearman` of this evaluation's raw map (layer
resolution) with the map of the previous evaluation and of the first one, stored in the report's
``stability`` / ``stability_first`` fields (absent at the first evaluation). The reference maps
are small (N x h x w per layer and method, on the CPU) and part of the callback's checkpoint
state, so a resumed run continues the series.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_cam.evaluation.report import EvaluationReport
from lightning_cam.metrics.monitoring import spearman

__all__ = ["StabilityTracker"]


class StabilityTracker:
    """Keeps the first and the previous maps per (layer, method); :meth:`update` fills a report."""

    def __init__(self) -> None:
        self.first: dict[str, dict[str, Tensor]] = {}
        self.previous: dict[str, dict[str, Tensor]] = {}
        self.count = 0

    def update(self, report: EvaluationReport) -> None:
        """Set ``stability`` / ``stability_first`` of every method of ``report`` (when a reference of
        the same shape exists), then make its maps the new previous ones (and the first ones, the
        first time). A held-out set of another size restarts that method's series."""
        for layer, method, rep in report.items():
            if rep.maps is None:
                continue
            maps = rep.maps.detach().float().cpu()
            prev = self.previous.get(layer, {}).get(method)
            first = self.first.get(layer, {}).get(method)
            if prev is not None and prev.shape == maps.shape and first is not None and first.shape == maps.shape:
                rep.values["stability"] = spearman(maps, prev).to(rep.maps.device)
                rep.values["stability_first"] = spearman(maps, first).to(rep.maps.device)
            else:
                self.first.setdefault(layer, {})[method] = maps.clone()
            self.previous.setdefault(layer, {})[method] = maps.clone()
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "previous": self.previous, "count": self.count}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.first = {k: dict(v) for k, v in (state.get("first") or {}).items()}
        self.previous = {k: dict(v) for k, v in (state.get("previous") or {}).items()}
        self.count = int(state.get("count", 0))

"""Alerts: a warning, once per key, when a logged score crosses its threshold (``alert={...}``).

``alert={"energy/border": 0.4}`` watches ``<prefix>/[<layer>/]<method>/energy/border`` of every
method (``"class/circle/energy/border"`` a per-class key). A threshold is crossed in the metric's
bad direction (:data:`~lightning_cam.evaluation.keys.METRIC_TABLE`, :func:`region_spec`): below it for
a higher-is-better metric (``pointing_game``, ``energy/object``), above it for every other one
(``energy/border``, ``energy/marker``, ``deletion``, a region without a direction). Each key warns
once per run (the fired keys are checkpointed): in the console (``logging`` and ``warnings.warn``)
and, with a ``WandbLogger``, in the run's summary (``cam/alerts``: every alert so far).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_cam.evaluation.keys import CLASS_PREFIX, ENERGY_PREFIX, METRIC_NAMES, METRIC_TABLE, MetricSpec, parse_key, region_spec

__all__ = ["Alert", "AlertTracker", "check_alerts"]

_EXAMPLE = "e.g. alert={'energy/border': 0.4} or alert={'class/circle/energy/border': 0.5, 'pointing_game': 0.5}"


def _spec(metric: str) -> MetricSpec | None:
    """The spec of a metric name of the table or ``energy/<region>``; None otherwise."""
    if metric.startswith(f"{ENERGY_PREFIX}/") and metric.count("/") == 1:
        return region_spec(metric.split("/", 1)[1])
    return next((m for m in METRIC_TABLE if m.name == metric), None)


def _metric_of(key: str) -> str:
    """The metric part of an alert key (``class/<name>/`` stripped)."""
    parts = key.split("/")
    return "/".join(parts[2:]) if len(parts) > 2 and parts[0] == CLASS_PREFIX else key


def check_alerts(alert: Mapping[str, Any] | None, owner: str = "") -> dict[str, float]:
    """``alert`` as ``{metric key: threshold}``, checked (known metric, finite threshold)."""
    if alert is None:
        return {}
    if not isinstance(alert, Mapping) and type(alert).__name__ != "DictConfig":
        raise ValueError(f"{owner}alert must be a dict {{metric: threshold}}, got {alert!r}; {_EXAMPLE}")
    out: dict[str, float] = {}
    for key, value in dict(alert).items():
        if not isinstance(key, str) or _spec(_metric_of(key)) is None:
            raise ValueError(
                f"{owner}alert key {key!r} is not a metric: use a name among {list(METRIC_NAMES)}, "
                f"'energy/<region>' or 'class/<class name>/<metric>'; {_EXAMPLE}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{owner}alert[{key!r}] must be a finite number, got {value!r}; {_EXAMPLE}")
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class Alert:
    """One crossed threshold: the logged ``key``, its ``value``, the ``threshold`` and the comparison."""

    key: str
    value: float
    threshold: float
    above: bool

    def message(self, when: str) -> str:
        sign = ">" if self.above else "<"
        return f"{self.key} = {self.value:.4f} {sign} {self.threshold:g} ({when})"


@dataclass
class AlertTracker:
    """The thresholds and the keys that have warned already (once per key)."""

    thresholds: dict[str, float]
    fired: set[str] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)

    def check(self, scalars: Mapping[str, float], prefix: str) -> list[Alert]:
        """The keys of ``prefix`` that cross their threshold for the first time (then marked as fired)."""
        out = []
        for key, value in scalars.items():
            parsed = parse_key(key)
            if parsed is None or parsed.prefix != prefix or key in self.fired:
                continue
            name = parsed.metric if parsed.class_name is None else f"{CLASS_PREFIX}/{parsed.class_name}/{parsed.metric}"
            threshold = self.thresholds.get(name)
            if threshold is None or not math.isfinite(value):
                continue
            above = _spec(parsed.metric).direction != "higher"  # type: ignore[union-attr]
            if (value > threshold) if above else (value < threshold):
                self.fired.add(key)
                out.append(Alert(key, float(value), threshold, above))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"fired": sorted(self.fired), "messages": list(self.messages)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        self.fired = set((state or {}).get("fired", ()))
        self.messages = list((state or {}).get("messages", ()))

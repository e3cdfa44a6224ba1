"""The cost budget: keep the callback's time under ``max_overhead`` x the training time.

The callback measures the training time between two evaluations (from the
start of a training epoch to the start of validation, summed over the epochs
since the last evaluation) and its own time, split into the insertion /
deletion curves (the dominant cost: ``2 * n_steps + 1`` forward passes per
image and method) and everything else (explanations, the other scores,
gathering, logging). When the measured cost is over budget it computes the
curves only every ``k``-th evaluation, the smallest ``k`` with

    other + curves / k <= max_overhead * training time,

so every logged number keeps its protocol and held-out set (only the cadence
of ``insertion`` / ``deletion`` changes), ``k`` never decreases (a steady
cadence), and the callback logs ``cam/curve_every`` and one log line when
``k`` changes. Everything else is still computed and logged at every
evaluation, even when that alone exceeds the budget (then the log line says so).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

__all__ = ["CostBudget"]

log = logging.getLogger("lightning_cam.callback")

MAX_CURVE_EVERY = 1000


@dataclass
class CostBudget:
    """Decides when the curves are computed. ``max_overhead=None`` = no budget (curves every time)."""

    max_overhead: float | None = 0.10
    curve_every: int = 1
    evaluations: int = 0  # fit-time evaluations so far
    train_seconds: float = 0.0  # training time since the last evaluation
    last_overhead: float = float("nan")

    def curves_due(self) -> bool:
        """Whether this (fit-time) evaluation computes the curves."""
        return self.evaluations % self.curve_every == 0

    def add_training_time(self, seconds: float) -> None:
        self.train_seconds += max(0.0, float(seconds))

    def update(self, own_seconds: float, curve_seconds: float, with_curves: bool) -> str | None:
        """Account one fit-time evaluation; returns a message when ``curve_every`` changed."""
        train, self.train_seconds = self.train_seconds, 0.0
        self.evaluations += 1
        self.last_overhead = own_seconds / train if train > 0 else float("nan")
        if self.max_overhead is None or train <= 0 or not with_curves:
            return None
        budget = self.max_overhead * train
        other = max(0.0, own_seconds - curve_seconds)
        if own_seconds <= budget or curve_seconds <= 0:
            return None
        spare = budget - other
        k = MAX_CURVE_EVERY if spare <= 0 else min(MAX_CURVE_EVERY, math.ceil(curve_seconds / spare))
        if k <= self.curve_every:
            return None
        old, self.curve_every = self.curve_every, k
        # keep the cadence aligned: the next evaluation due is a multiple of k
        msg = (
            f"CAMCallback: {own_seconds:.2f} s for {train:.2f} s of training = {100 * own_seconds / train:.0f} % "
            f"> max_overhead {100 * self.max_overhead:.0f} %; insertion/deletion curves ({curve_seconds:.2f} s) "
            f"now every {k}-th evaluation (was {old}); every other score stays at every evaluation "
            f"(logged as cam/curve_every)"
        )
        if spare <= 0:
            msg += f"; the other scores alone take {other:.2f} s, over the budget of {budget:.2f} s: use fewer methods or images"
        return msg

    def state_dict(self) -> dict[str, float]:
        return {"curve_every": self.curve_every, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.curve_every = int(state.get("curve_every", 1))
        self.evaluations = int(state.get("evaluations", 0))

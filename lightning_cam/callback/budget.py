"""The cost budget: the callback's time stays under ``max_overhead`` x the training time.

The callback measures the training time (from the start of each training
epoch to the start of its validation) and its own time. The budget is an
account: every evaluation credits ``max_overhead x`` the training time since
the previous one and debits what the callback spent. Everything but the
insertion / deletion curves (explanations, Average Drop, Increase in
Confidence, pointing games, completeness, grids) is computed at every
evaluation. The curves (``2 n_steps + 1`` forward passes per image and
method, by far the largest cost) are computed when the account holds their
estimated cost (the last measured curve time, or forward passes x the
measured time per forward pass before the first), so:

* every logged number keeps its protocol and held-out set; only the cadence
  of ``insertion`` / ``deletion`` (and the W&B table and curve charts, which
  show them) changes;
* ``<prefix>/curve_every`` logs the cadence the budget affords (``1`` = every
  evaluation; ``k`` = about every k-th; ``0`` = never, the other scores alone
  use the budget), and one log line says when it changes.

``max_overhead=None`` switches the budget off (curves at every evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CostBudget"]


@dataclass
class CostBudget:
    """The account deciding when the curves are computed."""

    max_overhead: float | None = 0.10
    balance: float = 0.0  # seconds the callback may still spend
    train_seconds: float = 0.0  # training time since the last evaluation
    curve_estimate: float | None = None  # seconds of one evaluation's curves (last measured)
    curve_every: int = 1  # cadence the budget affords (logged)
    evaluations: int = 0
    last_train: float = 0.0  # training seconds credited at the current evaluation

    def add_training_time(self, seconds: float) -> None:
        self.train_seconds += max(0.0, float(seconds))

    def credit(self) -> float:
        """Credit this evaluation's share of the budget; returns the training seconds it covers."""
        train, self.train_seconds = self.train_seconds, 0.0
        if self.max_overhead is not None:
            self.balance += self.max_overhead * train
        self.last_train = train
        return train

    def curves_due(self, spent_so_far: float, estimate: float) -> bool:
        """Whether the curves (``estimate`` seconds) fit, after ``spent_so_far`` seconds of this evaluation."""
        if self.max_overhead is None:
            return True
        if self.curve_estimate is not None:
            estimate = self.curve_estimate
        return self.balance - spent_so_far >= estimate

    def debit(self, own_seconds: float, curve_seconds: float | None, estimate: float) -> str | None:
        """Account one evaluation (``curve_seconds`` None: no curves); returns a message when the cadence changed."""
        self.evaluations += 1
        if curve_seconds is not None:
            self.curve_estimate = curve_seconds
        if self.max_overhead is None:
            return None
        self.balance -= own_seconds
        train = self.last_train
        per_eval = self.max_overhead * train
        other = own_seconds - (curve_seconds or 0.0)
        spare = per_eval - other
        cost = self.curve_estimate if self.curve_estimate is not None else estimate
        k = 1 if cost <= spare else (0 if spare <= 0 else math.ceil(cost / spare))  # 0: never affordable
        if k == self.curve_every:
            return None
        old, self.curve_every = self.curve_every, k
        cadence = {0: "the budget affords no curves", 1: "the curves come at every evaluation"}.get(
            k, f"the curves come about every {k}-th evaluation"
        )
        msg = (
            f"CAMCallback: budget max_overhead={self.max_overhead:g} gives {per_eval:.2f} s per evaluation "
            f"({train:.2f} s of training); the scores other than the curves take {other:.2f} s and the "
            f"insertion/deletion curves {cost:.2f} s, so {cadence} (curve_every {k}, was {old}); "
            "every other score at every evaluation."
        )
        if spare <= 0:
            msg += " The other scores alone exceed the budget: use fewer methods or images, or raise max_overhead."
        return msg

    def state_dict(self) -> dict[str, float | int | None]:
        return {"balance": self.balance, "curve_estimate": self.curve_estimate, "curve_every": self.curve_every,
                "evaluations": self.evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.balance = float(state.get("balance", 0.0))
        self.curve_estimate = state.get("curve_estimate")
        self.curve_every = int(state.get("curve_every", 1))
        self.evaluations = int(state.get("evaluations", 0))

"""The cost budget: the callback's time stays near ``max_overhead`` x the training time by
cutting the **size** of the insertion / deletion work, never how often it runs.

Every evaluation explains every held-out image with every method and scores the maps; the curves
(``2 n_steps`` forward passes per image and distinct map, by far the largest cost) are scored on a
fixed, seeded subset of the held-out images (:func:`~lightning_cam.evaluation.curve_subset`). Its
size is chosen once, at the first evaluation of ``fit``, from what that evaluation measured:

* the training seconds before it (``max_overhead`` x them is one evaluation's allowance);
* the seconds it already spent explaining and scoring;
* the seconds per image of the curves, measured on the first ``min(8, N)`` images of the subset
  (always scored: never fewer images than that).

The subset then grows to what the allowance affords (at most N) and stays the same for the whole
run, checkpoint resumes included, so a logged series never mixes image sets; ``<prefix>/curve_images``
logs its size, and one log line says how it was chosen. ``max_overhead=None``: every image.
``trainer.validate`` / ``trainer.test`` score every held-out image (their own keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MIN_CURVE_IMAGES", "CostBudget"]

#: The curves are never scored on fewer images than this (or N when the held-out set is smaller).
MIN_CURVE_IMAGES = 8


@dataclass
class CostBudget:
    """Measures the training time and decides, once, on how many held-out images the curves run."""

    max_overhead: float | None = 0.10
    train_seconds: float = 0.0  # training time since the last evaluation
    curve_images: int | None = None  # the subset size (None until the first evaluation of fit)
    curve_seed: int = 0  # the subset's seed (the held-out seed of the run that chose it)

    def add_training_time(self, seconds: float) -> None:
        self.train_seconds += max(0.0, float(seconds))

    def take_training_time(self) -> float:
        """The training seconds since the last evaluation (and start counting afresh)."""
        train, self.train_seconds = self.train_seconds, 0.0
        return train

    @staticmethod
    def floor(n: int) -> int:
        """The smallest subset: ``min(8, N)`` images."""
        return min(MIN_CURVE_IMAGES, n)

    def choose(self, n: int, train_seconds: float, spent_seconds: float, seconds_per_image: float) -> tuple[int, str]:
        """Fix the subset size for the run: as many images as ``max_overhead x train_seconds - spent_seconds``
        affords at ``seconds_per_image`` (at least :meth:`floor`, at most ``n``); returns it and the log line."""
        low = self.floor(n)
        if self.max_overhead is None:
            k, why = n, "max_overhead=None: no budget"
        else:
            allowance = self.max_overhead * train_seconds
            spare = allowance - spent_seconds
            affordable = math.floor(spare / seconds_per_image) if seconds_per_image > 0 else n
            k = max(low, min(n, affordable))
            why = (
                f"the budget max_overhead={self.max_overhead:g} gives {allowance:.2f} s per evaluation "
                f"({train_seconds:.2f} s of training); explaining and scoring took {spent_seconds:.2f} s and the "
                f"curves take {seconds_per_image:.3f} s per image"
            )
            if k == low and affordable < low:
                why += f"; {low} images (the minimum) exceed it: use fewer methods or raise max_overhead"
        self.curve_images = k
        msg = (
            f"CAMCallback: insertion/deletion on {k} of {n} held-out images at every evaluation ({why}). "
            "The same seeded images at every evaluation; max_overhead=None scores all of them."
        )
        return k, msg

    def state_dict(self) -> dict[str, float | int | None]:
        return {"curve_images": self.curve_images, "curve_seed": self.curve_seed}

    def load_state_dict(self, state: dict) -> None:
        value = (state or {}).get("curve_images")
        self.curve_images = None if value is None else int(value)
        self.curve_seed = int((state or {}).get("curve_seed", 0))

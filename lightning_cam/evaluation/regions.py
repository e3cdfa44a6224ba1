"""Mask-free regions: static image regions in relative coordinates, scored on every held-out set.

A region is named and is either

* a **band** along the image border: a number ``w`` in (0, 0.5), the pixels whose centre lies
  within ``w * side`` of an edge (``w = 1/8``: 8 px of a 64 px image, 44 % of its area);
* a **box** ``(x0, y0, x1, y1)`` in [0, 1] with ``x0 < x1`` and ``y0 < y1`` (x = column,
  y = row, (0, 0) the top-left corner): the pixels whose centre ``((j + 0.5) / W, (i + 0.5) / H)``
  lies in ``[x0, x1) x [y0, y1)``.

Their energy is the same quantity as for a named mask, ``sum(S * R) / sum(S)`` for the
non-negative map ``S`` at input resolution (:func:`lightning_cam.metrics.region_energy`), and the
region's area share ``sum(R) / (H * W)`` is reported beside it: evenly spread saliency scores
the area share, the baseline to compare the energy with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["MASK_FREE_REGIONS", "Region", "active", "check_regions", "region_mask", "static_masks"]

Region = Union[float, tuple[float, float, float, float]]
#: The regions scored by default: the border band (1/8 of the side) and the centre (the middle half
#: of each side, a quarter of the image). ``regions={...}`` adds to them; a ``None`` value removes one.
MASK_FREE_REGIONS: dict[str, Region] = {"border": 0.125, "center": (0.25, 0.25, 0.75, 0.75)}
_EXAMPLE = "e.g. regions={'top_left': (0, 0, 0.2, 0.2), 'border': 0.1} (a box x0, y0, x1, y1 or a border width)"


def _region(name: str, value: Any, owner: str) -> Region:
    """One region value, checked: a band width in (0, 0.5) or a box in [0, 1]."""
    bad = f"{owner}regions[{name!r}] must be a border width in (0, 0.5) or a box (x0, y0, x1, y1) in [0, 1] with x0 < x1, y0 < y1; got {value!r}; {_EXAMPLE}"
    if isinstance(value, bool):
        raise ValueError(bad)
    if isinstance(value, (int, float)):
        if not 0.0 < float(value) < 0.5:
            raise ValueError(bad)
        return float(value)
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(bad) from None
    ok = len(box) == 4 and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box)
    if not ok or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(bad)
    return box  # type: ignore[return-value]


def check_regions(regions: Mapping[str, Any] | None, owner: str = "") -> dict[str, Region | None]:
    """:data:`MASK_FREE_REGIONS` updated with ``regions`` (None: the defaults as they are), checked.
    A ``None`` value switches a region off and stays in the result, so that checking the result
    again gives the same regions; :func:`active` drops the ``None`` entries.

    Accepts dicts and OmegaConf DictConfigs; names must be non-empty and contain no ``/``."""
    if regions is None:
        return dict(MASK_FREE_REGIONS)
    if not isinstance(regions, Mapping) and type(regions).__name__ != "DictConfig":
        raise ValueError(f"{owner}regions must be a dict of named regions, got {regions!r}; {_EXAMPLE}")
    out: dict[str, Region | None] = dict(MASK_FREE_REGIONS)
    for name, value in dict(regions).items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{owner}regions: names must be non-empty strings without '/', got {name!r}; {_EXAMPLE}")
        out[name] = None if value is None else _region(name, value, owner)
    return out


def active(regions: Mapping[str, Region | None]) -> dict[str, Region]:
    """The regions that are on (the checked option without its ``None`` entries)."""
    return {name: r for name, r in regions.items() if r is not None}


def region_mask(region: Region, height: int, width: int) -> Tensor:
    """The (H, W) bool mask of one region (pixel centres, see the module docstring).

    Band of width ``w``: ``min(u, v, 1 - u, 1 - v) < w`` for the pixel centre ``(u, v)`` in relative
    coordinates; box: ``x0 <= u < x1`` and ``y0 <= v < y1``."""
    v = ((torch.arange(height, dtype=torch.float64) + 0.5) / height)[:, None]
    u = ((torch.arange(width, dtype=torch.float64) + 0.5) / width)[None, :]
    if isinstance(region, float):
        edge = torch.minimum(torch.minimum(u, 1 - u), torch.minimum(v, 1 - v))
        return edge < region
    x0, y0, x1, y1 = region
    return (u >= x0) & (u < x1) & (v >= y0) & (v < y1)


def static_masks(regions: Mapping[str, Region], n: int, height: int, width: int) -> dict[str, Tensor]:
    """``{name: (N, H, W) bool}``: each region's mask, the same for every image (an expanded view)."""
    return {name: region_mask(r, height, width).expand(n, height, width) for name, r in regions.items()}

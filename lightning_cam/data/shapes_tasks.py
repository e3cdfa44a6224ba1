"""The shapes data for other tasks: semantic segmentation and multi-label classification.

* :class:`ShapesSegmentation`: the images of :class:`~lightning_cam.data.shapes.ShapesDataset`
  (bit for bit, same seed), the label is the object's mask as a class map: 0 = background,
  ``1 + c`` on the object of class ``c``, so ``num_classes`` = 1 + shapes (7 for the six shapes).
* :class:`ShapesMultiLabel`: 1 to ``max_objects`` (default 3) objects of *distinct* classes per
  image, each in its own quadrant (they never overlap), on the same cluttered background; the
  label is multi-hot (``num_classes``,) float, and every item carries the per-class masks
  ``{"object": union, "<class name>": mask, ...}`` (empty for the absent classes), so the
  explanation of one label can be scored on that label's object.

Both are seeded and deterministic: sample ``i`` is a pure function of the seed, ``i`` and the sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lightning_cam.data.shapes import (
    _CHUNK,
    _MAX_DISTRACTORS,
    CLASSES,
    SHAPES_MEAN,
    SHAPES_STD,
    ShapesBase,
    ShapesDataset,
    _background,
    _paint,
    _shape_masks,
    _to_uint8,
    dihedral,
    normalise,
)

BACKGROUND = "background"
_BG_DRAWS = 21 + 8 * _MAX_DISTRACTORS  # background + distractor draws, the layout of ShapesDataset
_OBJ_DRAWS = 7  # cx, cy, radius, angle, rgb
_QUADRANTS = 4


class ShapesSegmentation(ShapesDataset):
    """Semantic segmentation of the shapes: ``(image, class map, object mask)`` per index.

    Args:
        num_classes: classes of the class map, background included: 1 + the number of shapes
            (3..7; 7 = the six shapes).
        options: ``mean``, ``std``, ``cache``, ``augment`` of :class:`~lightning_cam.data.shapes.ShapesDataset`
            (not its shortcut).

    Returns per item: image float (3,S,S) normalised, the class map long (S,S) (0 = background,
    ``1 + c`` = shape ``c``) and the object mask bool (S,S) (its non-background pixels).
    """

    def __init__(
        self,
        num_samples: int = 5000,
        image_size: int = 64,
        num_classes: int = len(CLASSES) + 1,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if not 3 <= num_classes <= len(CLASSES) + 1:
            raise ValueError(
                f"shapes segmentation: num_classes counts the background, so it must be in 3..{len(CLASSES) + 1}, "
                f"got {num_classes}"
            )
        unknown = set(options) - {"mean", "std", "cache", "augment"}
        if unknown:
            raise TypeError(f"ShapesSegmentation: unexpected options {sorted(unknown)} (mean, std, cache, augment)")
        super().__init__(num_samples, image_size, num_classes - 1, seed, **options)
        self.num_classes = int(num_classes)
        self.classes = (BACKGROUND, *CLASSES[: num_classes - 1])

    @property
    def targets(self) -> torch.Tensor:
        """(N,) the class of each image's object in the class map's numbering (1 + shape class)."""
        return super().targets + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, label, mask = super().__getitem__(index)
        return x, mask.long() * (label + 1), mask


def _sample_multi(seed: int, index: int, num_shapes: int, max_objects: int) -> torch.Tensor:
    """All random draws of multi-label sample ``index``: the number of objects, their classes,
    their quadrants, the background's and the objects' uniforms (see :func:`_render_multi`)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index) + 5_555_555_555)
    count = torch.randint(1, max_objects + 1, (1,), generator=g).float()
    classes = torch.randperm(num_shapes, generator=g)[:max_objects].float()
    cells = torch.randperm(_QUADRANTS, generator=g)[:max_objects].float()
    u = torch.rand(_BG_DRAWS + _OBJ_DRAWS * max_objects, generator=g)
    return torch.cat([count, classes, cells, u])


def _render_multi(
    params: torch.Tensor, size: int, noise_seeds: torch.Tensor, max_objects: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render multi-label samples -> uint8 images (N,3,S,S) and class maps uint8 (N,S,S)
    (0 = background, ``1 + c`` on the object of class ``c``)."""
    n, k, s = params.shape[0], max_objects, float(size)
    count = params[:, 0].long()
    classes = params[:, 1:1 + k].long()
    cells = params[:, 1 + k:1 + 2 * k].long()
    u = params[:, 1 + 2 * k:1 + 2 * k + _BG_DRAWS]
    obj = params[:, 1 + 2 * k + _BG_DRAWS:].view(n, k, _OBJ_DRAWS)
    img = _background(u, size, noise_seeds)
    seg = torch.zeros(n, size, size, dtype=torch.uint8)
    half = s / 2
    for j in range(k):
        col = lambda c: obj[:, j, c].view(n, 1, 1)  # noqa: E731
        r = (0.12 + 0.08 * col(2)) * s  # radius 0.12..0.20 of the side: it fits its quadrant
        x0 = (cells[:, j] % 2).float().view(n, 1, 1) * half
        y0 = (cells[:, j] // 2).float().view(n, 1, 1) * half
        cx = x0 + r + 1 + col(0) * (half - 2 * r - 2)
        cy = y0 + r + 1 + col(1) * (half - 2 * r - 2)
        shapes = _shape_masks(cx, cy, r, 2 * math.pi * col(3), size)
        mask = shapes.gather(1, classes[:, j].view(n, 1, 1, 1).expand(n, 1, size, size)).squeeze(1)
        mask &= (j < count).view(n, 1, 1)
        img = _paint(img, mask, obj[:, j, 4:7])
        seg = torch.where(mask, (classes[:, j] + 1).to(torch.uint8).view(n, 1, 1), seg)
    return _to_uint8(img), seg


class ShapesMultiLabel(ShapesBase):
    """Multi-label shapes: ``(image, multi-hot labels, per-class masks)`` per index.

    Args:
        num_samples: dataset length.
        image_size: side of the square RGB images (>= 16).
        num_classes: use the first ``num_classes`` of :data:`~lightning_cam.data.shapes.CLASSES` (2..6).
        max_objects: 1 to ``max_objects`` objects per image (uniform), of distinct classes,
            each in its own quadrant (1..4, at most ``num_classes``).
        seed, mean, std, cache, augment: as :class:`~lightning_cam.data.shapes.ShapesDataset`.

    Returns per item: image float (3,S,S) normalised, the labels float (num_classes,) (1 where
    the class is in the image) and the region masks ``{"object": union, "<class name>": (S,S)
    bool for every class}`` (empty for the classes not in the image).
    """

    def __init__(
        self,
        num_samples: int = 5000,
        image_size: int = 64,
        num_classes: int = len(CLASSES),
        max_objects: int = 3,
        seed: int = 0,
        mean: Sequence[float] | None = SHAPES_MEAN,
        std: Sequence[float] | None = SHAPES_STD,
        cache: bool = True,
        augment: bool = False,
    ) -> None:
        if not 2 <= num_classes <= len(CLASSES):
            raise ValueError(f"shapes multi-label: num_classes must be in 2..{len(CLASSES)}, got {num_classes}")
        if not 1 <= max_objects <= min(_QUADRANTS, num_classes):
            raise ValueError(
                f"shapes multi-label: max_objects must be in 1..{min(_QUADRANTS, num_classes)} (one quadrant and "
                f"one class per object), got {max_objects}"
            )
        if image_size < 16:
            raise ValueError(f"shapes multi-label: image_size must be >= 16, got {image_size}")
        self.configure(num_samples, image_size, num_classes, seed, mean, std, augment)
        self.max_objects = int(max_objects)
        self._images: torch.Tensor | None = None
        self._maps: torch.Tensor | None = None
        if cache:
            self._images, self._maps = self.render(range(self.num_samples))

    def render(self, indices: Sequence[int] | range) -> tuple[torch.Tensor, torch.Tensor]:
        """Render samples -> uint8 images (N,3,S,S) and class maps uint8 (N,S,S) (0 = background)."""
        indices = list(indices)
        s = self.image_size
        imgs = [torch.zeros(0, 3, s, s, dtype=torch.uint8)]
        maps = [torch.zeros(0, s, s, dtype=torch.uint8)]
        for start in range(0, len(indices), _CHUNK):
            chunk = indices[start:start + _CHUNK]
            params = torch.stack([_sample_multi(self.seed, i, self.num_classes, self.max_objects) for i in chunk])
            noise_seeds = torch.tensor([self.seed * 1_000_003 + i + 7_777_777_777 for i in chunk])
            im, seg = _render_multi(params, s, noise_seeds, self.max_objects)
            imgs.append(im), maps.append(seg)
        return torch.cat(imgs), torch.cat(maps)

    def labels_of(self, class_map: torch.Tensor) -> torch.Tensor:
        """Multi-hot labels float (..., num_classes) of class maps (..., S, S)."""
        present = torch.stack([(class_map == c + 1).flatten(-2).any(-1) for c in range(self.num_classes)], -1)
        return present.float()

    def regions_of(self, class_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"object": union, "<class name>": mask}`` of a class map (S,S) (or a batch of them)."""
        return {"object": class_map > 0, **{name: class_map == c + 1 for c, name in enumerate(self.classes)}}

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised uint8 image (3,S,S) and class map uint8 (S,S) of sample ``index``."""
        index = self._index(index)
        if self._images is not None and self._maps is not None:
            return self._images[index], self._maps[index]
        im, seg = self.render([index])
        return im[0], seg[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        im, seg = self.raw(index)
        if self.augment:
            im, maps = dihedral(im, {"map": seg})
            seg = maps["map"]
        return normalise(im, self.mean, self.std), self.labels_of(seg), self.regions_of(seg)

"""The embedded "shapes" dataset: procedural, seeded, no files, no download.

Every image holds ONE target object of one of six classes

    0 circle, 1 square, 2 triangle, 3 cross, 4 ring, 5 star

at a random position, scale, rotation and colour, on a cluttered background
(a colour gradient + low-frequency texture + pixel noise) with 2-6
*distractors*: thin line segments and small specks. Distractors are never
class shapes (they are thin or tiny while objects have a radius of at least
``0.16 * size``), so the label is unambiguous, and they are drawn under the
object. Each sample comes with the object's ground-truth mask (H, W) bool, so
explanations can be scored with the pointing game.

``shortcut=P`` (default 0: nothing changes, bit for bit) plants a *shortcut*: with
probability ``P`` a small square *marker* whose colour encodes the label
(:data:`MARKER_COLOURS`) is drawn in the image corner farthest from the object. It
is far easier for a CNN than the shape (a saturated, untextured, class-coloured
patch that survives the dihedral augmentation), so a model trained with it can be
right for the wrong reason. ``shortcut_classes=[0]`` draws it on the images of the listed classes
only (a class-specific shortcut, which a mean over all classes hides). Items then carry named regions, ``{"object": mask,
"marker": mask}`` (the marker mask is empty where no marker was drawn), so the share
of saliency energy on the marker can be measured.

Sample ``i`` is a pure function of ``(seed, i, image_size, num_classes)``:
its parameters are drawn from a ``torch.Generator`` seeded with
``seed * 1_000_003 + i``; rendering is vectorised over a batch with
broadcast coordinate grids, e.g. 5000 images of 64x64 in about two seconds
on one CPU core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

# Per-channel statistics of the default dataset (64x64, 6 classes, seed 0),
# measured on 2000 images with ``ShapesDataset(...).stats()``; values in [0, 1]
# before normalisation. Used to normalise and to un-normalise for overlays.
SHAPES_MEAN: tuple[float, float, float] = (0.4983, 0.4941, 0.4966)
SHAPES_STD: tuple[float, float, float] = (0.2104, 0.2126, 0.2087)

# Class-coded marker colours (shortcut option), saturated and far apart in RGB.
MARKER_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.95, 0.05, 0.05), (0.05, 0.85, 0.05), (0.05, 0.15, 0.95),
    (0.95, 0.90, 0.05), (0.90, 0.05, 0.90), (0.05, 0.90, 0.90),
)
REGIONS: tuple[str, ...] = ("object", "marker")

_MAX_DISTRACTORS = 6
_CHUNK = 256


def _sample_params(seed: int, index: int, num_classes: int) -> torch.Tensor:
    """All random draws of sample ``index`` as one float vector (see ``_render``)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))
    # label, cx, cy, radius, angle, obj rgb(3), bg rgb a(3), bg rgb b(3), grad angle,
    # texture freq(2), texture phase(2), texture amp, noise amp, n_distractors,
    # distractors: kind, x0, y0, x1/len, y1/angle, rgb(3) -> 8 each
    label = torch.randint(num_classes, (1,), generator=g).float()
    u = torch.rand(21 + 8 * _MAX_DISTRACTORS, generator=g)
    return torch.cat([label, u])


def check_shortcut_classes(classes: Sequence[int | str] | None, num_classes: int) -> tuple[int, ...] | None:
    """``shortcut_classes`` as class indices (names of :data:`CLASSES` accepted); None = every class."""
    if classes is None:
        return None
    names = CLASSES[:num_classes]
    items = [classes] if isinstance(classes, (int, str)) else list(classes)
    out = []
    for c in items:
        k = names.index(c) if isinstance(c, str) and c in names else c
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < num_classes:
            raise ValueError(
                f"shapes: data.shortcut_classes lists {c!r}, not a class index in 0..{num_classes - 1} or a name "
                f"of {list(names)}; e.g. data.shortcut_classes=[0] (the marker on circles only)"
            )
        out.append(k)
    if not out:
        raise ValueError("shapes: data.shortcut_classes is empty; list a class or use null (every class), e.g. data.shortcut_classes=[0]")
    return tuple(sorted(set(out)))


def _marker_draw(seed: int, index: int) -> float:
    """The uniform draw deciding whether sample ``index`` gets a marker (``< shortcut``); from
    its own generator, so the sample's other parameters do not depend on the option."""
    return float(torch.rand((), generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index) + 3_333_333_333)))


def marker_geometry(size: int) -> tuple[int, int]:
    """Side and inset (px) of the shortcut marker: ``max(3, round(S / 8))`` and ``max(1, round(S / 32))``."""
    return max(3, round(size / 8)), max(1, round(size / 32))


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``xs, ys`` (1, S, S)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    return xs.unsqueeze(0), ys.unsqueeze(0)


def _background(u: torch.Tensor, size: int, noise_seeds: torch.Tensor) -> torch.Tensor:
    """Cluttered background (n,3,S,S) in [0,1]-ish: a two-colour gradient, low-frequency texture,
    pixel noise and 2-6 distractors (thin segments, small specks), from draws ``u[:, 5:18]`` and
    ``u[:, 18], u[:, 21:]``."""
    n = u.shape[0]
    s = float(size)
    col = lambda k: u[:, k].view(n, 1, 1)  # noqa: E731
    xs, ys = _grid(size)
    ca = 0.15 + 0.7 * u[:, 5:8]  # (n,3)
    cb = 0.15 + 0.7 * u[:, 8:11]
    ga = 2 * math.pi * col(11)
    t = ((xs - s / 2) * torch.cos(ga) + (ys - s / 2) * torch.sin(ga)) / s + 0.5  # ~[0,1]
    t = t.clamp(0, 1).unsqueeze(1)  # (n,1,S,S)
    img = ca.view(n, 3, 1, 1) * (1 - t) + cb.view(n, 3, 1, 1) * t
    f1 = (1 + 4 * col(12)) * 2 * math.pi / s
    f2 = (1 + 4 * col(13)) * 2 * math.pi / s
    tex = torch.sin(xs * f1 + 2 * math.pi * col(14)) * torch.sin(ys * f2 + 2 * math.pi * col(15))
    img = img + (0.06 + 0.1 * col(16)).unsqueeze(1) * tex.unsqueeze(1)
    noise = torch.stack([
        torch.rand(3, size, size, generator=torch.Generator().manual_seed(int(ns))) for ns in noise_seeds
    ]) if n else torch.zeros(0, 3, size, size)
    img = img + (0.04 + 0.08 * col(17)).unsqueeze(1) * (noise - 0.5)

    # distractors: thin segments and small specks (never class shapes)
    n_dis = 2 + (u[:, 18] * (_MAX_DISTRACTORS - 1)).long()  # 2..6
    for d in range(_MAX_DISTRACTORS):
        base = 21 + 8 * d
        active = (d < n_dis).view(n, 1, 1)
        kind = u[:, base] < 0.55  # True: segment, False: speck
        x0 = col(base + 1) * s
        y0 = col(base + 2) * s
        length = (0.2 + 0.3 * col(base + 3)) * s
        ang = math.pi * col(base + 4)
        dx, dy = torch.cos(ang), torch.sin(ang)
        px, py = xs - x0, ys - y0
        along = (px * dx + py * dy).clamp(0, 1e9)
        along = torch.minimum(along, length)
        dist = torch.sqrt((px - along * dx) ** 2 + (py - along * dy) ** 2)
        seg = dist <= max(0.5, s / 64 * 0.6)
        speck = (px ** 2 + py ** 2) <= (max(0.8, s / 64 * 1.6)) ** 2
        m = torch.where(kind.view(n, 1, 1), seg, speck) & active
        rgb = u[:, base + 5:base + 8].view(n, 3, 1, 1)
        img = torch.where(m.unsqueeze(1), rgb, img)
    return img


def _shape_masks(cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, th: torch.Tensor, size: int) -> torch.Tensor:
    """The six class shapes (n,6,S,S) bool centred at ``cx, cy`` (n,1,1), radius ``r``, rotation ``th``."""
    xs, ys = _grid(size)
    dxo, dyo = (xs - cx) / r, (ys - cy) / r
    pu = dxo * torch.cos(th) + dyo * torch.sin(th)
    pv = -dxo * torch.sin(th) + dyo * torch.cos(th)
    rho2 = pu ** 2 + pv ** 2
    circle = rho2 <= 1.0
    square = torch.maximum(pu.abs(), pv.abs()) <= 0.7  # corners at 0.99 r
    tri = torch.ones_like(circle)
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        tri = tri & (pu * math.cos(a) + pv * math.sin(a) <= 0.5)
    arm = 0.3
    cross = ((pu.abs() <= arm) & (pv.abs() <= 0.95)) | ((pv.abs() <= arm) & (pu.abs() <= 0.95))
    ring = (rho2 <= 1.0) & (rho2 >= 0.55 ** 2)
    phi = torch.atan2(pv, pu)
    star = torch.sqrt(rho2) <= 0.42 + 0.58 * ((1 + torch.cos(5 * phi)) / 2) ** 2
    return torch.stack([circle, square, tri, cross, ring, star], 1)


def _paint(img: torch.Tensor, mask: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """Paint colour ``obj`` (n,3) on ``mask`` (n,S,S), pushed away from the local background
    when their mean gap is under 0.3 (guaranteed contrast)."""
    n = img.shape[0]
    bg_mean = (img * mask.unsqueeze(1)).sum((2, 3)) / mask.sum((1, 2)).clamp(min=1).unsqueeze(1)  # (n,3)
    lum_gap = (obj - bg_mean).abs().mean(1, keepdim=True)
    far = (bg_mean > 0.5).float()  # push towards the opposite end
    obj = torch.where(lum_gap < 0.3, far * 0.1 * obj + (1 - far) * (0.75 + 0.25 * obj), obj)
    return torch.where(mask.unsqueeze(1), obj.view(n, 3, 1, 1), img)


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _render(
    params: torch.Tensor, size: int, noise_seeds: torch.Tensor, marker: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Render a batch from parameter vectors ``params`` (N, P) -> uint8 (N,3,S,S), mask (N,S,S),
    labels (N,), marker masks (N,S,S) (None when ``marker`` (N,) bool is None)."""
    n = params.shape[0]
    s = float(size)
    label = params[:, 0].long()
    u = params[:, 1:]
    col = lambda k: u[:, k].view(n, 1, 1)  # noqa: E731
    img = _background(u, size, noise_seeds)

    # ---- target object --------------------------------------------------------------
    r = (0.16 + 0.14 * col(2)) * s  # radius 0.16..0.30 of the side
    cx = r + 1 + col(0) * (s - 2 * r - 2)  # the object never touches the border
    cy = r + 1 + col(1) * (s - 2 * r - 2)
    shapes = _shape_masks(cx, cy, r, 2 * math.pi * col(3), size)  # (n,6,S,S)
    mask = shapes.gather(1, label.view(n, 1, 1, 1).expand(n, 1, size, size)).squeeze(1)
    img = _paint(img, mask, torch.stack([u[:, 19], u[:, 20], u[:, 4]], 1))

    marker_mask = None
    if marker is not None:
        # a class-coloured square in the corner farthest from the object (never overlaps it:
        # the object lies within ~r of its centre, the far corner is >= S/sqrt(2) away)
        xs, ys = _grid(size)
        side, inset = marker_geometry(size)
        x0 = torch.where(cx > s / 2, torch.full_like(cx, inset), torch.full_like(cx, size - inset - side))
        y0 = torch.where(cy > s / 2, torch.full_like(cy, inset), torch.full_like(cy, size - inset - side))
        px, py = xs - 0.5, ys - 0.5  # integer pixel coordinates
        marker_mask = (px >= x0) & (px < x0 + side) & (py >= y0) & (py < y0 + side) & marker.view(n, 1, 1)
        colours = torch.tensor(MARKER_COLOURS, dtype=img.dtype)[label]  # (n,3)
        img = torch.where(marker_mask.unsqueeze(1), colours.view(n, 3, 1, 1), img)

    return _to_uint8(img), mask, label, marker_mask


def dihedral(im: torch.Tensor, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A random dihedral transform (rotation by k*90 degrees, then a flip with probability 1/2)
    of image ``im`` (C,S,S) and of the maps ``{name: (S,S)}`` alike; draws from the global torch RNG."""
    k = int(torch.randint(4, ()))
    im = torch.rot90(im, k, (1, 2))
    maps = {r: torch.rot90(m, k, (0, 1)) for r, m in maps.items()}
    if bool(torch.rand(()) < 0.5):
        im = im.flip(2)
        maps = {r: m.flip(1) for r, m in maps.items()}
    return im, maps


def normalise(im: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """uint8 image -> float in [0, 1], then ``(x - mean) / std`` when both are given."""
    x = im.float() / 255.0
    if mean is not None and std is not None:
        x = (x - mean) / std
    return x


class ShapesBase(Dataset):
    """What every shapes dataset keeps: its length, image size, classes, seed, normalisation and
    whether it augments (see :meth:`configure`)."""

    classes = CLASSES

    def configure(self, num_samples: int, image_size: int, num_classes: int, seed: int,
              mean: Sequence[float] | None, std: Sequence[float] | None, augment: bool) -> None:
        """Store the common options (``classes``: the first ``num_classes`` of :data:`CLASSES`)."""
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.classes = CLASSES[:num_classes]
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return self.num_samples

    def _index(self, index: int) -> int:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        return index


class ShapesDataset(ShapesBase):
    """Procedural shapes: ``(image, label, mask)`` per index.

    Args:
        num_samples: dataset length.
        image_size: side of the square RGB images (default 64; >= 16 is sensible).
        num_classes: use the first ``num_classes`` of :data:`CLASSES` (2..6).
        seed: dataset seed; use different seeds for train / val / test.
        mean, std: normalisation applied to the returned float image
            (``None`` -> un-normalised in [0, 1]).
        cache: render everything once (vectorised) at construction and keep it as
            uint8 (``3*S*S + S*S`` bytes per image); otherwise render on the fly.
        augment: random dihedral transform (rotation by k*90 degrees, optional flip) of
            image and mask in ``__getitem__`` (the classes are invariant to it); uses the
            global torch RNG, so it follows ``seed_everything``. For training sets only.
        shortcut: probability in [0, 1] of a class-coded marker (see the module docstring);
            0 (default) renders exactly the images of earlier versions.
        shortcut_classes: the classes (indices or names) whose images may get the marker; None
            (default) = every class. ``[0]``: a shortcut for circles only (the other classes' images
            are those of ``shortcut=0``, bit for bit).

    Returns per item: image float (3,S,S) normalised, label long (), and the object mask bool
    (S,S); with ``shortcut > 0`` the third element is the dict of named regions
    ``{"object": (S,S) bool, "marker": (S,S) bool}`` instead.
    """

    def __init__(
        self,
        num_samples: int = 5000,
        image_size: int = 64,
        num_classes: int = 6,
        seed: int = 0,
        mean: Sequence[float] | None = SHAPES_MEAN,
        std: Sequence[float] | None = SHAPES_STD,
        cache: bool = True,
        augment: bool = False,
        shortcut: float = 0.0,
        shortcut_classes: Sequence[int | str] | None = None,
    ) -> None:
        if not 0.0 <= float(shortcut) <= 1.0:
            raise ValueError(
                f"shapes: shortcut is the probability of a class-coded marker, in [0, 1]; got {shortcut!r} "
                "(e.g. data.shortcut=0.9)"
            )
        if not 2 <= num_classes <= len(CLASSES):
            raise ValueError(f"shapes: num_classes must be in 2..{len(CLASSES)}, got {num_classes}")
        if image_size < 8:
            raise ValueError(f"shapes: image_size must be >= 8, got {image_size}")
        self.configure(num_samples, image_size, num_classes, seed, mean, std, augment)
        self.num_shapes = int(num_classes)
        self.shortcut = float(shortcut)
        self.shortcut_classes = check_shortcut_classes(shortcut_classes, num_classes)
        self._images: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._markers: torch.Tensor | None = None
        if cache:
            self._images, self._masks, self._labels, self._markers = self._render_all(range(self.num_samples))

    @property
    def has_marker(self) -> bool:
        """Whether items carry named regions (``shortcut > 0``)."""
        return self.shortcut > 0

    def _render_all(
        self, indices: Sequence[int] | range
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        indices = list(indices)
        s = self.image_size
        if not indices:
            empty = torch.zeros(0, s, s, dtype=torch.bool)
            return (torch.zeros(0, 3, s, s, dtype=torch.uint8), empty, torch.zeros(0, dtype=torch.long),
                    empty if self.has_marker else None)
        imgs, masks, labels, markers = [], [], [], []
        for start in range(0, len(indices), _CHUNK):
            chunk = indices[start:start + _CHUNK]
            params = torch.stack([_sample_params(self.seed, i, self.num_shapes) for i in chunk])
            noise_seeds = torch.tensor([self.seed * 1_000_003 + i + 7_777_777_777 for i in chunk])
            present = None
            if self.has_marker:
                present = torch.tensor([_marker_draw(self.seed, i) < self.shortcut for i in chunk])
                if self.shortcut_classes is not None:
                    present &= torch.isin(params[:, 0].long(), torch.tensor(self.shortcut_classes))
            im, m, lab, mk = _render(params, s, noise_seeds, present)
            imgs.append(im), masks.append(m), labels.append(lab), markers.append(mk)
        return (torch.cat(imgs), torch.cat(masks), torch.cat(labels),
                torch.cat(markers) if self.has_marker else None)

    def render(self, indices: Sequence[int] | range) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render samples -> uint8 images (N,3,S,S), bool object masks (N,S,S), long labels (N,)."""
        return self._render_all(indices)[:3]

    def render_regions(self, indices: Sequence[int] | range) -> dict[str, torch.Tensor]:
        """Named region masks of samples: ``{"object": (N,S,S)}``, plus ``"marker"`` when ``shortcut > 0``."""
        _, masks, _, markers = self._render_all(indices)
        return {"object": masks} if markers is None else {"object": masks, "marker": markers}

    @property
    def targets(self) -> torch.Tensor:
        """(N,) the labels of every sample, without rendering (torchvision's name; the callback's
        held-out set is stratified by them)."""
        if self._labels is not None:
            return self._labels
        return torch.tensor([int(_sample_params(self.seed, i, self.num_shapes)[0]) for i in range(self.num_samples)])

    def raw(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Un-normalised uint8 image (3,S,S), label, object mask (S,S)."""
        im, label, regions = self.raw_regions(index)
        return im, label, regions["object"]

    def raw_regions(self, index: int) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        """Un-normalised uint8 image (3,S,S), label and the named region masks (S,S)."""
        index = self._index(index)
        if self._images is not None:
            im, lab, m = self._images[index], int(self._labels[index]), self._masks[index]
            mk = None if self._markers is None else self._markers[index]
        else:
            ims, ms, labs, mks = self._render_all([index])
            im, lab, m, mk = ims[0], int(labs[0]), ms[0], None if mks is None else mks[0]
        return im, lab, ({"object": m} if mk is None else {"object": m, "marker": mk})

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        im, label, regions = self.raw_regions(index)
        if self.augment:
            im, regions = dihedral(im, regions)
        x = normalise(im, self.mean, self.std)
        return x, torch.tensor(label, dtype=torch.long), (regions if self.has_marker else regions["object"])

    def stats(self, n: int = 2000) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the un-normalised images of the first ``n`` samples."""
        im, _, _ = self.render(range(min(n, self.num_samples)))
        x = im.float() / 255.0
        return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()

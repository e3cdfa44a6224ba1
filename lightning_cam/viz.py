"""Overlays and grids for explanation maps, computed in torch.

Everything here works on batches of tensors on any device and returns either
float tensors in [0, 1] or uint8 ``(H, W, 3)`` numpy arrays ready for
``wandb.Image`` / PNG files (W&B casts float images instead of scaling them,
so the logged arrays are always uint8).

* :func:`colormap_lut` - a 256-entry RGB look-up table of a matplotlib
  colormap (perceptual ones by default: ``inferno``; ``viridis``, ``magma``,
  ``plasma``, ``cividis``, ``turbo`` ... work too).
* :func:`apply_colormap` - ``(B, H, W)`` maps in [0, 1] -> ``(B, 3, H, W)`` RGB.
* :func:`denormalize` - undo ``transforms.Normalize(mean, std)`` for display.
* :func:`overlay` - alpha-blend the colour map over the image.
* :func:`overlay_grid` - rows of images followed by rows of their overlays.
* :func:`comparison_grid` - one row of images, then one row per method.
* :func:`labelled_grid` - tiles in rows with a title, a label per row and
  per column (rendered with PIL), e.g. method names and class / prediction /
  confidence.
* :func:`to_uint8_hwc` / :func:`save_png`.
"""

from __future__ import annotations

import math

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_cam.maps import normalize_maps, upsample_maps

__all__ = [
    "apply_colormap",
    "colormap_lut",
    "comparison_grid",
    "denormalize",
    "labelled_grid",
    "overlay",
    "overlay_grid",
    "resize",
    "agreement_heatmap",
    "save_png",
    "to_uint8_hwc",
]


@functools.lru_cache(maxsize=16)
def _lut_numpy(name: str) -> np.ndarray:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; use a matplotlib colormap such as "
            "'inferno', 'viridis', 'magma', 'plasma', 'cividis' or 'turbo'"
        ) from None
    return np.asarray(cmap(np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float32)


def colormap_lut(name: str = "inferno", device: torch.device | str | None = None) -> Tensor:
    """``(256, 3)`` float32 RGB table of matplotlib colormap ``name``."""
    return torch.from_numpy(_lut_numpy(name)).to(device)


def apply_colormap(maps: Tensor, colormap: str = "inferno") -> Tensor:
    """Colour ``(B, H, W)`` (or ``(H, W)``) maps in [0, 1]: returns ``(B, 3, H, W)`` in [0, 1].

    Values are clamped to [0, 1] and quantised to the 256 LUT entries; NaN
    becomes 0.
    """
    if maps.dim() == 2:
        maps = maps[None]
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {tuple(maps.shape)}")
    m = torch.nan_to_num(maps.detach().float(), nan=0.0).clamp(0.0, 1.0)
    idx = (m * 255.0).round().long()
    lut = colormap_lut(colormap, device=maps.device)
    return lut[idx].permute(0, 3, 1, 2).contiguous()


def _as_stat(v: Sequence[float] | Tensor | float, channels: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"mean/std has {t.numel()} values but the images have {channels} channels")
    return t.view(1, channels, 1, 1)


def denormalize(
    images: Tensor,
    mean: Sequence[float] | Tensor | float | None = None,
    std: Sequence[float] | Tensor | float | None = None,
) -> Tensor:
    """Images for display: ``(B, C, H, W)`` -> ``(B, 3, H, W)`` float in [0, 1].

    With ``mean``/``std`` (those given to ``transforms.Normalize``) the
    normalisation is undone: ``x * std + mean``. Without them, images already in
    [0, 1] are kept and anything else is min-max scaled per image. One-channel
    images are repeated to RGB; more than 3 channels keep the first three.
    """
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float()
    c = x.shape[1]
    if mean is not None or std is not None:
        mean_t = _as_stat(0.0 if mean is None else mean, c, x.device)
        std_t = _as_stat(1.0 if std is None else std, c, x.device)
        x = x * std_t + mean_t
    elif x.numel() and (x.min() < 0.0 or x.max() > 1.0):
        x = normalize_maps(x)  # per-image min-max over all channels
    x = x.clamp(0.0, 1.0)
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif c == 2:
        x = torch.cat([x, x[:, :1]], dim=1)
    elif c > 3:
        x = x[:, :3]
    return x.contiguous()


#: Bilinear resize of ``(B, H, W)`` maps (no-op when already ``size``); the engine's one copy.
resize = upsample_maps


def overlay(
    images: Tensor,
    maps: Tensor,
    alpha: float = 0.5,
    colormap: str = "inferno",
    mean: Sequence[float] | Tensor | float | None = None,
    std: Sequence[float] | Tensor | float | None = None,
) -> Tensor:
    """Blend coloured maps over the (un-normalised) images: ``(B, 3, H, W)`` in [0, 1].

    ``maps`` are ``(B, h, w)`` in [0, 1]; they are resized to the images.
    """
    rgb = denormalize(images, mean, std)
    maps = resize(maps.to(rgb.device), tuple(rgb.shape[-2:]))
    heat = apply_colormap(maps, colormap)
    return ((1.0 - alpha) * rgb + alpha * heat).clamp(0.0, 1.0)


def upscale(x: Tensor, min_size: int) -> Tensor:
    """Nearest-neighbour integer upscaling so tiny images stay readable."""
    h, w = x.shape[-2:]
    factor = max(1, -(-min_size // max(1, min(h, w))))
    if factor == 1:
        return x
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _grid(tiles: Tensor, ncol: int, padding: int) -> Tensor:
    from torchvision.utils import make_grid

    return make_grid(tiles, nrow=ncol, padding=padding, pad_value=1.0)


def overlay_grid(
    images: Tensor,
    maps: Tensor,
    ncol: int = 8,
    alpha: float = 0.5,
    colormap: str = "inferno",
    mean: Sequence[float] | Tensor | float | None = None,
    std: Sequence[float] | Tensor | float | None = None,
    min_size: int = 64,
    padding: int = 2,
) -> Tensor:
    """Grid of a row of images, then a row of their overlays, repeated per ``ncol`` images.

    Returns ``(3, H, W)`` float in [0, 1] (see :func:`to_uint8_hwc`).
    """
    rgb = denormalize(images, mean, std)
    ov = overlay(images, maps, alpha=alpha, colormap=colormap, mean=mean, std=std)
    rgb, ov = upscale(rgb, min_size), upscale(ov, min_size)
    ncol = max(1, min(ncol, rgb.shape[0]))
    tiles = []
    for start in range(0, rgb.shape[0], ncol):
        img_row, ov_row = rgb[start : start + ncol], ov[start : start + ncol]
        short = ncol - img_row.shape[0]
        if short:  # pad the last chunk with white tiles so rows stay aligned
            blank = torch.ones((short, *img_row.shape[1:]), device=img_row.device)
            img_row, ov_row = torch.cat([img_row, blank]), torch.cat([ov_row, blank])
        tiles += [img_row, ov_row]
    return _grid(torch.cat(tiles), ncol, padding)


def comparison_grid(
    images: Tensor,
    maps_by_method: Mapping[str, Tensor],
    alpha: float = 0.5,
    colormap: str = "inferno",
    mean: Sequence[float] | Tensor | float | None = None,
    std: Sequence[float] | Tensor | float | None = None,
    min_size: int = 64,
    padding: int = 2,
) -> Tensor:
    """One column per image; first row the images, then one row per method (in dict order)."""
    rgb = denormalize(images, mean, std)
    rows = [upscale(rgb, min_size)]
    for maps in maps_by_method.values():
        rows.append(upscale(overlay(images, maps, alpha, colormap, mean, std), min_size))
    return _grid(torch.cat(rows), rgb.shape[0], padding)


@functools.lru_cache(maxsize=8)
def _font(size: int):  # noqa: ANN202 - PIL font
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable default font
    except TypeError:  # pragma: no cover - older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:  # noqa: ANN001
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def labelled_grid(
    rows: Sequence[tuple[str, Tensor]],
    column_labels: Sequence[str] | None = None,
    title: str = "",
    min_size: int = 96,
    padding: int = 2,
    font_size: int = 12,
    colorbar: str | None = None,
    marked: Sequence[bool] | None = None,
) -> np.ndarray:
    """Tiles in rows, with ``title`` on top, ``column_labels`` above the columns and row labels on the left.

    ``rows``: ``(label, tiles)`` pairs, tiles ``(N, 3, H, W)`` float in [0, 1]
    (N equal in every row). Tiles are upscaled (nearest, integer factor) to at
    least ``min_size`` px so that small images and the text stay readable.
    Column labels may hold several lines (``"\n"``). ``colorbar``: a colour map name,
    drawn as a bar from 0 (bottom) to 1 (top) on the right. ``marked``: per column, True
    draws a red frame round it (e.g. misclassified images). Returns ``(H, W, 3)`` uint8.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("labelled_grid needs at least one row")
    tiles = [upscale(t.detach().float().cpu(), min_size) for _, t in rows]
    ncol = tiles[0].shape[0]
    if any(t.shape[0] != ncol for t in tiles):
        raise ValueError(f"every row needs the same number of tiles, got {[t.shape[0] for t in tiles]}")
    body = to_uint8_hwc(_grid(torch.cat(tiles), ncol, padding))
    tile_h, tile_w = tiles[0].shape[-2:]
    font = _font(font_size)
    line = font_size + 3
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max(probe.textlength(label, font=font) for label, _ in rows)) + 8
    head_lines = max((len(c.split("\n")) for c in column_labels or []), default=0)
    top = (line + 4 if title else 0) + head_lines * line + (4 if head_lines else 0)
    right = _BAR_WIDTH + 8 + int(probe.textlength("1.0", font=font)) + 8 if colorbar else 0
    canvas = Image.new("RGB", (left + body.shape[1] + right, max(top + body.shape[0], line)), (255, 255, 255))
    canvas.paste(Image.fromarray(body), (left, top))
    draw = ImageDraw.Draw(canvas)
    for j, wrong in enumerate(marked or []):
        if wrong:
            x = left + j * (tile_w + padding)
            draw.rectangle((x, top, x + tile_w + 2 * padding - 1, top + body.shape[0] - 1), outline=_RED, width=padding)
    if colorbar:
        _draw_colorbar(canvas, draw, colorbar, (left + body.shape[1] + 8, top + padding), body.shape[0] - 2 * padding, font, font_size)
    black = (0, 0, 0)
    if title:
        draw.text((4, 2), _fit(draw, title, font, canvas.width - 8), fill=black, font=font)
    for j, label in enumerate(column_labels or []):
        x = left + padding + j * (tile_w + padding)
        for k, text in enumerate(label.split("\n")):
            y = top - (head_lines - k) * line - 2
            draw.text((x, y), _fit(draw, text, font, tile_w), fill=black, font=font)
    for i, (label, _) in enumerate(rows):
        y = top + padding + i * (tile_h + padding) + tile_h // 2 - font_size // 2
        draw.text((4, y), label, fill=black, font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


_BAR_WIDTH = 12
_RED = (220, 20, 20)


def _draw_colorbar(canvas, draw, colormap: str, at: tuple[int, int], height: int, font, font_size: int) -> None:  # noqa: ANN001
    """A vertical ``colormap`` bar at ``at`` (x, y top), 1.0 at the top and 0.0 at the bottom, labelled."""
    from PIL import Image

    ramp = torch.linspace(1.0, 0.0, max(height, 2))[:, None].expand(-1, _BAR_WIDTH)
    bar = to_uint8_hwc(apply_colormap(ramp, colormap)[0])
    canvas.paste(Image.fromarray(bar), at)
    x, y = at[0] + _BAR_WIDTH + 4, at[1]
    draw.text((x, y), "1.0", fill=(0, 0, 0), font=font)
    draw.text((x, y + max(height, 2) - font_size - 2), "0.0", fill=(0, 0, 0), font=font)


def to_uint8_hwc(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` (or ``(H, W)``) float in [0, 1] -> ``(H, W, 3)`` uint8 numpy array."""
    x = image.detach().float()
    if x.dim() == 2:
        x = x[None].expand(3, -1, -1)
    if x.dim() != 3:
        raise ValueError(f"expected (C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x.permute(1, 2, 0).contiguous().cpu().numpy()


def save_png(image: Tensor | np.ndarray, path: str | Path, compress_level: int = 6) -> Path:
    """Write a ``(3, H, W)`` float tensor or ``(H, W, 3)`` uint8 array as PNG.

    ``compress_level`` 0-9 (zlib): 1 encodes several times faster than PIL's default 6
    for files about 1.5x larger (what the callback uses).
    """
    from PIL import Image

    arr = to_uint8_hwc(image) if isinstance(image, Tensor) else np.asarray(image, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=compress_level)
    return path


def agreement_heatmap(names: Sequence[str], matrix: Tensor, title: str = "method agreement", cell: int = 44,
                      font_size: int = 11) -> np.ndarray:
    """An annotated (M, M) heatmap of pairwise rank correlations in [-1, 1] -> (H, W, 3) uint8.

    Cells coloured with ``RdBu_r`` (-1 blue, 0 white, 1 red) and labelled with their value (``n/a`` for
    NaN); rows carry the method names, columns their numbers; a colour bar from -1 to 1 on the right;
    the title wraps to the picture's width. Drawn with PIL (a few ms; matplotlib took ~0.13 s an
    evaluation).
    """
    import textwrap

    from PIL import Image, ImageDraw

    m = matrix.detach().double().cpu()
    k = len(names)
    font = _font(font_size)
    line = font_size + 3
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{i + 1}: {name}" for i, name in enumerate(names)]
    left = int(max(probe.textlength(label, font=font) for label in labels)) + 10
    bar_x = left + k * cell + 10
    width = max(bar_x + _BAR_WIDTH + 8 + int(probe.textlength("-1.0", font=font)) + 6, 160)
    chars = max(16, int(width / max(probe.textlength("m", font=font) * 0.62, 1.0)))
    title_lines = textwrap.wrap(title, chars) or [""]
    top = len(title_lines) * line + 4 + line + 2
    canvas = Image.new("RGB", (width, top + k * cell + 6), (255, 255, 255))
    colours = apply_colormap(((m.float() + 1.0) / 2.0)[None], "RdBu_r")[0]  # (3, k, k); NaN -> blue end
    draw = ImageDraw.Draw(canvas)
    for i in range(k):
        draw.text((4, top + i * cell + cell // 2 - font_size // 2), labels[i], fill=(0, 0, 0), font=font)
        draw.text((left + i * cell + cell // 2 - 4, top - line), str(i + 1), fill=(0, 0, 0), font=font)
        for j in range(k):
            v = float(m[i, j])
            rgb = (245, 245, 245) if math.isnan(v) else tuple(int(c * 255) for c in colours[:, i, j].tolist())
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle((x0, y0, x0 + cell - 2, y0 + cell - 2), fill=rgb)
            text = "n/a" if math.isnan(v) else f"{v:.2f}"
            ink = (255, 255, 255) if not math.isnan(v) and abs(v) > 0.6 else (0, 0, 0)
            tw = probe.textlength(text, font=font)
            draw.text((x0 + (cell - 2 - tw) / 2, y0 + cell // 2 - font_size // 2 - 1), text, fill=ink, font=font)
    ramp = torch.linspace(1.0, 0.0, max(k * cell - 2, 2))[:, None].expand(-1, _BAR_WIDTH)
    canvas.paste(Image.fromarray(to_uint8_hwc(apply_colormap(ramp, "RdBu_r")[0])), (bar_x, top))
    draw.text((bar_x + _BAR_WIDTH + 4, top), "1.0", fill=(0, 0, 0), font=font)
    draw.text((bar_x + _BAR_WIDTH + 4, top + k * cell - font_size - 4), "-1.0", fill=(0, 0, 0), font=font)
    for n, text in enumerate(title_lines):
        draw.text((4, 2 + n * line), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()

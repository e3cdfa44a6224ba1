"""Overlays / grids (lightning_cam.viz) and the held-out set helpers (lightning_cam.callback.heldout)."""

from __future__ import annotations

import random

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_cam import viz
from lightning_cam.callback import heldout
from tolerance import EPS32


def test_lut_matches_matplotlib():
    lut = viz.colormap_lut("inferno")
    assert lut.shape == (256, 3) and lut.dtype == torch.float32
    ref = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]
    np.testing.assert_allclose(lut.numpy(), ref, atol=EPS32)  # float64 [0, 1] values rounded to float32
    with pytest.raises(ValueError, match="unknown colormap 'nope'.*inferno"):
        viz.colormap_lut("nope")


def test_apply_colormap_endpoints_and_nan():
    maps = torch.tensor([[[0.0, 1.0], [0.5, float("nan")]]])
    rgb = viz.apply_colormap(maps, "viridis")
    lut = viz.colormap_lut("viridis")
    assert rgb.shape == (1, 3, 2, 2)
    assert torch.equal(rgb[0, :, 0, 0], lut[0]) and torch.equal(rgb[0, :, 0, 1], lut[255])
    assert torch.equal(rgb[0, :, 1, 0], lut[128])  # round(0.5 * 255) = 128
    assert torch.equal(rgb[0, :, 1, 1], lut[0])  # NaN -> 0
    # out of range values are clamped
    assert torch.equal(viz.apply_colormap(torch.full((1, 1, 1), 7.0))[0, :, 0, 0], viz.colormap_lut()[255])


def test_denormalize_inverts_normalize():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.rand(2, 3, 5, 5)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    # (x - m) / s * s + m: four float32 roundings of values up to 1 / min(std)
    torch.testing.assert_close(viz.denormalize(xn, mean, std), x, atol=4 * EPS32 / min(std), rtol=0)
    # already in [0, 1]: unchanged; otherwise per-image min-max
    assert torch.equal(viz.denormalize(x), x)
    y = viz.denormalize(xn)
    assert y.amin() == 0 and y.amax() == 1
    # grayscale -> RGB
    g = viz.denormalize(torch.rand(2, 1, 4, 4))
    assert g.shape == (2, 3, 4, 4) and torch.equal(g[:, 0], g[:, 2])
    with pytest.raises(ValueError, match="2 values but the images have 3 channels"):
        viz.denormalize(xn, (0.5, 0.5), (0.2, 0.2))


def test_overlay_alpha_and_resize():
    x = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 4, 4)  # layer resolution: resized to the image
    # (1 - a) x + a heat at a in {0, 1}: at most two roundings of [0, 1] values
    assert torch.allclose(viz.overlay(x, maps, alpha=0.0), x, atol=2 * EPS32, rtol=0)
    heat = viz.apply_colormap(viz.resize(maps, (8, 8)))
    assert torch.allclose(viz.overlay(x, maps, alpha=1.0), heat, atol=2 * EPS32, rtol=0)
    out = viz.overlay(x, maps)
    assert out.shape == (2, 3, 8, 8) and 0 <= out.min() and out.max() <= 1


def test_overlay_grid_layout_and_uint8():
    x = torch.rand(5, 3, 16, 16)
    maps = torch.rand(5, 16, 16)
    grid = viz.overlay_grid(x, maps, ncol=4, min_size=32, padding=2)
    # 5 images, 4 per row -> 2 chunks of (image row + overlay row) = 4 rows of 4 tiles of 32 px
    assert grid.shape == (3, 4 * 32 + 5 * 2, 4 * 32 + 5 * 2)
    arr = viz.to_uint8_hwc(grid)
    assert arr.dtype == np.uint8 and arr.shape == (138, 138, 3)
    # first tile = the (upscaled) first image, tile below = its overlay
    tile = torch.from_numpy(arr[2:34, 2:34]).permute(2, 0, 1).float() / 255
    ref = x[0].repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert (tile - ref).abs().max() <= 1 / 255 + EPS32  # uint8 quantisation, then /255 in float32
    ov = torch.from_numpy(arr[36:68, 2:34]).permute(2, 0, 1).float() / 255
    ref_ov = viz.overlay(x[:1], maps[:1])[0].repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert (ov - ref_ov).abs().max() <= 1 / 255 + EPS32
    # last chunk is padded with white tiles
    assert arr[70:102, 36 * 1 + 2 : 36 * 1 + 34].min() == 255


def test_comparison_grid_rows():
    x = torch.rand(3, 3, 8, 8)
    g = viz.comparison_grid(x, {"a": torch.rand(3, 8, 8), "b": torch.rand(3, 8, 8)}, min_size=8, padding=1)
    assert g.shape == (3, 3 * 8 + 4, 3 * 8 + 4)


def test_save_png_roundtrip(tmp_path):
    arr = viz.to_uint8_hwc(torch.rand(3, 10, 12))
    path = viz.save_png(arr, tmp_path / "a" / "b.png")
    img = Image.open(path)
    assert img.mode == "RGB" and img.size == (12, 10)
    np.testing.assert_array_equal(np.asarray(img), arr)


# ------------------------------------------------------------------ held-out set
def test_select_indices_seeded_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = heldout.select_indices(100, 10, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert a == heldout.select_indices(100, 10, seed=3) and a == sorted(a) and len(set(a)) == 10
    assert a != heldout.select_indices(100, 10, seed=4)
    assert heldout.select_indices(5, 10, seed=0) == [0, 1, 2, 3, 4]


class _RandomDataset(torch.utils.data.Dataset):
    """A dataset whose items use every RNG (like random transforms)."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        noise = torch.rand(()) + np.random.rand() + random.random()
        return torch.full((3, 4, 4), float(i)) + noise, i % 3, torch.ones(1, 4, 4, dtype=torch.bool)


def test_gather_from_dataset_restores_all_rngs_and_is_reproducible():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    ds = _RandomDataset()
    h1 = heldout.gather_from_dataset(ds, [1, 5, 7], seed=0)
    h2 = heldout.gather_from_dataset(ds, [1, 5, 7], seed=0)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert torch.equal(h1.images, h2.images)  # seeded inside: random transforms repeat
    assert h1.images.shape == (3, 3, 4, 4) and h1.labels.tolist() == [1, 2, 1]
    assert h1.masks.shape == (3, 4, 4) and h1.masks.dtype == torch.bool  # (1,H,W) squeezed
    assert h1.indices == [1, 5, 7] and h1.source == "dataset" and h1.dataset_len == 20


def test_gather_under_inference_mode_gives_normal_tensors():
    with torch.inference_mode():
        h = heldout.gather_from_dataset(_RandomDataset(), [0, 1])
    assert not h.images.is_inference()


def test_gather_from_loader_does_not_move_global_rng():
    loader = torch.utils.data.DataLoader(_RandomDataset(), batch_size=4, shuffle=True)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    h = heldout.gather_from_loader(loader, 6)
    assert torch.equal(torch.get_rng_state(), before)
    assert len(h) == 6 and h.source == "loader"


def test_from_user_subset_and_dict_items():
    imgs = torch.rand(10, 3, 4, 4)
    h = heldout.from_user(imgs, torch.arange(10), torch.zeros(10, 4, 4), num_samples=4, seed=0)
    assert len(h) == 4 and torch.equal(h.images, imgs[h.indices]) and h.labels.tolist() == h.indices
    assert heldout.split_sample({"image": 1, "label": 2}) == (1, 2, None)
    assert heldout.split_sample((1,)) == (1, None, None)


def _grid(**kw) -> np.ndarray:
    tiles = torch.full((3, 3, 16, 16), 0.5)
    return viz.labelled_grid([("image", tiles), ("liftcam", tiles)], ["a", "b", "c"], "title", min_size=32, **kw)


def test_labelled_grid_colour_bar_and_marked_columns():
    plain = _grid()
    bar = _grid(colorbar="inferno")
    assert bar.shape[0] == plain.shape[0] and bar.shape[1] > plain.shape[1] + 12
    column = bar[:, plain.shape[1] + 8 + 6]  # the bar's middle: bright (1.0) at the top, dark (0.0) at the bottom
    painted = np.argwhere((column != 255).any(-1))[:, 0]
    assert column[painted[0]].sum() > 500 and column[painted[-1]].sum() < 100
    marked = _grid(marked=[False, True, False])
    diff = np.argwhere((marked != plain).any(-1))
    assert diff.size and marked.shape == plain.shape
    left = plain.shape[1] - (3 * (32 + 2) + 2)  # 32 px tiles, 2 px padding: only the second column's frame
    assert left + 32 <= diff[:, 1].min() and diff[:, 1].max() < left + 2 * 34 + 2
    assert (marked[diff[:, 0], diff[:, 1]] == (220, 20, 20)).all()


@pytest.mark.parametrize("k", [2, 3, 8])
def test_agreement_heatmap_holds_its_title_cells_and_colour_bar(k):
    title = "method agreement (mean Spearman) · trainer.validate · epoch 12 · layer features.denseblock4"
    m = torch.eye(k) * 2 - 1  # 1 on the diagonal, -1 elsewhere
    m[0, -1] = float("nan")
    arr = viz.agreement_heatmap([f"method{i}" for i in range(k)], m, title)
    h, w, _ = arr.shape
    assert arr.dtype == np.uint8 and w >= 160 and h > k * 44
    top_band = arr[: h - k * 44 - 6]
    assert (top_band < 100).any()  # the title (and column numbers) are drawn
    # the diagonal cells are red (1), the others blue (-1): both colours fill whole cells
    reds = ((arr[..., 0] > 150) & (arr[..., 2] < 90)).sum()
    blues = ((arr[..., 2] > 150) & (arr[..., 0] < 90)).sum()
    assert reds > k * 30 and (k == 1 or blues > 30)

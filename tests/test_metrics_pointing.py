"""Pointing game and energy-based pointing game on synthetic masks."""

from __future__ import annotations

import pytest
import torch

from lightning_cam.metrics import pointing_game


def _peak_map(b: int, h: int, w: int, points: list[tuple[int, int]]) -> torch.Tensor:
    s = torch.zeros(b, h, w)
    for i, (r, c) in enumerate(points):
        s[i, r, c] = 1.0
    return s


def test_hits_and_tolerance_square():
    masks = torch.zeros(4, 20, 20, dtype=torch.bool)
    masks[:, 5:10, 5:10] = True
    # inside; 2 px right of the box; 3 px diagonal (Chebyshev 3); far
    sal = _peak_map(4, 20, 20, [(7, 7), (7, 11), (12, 12), (18, 0)])
    assert pointing_game(sal, masks).hits.tolist() == [True, False, False, False]
    assert pointing_game(sal, masks, tolerance=2).hits.tolist() == [True, True, False, False]
    assert pointing_game(sal, masks, tolerance=3).hits.tolist() == [True, True, True, False]
    p = pointing_game(sal, masks, tolerance=3)
    assert p.accuracy == 0.75  # 3 / 4: exact


def test_tolerance_disk_is_euclidean():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[:, 5:10, 5:10] = True
    sal = _peak_map(2, 20, 20, [(12, 12), (7, 12)])  # diagonal distance sqrt(18) ~ 4.24; straight 3
    assert pointing_game(sal, masks, 3, tolerance_shape="disk").hits.tolist() == [False, True]
    assert pointing_game(sal, masks, 4, tolerance_shape="disk").hits.tolist() == [False, True]
    assert pointing_game(sal, masks, 5, tolerance_shape="disk").hits.tolist() == [True, True]
    assert pointing_game(sal, masks, 3, tolerance_shape="square").hits.tolist() == [True, True]


def test_energy():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :] = True  # top half
    sal = torch.zeros(2, 4, 4)
    sal[0, 0, 0] = 3.0
    sal[0, 3, 3] = 1.0
    sal[1] = 1.0  # uniform -> energy = mask area fraction = 0.5, and a miss (no maximum)
    p = pointing_game(sal, masks)
    assert p.energy.tolist() == [0.75, 0.5]  # 3/4 and 8/16: sums of small integers, exact
    assert p.hits.tolist() == [True, False]
    assert p.mean_energy == 0.625  # exact


def test_zero_map_and_empty_mask():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = True  # a zero map's argmax would be (0,0): must still be a miss
    masks[1, 2:4, 2:4] = True
    sal = torch.zeros(3, 8, 8)
    sal[1, 3, 3] = 1.0
    sal[2, 3, 3] = 1.0  # mask 2 empty
    p = pointing_game(sal, masks)
    assert p.hits.tolist() == [False, True, False]
    assert p.valid.tolist() == [True, True, False]
    assert p.energy.tolist() == [0.0, 1.0, 0.0]
    assert p.num_valid == 2 and p.accuracy == 0.5 and p.mean_energy == 0.5  # exact
    none = pointing_game(sal, torch.zeros(3, 8, 8, dtype=torch.bool))
    assert none.accuracy == 0.0 and none.mean_energy == 0.0


def test_mask_of_other_size_map_upsampled():
    sal = torch.zeros(1, 4, 4)
    sal[0, 3, 3] = 1.0  # bottom-right cell -> after bilinear upsample to 32x32 the peak is at (28..31)
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 24:, 24:] = True
    assert pointing_game(sal, masks).hits.tolist() == [True]
    assert pointing_game(sal, masks.float()).hits.tolist() == [True]  # 0/1 float masks accepted
    assert pointing_game(sal[:, None], masks[:, None]).hits.tolist() == [True]  # (B,1,H,W)
    masks2 = torch.zeros(1, 24, 40, dtype=torch.bool)  # non-square
    masks2[0, :4, :4] = True
    assert pointing_game(sal, masks2).hits.tolist() == [False]


def test_errors():
    sal = torch.rand(2, 8, 8)
    masks = torch.ones(2, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="batch size"):
        pointing_game(sal, masks[:1])
    with pytest.raises(ValueError, match="0 and 1"):
        pointing_game(sal, masks.float() * 0.5)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(sal, masks, tolerance=-1)
    with pytest.raises(ValueError, match="non-negative"):
        pointing_game(sal - 1, masks)
    with pytest.raises(ValueError, match="shape"):
        pointing_game(sal[0], masks)
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(sal * float("nan"), masks)

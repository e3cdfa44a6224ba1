"""Average Drop / Increase in Confidence / Average Drop in Deletion on hand-computed cases."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tolerance import EPS32, forward_tol, magnitude, sum_tol
from lightning_cam.metrics import confidence_change


class MeanModel(nn.Module):
    """logits = [mean(x), 0]: softmax p0 = sigmoid(mean(x)), computable by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, torch.zeros_like(m)], dim=1)


# MeanModel: one 192-term mean (3x8x8) of values up to 3, then a sigmoid (slope <= 1/4); the
# float64 reference is rounded once to float32. Drops divide by Y = sigmoid(1) > 0.7.
MEAN_TOL = sum_tol(192, 3.0) / 4 + EPS32
DROP_TOL = 2 * MEAN_TOL / 0.7


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _hand_batch():
    x = torch.ones(2, 3, 8, 8)
    x[1, :, :, :4] = 3.0
    x[1, :, :, 4:] = -1.0  # mean 1
    e = torch.zeros(2, 8, 8)
    e[:, :, :4] = 1.0  # left half
    return x, e


def test_hand_computed_values():
    x, e = _hand_batch()
    r = confidence_change(MeanModel(), x, e)
    y = sig(1.0)
    # image 0: x*E mean 0.5, x*(1-E) mean 0.5; image 1: x*E mean 1.5, x*(1-E) mean -0.5
    o = [sig(0.5), sig(1.5)]
    d = [sig(0.5), sig(-0.5)]
    close = dict(atol=MEAN_TOL, rtol=0)
    torch.testing.assert_close(r.score, torch.tensor([y, y]), **close)
    torch.testing.assert_close(r.masked_score, torch.tensor(o), **close)
    torch.testing.assert_close(r.deleted_score, torch.tensor(d), **close)
    drops = [max(0.0, y - o[0]) / y, 0.0]
    torch.testing.assert_close(r.drop, torch.tensor(drops), atol=DROP_TOL, rtol=0)
    assert r.increase.tolist() == [False, True]
    torch.testing.assert_close(r.drop_in_deletion, torch.tensor([(y - d[0]) / y, (y - d[1]) / y]), atol=DROP_TOL, rtol=0)
    assert r.average_drop == pytest.approx(100 * sum(drops) / 2, abs=100 * DROP_TOL)
    assert r.increase_in_confidence == 50.0  # 100 * 1 / 2: exact
    assert r.average_drop_in_deletion == pytest.approx(100 * ((y - d[0]) / y + (y - d[1]) / y) / 2, abs=100 * DROP_TOL)
    assert r.targets.tolist() == [0, 0]


def test_fractional_map_and_upsampling():
    x = torch.ones(1, 3, 8, 8)
    e_small = torch.full((1, 2, 2), 0.25)
    r = confidence_change(MeanModel(), x, e_small)
    assert float(r.masked_score[0]) == pytest.approx(sig(0.25), abs=MEAN_TOL)
    assert float(r.deleted_score[0]) == pytest.approx(sig(0.75), abs=MEAN_TOL)


def test_targets_and_logit_score():
    x, e = _hand_batch()
    r = confidence_change(MeanModel(), x, e, targets=[1, 1])
    # class 1 prob = 1 - sigmoid(mean)
    torch.testing.assert_close(r.score, torch.tensor([1 - sig(1.0)] * 2), atol=MEAN_TOL, rtol=0)
    torch.testing.assert_close(r.masked_score, torch.tensor([1 - sig(0.5), 1 - sig(1.5)]), atol=MEAN_TOL, rtol=0)
    assert r.increase.tolist() == [True, False]
    rl = confidence_change(MeanModel(), x, e, score="logit")
    torch.testing.assert_close(rl.masked_score, torch.tensor([0.5, 1.5]), atol=4 * MEAN_TOL, rtol=0)  # no sigmoid
    torch.testing.assert_close(rl.drop, torch.tensor([0.5, 0.0]), atol=8 * MEAN_TOL, rtol=0)  # / Y = 1
    with pytest.raises(ValueError, match="Y <= 0"):
        confidence_change(MeanModel(), x, e, targets=1, score="logit")  # logit 0


def test_constant_maps():
    x, _ = _hand_batch()
    ones = confidence_change(MeanModel(), x, torch.ones(2, 8, 8))
    assert ones.drop.tolist() == [0.0, 0.0] and not ones.increase.any()
    zeros = confidence_change(MeanModel(), x, torch.zeros(2, 8, 8))
    assert torch.equal(zeros.masked_score, torch.full((2,), 0.5))  # x * 0 = 0 exactly: sigmoid(0)
    torch.testing.assert_close(zeros.drop_in_deletion, torch.zeros(2), atol=DROP_TOL, rtol=0)
    norm = confidence_change(MeanModel(), x, torch.full((2, 8, 8), 7.0), normalize=True)  # constant -> zeros
    assert torch.equal(norm.masked_score, torch.full((2,), 0.5))


def test_range_check_and_normalize():
    x, e = _hand_batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        confidence_change(MeanModel(), x, e * 3)
    a = confidence_change(MeanModel(), x, e * 3 + 1, normalize=True)
    b = confidence_change(MeanModel(), x, e)
    assert torch.equal(a.drop, b.drop)  # min-max of {1, 4} gives {0, 1} exactly


def test_softmax_underflow_is_nan_free():
    class Huge(nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m * 0 + 200.0, m * 0 - 200.0], 1)

    r = confidence_change(Huge(), torch.ones(1, 3, 4, 4), torch.rand(1, 4, 4), targets=1)
    assert float(r.score[0]) == 0.0
    for t in (r.drop, r.drop_in_deletion):
        assert torch.isfinite(t).all()


def test_errors():
    x, e = _hand_batch()
    with pytest.raises(ValueError, match="batch size"):
        confidence_change(MeanModel(), x, e[:1])
    with pytest.raises(ValueError, match="targets"):
        confidence_change(MeanModel(), x, e, targets=[0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        confidence_change(MeanModel(), x, e * float("nan"))


def test_chunking_modes_and_inference_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 3, 12, 20)
    s = torch.rand(5, 3, 5)
    a = confidence_change(net, x, s, batch_size=3)
    b = confidence_change(net, x, s, batch_size=1000)
    with torch.inference_mode():
        c = confidence_change(net, x, s, batch_size=2)
    # other batch sizes, other kernels: the logit bound (tests/tolerance.py), halved for probabilities,
    # divided by Y >= 1/5 (top-1 of 5 classes) for the drops
    prob = forward_tol(net, magnitude(net.eval(), torch.full_like(x[:1], float(x.abs().max()))), spatial=180) / 2
    net.train()
    for t in ("drop", "drop_in_deletion", "masked_score"):
        tol = prob if t == "masked_score" else 2 * 5 * prob
        torch.testing.assert_close(getattr(a, t), getattr(b, t), atol=tol, rtol=0)
        torch.testing.assert_close(getattr(a, t), getattr(c, t), atol=tol, rtol=0)
    assert net.training and all(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_agrees_with_torchcam_classification_metric():
    tc = pytest.importorskip("torchcam.metrics")
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    x = torch.randn(4, 3, 16, 16)
    sal = torch.rand(4, 4, 4)

    class Fixed:
        model = net

        def __call__(self, class_idx=None, scores=None, normalized=True, **kw):
            return [sal]

        def fuse_cams(self, cams):
            return cams[0]

        def _hooks_off(self):
            return contextlib.nullcontext()

    m = tc.ClassificationMetric(Fixed(), lambda z: torch.softmax(z, dim=-1))
    m.update(x)
    ref = m.summary()
    ours = confidence_change(net, x, sal)
    # torchcam evaluates the same images in other batches: the logit bound, halved, divided by Y >= 1/5
    prob = forward_tol(net, magnitude(net, torch.full_like(x[:1], float(x.abs().max()))), spatial=256) / 2
    assert ours.average_drop / 100 == pytest.approx(ref["avg_drop"], abs=2 * 5 * prob)
    assert ours.increase_in_confidence / 100 == pytest.approx(ref["conf_increase"], abs=EPS32)  # k/4, one rounding
    # torchcam's map goes through the same bilinear upsampling (at the same size: the identity)
    up = F.interpolate(sal[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(confidence_change(net, x, up).drop, ours.drop, atol=2 * 5 * prob, rtol=0)

"""Monitoring quantities: hand-made maps with known answers, scipy and Quantus parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_cam import LiftCAM
from lightning_cam.metrics import (
    complexity,
    method_agreement,
    model_randomization,
    randomized_models,
    region_energy,
    sparseness,
    spearman,
)
from lightning_cam.metrics.monitoring import average_ranks, randomizable_modules
from tests.models import TinyCNN

# float32 rounding of a float64 result of magnitude <= m: m * 2**-24; we allow twice that.
F32 = 2.0**-23


def test_spearman_identical_reversed_and_constant():
    a = torch.rand(4, 5, 6)
    assert torch.equal(spearman(a, a), torch.ones(4))
    rev = -a  # every pairwise order reversed
    assert torch.equal(spearman(a, rev), -torch.ones(4))
    assert torch.equal(spearman(a, a * 3 + 2), torch.ones(4))  # monotone transform: same ranks
    b = a.clone()
    b[2] = 0.7  # constant map: undefined
    s = spearman(a, b)
    assert math.isnan(float(s[2])) and torch.equal(s[[0, 1, 3]], torch.ones(3))


def test_average_ranks_and_spearman_match_scipy_with_ties():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (6, 40), generator=g).float()  # many ties
    b = torch.randint(0, 7, (6, 40), generator=g).float()
    ranks = average_ranks(a)
    for i in range(6):
        assert np.array_equal(ranks[i].numpy(), stats.rankdata(a[i].numpy(), method="average"))
    s = spearman(a.view(6, 5, 8), b.view(6, 5, 8))
    ref = torch.tensor([stats.spearmanr(a[i], b[i])[0] for i in range(6)], dtype=torch.float64)
    assert torch.allclose(s.double(), ref, rtol=0, atol=F32)


def test_spearman_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        spearman(torch.rand(2, 3, 3), torch.rand(2, 3, 4))
    # a non-finite map (a diverging model) has no correlation: NaN for that image, the others computed
    out = spearman(torch.stack([torch.full((2, 2), float("nan")), torch.eye(2)]), torch.stack([torch.eye(2)] * 2))
    assert torch.isnan(out[0]) and out[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        spearman(torch.rand(3, 3), torch.rand(3, 3))


def test_method_agreement_matrix():
    a = torch.rand(3, 4, 4)
    maps = {"x": a, "same": a * 2, "rev": 1 - a}
    names, m = method_agreement(maps)
    assert names == ["x", "same", "rev"]
    expect = torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]])
    assert torch.allclose(m, expect, atol=F32 * 4)
    assert torch.equal(m, m.T)
    b = torch.rand(3, 4, 4)
    _, m2 = method_agreement({"a": a, "b": b})
    assert math.isclose(float(m2[0, 1]), float(spearman(a, b).mean()), abs_tol=4 * F32)
    with pytest.raises(ValueError, match="one shape"):
        method_agreement({"a": a, "b": torch.rand(3, 2, 2)})


def test_region_energy_known_shares():
    s = torch.zeros(2, 4, 4)
    s[0, 0, 0] = 3.0
    s[0, 3, 3] = 1.0
    s[1] = 1.0
    obj = torch.zeros(2, 4, 4, dtype=torch.bool)
    obj[:, :2, :2] = True
    marker = torch.zeros(2, 4, 4, dtype=torch.bool)
    marker[0, 3, 3] = True  # image 1 has no marker
    out = region_energy(s, {"object": obj, "marker": marker})
    e, v = out["object"]
    assert torch.equal(e, torch.tensor([0.75, 0.25])) and v.all()
    e, v = out["marker"]
    assert torch.equal(e, torch.tensor([0.25, 0.0])) and torch.equal(v, torch.tensor([True, False]))
    # an all-zero map has energy 0, never NaN; masks of another size get the upsampled map
    z = region_energy(torch.zeros(1, 2, 2), {"r": torch.ones(1, 8, 8, dtype=torch.bool)})
    assert float(z["r"][0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        region_energy(-torch.ones(1, 2, 2), {"r": obj[:1]})


def test_sparseness_and_complexity_known_values():
    n = 16
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 1, 2] = 1.0
    uniform = torch.ones(1, 4, 4)
    # Gini of a one-hot map: a = (eps,...,eps, 1+eps): G = (n-1)/n * 1 / (1 + n*eps) exactly
    g = (n - 1) / n / (1 + n * 1e-7)
    assert math.isclose(float(sparseness(one_hot)), g, rel_tol=F32)
    assert abs(float(sparseness(uniform))) <= F32
    assert abs(float(complexity(one_hot))) < 1e-9 * n  # p = one-hot: -1 * log(1 + 1e-12)
    assert math.isclose(float(complexity(uniform)), math.log(n), rel_tol=F32)
    assert math.isclose(float(complexity(torch.zeros(1, 4, 4))), math.log(n), rel_tol=F32)
    # scale-free: per-image max normalisation
    assert torch.equal(sparseness(one_hot * 5), sparseness(one_hot))


def _quantus():
    quantus = pytest.importorskip("quantus")
    return quantus


def test_sparseness_and_complexity_equal_quantus():
    quantus = _quantus()
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(5, 12, 12, generator=g, dtype=torch.float64) ** 4
    maps[1, 3:, :] = 0.0
    maps = maps / maps.flatten(1).max(1).values[:, None, None]  # each max 1, as our [0, 1] maps
    x = np.zeros((5, 3, 12, 12))
    y = np.zeros(5, dtype=int)
    a = maps[:, None].numpy()
    q_sp = np.array(quantus.Sparseness(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a.copy()))
    q_cx = np.array(quantus.Complexity(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a.copy()))
    n = 144
    # Quantus in float64: its error is ~n * 2**-53; ours is the float32 rounding of the result
    assert np.allclose(sparseness(maps).double().numpy(), q_sp, rtol=F32, atol=0)
    assert np.allclose(complexity(maps).double().numpy(), q_cx, rtol=F32, atol=n * 2.0**-52)
    # without Quantus' normalisation: same formula on the raw values
    raw = maps * 7.0
    q_sp_raw = quantus.Sparseness(normalise=False, disable_warnings=True)(
        model=None, x_batch=x, y_batch=y, a_batch=raw[:, None].numpy().copy())
    assert np.allclose(sparseness(raw, normalise=False).double().numpy(), q_sp_raw, rtol=F32, atol=0)


def _explain(model, images, targets):
    return LiftCAM(model, "features").explain(images, targets).saliency()


def test_randomized_models_leave_model_and_rng_untouched():
    model = TinyCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    (name, twin), = list(randomized_models(model))
    assert name == "all" and twin is not model
    assert torch.equal(torch.get_rng_state(), state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(twin.fc.weight, model.fc.weight)
    steps = [n for n, _ in randomized_models(model, order="cascading")]
    assert steps == randomizable_modules(model)[::-1] == ["fc", "features.3", "features.1", "features.0"]
    with pytest.raises(ValueError, match="'full' or 'cascading'"):
        next(randomized_models(model, order="bottom_up"))


@pytest.mark.parametrize("order", ["full", "cascading"])
def test_model_randomization_equals_quantus_mprt(order):
    quantus = _quantus()
    torch.manual_seed(0)
    model = TinyCNN(num_classes=4).eval()
    x = torch.randn(6, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    state = torch.get_rng_state()
    ours = model_randomization(model, x, _explain, y, order=order, seed=42)
    assert torch.equal(torch.get_rng_state(), state)

    def q_explain(model, inputs, targets, **kw):
        return _explain(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True,
                          return_last_correlation=(order == "full"))
    q = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
               explain_func=q_explain, device="cpu")
    if order == "full":
        q_last = np.array(q)
        assert np.allclose(ours.per_image.double().numpy(), q_last, rtol=0, atol=F32, equal_nan=True)
    else:
        layers = [k for k in q if k != "original"]
        assert layers == list(ours.layers)
        for k in layers:
            assert np.allclose(ours.layers[k].double().numpy(), np.array(q[k]), rtol=0, atol=F32, equal_nan=True)
    assert ours.mean < 0.9  # LIFT-CAM depends on the weights


def test_model_randomization_identity_explainer_fails_the_check():
    """An 'explanation' that ignores the model (the image's brightness) is perfectly
    correlated with itself after randomisation: the check exposes it with 1.0."""
    model = TinyCNN()
    x = torch.randn(3, 3, 8, 8)
    res = model_randomization(model, x, lambda m, im, t: im.mean(1))
    assert torch.equal(res.per_image, torch.ones(3))

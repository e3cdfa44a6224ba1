"""Insertion / deletion (RISE protocol): batched implementation vs a plain per-image loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tolerance import EPS32, EPS64, forward_tol, magnitude, sum_tol
from lightning_cam.metrics import (
    auc,
    blur,
    gaussian_kernel,
    insertion_deletion,
    make_substrate,
)

# scipy's gaussian_filter1d(delta_11, 5) (mode reflect, truncate 4), printed with scipy 1.17.1;
# gkern(11, 5) = outer(K1, K1) because both the delta and the filter are separable.
K1_SCIPY = [
    0.08795814577727815,
    0.08889611977709484,
    0.09047419654910865,
    0.09219111781938806,
    0.09348938844291409,
    0.09398206326843249,
    0.09348938844291409,
    0.09219111781938806,
    0.09047419654910865,
    0.08889611977709484,
    0.08795814577727815,
]


class TinyNet(nn.Module):
    """2-conv CNN with batch norm and dropout (so that eval mode matters)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = x.mean(dim=(2, 3))
        return self.fc(self.drop(x)) * 4.0  # scaled so that the softmax curves move


def prob_tol(net: nn.Module, x: torch.Tensor, score: str = "softmax") -> float:
    """Curves of one image vs a batched evaluation (other batch sizes, other kernels): the logit
    bound of tests/tolerance.py for any image the curves can build (pixels of ``x`` mixed with a
    substrate, blur included, all bounded by max|x|, 1), halved for softmax probabilities."""
    bound = torch.full_like(x[:1], max(float(x.abs().max()), 1.0))
    logit = forward_tol(net, magnitude(net, bound), spatial=x.shape[-2] * x.shape[-1] // 4)
    return logit if score == "logit" else logit / 2


def auc_tol(n: int, value: float = 1.0) -> float:
    """AUC = (sum - ends / 2) / (n - 1) of n points of size <= value: one n-term sum, then a division."""
    return sum_tol(n + 2, value * n / max(n - 1, 1))


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # non-trivial running stats
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _scipy_free_k1(size: int = 11, sigma: float = 5.0) -> list[float]:
    """1-D reflect-mode Gaussian filtering of a delta, by hand (iterative mirror, not modulo)."""
    radius = int(4.0 * sigma + 0.5)
    w = [math.exp(-0.5 * j * j / sigma**2) for j in range(-radius, radius + 1)]
    s = sum(w)
    w = [v / s for v in w]
    out = []
    for i in range(size):
        acc = 0.0
        for j in range(-radius, radius + 1):
            p = i + j
            while p < 0 or p >= size:  # 'reflect': d c b a | a b c d | d c b a
                p = -p - 1 if p < 0 else 2 * size - 1 - p
            if p == size // 2:
                acc += w[j + radius]
        out.append(acc)
    return out


def reference_curves(model, image, saliency, step, del_substrate, ins_substrate, score="softmax", target=None):
    """The authors' loop, one image at a time: score, then copy the next `step` pixels."""
    c_, h, w = image.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    order = torch.argsort(saliency.reshape(hw), descending=True, stable=True)

    def f(x):
        out = model(x[None])[0]
        return out.softmax(0) if score == "softmax" else out

    c = int(f(image).argmax()) if target is None else target
    curves = []
    for start, finish in ((image.clone(), del_substrate), (ins_substrate.clone(), image)):
        scores = []
        for i in range(n_steps + 1):
            scores.append(float(f(start)[c]))
            if i < n_steps:
                coords = order[step * i : step * (i + 1)]
                start.view(c_, hw)[:, coords] = finish.reshape(c_, hw)[:, coords]
        curves.append(torch.tensor(scores))
    return curves  # deletion, insertion


def reference_blur(images: torch.Tensor) -> torch.Tensor:
    """The authors' form: a (C, C, 11, 11) weight with kern[c, c] = k, conv2d(padding=5)."""
    k = torch.outer(torch.tensor(K1_SCIPY), torch.tensor(K1_SCIPY)).float()
    c = images.shape[1]
    kern = torch.zeros(c, c, 11, 11)
    for i in range(c):
        kern[i, i] = k
    return F.conv2d(images, kern, padding=5)


def rise_auc(arr):
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


# ---------------------------------------------------------------- kernel + AUC


def test_blur_kernel_matches_scipy_gkern():
    k = gaussian_kernel()
    assert k.shape == (11, 11) and k.dtype == torch.float32
    try:
        import numpy as np
        from scipy.ndimage import gaussian_filter
    except ImportError:
        ref = torch.outer(torch.tensor(K1_SCIPY), torch.tensor(K1_SCIPY)).float()
    else:
        delta = np.zeros((11, 11))
        delta[5, 5] = 1
        ref = torch.from_numpy(gaussian_filter(delta, 5).astype("float32"))
    torch.testing.assert_close(k, ref, atol=2 * EPS32 * float(ref.max()), rtol=0)  # two float32 roundings


def test_blur_kernel_hand_derivation():
    hand = torch.tensor(_scipy_free_k1(), dtype=torch.float64)
    # float64 sums of 41 weights (adding up to 1) in another order than scipy's
    torch.testing.assert_close(hand, torch.tensor(K1_SCIPY, dtype=torch.float64), atol=sum_tol(41, 1.0, EPS64), rtol=0)
    k = gaussian_kernel().double()
    torch.testing.assert_close(k, torch.outer(hand, hand), atol=2 * EPS32 * float(k.max()), rtol=0)
    # nearly flat, sums to 1 (121 float32-rounded values adding up to 1), NOT a truncated Gaussian of sigma 5
    assert abs(float(k.sum()) - 1) < EPS32
    assert float(k.max() / k.min()) < 1.15
    g = torch.exp(-0.5 * torch.arange(-5, 6.0) ** 2 / 25)
    g = torch.outer(g, g) / torch.outer(g, g).sum()
    assert float((g.double() - k).abs().max()) > 1e-3  # a real difference, far above round-off


def test_blur_equals_authors_conv(net):
    x = torch.randn(2, 3, 16, 16)
    # 3 x 121-term sums (weights adding up to 1 per channel) of values up to max|x|
    torch.testing.assert_close(blur(x), reference_blur(x), atol=sum_tol(3 * 121, float(x.abs().max())), rtol=0)


@pytest.mark.parametrize("n", [2, 3, 17, 225])
def test_auc_known_curves(n):
    assert float(auc(torch.full((n,), 0.7))) == pytest.approx(0.7, abs=auc_tol(n, 0.7))
    ramp = torch.linspace(0, 1, n)  # each point within EPS32 of i/(n-1)
    assert float(auc(ramp)) == pytest.approx(0.5, abs=auc_tol(n) + EPS32)
    assert float(auc(1 - ramp)) == pytest.approx(0.5, abs=auc_tol(n) + EPS32)
    s = torch.rand(4, n)
    torch.testing.assert_close(auc(s), torch.trapezoid(s, torch.linspace(0, 1, n), dim=1), atol=2 * auc_tol(2 * n), rtol=0)


def test_auc_hand_values():
    assert float(auc(torch.tensor([0.0, 1.0, 0.0]))) == 0.5  # (1 - 0) / 2: exact in float32
    assert float(auc(torch.tensor([1.0, 1.0, 0.0, 0.0]))) == 0.5  # (2 - 0.5) / 3: exact in float32
    with pytest.raises(ValueError, match="at least 2"):
        auc(torch.tensor([1.0]))


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("size,step", [((16, 16), 20), ((24, 32), 50), ((16, 16), 256), ((7, 5), 1)])
def test_matches_per_image_reference_loop(net, size, step):
    torch.manual_seed(1)
    b = 3
    x = torch.randn(b, 3, *size)
    sal = torch.rand(b, *size)  # continuous: tie-free
    r = insertion_deletion(net, x, sal, step=step, batch_size=64)
    n_steps = math.ceil(size[0] * size[1] / step)
    assert r.insertion_curve.shape == r.deletion_curve.shape == (b, n_steps + 1)
    zeros = torch.zeros(3, *size)
    blurred = reference_blur(x)
    tol = prob_tol(net, x)
    with torch.no_grad():
        for i in range(b):
            d, ins = reference_curves(net, x[i], sal[i], step, zeros, blurred[i])
            torch.testing.assert_close(r.deletion_curve[i], d, atol=tol, rtol=0)
            torch.testing.assert_close(r.insertion_curve[i], ins, atol=tol, rtol=0)
            assert float(r.deletion[i]) == pytest.approx(float(rise_auc(d)), abs=tol + auc_tol(len(d)))
            assert float(r.insertion[i]) == pytest.approx(float(rise_auc(ins)), abs=tol + auc_tol(len(d)))
    assert torch.equal(r.targets, net(x).argmax(1))
    assert r.fractions[0] == 0 and r.fractions[-1] == 1


def test_default_step_is_224(net):
    x = torch.randn(1, 3, 30, 30)
    r = insertion_deletion(net, x, torch.rand(1, 30, 30))
    assert r.n_steps == math.ceil(900 / 224)


def test_n_steps_gives_exact_point_count(net):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 16, 16)
    sal = torch.rand(2, 16, 16)
    r = insertion_deletion(net, x, sal, n_steps=10)
    assert r.deletion_curve.shape == (2, 11)
    expected = torch.tensor([(i * 256) // 10 for i in range(11)]) / 256
    torch.testing.assert_close(r.fractions, expected.float(), atol=EPS32, rtol=0)  # one float32 rounding of k/256
    # divisible case: n_steps == H*W/step
    a = insertion_deletion(net, x, sal, n_steps=16)
    b = insertion_deletion(net, x, sal, step=16)
    assert torch.equal(a.deletion_curve, b.deletion_curve)  # the same images, batches and kernels
    assert torch.equal(a.insertion_curve, b.insertion_curve)


@pytest.mark.parametrize("bs", [1, 7, 10_000])
def test_chunking_gives_identical_results(net, bs):
    torch.manual_seed(3)
    x = torch.randn(3, 3, 16, 16)
    sal = torch.rand(3, 16, 16)
    ref = insertion_deletion(net, x, sal, step=24, batch_size=5)
    r = insertion_deletion(net, x, sal, step=24, batch_size=bs)
    tol = prob_tol(net, x)  # other batch sizes: other kernels
    torch.testing.assert_close(r.deletion_curve, ref.deletion_curve, atol=tol, rtol=0)
    torch.testing.assert_close(r.insertion_curve, ref.insertion_curve, atol=tol, rtol=0)


def test_forward_batches_bounded_and_counted(net):
    seen: list[int] = []
    h = net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        b, step, bs = 3, 20, 7
        insertion_deletion(net, torch.randn(b, 3, 16, 16), torch.rand(b, 16, 16), step=step, batch_size=bs)
    finally:
        h.remove()
    n = math.ceil(256 / step)
    assert max(seen) <= bs
    assert sum(seen) == b * (2 * n + 1)  # both curves share the clean image's score


def test_layer_resolution_saliency_is_upsampled_bilinearly(net):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 16, 24)
    small = torch.rand(2, 4, 6)
    up = F.interpolate(small[:, None], size=(16, 24), mode="bilinear", align_corners=False)[:, 0]
    a = insertion_deletion(net, x, small, step=30)
    b = insertion_deletion(net, x, up, step=30)
    assert torch.equal(a.deletion_curve, b.deletion_curve)
    assert torch.equal(a.insertion_curve, b.insertion_curve)
    c = insertion_deletion(net, x, small[:, None], step=30)  # (B,1,h,w) accepted too
    assert torch.equal(a.deletion_curve, c.deletion_curve)


# ---------------------------------------------------------------- options


def test_targets_forms_agree_and_logit_score(net):
    torch.manual_seed(5)
    x = torch.randn(3, 3, 16, 16)
    sal = torch.rand(3, 16, 16)
    labels = [1, 4, 7]
    r_list = insertion_deletion(net, x, sal, labels, step=40)
    r_tensor = insertion_deletion(net, x, sal, torch.tensor(labels), step=40)
    assert torch.equal(r_list.deletion_curve, r_tensor.deletion_curve)  # same computation
    r_int = insertion_deletion(net, x, sal, 2, step=40)
    r_0d = insertion_deletion(net, x, sal, torch.tensor(2), step=40)
    assert torch.equal(r_int.insertion_curve, r_0d.insertion_curve)
    tol = prob_tol(net, x, "logit")
    assert r_int.targets.tolist() == [2, 2, 2]
    with torch.no_grad():
        for i, c in enumerate(labels):
            d, ins = reference_curves(net, x[i], sal[i], 40, torch.zeros(3, 16, 16), reference_blur(x)[i], "logit", c)
            r = insertion_deletion(net, x[i : i + 1], sal[i : i + 1], [c], step=40, score="logit")
            torch.testing.assert_close(r.deletion_curve[0], d, atol=tol, rtol=0)
            torch.testing.assert_close(r.insertion_curve[0], ins, atol=tol, rtol=0)


def test_substrates(net):
    torch.manual_seed(6)
    x = torch.randn(2, 3, 16, 16)
    sal = torch.rand(2, 16, 16)
    mean = torch.tensor([0.1, -0.2, 0.3])
    r = insertion_deletion(net, x, sal, step=64, deletion_substrate=mean, insertion_substrate=0.5)
    tol = prob_tol(net, x)
    with torch.no_grad():
        p = net(x).softmax(1)
        c = p.argmax(1)
        p_mean = net(mean[None, :, None, None].expand(2, 3, 16, 16)).softmax(1)
        p_half = net(torch.full((2, 3, 16, 16), 0.5)).softmax(1)
        ar = torch.arange(2)
        torch.testing.assert_close(r.deletion_curve[:, -1], p_mean[ar, c], atol=tol, rtol=0)
        torch.testing.assert_close(r.insertion_curve[:, 0], p_half[ar, c], atol=tol, rtol=0)
        torch.testing.assert_close(r.deletion_curve[:, 0], p[ar, c], atol=tol, rtol=0)
        torch.testing.assert_close(r.insertion_curve[:, -1], p[ar, c], atol=tol, rtol=0)
        # default insertion start = authors' blur
        r2 = insertion_deletion(net, x, sal, step=64)
        p_blur = net(reference_blur(x)).softmax(1)
        torch.testing.assert_close(r2.insertion_curve[:, 0], p_blur[ar, c], atol=tol, rtol=0)
        r3 = insertion_deletion(net, x, sal, step=64, insertion_substrate="zeros", deletion_substrate="blur")
        torch.testing.assert_close(r3.insertion_curve[:, 0], r2.deletion_curve[:, -1], atol=tol, rtol=0)
        torch.testing.assert_close(r3.deletion_curve[:, -1], r2.insertion_curve[:, 0], atol=tol, rtol=0)
    full = torch.randn(3, 16, 16)
    assert torch.equal(make_substrate(full, x)[1], full)
    with pytest.raises(ValueError, match="substrate"):
        insertion_deletion(net, x, sal, deletion_substrate="mean")
    with pytest.raises(ValueError, match=r"\(C,\)"):
        insertion_deletion(net, x, sal, deletion_substrate=torch.zeros(4))


# ---------------------------------------------------------------- robustness


@pytest.mark.parametrize("kind", ["constant", "zeros"])
def test_constant_and_zero_maps_are_defined(net, kind):
    x = torch.randn(2, 3, 16, 16)
    sal = torch.full((2, 16, 16), 0.3) if kind == "constant" else torch.zeros(2, 16, 16)
    r = insertion_deletion(net, x, sal, step=30)
    tol = prob_tol(net, x)
    assert torch.isfinite(r.insertion_curve).all() and torch.isfinite(r.deletion_curve).all()
    # all ties -> stable raster order, same as the reference loop with a stable argsort
    with torch.no_grad():
        d, ins = reference_curves(net, x[0], sal[0], 30, torch.zeros(3, 16, 16), reference_blur(x)[0])
    torch.testing.assert_close(r.deletion_curve[0], d, atol=tol, rtol=0)
    torch.testing.assert_close(r.insertion_curve[0], ins, atol=tol, rtol=0)


def test_batch_of_one_non_square_odd_size(net):
    x = torch.randn(1, 3, 17, 29)
    r = insertion_deletion(net, x, torch.rand(1, 5, 7), step=50)
    assert r.insertion.shape == (1,) and r.deletion_curve.shape == (1, math.ceil(17 * 29 / 50) + 1)
    assert torch.isfinite(r.insertion).all()


def test_clear_errors(net):
    x = torch.randn(2, 3, 16, 16)
    sal = torch.rand(2, 16, 16)
    cases = [
        (dict(saliency=torch.rand(3, 16, 16)), "batch size"),
        (dict(saliency=torch.rand(16, 16)), "shape"),
        (dict(saliency=torch.full((2, 16, 16), float("nan"))), "NaN"),
        (dict(images=torch.randn(3, 16, 16)), r"\(B, C, H, W\)"),
        (dict(images=torch.zeros(2, 3, 16, 16, dtype=torch.uint8)), "floating-point"),
        (dict(step=0), "step"),
        (dict(step=4, n_steps=4), "either step or n_steps"),
        (dict(n_steps=0), "n_steps"),
        (dict(n_steps=1000), "n_steps"),
        (dict(targets=[1]), "2 images"),
        (dict(targets=[1, 10]), r"\[0, 9\]"),
        (dict(targets=-1), r"\[0, 9\]"),
        (dict(targets=torch.tensor([1.0, 2.0])), "dtype"),
        (dict(targets=True), "bool"),
        (dict(targets="cat"), "targets must be"),
        (dict(score="prob"), "score must be"),
        (dict(batch_size=0), "batch_size"),
    ]
    for kwargs, msg in cases:
        args = dict(model=net, images=x, saliency=sal, step=64)
        args.update(kwargs)
        if "n_steps" in kwargs and "step" not in kwargs:
            args.pop("step")
        with pytest.raises(ValueError, match=msg):
            insertion_deletion(**args)


def test_model_with_bad_output_gives_clear_error():
    tokens = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(2))  # (B, 2, 196): no understood score shape
    with pytest.raises(ValueError, match="num_classes"):
        insertion_deletion(tokens, torch.randn(1, 3, 16, 16), torch.rand(1, 16, 16))


# ---------------------------------------------------------------- model hygiene


def test_model_untouched_and_modes_restored(net):
    net.train()
    net.drop.eval()  # mixed modes must come back exactly
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    x = torch.randn(2, 3, 16, 16)
    r1 = insertion_deletion(net, x, torch.rand(2, 16, 16), step=64)
    assert [m.training for m in net.modules()] == modes
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    assert not r1.insertion.requires_grad
    # eval-mode evaluation: dropout/BN inactive -> deterministic
    net.eval()
    r2 = insertion_deletion(net, x, torch.rand(2, 16, 16), step=64)
    assert torch.isfinite(r2.deletion).all()


def test_works_under_inference_mode_and_no_grad(net):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 16, 16)
    sal = torch.rand(2, 16, 16)
    ref = insertion_deletion(net, x, sal, step=32)
    with torch.inference_mode():
        xi, si = x.clone(), sal.clone()
        r = insertion_deletion(net, xi, si, step=32)
    assert torch.equal(r.deletion_curve, ref.deletion_curve)  # same kernels and shapes in every mode
    # inference tensors used outside inference mode
    r2 = insertion_deletion(net, xi, si, step=32)
    assert torch.equal(r2.insertion_curve, ref.insertion_curve)
    with torch.no_grad():
        r3 = insertion_deletion(net, x, sal, step=32)
    assert torch.equal(r3.insertion_curve, ref.insertion_curve)


def test_float64_inputs_are_evaluated_in_float32(net):
    x = torch.randn(1, 3, 16, 16)
    sal = torch.rand(1, 16, 16)
    ref = insertion_deletion(net, x, sal, step=64)
    r = insertion_deletion(net, x.double(), sal.double(), step=64)
    assert r.deletion_curve.dtype == torch.float32
    assert torch.equal(r.deletion_curve, ref.deletion_curve)  # float32 -> float64 -> float32 is exact


@pytest.mark.parametrize("sub", ["zeros", "blur", 0.25])
def test_same_substrate_shares_the_all_substrate_point(net, sub):
    torch.manual_seed(8)
    b, step = 3, 40
    x = torch.randn(b, 3, 16, 16)
    sal = torch.rand(b, 16, 16)
    seen: list[int] = []
    h = net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        r = insertion_deletion(net, x, sal, step=step, batch_size=5, deletion_substrate=sub, insertion_substrate=sub)
    finally:
        h.remove()
    n = math.ceil(256 / step)
    assert sum(seen) == b * 2 * n  # one image fewer per curve pair
    s = make_substrate(sub, x)
    tol = prob_tol(net, x)
    with torch.no_grad():
        for i in range(b):
            d, ins = reference_curves(net, x[i], sal[i], step, s[i].clone(), s[i].clone())
            torch.testing.assert_close(r.deletion_curve[i], d, atol=tol, rtol=0)
            torch.testing.assert_close(r.insertion_curve[i], ins, atol=tol, rtol=0)
    assert torch.equal(r.insertion_curve[:, 0], r.deletion_curve[:, -1])


def test_single_step_curves(net):
    x = torch.randn(2, 3, 8, 8)
    for ins_sub in ("zeros", "blur"):
        r = insertion_deletion(net, x, torch.rand(2, 8, 8), step=64, insertion_substrate=ins_sub)
        assert r.deletion_curve.shape == (2, 2) and torch.isfinite(r.insertion).all()

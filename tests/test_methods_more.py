"""Parity of the added methods, layer fusion and smoothing with pytorch-grad-cam and torchcam.

Peers read in site-packages: pytorch-grad-cam 1.5 (EigenCAM, EigenGradCAM,
GradCAMElementWise, RandomCAM, ``aug_smooth``, ``eigen_smooth``, a list of
target layers) and torchcam 0.5 (SmoothGradCAMpp, SSCAM, ISCAM, ``fuse_cams``).

Noise is injected into torchcam: its ``_distrib.sample`` is replaced by a stub
returning the tensors our seeded generator draws (the order is documented in
each method's docstring), and RandomCAM's ``np.random.uniform`` by our
coefficients. Tolerances:

* same inputs, same formula: float32 round-off, ``RTOL = 1e-5`` of the largest
  entry, plus ``RTOL * sum_k |terms_k|`` where a sum over channels cancels
  (``_roundoff`` of the peers test);
* an SVD's first singular vector computed by two LAPACK calls differs by
  ``~ n eps ||X|| / (s1 - s2)`` (Davis-Kahan), so the projections differ by
  ``s1`` times that (``_svd_bound``); the SVD sign is arbitrary in pytorch-grad-cam
  and fixed here (``sum_k v_k >= 0``), so their projection is oriented the same way first;
* saliency in [0, 1] after pytorch-grad-cam's cv2 resizing: ``SALIENCY_ATOL``
  of the peers test (cv2 vs torch bilinear ~3e-7, its 1e-7 min-max eps).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_cam import EigenCAM, EigenGradCAM, GradCAMElementWise, GradCAM, ISCAM, RandomCAM, SSCAM, SmoothGradCAMPlusPlus, explain_all
from lightning_cam.methods.eigen import first_component
from tolerance import reduction_terms, sum_tol
from tests.test_methods_peers import RTOL, SALIENCY_ATOL, _assert_close, _roundoff, _small

pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

F32 = 2.0**-23


@pytest.fixture(scope="module")
def small():
    return _small()


@pytest.fixture(scope="module")
def flat():
    return _small(downsample=False)


def _x(seed: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _top1(model, x) -> list[int]:
    with torch.no_grad():
        return model(x).argmax(1).tolist()


def _pgc_targets(targets):
    return [ClassifierOutputTarget(c) for c in targets]


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def _svd_bound(terms: torch.Tensor) -> torch.Tensor:
    """Per-image bound on the difference of two float32 first-component projections of ``terms``."""
    x = terms.double().flatten(2).transpose(1, 2)
    x = x - x.mean(1, keepdim=True)
    s = torch.linalg.svdvals(x)
    n = x.shape[1] * x.shape[2]
    gap = (s[:, 0] - s[:, 1]).clamp_min(1e-30)
    return (8 * n * F32 * s[:, 0] ** 2 / gap)[:, None, None]


# ------------------------------------------------------------------- pytorch-grad-cam: deterministic


PGC = {"eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "gradcamelementwise": "GradCAMElementWise"}
OURS = {"eigencam": EigenCAM, "eigengradcam": EigenGradCAM, "gradcamelementwise": GradCAMElementWise}


def _pgc_run(name, model, layer, x, targets, **call):
    with getattr(pgc, PGC[name])(model=model, target_layers=[layer] if not isinstance(layer, list) else layer) as cam:
        out = cam(input_tensor=x, targets=_pgc_targets(targets), **call)
        acts = [torch.from_numpy(a.numpy() if hasattr(a, "numpy") else a) for a in cam.activations_and_grads.activations]
        grads = [torch.from_numpy(g.numpy() if hasattr(g, "numpy") else g) for g in cam.activations_and_grads.gradients]
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(out), acts, grads


@pytest.mark.parametrize("name", list(PGC))
def test_eigen_and_elementwise_match_pytorch_grad_cam(name, small):
    x = _x()
    targets = _top1(small, x)
    out, acts, grads = _pgc_run(name, small, small.block, x, targets)
    act, grad = acts[0], (grads[0] if grads else None)
    ours = OURS[name](small, "block").explain(x, targets)
    terms = act if name == "eigencam" else grad * act if name == "eigengradcam" else torch.relu(grad * act)
    if name == "gradcamelementwise":
        theirs_raw = terms.sum(1).clamp_min(0)
        _assert_close(ours.maps, theirs_raw, _roundoff(terms), what=name)
        expected = out
    else:
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

        projection = torch.from_numpy(get_2d_projection(terms.numpy()))
        # orient theirs like ours: positively correlated with sum_k terms_k
        sign = torch.sign((projection * terms.sum(1)).flatten(1).sum(1))[:, None, None]
        theirs_raw = (sign * projection).clamp_min(0)
        _assert_close(ours.maps, theirs_raw, _svd_bound(terms), what=name)
        # pytorch-grad-cam: scale at the layer, resize, average the layers, scale again
        expected = torch.from_numpy(scale_cam_image(scale_cam_image(theirs_raw.numpy(), (x.shape[-1], x.shape[-2]))))
        # and where LAPACK happened to pick our sign, their final output is ours too
        agree = sign.flatten() > 0
        if bool(agree.any()):
            assert torch.allclose(out[agree], expected[agree], atol=SALIENCY_ATOL)
    corr = _correlation(ours.saliency(), expected)
    assert bool((corr >= 0.99).all()), corr
    # cv2 vs torch bilinear (SALIENCY_ATOL) plus the projection bound, which min-max scaling divides by
    # the map's range (twice: both ends of the range move by at most the bound)
    flat = theirs_raw.flatten(1)
    scaled_svd = 2 * _svd_bound(terms).flatten() / (flat.amax(1) - flat.amin(1)).clamp_min(1e-30)
    assert (ours.saliency() - expected).abs().flatten(1).amax(1).le(SALIENCY_ATOL + scaled_svd).all()


def test_first_component_sign_and_centering():
    terms = torch.rand(3, 5, 4, 4)
    p = first_component(terms)
    bound = _svd_bound(terms)  # (B,1,1): float32 error of one projection entry
    # centred data: the projection's mean is 0 up to each entry's error plus the 16-term float32 mean
    mean_tol = bound.flatten() + sum_tol(16, 1.0) * p.flatten(1).abs().amax(1)
    assert (p.flatten(1).mean(1).abs() <= mean_tol).all()
    assert bool(((p * terms.sum(1)).flatten(1).sum(1) >= 0).all())
    # 2 * terms is exact in float32; the two projections differ by their errors (2x for the scale)
    _assert_close(first_component(terms * 2), 2 * p, 4 * bound, what="scaled")


def test_randomcam_matches_pytorch_grad_cam_and_is_seeded(small, monkeypatch):
    x = _x()
    targets = _top1(small, x)
    state = torch.get_rng_state()
    ours = RandomCAM(small, "block", seed=3).explain(x, targets)
    assert torch.equal(torch.get_rng_state(), state), "RandomCAM touched the global RNG"
    assert torch.equal(RandomCAM(small, "block", seed=3).explain(x, targets).weights, ours.weights)
    assert not torch.equal(RandomCAM(small, "block", seed=4).explain(x, targets).weights, ours.weights)
    assert float(ours.weights.abs().max()) <= 1
    import pytorch_grad_cam.random_cam as random_cam

    monkeypatch.setattr(random_cam.np.random, "uniform", lambda low, high, size: ours.weights.double().numpy())
    with pgc.RandomCAM(model=small, target_layers=[small.block]) as cam:
        out = torch.from_numpy(cam(input_tensor=x, targets=_pgc_targets(targets)))
        act = torch.from_numpy(cam.activations_and_grads.activations[0].numpy())
    small.zero_grad(set_to_none=True)
    terms = ours.weights[:, :, None, None] * act
    _assert_close(ours.maps, terms.sum(1).clamp_min(0), _roundoff(terms), what="randomcam")
    assert torch.allclose(ours.saliency(), out, atol=SALIENCY_ATOL + float(_roundoff(terms).max()) * 4 / float(ours.maps.max()))


# ------------------------------------------------------------------- torchcam: noisy, same noise


class _Noise:
    """Stands in for torchcam's ``torch.distributions.Normal``: hands out our noise in order."""

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def sample(self, size):
        value = self.tensors.pop(0)
        assert tuple(value.shape) == tuple(size)
        return value


@pytest.mark.parametrize("num_samples,gradient", [(1, "mean"), (4, "last")])
def test_smoothgradcampp_matches_torchcam_with_the_same_noise(num_samples, gradient, small):
    x = _x()
    targets = _top1(small, x)
    ours = SmoothGradCAMPlusPlus(small, "block", num_samples=num_samples, std=0.3, seed=5, gradient=gradient).explain(x, targets)
    generator = torch.Generator().manual_seed(5)
    noise = [0.3 * torch.randn(x.shape, generator=generator) for _ in range(num_samples)]
    with tcm.SmoothGradCAMpp(small, "block", num_samples=num_samples, std=0.3, input_shape=(3, 32, 32)) as extractor:
        small(x)
        extractor._distrib = _Noise(noise)
        theirs = extractor._get_weights(targets)[0]
    _assert_close(ours.weights, theirs, rtol=RTOL, what="smoothgradcam++ weights")


def test_smoothgradcampp_agrees_in_expectation_with_torchcam(small):
    """Independent noise: the means over R runs (ours: seeds 0..R-1; torchcam: its global RNG) of the
    same estimator (``gradient="last"``) agree within 6 standard errors of the difference of the means."""
    x = _x()
    targets = _top1(small, x)
    runs, n = 24, 4
    ours = torch.stack([
        SmoothGradCAMPlusPlus(small, "block", num_samples=n, seed=s, gradient="last").explain(x, targets).weights for s in range(runs)
    ]).double()
    torch.manual_seed(0)
    theirs = []
    with tcm.SmoothGradCAMpp(small, "block", num_samples=n, std=0.3, input_shape=(3, 32, 32)) as extractor:
        for _ in range(runs):
            small(x)
            theirs.append(extractor._get_weights(targets)[0])
    theirs = torch.stack(theirs).double()
    error = (ours.var(0) / runs + theirs.var(0) / runs).sqrt()
    assert bool(((ours.mean(0) - theirs.mean(0)).abs() <= 6 * error + 1e-6 * float(theirs.abs().max())).all())


def test_smoothgradcampp_mean_gradient_and_seed(small):
    """``gradient="mean"`` uses the average noisy gradient: with std -> 0 it is Grad-CAM++ with torchcam's alpha."""
    x = _x()
    state = torch.get_rng_state()
    a = SmoothGradCAMPlusPlus(small, "block", num_samples=3, seed=1).explain(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(SmoothGradCAMPlusPlus(small, "block", num_samples=3, seed=1, batch_size=2).explain(x).weights, a.weights)
    assert not torch.equal(SmoothGradCAMPlusPlus(small, "block", num_samples=3, seed=2).explain(x).weights, a.weights)
    tiny = SmoothGradCAMPlusPlus(small, "block", num_samples=2, std=1e-6).explain(x)
    g = GradCAM(small, "block").explain(x)
    from lightning_cam.methods.base import LayerPass

    lp = LayerPass(small, "block", x)
    grad, act = lp.gradient, lp.activation
    alpha = grad**2 / (2 * grad**2 + (grad**3 * act).sum((2, 3), keepdim=True) + 1e-8)
    expected = (alpha * torch.relu(grad)).sum((2, 3))
    assert torch.allclose(tiny.weights, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    assert torch.equal(tiny.targets, g.targets)


@pytest.mark.parametrize("cls,peer", [(SSCAM, "SSCAM"), (ISCAM, "ISCAM")])
def test_sscam_iscam_match_torchcam_with_the_same_noise(cls, peer, small):
    x = _x()
    targets = _top1(small, x)
    batch, channels, n = 2, 12, 3
    kwargs = {"num_samples": n, "std": 2.0} if cls is SSCAM else {"num_samples": n}
    ours = cls(small, "block", batch_size=batch * channels, **({"seed": 7} if cls is SSCAM else {}), **kwargs).explain(x, targets)
    with getattr(tcm, peer)(small, "block", batch_size=batch * channels, input_shape=(3, 32, 32), **kwargs) as extractor:
        small(x)
        if cls is SSCAM:
            generator = torch.Generator().manual_seed(7)
            extractor._distrib = _Noise(
                2.0 * torch.randn((batch * channels, 1, 32, 32), generator=generator).view(batch, channels, 32, 32) for _ in range(n)
            )
        theirs = extractor._get_weights(targets)[0]
    _assert_close(ours.weights, theirs, rtol=RTOL, what=cls.name)


def test_sscam_agrees_in_expectation_with_torchcam(small):
    """Independent noise (ours seeded, torchcam's from the global RNG): the centred log-weights
    ``m_k - mean_k m_k`` are Monte-Carlo means of N scores; they must agree within 6 standard errors,
    the per-sample spread estimated from single-sample runs of ours."""
    x = _x()
    targets = _top1(small, x)
    n = 64

    def centred(w):
        logw = w.double().log()
        return logw - logw.mean(1, keepdim=True)

    singles = torch.stack([centred(SSCAM(small, "block", num_samples=1, seed=s).explain(x, targets).weights) for s in range(24)])
    spread = singles.std(0)  # per (image, channel)
    ours = centred(SSCAM(small, "block", num_samples=n, seed=100).explain(x, targets).weights)
    torch.manual_seed(0)
    with tcm.SSCAM(small, "block", batch_size=256, num_samples=n, input_shape=(3, 32, 32)) as extractor:
        small(x)
        theirs = centred(extractor._get_weights(targets)[0])
    bound = 6 * math.sqrt(2) * spread / math.sqrt(n) + 1e-6
    assert bool(((ours - theirs).abs() <= bound).all()), ((ours - theirs).abs() / bound).max()


# ------------------------------------------------------------------- fusion and smoothing


def test_layer_fusion_mean_matches_pytorch_grad_cam(small):
    x = _x()
    targets = _top1(small, x)
    with pgc.GradCAM(model=small, target_layers=[small.block, small.top]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=_pgc_targets(targets)))
    small.zero_grad(set_to_none=True)
    ours = GradCAM(small, ["block", "top"]).explain(x, targets)
    assert ours.maps.shape == (2, 32, 32) and ours.weights is None
    assert torch.allclose(ours.maps, theirs, atol=3 * SALIENCY_ATOL)
    same = explain_all(small, ["block", "top"], x, methods=["gradcam"], targets=targets)["gradcam"]
    assert torch.equal(same.maps, ours.maps)


def test_layer_fusion_max_matches_torchcam(flat):
    """torchcam: normalised maps, upsampled to the largest layer (here the input's size), pixel-wise max."""
    x = _x()
    targets = _top1(flat, x)
    with tcm.GradCAM(flat, ["block", "top"], input_shape=(3, 32, 32)) as extractor:
        scores = flat(x)
        cams = extractor(targets, scores)
        theirs = extractor.fuse_cams(cams)
    flat.zero_grad(set_to_none=True)
    ours = GradCAM(flat, ["block", "top"]).explain(x, targets, fusion="max")
    span = theirs.flatten(1).amax(1) - theirs.flatten(1).amin(1)
    theirs = (theirs - theirs.flatten(1).amin(1)[:, None, None]) / span[:, None, None]
    # each layer is scaled by (max + 1e-7) here, (max + 1e-8) there: a difference <= 1e-7 / max per layer,
    # stretched by the final min-max (<= 4 e / span)
    peaks = torch.stack([explain_all(flat, layer, x, ["gradcam"], targets)["gradcam"].maps.flatten(1).amax(1) for layer in ("block", "top")])
    bound = 4 * (1e-7 / peaks).amax(0) / span + 4 * F32
    assert bool(((ours.saliency() - theirs).abs().flatten(1).amax(1) <= bound).all())


@pytest.mark.parametrize("method,peer", [("gradcam", "GradCAM"), ("layercam", "LayerCAM"), ("gradcamelementwise", "GradCAMElementWise")])
def test_aug_smooth_matches_pytorch_grad_cam(method, peer, small):
    x = _x()
    targets = _top1(small, x)
    with getattr(pgc, peer)(model=small, target_layers=[small.block]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=_pgc_targets(targets), aug_smooth=True))
    small.zero_grad(set_to_none=True)
    ours = explain_all(small, "block", x, methods=[method], targets=targets, aug_smooth=True)[method]
    assert ours.maps.shape == (2, 32, 32)
    assert torch.allclose(ours.maps, theirs, atol=3 * SALIENCY_ATOL)


@pytest.mark.parametrize("method,peer", [("gradcam", "GradCAM"), ("gradcamelementwise", "GradCAMElementWise"), ("hirescam", "HiResCAM"), ("layercam", "LayerCAM")])
def test_eigen_smooth_matches_pytorch_grad_cam(method, peer, small):
    x = _x()
    targets = _top1(small, x)
    with getattr(pgc, peer)(model=small, target_layers=[small.block]) as cam:
        cam(input_tensor=x, targets=_pgc_targets(targets))
        act = cam.activations_and_grads.activations[0].numpy()
        grad = cam.activations_and_grads.gradients[0].numpy()
        raw = torch.from_numpy(cam.get_cam_image(x, small.block, None, act, grad, True))
    small.zero_grad(set_to_none=True)
    ours_plain = explain_all(small, "block", x, methods=[method], targets=targets)[method]
    ours = explain_all(small, "block", x, methods=[method], targets=targets, eigen_smooth=True)[method]
    from lightning_cam import get_method
    from lightning_cam.methods.base import LayerPass

    terms = get_method(method)(small, "block").channel_terms(LayerPass(small, "block", x, targets), ours_plain)
    sign = torch.sign((raw * terms.sum(1)).flatten(1).sum(1))[:, None, None]
    _assert_close(ours.maps, (sign * raw).clamp_min(0), _svd_bound(terms), what=f"{method} eigen_smooth")


class _NoTerms(GradCAM):
    name = "noterms"

    def channel_terms(self, layer_pass, explanation):
        return None


def test_eigen_smooth_refuses_methods_without_channel_terms(small):
    with pytest.raises(ValueError, match="eigen_smooth needs per-channel terms"):
        _NoTerms(small, "block").explain(_x(), eigen_smooth=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_new_methods_on_cuda_match_cpu_and_are_seeded():
    """On the GPU: deterministic methods equal the CPU result (float32 round-off of cuDNN/cuBLAS);
    seeded ones are reproducible from ``seed`` on the device generator; the global CUDA RNG is untouched."""
    model = _small()
    x = _x()
    methods = ["eigencam", "eigengradcam", "gradcamelementwise", "iscam", "randomcam", "smoothgradcam++", "sscam"]
    kwargs = {"sscam": {"num_samples": 2}, "iscam": {"num_samples": 2}, "smoothgradcam++": {"num_samples": 2}}
    cpu = explain_all(model, "block", x, methods, method_kwargs=kwargs)
    gpu_model, gx = model.cuda(), x.cuda()
    state = torch.cuda.get_rng_state()
    gpu = explain_all(gpu_model, "block", gx, methods, method_kwargs=kwargs)
    again = explain_all(gpu_model, "block", gx, methods, method_kwargs=kwargs)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert torch.equal(gpu["randomcam"].weights, again["randomcam"].weights)
    for m in methods:  # same noise; cuDNN may reorder sums between calls: float32 round-off
        scale = float(gpu[m].maps.abs().max())
        tol = sum_tol(reduction_terms(model, spatial=64), scale)  # the network's reductions, at the maps' scale
        assert torch.allclose(gpu[m].maps, again[m].maps, rtol=0, atol=tol), m
    for m in ("eigencam", "eigengradcam", "gradcamelementwise", "iscam"):
        assert bool((_correlation(gpu[m].saliency().cpu(), cpu[m].saliency()) >= 0.99).all()), m
    model.cpu()


def test_bad_fusion_and_empty_layer_list_are_refused(small):
    with pytest.raises(ValueError, match="fusion must be one of"):
        GradCAM(small, "block").explain(_x(), fusion="median")
    with pytest.raises(ValueError, match="fusion must be one of"):
        explain_all(small, ["block", "top"], _x(), ["gradcam"], fusion="median")
    with pytest.raises(ValueError, match="empty list"):
        GradCAM(small, [])

"""Parity of the peers' newer methods (issue 22) with pytorch-grad-cam 1.5.7, read in site-packages.

ShapleyCAM, FinerCAM, FEM, KPCA-CAM, Sobel-CAM; pytorch-grad-cam's defaults unless a test says
otherwise. Tolerances (tests/tolerance.py, the peers test's helpers):

* same activations, same formula: ``RTOL`` of the largest entry plus ``_roundoff`` where a
  sum over channels cancels;
* a second derivative (ShapleyCAM's Hessian-vector product) and a softmax-weighted score
  (FinerCAM) run the same kernels on both sides in another order: the same bound;
* FinerCAM: the peer adds ``1e-9`` to ``sum_j softmax_j`` (we renormalise over the compared
  classes exactly); with ``sum_j softmax_j >= 1e-3`` here, that moves the score by
  ``<= 1e-6`` relative, inside ``RTOL``... asserted below;
* KPCA-CAM: an eigenvector of two float32 eigensolvers differs by ``~ n eps ||G|| / gap``
  (Davis-Kahan), the projection by ``sqrt(lambda_1)`` times that (``_eig_bound``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_cam import FEM, KPCACAM, FinerCAM, FullGrad, ShapleyCAM, SobelCAM, explain_all
from lightning_cam.methods.activation import kernel_first_component
from lightning_cam.methods.targeted import comparison_classes
from tests.test_methods_peers import RTOL, SALIENCY_ATOL, _assert_close, _pgc_perturbation, _roundoff, _small

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget, FinerWeightedTarget  # noqa: E402

F32 = 2.0**-23
CV2_BILINEAR = 1e-6  # cv2 vs torch bilinear resizing of one map in [0, 1] (~3e-7 measured, tests/test_methods_peers.py)


class SmoothCNN(nn.Module):
    """conv-ReLU-pool -> ``block`` (conv-BN-SiLU) -> ``top`` (conv-GELU) -> GAP -> fc: a head with curvature."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.SiLU())
        self.top = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.GELU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.top(self.block(self.stem(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def smooth() -> SmoothCNN:
    torch.manual_seed(3)
    return SmoothCNN().eval()


def _x(seed: int = 2, size: int = 24) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _top1(model: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(x).argmax(1).tolist()


def _weights_map(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    return torch.relu(torch.einsum("bk,bkhw->bhw", weights.float(), activation.float()))


# ----------------------------------------------------------------------------- ShapleyCAM


@pytest.mark.parametrize("score,peer_target", [("logit", ClassifierOutputTarget), ("rest", ClassifierOutputReST)])
def test_shapleycam_matches_pytorch_grad_cam(score, peer_target, smooth):
    """pytorch-grad-cam's default target is the logit (``BaseCAM.forward``: ``ClassifierOutputTarget``
    of the argmax); the paper's ``ClassifierOutputReST`` is our ``score="rest"``."""
    x = _x()
    targets = _top1(smooth, x)
    ours = ShapleyCAM(smooth, "block", score=score).explain(x, targets)
    out, act, weights = _pgc_perturbation(pgc.ShapleyCAM, smooth, smooth.block, x, [peer_target(c) for c in targets])
    act = act.detach()
    _assert_close(ours.weights, weights, what=f"ShapleyCAM ({score}) weights")
    _assert_close(ours.maps, _weights_map(weights, act), bound=_roundoff(weights.double()[:, :, None, None] * act), what="map")
    _assert_close(ours.saliency(x.shape[-2:]), out, bound=SALIENCY_ATOL, rtol=0.0, what="saliency vs cv2 output")
    grad = explain_all(smooth, "block", x, methods=["gradcam"], targets=targets)["gradcam"].weights
    if score == "logit":  # the Hessian term is not vacuous on this head
        assert float((ours.weights - grad).abs().max()) > 100 * RTOL * float(grad.abs().max())


def test_shapleycam_is_gradcam_on_a_piecewise_linear_head():
    """ReLU + max-pool + linear after the layer: ``H = 0`` almost everywhere, ShapleyCAM == Grad-CAM."""
    model = _small()
    x = _x(size=32)
    both = explain_all(model, "block", x, methods=["shapleycam", "gradcam"])
    _assert_close(both["shapleycam"].weights, both["gradcam"].weights, what="ShapleyCAM vs Grad-CAM (ReLU head)")
    with pytest.raises(ValueError, match="score"):
        ShapleyCAM(model, "block", score="softmax")


# ----------------------------------------------------------------------------- FinerCAM


def _run_finer(model: nn.Module, layer: nn.Module, x: torch.Tensor, **call) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam FinerCAM: (output, weights); its base Grad-CAM's weights are recorded as it computes them."""
    recorded = []
    with pgc.FinerCAM(model, [layer]) as cam:
        compute = cam.base_cam.get_cam_weights
        cam.base_cam.get_cam_weights = lambda *a, **k: recorded.append(compute(*a, **k)) or recorded[-1]
        out = cam(input_tensor=x, **call)
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(out), torch.from_numpy(np.asarray(recorded[0]))


def test_finercam_matches_pytorch_grad_cam_defaults(smooth):
    """Peer defaults (``targets=None``): main class = argmax, comparison ranks (1, 2, 3) by
    ``|y_j - y_c|``, alpha = 1. Ours with default targets (top-1) and default options."""
    x = _x(seed=5)
    ours = explain_all(smooth, "top", x, methods=["finercam", "gradcam"])
    out, weights = _run_finer(smooth, smooth.top, x)
    _assert_close(ours["finercam"].weights, weights, what="FinerCAM weights")
    _assert_close(ours["finercam"].saliency(x.shape[-2:]), out, bound=SALIENCY_ATOL, rtol=0.0, what="FinerCAM saliency")
    # the score differs from Grad-CAM's; the peer's 1e-9 is negligible next to sum_j softmax_j here
    assert not torch.allclose(ours["finercam"].weights, ours["gradcam"].weights, rtol=1e-3)
    logits = ours["finercam"].logits
    classes = comparison_classes(logits, ours["finercam"].targets, (1, 2, 3))
    assert float(logits.softmax(1).gather(1, classes).sum(1).min()) >= 1e-3


def test_finercam_given_targets_and_alpha(smooth):
    """Non-top-1 targets and alpha = 0.6: the peer's ``FinerWeightedTarget`` built from our comparison classes,
    which rank by the same distance as its own sorting."""
    x = _x(seed=6)
    targets = [(c + 2) % 6 for c in _top1(smooth, x)]
    ours = FinerCAM(smooth, "top", alpha=0.6).explain(x, targets)
    classes = comparison_classes(ours.logits, ours.targets, (1, 2, 3))
    peer = [FinerWeightedTarget(c, classes[i].tolist(), 0.6) for i, c in enumerate(targets)]
    out, weights = _run_finer(smooth, smooth.top, x, targets=peer)
    _assert_close(ours.weights, weights, what="FinerCAM weights (alpha 0.6)")
    zero = FinerCAM(smooth, "top", alpha=0.0).explain(x, targets)
    grad = explain_all(smooth, "top", x, methods=["gradcam"], targets=targets)["gradcam"]
    _assert_close(zero.weights, grad.weights, what="alpha = 0: the shares sum to 1, the score is y_c (Grad-CAM)")
    with pytest.raises(ValueError, match="comparison rank"):
        FinerCAM(smooth, "top", comparison_ranks=(0, 9)).explain(x)


# ----------------------------------------------------------------------------- FEM, KPCA-CAM


def _run_activation_method(cls, model: nn.Module, layer: nn.Module, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, activation, raw map = ReLU(get_cam_image)) of a gradient-free pytorch-grad-cam method."""
    with cls(model, [layer], **kwargs) as cam:
        out = cam(input_tensor=x, targets=None)
        activation = cam.activations_and_grads.activations[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, None, activation, None, False), 0)
    return torch.from_numpy(out), torch.from_numpy(activation), torch.from_numpy(np.asarray(raw, dtype=np.float32))


@pytest.mark.parametrize("layer", ["block", "top"])
def test_fem_matches_pytorch_grad_cam(layer, smooth):
    x = _x(seed=7)
    ours = FEM(smooth, layer).explain(x)
    out, act, raw = _run_activation_method(pgc.FEM, smooth, smooth.get_submodule(layer), x)
    # the threshold test A > mu + 2 sigma is discrete: no activation lies within float32 round-off of it here
    std, mean = torch.std_mean(act.double(), dim=(2, 3), correction=0, keepdim=True)
    assert float(((act - (mean + 2 * std)).abs() / (std + 1e-30)).min()) > 1e-4
    weights = (act > mean + 2 * std).double().mean(dim=(2, 3))
    positions = act.shape[2] * act.shape[3]  # the same counts above the threshold (float32 vs float64 quotients)
    assert torch.equal((ours.weights.double() * positions).round(), (weights * positions).round())
    _assert_close(ours.maps, raw, bound=_roundoff(weights[:, :, None, None] * act), what="FEM map")
    _assert_close(ours.saliency(x.shape[-2:]), out, bound=SALIENCY_ATOL, rtol=0.0, what="FEM saliency")


def _eig_bound(activation: torch.Tensor, kernel: str) -> torch.Tensor:
    """Per-image bound on two float32 kernel-PCA projections: ``8 n eps ||G||_2 sqrt(l1) / (l1 - l2)``."""
    x = activation.double().flatten(2).transpose(1, 2)
    x = x - x.mean(1, keepdim=True)
    inner = x @ x.transpose(1, 2) / x.shape[2]
    g = torch.tanh(inner + 1) if kernel == "sigmoid" else torch.exp(-torch.cdist(x, x).pow(2) / x.shape[2])
    g = g - g.mean(1, keepdim=True) - g.mean(2, keepdim=True) + g.mean((1, 2), keepdim=True)
    values = torch.linalg.eigvalsh(g)
    n = g.shape[1]
    gap = (values[:, -1] - values[:, -2]).clamp_min(1e-30)
    return (8 * n * F32 * values.abs().amax(1) * values[:, -1].clamp_min(0).sqrt() / gap)[:, None, None]


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf"])
def test_kpcacam_matches_pytorch_grad_cam(kernel, smooth):
    """scikit-learn's ``KernelPCA`` (dense ``eigh`` for <= 200 pixels) vs ours (``torch.linalg.eigh``), sign by its
    ``svd_flip`` rule on both sides."""
    x = _x(seed=8)
    ours = KPCACAM(smooth, "block", kernel=kernel).explain(x)
    out, act, raw = _run_activation_method(pgc.KPCA_CAM, smooth, smooth.block, x, kernel=kernel)
    _assert_close(ours.maps, raw, bound=_eig_bound(act, kernel), what=f"KPCA-CAM ({kernel}) map")
    projection = kernel_first_component(act, kernel)
    peak = projection.flatten(1).abs().argmax(1)
    assert bool((projection.flatten(1).gather(1, peak[:, None]) > 0).all()), "sklearn's sign: the largest entry is positive"
    with pytest.raises(ValueError, match="kernel"):
        KPCACAM(smooth, "block", kernel="cosine")


# ----------------------------------------------------------------------------- Sobel-CAM


def test_sobelcam_matches_pytorch_grad_cam_on_an_integer_grey_image(smooth):
    """On an integer grey image (R = G = B, values <= 60) cv2's grey conversion and Sobel sums are exact
    and no |S * I| <= 240 saturates uint8, so the peer's only rounding is ``addWeighted``'s final
    round-to-nearest: <= 0.5. Colour images add cv2's fixed-point grey rounding (<= 0.5 per pixel, x 4 per Sobel)."""
    from pytorch_grad_cam.sobel_cam import sobel_cam

    generator = torch.Generator().manual_seed(9)
    grey = torch.randint(0, 61, (2, 1, 20, 24), generator=generator).float().expand(2, 3, 20, 24)
    ours = SobelCAM(smooth, "block").explain(grey)
    assert ours.maps.shape == (2, 20, 24)
    for b in range(2):
        image = grey[b].permute(1, 2, 0).numpy().astype(np.uint8)
        theirs = torch.from_numpy(sobel_cam(image).astype(np.float32))
        _assert_close(ours.maps[b], theirs, bound=0.5, rtol=0.0, what="Sobel-CAM grey")
    colour = torch.randint(0, 61, (1, 3, 20, 24), generator=generator).float()
    theirs = torch.from_numpy(sobel_cam(colour[0].permute(1, 2, 0).numpy().astype(np.uint8)).astype(np.float32))
    _assert_close(SobelCAM(smooth, "block").explain(colour).maps[0], theirs, bound=4.5 + 0.5, rtol=0.0, what="Sobel-CAM colour")


# ----------------------------------------------------------------------------- all of them


def test_newer_methods_batched_and_shared_pass(smooth):
    """One ``explain_all`` pass equals the methods run alone and image by image (same kernels per image:
    a batch of 2 vs 1 may pick other blockings, so the round-off bound, not bit equality)."""
    x = _x(seed=10)
    names = ["shapleycam", "finercam", "fem", "kpcacam", "sobelcam"]
    together = explain_all(smooth, "block", x, methods=names)
    for name in names:
        for b in range(2):
            alone = explain_all(smooth, "block", x[b : b + 1], methods=[name])[name]
            _assert_close(alone.maps[0], together[name].maps[b], what=f"{name} image {b}")
        assert together[name].seconds > 0


# ----------------------------------------------------------------------------- Grad-CAM++ on ViT tokens


def test_gradcampp_on_vit_differs_from_pytorch_grad_cam_only_by_its_eps():
    """The cause of the low agreement on timm ViTs (0.62-0.78 per-image correlation at 224 px, see
    docs/transformers.md): pytorch-grad-cam's absolute ``+1e-6`` in ``2 g^2 + sum(A) g^3 + eps``.
    Token gradients of a std-0.02 head are ~1e-5..1e-3, so ``2 g^2`` lies mostly (at 224 px: always) below the eps. Not
    the sign of the LayerNorm sums: their formula WITHOUT the eps on their own g, A gives our weights,
    and ``eps=1e-6`` gives theirs."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2).eval()
    x = _x(seed=11, size=32)
    layer = model.blocks[-1].norm1

    def tokens(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's vit_example reshape_transform
        return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ours = explain_all(model, "blocks.1.norm1", x, methods=["gradcam++"])["gradcam++"]
    matched = explain_all(model, "blocks.1.norm1", x, methods=["gradcam++"], method_kwargs={"gradcam++": {"eps": 1e-6}})["gradcam++"]
    with pgc.GradCAMPlusPlus(model, [layer], reshape_transform=tokens) as cam:
        out = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in ours.targets]))
        act, grad = (torch.from_numpy(t.numpy()).double() for t in (cam.activations_and_grads.activations[0], cam.activations_and_grads.gradients[0]))
        weights = torch.from_numpy(cam.get_cam_weights(x, layer, None, act.float().numpy(), grad.float().numpy()))
    model.zero_grad(set_to_none=True)
    assert float((2 * grad.pow(2) < 1e-5).double().mean()) > 0.5, "eps >= 10% of most denominators (at 224 px: > 100%)"
    denominator = 2 * grad.pow(2) + act.sum(dim=(2, 3), keepdim=True) * grad.pow(3)
    no_eps = (torch.relu(grad) * torch.where(grad != 0, grad.pow(2) / denominator, torch.zeros_like(grad))).sum(dim=(2, 3))
    _assert_close(ours.weights, no_eps, what="ours = their formula without eps")
    _assert_close(matched.weights, weights, what="eps=1e-6 = pytorch-grad-cam")
    _assert_close(matched.saliency(), out, bound=SALIENCY_ATOL, rtol=0.0, what="eps=1e-6 saliency vs pytorch-grad-cam")
    assert float((ours.weights - weights).abs().max()) > 0.05 * float(weights.abs().max()), "the deviation is not vacuous"


# ----------------------------------------------------------------------------- RefineCAM = fusion="prod"


@pytest.mark.parametrize("base,ours_kwargs", [("GradCAMPlusPlus", {"eps": 1e-6}), ("GradCAM", {})], ids=["gradcam++", "gradcam"])
def test_fusion_prod_matches_pytorch_grad_cam_refinecam(base, ours_kwargs):
    """pytorch-grad-cam ``RefineCAM`` (default base: Grad-CAM++, with its eps) over two layers = our
    ``fusion="prod"``. Its per-layer maps are cv2-resized (SALIENCY_ATOL each); a product of two maps
    in [0, 1] and the final min-max scaling at most double and rescale that (x 4, see _minmax_bound)."""
    model = _small()
    x = _x(seed=12, size=32)
    targets = _top1(model, x)
    method = "gradcam++" if base == "GradCAMPlusPlus" else "gradcam"
    ours = explain_all(model, ["block", "top"], x, methods=[method], targets=targets, fusion="prod",
                       method_kwargs={method: ours_kwargs})[method]
    refine = pgc.RefineCAM(model, [model.block, model.top], base_method=getattr(pgc, base))
    theirs = torch.from_numpy(refine(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets]))
    for cam in refine.base_cam_per_layer:
        cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    _assert_close(ours.maps, theirs, bound=8 * SALIENCY_ATOL, rtol=0.0, what=f"RefineCAM ({base})")
    mean = explain_all(model, ["block", "top"], x, methods=[method], targets=targets)[method]
    assert float((mean.maps - ours.maps).abs().max()) > 0.05, "prod is not the mean fusion"


# ----------------------------------------------------------------------------- Guided Backprop, Guided Grad-CAM


def _pgc_guided(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """pytorch-grad-cam ``GuidedBackpropReLUModel``, one image per call (it reads image 0): (B,C,H,W)."""
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel

    gb = GuidedBackpropReLUModel(model, device="cpu")
    out = [torch.from_numpy(gb(x[b : b + 1].clone(), c)).permute(2, 0, 1) for b, c in enumerate(targets)]
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def _resnet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5).eval()


@pytest.mark.parametrize("build,layer", [(_small, "block"), (_resnet, "layer3")], ids=["small", "resnet18-inplace-relu"])
def test_guided_backprop_and_guided_gradcam_match_pytorch_grad_cam(build, layer):
    """Same gradients through the same modules in the same order on both sides, with the ReLUs swapped
    by module replacement (theirs, which mutates the model: a fresh copy here) or by a function mode
    (ours, the model untouched): float32 round-off of the backward's sums (RTOL). Guided Grad-CAM:
    their usage example ``cam_mask * gb`` (cv2-resized Grad-CAM: SALIENCY_ATOL times |gb|)."""
    from lightning_cam.methods.guided import guided_gradients
    from lightning_cam.methods.base import LayerPass

    model = build()
    x = _x(seed=13, size=32)
    targets = [(c + 1) % 5 for c in _top1(model, x)]
    with torch.enable_grad():
        ours = guided_gradients(LayerPass(model, layer, x, targets))
    exps = explain_all(model, layer, x, methods=["guidedbackprop", "guidedgradcam"], targets=targets)
    relus = [(name, m.inplace) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    theirs = _pgc_guided(build(), x, targets)
    assert relus and relus == [(name, m.inplace) for name, m in model.named_modules() if isinstance(m, nn.ReLU)], "ours left the model as it was"
    _assert_close(ours, theirs, what="guided gradients")
    plain = torch.autograd.functional.jacobian(lambda v: model(v)[0, targets[0]], x[:1])[0]
    assert not torch.allclose(plain, ours[:1], atol=1e-6), "the guided rule changed the gradient"
    _assert_close(exps["guidedbackprop"].maps, theirs.abs().amax(1), what="guided backprop map")
    with pgc.GradCAM(model, [model.get_submodule(layer)]) as cam:
        mask = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets]))
    model.zero_grad(set_to_none=True)
    expected = (mask[:, None] * theirs).abs().amax(1)
    _assert_close(exps["guidedgradcam"].maps, expected, bound=SALIENCY_ATOL * theirs.abs().amax(1), what="guided Grad-CAM")


# ----------------------------------------------------------------------------- FullGrad


@pytest.mark.parametrize("build", [_small, _resnet], ids=["small", "resnet18-inplace-relu"])
def test_fullgrad_matches_pytorch_grad_cam(build):
    """pytorch-grad-cam ``FullGrad``: its per-channel cv2 resizing of every bias layer's terms vs our one
    bilinear upsampling of the layer's sum (linear, so equal up to cv2 vs torch, ~3e-7 per channel in
    [0, 1]: ``CV2_BILINEAR``); the final min-max scaling divides by the map's range. Compared after
    scaling (its output)."""
    model = build()
    x = _x(seed=14, size=32)
    targets = [(c + 1) % 5 for c in _top1(model, x)]
    ours = FullGrad(model).explain(x, targets)
    with pgc.FullGrad(model, []) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets]))
        channels = sum(layer.num_features if isinstance(layer, nn.BatchNorm2d) else layer.out_channels for layer in cam.target_layers) + 3
    model.zero_grad(set_to_none=True)
    assert ours.maps.shape == (2, 32, 32)
    span = (ours.maps.flatten(1).amax(1) - ours.maps.flatten(1).amin(1))[:, None, None]
    bound = SALIENCY_ATOL + channels * CV2_BILINEAR / span  # each channel's resize error, summed, then scaled
    _assert_close(ours.saliency(), theirs, bound=bound, rtol=0.0, what="FullGrad")


@pytest.mark.parametrize("class_token", [False, True], ids=["no-prefix", "class-token"])
def test_shapleycam_on_vit_tokens(class_token):
    """Token layout: without prefix tokens ours equals pytorch-grad-cam (+ its reshape_transform). With a
    class token, our Hessian-vector product holds the class token fixed (the layout's convention: the map's
    players are the patch tokens, as LIFT-CAM's reference), while theirs is ``(H A)`` over ALL tokens,
    restricted to the patches afterwards, i.e. plus ``H_patch,cls A_cls``: the gradient term agrees, the
    Hessian term differs, so only the Grad-CAM part is compared there."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    options = {} if class_token else {"class_token": False, "global_pool": "avg"}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2, **options).eval()
    nn.init.normal_(model.head.weight, std=1.0)  # curvature visible above round-off
    x = _x(seed=15, size=32)
    prefix = 1 if class_token else 0

    def tokens(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ours = explain_all(model, "blocks.1.norm1", x, methods=["shapleycam", "gradcam"])
    targets = ours["shapleycam"].targets.tolist()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # pytorch-grad-cam 1.5.7's ShapleyCAM cannot finish with a reshape_transform: with detach=False its
    # get_cam_image gets the raw (B, N, C) tokens and raises; the weights, computed just before, are read.
    recorded = []
    cam = pgc.ShapleyCAM(model, [model.blocks[1].norm1], reshape_transform=tokens)
    compute = cam.get_cam_weights
    cam.get_cam_weights = lambda *a, **k: recorded.append(compute(*a, **k)) or recorded[-1]
    with sdpa_kernel([SDPBackend.MATH]), pytest.raises(ValueError, match="Invalid activation shape"):  # the fused
        cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])  # CPU kernel has no double backward
    their_grad = tokens(cam.activations_and_grads.gradients[-1].detach()).mean(dim=(2, 3))  # [0]: its HVP fired the hook too
    cam.activations_and_grads.activations.clear()  # its clear() cannot detach_ the view gradients
    cam.activations_and_grads.gradients.clear()
    cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    weights = torch.from_numpy(np.asarray(recorded[0]))
    _assert_close(ours["gradcam"].weights, their_grad, what="the gradient term")
    hessian_ours = ours["shapleycam"].weights - ours["gradcam"].weights
    assert float(hessian_ours.abs().max()) > 10 * RTOL * float(weights.abs().max()), "the Hessian term is not vacuous"
    if not class_token:
        _assert_close(ours["shapleycam"].weights, weights, what="ShapleyCAM on tokens (no prefix)")
        return
    assert float((ours["shapleycam"].weights - weights).abs().max()) > 10 * RTOL * float(weights.abs().max())


# ----------------------------------------------------------------------------- layouts and devices

NEWER = ["shapleycam", "finercam", "fem", "kpcacam", "sobelcam", "guidedbackprop", "guidedgradcam", "fullgrad"]


@pytest.mark.parametrize("case", ["timm-deit-distilled", "timm-swin", "tv-vit"])
def test_newer_methods_on_transformer_layouts(case):
    """Token (2 prefix tokens), channels-last and torchvision ViT layouts: right shapes, finite, not all zero
    (FEM may be: of n values none exceeds mean + k std when sqrt(n - 1) <= k, the 2x2 Swin grid, and its
    positive weights can meet LayerNorm outputs that sum to < 0 everywhere)."""
    from tests.test_transformers import CASES, _setup

    model, x, layer = _setup(case)
    grid = CASES[case][3]
    exps = explain_all(model, layer, x[:2], methods=NEWER)
    for name, exp in exps.items():
        at_input = name in ("sobelcam", "guidedbackprop", "guidedgradcam", "fullgrad")
        assert exp.maps.shape == (2, *(x.shape[-2:] if at_input else grid)), name
        assert torch.isfinite(exp.maps).all(), name
        if name == "fem" and grid[0] * grid[1] - 1 <= 2**2:
            assert not bool(exp.maps.any()), name
        elif name != "fem":
            assert bool((exp.maps > 0).any()), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_newer_methods_on_cuda_match_cpu(smooth):
    """The same methods on CUDA (TF32 convolutions: the half-precision bound of tests/tolerance.py)."""
    import copy

    from tolerance import FP16_EPS, assert_within, half_tol

    x = _x(seed=16)
    cpu = explain_all(smooth, "block", x, methods=NEWER)
    gpu = explain_all(copy.deepcopy(smooth).cuda(), "block", x.cuda(), methods=NEWER)
    for name in NEWER:
        assert gpu[name].maps.device.type == "cuda", name
        if name != "fem":  # a threshold: a TF32 rounding may move one position across it
            assert_within(gpu[name].maps.cpu(), cpu[name].maps, 16 * half_tol(smooth, FP16_EPS), what=name)

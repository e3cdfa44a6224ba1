"""Numerical parity of the comparison methods with independent implementations.

Peers (both read in site-packages to match their conventions exactly):

* pytorch-grad-cam 1.5.7 (``pytorch_grad_cam``): GradCAM, GradCAMPlusPlus, XGradCAM,
  HiResCAM, LayerCAM, ScoreCAM, AblationCAM.
* torchcam 0.5 (``torchcam.methods``): CAM, GradCAM, GradCAMpp, XGradCAM, LayerCAM, ScoreCAM.
* hand-written per-channel loops for the perturbation methods (Score-CAM, Ablation-CAM).

What is compared and why the tolerances are what they are:

* Channel weights ``exp.weights`` against the peer's own weights, and raw maps at the
  layer's resolution (``exp.maps = ReLU(sum_k w_k A_k)``) against the peer's raw map
  (``ReLU(get_cam_image)`` for pytorch-grad-cam, ``normalized=False`` for torchcam).
  Both sides see the same activations and gradients, so plain float32 round-off is
  the only difference: ``rtol = 1e-5`` relative to the largest entry.
* Where a peer adds an ``eps`` to a denominator that REFERENCE.md does not have
  (pytorch-grad-cam: Grad-CAM++ ``+1e-6``, XGrad-CAM ``+1e-7``; torchcam: XGrad-CAM
  ``+1e-8``), we (a) reproduce the peer's formula, eps included, from *our* gradient
  and activation and require float equality with the peer (this proves the inputs
  and the formula agree), and (b) compare ours with the peer within the exact
  first-order effect of that eps, computed element by element (see ``_eps_bound``).
* pytorch-grad-cam's user-facing output is ``cv2.resize`` (INTER_LINEAR, half-pixel
  centres, float coefficients for float32 input) of maps min-max scaled with
  ``1e-7`` in the denominator, twice. Bilinear upsampling is a convex combination
  (so min-max before or after it gives the same result), cv2 and torch bilinear
  with ``align_corners=False`` agree to ~3e-7 in float32, and the two ``1e-7``s move
  a [0, 1] value by <= 2e-7: ``atol = 1e-5`` on ``exp.saliency`` vs their output
  (plus the eps bound propagated through min-max where the weights differ by eps).
* Peer behaviours that are NOT the REFERENCE definition are documented by tests
  that pin the peer's behaviour instead of comparing (torchcam Grad-CAM++).

Tiny models only (2 shared CPU cores): torchvision resnet18 (weights=None, seeded,
eval) at 32x32-64x64 and a small CNN with 8-16 channels, batches of 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tolerance import sum_tol
from lightning_cam import AblationCAM, ScoreCAM, explain_all

pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

# float32 round-off of the formula's reductions, relative to the largest entry of the compared tensor:
# a channel sum of at most K = 512 terms (resnet18 layer4) after a spatial mean of at most 16x16 terms
# (tests/tolerance.py). Our gradient and activations are the same tensors as the peer's (same kernels).
RTOL = sum_tol(512 + 256)
SALIENCY_ATOL = 1e-5  # cv2 vs torch bilinear (~3e-7) + the peer's 1e-7 min-max eps, twice

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
PGC_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
}
PGC_EPS = {"gradcam++": 1e-6, "xgradcam": 1e-7}  # pytorch_grad_cam/{grad_cam_plusplus,xgrad_cam}.py


# ----------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """conv-ReLU-(maxpool) -> ``block`` (conv-BN-ReLU, 12 ch) -> ``top`` (conv-ReLU, 16 ch) -> GAP -> fc.

    ``block`` has a nonlinear head after it (``top`` + GAP + fc), so gradients vary in
    space and ablation is not linear; ``top`` is followed by GAP + Linear (CAM applies).
    ``downsample=False`` keeps every feature map at the input resolution (no upsampling
    anywhere in Score-CAM, which makes torchcam's normalise-then-upsample order moot).
    """

    def __init__(self, classes: int = 5, downsample: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if downsample else nn.Identity())
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.top = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.top(self.block(self.stem(x)))), 1))


def _small(downsample: bool = True) -> SmallCNN:
    torch.manual_seed(1)
    model = SmallCNN(downsample=downsample)
    with torch.no_grad():  # non-trivial eval-mode batch norm
        model.block[1].running_mean.uniform_(-0.3, 0.3)
        model.block[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def small() -> SmallCNN:
    return _small()


def _model_and_input(name: str, resnet: nn.Module, small: SmallCNN, size: int = 48) -> tuple[nn.Module, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    if name == "resnet18":
        return resnet, torch.randn(2, 3, size, size, generator=generator)
    return small, torch.randn(2, 3, 32, 32, generator=generator)


def _top1(model: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(x).argmax(dim=1).tolist()


# ----------------------------------------------------------------------------- helpers


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, bound: torch.Tensor | float = 0.0, rtol: float = RTOL, what: str = "") -> None:
    """``|ours - theirs| <= bound + rtol * max|theirs|`` elementwise (``bound``: a known, justified deviation)."""
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    scale = max(float(theirs.abs().max()), 1e-12)
    excess = (ours - theirs).abs() - torch.as_tensor(bound).double() - rtol * scale
    assert float(excess.max()) <= 0, (
        f"{what}: max |diff| {float((ours - theirs).abs().max()):.3g} exceeds the tolerance "
        f"(scale {scale:.3g}, rtol {rtol}, bound max {float(torch.as_tensor(bound).max()):.3g})"
    )


def _eps_bound(numerator: torch.Tensor, denominator: torch.Tensor, eps: float) -> torch.Tensor:
    """``|n/d - n/(d+eps)| = |n| eps / |d (d+eps)|`` where ``d != 0`` (0 elsewhere), times 1.01 for round-off."""
    nonzero = denominator != 0
    safe = torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, 1.01 * numerator.abs() * eps / (safe * (safe + eps)).abs(), torch.zeros_like(numerator))


def _roundoff(terms: torch.Tensor) -> torch.Tensor:
    """float32 round-off of ``sum_k terms[:, k]`` (B,K,h,w): RTOL times the sum of magnitudes.

    Needed where the terms have both signs (e.g. a conv output as the target layer) and
    cancel, so the error scales with ``sum_k |w_k A_k|`` rather than with the result."""
    return RTOL * terms.double().abs().sum(dim=1)


def _minmax_bound(map_bound: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """If two maps differ by <= e pointwise, their min-max scalings differ by <= 4e/range (for e << range)."""
    span = (maps.flatten(1).amax(1) - maps.flatten(1).amin(1)).clamp_min(1e-12)
    return 4 * map_bound.flatten(1).amax(1) / span


def _run_pgc(method: str, model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int]) -> dict:
    """Run pytorch-grad-cam and read back its activations, gradients, weights, raw map and output."""
    cls = getattr(pgc, PGC_CLASSES[method])
    with cls(model=model, target_layers=[layer]) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
        activation = cam.activations_and_grads.activations[0].numpy()
        gradient = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, None, activation, gradient, False), 0)
        weights = None
        if method in ("gradcam", "gradcam++", "xgradcam"):
            weights = torch.from_numpy(cam.get_cam_weights(x, layer, None, activation, gradient))
    model.zero_grad(set_to_none=True)  # their loss.backward() fills parameter .grad
    return {
        "output": torch.from_numpy(out), "activation": torch.from_numpy(activation),
        "gradient": torch.from_numpy(gradient), "raw": torch.from_numpy(raw), "weights": weights,
    }


def _pgc_perturbation(cls, model: nn.Module, layer: nn.Module, x: torch.Tensor, peer_targets: list, **kwargs) -> tuple:
    """pytorch-grad-cam Score-/Ablation-CAM: (output, activation, weights) from ONE call.

    forward() does not keep the weights and get_cam_weights() would redo every perturbed
    pass, so the instance's get_cam_weights is wrapped to record what forward() computed.
    """
    recorded = []
    with cls(model=model, target_layers=[layer], **kwargs) as cam:
        compute = cam.get_cam_weights

        def record(*args, **kw):
            recorded.append(compute(*args, **kw))
            return recorded[-1]

        cam.get_cam_weights = record
        out = cam(input_tensor=x, targets=peer_targets)
        activation = cam.activations_and_grads.activations[0]
    assert len(recorded) == 1
    return torch.from_numpy(out), activation, torch.from_numpy(np.asarray(recorded[0], dtype=np.float32))


def _pgc_formula(method: str, g: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's weights, eps included, from (our) ``g`` and ``A``; and the eps bound of ours vs them."""
    total = a.sum(dim=(2, 3), keepdim=True)
    if method == "gradcam++":
        eps = PGC_EPS[method]
        denominator = 2 * g.pow(2) + total * g.pow(3)
        theirs = torch.where(g != 0, g.pow(2) / (denominator + eps), torch.zeros_like(g))
        peer = (torch.relu(g) * theirs).sum(dim=(2, 3))
        bound = _eps_bound(torch.relu(g) * g.pow(2), denominator, eps).sum(dim=(2, 3))
        return peer, bound
    eps = PGC_EPS[method]
    peer = (g * a / (total + eps)).sum(dim=(2, 3))
    bound = _eps_bound((g * a).sum(dim=(2, 3)), total[:, :, 0, 0], eps)
    return peer, bound


# ----------------------------------------------------------------------------- pytorch-grad-cam: gradient family

# layer4: GAP + fc after it (gradients constant in space); layer3: a whole residual stage after it;
# layer3.1.conv2: inside a block, so the head needs the skip connection computed before L.
CASES = [("resnet18", "layer4"), ("resnet18", "layer3"), ("resnet18", "layer3.1.conv2"), ("small", "block")]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_gradient_family_matches_pytorch_grad_cam(case, method, resnet, small):
    model_name, layer_name = case
    model, x = _model_and_input(model_name, resnet, small)
    targets = _top1(model, x)
    if model_name == "small":
        targets = [(targets[0] + 1) % 5, targets[1]]  # one non-top-1 class as well
    ours = explain_all(model, layer_name, x, methods=[method], targets=targets)[method]
    theirs = _run_pgc(method, model, model.get_submodule(layer_name), x, targets)
    activation, gradient = theirs["activation"], theirs["gradient"]

    assert ours.targets.tolist() == targets
    assert float(ours.maps.amax()) > 0, "vacuous comparison: our map is all zeros"

    g, a = gradient.double(), activation.double()
    if method == "hirescam":
        terms = g * a
    elif method == "layercam":
        terms = torch.relu(g) * a
    else:
        terms = theirs["weights"].double()[:, :, None, None] * a
    map_bound: torch.Tensor = _roundoff(terms)
    if method == "gradcam":
        _assert_close(ours.weights, theirs["weights"], what="Grad-CAM weights")
    elif method in PGC_EPS:
        # (a) their formula (with their eps) on OUR gradient/activation == their weights: inputs and formula agree.
        from lightning_cam.methods.base import LayerPass  # only to read our g = dy_c/dA

        with torch.enable_grad():
            layer_pass = LayerPass(model, layer_name, x, targets)
            g = layer_pass.gradient
        _assert_close(g, gradient, what="dy_c/dA")
        peer_formula, bound = _pgc_formula(method, g.double(), layer_pass.activation.double())
        _assert_close(peer_formula, theirs["weights"], what=f"{method}: their formula on our g, A")
        # (b) ours == theirs up to the exact effect of their eps.
        _assert_close(ours.weights, theirs["weights"], bound=bound, what=f"{method} weights (eps={PGC_EPS[method]})")
        map_bound = map_bound + torch.einsum("bk,bkhw->bhw", bound, a.abs())
    _assert_close(ours.maps, theirs["raw"], bound=map_bound, what=f"{method} raw map at layer resolution")

    # User-facing map: our torch bilinear + min-max vs their cv2 resize + min-max (see module docstring).
    saliency = ours.saliency(x.shape[-2:])
    extra = _minmax_bound(map_bound, ours.maps.double())[:, None, None]
    _assert_close(saliency, theirs["output"], bound=SALIENCY_ATOL + extra, rtol=0.0, what=f"{method} saliency vs cv2 output")


# ----------------------------------------------------------------------------- torchcam


@pytest.mark.parametrize("case", [("resnet18", "layer4", "fc"), ("small", "top", "fc")], ids=["resnet18-layer4", "small-top"])
def test_cam_matches_torchcam(case, resnet, small):
    model_name, layer_name, fc_name = case
    model, x = _model_and_input(model_name, resnet, small)
    targets = _top1(model, x)
    ours = explain_all(model, layer_name, x, methods=["cam"], targets=targets)["cam"]
    with tcm.CAM(model, target_layer=layer_name, fc_layer=fc_name) as extractor:
        with torch.no_grad():
            model(x)
        weights = extractor._get_weights(targets)[0]
        raw = extractor(class_idx=targets, normalized=False)[0]
    _assert_close(ours.weights, weights, what="CAM weights = W[c]")
    # torchcam's CAM applies no ReLU (its _relu is False for CAM); REFERENCE maps are ReLU'd.
    _assert_close(ours.maps, torch.relu(raw), what="CAM raw map")


TORCHCAM_GRADIENT = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


@pytest.mark.parametrize("method", list(TORCHCAM_GRADIENT))
@pytest.mark.parametrize("case", CASES[1:], ids=["-".join(c) for c in CASES[1:]])
def test_gradient_family_matches_torchcam(case, method, resnet, small):
    model_name, layer_name = case
    model, x = _model_and_input(model_name, resnet, small)
    targets = _top1(model, x)
    ours = explain_all(model, layer_name, x, methods=[method], targets=targets)[method]
    with getattr(tcm, TORCHCAM_GRADIENT[method])(model, target_layer=layer_name) as extractor:
        scores = model(x)
        weights = extractor._get_weights(targets, scores, retain_graph=True)[0]
        raw = extractor(class_idx=targets, scores=scores, normalized=False)[0].detach()  # ReLU'd by torchcam
        activation = extractor.hook_a[0]
    if method == "layercam":  # torchcam's "weights" are ReLU(g), (B,K,h,w)
        bound = _roundoff(weights * activation)
    else:
        bound = _roundoff(weights[:, :, None, None] * activation)
    if method == "gradcam":
        _assert_close(ours.weights, weights, what="Grad-CAM weights")
    elif method == "xgradcam":
        # torchcam: sum(g*A) / (sum(A) + 1e-8) (torchcam/methods/gradient.py); REFERENCE has no eps.
        gA = ours.weights * activation.sum(dim=(2, 3))  # = sum_ij g A where sum A != 0
        eps_bound = _eps_bound(gA.double(), activation.sum(dim=(2, 3)).double(), 1e-8)
        _assert_close(ours.weights, weights, bound=eps_bound, what="XGrad-CAM weights (torchcam eps 1e-8)")
        bound = bound + torch.einsum("bk,bkhw->bhw", eps_bound, activation.double().abs())
    _assert_close(ours.maps, raw, bound=bound, what=f"{method} raw map")


def test_torchcam_gradcampp_is_not_the_reference_formula(resnet):
    """torchcam 0.5's GradCAMpp cannot be compared with REFERENCE Grad-CAM++, so we pin what it computes.

    In ``GradCAMpp._get_weights`` the line ``alpha[idx][mask].div_(d[mask] + eps)`` divides a
    *copy* (boolean-mask indexing copies), so alpha stays ``g^2`` and its weights are
    ``sum_ij g^2 ReLU(g)``; its intended denominator also uses ``sum_ab g_ab^3 A_ab``
    rather than the paper's ``g_ij^3 sum_ab A_ab``. We check that behaviour from OUR
    gradient (which doubles as a gradient-parity check with torchcam) and compare our
    Grad-CAM++ with pytorch-grad-cam above instead.
    """
    from lightning_cam.methods.base import LayerPass

    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    targets = _top1(resnet, x)
    with torch.enable_grad():
        g = LayerPass(resnet, "layer3", x, targets).gradient
    with tcm.GradCAMpp(resnet, target_layer="layer3") as extractor:
        scores = resnet(x)
        weights = extractor._get_weights(targets, scores)[0]
    _assert_close(weights, (g.pow(2) * torch.relu(g)).sum(dim=(2, 3)), what="torchcam GradCAMpp = sum g^2 relu(g)")
    ours = explain_all(resnet, "layer3", x, methods=["gradcam++"], targets=targets)["gradcam++"]
    assert not torch.allclose(ours.weights, weights, rtol=1e-2), "torchcam's GradCAMpp now matches: compare directly"


def test_scorecam_matches_torchcam_without_upsampling():
    """torchcam's Score-CAM min-max scales A_k at LAYER resolution, then upsamples (align_corners=False);
    REFERENCE (and pytorch-grad-cam) scale after upsampling. The two coincide when the layer has the
    input's resolution, which this model guarantees; then the only differences are that torchcam
    scores logits minus the clean logit (a per-image shift, which softmax over channels ignores)."""
    model = _small(downsample=False)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    targets = _top1(model, x)
    ours = ScoreCAM(model, "block", score="logit").explain(x, targets)
    assert ours.maps.shape[-2:] == x.shape[-2:]
    with tcm.ScoreCAM(model, target_layer="block", batch_size=32) as extractor:
        with torch.no_grad():
            model(x)
        raw = extractor(class_idx=targets, normalized=False)[0]
        with torch.no_grad():
            model(x)
        weights = extractor._get_weights(targets)[0]
    _assert_close(ours.weights, weights, rtol=1e-4, what="Score-CAM weights vs torchcam")
    _assert_close(ours.maps, raw, rtol=1e-4, what="Score-CAM raw map vs torchcam")


# ----------------------------------------------------------------------------- Score-CAM


def _scorecam_loop(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int], align_corners: bool, score: str) -> torch.Tensor:
    """Per-image, per-channel Score-CAM exactly as REFERENCE.md words it (softmax over channels)."""
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    activation = captured[0]
    weights = torch.zeros(activation.shape[:2])
    with torch.no_grad():
        for b in range(x.shape[0]):
            scores = []
            for k in range(activation.shape[1]):
                mask = F.interpolate(activation[b, k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=align_corners)
                mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-8)
                out = model(x[b : b + 1] * mask)[0]
                scores.append(out.softmax(0)[targets[b]] if score == "softmax" else out[targets[b]])
            weights[b] = torch.stack(scores).softmax(0)
    return weights, activation


@pytest.mark.parametrize("score", ["softmax", "logit"])
def test_scorecam_matches_loop_and_pytorch_grad_cam(score, small):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    targets = _top1(small, x)
    layer = small.block
    # Our defaults (align_corners=False) vs the REFERENCE loop; small batch_size to exercise chunking.
    ours = ScoreCAM(small, "block", batch_size=5, score=score).explain(x, targets)
    loop, activation = _scorecam_loop(small, layer, x, targets, align_corners=False, score=score)
    _assert_close(ours.weights, loop, rtol=1e-5, what="Score-CAM weights vs per-channel loop")
    _assert_close(ours.maps, torch.relu(torch.einsum("bk,bkhw->bhw", loop, activation)), what="Score-CAM map vs loop")

    # pytorch-grad-cam upsamples with nn.UpsamplingBilinear2d (align_corners=True); its target picks the score.
    ours_pgc = ScoreCAM(small, "block", score=score, align_corners=True).explain(x, targets)
    target_cls = ClassifierOutputSoftmaxTarget if score == "softmax" else ClassifierOutputTarget
    peer_targets = [target_cls(c) for c in targets]
    out, act, weights = _pgc_perturbation(pgc.ScoreCAM, small, layer, x, peer_targets)
    _assert_close(ours_pgc.weights, weights, rtol=1e-5, what="Score-CAM weights vs pytorch-grad-cam")
    _assert_close(ours_pgc.maps, torch.relu(torch.einsum("bk,bkhw->bhw", weights, act)), what="Score-CAM raw map vs pytorch-grad-cam")
    _assert_close(ours_pgc.saliency(x.shape[-2:]), out, bound=SALIENCY_ATOL, rtol=0.0, what="Score-CAM saliency vs cv2 output")


# ----------------------------------------------------------------------------- Ablation-CAM


def _ablation_loop(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """``alpha_k = (y_c - y_c^{A_k := 0}) / y_c``, one full forward per channel with a hook zeroing channel k."""
    index = torch.arange(x.shape[0])
    with torch.no_grad():
        y = model(x)[index, targets]
        channels = []
        captured = []
        handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
        model(x)
        handle.remove()
        for k in range(captured[0].shape[1]):
            def zero_k(module, inputs, output, k=k):
                output = output.clone()
                output[:, k] = 0
                return output

            handle = layer.register_forward_hook(zero_k)
            try:
                channels.append(model(x)[index, targets])
            finally:
                handle.remove()
    return (y[:, None] - torch.stack(channels, dim=1)) / y[:, None]


# Ablation weights are (y - y_k)/y: float32 cancellation in y - y_k costs a few ulp of |y|,
# i.e. ~1e-6 absolute on alpha; 2e-5 absolute + 1e-4 relative covers it with margin.
ABLATION_ATOL, ABLATION_RTOL = 2e-5, 1e-4


def test_ablationcam_matches_loop(small):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    targets = _top1(small, x)
    for layer_name in ("block", "top"):
        ours = AblationCAM(small, layer_name, batch_size=7).explain(x, targets)
        loop = _ablation_loop(small, small.get_submodule(layer_name), x, targets)
        _assert_close(ours.weights, loop, bound=ABLATION_ATOL, rtol=ABLATION_RTOL, what=f"Ablation-CAM {layer_name} vs loop")


@pytest.mark.parametrize("case", [("small", "block"), ("resnet18", "layer4")], ids=["small-block", "resnet18-layer4"])
def test_ablationcam_matches_pytorch_grad_cam(case, resnet, small):
    """pytorch-grad-cam's AblationLayer sets channel k to 0 only when the (repeated) activations'
    minimum is exactly 0, else to ``min - 1e7`` (a deviation from the paper). Both layers here end
    in a ReLU, so the minimum is 0 and its semantics are REFERENCE's ``A_k := 0``; asserted below."""
    model_name, layer_name = case
    model, x = _model_and_input(model_name, resnet, small, size=32)
    if model_name == "resnet18":
        x = x[:1]  # K = 512 full resnet18 forwards per image on their side (layer4 is 1x1 at 32x32)
    targets = _top1(model, x)
    layer = model.get_submodule(layer_name)
    ours = AblationCAM(model, layer_name).explain(x, targets)
    peer_targets = [ClassifierOutputTarget(c) for c in targets]
    out, act, weights = _pgc_perturbation(pgc.AblationCAM, model, layer, x, peer_targets, batch_size=128)
    assert float(act.min()) == 0.0, "their ablation would use min - 1e7, not 0: semantics differ"
    _assert_close(ours.weights, weights, bound=ABLATION_ATOL, rtol=ABLATION_RTOL, what="Ablation-CAM weights vs pytorch-grad-cam")
    map_bound = torch.einsum("bk,bkhw->bhw", (ABLATION_ATOL + ABLATION_RTOL * weights.abs().max()) * torch.ones_like(weights), act.abs())
    _assert_close(ours.maps, torch.relu(torch.einsum("bk,bkhw->bhw", weights, act)), bound=map_bound, what="Ablation-CAM raw map")
    if float(ours.maps.amax()) > 0:
        extra = _minmax_bound(map_bound, ours.maps.double())[:, None, None]
        _assert_close(ours.saliency(x.shape[-2:]), out, bound=SALIENCY_ATOL + extra, rtol=0.0, what="Ablation-CAM saliency")

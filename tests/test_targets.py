"""Every method explains the bound target (lightning_cam.targets), whatever the output's shape.

What is compared and why the tolerances are what they are (tests/tolerance.py):

* pytorch-grad-cam with its own target objects (``SemanticSegmentationTarget``,
  ``BinaryClassifierOutputTarget``, ``ClassifierOutputSoftmaxTarget``, ``ClassifierOutputReST``):
  its gradient ``dt/dA`` and raw map ``get_cam_image`` (from its activations and gradients)
  against ours. Both differentiate the same head ops; the target's reduction (a sum over the
  mask's ``H*W`` pixels, a softmax over ``C`` classes) and the map's reductions (``h*w`` for the
  mean, ``K`` for the channel sum) may be summed in another order: ``sum_tol(n)`` relative to
  the compared magnitude (``sum_k |g_k| |A_k|`` for maps, ``max |g|`` for gradients).
* LIFT-CAM completeness: ``|sum_k phi_k - (t(A) - t(0))| <= completeness_tolerance`` (the
  engine's own bound ``n eps (sum |m A| + |t(A)| + |t(0)|)``, which LIFT-CAM checks and warns
  about: warnings are errors here) and, against the float64 score difference, the same bound.
* LIFT-CAM == the exact Shapley values on a linear head (linear targets): both are exact, so they
  differ by float32 round-off of ``2^K`` head evaluations combined with Shapley weights whose
  absolute values sum to 2 per channel, plus LIFT-CAM's own sum of ``K*h*w`` terms:
  ``3 * sum_tol(K*h*w + head fan-in, sum_kij |g A|)``.
* batch vs one image at a time: the same ops on other batch sizes; ``sum_tol`` of the map's reductions.

Tiny models (2 shared CPU cores): a 3-stage CNN (6-8 channels), a tiny segmentation net, and
torchvision's lraspp_mobilenet_v3_large / fcn_resnet50 with random weights at 64x64, batches of 2.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tolerance import sum_tol
from lightning_cam import explain_all
from lightning_cam.layers import default_target_layer
from lightning_cam.methods.base import LayerPass
from lightning_cam.methods.liftcam import exact_score_difference
from lightning_cam.targets import (
    BinaryLogit,
    ClassLogit,
    ClassMinusSimilar,
    ClassProbability,
    ClassReST,
    LabelLogit,
    PerImage,
    RegressionOutput,
    SegmentationClass,
    resolve_target,
)

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    SemanticSegmentationTarget,
)

# ----------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """stem (conv-ReLU-maxpool) -> ``block`` (conv-BN-ReLU, 8 ch) -> ``top`` (conv-ReLU, 8 ch) -> GAP -> fc.

    After ``block`` the head is nonlinear; after ``top`` it is GAP + fc (linear)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.top = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.top(self.block(self.stem(x))).mean(dim=(2, 3)))


class TinySeg(nn.Module):
    """stem (stride 2) -> ``block`` (conv-ReLU) -> ``top`` (conv-ReLU, 8 ch) -> 1x1 conv -> bilinear x2.

    Returns ``{"out": (B, C, H, W)}`` like torchvision. After ``top`` the head is linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.top = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.classifier(self.top(self.block(self.stem(x))))
        return {"out": F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)}


class SegWrapper(nn.Module):
    """pytorch-grad-cam needs a tensor output: ``out["out"]`` (its segmentation tutorial's wrapper)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _seeded(model: nn.Module, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial eval-mode batch norm
            with torch.no_grad():
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _small(classes: int = 5) -> SmallCNN:
    torch.manual_seed(1)
    return _seeded(SmallCNN(classes))


def _tiny_seg() -> TinySeg:
    torch.manual_seed(2)
    return TinySeg().eval()


def _images(n: int = 2, size: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _segmentation(name: str) -> nn.Module:
    torch.manual_seed(0)
    builder = getattr(torchvision.models.segmentation, name)
    return builder(weights=None, weights_backbone=None, num_classes=3).eval()


# ----------------------------------------------------------------------------- helpers


def _head_terms(model: nn.Module, layer: str) -> int:
    """Reduction length after ``layer``: the fan-in of every conv / linear that runs after it."""
    names = [n for n, _ in model.named_modules()]
    after = names[names.index(layer) + 1 :]
    terms = 0
    for name in after:
        m = model.get_submodule(name)
        if isinstance(m, nn.modules.conv._ConvNd) and not name.startswith(layer + "."):
            terms += (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        elif isinstance(m, nn.Linear):
            terms += m.in_features
    return terms


def _assert_map_close(ours: torch.Tensor, theirs: torch.Tensor, terms: torch.Tensor, n_terms: int, what: str) -> None:
    """``|ours - theirs| <= sum_tol(n, sum_k |terms_k|)`` per pixel: the maps are sums of the (B,K,h,w) ``terms``."""
    bound = sum_tol(n_terms) * terms.double().abs().sum(dim=1)
    diff = (ours.double() - theirs.double()).abs()
    assert float(ours.abs().max()) > 0, f"{what}: vacuous comparison, our map is all zeros"
    assert bool((diff <= bound).all()), f"{what}: max |diff| {float(diff.max()):.3g} above the bound {float(bound.max()):.3g}"


def _run_pgc(method: str, model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's (activation, gradient, raw map at the layer's resolution) with its own targets."""
    cls = {"gradcam": pgc.GradCAM, "layercam": pgc.LayerCAM}[method]
    with cls(model=model, target_layers=[layer]) as cam:
        cam(input_tensor=x, targets=targets)
        activation = cam.activations_and_grads.activations[0].numpy()
        gradient = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, targets, activation, gradient, False), 0)
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(activation), torch.from_numpy(gradient), torch.from_numpy(raw)


def _our_gradient(model: nn.Module, layer: str, x: torch.Tensor, targets: object) -> torch.Tensor:
    with torch.enable_grad():
        return LayerPass(model, layer, x, targets).gradient


def _compare_with_pgc(model: nn.Module, peer_model: nn.Module, layer: str, x: torch.Tensor, peer_targets: list, target_terms: int) -> None:
    """Grad-CAM and LayerCAM: ours with pytorch-grad-cam's targets, recognised (batched) and forced per image."""
    peer_layer = model.get_submodule(layer)
    for method in ("gradcam", "layercam"):
        activation, gradient, raw = _run_pgc(method, peer_model, peer_layer, x, peer_targets)
        spatial = int(activation.shape[-2] * activation.shape[-1])
        n_terms = target_terms + _head_terms(model, layer) + spatial + activation.shape[1]
        for targets in (peer_targets, PerImage(peer_targets)):
            g = _our_gradient(model, layer, x, targets)
            grad_bound = sum_tol(n_terms, float(gradient.abs().max()))
            torch.testing.assert_close(g, gradient, atol=grad_bound, rtol=0, msg=lambda m: f"{method} dt/dA: {m}")
            ours = explain_all(model, layer, x, methods=[method], targets=targets)[method]
            terms = gradient.abs().amax(dim=(2, 3), keepdim=True) * activation.abs()
            _assert_map_close(ours.maps, raw, terms, n_terms, f"{method} map ({type(targets).__name__})")


# ----------------------------------------------------------------------------- parity with pytorch-grad-cam


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "fcn_resnet50"])
def test_semantic_segmentation_target_matches_pytorch_grad_cam(name: str) -> None:
    model = _segmentation(name)
    x = _images(2, 64, seed=4)
    layer = default_target_layer(model)
    with torch.no_grad():
        predicted = model(x)["out"].argmax(dim=1)
    categories = [1, 2]
    masks = [(predicted[i] == c).float().numpy() if bool((predicted[i] == c).any()) else np.ones((64, 64), np.float32)
             for i, c in enumerate(categories)]
    peer_targets = [SemanticSegmentationTarget(c, m) for c, m in zip(categories, masks)]
    _compare_with_pgc(model, SegWrapper(model), layer, x, peer_targets, target_terms=64 * 64)
    ours = explain_all(model, layer, x, methods=["gradcam"], targets=peer_targets)["gradcam"]
    assert isinstance(ours.target, SegmentationClass) and ours.targets.tolist() == categories
    assert ours.logits.shape == (2, 3, 64, 64)


@pytest.mark.parametrize(
    "make, classes",
    [(lambda c: BinaryClassifierOutputTarget(c), 1), (lambda c: ClassifierOutputSoftmaxTarget(c), 5),
     (lambda c: ClassifierOutputReST(c), 5)],
    ids=["binary", "softmax", "rest"],
)
def test_classifier_targets_match_pytorch_grad_cam(make, classes: int) -> None:
    model = _small(classes)
    x = _images(2, 16)
    peer_targets = [make(1), make(0)]
    _compare_with_pgc(model, model, "block", x, peer_targets, target_terms=2 * classes)


# ----------------------------------------------------------------------------- LIFT-CAM under every target


def _classifier_cases() -> list:
    return [
        ("class logit", _small, ClassLogit()), ("class probability", _small, ClassProbability(2)),
        ("ReST", _small, ClassReST()), ("FinerCAM", _small, ClassMinusSimilar()), ("label", _small, LabelLogit(3)),
        ("binary", lambda: _small(1), BinaryLogit(0)), ("regression", lambda: _small(3), RegressionOutput(2)),
        ("segmentation", _tiny_seg, SegmentationClass()), ("segmentation mean", _tiny_seg, SegmentationClass(2, reduction="mean")),
    ]


@pytest.mark.parametrize("rule", ["rescale", "revealcancel"])
@pytest.mark.parametrize("case", _classifier_cases(), ids=lambda c: c[0] if isinstance(c, tuple) else str(c))
def test_liftcam_is_complete_under_every_target(case, rule: str) -> None:
    """``sum_k phi_k = t(A) - t(0)`` with the target's own value, through a nonlinear head."""
    _, build, target = case
    model, x = build(), _images(2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LIFT-CAM warns above its completeness tolerance, or for ops without a rule
        ours = explain_all(model, "block", x, methods=["liftcam"], targets=target, method_kwargs={"liftcam": {"rule": rule}})["liftcam"]
    layer_pass = LayerPass(model, "block", x, target)
    k, h, w = layer_pass.activation.shape[1:]
    phi = ours.weights.double()
    exact = exact_score_difference(layer_pass)  # float64 t(A) - t(0)
    actual = layer_pass.target(layer_pass.logits).double()
    # completeness_tolerance's bound, with sum_k |phi_k| for sum_kij |m A| (which it is at most): stricter
    tolerance = sum_tol(k * h * w) * (phi.abs().sum(dim=1) + actual.abs() + (actual - exact).abs())
    assert bool((ours.delta.abs() <= tolerance).all()), f"delta {ours.delta.tolist()} above {tolerance.tolist()}"
    # against the float64 difference: the float32 head's own rounding of t(A) and t(0) on top
    head = sum_tol(_head_terms(model, "block") + layer_pass.logits[0].numel()) * (actual.abs() + (actual - exact).abs())
    residual = phi.sum(dim=1) - exact
    assert bool((residual.abs() <= tolerance + head).all()), f"sum phi - exact {residual.tolist()} above {(tolerance + head).tolist()}"
    assert float(exact.abs().min()) > 0, "vacuous: t(A) = t(0)"


@pytest.mark.parametrize("rule", ["hessian", "coalition"])
def test_second_order_and_coalition_rules_explain_the_target(rule: str) -> None:
    """The other estimators follow the target too: exact on a linear head (the segmentation sum)."""
    model, x = _tiny_seg(), _images(2, 16)
    ours = explain_all(model, "top", x, methods=["liftcam"], targets=SegmentationClass(), method_kwargs={"liftcam": {"rule": rule}})["liftcam"]
    shap = explain_all(model, "top", x, methods=["shap"], targets=SegmentationClass())["shap"]
    _assert_linear_head_agrees(model, x, "top", SegmentationClass(), ours.weights, shap.weights)


def _assert_linear_head_agrees(model: nn.Module, x: torch.Tensor, layer: str, target, lift: torch.Tensor, shap: torch.Tensor) -> None:
    with torch.enable_grad():
        layer_pass = LayerPass(model, layer, x, target)
        magnitude = (layer_pass.gradient * layer_pass.activation).abs().flatten(1).sum(dim=1)
    k, h, w = layer_pass.activation.shape[1:]
    bound = 3 * sum_tol(k * h * w + _head_terms(model, layer)) * magnitude
    diff = (lift.double() - shap.double()).abs().amax(dim=1)
    assert bool((diff <= bound.double()).all()), f"LIFT-CAM vs exact Shapley: {diff.tolist()} above {bound.tolist()}"
    assert float(shap.abs().max()) > 0


@pytest.mark.parametrize(
    "build, target",
    [(_small, ClassLogit()), (lambda: _small(1), BinaryLogit()), (lambda: _small(3), RegressionOutput(1)), (_tiny_seg, SegmentationClass())],
    ids=["class logit", "binary", "regression", "segmentation sum"],
)
def test_liftcam_equals_exact_shapley_on_a_linear_head(build, target) -> None:
    model, x = build(), _images(2, 16)
    found = explain_all(model, "top", x, methods=["liftcam", "shap"], targets=target)
    _assert_linear_head_agrees(model, x, "top", target, found["liftcam"].weights, found["shap"].weights)


# ----------------------------------------------------------------------------- per-image targets and transforms


def _per_image_callables(classes: list[int]) -> list:
    """Nonlinear per-image callables (pytorch-grad-cam's convention): ``y_c - mean(y)`` and ``y_c * |y_c|``."""
    return [lambda out, c=c: out[c] - out.mean() if c % 2 else out[c] * out[c].abs() for c in classes]


# a per-image callable sees one row at a time, so DeepLIFT cannot pair its nonlinear operations with the
# reference row: LIFT-CAM says so (once per model) and propagates them with gradients, batched or not
@pytest.mark.filterwarnings("ignore:LIFT-CAM. no DeepLIFT rule")
@pytest.mark.parametrize("method", ["gradcam", "liftcam", "ablationcam", "scorecam"])
def test_per_image_callables_batch_equals_one_by_one(method: str) -> None:
    model, x = _small(), _images(3, 16)
    callables = _per_image_callables([1, 2, 4])
    batched = explain_all(model, "block", x, methods=[method], targets=callables)[method]
    assert isinstance(batched.target, PerImage) and batched.targets.tolist() == [-1, -1, -1]
    for i in range(3):
        alone = explain_all(model, "block", x[i : i + 1], methods=[method], targets=callables[i : i + 1])[method]
        terms = batched.weights[i, :, None, None].abs() * LayerPass(model, "block", x[i : i + 1]).activation[0].abs()
        _assert_map_close(batched.maps[i : i + 1], alone.maps, terms[None], 8 * 8 * 8 + _head_terms(model, "block"), f"{method} image {i}")


@pytest.mark.parametrize("method, rule", [("liftcam", "rescale"), ("liftcam", "coalition"), ("liftcam", "hessian"), ("gradcam", None)])
def test_per_image_output_transform_sees_its_images(method: str, rule: str | None) -> None:
    """An output_transform multiplying by a (B, 1) per-image tensor: LIFT-CAM's [actual; reference] rows
    (and the coalition paths' copies) reach it as whole copies of the B images (it crashed on 2B rows before)."""
    model, x = _small(), _images(3, 16)
    scale = torch.tensor([[1.0], [-2.0], [0.5]])
    options = {"liftcam": {"rule": rule}} if rule else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched = explain_all(model, "block", x, methods=[method], targets=2, output_transform=lambda out: out * scale,
                              method_kwargs=options)[method]
    # one image at a time (the coalition rule draws its coalitions per batch: compared below only)
    for i in range(3 if rule != "coalition" else 0):
        alone = explain_all(model, "block", x[i : i + 1], methods=[method], targets=2,
                            output_transform=lambda out, s=scale[i : i + 1]: out * s, method_kwargs=options)[method]
        activation = LayerPass(model, "block", x[i : i + 1]).activation
        terms = alone.weights[0, :, None, None].abs() * activation[0].abs() if alone.weights is not None else activation[0].abs()
        _assert_map_close(batched.maps[i : i + 1], alone.maps, terms[None], 8 * 8 * 8 + _head_terms(model, "block"), f"{method} image {i}")
    if method == "liftcam":
        plain = explain_all(model, "block", x, methods=["liftcam"], targets=2, method_kwargs=options)["liftcam"]
        torch.testing.assert_close(batched.weights, plain.weights * scale, atol=sum_tol(8 * 8 * 8, float(plain.weights.abs().max()) * 2), rtol=0)


# ----------------------------------------------------------------------------- defaults, binding, errors


def test_default_targets_follow_the_output_shape() -> None:
    found = {
        "classifier": explain_all(_small(), "block", _images(), methods=["gradcam"])["gradcam"],
        "one logit": explain_all(_small(1), "block", _images(), methods=["gradcam"])["gradcam"],
        "segmentation": explain_all(_tiny_seg(), "block", _images(), methods=["gradcam"])["gradcam"],
    }
    assert isinstance(found["classifier"].target, ClassLogit)
    assert isinstance(found["one logit"].target, BinaryLogit)
    assert isinstance(found["segmentation"].target, SegmentationClass)
    assert found["segmentation"].logits.shape == (2, 3, 16, 16)
    one = found["one logit"]
    assert one.targets.tolist() == (one.logits[:, 0] > 0).long().tolist()


def test_binding_is_idempotent() -> None:
    model, x = _tiny_seg(), _images()
    with torch.no_grad():
        scores = model(x)["out"]
    for target in (SegmentationClass(), ClassMinusSimilar(), ClassLogit()):
        scores_of = scores if isinstance(target, SegmentationClass) else scores.mean(dim=(2, 3))
        once = resolve_target(target, scores_of)
        twice = resolve_target(once, scores_of)
        assert torch.equal(once(scores_of), twice(scores_of)) and torch.equal(once.classes, twice.classes)


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_default_layer_of_torchvision_segmentation_models(name: str) -> None:
    model = _segmentation(name)
    expected = "backbone.layer4" if "resnet" in name else "backbone.16"
    assert default_target_layer(model) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = explain_all(model, None, _images(1, 64), methods=["liftcam"])["liftcam"]
    assert tuple(ours.maps.shape[-2:]) == ((8, 8) if "resnet" in name else (4, 4))
    assert isinstance(ours.target, SegmentationClass)


def test_clear_errors_name_the_problem_and_an_example() -> None:
    seg, classifier, x = _tiny_seg(), _small(), _images(3, 16)
    with pytest.raises(ValueError, match=r"shape \(3, 3, 16, 16\).*SegmentationClass.*e\.g\."):
        explain_all(seg, "block", x, methods=["gradcam"], targets=ClassLogit(1))
    with pytest.raises(ValueError, match=r"\(B, num_classes, H, W\).*shape \(3, 5\).*e\.g\. targets=3"):
        explain_all(classifier, "block", x, methods=["gradcam"], targets=SegmentationClass(1))
    with pytest.raises(ValueError, match=r"one output.*\(3, 5\).*targets=1"):
        explain_all(classifier, "block", x, methods=["gradcam"], targets=BinaryLogit(1))
    with pytest.raises(ValueError, match=r"one callable per image: got 2 for 3 images; e\.g\."):
        explain_all(classifier, "block", x, methods=["gradcam"], targets=_per_image_callables([1, 2]))
    with pytest.raises(ValueError, match=r"RegressionOutput\(7\).*shape \(3, 5\).*E\.g\."):
        explain_all(classifier, "block", x, methods=["gradcam"], targets=RegressionOutput(7))
    with pytest.raises(ValueError, match=r"FinerCAM compares class scores.*targets=3"):
        explain_all(seg, "block", x, methods=["finercam"])


# ----------------------------------------------------------------------------- every method, every output


def _every_method(exclude: tuple[str, ...] = ()) -> list[str]:
    from lightning_cam.methods.registry import METHODS

    return [name for name in METHODS if name not in exclude]


@pytest.mark.filterwarnings("ignore:LIFT-CAM")
@pytest.mark.parametrize(
    "build, layer, target, kind",
    [(_tiny_seg, "top", None, SegmentationClass), (lambda: _small(1), "top", BinaryLogit(0), BinaryLogit),
     (lambda: _small(3), "top", RegressionOutput(1), RegressionOutput)],
    ids=["segmentation", "binary", "regression"],
)
def test_every_method_explains_the_target(build, layer: str, target, kind: type) -> None:
    """Every registered method runs on the output and reports the bound target; the gradient methods
    follow it (Grad-CAM's weights are the mean of ``dt/dA``, which depends on the target)."""
    model, x = build(), _images(2, 16)
    methods = _every_method(("finercam", "cam") if kind is SegmentationClass else ("finercam",))
    found = explain_all(model, layer, x, methods=methods, targets=target)
    with pytest.raises(ValueError, match="FinerCAM compares class scores.*e\\.g\\. targets=3"):
        explain_all(model, layer, x, methods=["finercam"], targets=target)
    for name, explanation in found.items():
        assert isinstance(explanation.target, kind), name
        assert explanation.maps.shape[0] == 2 and bool(torch.isfinite(explanation.maps).all()), name
    with torch.enable_grad():
        g = LayerPass(model, layer, x, target).gradient
    torch.testing.assert_close(found["gradcam"].weights, g.mean(dim=(2, 3)), rtol=0, atol=0)
    if kind is BinaryLogit:  # CAM: -W[0] for the negative side
        torch.testing.assert_close(found["cam"].weights, -model.fc.weight.detach().expand(2, -1), rtol=0, atol=0)


def test_cam_refuses_a_segmentation_output() -> None:
    with pytest.raises(ValueError, match="CAM needs global average pooling"):
        explain_all(_tiny_seg(), "top", _images(), methods=["cam"])


def test_augmentations_and_fused_layers_explain_the_clean_images_target() -> None:
    """aug_smooth / several layers: the target bound on the original images is followed in every copy."""
    model, x = _tiny_seg(), _images(2, 16)
    mask = torch.zeros(16, 16)
    mask[:8] = 1
    for targets in (None, SegmentationClass(2, masks=mask), PerImage([lambda out: out[1].sum(), lambda out: out[2].mean()])):
        smooth = explain_all(model, ["block", "top"], x, methods=["gradcam", "liftcam"], targets=targets, aug_smooth=True)
        for explanation in smooth.values():
            assert explanation.maps.shape == (2, 16, 16) and bool(torch.isfinite(explanation.maps).all())
            assert explanation.target is not None and explanation.target.kind in ("segmentation", "callable")
    bound = explain_all(model, ["block", "top"], x, methods=["gradcam"], targets=SegmentationClass(2, masks=mask))["gradcam"]
    assert bound.targets.tolist() == [2, 2] and torch.equal(bound.target.masks, mask.expand(2, -1, -1))

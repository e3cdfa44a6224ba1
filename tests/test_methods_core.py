"""LIFT-CAM exactness, Shapley properties, batching, model hygiene and errors."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import pytest
import torch
import torchvision
from torch import nn

import lightning_cam as lc
from lightning_cam.methods import LayerPass
from lightning_cam.methods.shapley import exact_shapley_matrix

from tolerance import BF16_EPS, EPS32, EPS64, FP16_EPS, assert_within, forward_tol, half_tol, sum_tol
from models import NonlinearHead, TinyCNN, Untraceable

ALL = ["liftcam", "cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam", "shap"]


def captum_liftcam(model: nn.Module, layer: str, head: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The authors' computation: captum DeepLift on the head, zero baseline, one image at a time."""
    from captum.attr import DeepLift

    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    activation = captured[0]
    deeplift = DeepLift(copy.deepcopy(head).eval())
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(x.shape[0]):
            a = activation[i : i + 1]
            rows.append(deeplift.attribute(a, baselines=torch.zeros_like(a), target=int(targets[i])).sum(dim=(2, 3)))
    return torch.cat(rows)


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_liftcam_equals_authors_captum_computation(arch: str) -> None:
    model = getattr(torchvision.models, arch)(weights=None).eval()
    if arch == "vgg16":
        layer, head = "features.29", nn.Sequential(model.features[30], model.avgpool, nn.Flatten(), model.classifier)
    else:
        layer, head = "layer4", nn.Sequential(model.avgpool, nn.Flatten(), model.fc)
    x = torch.randn(3, 3, 64, 64)
    exp = lc.LiftCAM(model, layer).explain(x)
    reference = captum_liftcam(model, layer, head, x, exp.targets).detach()
    # batched vs one image at a time through the head: its reductions, at the scale of the compared values
    h, w = exp.maps.shape[-2:]  # the layer's resolution
    rel = forward_tol(head, spatial=h * w)
    assert_within(exp.weights, reference, rel, what=f"{arch} LIFT-CAM vs captum")
    assert exp.delta.abs().max() < forward_tol(head, float(exp.logits.abs().max().clamp_min(1)), spatial=h * w)


def _completeness_cases():
    return [
        ("resnet18", "layer4"), ("resnet18", "layer3"), ("resnet18", "layer4.0.conv2"),
        ("mobilenet_v3_small", "features"), ("mobilenet_v3_small", "features.6"),
        ("efficientnet_b0", "features.6"), ("convnext_tiny", "features"), ("convnext_tiny", "features.5"),
        ("densenet121", "features"), ("vgg16_bn", "features.32"),
    ]


@pytest.mark.parametrize("arch,layer", _completeness_cases())
def test_liftcam_completeness_on_torchvision_models(arch: str, layer: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=7).eval()
    for m in model.modules():  # make the scores non-trivial (torchvision zero-inits some heads)
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.2)
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no DeepLIFT rule" warning expected
        exp = lc.LiftCAM(model, layer).explain(x)
    scale = float(exp.logits.abs().max().clamp_min(1))
    # completeness up to float32 round-off of the whole network's reductions at the logits' scale
    assert exp.delta.abs().max() <= forward_tol(model, scale)
    assert torch.isfinite(exp.maps).all()


def test_liftcam_completeness_through_nonlinear_head_and_reused_relu() -> None:
    model = NonlinearHead().eval()
    x = torch.randn(4, 3, 8, 8)
    exp = lc.LiftCAM(model, "features").explain(x)
    zero_score = _head_score_at_zero(model, x, exp.targets)
    y = exp.logits.gather(1, exp.targets[:, None])[:, 0]
    bound = forward_tol(model, float(exp.logits.abs().max().clamp_min(1)), spatial=64)
    assert_within(exp.weights.sum(1), y - zero_score, bound, what="sum phi = y(A) - y(0)")
    assert exp.delta.abs().max() < bound


def _head_score_at_zero(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    handle = model.features.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    with torch.no_grad():
        out = model(x)
    handle.remove()
    return out.gather(1, targets[:, None])[:, 0]


def test_liftcam_is_exact_shap_on_linear_head() -> None:
    model = TinyCNN(channels=8).eval()
    x = torch.randn(3, 3, 10, 10)
    lift = lc.LiftCAM(model, "features").explain(x)
    shap = lc.ShapCAM(model, "features").explain(x)  # K=8: exact enumeration
    w = model.fc.weight[lift.targets]
    closed_form = w * lift_activation(model, x).mean(dim=(2, 3))
    rel = forward_tol(model, spatial=100)  # conv/fc reductions + the 10x10 average
    assert_within(lift.weights, closed_form, rel, what="LIFT-CAM vs w_ck mean(A_k)")
    assert_within(lift.weights, shap.weights, rel + sum_tol(2**8), what="LIFT-CAM vs exact SHAP (2^8 coalitions)")


def lift_activation(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.features(x)


def test_shap_exact_matches_brute_force_on_nonlinear_head() -> None:
    model = NonlinearHead(channels=4).eval()
    x = torch.randn(2, 3, 8, 8)
    exp = lc.ShapCAM(model, "features").explain(x)
    activation = lift_activation(model, x)
    for b in range(2):
        target = int(exp.targets[b])

        def value(coalition: tuple[int, ...]) -> float:
            mask = torch.zeros(4)
            mask[list(coalition)] = 1
            replaced = activation[b : b + 1] * mask[None, :, None, None]
            handle = model.features.register_forward_hook(lambda m, i, o: replaced)
            with torch.no_grad():
                out = model(x[b : b + 1])
            handle.remove()
            return float(out[0, target])

        for k in range(4):
            others = [j for j in range(4) if j != k]
            phi = 0.0
            for size in range(4):
                for s in itertools.combinations(others, size):
                    weight = math.factorial(size) * math.factorial(4 - size - 1) / math.factorial(4)
                    phi += weight * (value(tuple(s) + (k,)) - value(s))
            # 16 network outputs (8 differences) with Shapley weights adding up to 1 per side
            scale = max(1.0, float(exp.logits.abs().max()))
            assert exp.weights[b, k].item() == pytest.approx(phi, abs=2 * forward_tol(model, scale, spatial=16))


def test_exact_shapley_matrix_is_efficient() -> None:
    masks, weights = exact_shapley_matrix(5)
    assert masks.shape == (32, 5)
    # phi of v(S) = |S| is 1 for everyone; efficiency: sum phi = v(N) - v(0)
    phi = masks.sum(1).double() @ weights
    magnitude = float((masks.sum(1).double() @ weights.double().abs()).max())
    torch.testing.assert_close(phi, torch.ones(5, dtype=torch.float64), atol=sum_tol(32, magnitude, EPS64), rtol=0)


def test_shap_sampling_converges_to_exact_and_is_seeded() -> None:
    model = NonlinearHead(channels=6).eval()
    x = torch.randn(2, 3, 8, 8)
    exact = lc.ShapCAM(model, "features").explain(x).weights
    sampled = lc.ShapCAM(model, "features", max_exact_channels=2, num_permutations=400, seed=1).explain(x).weights
    again = lc.ShapCAM(model, "features", max_exact_channels=2, num_permutations=400, seed=1).explain(x).weights
    assert torch.equal(sampled, again)
    # efficiency holds per permutation (a telescoping sum of 6 output differences)
    scale = max(1.0, float(exact.abs().sum(1).max()))
    assert_within(sampled.sum(1), exact.sum(1), 2 * 6 * forward_tol(model, spatial=16) * scale, what="efficiency")
    # Monte-Carlo error, not round-off: 400 antithetic permutations give a standard error of at most
    # max|phi| / sqrt(400) = 5% per coefficient; 0.15 is three standard errors
    assert (sampled - exact).abs().max() < 0.15 * exact.abs().max() + 1e-3


@pytest.mark.parametrize("method", ALL)
def test_batch_equals_one_by_one(method: str) -> None:
    model = TinyCNN().eval()
    x = torch.randn(3, 3, 12, 12)
    batched = lc.get_method(method)(model, "features").explain(x)
    for i in range(3):
        single = lc.get_method(method)(model, "features").explain(x[i : i + 1], targets=int(batched.targets[i]))
        # other batch sizes, other kernels: the network's reductions plus the 8-channel map sum
        rel = forward_tol(model, spatial=144) + sum_tol(8)
        if method == "ablationcam":  # (y - y_k) / y: the division scales the logit error by 1/|y|
            rel *= max(1.0, float(batched.logits.abs().max() / batched.logits.gather(1, batched.targets[:, None]).abs().min()))
        assert_within(batched.maps[i], single.maps[0], rel, what=f"{method} map")
        if batched.weights is not None:
            assert_within(batched.weights[i], single.weights[0], rel, what=f"{method} weights")


def test_explain_all_equals_individual_explainers() -> None:
    model = NonlinearHead().eval()
    x = torch.randn(2, 3, 8, 8)
    methods = ["liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "ablationcam"]
    together = lc.explain_all(model, "features", x, methods=methods, targets=[0, 2])
    assert list(together) == methods
    for name in methods:
        alone = lc.get_method(name)(model, "features").explain(x, targets=[0, 2])
        # the same kernels on the same shapes: bitwise equal
        assert torch.equal(together[name].maps, alone.maps), name
        assert together[name].seconds > 0


def test_saliency_is_normalised_and_nan_free() -> None:
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 12, 16)
    maps = lc.GradCAM(model, "features")(x)
    assert maps.shape == (2, 12, 16) and maps.min() >= 0 and maps.max() <= 1
    from lightning_cam.maps import normalize_maps

    constant = normalize_maps(torch.ones(1, 3, 3), (6, 6))
    assert torch.equal(constant, torch.zeros(1, 6, 6))


def _snapshot(model: nn.Module):
    return (
        [m.training for m in model.modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad for p in model.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    )


@pytest.mark.parametrize("context", ["plain", "no_grad", "inference_mode", "autocast"])
def test_model_left_untouched_in_every_caller_context(context: str) -> None:
    model = TinyCNN(dropout=0.5).train()
    x = torch.randn(2, 3, 12, 12)
    before = _snapshot(model)
    rng = torch.get_rng_state()
    reference = lc.explain_all(model, "features", x, methods=ALL)
    ctx = {
        "plain": torch.enable_grad(), "no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
        "autocast": torch.autocast("cpu", dtype=torch.bfloat16),
    }[context]
    with ctx:
        inside = x.clone()
        result = lc.explain_all(model, "features", inside, methods=ALL)
        assert torch.is_grad_enabled() == (context in ("plain", "autocast"))
    after = _snapshot(model)
    assert before[0] == after[0]
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])  # BN statistics included
    assert all(g is None for g in after[2])
    assert before[3] == after[3]
    assert torch.equal(torch.get_rng_state(), rng)
    for name in ALL:
        assert result[name].maps.dtype == torch.float32
        assert torch.equal(result[name].maps, reference[name].maps), name  # same kernels, same shapes


def test_untraceable_model_falls_back_to_hooks_with_same_results() -> None:
    traced_model = TinyCNN().eval()
    fallback_model = Untraceable().eval()
    fallback_model.load_state_dict(traced_model.state_dict())
    x = torch.randn(2, 3, 10, 10)
    with pytest.warns(UserWarning, match="cannot trace"), pytest.warns(UserWarning, match=r"no DeepLIFT rule for .*Tensor.__bool__"):
        # its `if a.sum() > -1e30:` reads a value of the activations: DeepLIFT names it (default-deny)
        fallback = lc.explain_all(fallback_model, "features", x, methods=["liftcam", "gradcam", "ablationcam"])
    traced = lc.explain_all(traced_model, "features", x, methods=["liftcam", "gradcam", "ablationcam"])
    for name in traced:
        # fx graph vs hooks: the same modules in the same order, but not necessarily the same fused kernels
        assert_within(fallback[name].maps, traced[name].maps, forward_tol(traced_model, spatial=100), what=name)
    assert all(len(m._forward_hooks) == 0 for m in fallback_model.modules())


def test_hooks_removed_after_an_exception() -> None:
    model = Untraceable().eval()
    x = torch.randn(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="targets must lie in"):
            lc.GradCAM(model, "features").explain(x, targets=99)
        with pytest.raises(RuntimeError):
            lc.GradCAM(model, "features").explain(torch.randn(2, 4, 10, 10))  # wrong channel count
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in model.modules())
    assert all(m.training is False for m in model.modules())


def test_unknown_layer_lists_candidates() -> None:
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match=r"Unknown target layer 'layer5'.*Did you mean.*layer4.*Candidate layers: .*layer1"):
        lc.GradCAM(model, "layer5")


def test_suffix_name_resolves_inside_a_wrapper() -> None:
    wrapper = nn.Module()
    wrapper.net = TinyCNN()
    wrapper.forward = lambda x: wrapper.net(x)
    explainer = lc.GradCAM(wrapper.net, "features")
    assert explainer.layer_name == "features"
    from lightning_cam.layers import resolve_layer

    assert resolve_layer(wrapper, "features")[0] == "net.features"


@pytest.mark.parametrize("bad", [torch.randn(3, 12, 12), torch.randn(1, 2, 3, 12, 12), "image"])
def test_non_4d_input_is_a_clear_error(bad) -> None:
    with pytest.raises((ValueError, TypeError), match=r"\(B, C, H, W\)"):
        lc.LiftCAM(TinyCNN(), "features").explain(bad)


def test_layer_that_never_runs_is_a_clear_error() -> None:
    model = TinyCNN()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="never runs"):
        lc.GradCAM(model, "unused").explain(torch.randn(1, 3, 8, 8))


def test_layer_that_runs_twice_is_a_clear_error() -> None:
    model = NonlinearHead()
    with pytest.raises(ValueError, match="runs 2 times"):
        lc.GradCAM(model, "relu").explain(torch.randn(1, 3, 8, 8))


def test_non_spatial_layer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, K, h, w\) feature map"):
        lc.GradCAM(TinyCNN(), "fc").explain(torch.randn(1, 3, 8, 8))


def test_cam_requires_gap_linear_head() -> None:
    with pytest.raises(ValueError, match="CAM needs global average pooling"):
        lc.CAM(NonlinearHead(), "features").explain(torch.randn(1, 3, 8, 8))
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    cam, grad = lc.CAM(model, "features").explain(x), lc.GradCAM(model, "features").explain(x)
    # On GAP+Linear heads Grad-CAM's weights are CAM's divided by h*w.
    # dividing by 64 is exact; the gradient of a 64-term mean vs the weight: one rounding per term
    assert_within(cam.weights / 64, grad.weights, sum_tol(64), what="CAM/64 vs Grad-CAM")


def test_unknown_method_lists_allowed() -> None:
    with pytest.raises(ValueError, match="Allowed: liftcam, cam, gradcam"):
        lc.get_method("gradkam")
    assert lc.get_method("GradCAMpp") is lc.GradCAMPlusPlus


def test_targets_forms() -> None:
    model = TinyCNN().eval()
    x = torch.randn(3, 3, 8, 8)
    explainer = lc.GradCAM(model, "features")
    a = explainer.explain(x, targets=2).maps
    b = explainer.explain(x, targets=[2, 2, 2]).maps
    c = explainer.explain(x, targets=torch.tensor([2, 2, 2])).maps
    assert torch.equal(a, b) and torch.equal(b, c)
    with pytest.raises(ValueError, match="3 images"):
        explainer.explain(x, targets=[1, 2])
    with pytest.raises(ValueError, match="integer tensor.*dtype torch.float32"):
        explainer.explain(x, targets=torch.tensor([0.5, 1.0, 2.0]))


def test_layer_pass_gradient_is_wrt_activation_only() -> None:
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    from lightning_cam._state import explaining

    with explaining(model):
        layer_pass = LayerPass(model, "features", x)
        g = layer_pass.gradient
    w = model.fc.weight[layer_pass.targets]
    torch.testing.assert_close(g, (w / 64)[:, :, None, None].expand_as(g), atol=float(w.abs().max()) * EPS32, rtol=0)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_equals_cuda() -> None:
    # CAM needs a GAP+Linear head: it runs on TinyCNN, every other method on the nonlinear head
    cases = [(NonlinearHead().eval(), [m for m in ALL if m != "cam"]), (TinyCNN().eval(), ["cam", "liftcam"])]
    for model, methods in cases:
        x = torch.randn(3, 3, 8, 8)
        cpu = lc.explain_all(model, "features", x, methods=methods)
        gpu = lc.explain_all(copy.deepcopy(model).cuda(), "features", x.cuda(), methods=methods)
        for name in methods:
            assert gpu[name].maps.device.type == "cuda"
            # CUDA may use TF32 for convolutions: 10-bit mantissa (eps 2**-10) per product, fp32 accumulation
            tol = half_tol(model, FP16_EPS) + forward_tol(model, spatial=64)
            assert_within(gpu[name].maps.cpu(), cpu[name].maps, tol, what=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_finite_float32_maps(dtype: torch.dtype) -> None:
    """Lightning's "16-true"/"bf16-true" keep the weights in half precision."""
    model = NonlinearHead().eval()
    x = torch.randn(2, 3, 8, 8)
    methods = [m for m in ALL if m != "cam"]  # CAM needs a GAP+Linear head
    full = lc.explain_all(model, "features", x, methods=methods)
    half = lc.explain_all(copy.deepcopy(model).to(dtype), "features", x, methods=methods)
    for name in methods:
        assert half[name].maps.dtype == torch.float32 and torch.isfinite(half[name].maps).all()
    rel = half_tol(model, BF16_EPS if dtype == torch.bfloat16 else FP16_EPS)
    assert half["liftcam"].delta.abs().max() < rel * full["liftcam"].weights.abs().sum(1).max()
    scale = float(full["liftcam"].weights.abs().max())
    torch.testing.assert_close(half["liftcam"].weights, full["liftcam"].weights, atol=rel * scale, rtol=0)


def test_compiled_model_is_explained_through_the_original_module() -> None:
    """Hooks/tracing after torch.compile are ignored by the compiled graph: we use _orig_mod."""
    model = TinyCNN().eval()
    compiled = torch.compile(model)  # lazy: nothing is compiled unless it is called
    x = torch.randn(2, 3, 8, 8)
    explainer = lc.LiftCAM(compiled, "features")
    assert explainer.model is model
    assert torch.equal(explainer.explain(x).maps, lc.LiftCAM(model, "features").explain(x).maps)  # same module


def test_layers_of_a_compiled_submodule_are_named_without_orig_mod() -> None:
    """``self.net = torch.compile(self.net)``: ``net.features`` means ``net._orig_mod.features``."""
    from lightning_cam.layers import resolve_layer

    class Lit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.compile(TinyCNN())  # lazy: never called here

    lit = Lit()
    features = lit.net._orig_mod.features
    assert resolve_layer(lit, "net.features") == ("net._orig_mod.features", features)
    assert resolve_layer(lit, "features") == ("net._orig_mod.features", features)  # a unique suffix, as before
    assert resolve_layer(lit, "net._orig_mod.features")[1] is features  # the full name still works
    with pytest.raises(ValueError, match=r"Did you mean \['net.features'") as info:
        resolve_layer(lit, "net.featurs")
    assert "_orig_mod" not in str(info.value)  # candidates as the user names them

"""Vision transformers, token and channels-last layouts, timm models, LIFT-CAM through attention.

Random weights, small inputs. For every model: the map is on the patch / feature grid, finite
and not all zero; LIFT-CAM's completeness residual is at float32 precision with no operation
left without a DeepLIFT rule; a batch gives the same maps as its images one by one.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_cam import explain_all
from lightning_cam.layers import default_target_layer
from lightning_cam.methods import GradCAM, LiftCAM, ShapCAM
from lightning_cam.methods.base import LayerPass
from lightning_cam.methods.layout import infer_layout
from lightning_cam.models import build_model

from tolerance import reduction_terms, sum_tol

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

EPS32 = 2.0**-23
METHODS = ["liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]


def _timm(name: str, **kwargs):
    return lambda: timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


def _tv_vit():
    return build_model("vit_tiny", num_classes=5, image_size=32, num_layers=2, hidden_dim=32, mlp_dim=64)


def _channels_last_resnet():
    return torchvision.models.resnet18(num_classes=5).to(memory_format=torch.channels_last)


# id -> (builder, input size, expected default layer, expected map grid (h, w), layout name)
CASES = {
    "timm-vit": (_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32, "blocks.1.norm1", (4, 4), "BNC (1 prefix)"),
    "timm-deit-distilled": (_timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2), 32, "blocks.1.norm1", (4, 4), "BNC (2 prefix)"),
    "timm-vit-registers": (_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, reg_tokens=4), 32, "blocks.1.norm1", (4, 4), "BNC (5 prefix)"),
    "timm-vit-gap-noncls": (_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, class_token=False, global_pool="avg"), 32, "blocks.1.norm1", (4, 4), "BNC"),
    "timm-swin": (_timm("swin_tiny_patch4_window7_224", img_size=64, window_size=2, depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 2, 4)), 64, "layers.3.blocks.0.norm1", (2, 2), "BHWC"),
    "timm-mixer": (lambda: timm.models.mlp_mixer.MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=2, embed_dim=32), 32, "blocks.1.norm1", (4, 4), "BNC"),
    "timm-levit": (_timm("levit_128s", img_size=128), 128, "stages.2", (2, 2), "BNC"),
    "timm-convnext": (_timm("convnext_atto"), 64, "stages.3", (2, 2), "BCHW"),
    "tv-vit": (_tv_vit, 32, "encoder.layers.encoder_layer_1.ln_1", (4, 4), "BNC (1 prefix)"),
    "tv-swin": (lambda: torchvision.models.swin_t(num_classes=5), 64, "features.7.1.norm1", (2, 2), "BHWC"),
    "tv-resnet-channels-last": (_channels_last_resnet, 64, "layer4", (2, 2), "BCHW"),
}


def _setup(case: str) -> tuple[nn.Module, torch.Tensor, str]:
    builder, size, layer, _, _ = CASES[case]
    torch.manual_seed(0)
    model = builder().eval()
    for module in model.modules():  # torchvision/timm zero-initialise some classifiers (all logits 0)
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.5)
    x = torch.randn(3, 3, size, size)
    if case.endswith("channels-last"):
        x = x.to(memory_format=torch.channels_last)
    return model, x, layer


def completeness_tolerance(phi: torch.Tensor, logits: torch.Tensor, grid: int, eps: float = EPS32) -> torch.Tensor:
    """float32 roundoff of ``sum_k phi_k - (y(A) - y(0))``: each term carries a relative error of
    a few ulps per operation along the head, summed over ``K*h*w`` products and ``K`` channels
    (sqrt growth for random-sign errors, with a factor 16 for the depth of a transformer block)."""
    terms = phi.abs().sum(1) + 2 * logits.abs().amax(1)
    return 16 * eps * math.sqrt(phi.shape[1] * grid) * terms


@pytest.mark.parametrize("case", list(CASES))
def test_transformer_maps_and_liftcam_completeness(case):
    model, x, layer = _setup(case)
    _, size, _, grid, layout_name = CASES[case]
    assert default_target_layer(model, (1, 3, size, size)) == layer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LIFT-CAM warns about any operation without a DeepLIFT rule
        exps = explain_all(model, None, x, methods=METHODS)
    pass_ = LayerPass(model, layer, x)
    assert pass_.layout.name == layout_name
    for name, exp in exps.items():
        assert exp.maps.shape == (x.shape[0], *grid), name
        assert torch.isfinite(exp.maps).all(), name
        sal = exp.saliency()
        assert sal.shape == (x.shape[0], size, size) and torch.isfinite(sal).all(), name
    assert (exps["liftcam"].maps > 0).any() and (exps["gradcam"].maps > 0).any()
    lift = exps["liftcam"]
    difference = lift.weights.sum(1) - lift.delta
    assert (difference != 0).any(), "the head ignores the patch tokens"
    tol = completeness_tolerance(lift.weights, lift.logits, grid[0] * grid[1])
    assert (lift.delta.abs() <= tol).all(), (lift.delta, tol)


@pytest.mark.parametrize("case", ["timm-vit", "timm-deit-distilled", "timm-swin", "tv-vit"])
def test_batch_equals_one_by_one(case):
    model, x, layer = _setup(case)
    batch = explain_all(model, layer, x, methods=["liftcam", "gradcam"])
    activation = LayerPass(model, layer, x).activation
    terms = reduction_terms(model)
    for i in range(x.shape[0]):
        single = explain_all(model, layer, x[i : i + 1], methods=["liftcam", "gradcam"])
        for name in batch:
            a, b = batch[name].maps[i], single[name].maps[0]
            # Same computation, other batch size: kernels may sum in another order. A map pixel is
            # sum_k w_k A_k; first order, its error is the network's reduction bound times
            # sum_k |w_k A_k| (the error of A and of the weights both carry through it).
            w = batch[name].weights[i]
            size = float((w.abs()[:, None, None] * activation[i].abs()).sum(0).max())
            assert torch.allclose(a, b, rtol=0, atol=2 * sum_tol(terms, size)), (name, (a - b).abs().max())


def test_liftcam_is_exact_through_attention_in_float64():
    """In float64 the rules (softmax, attention products, LayerNorm, GELU) leave a residual at the
    float64 roundoff of the logits: every rule is exact, not an approximation."""
    model, x, layer = _setup("timm-vit")
    model = model.double()
    lift = LiftCAM(model, layer).explain(x.double())
    # A float64 model is explained in float64 (activations, logits, coefficients).
    assert lift.weights.dtype == lift.logits.dtype == lift.delta.dtype == torch.float64
    tol = completeness_tolerance(lift.weights, lift.logits, 16, eps=2.0**-52)
    assert (lift.delta.abs() <= tol).all(), (lift.delta, tol)


def test_prefix_tokens_keep_their_values_in_the_reference():
    """Completeness reads sum_k phi_k = y(A) - y(A with patch tokens 0, prefix tokens as they are)."""
    model, x, layer = _setup("timm-deit-distilled")
    lp = LayerPass(model, layer, x)
    zero = lp.head(torch.zeros_like(lp.activation), lp.index)
    raw = lp.layout.to_raw(torch.zeros_like(lp.activation), lp.index)
    assert torch.equal(raw[:, :2], lp.layout.base[:, :2]) and (raw[:, 2:] == 0).all()
    lift = LiftCAM(model, layer).explain(x)
    y = lift.logits.gather(1, lift.targets[:, None])[:, 0]
    expected = y - zero.gather(1, lift.targets[:, None])[:, 0]
    grid = lp.activation.shape[-2] * lp.activation.shape[-1]
    tol = completeness_tolerance(lift.weights, lift.logits, grid)  # the same float32 sums as the residual
    assert (((lift.weights.sum(1) - lift.delta) - expected).abs() <= tol).all()


def _pgc_reshape(h: int, w: int, prefix: int):
    def reshape(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's vit_example.py, generalised
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).transpose(2, 3).transpose(1, 2)

    return reshape


def test_explicit_reshape_equals_automatic_layout():
    model, x, layer = _setup("timm-deit-distilled")
    auto = explain_all(model, layer, x, methods=["liftcam", "gradcam"])
    manual = explain_all(model, layer, x, methods=["liftcam", "gradcam"], reshape=_pgc_reshape(4, 4, 2))
    for name in auto:
        assert torch.equal(auto[name].maps, manual[name].maps)


def test_reshape_that_is_not_a_selection_is_refused():
    model, x, layer = _setup("timm-vit")
    with pytest.raises(ValueError, match="only select and rearrange"):
        GradCAM(model, layer, reshape=lambda t: 2 * _pgc_reshape(4, 4, 1)(t)).explain(x)


def test_unreadable_token_layout_says_how_to_pass_reshape():
    model = nn.Identity()
    with pytest.raises(ValueError, match="reshape=") as info:
        infer_layout(model, "blocks.1", torch.zeros(2, 7, 32), (32, 32))
    assert "(2, 7, 32)" in str(info.value) and "32x32" in str(info.value)
    with pytest.raises(ValueError, match="no spatial dimensions"):
        infer_layout(model, "head", torch.zeros(2, 10), (32, 32))


def test_channels_last_swin_is_not_read_as_channels_first():
    """The issue's report: timm Swin gave (7, 768) "maps" (channels read as width)."""
    model, x, layer = _setup("timm-swin")
    lp = LayerPass(model, layer, x)
    raw, _ = lp.split.body(x)
    assert raw.shape[1:3] == (2, 2) and lp.activation.shape[1:] == (raw.shape[-1], 2, 2)
    assert torch.equal(lp.activation, raw.permute(0, 3, 1, 2))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
def test_gradient_methods_on_vit_match_pytorch_grad_cam(method):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "hirescam": "HiResCAM"}
    model, x, layer = _setup("timm-vit")
    # pytorch-grad-cam's Grad-CAM++ adds 1e-6 to the denominator 2 g^2 + sum(A) g^3 (REFERENCE.md's
    # formula has no eps); with timm's std-0.02 head |g| ~ 1e-3, so g^2 ~ eps. A head of std 1
    # makes |g| ~ 0.1 and the eps negligible, so the comparison tests the formula, not the eps.
    nn.init.normal_(model.head.weight, std=1.0)
    ours = explain_all(model, layer, x, methods=[method])[method]
    with getattr(pgc, classes[method])(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=_pgc_reshape(4, 4, 1)) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in ours.targets]))
    model.zero_grad(set_to_none=True)
    mine = ours.saliency()
    for i in range(x.shape[0]):
        a, b = mine[i].flatten(), theirs[i].flatten()
        if a.std() == 0 or b.std() == 0:  # both constant (an all-negative map): identical after ReLU
            assert a.std() == 0 and b.std() == 0
            continue
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] >= 0.99, (method, i)


def test_shapcam_sampled_agrees_with_liftcam_on_tiny_vit():
    """LIFT-CAM's coefficients estimate the Shapley values of the K channel players."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2, embed_dim=24, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    exps = explain_all(model, "blocks.1.norm1", x, methods=[LiftCAM(model, "blocks.1.norm1"), ShapCAM(model, "blocks.1.norm1", num_permutations=64)])
    lift, shap = exps["liftcam"].weights, exps["shap"].weights
    # Efficiency of both: the same total.
    # LIFT-CAM sums to y(A) - y(0) up to its completeness residual; each sampled Shapley value is a
    # mean of y-differences over permutations, whose K terms telescope to the same difference exactly
    # in exact arithmetic: float32 sums of K terms per permutation on both sides
    k = lift.shape[1]
    tol = completeness_tolerance(lift, exps["liftcam"].logits, 16) + 2 * sum_tol(k, float(shap.abs().sum(1).max()))
    assert ((lift.sum(1) - shap.sum(1)).abs() <= tol).all()
    corr = [float(torch.corrcoef(torch.stack([lift[i], shap[i]]))[0, 1]) for i in range(2)]
    assert min(corr) > 0.5, corr


def test_build_model_timm_and_vit_tiny():
    model = build_model("timm/vit_tiny_patch16_224", num_classes=3, image_size=32)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert build_model("deit_tiny_patch16_224", num_classes=3, image_size=32).num_prefix_tokens == 1
    tiny = build_model("vit_tiny", num_classes=6)
    assert tiny(torch.randn(1, 3, 64, 64)).shape == (1, 6)
    assert default_target_layer(tiny) == "encoder.layers.encoder_layer_3.ln_1"
    with pytest.raises(ValueError, match="Unknown timm model"):
        build_model("timm/not_a_model_xyz")


# ---------------------------------------------------------------- read-out rows (methods/readout.py)
READOUT_CASES = {
    # id -> (builder, input size, rows the classifier reads, target layer (None: the default))
    "timm-vit": (CASES["timm-vit"][0], 32, (0,), None),
    "timm-deit-distilled": (CASES["timm-deit-distilled"][0], 32, (0, 1), None),
    "timm-vit-registers": (CASES["timm-vit-registers"][0], 32, (0,), None),
    "timm-vit-qk-norm": (_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, qk_norm=True), 32, (0,), None),
    "timm-deit3-layerscale": (_timm("deit3_small_patch16_224", img_size=32, patch_size=8, depth=2), 32, (0,), None),
    "tv-vit": (_tv_vit, 32, (0,), None),
    # a layer in an earlier block: the last block's attention still runs on the read rows
    "timm-vit-first-block": (CASES["timm-vit"][0], 32, (0,), "blocks.0.norm1"),
    "tv-vit-first-block": (_tv_vit, 32, (0,), "encoder.layers.encoder_layer_0"),
}


def _readout_setup(case: str) -> tuple[nn.Module, torch.Tensor, str]:
    builder, size, _, layer = READOUT_CASES[case]
    torch.manual_seed(0)
    model = builder().eval()
    for module in model.modules():
        if isinstance(module, nn.Linear):  # O(1) weights everywhere, so the token rows matter
            nn.init.normal_(module.weight, std=0.2)
    return model, torch.randn(3, 3, size, size), layer or default_target_layer(model)


@pytest.mark.parametrize("case", list(READOUT_CASES))
def test_readout_rows_equal_the_full_head(case, monkeypatch):
    """The head run on the read token rows gives the full head's logits, gradient, LIFT-CAM and
    Ablation-CAM (the head on many ablated copies) up to float32 rounding."""
    import copy

    import lightning_cam.methods.split as split_module

    model, x, layer = _readout_setup(case)
    methods = ["liftcam", "gradcam", "ablationcam"]
    lp = LayerPass(model, layer, x)
    (plan,) = lp.split.readout_plans.values()
    assert plan is not None and set(plan.rows[n] for n in plan.attention) == {READOUT_CASES[case][2]}
    fast = explain_all(model, layer, x, methods=methods)
    monkeypatch.setattr(split_module, "plan_readout", lambda *args: None)
    full_model = copy.deepcopy(model)  # a new model: a new split, planned with the patch
    full_lp = LayerPass(full_model, layer, x)
    assert list(full_lp.split.readout_plans.values()) == [None]
    full = explain_all(full_model, layer, x, methods=methods)

    # Same sums over other GEMM shapes (one query row instead of N): first-order bound of the
    # network's reductions times the size of the compared values.
    terms = reduction_terms(model)
    assert torch.allclose(lp.logits, full_lp.logits, rtol=0, atol=sum_tol(terms, float(full_lp.logits.abs().max())))
    assert torch.allclose(lp.gradient, full_lp.gradient, rtol=0, atol=sum_tol(terms, float(full_lp.gradient.abs().max())))
    for name in methods:
        w = full[name].weights
        size = (w.abs()[:, :, None, None] * lp.activation.abs()).sum(1).amax((1, 2))
        for i in range(x.shape[0]):
            assert torch.allclose(fast[name].maps[i], full[name].maps[i], rtol=0, atol=2 * sum_tol(terms, float(size[i]))), name
    tol = completeness_tolerance(full["liftcam"].weights, full["liftcam"].logits, int(lp.activation[0, 0].numel()))
    assert (fast["liftcam"].delta.abs() <= tol).all()


@pytest.mark.parametrize("case", ["timm-vit-gap-noncls", "timm-swin", "timm-mixer", "timm-convnext", "tv-resnet-channels-last"])
def test_readout_is_not_planned_where_every_row_is_read(case):
    """Average pooling (or no attention) reads every token: the head runs as it is."""
    model, x, layer = _setup(case)
    assert list(LayerPass(model, layer, x).split.readout_plans.values()) == [None]


def test_readout_rows_only_in_eval_mode():
    """In training mode dropout draws per element: the full head runs (same values in eval)."""
    model, x, layer = _readout_setup("timm-vit")
    lp = LayerPass(model, layer, x)
    (plan,) = lp.split.readout_plans.values()
    assert plan.applies()
    model.train()
    try:
        assert not plan.applies()
    finally:
        model.eval()


def test_readout_plan_per_dtype_and_for_every_batch_size():
    """One plan per shape past the batch dimension, dtype and device; any batch size uses it."""
    model, x, layer = _readout_setup("timm-vit")
    one = LayerPass(model, layer, x[:1])
    three = LayerPass(model, layer, x)
    assert len(three.split.readout_plans) == 1
    tol = sum_tol(reduction_terms(model), float(three.logits.abs().max()))
    assert torch.allclose(one.logits[0], three.logits[0], rtol=0, atol=tol)
    model.double()
    double = LayerPass(model, layer, x.double())
    plans = list(double.split.readout_plans.values())
    assert len(plans) == 2 and all(p is not None for p in plans)
    # float64 model on the same images: within float32 rounding of the float32 logits
    assert double.logits.dtype == torch.float64
    assert torch.allclose(double.logits.float(), three.logits, rtol=0, atol=tol)


@pytest.mark.parametrize("case", ["timm-vit", "timm-deit-distilled", "timm-swin", "tv-vit", "tv-swin"])
def test_liftcam_sums_to_the_exact_score_difference(case):
    """sum_k phi_k (float32) against y(A) - y(0) evaluated in float64 on the same activations:
    the coefficients' completeness error, free of the float32 rounding of y(A) and y(0) that
    bounds the residual the float32 head reports."""
    from lightning_cam.methods.liftcam import deeplift_coefficients, exact_score_difference

    model, x, layer = _setup(case)
    lp = LayerPass(model, layer, x)
    phi, _ = deeplift_coefficients(lp)
    exact = exact_score_difference(lp)
    grid = lp.activation.shape[-2] * lp.activation.shape[-1]
    tol = completeness_tolerance(phi, lp.logits, grid)
    error = (phi.double().sum(1) - exact).abs()
    print(case, (error / exact.abs()).max().item(), (error / tol).max().item())
    assert (error <= tol).all(), (error, tol)


class _BroadcastHead(nn.Module):
    """A head with a per-image (B, 1, C) value broadcast into two token tensors read at two rows."""

    num_prefix_tokens = 1

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.embed = nn.Conv2d(3, width, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.block = Block(width, 2)
        self.gate = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 5)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img).flatten(2).transpose(1, 2)
        x = self.block(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1))
        g = self.gate(x.mean(1, keepdim=True))
        return self.head(self.norm(x + g)[:, 0] + (x * g)[:, -1])


def test_readout_rows_leave_broadcast_operands_whole(monkeypatch):
    """A size-1 token axis broadcasts: it is computed whole, not indexed by the rows read elsewhere."""
    import copy

    import lightning_cam.methods.split as split_module

    torch.manual_seed(0)
    model = _BroadcastHead().eval()
    x = torch.randn(2, 3, 32, 32)
    planned = LayerPass(model, "block", x)
    (plan,) = planned.split.readout_plans.values()
    assert plan is not None and {n.name for n in plan.rows} >= {"add", "mul"}  # x + g and x * g on read rows
    monkeypatch.setattr(split_module, "plan_readout", lambda *args: None)
    full = LayerPass(copy.deepcopy(model), "block", x)
    tol = sum_tol(reduction_terms(model), float(full.logits.abs().max()))
    assert torch.allclose(planned.logits, full.logits, rtol=0, atol=tol)
    assert torch.allclose(planned.gradient, full.gradient, rtol=0, atol=sum_tol(reduction_terms(model), float(full.gradient.abs().max())))


def _half_vit(std: float | None = None, qkv_scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear) and (std is not None or module is model.head):
            nn.init.normal_(module.weight, std=std or 0.5)
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight.mul_(qkv_scale)
    return model


def test_liftcam_in_float16_with_a_large_residual_stream():
    """O(1) weights: the residual stream exceeds 256, so mean((z - mean)^2) overflows float16, and the
    shift shared by the actual and reference rows underflows one half's softmax. The layer-norm and
    softmax rules run in float32 for half-precision inputs: finite coefficients, close to float32's."""
    model = _half_vit(std=0.2)
    x = torch.randn(2, 3, 32, 32)
    ref = explain_all(model, None, x, methods=["liftcam"])["liftcam"]
    half = explain_all(model.half(), None, x, methods=["liftcam"])["liftcam"]
    assert torch.isfinite(half.weights).all() and torch.isfinite(half.delta).all()
    # a few dozen float16 roundings along the head (as in test_own_model's precision test)
    cosine = nn.functional.cosine_similarity(half.weights.float(), ref.weights)
    assert (cosine >= 1 - 64 * torch.finfo(torch.float16).eps).all(), cosine


def test_liftcam_says_when_a_half_precision_head_overflows():
    """Attention scores beyond float16's range: the fused kernel of the model's own forward keeps them
    in float32, the DeepLIFT pass's explicit q k^T (like timm's unfused path) cannot. LIFT-CAM warns
    instead of returning NaN coefficients silently."""
    model = _half_vit(qkv_scale=100.0).half()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        finite_scores = torch.isfinite(model(x.half())).all(dim=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lift = explain_all(model, None, x, methods=["liftcam"])["liftcam"]
    warned = any("float16, whose range its products exceeded" in str(w.message) for w in caught)
    overflowed = ~torch.isfinite(lift.weights).all(dim=1)
    # CPU kernels that fuse attention (float32 inside) keep the model's scores finite, and then the
    # warning must name the overflow; where a machine computes q k^T in float16 the scores are not
    # finite either, and there is nothing to warn about (the callback reports non-finite scores).
    assert overflowed.any()
    assert warned == bool((finite_scores & overflowed).any())


def test_a_layer_inside_attention_splits_and_explains():
    """timm's Attention reads ``B, N, C = x.shape`` before ``qkv`` and uses B and N after it: the
    head recomputes them, the body keeps its own copy (it failed with a KeyError in the split)."""
    model, x, _ = _setup("timm-vit")
    exps = explain_all(model, "blocks.1.attn.qkv", x, methods=["liftcam", "gradcam"])
    lift = exps["liftcam"]
    assert lift.maps.shape == (x.shape[0], 4, 4) and torch.isfinite(lift.maps).all()
    tol = completeness_tolerance(lift.weights, lift.logits, 16)
    assert (lift.delta.abs() <= tol).all()

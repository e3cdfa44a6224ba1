"""The metrics follow the target (lightning_cam.targets): segmentation, binary, multi-label,
regression and pytorch-grad-cam's target objects, and evaluate() leaves out what has no meaning.

Tolerances (tests/tolerance.py): a curve computed in another batch runs the model on other shapes,
so its logits move by at most ``forward_tol(model, magnitude)``; a probability moves by at most half
that (softmax and sigmoid have slope <= 1/2 and 1/4), and a mean of probabilities over a mask or an
AUC (a mean over the curve) adds one rounding per term of its sum, ``sum_tol(terms)``. Where both
sides run the very same kernels on the very same shapes the comparison is exact, and says so.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tolerance import EPS32, forward_tol, magnitude, sum_tol
from lightning_cam import evaluate
from lightning_cam.evaluation.core import bind_evaluation_target, target_notes
from lightning_cam.evaluation.keys import METRIC_TABLE, PROBABILITY_KINDS, TARGET_KINDS, applies, left_out
from lightning_cam.evaluation.options import EvaluationOptions
from lightning_cam.evaluation.report import EvaluationReport, LayerReport, MethodReport, class_groups, class_means, summarise
from lightning_cam.evaluation.scoring import Inputs
from lightning_cam.metrics import blur, confidence_change, insertion_deletion, pointing_game, road
from lightning_cam.targets import (
    BinaryLogit,
    ClassLogit,
    LabelLogit,
    PerImage,
    RegressionOutput,
    SegmentationClass,
    resolve_target,
)

H = W = 8
N_STEPS = 4


class TinySeg(nn.Module):
    """(B, 3, H, W) -> (B, 3, H, W) per-pixel class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyNet(nn.Module):
    """(B, 3, H, W) -> (B, outputs) (``squeeze``: (B,) for one output)."""

    def __init__(self, outputs: int = 4, squeeze: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, outputs)
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.features(x).mean(dim=(2, 3)))
        return y[:, 0] if self.squeeze else y


class TwoColumns(nn.Module):
    """The 2-column softmax classifier ``[0, y]`` built from a 1-logit model: ``softmax([0, y])_1 = sigmoid(y)``."""

    def __init__(self, one: nn.Module) -> None:
        super().__init__()
        self.one = one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.one(x)
        return torch.cat([torch.zeros_like(y), y], dim=1)


def _batch(seed: int = 0, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, H, W, generator=g), torch.rand(b, H, W, generator=g)


def _seg() -> tuple[TinySeg, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    model = TinySeg().eval()
    x, sal = _batch()
    return model, x, sal


# ---------------------------------------------------------------- segmentation


def _hand_curves(model: nn.Module, x: torch.Tensor, sal: torch.Tensor, follow) -> tuple[torch.Tensor, torch.Tensor]:
    """The RISE protocol one image and one point at a time: point ``i`` takes the ``floor(i H W / n)``
    most salient pixels (stable descending order) from the finish image; deletion finish = zeros,
    insertion start = the blurred image. ``follow(scores, image)`` is the followed score."""
    hw = H * W
    thresholds = [i * hw // N_STEPS for i in range(N_STEPS + 1)]
    blurred = blur(x)
    deletion, insertion = [], []
    with torch.no_grad():
        for b in range(x.shape[0]):
            order = torch.sort(sal[b].flatten(), descending=True, stable=True).indices
            d_row, i_row = [], []
            for t in thresholds:
                chosen = torch.zeros(hw, dtype=torch.bool)
                chosen[order[:t]] = True
                chosen = chosen.view(1, 1, H, W)
                d_row.append(follow(model(torch.where(chosen, torch.zeros_like(x[b : b + 1]), x[b : b + 1])), b))
                i_row.append(follow(model(torch.where(chosen, x[b : b + 1], blurred[b : b + 1])), b))
            deletion.append(torch.stack(d_row))
            insertion.append(torch.stack(i_row))
    return torch.stack(insertion), torch.stack(deletion)


def test_segmentation_curves_follow_the_class_probability_in_its_mask():
    model, x, sal = _seg()
    res = insertion_deletion(model, x, sal, SegmentationClass(1), n_steps=N_STEPS)
    target = res.target
    assert target is not None and target.kind == "segmentation" and res.targets.tolist() == [1, 1, 1]
    with torch.no_grad():
        region = model(x).argmax(dim=1) == 1
    region = torch.where(region.flatten(1).any(1)[:, None, None], region, torch.ones_like(region))
    assert torch.equal(target.masks.bool(), region)  # the predicted region of class 1 (whole image if empty)

    def follow(scores: torch.Tensor, b: int) -> torch.Tensor:  # mean of softmax(y)_1 over the image's mask
        return scores.softmax(dim=1)[0, 1][region[b]].mean()

    ins, dele = _hand_curves(model, x, sal, follow)
    tol = forward_tol(model, magnitude(model, x)) / 2 + sum_tol(3) + sum_tol(H * W)
    torch.testing.assert_close(res.deletion_curve, dele, atol=tol, rtol=0.0)
    torch.testing.assert_close(res.insertion_curve, ins, atol=tol, rtol=0.0)
    assert res.insertion_curve.shape == (3, N_STEPS + 1)


def test_segmentation_given_masks_and_reduction_are_followed():
    model, x, sal = _seg()
    masks = torch.zeros(3, H, W)
    masks[:, 2:6, 1:5] = 1.0
    res = insertion_deletion(model, x, sal, SegmentationClass(2, masks=masks), n_steps=N_STEPS, score="logit")
    ins, dele = _hand_curves(model, x, sal, lambda s, b: (s[0, 2] * masks[b]).sum())
    # logit value: a sum of 16 mask pixels' logits, each within forward_tol of the reference
    tol = 16 * forward_tol(model, magnitude(model, x)) + sum_tol(H * W, float(ins.abs().max()))
    torch.testing.assert_close(res.deletion_curve, dele, atol=tol, rtol=0.0)
    torch.testing.assert_close(res.insertion_curve, ins, atol=tol, rtol=0.0)


def test_rebinding_a_bound_segmentation_target_keeps_its_region():
    model, x, _ = _seg()
    with torch.no_grad():
        bound = resolve_target(SegmentationClass(), model(x))
        again = resolve_target(bound, model(x + 3.0 * torch.randn_like(x)))  # perturbed scores
    assert torch.equal(again.masks, bound.masks) and torch.equal(again.classes, bound.classes)
    chosen = bound.select(torch.tensor([2, 0]))
    assert torch.equal(resolve_target(chosen, model(x[[2, 0]]).detach()).masks, bound.masks[[2, 0]])


def test_pointing_game_takes_the_segmentation_target_region():
    model, x, sal = _seg()
    with torch.no_grad():
        bound = resolve_target(SegmentationClass(1), model(x))
    by_target = pointing_game(sal, target=bound)
    by_masks = pointing_game(sal, bound.masks > 0)
    assert torch.equal(by_target.hits, by_masks.hits) and torch.equal(by_target.energy, by_masks.energy)
    with pytest.raises(ValueError, match="masks"):
        pointing_game(sal, target=resolve_target(None, torch.randn(3, 4)))


# ---------------------------------------------------------------- binary, multi-label, regression


def test_binary_logit_equals_the_two_column_softmax_model():
    torch.manual_seed(5)
    one = TinyNet(1).eval()
    two = TwoColumns(one).eval()
    x, sal = _batch(1)
    for side in (0, 1):
        r1 = insertion_deletion(one, x, sal, BinaryLogit(side), n_steps=N_STEPS)
        r2 = insertion_deletion(two, x, sal, side, n_steps=N_STEPS)
        # same logit y (the same kernels on the same shapes); sigmoid(+-y) and softmax([0, y])_side
        # differ by the roundings of their few elementwise operations (exp, one 2-term sum, a division)
        tol = sum_tol(2) + 4 * EPS32
        torch.testing.assert_close(r1.deletion_curve, r2.deletion_curve, atol=tol, rtol=0.0)
        torch.testing.assert_close(r1.insertion_curve, r2.insertion_curve, atol=tol, rtol=0.0)
        torch.testing.assert_close(r1.insertion, r2.insertion, atol=tol + sum_tol(N_STEPS + 1), rtol=0.0)
        assert r1.targets.tolist() == [side] * 3


def test_binary_default_is_the_predicted_side_and_one_logit_as_b():
    torch.manual_seed(5)
    flat = TinyNet(1, squeeze=True).eval()
    x, sal = _batch(2)
    with torch.no_grad():
        y = flat(x)
    res = insertion_deletion(flat, x, sal, n_steps=N_STEPS)
    assert res.target.kind == "binary" and res.targets.tolist() == (y > 0).long().tolist()
    # the clean point is sigmoid of the predicted side's logit, exactly (the same forward pass)
    assert torch.equal(res.clean_score, (y * ((y > 0).float() * 2 - 1)).sigmoid())


def test_label_logit_follows_the_sigmoid_of_the_label_logit():
    torch.manual_seed(6)
    model = TinyNet(4).eval()
    x, sal = _batch(3)
    label = insertion_deletion(model, x, sal, LabelLogit([2, 0, 3]), n_steps=N_STEPS)
    logit = insertion_deletion(model, x, sal, ClassLogit([2, 0, 3]), n_steps=N_STEPS, score="logit")
    # the same forward passes (same chunks): the sigmoid of the followed logit, exactly
    assert torch.equal(label.deletion_curve, logit.deletion_curve.sigmoid())
    assert torch.equal(label.insertion_curve, logit.insertion_curve.sigmoid())
    assert label.target.kind == "multilabel"


def test_regression_follows_the_output_with_score_logit_and_says_so_otherwise():
    torch.manual_seed(7)
    model = TinyNet(3).eval()
    x, sal = _batch(4)
    reg = insertion_deletion(model, x, sal, RegressionOutput(1), n_steps=N_STEPS, score="logit")
    col = insertion_deletion(model, x, sal, 1, n_steps=N_STEPS, score="logit")
    assert torch.equal(reg.deletion_curve, col.deletion_curve) and torch.equal(reg.insertion, col.insertion)
    assert reg.targets is None and reg.target.kind == "regression"
    with pytest.raises(ValueError, match="score='logit'"):
        insertion_deletion(model, x, sal, RegressionOutput(1), n_steps=N_STEPS)
    one = TinyNet(1, squeeze=True).eval()
    flat = insertion_deletion(one, x, sal, RegressionOutput(), n_steps=N_STEPS, score="logit")
    side = insertion_deletion(one, x, sal, BinaryLogit(1), n_steps=N_STEPS, score="logit")
    assert torch.equal(flat.deletion_curve, side.deletion_curve)  # +y, the same passes


def test_average_drop_has_no_meaning_without_a_probability():
    torch.manual_seed(7)
    model = TinyNet(3).eval()
    x, sal = _batch(4)
    for target, kind in ((RegressionOutput(0), "regression"), (PerImage([lambda y: y[0]] * 3), "callable")):
        for score in ("softmax", "logit"):
            with pytest.raises(ValueError, match=f"no meaning for a {kind} target"):
                confidence_change(model, x, sal, target, score=score)
    with pytest.raises(ValueError, match="score='logit'"):
        road(model, x, sal, RegressionOutput(0), score="accuracy", noise=0.0)


def test_segmentation_and_binary_average_drop_use_the_probability():
    model, x, sal = _seg()
    res = confidence_change(model, x, sal, SegmentationClass(1))
    with torch.no_grad():
        y = res.target.probability(model(x))
    assert torch.equal(res.score, y)  # the same clean forward pass
    assert bool(((res.drop >= 0) & (res.drop <= 1)).all())


def test_clean_logits_of_any_shape_with_b_rows():
    model, x, sal = _seg()
    with torch.no_grad():
        clean = model(x)
    given = insertion_deletion(model, x, sal, SegmentationClass(1), n_steps=N_STEPS, clean_logits=clean)
    ran = insertion_deletion(model, x, sal, SegmentationClass(1), n_steps=N_STEPS)
    assert torch.equal(given.deletion_curve, ran.deletion_curve)
    with pytest.raises(ValueError, match="3 rows"):
        insertion_deletion(model, x, sal, n_steps=N_STEPS, clean_logits=clean[:2])


# ---------------------------------------------------------------- pytorch-grad-cam's target objects


def test_grad_cam_target_objects_score_as_the_equivalent_ints():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

    torch.manual_seed(8)
    model = TinyNet(4).eval()
    x, sal = _batch(5)
    classes = [3, 1, 1]
    objects = [ClassifierOutputTarget(c) for c in classes]
    # the objects resolve to the same batched ClassLogit: every score comes from the same passes
    a, b = insertion_deletion(model, x, sal, objects, n_steps=N_STEPS), insertion_deletion(model, x, sal, classes, n_steps=N_STEPS)
    assert torch.equal(a.insertion_curve, b.insertion_curve) and torch.equal(a.deletion_curve, b.deletion_curve)
    ca, cb = confidence_change(model, x, sal, objects), confidence_change(model, x, sal, classes)
    assert torch.equal(ca.drop, cb.drop) and torch.equal(ca.increase, cb.increase)
    ra = road(model, x, sal, objects, noise=0.0, percentages=(25, 50))
    rb = road(model, x, sal, classes, noise=0.0, percentages=(25, 50))
    assert torch.equal(ra.combined, rb.combined)

    seg, xs, ss = _seg()
    masks = torch.zeros(3, H, W)
    masks[:, :4] = 1.0
    grad_cam = [SemanticSegmentationTarget(2, masks[i].numpy()) for i in range(3)]
    sa = insertion_deletion(seg, xs, ss, grad_cam, n_steps=N_STEPS, score="logit")
    sb = insertion_deletion(seg, xs, ss, SegmentationClass(2, masks=masks, background=None), n_steps=N_STEPS, score="logit")
    assert torch.equal(sa.deletion_curve, sb.deletion_curve)


def test_evaluate_with_grad_cam_target_objects_equals_ints():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(9)
    model = TinyNet(4).eval()
    x, _ = _batch(6, b=4)
    kw = dict(methods=["gradcam"], n_steps=N_STEPS, batch_size=2)
    a = evaluate(model, "features", x, targets=[ClassifierOutputTarget(c) for c in (0, 1, 2, 3)], **kw).summary()
    b = evaluate(model, "features", x, targets=[0, 1, 2, 3], **kw).summary()
    assert {k: v for k, v in a.items() if "seconds" not in k} == {k: v for k, v in b.items() if "seconds" not in k}


# ---------------------------------------------------------------- evaluate: what applies to which kind


def test_metric_table_kinds():
    assert set(PROBABILITY_KINDS) <= set(TARGET_KINDS)
    assert all(set(m.kinds) <= set(TARGET_KINDS) and (m.needs or m.kinds == TARGET_KINDS) for m in METRIC_TABLE)
    assert not applies("average_drop", "regression") and applies("average_drop", "segmentation")
    assert applies("insertion", "callable") and applies("pointing_game", "regression")
    assert [m.name for m in left_out("regression")] == ["average_drop", "increase_in_confidence"]
    assert [m.name for m in left_out("segmentation", ["random_logit", "road"])] == ["random_logit"]
    assert left_out("class", ["random_logit"]) == ()


def _inputs(x: torch.Tensor, masks: torch.Tensor | None = None) -> Inputs:
    n = x.shape[0]
    return Inputs(images=x, labels=None, masks=masks, regions={}, target=None, shap_on=torch.zeros(n, dtype=torch.bool),
                  image_ok=torch.ones(n, dtype=torch.bool))


def test_evaluation_binds_one_segmentation_target_and_lends_its_region():
    model, x, _ = _seg()
    opts = EvaluationOptions(batch_size=2, extra_metrics=("random_logit",))
    inputs = bind_evaluation_target(model, _inputs(x), SegmentationClass(1), opts, torch.device("cpu"))
    with torch.no_grad():
        whole = resolve_target(SegmentationClass(1), model(x))
    assert torch.equal(inputs.target.masks, whole.masks)  # bound on the batches of 2 as on all 3 images
    assert torch.equal(inputs.masks, whole.masks > 0) and torch.equal(inputs.regions["object"], inputs.masks)
    assert torch.equal(inputs.batch(slice(1, 3), torch.device("cpu")).target.masks, whole.masks[1:])
    notes = target_notes(inputs, False, opts)
    assert any(n.startswith("random_logit left out: no meaning for a segmentation target") for n in notes)
    assert any("pointing games" in n for n in notes)
    given = bind_evaluation_target(model, _inputs(x, torch.ones(3, H, W, dtype=torch.bool)), SegmentationClass(1), opts,
                                   torch.device("cpu"))
    assert bool(given.masks.all()) and not any("pointing games" in n for n in target_notes(given, True, opts))


def test_regression_notes_name_what_is_left_out_and_the_curve_score():
    torch.manual_seed(7)
    model = TinyNet(3).eval()
    x, _ = _batch(4)
    opts = EvaluationOptions(batch_size=2)
    inputs = bind_evaluation_target(model, _inputs(x), RegressionOutput(2), opts, torch.device("cpu"))
    notes = target_notes(inputs, False, opts)
    assert notes[0].startswith("average_drop left out: no meaning for a regression target")
    assert notes[1].startswith("increase_in_confidence left out") and "score='logit'" in notes[2]


def test_reports_without_classes_still_reduce():
    n = 4
    values = {"insertion": torch.rand(n), "deletion": torch.rand(n)}
    rep = MethodReport(method="gradcam", saliency=torch.rand(n, H, W), finite=torch.ones(n, dtype=torch.bool), values=values)
    report = EvaluationReport(
        layers={"features": LayerReport("features", "features", {"gradcam": rep})}, predictions=torch.zeros(n, dtype=torch.long),
        confidence=torch.randn(n), targets=None, target=RegressionOutput(), kind="regression",
        notes=("average_drop left out",),
    )
    assert class_groups(report).numel() == 0 and class_means(report) == {} and class_means(report, [0, 1]) == {}
    summary = summarise(report, per_class=[0])
    assert math.isclose(summary["cam/gradcam/insertion"], float(values["insertion"].double().mean()), rel_tol=0, abs_tol=sum_tol(n))
    assert not any("/class/" in k for k in summary)
    labelled = EvaluationReport(**{**report.__dict__, "labels": torch.tensor([0, 0, 1, 1])})
    assert set(class_means(labelled)) == {0, 1}


def test_evaluate_segmentation_and_regression_targets():
    model, x, _ = _seg()
    report = evaluate(model, "features", x, methods=["gradcam"], targets=SegmentationClass(1), n_steps=N_STEPS,
                      batch_size=2, extra_metrics=["random_logit"])
    r = report["gradcam"]
    assert report.kind == "segmentation" and "random_logit" not in r.values
    assert {"insertion", "deletion", "average_drop", "pointing_game"} <= set(r.values)
    assert any("random_logit left out" in n for n in report.notes) and any("pointing games" in n for n in report.notes)
    torch.manual_seed(7)
    reg = TinyNet(3).eval()
    xr, _ = _batch(4)
    rep = evaluate(reg, "features", xr, methods=["gradcam"], targets=RegressionOutput(1), n_steps=N_STEPS, batch_size=2)
    assert rep.kind == "regression" and rep.targets is None
    assert "average_drop" not in rep["gradcam"].values and "insertion" in rep["gradcam"].values
    assert "cam/gradcam/average_drop" not in rep.summary() and "cam/gradcam/insertion" in rep.summary()
    assert any("average_drop left out" in n for n in rep.notes)


def test_random_logit_reads_the_classes_of_a_class_target_and_refuses_other_kinds():
    from lightning_cam.metrics import random_logit

    x, _ = _batch(7)
    seen: list = []

    def explain(images: torch.Tensor, targets) -> torch.Tensor:
        seen.append(targets)
        return images.mean(dim=1).abs()

    bound = resolve_target(LabelLogit([1, 2, 0]), torch.randn(3, 4))
    off = torch.tensor([0, 3, 1])
    by_target = random_logit(explain, x, bound, 4, off_targets=off)
    by_ints = random_logit(explain, x, torch.tensor([1, 2, 0]), 4, off_targets=off)
    assert torch.equal(by_target, by_ints) and seen[0] is bound and torch.equal(seen[1], off)
    with pytest.raises(ValueError, match="no meaning for a regression target"):
        random_logit(explain, x, RegressionOutput(), 4)

"""Models as users write them: non-tensor outputs, half / double precision, non-finite scores."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch import nn

from lightning_cam import explain_all
from lightning_cam.outputs import logits_of, select_scores
from lightning_cam.methods import METHODS, LiftCAM
from lightning_cam.metrics import confidence_change, insertion_deletion
from lightning_cam.metrics.metric_classes import ConfidenceChange, InsertionDeletion
from tests.models import TinyCNN

EPS32 = 2.0**-23


@dataclasses.dataclass
class ImageClassifierOutput:
    """Hugging Face's convention (transformers.modeling_outputs.ImageClassifierOutput), without transformers."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None


class HFStyle(TinyCNN):
    def forward(self, x):
        return ImageClassifierOutput(logits=super().forward(x), hidden_states=(x,))


class DictOut(TinyCNN):
    def forward(self, x):
        return {"features": x.mean(dim=(2, 3)), "logits": super().forward(x)}


class TupleOut(TinyCNN):
    def forward(self, x):
        return super().forward(x), x.mean()


class ListOut(TinyCNN):
    def forward(self, x):
        return [super().forward(x)]


class ScoresDict(TinyCNN):
    """A dict without "logits": needs output_transform."""

    def forward(self, x):
        return {"scores": super().forward(x)}


def _same_weights(cls: type[TinyCNN]) -> tuple[TinyCNN, TinyCNN]:
    torch.manual_seed(0)
    plain = TinyCNN().eval()
    other = cls().eval()
    other.load_state_dict(plain.state_dict())
    return plain, other


def _completeness_tolerance(exp) -> torch.Tensor:
    """float32 bound on |sum_k phi_k - (y(A) - y(0))|: one rounding per term of the K*h*w sum
    and of the head, relative to the magnitudes summed."""
    k, h, w = exp.weights.shape[1], *exp.maps.shape[-2:]
    scale = exp.weights.abs().sum(1) + exp.logits.abs().max(1).values
    return (k * h * w + 64) * EPS32 * scale


@pytest.mark.parametrize("cls", [HFStyle, DictOut, TupleOut, ListOut], ids=lambda c: c.__name__)
def test_non_tensor_outputs_explained_like_the_plain_model(cls) -> None:
    plain, model = _same_weights(cls)
    x = torch.randn(3, 3, 12, 12)
    ref = explain_all(plain, "features", x, methods=list(METHODS))
    got = explain_all(model, "features", x, methods=list(METHODS))
    for name in METHODS:
        torch.testing.assert_close(got[name].maps, ref[name].maps, rtol=0, atol=0)
        torch.testing.assert_close(got[name].logits, ref[name].logits, rtol=0, atol=0)
    lift = got["liftcam"]
    assert (lift.delta.abs() <= _completeness_tolerance(lift)).all(), lift.delta
    sal = lift.saliency()
    torch.testing.assert_close(
        insertion_deletion(model, x, sal, step=16).insertion, insertion_deletion(plain, x, sal, step=16).insertion,
        rtol=0, atol=0,
    )
    torch.testing.assert_close(
        confidence_change(model, x, sal).drop, confidence_change(plain, x, sal).drop, rtol=0, atol=0
    )


def test_liftcam_completeness_through_hf_and_dict_outputs_at_float_precision() -> None:
    x = torch.randn(4, 3, 16, 16)
    for cls in (HFStyle, DictOut):
        _, model = _same_weights(cls)
        exp = LiftCAM(model, "features").explain(x)
        assert exp.delta.dtype == torch.float32
        assert (exp.delta.abs() <= _completeness_tolerance(exp)).all(), (cls.__name__, exp.delta)
        assert exp.delta.abs().max() > 0 or exp.weights.abs().sum() > 0  # a real explanation, not zeros


def test_output_transform_everywhere_and_from_hydra() -> None:
    from hydra.utils import instantiate

    plain, model = _same_weights(ScoresDict)
    x = torch.randn(2, 3, 12, 12)
    transform = instantiate({"_target_": "lightning_cam.outputs.select_scores", "_partial_": True, "key": "scores"})
    assert isinstance(transform, functools.partial)
    ref = explain_all(plain, "features", x, methods=["liftcam", "scorecam"])
    got = explain_all(model, "features", x, methods=["liftcam", "scorecam"], output_transform=transform)
    for name in ref:
        torch.testing.assert_close(got[name].maps, ref[name].maps, rtol=0, atol=0)
    alone = METHODS["scorecam"](model, "features", output_transform=transform).explain(x)
    torch.testing.assert_close(alone.maps, ref["scorecam"].maps, rtol=0, atol=0)
    sal = ref["liftcam"].saliency()
    r = insertion_deletion(model, x, sal, step=16, output_transform=transform)
    torch.testing.assert_close(r.deletion, insertion_deletion(plain, x, sal, step=16).deletion, rtol=0, atol=0)
    metric = ConfidenceChange(model, output_transform=transform)
    metric.update(x, sal)
    assert float(metric.compute()["average_drop"]) == pytest.approx(confidence_change(plain, x, sal).average_drop)


def test_unknown_output_error_names_the_type_and_the_option() -> None:
    _, model = _same_weights(ScoresDict)
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(ValueError, match=r"dict with keys \['scores'\].*output_transform="):
        explain_all(model, "features", x)
    with pytest.raises(ValueError, match="output_transform="):
        insertion_deletion(model, x, torch.rand(2, 12, 12), step=16)
    with pytest.raises(TypeError, match="output_transform must be None or a callable"):
        LiftCAM(model, "features", output_transform="scores")
    with pytest.raises(ValueError, match=r"output_transform returned a tensor of shape \(2, 5, 1\)"):
        explain_all(model, "features", x, output_transform=lambda out: out["scores"][..., None])
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(2, 5, 1\)"):
        logits_of(torch.zeros(2, 5, 1))
    with pytest.raises(KeyError, match=r"no 'logits'; available: \['scores'\]"):
        select_scores({"scores": 1}, "logits")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_low_and_double_precision_models_everywhere(dtype: torch.dtype) -> None:
    """Float32 images into a bf16 / fp16 / float64 model: engine and metrics cast them; results are
    float32 (float64 for the float64 model: it is explained at its own precision)."""
    torch.manual_seed(0)
    ref_model = TinyCNN().eval()
    model = TinyCNN().eval()
    model.load_state_dict(ref_model.state_dict())
    model.to(dtype)
    x = torch.randn(3, 3, 12, 12)
    exps = explain_all(model, None, x, methods=list(METHODS))
    ref = explain_all(ref_model, None, x, methods=list(METHODS))
    # the logits of a model computing in `dtype` are float32 numbers close to the float32 model's:
    # a few dozen roundings of the coarser precision, relative to the logits' size
    eps = max(torch.finfo(dtype).eps, EPS32)
    tol = 64 * eps * float(ref["liftcam"].logits.abs().max())
    result_dtype = torch.promote_types(dtype, torch.float32)
    for name, e in exps.items():
        assert e.maps.dtype == result_dtype and torch.isfinite(e.maps).all(), name
        torch.testing.assert_close(e.logits.float(), ref[name].logits, rtol=0, atol=tol)
    sal = exps["liftcam"].saliency()
    r = insertion_deletion(model, x, sal, step=16)
    c = confidence_change(model, x, sal)
    for v in (r.insertion, r.deletion, c.drop, c.drop_in_deletion):
        assert v.dtype == result_dtype and torch.isfinite(v).all()
    # probabilities in [0, 1]: the softmax curve points agree with the float32 model's up to the dtype
    r_ref = insertion_deletion(ref_model, x, sal, step=16)
    torch.testing.assert_close(r.deletion_curve.float(), r_ref.deletion_curve, rtol=0, atol=64 * eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clean_logits_keep_the_models_precision(dtype: torch.dtype) -> None:
    """Increase in Confidence compares the masked score with the clean one: given as
    ``clean_logits`` they must not be rounded to another precision than the masked scores.
    With an all-ones saliency the masked image is the image: the same forward on the same
    shapes gives the same score bit for bit, so no image may count as an increase."""
    torch.manual_seed(0)
    model = TinyCNN().eval().to(dtype)
    x = torch.randn(8, 3, 12, 12, dtype=dtype)
    clean = model(x)
    ones = torch.ones(8, 12, 12, dtype=dtype)
    result = confidence_change(model, x, ones, clean.argmax(1), clean_logits=clean)
    assert result.score.dtype == dtype and not result.increase.any()


class NaNOnBright(TinyCNN):
    """Logits turn NaN on images with a pixel above 50 (a diverging model, seen per image)."""

    def forward(self, x):
        out = super().forward(x)
        bad = x.flatten(1).amax(dim=1) > 50
        return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)


def bright(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    x = x.clone()
    x[rows, 0, 0, 0] = 100.0
    return x


def test_nonfinite_scores_are_nan_not_zero_and_left_out_of_metric_classes() -> None:
    model = NaNOnBright().eval()
    x = bright(torch.randn(3, 3, 12, 12), [1])
    sal = torch.rand(3, 12, 12)
    c = confidence_change(model, x, sal)
    assert torch.isnan(c.drop[1]) and torch.isnan(c.drop_in_deletion[1])
    assert torch.isfinite(c.drop[[0, 2]]).all()
    r = insertion_deletion(model, x, sal, step=16)
    assert torch.isnan(r.insertion[1]) and torch.isfinite(r.insertion[[0, 2]]).all()
    ins, conf = InsertionDeletion(model, step=16), ConfidenceChange(model)
    ins.update(x, sal)
    conf.update(x, sal)
    out_i, out_c = ins.compute(), conf.compute()
    assert int(out_i["nonfinite"]) == 1 and int(out_c["nonfinite"]) == 1
    torch.testing.assert_close(out_i["insertion"], r.insertion[[0, 2]].mean())
    torch.testing.assert_close(out_c["average_drop"], c.drop[[0, 2]].mean() * 100)


def test_layer_probe_on_a_bf16_model() -> None:
    class NoKnownLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    model = NoKnownLayer().to(torch.bfloat16)
    exps = explain_all(model, None, torch.randn(2, 3, 8, 8), methods=["gradcam"])
    assert torch.isfinite(exps["gradcam"].maps).all()

"""Parity of the extra metrics (ROAD, Coherency / ARCC, Quantus' robustness, randomisation and
localisation metrics) with their reference implementations, on tiny models and 16 px images.

Tolerances (tests/tolerance.py):

* ROAD: the references solve the imputation in float64 (scipy ``spsolve``) and round it to
  float32; ours runs conjugate gradients in float64 (relative residual 1e-12) on a float64 copy of
  the model. The imputed pixels differ by at most ``EPS32/2 * max|x|`` (plus the CG error), which
  moves a logit by at most ``|W_L|...|W_1| |delta|`` (ReLU, pooling are 1-Lipschitz), bounded by
  ``EPS32 * magnitude(model, max|x| * 1)``; the reference's float32 forward adds ``forward_tol``.
* Sensitivity, RIS, Coherency: both sides explain the very same float32 tensors with the very same
  kernels (bitwise equal maps); Quantus / pytorch-grad-cam then reduce in float32 (norms, Pearson
  of ``n`` terms), we reduce in float64: relative ``sum_tol(n)`` per reduction.
* Random Logit: skimage's SSIM in float64 vs ours in float64; every factor of the SSIM ratio is at
  least ``C1 = (0.01 R)^2`` and carries an absolute error of a 7-term mean of values up to ``R^2``.
* Localisation: ranks and sums of masks; continuous random maps have no ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import TinyCNN
from tolerance import EPS32, EPS64, assert_within, forward_tol, magnitude, sum_tol
from lightning_cam import explain_all
from lightning_cam.metrics import (
    arcc,
    attribution_localisation,
    coherency,
    localisation_auc,
    noisy_linear_imputation,
    random_logit,
    relative_input_stability,
    relevance_rank_accuracy,
    road,
    sensitivity,
    top_k_intersection,
)
from lightning_cam.metrics.faithfulness import removal_masks

pytest.importorskip("pytorch_grad_cam")
quantus = pytest.importorskip("quantus")

SIZE = 16
N_PIX = SIZE * SIZE


def _gradcam(model: nn.Module):
    """Grad-CAM [0, 1] maps at input size, float32 in and out (the explanation under test)."""

    def explain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = explain_all(model, "features", x.float(), methods=["gradcam"], targets=t)["gradcam"]
        return e.saliency((SIZE, SIZE)).to(x.dtype)

    return explain


@pytest.fixture
def setup():
    model = TinyCNN().eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    sal = torch.rand(4, SIZE, SIZE)
    targets = model(x).argmax(1)
    return model, x, sal, targets


def _road_tol(model: nn.Module, x: torch.Tensor) -> float:
    """Logit difference between our float64 ROAD and the references' float32 one (module docstring)."""
    full = torch.full_like(x[:1], float(x.abs().max()))
    return forward_tol(model, magnitude(model, x), spatial=N_PIX) + EPS32 * magnitude(model, full)


def test_imputation_equals_pytorch_grad_cam(setup):
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    _, x, sal, _ = setup
    removed = removal_masks(sal, (30, 90), "lerf")
    ours = noisy_linear_imputation(x.double().repeat(2, 1, 1, 1), removed.reshape(-1, SIZE, SIZE), noise=0)
    for p in range(2):
        for i in range(x.shape[0]):
            ref = NoisyLinearImputer(noise=0)(x[i], (~removed[p, i]).float())
            # reference rounded once to float32 (EPS32/2 of the largest value) + our CG (rtol 1e-12)
            assert_within(ours[p * x.shape[0] + i], ref, EPS32 + 1e-9, "imputation")


def test_imputation_noise_is_seeded_and_only_on_removed_pixels(setup):
    _, x, sal, _ = setup
    removed = sal > 0.5
    a = noisy_linear_imputation(x, removed, 0.1, generator=torch.Generator().manual_seed(1))
    b = noisy_linear_imputation(x, removed, 0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(a.permute(1, 0, 2, 3)[:, ~removed], x.permute(1, 0, 2, 3)[:, ~removed])


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_threshold_masks_equal_numpy_percentile(setup, order):
    """pytorch-grad-cam's rule, at every percentage: with 256 pixels, (n - 1) * 0.2 etc. are whole
    numbers, so the threshold falls on a value of the map and must round the same way."""
    _, _, sal, _ = setup
    pct = tuple(range(10, 100, 10))
    removed = removal_masks(sal, pct, order)
    key = sal if order == "morf" else 1 - sal
    for p, q in enumerate(pct):
        for i in range(sal.shape[0]):
            kept = key[i].numpy() < np.percentile(key[i].numpy(), 100 - q)
            assert np.array_equal(~removed[p, i].numpy(), kept), (order, q, i)


def test_road_equals_pytorch_grad_cam(setup, monkeypatch):
    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    monkeypatch.setattr(pgc_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, pgc_road.neighbors_weights))
    model, x, sal, targets = setup
    cams = sal.numpy()
    tgts = [ClassifierOutputTarget(int(c)) for c in targets]
    ref_morf = pgc_road.ROADMostRelevantFirstAverage()(x, cams, tgts, model)
    ref_lerf = pgc_road.ROADLeastRelevantFirstAverage()(x, cams, tgts, model)
    ref_comb = pgc_road.ROADCombined()(x, cams, tgts, model)
    model64 = TinyCNN().double().eval()
    model64.load_state_dict(model.state_dict())
    ours = road(model64, x.double(), sal, targets, noise=0.0)
    tol = _road_tol(model, x)
    assert_within(ours.morf, torch.from_numpy(ref_morf), tol, "MoRF")
    assert_within(ours.lerf, torch.from_numpy(ref_lerf), tol, "LeRF")
    assert_within(ours.combined, torch.from_numpy(ref_comb), tol, "combined")


class Gray(nn.Module):
    """One input channel: Quantus' ROAD indexes the image by the map's flat indices (C = 1 only)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_road_equals_quantus_where_the_protocol_matches():
    model = Gray().eval()
    x = torch.randn(6, 1, SIZE, SIZE)
    sal = torch.rand(6, SIZE, SIZE)
    y = model(x).argmax(1)
    pct = [10, 30, 50, 70, 90]
    ref = quantus.ROAD(noise=0.0, percentages=pct, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=sal[:, None].numpy(), device="cpu"
    )
    model64 = Gray().double().eval()
    model64.load_state_dict(model.state_dict())
    ours = road(model64, x.double(), sal, y, percentages=pct, orders=("morf",), removal="count", score="accuracy", noise=0.0)
    # discrete (top-1 == y): compared where no image's top-2 margin lies within the logit bound
    removed = removal_masks(sal, pct, "morf", "count").reshape(-1, SIZE, SIZE)
    logits = model64(noisy_linear_imputation(x.double().repeat(len(pct), 1, 1, 1), removed, 0.0))
    margin = logits.topk(2, dim=1).values.diff(dim=1).abs().reshape(len(pct), -1).amin(dim=1)
    clear = margin > 2 * _road_tol(model, x)
    assert bool(clear.any())
    for j, p in enumerate(pct):
        if clear[j]:
            assert float(ours.morf_curve[:, j].mean()) == pytest.approx(float(ref[p]), abs=1e-12)


def _quantus_explain(explain):
    def fn(model, inputs, targets, **kwargs):
        return explain(torch.from_numpy(np.asarray(inputs)), torch.from_numpy(np.asarray(targets))).numpy()[:, None]

    return fn


def _injected(noise: torch.Tensor):
    """A Quantus perturb_func that adds noise[0], noise[1], ... to successive batches (same noise as ours)."""
    it = iter(noise.flatten(2).numpy())

    def perturb(arr, indices, **kwargs):
        return arr + next(it)

    return perturb


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_sensitivity_equals_quantus_with_the_same_noise(setup, kind):
    model, x, _, targets = setup
    explain = _gradcam(model)
    a = explain(x, targets)
    noise = torch.rand(3, *x.shape) * 0.4 - 0.2
    cls = quantus.MaxSensitivity if kind == "max" else quantus.AvgSensitivity
    ref = cls(nr_samples=3, perturb_func=_injected(noise), disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=a[:, None].numpy(),
        explain_func=_quantus_explain(explain), device="cpu",
    )
    ours = sensitivity(explain, x, targets, a, noise=noise)
    # float32 norms of N_PIX terms (numerator and denominator) vs float64
    assert_within(getattr(ours, kind), torch.tensor(ref), 2 * sum_tol(N_PIX) + EPS32, f"{kind}-sensitivity")


def test_sensitivity_sampled_noise_is_reproducible_and_bounded(setup):
    model, x, _, targets = setup
    explain = _gradcam(model)
    r1 = sensitivity(explain, x, targets, nr_samples=4, generator=torch.Generator().manual_seed(3))
    r2 = sensitivity(explain, x, targets, nr_samples=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1.ratios, r2.ratios)
    assert bool((r1.avg <= r1.max).all())
    zero = sensitivity(explain, x, targets, noise=torch.zeros(2, *x.shape))
    assert float(zero.max.abs().max()) == 0.0  # same input, same kernels: the very same maps


def test_relative_input_stability_equals_quantus_with_the_same_noise(setup):
    model, x, _, targets = setup
    explain = _gradcam(model)
    a = explain(x, targets)
    noise = torch.rand(3, *x.shape) * 0.18 + 0.02
    ref = quantus.RelativeInputStability(nr_samples=3, perturb_func=_injected(noise), disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=a[:, None].numpy(),
        explain_func=_quantus_explain(explain), device="cpu",
    )
    ours = relative_input_stability(explain, x, targets, a, noise=noise, model=model)
    # float32 norms of 3*N_PIX (input) and N_PIX (map) terms, and float32 quotients, vs float64
    assert_within(ours, torch.tensor(np.asarray(ref, dtype=np.float64)), sum_tol(3 * N_PIX) + sum_tol(N_PIX) + 4 * EPS32, "RIS")


def test_random_logit_equals_quantus(setup):
    model, x, _, y = setup
    explain = _gradcam(model)
    a = explain(x, y)
    calls: list[np.ndarray] = []

    def recording(model, inputs, targets, **kwargs):
        calls.append(np.asarray(targets))
        return _quantus_explain(explain)(model, inputs, targets)

    ref = quantus.RandomLogit(num_classes=5, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
        explain_func=recording, device="cpu",
    )
    off = torch.from_numpy(calls[-1])
    assert bool((off != y).all())
    ours = random_logit(explain, x, y, 5, a, off_targets=off)
    # 4 factors, each >= C1 = (0.01 R)^2, with an absolute error of a 7-term mean of values <= R^2
    assert_within(ours, torch.tensor(ref, dtype=torch.float64), 4 * sum_tol(7, 1e4, EPS64) + EPS32, "random logit")


def test_random_other_class_is_uniform_over_the_others():
    from lightning_cam.metrics.randomisation import random_other_class

    t = torch.zeros(30000, dtype=torch.long)
    off = random_other_class(t, 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(off, minlength=4).double() / len(t)
    assert counts[0] == 0
    # each of 3 classes: binomial share 1/3, standard deviation sqrt(2/9 / 30000) = 0.0027; 5 sigma
    assert torch.allclose(counts[1:], torch.full((3,), 1 / 3, dtype=torch.float64), atol=5 * (2 / 9 / 30000) ** 0.5)


def _pgc_explainer(explain):
    def base_method(input_tensor, targets):
        t = torch.tensor([tg.category for tg in targets])
        return explain(input_tensor, t).numpy()

    return base_method


def test_coherency_equals_pytorch_grad_cam(setup):
    from pytorch_grad_cam.metrics.arcc import Coherency
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, _, targets = setup
    explain = _gradcam(model)
    a = explain(x, targets)
    tgts = [ClassifierOutputTarget(int(c)) for c in targets]
    ref = Coherency()(x, a.numpy(), tgts, model, _pgc_explainer(explain))
    # float32 Pearson: three N_PIX-term sums, halved
    assert_within(coherency(explain, x, a, targets), torch.from_numpy(ref).double(), 3 * sum_tol(N_PIX) + EPS32, "coherency")


def test_arcc_equals_pytorch_grad_cam(setup, monkeypatch):
    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.metrics.arcc import ARCC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    monkeypatch.setattr(pgc_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, pgc_road.neighbors_weights))
    model, x, _, targets = setup
    explain = _gradcam(model)
    a = explain(x, targets)
    tgts = [ClassifierOutputTarget(int(c)) for c in targets]
    ref = ARCC(_pgc_explainer(explain))(x, a.numpy(), tgts, model)
    model64 = TinyCNN().double().eval()
    model64.load_state_dict(model.state_dict())
    ours = arcc(model64, explain, x.double(), a, targets, noise=0.0)
    # the harmonic mean of three values moves by at most 3x the largest change of one of them;
    # ROAD enters as 2 * combined (each of MoRF / LeRF within the logit bound)
    tol = 3 * (2 * _road_tol(model, x) + 3 * sum_tol(N_PIX) + sum_tol(N_PIX) + EPS32)
    assert_within(ours.arcc, torch.from_numpy(ref).double(), tol, "ARCC")


@pytest.fixture
def masks():
    m = torch.zeros(4, SIZE, SIZE, dtype=torch.bool)
    m[0, 2:8, 3:9] = True
    m[1, 8:, :] = True
    m[2, 5:6, 5:6] = True
    return m  # image 3: empty mask


@pytest.mark.parametrize(
    "name, ours, kwargs",
    [
        ("RelevanceRankAccuracy", relevance_rank_accuracy, {}),
        ("TopKIntersection", top_k_intersection, {"k": 20}),
        ("AttributionLocalisation", attribution_localisation, {}),
        ("AUC", localisation_auc, {}),
    ],
)
def test_localisation_equals_quantus(setup, masks, name, ours, kwargs):
    _, x, sal, _ = setup
    ref = getattr(quantus, name)(disable_warnings=True, **kwargs)(
        model=None, x_batch=x.numpy(), y_batch=np.zeros(4, dtype=int), a_batch=sal[:, None].numpy(),
        s_batch=masks[:, None].numpy().astype(float), device="cpu",
    )
    # ranks / counts are exact; sums of N_PIX float32 terms (AttributionLocalisation)
    assert_within(ours(sal, masks, **kwargs), torch.tensor(np.asarray(ref, dtype=np.float64)), 2 * sum_tol(N_PIX), name)


def test_localisation_by_hand():
    sal = torch.tensor([[[0.9, 0.1], [0.8, 0.2]]])
    mask = torch.tensor([[[True, False], [False, True]]])
    assert float(relevance_rank_accuracy(sal, mask)[0]) == 0.5  # top-2 = {0.9, 0.8}, one in the mask
    assert float(top_k_intersection(sal, mask, k=1)[0]) == 1.0
    # mask pixels {0.9, 0.2} above the others {0.8, 0.1} in 3 of the 4 pairs
    assert float(localisation_auc(sal, mask)[0]) == 0.75
    assert float(attribution_localisation(sal, mask)[0]) == pytest.approx(1.1 / 2.0, abs=sum_tol(4))
    empty = torch.zeros_like(mask)
    assert torch.isnan(relevance_rank_accuracy(sal, empty)).all() and torch.isnan(localisation_auc(sal, ~empty)).all()
    with pytest.raises(ValueError, match="k must be an int"):
        top_k_intersection(sal, mask, k=5)


def test_evaluator_extra_metrics_follow_the_table(setup, masks):
    from lightning_cam.evaluation import evaluate, summarise
    from lightning_cam.evaluation.keys import EXTRA_METRICS, METRIC_TABLE

    model, x, _, _ = setup
    names = tuple(EXTRA_METRICS)
    report = evaluate(model, "features", x, masks=masks, methods=["gradcam", "liftcam"], curves=False, extra_metrics=names)
    scalars = summarise(report)
    fields = [f for n in names for f in EXTRA_METRICS[n]]
    for method in ("gradcam", "liftcam"):
        for f in fields:
            assert f"cam/{method}/{f}" in scalars, f
    assert all(m.option is None or m.option in EXTRA_METRICS for m in METRIC_TABLE)
    # the evaluator's ROAD is the metric's on the same maps (seeded noise, one batch)
    rep = report.layers["features"].methods["gradcam"]
    direct = road(model, x, rep.saliency, report.targets, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rep.values["road"], direct.combined)
    plain = summarise(evaluate(model, "features", x, methods=["gradcam"], curves=False))
    assert not any(k.endswith(f"/{f}") for k in plain for f in fields)


def test_extra_metrics_option_errors():
    from lightning_cam.evaluation import EvaluationOptions

    with pytest.raises(ValueError, match=r"unknown extra_metrics entry 'raod' \(did you mean 'road'\?\).*e.g. extra_metrics="):
        EvaluationOptions(extra_metrics=["raod"])
    with pytest.raises(ValueError, match="duplicate"):
        EvaluationOptions(extra_metrics=["road", "road"])
    assert EvaluationOptions(extra_metrics="road").extra_metrics == ("road",)


def test_prediction_changes_give_nan_with_a_model(setup):
    model, x, _, targets = setup
    explain = _gradcam(model)
    noise = torch.randn(2, *x.shape) * 50  # far enough to move some top-1 predictions
    moved = torch.stack([model(x + n).argmax(1) != model(x).argmax(1) for n in noise]).any(0)
    assert bool(moved.any())
    ris = relative_input_stability(explain, x, targets, noise=noise, model=model)
    sens = sensitivity(explain, x, targets, noise=noise, model=model)
    assert torch.equal(torch.isnan(ris), moved) and torch.equal(torch.isnan(sens.max), moved)
    assert not bool(torch.isnan(sensitivity(explain, x, targets, noise=noise).max).any())  # no model: no check

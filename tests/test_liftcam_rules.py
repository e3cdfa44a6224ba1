"""LIFT-CAM's second-order (``rule="hessian"``) and coalition-path (``rule="coalition"``) estimators
of the channel Shapley values: exact on a head that is quadratic in the activations.

Tolerance: float64 model; ShapCAM sums 2^K weighted coalition values of size ``|y|``, the estimators
a few head passes of K*h*w-term sums: ``sum_tol(2^K + K h w, magnitude, EPS64)`` with magnitude the
largest |logit| over the coalitions, times 8 for the few float64 operations around the sums.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tolerance import EPS64, sum_tol
from lightning_cam import explain_all
from lightning_cam.methods.liftcam import LIFT_RULES, LiftCAM

K, SIDE = 4, 4


class QuadraticHead(nn.Module):
    """``y = fc(z) + (u z)^2 * v`` with ``z = mean_ij A``: quadratic in the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, K, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(K, 3)
        self.u = nn.Linear(K, 1, bias=False)
        self.v = nn.Parameter(torch.tensor([0.7, -1.3, 0.4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x).mean(dim=(2, 3))
        return self.fc(z) + self.u(z) ** 2 * self.v


@pytest.mark.parametrize("rule", ["hessian", "coalition"])
def test_second_order_rules_are_exact_on_a_quadratic_head(rule):
    model = QuadraticHead().double().eval()
    x = torch.randn(5, 3, SIDE, SIDE, dtype=torch.float64) * 3
    exps = explain_all(model, "features", x, methods=["liftcam", "shap"],
                       method_kwargs={"liftcam": {"rule": rule}, "shap": {"max_exact_channels": K}})
    ours, exact = exps["liftcam"].weights, exps["shap"].weights
    tol = 8 * sum_tol(2**K + K * SIDE * SIDE, float(exps["shap"].logits.abs().max()) + float(exact.abs().sum(1).max()), EPS64)
    torch.testing.assert_close(ours, exact, atol=tol, rtol=0)
    assert float(exps["liftcam"].delta.abs().max()) <= K * tol  # completeness follows


def test_coalition_rule_is_seeded_and_linear_heads_stay_exact():
    from models import TinyCNN

    model = TinyCNN().eval()
    x = torch.randn(3, 3, 8, 8)
    a = LiftCAM(model, "features", rule="coalition", seed=3).explain(x)
    b = LiftCAM(model, "features", rule="coalition", seed=3).explain(x)
    assert torch.equal(a.weights, b.weights)
    cam = explain_all(model, "features", x, methods=["liftcam"])["liftcam"]  # Rescale: exact on GAP + fc
    torch.testing.assert_close(a.weights, cam.weights, atol=sum_tol(8 * 64, float(cam.weights.abs().sum(1).max()) + 1), rtol=0)


def test_unknown_rule_names_the_allowed_ones():
    from models import TinyCNN

    with pytest.raises(ValueError, match=r"rule must be one of .*'coalition'.*e\.g\. LiftCAM\(model, rule='rescale'\)"):
        LiftCAM(TinyCNN(), "features", rule="shapley")
    assert LIFT_RULES == ("rescale", "revealcancel", "hessian", "coalition")

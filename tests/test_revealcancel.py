"""LIFT-CAM with DeepLIFT's RevealCancel rule (Shrikumar et al., ICML 2017, Sec. 3.5.3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_cam import LiftCAM
from lightning_cam.models import SmallVGG

F32 = 2.0**-23


class OneUnit(nn.Module):
    """``A`` (2 channels, 1x1) -> flatten -> ``y = ReLU(w . a + b)`` -> identity logits (1 unit, 2 classes)."""

    def __init__(self, w: list[float], b: float) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(2, 1)
        self.out = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([w]))
            self.fc.bias.fill_(b)
            self.out.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.out.bias.zero_()

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.flatten(self.features(x), 1))))


def _reveal_cancel_by_hand(a: torch.Tensor, w: torch.Tensor, b: float) -> torch.Tensor:
    """The paper's formulas for one ReLU unit, reference input 0 (so ``x0 = b``)."""
    terms = w * a
    pos, neg = terms.clamp(min=0).sum(), terms.clamp(max=0).sum()
    f = torch.relu
    x0 = torch.tensor(b)
    dy_pos = 0.5 * (f(x0 + pos) - f(x0)) + 0.5 * (f(x0 + pos + neg) - f(x0 + neg))
    dy_neg = 0.5 * (f(x0 + neg) - f(x0)) + 0.5 * (f(x0 + pos + neg) - f(x0 + pos))
    m_pos = dy_pos / pos if pos != 0 else 0.0
    m_neg = dy_neg / neg if neg != 0 else 0.0
    return torch.where(terms > 0, m_pos * terms, m_neg * terms)


@pytest.mark.parametrize("a,w,b", [([1.0, 2.0], [1.0, -1.0], 0.0), ([3.0, 1.0], [1.0, -2.0], -0.5), ([0.5, 2.0], [2.0, 1.0], -1.0)])
def test_one_unit_matches_the_papers_formulas(a, w, b):
    model = OneUnit(w, b).eval()
    x = torch.tensor(a).view(1, 2, 1, 1)
    explanation = LiftCAM(model, "features", rule="revealcancel").explain(x, targets=0)
    expected = _reveal_cancel_by_hand(torch.tensor(a), torch.tensor(w), b)
    assert torch.allclose(explanation.weights[0], expected, atol=8 * F32 * float(expected.abs().max() + 1))
    assert abs(float(explanation.delta[0])) <= 8 * F32 * (1 + abs(float(expected.sum())))


def test_rescale_and_revealcancel_differ_where_they_should():
    """y = ReLU(a1 - a2) with a1 = 1, a2 = 2: Rescale gives both 0 (the unit is off); RevealCancel
    reveals the cancellation (the paper's motivating case): +1/2 and -1/2."""
    model = OneUnit([1.0, -1.0], 0.0).eval()
    x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    rescale = LiftCAM(model, "features").explain(x, targets=0).weights[0]
    reveal = LiftCAM(model, "features", rule="revealcancel").explain(x, targets=0).weights[0]
    assert torch.equal(rescale, torch.zeros(2))
    assert torch.allclose(reveal, torch.tensor([0.5, -0.5]))


def test_completeness_on_a_vgg_head_with_batch_norm():
    torch.manual_seed(0)
    model = SmallVGG(num_classes=4, widths=(6, 8, 8), hidden=16).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)  # negative scales swap the positive / negative parts
    x = torch.randn(3, 3, 32, 32)
    for layer in ("features", "features.1.0"):  # after the ReLU; after a conv (BN and ReLU in the head)
        explanation = LiftCAM(model, layer, rule="revealcancel").explain(x)
        scale = float(explanation.logits.abs().max()) + 1
        assert float(explanation.delta.abs().max()) <= 1e-5 * scale


def test_rule_is_checked():
    with pytest.raises(ValueError, match="rescale"):
        LiftCAM(OneUnit([1.0, 1.0], 0.0), "features", rule="reveal")

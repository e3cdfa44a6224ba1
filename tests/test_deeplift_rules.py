"""DeepLIFT is default-deny: every op after the target layer is linear, has a rule, or is named in a warning;
LIFT-CAM checks its completeness residual against a float tolerance (issue 19)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lightning_cam as lc
from lightning_cam.methods import deeplift_ops
from lightning_cam.methods.liftcam import completeness_tolerance

from tolerance import EPS32, assert_within, forward_tol, sum_tol

CHANNELS, SIZE = 4, 6


class Reduce(nn.Module):
    """A callable as a module: a leaf of the traced head, so its calls run under DeepLIFT as written."""

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.reduce = reduce

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.reduce(a)


class ChannelwiseHead(nn.Module):
    """conv -> ReLU (``features``) -> ``reduce`` of each channel to one number -> Linear.

    Each channel has its own path to the logits, so DeepLIFT's contribution of channel k is
    ``w_ck (reduce(A_k) - reduce(0))`` whatever exact rules ``reduce`` uses."""

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU())
        self.reduce = reduce if isinstance(reduce, nn.Module) else Reduce(reduce)
        self.fc = nn.Linear(CHANNELS, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.reduce(self.features(x)))


REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "amax": lambda a: a.amax(dim=(2, 3)),
    "max(dim).values twice": lambda a: a.max(dim=3).values.max(dim=2)[0],
    "torch.min": lambda a: torch.min(a.flatten(2), dim=2).values,
    "adaptive_max_pool2d": lambda a: F.adaptive_max_pool2d(a, 1).flatten(1),
    "norm p=2": lambda a: torch.norm(a, dim=(2, 3)),
    "norm p=1": lambda a: a.flatten(2).norm(p=1, dim=2),
    "vector_norm p=inf": lambda a: torch.linalg.vector_norm(a, ord=math.inf, dim=(2, 3)),
    "vector_norm p=3": lambda a: torch.linalg.vector_norm(a - 0.5, ord=3, dim=(2, 3)),
    "pow": lambda a: a.pow(3).mean(dim=(2, 3)) + (a**0.5).mean(dim=(2, 3)),
    "rpow, rtruediv": lambda a: (2**a).mean(dim=(2, 3)) + (1 / (1 + a)).mean(dim=(2, 3)),
    "maximum with a constant": lambda a: torch.maximum(a, torch.full_like(a, 0.3)).mean(dim=(2, 3)),
    "normalize over space": lambda a: F.normalize(a.flatten(2) + 0.1, dim=2)[:, :, 0],
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_exact_rules_give_each_channel_its_own_score_difference(name: str) -> None:
    reduce = REDUCTIONS[name]
    model = ChannelwiseHead(reduce).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every op has a rule or is linear
        exp = lc.LiftCAM(model, "features").explain(x)
    with torch.no_grad():
        a = model.features(x)
        per_channel = reduce(a) - reduce(torch.zeros_like(a))
    expected = model.fc.weight[exp.targets] * per_channel
    # per channel: one reduction over the h*w map, one product with the weight
    assert_within(exp.weights, expected, sum_tol(SIZE * SIZE + 1), what=f"{name}: phi_k vs w_ck (r(A_k) - r(0))")
    scale = float(exp.logits.abs().max().clamp_min(1))
    assert exp.delta.abs().max() <= forward_tol(model, scale, spatial=SIZE * SIZE)


class CosineHead(nn.Module):
    """ResNet-18 embedding compared with learned concept vectors by cosine similarity."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torchvision.models.resnet18(weights=None, num_classes=32)
        self.concepts = nn.Parameter(torch.randn(10, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(self.net(x)[:, None, :], self.concepts[None], dim=-1)


def test_cosine_similarity_head_is_complete() -> None:
    """Before the cosine rule this head passed as linear: residual 0.2, coefficients summing to 0.001."""
    model = CosineHead().eval()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exp = lc.LiftCAM(model, "net.layer4").explain(x)
    # the head: average pool over 2x2, fc (512 terms), the norms (32 terms) and the dot product (32 terms)
    scale = float(exp.logits.abs().max().clamp_min(1))
    bound = sum_tol(4 + 512 + 2 * 32, scale)
    assert exp.delta.abs().max() <= bound
    difference = exp.weights.sum(1) - exp.delta
    assert difference.abs().min() > 1e3 * bound  # the score differences are far above the residual


class Sorted(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.flatten(2).sort(dim=2).values[..., -3:].mean(-1)


class Doubling(torch.autograd.Function):
    """2x forward, but a custom backward DeepLIFT cannot see into."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return a * 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * 2


@pytest.mark.parametrize("reduce,named", [
    (Sorted(), "Tensor.sort"),
    (lambda a: Doubling.apply(a).mean(dim=(2, 3)), "Doubling.apply (a custom autograd.Function)"),
    (lambda a: torch.sinh(a).mean(dim=(2, 3)), "sinh"),
    (lambda a: (a * (a > 0.5)).mean(dim=(2, 3)), "Tensor.gt"),
])
def test_op_without_a_rule_is_named_in_a_warning(reduce, named: str) -> None:
    model = ChannelwiseHead(reduce).eval()
    explainer = lc.LiftCAM(model, "features")
    x = torch.randn(2, 3, SIZE, SIZE)
    with pytest.warns(UserWarning, match=f"no DeepLIFT rule for .*{named.split(' ')[0]}.* after layer 'features'"):
        explainer.explain(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per explainer and layer
        explainer.explain(x)


def test_completeness_residual_above_tolerance_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong allow-list entry (sinh taken as linear) leaves no op unhandled: the residual check catches it."""
    monkeypatch.setattr(deeplift_ops, "LINEAR", deeplift_ops.LINEAR | {torch.sinh})
    model = ChannelwiseHead(lambda a: torch.sinh(3 * a).mean(dim=(2, 3))).eval()
    with pytest.warns(UserWarning, match=r"after layer 'features' had a rule or was linear, yet completeness fails.*"
                                         r"residual .* = [0-9.e+-]+ for a score difference"):
        exp = lc.LiftCAM(model, "features").explain(torch.randn(2, 3, SIZE, SIZE))
    assert exp.delta.abs().max() > 0.01  # and the residual stays on the Explanation


def test_completeness_tolerance_formula() -> None:
    contributions = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.5]]]])  # (1, 2, 1, 2): n = 4 terms
    tol = completeness_tolerance(contributions, torch.tensor([3.0]), torch.tensor([-1.0]), torch.float32)
    assert tol.tolist() == [4 * EPS32 * (4.0 + 3.0 + 1.0)]
    assert completeness_tolerance(contributions, torch.tensor([3.0]), torch.tensor([-1.0]), torch.float16) > tol


def test_tables_name_ops_readably() -> None:
    assert deeplift_ops.op_name(torch.Tensor.sort) == "Tensor.sort"
    assert deeplift_ops.op_name(torch.Tensor.data.__get__) == "Tensor.data"
    assert deeplift_ops.op_name(F.cosine_similarity) == "cosine_similarity"
    assert not deeplift_ops.find(deeplift_ops.LINEAR, torch.erf)


class Gated(nn.Module):
    """Products of two activation-dependent tensors: a gate, a batched matmul and an einsum."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        flat = a.flatten(2)  # (B, K, hw)
        gram = torch.einsum("bkn,bjn->bkj", flat, flat) / flat.shape[-1]
        mixed = torch.bmm(gram, flat) * torch.sigmoid(flat.mean(-1, keepdim=True))
        return mixed.mean(-1)


def test_products_of_activations_are_complete() -> None:
    model = ChannelwiseHead(Gated()).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exp = lc.LiftCAM(model, "features").explain(x)
    scale = float(exp.logits.abs().max().clamp_min(1))
    # the head's reductions: the gram matrix and the matmul (h*w and K terms), the means, the fc
    assert exp.delta.abs().max() <= sum_tol(3 * SIZE * SIZE + 2 * CHANNELS, scale)

"""LIFT-CAM (Jung & Oh, ICCV 2021, arXiv 2102.05228)."""

from __future__ import annotations

import copy
import warnings
import weakref

import torch
from torch import nn

from lightning_cam.outputs import OutputTransform, logits_of
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass, weighted_map
from lightning_cam.methods.layout import Reshape
from lightning_cam.methods.deeplift import EPS, DeepLiftMode
from lightning_cam.methods.revealcancel import RULES

__all__ = ["LIFT_RULES", "LiftCAM", "coalition_path_coefficients", "completeness_tolerance", "deeplift_coefficients",
           "exact_score_difference", "second_order_coefficients"]

#: LIFT-CAM's estimators of the channel Shapley values: the DeepLIFT rules, the second-order one
#: and the coalition paths (the closest on bench/fidelity.py's heads, docs/more-methods.md).
LIFT_RULES = (*RULES, "hessian", "coalition")


_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class LiftCAM(BaseCAM):
    """LIFT-CAM: CAM coefficients = SHAP values of the feature maps, estimated with DeepLIFT.

    ``phi_k = sum_ij m_kij A_kij`` where ``m`` are DeepLIFT (Rescale) multipliers
    of the target ``t`` (default: the class logit ``y_c``; any :mod:`lightning_cam.targets`
    target, its nonlinearities with their DeepLIFT rules) w.r.t. ``A`` against the reference
    ``A' = 0``; the map is ``ReLU(sum_k phi_k A_k)``. Completeness holds:
    ``sum_k phi_k = t(A) - t(0)``; ``Explanation.delta`` is its residual, checked on
    every batch against :func:`completeness_tolerance` (a warning above it, and for any
    operation after ``L`` without a DeepLIFT rule; once per explainer and layer).
    When the head after ``L`` is linear (global average pool + fc) this is
    exact SHAP: ``phi_k = w_ck mean_ij A_kij``.

    Computed like the authors' code (captum ``DeepLift`` on the layers after
    ``L`` with a zero baseline) but for the whole batch at once, on any
    device and any network that ``torch.fx`` can split (hooks otherwise).

    ``rule="revealcancel"`` uses DeepLIFT's RevealCancel rule at nonlinearities
    that follow a linear layer (:mod:`lightning_cam.methods.revealcancel`);
    completeness still holds. Rescale stays the default: on the fidelity
    benchmark (``bench/fidelity.py``, docs/more-methods.md) it is the closer of
    the two to the exact Shapley values.

    ``rule="hessian"``: the second-order estimator :func:`second_order_coefficients`,
    ``phi_k = sum_ij (g - H·A / 2)_kij A_kij`` (ShapleyCAM's correction element-wise; exact for a
    head that is quadratic in ``A``), from one Hessian-vector product; ``delta`` is its residual
    against ``t(A) - t(0)``, which it does not force to 0.

    ``rule="coalition"``: :func:`coalition_path_coefficients`, integrated gradients along the two
    paths ``0 -> A_S -> A`` and ``0 -> A_(not S) -> A`` through a random coalition ``S`` of channels
    and its complement (seeded: ``seed``), two midpoints per segment: 8 head passes and one backward,
    batched. The closest of the estimators on every head of ``bench/fidelity.py``.
    """

    name = "liftcam"

    def __init__(
        self, model: nn.Module, target_layer=None, eps: float = EPS, rule: str = "rescale", *,
        reshape: Reshape | None = None, output_transform: OutputTransform | None = None, seed: int = 0,
    ) -> None:
        super().__init__(model, target_layer, reshape=reshape, output_transform=output_transform)
        if rule not in LIFT_RULES:
            raise ValueError(f"LiftCAM rule must be one of {LIFT_RULES}, got {rule!r}; e.g. LiftCAM(model, rule='rescale').")
        self.eps, self.rule, self.seed = eps, rule, seed
        # what was already said about this model, per layer: once per model, not per explainer (the
        # callback builds explainers per batch and evaluation)
        self._warned: set = _WARNED.setdefault(self.model, set())

    def compute(self, layer_pass: LayerPass) -> Explanation:
        if self.rule in ("hessian", "coalition"):
            weights, delta = (second_order_coefficients(layer_pass) if self.rule == "hessian"
                              else coalition_path_coefficients(layer_pass, seed=self.seed))
            return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights, delta)
        weights, delta = deeplift_coefficients(layer_pass, self.eps, layer_pass.split.layer_name, self.rule, self._warned)
        return self._explanation(layer_pass, weighted_map(weights, layer_pass.activation), weights, delta)


def deeplift_coefficients(
    layer_pass: LayerPass, eps: float = EPS, layer_name: str = "", rule: str = "rescale", warned: set | None = None,
    actual: torch.Tensor | None = None, reference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi, delta)``: per-channel DeepLIFT contributions (B,K) and the completeness residual (B,).

    ``actual`` / ``reference``: the two activations compared (default: the pass's ``A`` and 0), so
    that ``sum_k phi_k = t(actual) - t(reference)`` for the pass's target ``t``, measured with the
    target's own value on the ``[actual; reference]`` rows (``index = [0..B-1; 0..B-1]``; an
    ``output_transform`` sees each half on its own, :meth:`SplitModel.scores`). Warns (once per key in ``warned``, e.g. an
    explainer's own set) when an operation after ``layer_name`` had no rule, or when ``|delta|``
    exceeds :func:`completeness_tolerance`.
    """
    activation = layer_pass.activation if actual is None else actual
    reference = torch.zeros_like(activation) if reference is None else reference
    batch = activation.shape[0]
    leaf = activation.clone().requires_grad_(True)
    stacked = torch.cat([leaf, reference])
    index = torch.cat([layer_pass.index, layer_pass.index])
    mode = DeepLiftMode(2 * batch, eps, rule)
    with mode:  # the target too: its nonlinearities (softmax, log-softmax, ...) get their rules
        selected = layer_pass.target(layer_pass.head(mode.track(stacked), index), index)
    # Like captum: the sum of the actual and the reference scores is differentiated.
    multipliers = torch.autograd.grad(selected.sum(), leaf)[0]
    contributions = (multipliers * (activation - reference)).detach()
    phi = contributions.sum(dim=(2, 3))
    scores = selected.detach()
    difference = scores[:batch] - scores[batch:]
    delta = phi.sum(dim=1) - difference
    # the model's own scores are finite, the DeepLIFT pass's are not: its products (e.g. attention
    # scores, which a fused kernel keeps in range) overflowed the head's dtype
    overflowed = ~(torch.isfinite(phi).all(dim=1) & torch.isfinite(difference)) & torch.isfinite(layer_pass.logits.reshape(batch, -1)).all(dim=1)
    if bool(overflowed.any()):
        warnings.warn(
            f"LIFT-CAM: the DeepLIFT pass after layer {layer_name!r} is not finite for "
            f"{int(overflowed.sum())} of {batch} images whose scores are finite: the head runs in "
            f"{layer_pass.split.dtype}, whose range its products exceeded. Explain a float32 copy of the "
            "model (e.g. copy.deepcopy(model).float()) for those images.",
            RuntimeWarning, stacklevel=4,
        )
    tolerance = completeness_tolerance(contributions, scores[:batch], scores[batch:], layer_pass.split.dtype)
    _warn_incomplete(delta, difference, tolerance, sorted(mode.unhandled), layer_name, set() if warned is None else warned)
    return phi, delta


def second_order_coefficients(layer_pass: LayerPass) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi, delta)``: the second-order Shapley estimate of the channels (B, K) and its completeness gap (B,).

    Expanding ``y`` about ``A`` to second order, ``y(A_S) = y(A) - g·(A - A_S) + (A - A_S)^T H (A - A_S) / 2``;
    the Shapley values of that quadratic game (absent channel = 0) give each channel its linear term,
    its own curvature term and half of every pairwise one:
    ``phi_k = sum_ij (g - H·A / 2)_kij A_kij`` (the element-wise form of ShapleyCAM's weights, Cai et al.
    2025, arXiv 2501.06261; Shapley 1953). Exact for a quadratic head; equal to gradient x activation
    for a piecewise-linear one (H = 0). ``delta = sum_k phi_k - (t(A) - t(0))``.
    """
    from lightning_cam.methods.targeted import gradient_and_hvp

    g, hvp = gradient_and_hvp(layer_pass)
    phi = ((g - 0.5 * hvp) * layer_pass.activation).sum(dim=(2, 3))
    return phi, phi.sum(dim=1) - _score_difference(layer_pass)


def _score_difference(layer_pass: LayerPass) -> torch.Tensor:
    """``t(A) - t(0)`` from one more head pass (on 0)."""
    reference = layer_pass.target_scores(torch.zeros_like(layer_pass.activation), layer_pass.index)
    with torch.no_grad():
        return layer_pass.target(layer_pass.logits, layer_pass.index) - reference


def coalition_path_coefficients(layer_pass: LayerPass, steps: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi, delta)``: channel Shapley estimate along two coalition paths, and its completeness gap.

    The Shapley value averages a channel's marginal contribution over coalitions; a path method
    (integrated gradients, Sundararajan et al. 2017; DeepLIFT) measures it along ``0 -> A`` only,
    with every other channel switched on at the same rate (the Aumann-Shapley value, which differs
    from Shapley's beyond second order). Going through a coalition instead, ``0 -> A_S -> A`` with
    ``S`` a random half of the channels (``A_S``: the others set to 0), a channel of ``S`` is measured
    without those outside ``S`` and one outside ``S`` with all of ``S`` present; the antithetic
    path through the complement swaps the roles (DeepSHAP's multi-reference idea, Lundberg & Lee
    2017, with gradients instead of DeepLIFT's rules). Per path, each segment is integrated with
    ``steps`` midpoints: ``phi_k = 1/2 sum_paths sum_segments sum_ij (end - start)_kij
    mean_t dt/dA_kij(start + t (end - start))``; all ``4 * steps`` points go through the head in
    one batch. Exact for a linear head; ``delta = sum_k phi_k - (t(A) - t(0))`` is the
    quadrature's residual. ``seed`` draws ``S`` (each channel in with probability 1/2, per image).
    """
    a = layer_pass.activation
    b, k = a.shape[:2]
    generator = torch.Generator(device=a.device).manual_seed(seed)
    inside = (torch.rand((b, k) + (1,) * (a.dim() - 2), generator=generator, device=a.device) < 0.5).to(a.dtype)
    zeros = torch.zeros_like(a)
    parts = [a * inside, a * (1 - inside)]
    start = torch.stack([zeros, parts[0], zeros, parts[1]])  # (4, B, K, ...): two paths of two segments
    end = torch.stack([parts[0], a, parts[1], a])
    t = (torch.arange(steps, device=a.device, dtype=a.dtype) + 0.5) / steps
    points = start[None] + (end - start)[None] * t.view(-1, *([1] * start.dim()))
    n = points.shape[0] * points.shape[1]
    leaf = points.reshape(n * b, *a.shape[1:]).requires_grad_(True)
    with torch.enable_grad():
        index = layer_pass.index.repeat(n)
        score = layer_pass.target(layer_pass.head(leaf, index), index).sum()
        grads = torch.autograd.grad(score, leaf)[0].reshape(points.shape).mean(dim=0)
    phi = (grads * (end - start)).sum(dim=0).flatten(2).sum(dim=2).detach() / 2
    return phi, phi.sum(dim=1) - _score_difference(layer_pass)


def completeness_tolerance(
    contributions: torch.Tensor, actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype,
) -> torch.Tensor:
    """(B,) float floor of ``|sum_k phi_k - (y(A) - y(A'))|`` for exact rules:
    ``n * eps * (sum_kij |m_kij A_kij| + |y(A)| + |y(A')|)``.

    ``n`` is the number of terms ``m_kij A_kij`` per image (K*h*w) and ``eps`` the machine
    epsilon of the head's ``dtype`` (float32: 2**-23): the bound on reordering a sum of ``n``
    terms (Higham, §3-4) at the magnitude of the contributions and of the two scores, which
    the head rounds on their own.
    """
    flat = contributions.flatten(1)
    magnitude = flat.abs().sum(1) + actual.abs() + reference.abs()
    return flat.shape[1] * torch.finfo(dtype).eps * magnitude


def _warn_incomplete(
    delta: torch.Tensor, difference: torch.Tensor, tolerance: torch.Tensor, unhandled: list[str], layer_name: str, warned: set,
) -> None:
    """One warning per layer (and set of unhandled ops) and ``warned`` set: ops without a rule, or completeness broken."""
    over = torch.isfinite(delta) & (delta.abs() > tolerance)
    key = (layer_name, bool(over.any()), tuple(unhandled))
    if not (unhandled or bool(over.any())) or key in warned:
        return
    warned.add(key)
    worst = int(torch.where(over, delta.abs() / tolerance, delta.abs()).argmax())
    figures = (
        f"completeness residual |sum_k phi_k - (y(A) - y(A'))| = {delta[worst].abs().item():.3g} for a score difference "
        f"y(A) - y(A') = {difference[worst].item():.3g} (float tolerance {tolerance[worst].item():.3g}; image {worst})"
    )
    ops = f"no DeepLIFT rule for {unhandled} after layer {layer_name!r}; those operations were propagated with " \
        "plain gradients, so the coefficients are approximate" if unhandled else \
        f"every operation after layer {layer_name!r} had a rule or was linear, yet completeness fails: a rule " \
        "does not fit this head (e.g. data-dependent control flow); please report it"
    warnings.warn(f"LIFT-CAM: {ops} ({figures}).", stacklevel=5)


def exact_score_difference(layer_pass: LayerPass) -> torch.Tensor:
    """float64 ``t(A) - t(A')`` on the pass's own activations: what ``sum_k phi_k`` estimates.

    A float32 head cannot resolve a score difference much below ``eps * |y|``
    (``y(A)`` and ``y(A')`` are each rounded), so the completeness residual it
    reports is bounded by that, not by the coefficients. This evaluates a
    float64 copy of the head (the layers after ``L`` only) on the same float32
    activations, a reference for tests and benchmarks. Needs a traced split.
    """
    split = layer_pass.split
    if not split.traced:
        raise ValueError(f"exact_score_difference needs a torch.fx split; {type(layer_pass.model).__name__} was split with hooks.")
    head = copy.deepcopy(split.head).double()
    crossings = tuple(
        c.double() if isinstance(c, torch.Tensor) and c.is_floating_point() else c
        for c in split.select(layer_pass.crossings, layer_pass.index)
    )
    scores = []
    with torch.no_grad():
        for maps in (layer_pass.activation, torch.zeros_like(layer_pass.activation)):
            raw = layer_pass.layout.to_raw(maps, layer_pass.index).double()
            out = logits_of(head(raw, *crossings), layer_pass.output_transform).double()
            scores.append(layer_pass.target(out, layer_pass.index))
    return scores[0] - scores[1]

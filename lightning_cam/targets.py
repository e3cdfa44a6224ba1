"""What is explained: a *target* maps the model's scores to one scalar per image.

Every method (LIFT-CAM and the Shapley reference included) differentiates, or
perturbs, ``target(scores, index)``; every metric scores the same target along
its curve. Accepted wherever ``targets=`` is:

* ``None``: the default for the output's shape (top-1 class of a ``(B, C)``
  classifier, the predicted side of a 1-logit binary model, the most frequent
  predicted non-background class of a ``(B, C, H, W)`` segmentation model);
* an int, a list of B ints or an integer tensor ``()``/``(B,)``: that class
  (a class logit, a binary side, a segmentation class over its predicted region);
* a built-in below (batched, on the model's device);
* a list of B per-image callables in pytorch-grad-cam's convention: each is
  called with one image's output (``(C,)``, ``(C, H, W)``, ``(1,)``) and its
  result is summed, so ``ClassifierOutputTarget``, ``BinaryClassifierOutputTarget``,
  ``SemanticSegmentationTarget`` ... work unchanged and give the same maps.
  pytorch-grad-cam's own target classes are recognised and run batched.

``index`` (N,) says which of the B images each of the N rows of ``scores``
belongs to (the ``[actual; reference]`` rows of LIFT-CAM, the perturbed copies
of a metric's curve); ``None`` means the rows are the B images in order.

A built-in is *bound* to the batch's clean scores once (:func:`resolve_target`):
defaults such as the top-1 class or the predicted region are fixed there, so the
same scalar is followed under every perturbation.

| kind | built-in | value explained | ``probability`` (metrics) |
|---|---|---|---|
| class | :class:`ClassLogit` | ``y_c`` | ``softmax(y)_c`` |
| class | :class:`ClassProbability` | ``softmax(y)_c`` | ``softmax(y)_c`` |
| class | :class:`ClassReST` | ``y_c - CE(y, c)`` (pytorch-grad-cam's ReST) | ``softmax(y)_c`` |
| class | :class:`ClassMinusSimilar` | FinerCAM's weighted ``y_c - alpha y_s`` | ``softmax(y)_c`` |
| binary | :class:`BinaryLogit` | ``+y`` (positive) or ``-y`` (negative) | ``sigmoid(+-y)`` |
| multilabel | :class:`LabelLogit` | ``y_c`` | ``sigmoid(y_c)`` |
| segmentation | :class:`SegmentationClass` | ``sum_{p in M} y_c(p)`` | mean of ``softmax(y)_c`` over ``M`` |
| regression | :class:`RegressionOutput` | ``y_j`` | none |
| callable | :class:`PerImage` | ``sum(f_i(y_i))`` | none |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "BinaryLogit",
    "ClassLogit",
    "ClassMinusSimilar",
    "ClassProbability",
    "ClassReST",
    "LabelLogit",
    "PerImage",
    "RegressionOutput",
    "SegmentationClass",
    "Target",
    "TargetsLike",
    "comparison_classes",
    "positive_labels",
    "resolve_target",
    "target_classes",
]

TargetsLike = Any  # None | int | Sequence[int] | Tensor | Target | Sequence[Callable]


def _rows(index: Tensor | None, n: int, device: torch.device) -> Tensor:
    return torch.arange(n, device=device) if index is None else index.to(device)


def _class_tensor(classes: Any, batch: int, num_classes: int | None, device: torch.device, name: str) -> Tensor:
    allowed = "an int, a list of B ints or an integer tensor of shape () or (B,)"
    if isinstance(classes, bool):
        raise ValueError(f"{name} must be {allowed}; got a bool")
    if isinstance(classes, int):
        t = torch.full((batch,), classes, dtype=torch.long)
    elif isinstance(classes, Tensor):
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise ValueError(f"{name} must be {allowed}; got a tensor of dtype {classes.dtype}")
        if classes.ndim > 1:
            raise ValueError(f"{name} must be {allowed}; got a tensor of shape {tuple(classes.shape)}")
        t = classes.detach().reshape(-1).long()
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch)
    elif isinstance(classes, Sequence) and not isinstance(classes, (str, bytes)):
        items = list(classes)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise ValueError(f"{name} must be {allowed}; got a sequence containing non-int values {items[:5]}")
        t = torch.tensor(items, dtype=torch.long)
    else:
        raise ValueError(f"{name} must be {allowed}; got {type(classes).__name__}")
    if t.shape[0] != batch:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {batch} images; give one class per image or one for all, e.g. {name}=3")
    if num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}] (the model has {num_classes} outputs); got {t.tolist()[:8]}")
    return t.to(device)


class Target:
    """Base class: ``target(scores, index) -> (N,)``, differentiable in ``scores``.

    ``kind`` names the family (see the module table); ``classes`` (B,) is the class
    each image is explained for, or ``None`` when the kind has none (regression,
    callables). Subclasses implement :meth:`value` and, where the kind has a bounded
    score, :meth:`probability`; :meth:`bind` fixes defaults on the clean scores.
    """

    kind: ClassVar[str] = "class"
    #: whether :meth:`probability` exists (Average Drop / Increase in Confidence need it)
    has_probability: ClassVar[bool] = True

    def __call__(self, scores: Tensor, index: Tensor | None = None) -> Tensor:
        return self.value(scores, _rows(index, scores.shape[0], scores.device))

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        raise NotImplementedError

    def probability(self, scores: Tensor, index: Tensor | None = None) -> Tensor:
        """The bounded score the faithfulness metrics follow (softmax probability of a class ...)."""
        raise ValueError(f"a {type(self).__name__} target has no probability; score it with score='logit'")

    def bind(self, scores: Tensor) -> Target:
        """This target with its defaults fixed on the clean ``scores`` of the B images."""
        return self

    @property
    def classes(self) -> Tensor | None:
        return getattr(self, "_classes", None)

    def select(self, images: Tensor) -> Target:
        """The bound target of the images ``images`` (indices into its B images), in that order."""
        raise NotImplementedError(f"{type(self).__name__} cannot be split by image")

    def __repr__(self) -> str:
        shown = self.classes.tolist()[:6] if self.classes is not None else ""
        return f"{type(self).__name__}({shown})"


class _ClassTarget(Target):
    """A class index per image, on (N, C) scores."""

    def __init__(self, classes: Any = None) -> None:
        self._given = classes
        self._classes: Tensor | None = classes if isinstance(classes, Tensor) and classes.dtype == torch.long and classes.ndim == 1 else None

    def _check_scores(self, scores: Tensor) -> None:
        if scores.ndim != 2:
            raise ValueError(
                f"{type(self).__name__} explains a column of (B, num_classes) scores; the model's scores have shape "
                f"{tuple(scores.shape)}. For a segmentation output use SegmentationClass (e.g. targets=SegmentationClass(1)), "
                "for one output BinaryLogit or RegressionOutput (e.g. targets=BinaryLogit(1))."
            )

    def _default(self, scores: Tensor) -> Tensor:
        return scores.argmax(dim=1)

    def bind(self, scores: Tensor) -> Target:
        self._check_scores(scores)
        classes = self._default(scores) if self._given is None else _class_tensor(
            self._given, scores.shape[0], scores.shape[1], scores.device, "targets"
        )
        bound = type(self).__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound._given, bound._classes = classes, classes
        return bound

    def _bound(self) -> Tensor:
        if self._classes is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a batch yet: call resolve_target(target, scores)")
        return self._classes

    def select(self, images: Tensor) -> Target:
        chosen = type(self).__new__(type(self))
        chosen.__dict__.update(self.__dict__)
        chosen._given = chosen._classes = self._bound()[images.to(self._bound().device)]
        return chosen

    def column(self, scores: Tensor, index: Tensor) -> Tensor:
        return scores.gather(1, self._bound().to(scores.device)[index][:, None])[:, 0]

    def probability(self, scores: Tensor, index: Tensor | None = None) -> Tensor:
        self._check_scores(scores)
        rows = _rows(index, scores.shape[0], scores.device)
        return scores.softmax(dim=1).gather(1, self._bound().to(scores.device)[rows][:, None])[:, 0]


class ClassLogit(_ClassTarget):
    """``y_c``: the class logit (the CAM papers' target). ``classes=None``: the top-1 class."""

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        self._check_scores(scores)
        return self.column(scores, index)


class ClassProbability(_ClassTarget):
    """``softmax(y)_c`` (pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget``)."""

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        return self.probability(scores, index)


class ClassReST(_ClassTarget):
    """``y_c - CE(y, c) = y_c + log softmax(y)_c`` (pytorch-grad-cam's ``ClassifierOutputReST``,
    arXiv:2501.06261)."""

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        self._check_scores(scores)
        return self.column(scores, index) + self.column(scores.log_softmax(dim=1), index)


def comparison_classes(scores: Tensor, classes: Tensor, ranks: Sequence[int]) -> Tensor:
    """(B, J) classes at ``ranks`` when sorted by ``|y_j - y_c|`` (rank 0 is ``c`` itself).

    pytorch-grad-cam's ``FinerCAM`` ranks by the same distance; ranks past ``C - 1`` are dropped.
    For ``c`` the top-1 class these are the next most likely classes.
    """
    distance = (scores - scores.gather(1, classes[:, None])).abs()
    distance = distance.scatter(1, classes[:, None], -1.0)  # c first, even if another class ties with it
    order = distance.argsort(dim=1, stable=True)
    kept = [r for r in ranks if 0 < r < scores.shape[1]]
    if not kept:
        raise ValueError(f"FinerCAM needs a comparison rank in [1, {scores.shape[1] - 1}], got {list(ranks)}; e.g. ranks=(1, 2, 3).")
    return order[:, kept]


class ClassMinusSimilar(_ClassTarget):
    """FinerCAM's target (Zhang et al., CVPR 2025; pytorch-grad-cam's ``FinerWeightedTarget``):
    ``sum_s p_s (y_c - alpha y_s) / sum_s p_s`` over the comparison classes ``s``, ``p = softmax(y)``.

    Default comparison classes: those at ``ranks`` (default ``1..k``) when sorted by ``|y_s - y_c|``,
    as pytorch-grad-cam's ``FinerCAM`` chooses them (for the top-1 ``c``: the next most likely
    classes). ``p_s / sum_s p_s`` is computed as a softmax over the compared logits (the same value
    without underflow; pytorch-grad-cam adds ``1e-9`` to the denominator).
    """

    def __init__(
        self, classes: Any = None, similar: Tensor | Sequence[Sequence[int]] | None = None, alpha: float = 1.0, k: int = 3,
        ranks: Sequence[int] | None = None,
    ) -> None:
        super().__init__(classes)
        self.similar_given, self.alpha, self.k = similar, float(alpha), int(k)
        self.ranks = tuple(range(1, self.k + 1)) if ranks is None else tuple(int(r) for r in ranks)
        self.similar: Tensor | None = None

    def bind(self, scores: Tensor) -> Target:
        bound = super().bind(scores)
        assert isinstance(bound, ClassMinusSimilar)
        if self.similar_given is not None:
            similar = torch.as_tensor(self.similar_given, dtype=torch.long, device=scores.device)
            similar = similar.expand(scores.shape[0], -1) if similar.ndim == 1 else similar
        else:
            similar = comparison_classes(scores.detach(), bound._bound(), self.ranks)
        bound.similar = bound.similar_given = similar  # re-binding keeps the comparison classes
        return bound

    def select(self, images: Tensor) -> Target:
        chosen = super().select(images)
        assert isinstance(chosen, ClassMinusSimilar) and self.similar is not None
        chosen.similar = chosen.similar_given = self.similar[images.to(self.similar.device)]
        return chosen

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        self._check_scores(scores)
        if self.similar is None:
            raise RuntimeError("ClassMinusSimilar is not bound to a batch yet: call resolve_target(target, scores)")
        others = scores.gather(1, self.similar.to(scores.device)[index])
        share = torch.softmax(others, dim=1)
        return (share * (self.column(scores, index)[:, None] - self.alpha * others)).sum(dim=1)


class LabelLogit(_ClassTarget):
    """Multi-label: the logit ``y_c`` of label ``c``, probability ``sigmoid(y_c)``.

    ``classes=None``: each image's highest-scoring label. To explain every positive label,
    expand the batch with :func:`positive_labels`.
    """

    kind: ClassVar[str] = "multilabel"

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        self._check_scores(scores)
        return self.column(scores, index)

    def probability(self, scores: Tensor, index: Tensor | None = None) -> Tensor:
        self._check_scores(scores)
        return self.column(scores, _rows(index, scores.shape[0], scores.device)).sigmoid()


def positive_labels(labels: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """``(image, label)`` pairs of every positive label: ``labels`` (B, C) multi-hot (or
    probabilities, positive above ``threshold``) -> ``(images (P,), classes (P,))``.

    Example: ``rows, classes = positive_labels(y); explain(x[rows], LabelLogit(classes))``.
    """
    if not isinstance(labels, Tensor) or labels.ndim != 2:
        raise ValueError(f"labels must be a (B, num_labels) multi-hot tensor, got {getattr(labels, 'shape', type(labels).__name__)}")
    positive = labels > threshold if labels.is_floating_point() else labels > 0
    images, classes = positive.nonzero(as_tuple=True)
    return images, classes


def _binary_logit(scores: Tensor) -> Tensor:
    if scores.ndim == 1:
        return scores
    if scores.ndim == 2 and scores.shape[1] == 1:
        return scores[:, 0]
    raise ValueError(
        f"BinaryLogit explains a model with one output, scores of shape (B,) or (B, 1); got {tuple(scores.shape)}. "
        "A two-column binary classifier is a class target: targets=1 or ClassLogit(1)."
    )


class BinaryLogit(_ClassTarget):
    """One-logit binary classifier: ``+y`` for the positive class (1), ``-y`` for the negative (0)
    (pytorch-grad-cam's ``BinaryClassifierOutputTarget``); probability ``sigmoid(+-y)``.
    ``classes=None``: the predicted side (``y > 0``)."""

    kind: ClassVar[str] = "binary"

    def _check_scores(self, scores: Tensor) -> None:
        _binary_logit(scores)

    def bind(self, scores: Tensor) -> Target:
        logit = _binary_logit(scores)
        classes = (logit > 0).long() if self._given is None else _class_tensor(self._given, logit.shape[0], 2, scores.device, "targets")
        bound = type(self).__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound._given, bound._classes = classes, classes
        return bound

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        sign = self._bound().to(scores.device)[index].to(scores.dtype) * 2 - 1
        return _binary_logit(scores) * sign

    def probability(self, scores: Tensor, index: Tensor | None = None) -> Tensor:
        return self(scores, index).sigmoid()


class SegmentationClass(_ClassTarget):
    """Segmentation (B, C, H, W) scores: ``sum_{p in M} y_c(p)`` over the mask ``M``
    (pytorch-grad-cam's ``SemanticSegmentationTarget``; ``reduction="mean"`` divides by ``|M|``).

    ``classes=None``: each image's most frequent predicted class other than ``background``
    (the class of highest mean score when only background is predicted). ``masks=None``: the
    region predicted as that class (the whole image when it is empty). The probability the
    metrics follow is the mean of ``softmax(y)_c`` over ``M``.
    """

    kind: ClassVar[str] = "segmentation"

    def __init__(self, classes: Any = None, masks: Tensor | None = None, reduction: str = "sum", background: int | None = 0) -> None:
        super().__init__(classes)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.masks_given, self.reduction, self.background = masks, reduction, background
        self.masks: Tensor | None = None

    def _check_scores(self, scores: Tensor) -> None:
        if scores.ndim != 4:
            raise ValueError(
                f"SegmentationClass explains (B, num_classes, H, W) scores; the model's scores have shape {tuple(scores.shape)}. "
                "For a classifier's (B, num_classes) scores use a class, e.g. targets=3 or ClassLogit(3)."
            )

    def _default(self, scores: Tensor) -> Tensor:
        predicted = scores.argmax(dim=1).flatten(1)
        counts = torch.zeros(scores.shape[0], scores.shape[1], device=scores.device).scatter_add_(
            1, predicted, torch.ones_like(predicted, dtype=torch.float32)
        )
        mean_scores = scores.float().mean(dim=(2, 3))
        if self.background is not None and scores.shape[1] > 1:
            counts[:, self.background] = -1
            mean_scores[:, self.background] = -torch.inf
        by_count = counts.argmax(dim=1)
        none_predicted = counts.max(dim=1).values <= 0
        return torch.where(none_predicted, mean_scores.argmax(dim=1), by_count)

    def bind(self, scores: Tensor) -> Target:
        bound = super().bind(scores)
        assert isinstance(bound, SegmentationClass)
        batch, _, height, width = scores.shape
        if self.masks_given is not None:
            masks = torch.as_tensor(self.masks_given, device=scores.device)
            masks = masks[:, 0] if masks.ndim == 4 else masks
            masks = masks[None].expand(batch, -1, -1) if masks.ndim == 2 else masks
            if tuple(masks.shape) != (batch, height, width):
                raise ValueError(f"masks must have shape ({batch}, {height}, {width}) (the output's size); got {tuple(masks.shape)}")
        else:
            masks = scores.argmax(dim=1) == bound._bound()[:, None, None]
            empty = ~masks.flatten(1).any(dim=1)
            masks = torch.where(empty[:, None, None], torch.ones_like(masks), masks)
        bound.masks = masks.to(scores.dtype if scores.is_floating_point() else torch.float32).detach()
        bound.masks_given = bound.masks  # re-binding (e.g. on perturbed scores) keeps the region
        return bound

    def select(self, images: Tensor) -> Target:
        chosen = super().select(images)
        assert isinstance(chosen, SegmentationClass) and self.masks is not None
        chosen.masks = chosen.masks_given = self.masks[images.to(self.masks.device)]
        return chosen

    def _masked(self, per_pixel: Tensor, index: Tensor, mean: bool) -> Tensor:
        if self.masks is None:
            raise RuntimeError("SegmentationClass is not bound to a batch yet: call resolve_target(target, scores)")
        masks = self.masks.to(per_pixel.device, per_pixel.dtype)[index]
        total = (per_pixel * masks).sum(dim=(1, 2))
        return total / masks.sum(dim=(1, 2)).clamp_min(1) if mean else total

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        self._check_scores(scores)
        channel = self._bound().to(scores.device)[index]
        per_pixel = scores[torch.arange(scores.shape[0], device=scores.device), channel]
        return self._masked(per_pixel, index, self.reduction == "mean")

    def probability(self, scores: Tensor, index: Tensor | None = None) -> Tensor:
        self._check_scores(scores)
        rows = _rows(index, scores.shape[0], scores.device)
        channel = self._bound().to(scores.device)[rows]
        per_pixel = scores.softmax(dim=1)[torch.arange(scores.shape[0], device=scores.device), channel]
        return self._masked(per_pixel, rows, True)


class RegressionOutput(Target):
    """Output ``j`` of a regressor: scores (B,) or (B, D) -> ``y_j``. No probability: the
    faithfulness curves follow the raw output and Average Drop / pointing games are left out."""

    kind: ClassVar[str] = "regression"
    has_probability: ClassVar[bool] = False

    def __init__(self, output: int = 0) -> None:
        self.output = int(output)

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        if scores.ndim == 1:
            return scores
        if scores.ndim == 2 and 0 <= self.output < scores.shape[1]:
            return scores[:, self.output]
        raise ValueError(
            f"RegressionOutput({self.output}) reads output {self.output} of (B,) or (B, outputs) scores; got scores of shape "
            f"{tuple(scores.shape)}. E.g. targets=RegressionOutput(0) for the first output."
        )

    def bind(self, scores: Tensor) -> Target:
        self.value(scores, _rows(None, scores.shape[0], scores.device))  # a clear error for the wrong output now
        return self

    def select(self, images: Tensor) -> Target:
        return self

    def __repr__(self) -> str:
        return f"RegressionOutput({self.output})"


class PerImage(Target):
    """B per-image callables in pytorch-grad-cam's convention: row ``r`` of image ``i`` scores
    ``callables[i](scores[r]).sum()``. Called once per row (not batched); no probability."""

    kind: ClassVar[str] = "callable"
    has_probability: ClassVar[bool] = False

    def __init__(self, callables: Sequence[Callable[[Tensor], Tensor]]) -> None:
        self.callables = list(callables)

    def value(self, scores: Tensor, index: Tensor) -> Tensor:
        values = []
        for row, image in enumerate(index.tolist()):
            out = self.callables[image](scores[row])
            out = out if isinstance(out, Tensor) else torch.as_tensor(out, device=scores.device)
            values.append(out.to(scores.dtype).sum())
        return torch.stack(values) if values else scores.new_zeros(0)

    def bind(self, scores: Tensor) -> Target:
        _check_count(len(self.callables), scores.shape[0])
        return self

    def select(self, images: Tensor) -> Target:
        return PerImage([self.callables[i] for i in images.tolist()])

    def __repr__(self) -> str:
        return f"PerImage({[type(c).__name__ for c in self.callables[:3]]}...)"


def _check_count(callables: int, batch: int) -> None:
    if callables != batch:
        raise ValueError(
            f"a list of per-image targets needs one callable per image: got {callables} for {batch} images; "
            "e.g. targets=[ClassifierOutputTarget(c) for c in classes] with one class per image"
        )


def _from_grad_cam(callables: Sequence[Any]) -> Target | None:
    """pytorch-grad-cam's target objects as the batched built-in that gives the same value, or None."""
    kinds = {type(t) for t in callables}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if not kind.__module__.startswith("pytorch_grad_cam"):
        return None
    name = kind.__name__
    if name in ("ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget", "ClassifierOutputReST", "BinaryClassifierOutputTarget"):
        classes = [int(t.category) for t in callables]
        return {"ClassifierOutputTarget": ClassLogit, "ClassifierOutputSoftmaxTarget": ClassProbability,
                "ClassifierOutputReST": ClassReST, "BinaryClassifierOutputTarget": BinaryLogit}[name](
            [1 if c == 1 else 0 for c in classes] if name == "BinaryClassifierOutputTarget" else classes
        )
    if name == "SemanticSegmentationTarget":
        masks = torch.stack([torch.as_tensor(t.mask) for t in callables])
        return SegmentationClass([int(t.category) for t in callables], masks=masks, background=None)
    if name == "FinerWeightedTarget":
        return ClassMinusSimilar([int(t.main_category) for t in callables],
                                 similar=[list(t.comparison_categories) for t in callables], alpha=callables[0].alpha)
    return None


def _default_target(scores: Tensor, classes: Any = None) -> Target:
    if scores.ndim == 4:
        return SegmentationClass(classes)
    if scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
        return BinaryLogit(classes)
    if scores.ndim == 2:
        return ClassLogit(classes)
    raise ValueError(
        f"the model's scores have shape {tuple(scores.shape)}; understood: (B, num_classes), (B,) or (B, 1) "
        "for one logit, (B, num_classes, H, W) for segmentation. Pass output_transform= to read them from "
        "the output, or targets=PerImage([...]) / RegressionOutput() for other outputs."
    )


def target_classes(target: Target, batch: int, device: torch.device) -> Tensor:
    """(B,) long: the class each image is explained for, ``-1`` for kinds without classes."""
    classes = target.classes
    return torch.full((batch,), -1, dtype=torch.long, device=device) if classes is None else classes.to(device)


def resolve_target(targets: TargetsLike, scores: Tensor) -> Target:
    """``targets`` (see the module docstring) bound to the clean ``scores`` of the B images."""
    if isinstance(targets, Target):
        return targets.bind(scores)
    if (
        isinstance(targets, Sequence) and not isinstance(targets, (str, bytes)) and len(targets) > 0
        and all(callable(t) and not isinstance(t, Target) for t in targets)
    ):
        _check_count(len(targets), scores.shape[0])
        return (_from_grad_cam(targets) or PerImage(targets)).bind(scores)
    if targets is None or isinstance(targets, (int, Tensor)) or (isinstance(targets, Sequence) and not isinstance(targets, (str, bytes))):
        if isinstance(targets, Tensor) and targets.is_floating_point():
            raise ValueError(
                f"targets must be class indices (an int, a list of B ints or an integer tensor); got a tensor of dtype "
                f"{targets.dtype}. For a regression output use targets=RegressionOutput(), e.g. RegressionOutput(0)."
            )
        return _default_target(scores, targets).bind(scores)
    raise ValueError(
        "targets must be None, an int, a list of B ints, an integer tensor, a lightning_cam.targets built-in "
        f"(ClassLogit, BinaryLogit, SegmentationClass, ...) or a list of B per-image callables; got {type(targets).__name__}. "
        "Example: targets=3, targets=BinaryLogit(0), targets=[ClassifierOutputTarget(3)] * len(images)."
    )

"""The evaluation's options: declared once, with their defaults, and checked once.

:class:`EvaluationOptions` is shared by :func:`~lightning_cam.evaluation.evaluate` (its keyword
arguments) and :class:`~lightning_cam.CAMCallback` (which adds the options of a Trainer run). A
bad value raises at construction with the option's name, what is allowed and an example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from lightning_cam.methods.compose import FUSIONS
from lightning_cam.outputs import OutputTransform, check_output_transform
from lightning_cam.evaluation.regions import MASK_FREE_REGIONS, Region, check_regions

__all__ = ["DEFAULT_N_STEPS", "EvaluationOptions", "RANDOMIZATIONS", "check_int", "check_methods", "forward_batch_size"]

DEFAULT_N_STEPS = 16  # 17 points per curve unless step / n_steps are given
RANDOMIZATIONS = (None, "full", "cascading")


def check_int(name: str, value: Any, minimum: int, owner: str = "") -> int:
    """``value`` as an int >= ``minimum``, else a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}{name} must be an int >= {minimum}, got {value!r}; e.g. {name}={max(minimum, 1)}")
    return value


def check_methods(methods: Sequence[str] | str, owner: str = "") -> tuple[str, ...]:
    """Registry names of ``methods`` (aliases such as ``"gradcampp"`` accepted), each once."""
    from lightning_cam.methods import get_method

    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise ValueError(f"{owner}methods is empty; pass at least one, e.g. methods=['liftcam']")
    canonical: list[str] = []
    for m in names:
        try:
            canonical.append(get_method(m).name)
        except (TypeError, ValueError) as err:  # names the method, the allowed ones and a close match
            raise ValueError(f"{owner}{err} E.g. methods=['liftcam', 'gradcam'].") from None
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"{owner}duplicate methods in {canonical}; give each method once")
    return tuple(canonical)


def forward_batch_size(device: torch.device) -> int:
    """Forward batch of the metrics' passes: 32 on a CPU, 256 on an accelerator.

    Measured on the app's SmallCNN at 64 px on 2 CPU cores, ms per image by batch size: 16: 0.88,
    32: 0.90, 64: 0.98, 128: 1.04, 256: 1.24, 512: 1.33 (a CPU's caches favour small batches); a GPU
    needs large batches to fill it."""
    return 32 if torch.device(device).type == "cpu" else 256


@dataclass(frozen=True)
class EvaluationOptions:
    """How :func:`~lightning_cam.evaluation.evaluate` explains and scores.

    Attributes:
        methods: registry names (``liftcam``, ``gradcam``, ``gradcam++`` ...).
        step, n_steps: insertion/deletion granularity (``n_steps + 1`` points, capped at H*W; give
            one of them; default ``n_steps=16``).
        curves: compute the insertion/deletion curves.
        curve_images: score the curves on a seeded subset of this many images (the same images
            for the same N and ``curve_seed``); None = every image.
        curve_seed: seed of that subset.
        shap_samples: compare each method's channel weights with ShapCAM's exact Shapley values
            on the first ``shap_samples`` images (Pearson / Spearman).
        batch_size: images per explanation batch.
        metric_batch_size: images per forward pass of the metrics; None: sized for throughput on the
            model's device (:func:`forward_batch_size`: 32 on a CPU, whose caches favour small
            batches, 256 on an accelerator).
        method_kwargs: constructor options per method, e.g. ``{"scorecam": {"batch_size": 64}}``.
        randomization: ``"full"`` or ``"cascading"``: the model-parameter randomisation check
            (Adebayo et al. 2018) against a copy with re-initialised parameters; None = off.
        randomization_seed: seed of the re-initialisation (Quantus' ``MPRT`` default, 42).
        output_transform: reads the (B, num_classes) scores from the model's output when it is not
            a tensor, a tuple/list, a dict with ``"logits"`` or an object with ``.logits``.
        fusion: with a list of layers: None (each layer reported on its own), ``"mean"``
            (pytorch-grad-cam) or ``"max"`` (torchcam's ``fuse_cams``): one fused map per method.
        extra_metrics: opt-in metrics, names of :data:`~lightning_cam.evaluation.keys.EXTRA_METRICS`
            (``road``, ``max_sensitivity``, ``avg_sensitivity``, ``relative_input_stability``,
            ``random_logit``, ``coherency``, ``arcc``, the mask-based ``relevance_rank_accuracy``,
            ``top_k_intersection``, ``attribution_localisation``, ``localisation_auc``), e.g.
            ``("road", "max_sensitivity")``; see :mod:`lightning_cam.evaluation.extra`.
        regions: mask-free regions scored on every image (:mod:`~lightning_cam.evaluation.regions`):
            ``{name: border width | (x0, y0, x1, y1)}`` in relative coordinates, added to the default
            ``border`` band (1/8 of the side) and ``center`` box (None: just those); a ``None`` value
            switches one off. Logged as ``energy/<name>`` with the area share ``area/<name>``.
    """

    methods: tuple[str, ...] = ("liftcam",)
    step: int | None = None
    n_steps: int | None = None
    curves: bool = True
    curve_images: int | None = None
    curve_seed: int = 0
    shap_samples: int = 0
    batch_size: int = 64
    metric_batch_size: int | None = None
    method_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    randomization: str | None = None
    randomization_seed: int = 42
    output_transform: OutputTransform | None = None
    fusion: str | None = None
    extra_metrics: tuple[str, ...] = ()
    regions: Mapping[str, Region | None] | None = field(default_factory=lambda: dict(MASK_FREE_REGIONS))

    def __post_init__(self) -> None:
        from lightning_cam.evaluation.extra import check_extra_metrics
        from lightning_cam.methods import get_method

        owner = self._owner()
        set_ = object.__setattr__
        set_(self, "methods", check_methods(self.methods, owner))
        set_(self, "extra_metrics", check_extra_metrics(self.extra_metrics, owner))
        if self.step is not None and self.n_steps is not None:
            raise ValueError(f"{owner}give step or n_steps, not both; e.g. n_steps=16")
        for name, minimum in (("step", 1), ("n_steps", 1), ("curve_images", 1), ("metric_batch_size", 1)):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum, owner)
        for name, minimum in (("curve_seed", 0), ("shap_samples", 0), ("batch_size", 1), ("randomization_seed", 0)):
            check_int(name, getattr(self, name), minimum, owner)
        if self.randomization not in RANDOMIZATIONS:
            raise ValueError(
                f"{owner}randomization must be one of {RANDOMIZATIONS}, got {self.randomization!r}; e.g. randomization='full'"
            )
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise ValueError(
                f"{owner}fusion must be None or one of {FUSIONS} (None: each layer on its own; 'mean' as "
                f"pytorch-grad-cam, 'max' as torchcam), got {self.fusion!r}; e.g. fusion='mean' with "
                "target_layer=['layer3', 'layer4']"
            )
        kwargs = {}
        for k, v in dict(self.method_kwargs or {}).items():
            try:
                k = get_method(k).name
            except (TypeError, ValueError):
                pass
            kwargs[k] = dict(v)
        set_(self, "method_kwargs", kwargs)
        set_(self, "regions", check_regions(self.regions, owner))
        set_(self, "output_transform", check_output_transform(self.output_transform, f"{owner}output_transform"))

    def _owner(self) -> str:
        """Prefix of error messages (``"CAMCallback: "`` for the callback's options)."""
        return ""

    @property
    def curve_steps(self) -> dict[str, int | None]:
        """``step`` / ``n_steps`` for :func:`~lightning_cam.metrics.insertion_deletion` (default ``n_steps=16``)."""
        if self.step is not None:
            return {"step": self.step}
        return {"n_steps": self.n_steps or DEFAULT_N_STEPS}

    def forward_batch(self, device: torch.device) -> int:
        """Images per forward pass of the metrics on ``device``: ``metric_batch_size``, else
        :func:`forward_batch_size`."""
        return self.metric_batch_size if self.metric_batch_size is not None else forward_batch_size(device)

    def evaluation(self, **changes: Any) -> EvaluationOptions:
        """These options as plain :class:`EvaluationOptions` (the evaluation's fields only), with ``changes``."""
        own = {f.name: getattr(self, f.name) for f in fields(EvaluationOptions)}
        return replace(EvaluationOptions(**own), **changes) if changes else EvaluationOptions(**own)

"""Faithfulness and localisation metrics of the CAM literature, batched on the model's device.

* :func:`insertion_deletion` - insertion / deletion AUCs (Petsiuk et al., RISE, BMVC 2018).
* :func:`confidence_change` - Average Drop %, Increase in Confidence % (Chattopadhyay et al.,
  Grad-CAM++, WACV 2018) and Average Drop in Deletion %.
* :func:`pointing_game` - pointing game (Zhang et al., ECCV 2016) and energy-based pointing game
  (Wang et al., Score-CAM, CVPR-W 2020).
* :mod:`lightning_cam.metrics.monitoring` - monitoring over training: :func:`spearman`
  (stability), :func:`method_agreement`, :func:`region_energy`, :func:`sparseness`,
  :func:`complexity`, :func:`model_randomization` (Adebayo et al., NeurIPS 2018).
* :func:`road` - ROAD MoRF / LeRF / combined with noisy linear imputation (Rong et al., ICML 2022).
* :func:`coherency`, :func:`arcc` - Coherency and ARCC (Poppi et al., CVPR-W 2021; pytorch-grad-cam).
* :func:`sensitivity` (Max/Avg-Sensitivity, Yeh et al. 2019), :func:`relative_input_stability`
  (Agarwal et al. 2022), :func:`random_logit` (Sixt et al., ICML 2020): Quantus' robustness and
  randomisation metrics, given an explanation function.
* :func:`relevance_rank_accuracy`, :func:`top_k_intersection`, :func:`attribution_localisation`,
  :func:`localisation_auc`: Quantus' localisation metrics against masks.
* torchmetrics classes :class:`InsertionDeletion`, :class:`ConfidenceChange`,
  :class:`PointingGame` (imported lazily, so the functions do not import torchmetrics).

Every metric takes ``targets=`` as :func:`lightning_cam.targets.resolve_target` does (classes, a
built-in such as ``SegmentationClass``, ``BinaryLogit``, ``RegressionOutput``, per-image callables)
and follows that target: ``score="softmax"`` its probability, ``score="logit"`` its value
(docs/metrics.md, "Metrics by target kind").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_cam.metrics._common import Explain
from lightning_cam.metrics.self_consistency import ArccResult, arcc, coherency
from lightning_cam.metrics.confidence import ConfidenceResult, confidence_change
from lightning_cam.metrics.rise import (
    InsertionDeletionResult,
    auc,
    blur,
    gaussian_kernel,
    insertion_deletion,
    make_substrate,
)
from lightning_cam.metrics.monitoring import (
    RandomizationResult,
    complexity,
    method_agreement,
    model_randomization,
    randomized_models,
    region_energy,
    sparseness,
    spearman,
)
from lightning_cam.metrics.localisation import (
    attribution_localisation,
    localisation_auc,
    relevance_rank_accuracy,
    top_k_intersection,
)
from lightning_cam.metrics.pointing import PointingResult, energy_share, pointing_game
from lightning_cam.metrics.randomisation import random_logit
from lightning_cam.metrics.faithfulness import RoadResult, noisy_linear_imputation, road
from lightning_cam.metrics.robustness import SensitivityResult, relative_input_stability, sensitivity

if TYPE_CHECKING:
    from lightning_cam.metrics.metric_classes import ConfidenceChange, InsertionDeletion, PointingGame

__all__ = [
    "ArccResult",
    "Explain",
    "RoadResult",
    "SensitivityResult",
    "arcc",
    "attribution_localisation",
    "coherency",
    "localisation_auc",
    "noisy_linear_imputation",
    "random_logit",
    "relative_input_stability",
    "relevance_rank_accuracy",
    "road",
    "sensitivity",
    "top_k_intersection",
    "ConfidenceChange",
    "ConfidenceResult",
    "InsertionDeletion",
    "InsertionDeletionResult",
    "PointingGame",
    "PointingResult",
    "RandomizationResult",
    "auc",
    "blur",
    "complexity",
    "confidence_change",
    "energy_share",
    "gaussian_kernel",
    "insertion_deletion",
    "make_substrate",
    "method_agreement",
    "model_randomization",
    "pointing_game",
    "randomized_models",
    "region_energy",
    "sparseness",
    "spearman",
]

_LAZY = {"ConfidenceChange", "InsertionDeletion", "PointingGame"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from lightning_cam.metrics import metric_classes

        return getattr(metric_classes, name)
    raise AttributeError(f"module 'lightning_cam.metrics' has no attribute {name!r}")

"""lightning-cam: LIFT-CAM and the CAM family, batched on any device.

Methods (``LiftCAM``, ``GradCAM`` ...) import eagerly and need only torch;
the Lightning callback and the metrics import lazily so that using an
explainer does not pull in Lightning or W&B.
"""

from __future__ import annotations

from typing import Any

from lightning_cam.methods import (
    CAM,
    METHODS,
    AblationCAM,
    ISCAM,
    SSCAM,
    BaseCAM,
    EigenCAM,
    EigenGradCAM,
    Explanation,
    FEM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    KPCACAM,
    LayerCAM,
    LiftCAM,
    RandomCAM,
    ScoreCAM,
    ShapCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    SobelCAM,
    XGradCAM,
    explain_all,
    get_method,
)

__version__ = "0.1.0"

__all__ = [
    "AblationCAM",
    "BaseCAM",
    "CAM",
    "CAMCallback",
    "EigenCAM",
    "EigenGradCAM",
    "Explanation",
    "FEM",
    "FinerCAM",
    "FullGrad",
    "GradCAMElementWise",
    "ISCAM",
    "RandomCAM",
    "SSCAM",
    "SmoothGradCAMPlusPlus",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "KPCACAM",
    "LayerCAM",
    "LiftCAM",
    "METHODS",
    "ScoreCAM",
    "ShapCAM",
    "ShapleyCAM",
    "SobelCAM",
    "XGradCAM",
    "EvaluationOptions",
    "evaluate",
    "explain_all",
    "get_method",
]


def __getattr__(name: str) -> Any:
    if name == "CAMCallback":
        from lightning_cam import callback

        return callback.CAMCallback
    if name in ("evaluate", "EvaluationOptions"):
        from lightning_cam import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'lightning_cam' has no attribute {name!r}")

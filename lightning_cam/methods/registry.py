"""The registry: every method class under its name (and a few aliases), :func:`get_method`."""

from __future__ import annotations

import difflib

from lightning_cam.methods.activation import FEM, KPCACAM
from lightning_cam.methods.base import BaseCAM
from lightning_cam.methods.cam import CAM
from lightning_cam.methods.eigen import EigenCAM, EigenGradCAM, GradCAMElementWise
from lightning_cam.methods.fullgrad import FullGrad
from lightning_cam.methods.guided import GuidedBackprop, GuidedGradCAM
from lightning_cam.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from lightning_cam.methods.liftcam import LiftCAM
from lightning_cam.methods.noisy import ISCAM, SSCAM, SmoothGradCAMPlusPlus
from lightning_cam.methods.perturbation import AblationCAM, ScoreCAM
from lightning_cam.methods.randomcam import RandomCAM
from lightning_cam.methods.shapley import ShapCAM
from lightning_cam.methods.sobel import SobelCAM
from lightning_cam.methods.targeted import FinerCAM, ShapleyCAM

__all__ = ["METHODS", "get_method"]

METHODS: dict[str, type[BaseCAM]] = {
    cls.name: cls
    for cls in (
        LiftCAM, CAM, GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, ScoreCAM, AblationCAM, ShapCAM,
        EigenCAM, EigenGradCAM, GradCAMElementWise, SmoothGradCAMPlusPlus, SSCAM, ISCAM, RandomCAM,
        ShapleyCAM, FinerCAM, FEM, KPCACAM, SobelCAM, GuidedBackprop, GuidedGradCAM, FullGrad,
    )
}
_ALIASES = {
    "gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "shapcam": "shap", "lift-cam": "liftcam",
    "smoothgradcampp": "smoothgradcam++", "smoothgradcamplusplus": "smoothgradcam++",
    "kpca_cam": "kpcacam", "sobel_cam": "sobelcam", "guidedbackpropagation": "guidedbackprop",
    "guided-gradcam": "guidedgradcam",
}


def get_method(name: str) -> type[BaseCAM]:
    """The method class registered under ``name`` (e.g. ``"liftcam"``, ``"gradcam++"``)."""
    if not isinstance(name, str):
        raise TypeError(f"A method name must be a string, got {name!r}.")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"Unknown CAM method {name!r}.{_did_you_mean(key)} Allowed: {', '.join(METHODS)}.")
    return METHODS[key]


def _did_you_mean(key: str) -> str:
    """`` Did you mean 'gradcam++'?`` for the registered names (and aliases) close to ``key``, else empty."""
    close = difflib.get_close_matches(key, [*METHODS, *_ALIASES], n=3, cutoff=0.6)
    names = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    return f" Did you mean {' or '.join(map(repr, names))}?" if names else ""

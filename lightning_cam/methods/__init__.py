"""Explanation methods over one engine: the registry (:mod:`.registry`) and the shared pass
(:func:`~lightning_cam.methods.explain.explain_all`)."""

from __future__ import annotations

from lightning_cam.methods.activation import FEM, KPCACAM
from lightning_cam.methods.base import BaseCAM, Explanation, LayerPass
from lightning_cam.methods.cam import CAM
from lightning_cam.methods.eigen import EigenCAM, EigenGradCAM, GradCAMElementWise
from lightning_cam.methods.explain import explain_all
from lightning_cam.methods.fullgrad import FullGrad
from lightning_cam.methods.guided import GuidedBackprop, GuidedGradCAM
from lightning_cam.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from lightning_cam.methods.liftcam import LiftCAM
from lightning_cam.methods.noisy import ISCAM, SSCAM, SmoothGradCAMPlusPlus
from lightning_cam.methods.perturbation import AblationCAM, ScoreCAM
from lightning_cam.methods.randomcam import RandomCAM
from lightning_cam.methods.registry import METHODS, get_method
from lightning_cam.methods.shapley import ShapCAM
from lightning_cam.methods.sobel import SobelCAM
from lightning_cam.methods.targeted import FinerCAM, ShapleyCAM

__all__ = [
    "AblationCAM", "BaseCAM", "CAM", "EigenCAM", "EigenGradCAM", "Explanation", "FEM", "FinerCAM", "FullGrad", "GradCAM",
    "GradCAMElementWise", "GradCAMPlusPlus", "GuidedBackprop", "GuidedGradCAM", "HiResCAM", "ISCAM", "KPCACAM", "LayerCAM", "LayerPass", "LiftCAM",
    "METHODS", "RandomCAM", "SSCAM", "ScoreCAM", "ShapCAM", "ShapleyCAM", "SmoothGradCAMPlusPlus", "SobelCAM",
    "XGradCAM", "explain_all", "get_method",
]

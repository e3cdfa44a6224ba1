"""Fail fast: check a composed train config before anything expensive happens.

``validate_config(cfg)`` raises :class:`ConfigError` with every problem found
and how to fix it: unknown CAM method (lists the registry), unknown target
layer for the chosen model (lists candidate layers with their output shapes),
image size too small for the architecture, a model or LightningModule that does
not fit the task (``data.task``: classification, segmentation, multilabel), missing ImageFolder folders, W&B
online without credentials (says how to go offline), and a sweep metric the
run cannot produce. The model is built on the ``meta`` device, so the check
costs no memory and no download.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_cam.app.resolvers import wandb_has_credentials, wandb_mode


class ConfigError(ValueError):
    """A configuration that cannot work; the message says how to fix it."""


def _sel(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def cam_enabled(cfg: DictConfig) -> bool:
    cam = cfg.get("cam")
    return bool(cam) and bool(cam.get("enabled", True)) and bool(cam.get("_target_"))


def _check_methods(cfg: DictConfig, errors: list[str]) -> list[str]:
    methods = _sel(cfg, "cam.methods", [])
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods or [])
    if not methods:
        errors.append("cam.methods is empty: give at least one method, e.g. cam.methods=[liftcam], or disable with cam=none.")
        return []
    try:
        from lightning_cam.methods import get_method
    except Exception as err:  # noqa: BLE001 - the engine must import for the run anyway
        errors.append(f"Cannot import the CAM engine (lightning_cam.methods): {err}")
        return []
    canonical = []
    for m in methods:
        try:
            canonical.append(get_method(str(m)).name)
        except (TypeError, ValueError) as err:  # the registry's message names close matches
            errors.append(f"cam.methods: {err} Example: cam.methods=[liftcam,gradcam]")
    target = _sel(cfg, "cam.target")
    if target is not None and target not in ("prediction", "label") and not (isinstance(target, Mapping) and "_target_" in target):
        errors.append(
            f"cam.target must be 'prediction' (explain the model's prediction), 'label' (the true labels) or a "
            f"built-in of lightning_cam.targets, got {target!r}. Examples: cam.target=label, "
            "cam.target={_target_: lightning_cam.targets.LabelLogit}"
        )
    for key, minimum in (("num_samples", 1), ("every_n_epochs", 1)):
        v = _sel(cfg, f"cam.{key}")
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < minimum):
            errors.append(f"cam.{key} must be an integer >= {minimum}, got {v!r}")
    return canonical


class _Holder(nn.Module):
    """Mimics LitClassifier's layout (network under ``net``) for layer-name checks."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# the app's LightningModule of each task (data.task)
TASK_MODULES = {
    "classification": "lightning_cam.models.LitClassifier",
    "segmentation": "lightning_cam.models.LitSegmenter",
    "multilabel": "lightning_cam.models.LitMultiLabel",
}
_TASK_HINTS = {"segmentation": "experiment=segmentation", "multilabel": "experiment=multilabel",
               "classification": "a classification model config (e.g. model=smallcnn)"}


def task_of(cfg: DictConfig) -> str:
    """The task of the data (``data.task``; classification when the data config has none)."""
    return str(_sel(cfg, "data.task", "classification") or "classification")


def _check_task(cfg: DictConfig, errors: list[str], name: str, segmentation_net: bool) -> None:
    """The network and ``model.module`` must fit ``data.task``."""
    from lightning_cam.models import SEGMENTATION_MODELS

    task = task_of(cfg)
    if task not in TASK_MODULES:
        errors.append(f"data.task must be one of {', '.join(TASK_MODULES)}, got {task!r}")
        return
    if segmentation_net and task != "segmentation":
        errors.append(
            f"model {name!r} is a segmentation network but data.task={task}: train it on segmentation data, "
            f"e.g. python train.py experiment=segmentation model={name}"
        )
    elif task == "segmentation" and not segmentation_net:
        errors.append(
            f"data.task=segmentation needs a segmentation network (B,C,H,W scores), and model {name!r} is not one: "
            f"choose model={'|'.join(SEGMENTATION_MODELS)}, e.g. python train.py experiment=segmentation"
        )
    if segmentation_net != (task == "segmentation"):
        return  # the network is the problem; its module follows from its model config
    module = str(_sel(cfg, "model.module._target_", ""))
    expected = TASK_MODULES[task]
    if module in TASK_MODULES.values() and module != expected:
        errors.append(
            f"data.task={task} trains with model.module._target_={expected}, not {module}; "
            f"{_TASK_HINTS[task]} sets it up (or pass model.module._target_={expected})"
        )


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape[1:])


def _check_model(cfg: DictConfig, errors: list[str], use_cam: bool) -> None:
    from lightning_cam.models import build_model
    from lightning_cam.seg_models import segmentation_scores

    name = _sel(cfg, "model.name")
    if name is None:
        errors.append("model.name is missing (choose a model config: model=smallcnn|resnet18|...)")
        return
    num_classes = _sel(cfg, "data.num_classes")
    image_size = _sel(cfg, "data.image_size", _sel(cfg, "model.image_size"))
    min_size = _sel(cfg, "model.min_image_size", 1) or 1
    if num_classes is None or int(num_classes) < 2:
        errors.append(f"data.num_classes must be >= 2, got {num_classes!r}")
        return
    if image_size is None or int(image_size) < 1:
        errors.append(f"data.image_size must be a positive integer, got {image_size!r}")
        return
    image_size = int(image_size)
    if image_size < int(min_size):
        errors.append(
            f"Image size {image_size} is too small for model {name!r} (minimum {min_size}); "
            f"set model.image_size={max(int(min_size), 64)} (or data.image_size)."
        )
        return
    try:
        with torch.device("meta"):
            holder = _Holder(build_model(str(_sel(cfg, "model.module.net.name", name)), int(num_classes), pretrained=False, image_size=image_size))
    except ValueError as err:
        errors.append(str(err))
        return
    shapes: dict[str, tuple[int, ...]] = {}

    def make_hook(n: str):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in holder.named_modules() if n]
    try:
        holder.eval()
        with torch.no_grad():
            out = holder(torch.empty(1, 3, image_size, image_size, device="meta"))
        segmentation_net = not isinstance(out, torch.Tensor) or out.ndim == 4
        out = segmentation_scores(out)
        expected = (1, int(num_classes), image_size, image_size) if segmentation_net else (1, int(num_classes))
        if tuple(out.shape) != expected:
            raise RuntimeError(f"unexpected output shape {tuple(out.shape)}")
    except Exception as err:  # noqa: BLE001 - any failure here means the size cannot work
        errors.append(
            f"Image size {image_size} is too small for model {name!r}: a forward pass at "
            f"{image_size}x{image_size} fails ({str(err).splitlines()[0]}). Use model.image_size>=64."
        )
        return
    finally:
        for h in handles:
            h.remove()
    _check_task(cfg, errors, str(name), segmentation_net)
    if not use_cam:
        return
    layers = _sel(cfg, "cam.target_layer")
    if layers is None:
        return
    if isinstance(layers, (list, tuple)) or type(layers).__name__ == "ListConfig":
        layers = list(layers)
        if not layers:
            errors.append("cam.target_layer is an empty list; give a layer or a list, e.g. cam.target_layer=[layer3,layer4]")
            return
    else:
        layers = [layers]
    for layer in layers:
        _check_layer(cfg, errors, holder, shapes, name, image_size, layer)


def _check_layer(cfg: DictConfig, errors: list[str], holder: nn.Module, shapes: dict[str, tuple[int, ...]],
                 name: str, image_size: int, layer: Any) -> None:
    from lightning_cam.layers import resolve_layer

    spatial = [n for n, s in shapes.items() if len(s) == 4 and n.count(".") <= 2]
    listing = ", ".join(f"{n.removeprefix('net.')} ({_shape_str(shapes[n])})" for n in spatial[-24:])
    net = holder.net
    try:
        qual, _ = resolve_layer(net, str(layer).removeprefix("net."))
    except (ValueError, TypeError) as err:
        close = str(err).split(". Candidate layers")[0].partition("?")[0]
        hint = f" Did you mean {close.split('Did you mean ')[1]}?" if "Did you mean" in close else ""
        default = _sel(cfg, "model.target_layer") or (spatial[-1].removeprefix("net.") if spatial else "")
        errors.append(
            f"Unknown target layer {layer!r} for model {name!r} ({type(net).__name__}) in cam.target_layer.{hint} "
            f"Candidate layers (output CxHxW at {image_size}px): {listing}. "
            f"The model's default is {default!r}. Example: python train.py model={name} cam.target_layer={default}"
        )
        return
    qual = f"net.{qual}"
    shape = shapes.get(qual)
    if shape is None:
        errors.append(f"Target layer {layer!r} of model {name!r} is never called in the forward pass; candidates: {listing}")
    elif len(shape) not in (3, 4):
        errors.append(
            f"Target layer {layer!r} of model {name!r} outputs shape {shape}, not a (B,K,h,w) feature map "
            f"or tokens (B,N,K); choose a convolutional layer or a transformer block's norm1: {listing}"
        )
    elif "cam" in [str(m).strip().lower() for m in (_sel(cfg, "cam.methods", []) or [])] and _cam_refused(holder, qual):
        errors.append(
            f"cam.methods contains 'cam', but CAM needs global average pooling followed by one Linear layer "
            f"right after the target layer, and model {name!r} after {layer!r} is not like that (e.g. fully "
            f"connected layers, as in VGG). Remove 'cam' from cam.methods; LIFT-CAM (liftcam) and "
            f"Ablation-CAM (ablationcam) are the CAM-like methods for such heads."
        )
    elif len(shape) == 4 and shape[-1] * shape[-2] <= 1:
        errors.append(
            f"Image size {image_size} is too small for model {name!r}: its target layer {layer!r} gives a "
            f"{shape[-2]}x{shape[-1]} map, so every CAM would be constant. Use a larger model.image_size "
            f"(e.g. {image_size * 2}) or an earlier layer (cam.target_layer=...): {listing}"
        )


def _check_data(cfg: DictConfig, errors: list[str]) -> None:
    target = str(_sel(cfg, "data._target_", ""))
    if target.endswith("ImageFolderDataModule"):
        dirs = {k: _sel(cfg, f"data.{k}") for k in ("data_dir", "train_dir", "val_dir")}
        given = {k: v for k, v in dirs.items() if v not in (None, "")}
        if not given:
            errors.append(
                "data=imagefolder needs a folder: set data.data_dir=/path/to/images (one sub-folder per "
                "class), or data.train_dir / data.val_dir (or the IMAGEFOLDER_DIR environment variable)."
            )
            return
        for k, v in given.items():
            if not Path(str(v)).is_dir():
                errors.append(f"ImageFolder path not found: data.{k}={v!r} does not exist or is not a directory.")
                continue
            n = sum(1 for p in Path(str(v)).iterdir() if p.is_dir())
            expected = _sel(cfg, "data.num_classes")
            if n == 0:
                errors.append(f"ImageFolder path data.{k}={v!r} has no class sub-folders (expected <dir>/<class>/<image>).")
            elif expected is not None and int(expected) != n:
                errors.append(f"data.num_classes={expected} but data.{k}={v!r} has {n} class sub-folders; set data.num_classes={n}.")
        if cfg.get("train", True) and "data_dir" not in given and "train_dir" not in given:
            errors.append(
                "train=true needs training images: set data.train_dir or data.data_dir, or evaluate only with train=false."
            )
    elif target.endswith("ShapesDataModule"):
        n = _sel(cfg, "data.num_classes")
        if task_of(cfg) == "segmentation":
            if n is not None and not 3 <= int(n) <= 7:
                errors.append(f"data=shapes_segmentation has 6 shapes and the background: data.num_classes must be in 3..7, got {n}")
        elif n is not None and not 2 <= int(n) <= 6:
            errors.append(f"data=shapes has 6 classes: data.num_classes must be in 2..6, got {n}")
        for k in ("num_train", "num_val"):
            v = _sel(cfg, f"data.{k}")
            if v is not None and int(v) < 1:
                errors.append(f"data.{k} must be >= 1, got {v}")


def _check_logger(cfg: DictConfig, errors: list[str]) -> None:
    loggers = cfg.get("logger") or {}
    for key, lg in loggers.items():
        if isinstance(lg, DictConfig) and "MLFlowLogger" in str(lg.get("_target_", "")) and not _importable("mlflow"):
            errors.append(f"logger.{key} needs MLflow: pip install mlflow (or choose logger=csv | tensorboard | wandb).")
        if not isinstance(lg, DictConfig) or "WandbLogger" not in str(lg.get("_target_", "")):
            continue
        mode = wandb_mode(lg.get("mode", "auto"))  # resolves ${wandb_mode:auto} too
        if bool(lg.get("offline", False)):
            mode = "offline"
        if mode not in ("online", "offline", "disabled", "shared"):
            errors.append(f"logger.{key}.mode must be auto, online, offline or disabled, got {mode!r}")
        elif mode in ("online", "shared") and not wandb_has_credentials():
            errors.append(
                "W&B is set to log online but no credentials were found (no WANDB_API_KEY, no `wandb login`). "
                "Either run `wandb login` / export WANDB_API_KEY=..., or log offline: "
                f"`python train.py logger.{key}.mode=offline` (or WANDB_MODE=offline; sync later with "
                "`wandb sync <run dir>/wandb/offline-run-*`), or use another logger: logger=csv | tensorboard | none."
            )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_metric(cfg: DictConfig, errors: list[str], use_cam: bool, methods: list[str]) -> None:
    metric = cfg.get("optimized_metric")
    if not metric or not str(metric).startswith("cam/"):
        return
    if not use_cam:
        errors.append(f"optimized_metric={metric} needs the CAM callback, but it is disabled (cam=none).")
        return
    from lightning_cam.evaluation.keys import AREA_PREFIX, CALLBACK_KEYS, METRIC_NAMES, parse_key

    parsed = parse_key(str(metric))
    if parsed is None:
        parts = str(metric).split("/")
        if parts[-1] not in {k.name for k in CALLBACK_KEYS} and parts[-2] != AREA_PREFIX:
            errors.append(
                f"optimized_metric={metric} is not a CAM key: use cam/<method>/<metric> with a metric among "
                f"{', '.join(METRIC_NAMES)}, e.g. optimized_metric=cam/liftcam/insertion."
            )
        return
    if methods and parsed.method not in methods:
        errors.append(f"optimized_metric={metric}: method {parsed.method!r} is not in cam.methods={methods}.")


def _cam_refused(holder: nn.Module, layer_name: str) -> bool:
    from lightning_cam.methods.cam import head_is_gap_linear

    try:
        return head_is_gap_linear(holder, layer_name) is False
    except Exception:  # noqa: BLE001 - undecidable here; CAM still checks at run time
        return False


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (no-op when it is fine)."""
    errors: list[str] = []
    use_cam = cam_enabled(cfg)
    methods = _check_methods(cfg, errors) if use_cam else []
    _check_data(cfg, errors)
    _check_model(cfg, errors, use_cam)
    _check_logger(cfg, errors)
    _check_metric(cfg, errors, use_cam, methods)
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise ConfigError(f"Invalid configuration ({len(errors)} problem{'s' if len(errors) > 1 else ''}):\n{lines}")

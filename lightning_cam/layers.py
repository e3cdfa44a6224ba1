"""Find the target layer of a CNN: by dotted name, by module, or by default."""

from __future__ import annotations

import difflib

import torch
from torch import nn

from lightning_cam._state import model_dtype

__all__ = ["resolve_layer", "default_target_layer", "candidate_layers", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that really runs: strips ``torch.compile`` and DDP/DataParallel wrappers.

    Hooks and tracing added after ``torch.compile`` are ignored by the compiled
    graph, so explanations always work on the original module.
    """
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def candidate_layers(model: nn.Module) -> list[str]:
    """Names of modules that can hold spatial feature maps (convolutional blocks).

    A module is a candidate when it is or contains a ``Conv2d``; these are the
    layers whose output is usually a (B, K, h, w) activation.
    """
    names = []
    for name, module in model.named_modules():
        if not name:
            continue
        if any(isinstance(m, nn.Conv2d) for m in module.modules()) or _is_activation_after_conv(
            model, name
        ):
            names.append(name)
    return names


def _is_activation_after_conv(model: nn.Module, name: str) -> bool:
    module = model.get_submodule(name)
    return isinstance(module, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.BatchNorm2d))


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(qualified_name, module)`` for ``layer`` inside ``model``.

    ``layer`` is a module of ``model``, its dotted name (``"layer4"``,
    ``"features.29"``), or a unique dotted suffix of one (``"layer4"`` finds
    ``"net.layer4"`` inside a LightningModule that stores the network as ``net``). Names inside a
    compiled submodule (``self.net = torch.compile(self.net)``) need no ``_orig_mod``: ``"net.3"``
    finds ``"net._orig_mod.3"``.
    Raises ``ValueError`` listing candidate layers when nothing matches.
    """
    model = unwrap_model(model)
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                if not name:
                    raise ValueError("The target layer must be a submodule of the model, not the model itself.")
                return name, module
        raise ValueError(
            f"The target layer {type(layer).__name__} is not a submodule of the model "
            f"{type(model).__name__}."
        )
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"target_layer must be an nn.Module or a dotted name, got {layer!r}.")
    if layer in named and layer:
        return layer, named[layer]
    by_user = _user_names(named)
    if layer in by_user:
        return by_user[layer], named[by_user[layer]]
    suffix_matches = [by_user[n] for n in by_user if n.endswith("." + layer)]
    if len(suffix_matches) == 1:
        return suffix_matches[0], named[suffix_matches[0]]
    candidates = list(dict.fromkeys(_user_name(n) for n in candidate_layers(model)))
    if len(suffix_matches) > 1:
        raise ValueError(
            f"Target layer {layer!r} is ambiguous in {type(model).__name__}: it matches "
            f"{suffix_matches}. Use the full dotted name."
        )
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    example = f" Example: target_layer={(close or candidates)[-1 if not close else 0]!r}." if candidates else ""
    raise ValueError(
        f"Unknown target layer {layer!r} for {type(model).__name__}.{hint} "
        f"Candidate layers: {_summarise(candidates)}.{example}"
    )


def _user_name(name: str) -> str:
    """``name`` as the user writes it: without the ``_orig_mod`` of compiled submodules
    (``self.net = torch.compile(self.net)`` makes ``net.3`` into ``net._orig_mod.3``)."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _user_names(named: dict[str, nn.Module]) -> dict[str, str]:
    """``{user name: qualified name}``; a compiled submodule's name means the module it compiles."""
    return {_user_name(n): n for n in named if n}  # "net._orig_mod" comes after "net": the original wins


def _summarise(names: list[str], limit: int = 60) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    top = [n for n in names if n.count(".") <= 1]
    shown = top[:limit] if top else names[:limit]
    return ", ".join(shown) + f", ... ({len(names)} in all; nested names like 'layer4.1.conv2' work too)"


def default_target_layer(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 64, 64)) -> str:
    """The usual CAM layer of ``model``: its last spatial feature map.

    Transformers: see :func:`_transformer_layer` (e.g. ViT ``blocks[-1].norm1``).
    torchvision's segmentation models (FCN, DeepLabV3, LRASPP): the backbone's last stage
    (:func:`_segmentation_layer`). Known CNN layouts: ResNet-like ``layer4``; VGG ``features.<last ReLU>`` (as in
    the LIFT-CAM authors' code, before the last max-pool); ``features`` for
    MobileNet, EfficientNet, ConvNeXt, DenseNet and similar; timm's last
    ``feature_info`` stage when it outputs one tensor. Anything else (e.g. timm
    HRNet, whose last stage outputs a list of branches: ``final_layer``, after
    they are fused) is probed with one forward pass on zeros of ``input_shape``:
    the outermost module that finishes last with a 4-D tensor output of spatial
    size > 1. Modules whose output is not a tensor are never chosen.
    """
    model = unwrap_model(model)
    named = dict(model.named_modules())
    segmentation = _segmentation_layer(named)
    if segmentation is not None:
        return segmentation
    prefix = ""
    # LightningModules and wrappers often keep the network in one attribute.
    for attr in ("net", "model", "backbone", "network"):
        if attr in named and any(attr + "." + n in named for n in ("layer4", "features", "blocks", "stages", "layers", "encoder")):
            prefix = attr + "."
            break
    transformer = _transformer_layer(named, prefix)
    if transformer is not None:
        return transformer
    conventional = _conventional_layer(model, named, prefix)
    try:
        outputs = _tensor_outputs(model, input_shape)
    except (RuntimeError, ValueError, AssertionError):  # e.g. a fixed input size: trust the convention
        if conventional is None:
            raise
        return conventional
    if conventional is not None and conventional in outputs:
        return conventional
    return _outermost_last([name for name, spatial in outputs.items() if spatial], model)


def _segmentation_layer(named: dict[str, nn.Module]) -> str | None:
    """``backbone.<last stage>`` of a torchvision segmentation model (FCN, DeepLabV3: ``backbone.layer4``
    of a ResNet, ``backbone.16`` of a MobileNetV3; LRASPP: ``backbone.16``, its "high" branch), itself
    or kept as ``net`` / ``model`` / ``network`` by a wrapper; ``None`` for other models.

    Why that layer: its maps are still spatial (output stride 8 for the dilated ResNets, 16 for
    MobileNetV3) and they are what the segmentation head reads to score every class, so the
    target's gradient reaches them through the whole head (ASPP / FCN head / LRASPP and the
    upsampling); pytorch-grad-cam's segmentation tutorial explains ``deeplabv3_resnet50`` at
    ``model.backbone.layer4`` for the same reason. The head's own output is the class scores
    themselves (nothing left to explain), and the backbone module returns a dict, not one map.
    """
    for prefix in ("", "net.", "model.", "network."):
        backbone = named.get(prefix + "backbone")
        if type(backbone).__name__ == "IntermediateLayerGetter" and prefix + "classifier" in named and backbone._modules:
            return f"{prefix}backbone.{list(backbone._modules)[-1]}"
    return None


def _conventional_layer(model: nn.Module, named: dict[str, nn.Module], prefix: str) -> str | None:
    """``layer4``; ``features`` (VGG: its last ReLU); timm's last ``feature_info`` stage; else ``None``."""
    if prefix + "layer4" in named:
        return prefix + "layer4"
    features = named.get(prefix + "features")
    if isinstance(features, nn.Sequential) and len(features) > 0:
        if isinstance(features[-1], nn.MaxPool2d) and len(features) > 1:
            return f"{prefix}features.{len(features) - 2}"
        return prefix + "features"
    if features is not None:
        return prefix + "features"
    info = getattr(named.get(prefix[:-1], model), "feature_info", None)  # timm: the last feature stage
    if isinstance(info, list) and info and isinstance(info[-1], dict) and prefix + str(info[-1].get("module")) in named:
        return prefix + str(info[-1]["module"])
    return None


def _last(named: dict[str, nn.Module], name: str) -> str | None:
    """``name.<last child>`` when ``name`` is a non-empty Sequential/ModuleList."""
    module = named.get(name)
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) > 0:
        return f"{name}.{list(module._modules)[-1]}"
    return None


def _transformer_layer(named: dict[str, nn.Module], prefix: str) -> str | None:
    """Peers' conventions (pytorch-grad-cam's docs): the first norm of the last block for
    ViT-style models (torchvision ``encoder.layers[-1].ln_1``; timm ViT/DeiT/BEiT/EVA/Mixer
    ``blocks[-1].norm1``; Swin ``layers[-1].blocks[-1].norm1`` / torchvision
    ``features[-1][-1].norm1``); the last stage for hybrid and convolutional timm models
    (LeViT, MaxViT, ConvNeXt: ``stages[-1]``) and torchvision MaxViT (``blocks[-1]``)."""
    candidates = []
    layers = _last(named, prefix + "encoder.layers")
    if layers:
        candidates.append(layers + ".ln_1")
    blocks = _last(named, prefix + "blocks")
    if blocks:
        candidates.append(blocks + ".norm1")
        if "MaxVit" in type(named[blocks]).__name__:
            candidates.append(blocks)
    stage = _last(named, prefix + "layers")
    block = _last(named, stage + ".blocks") if stage else None
    if block:
        candidates.append(block + ".norm1")
    stage = _last(named, prefix + "features")
    block = _last(named, stage) if stage else None
    if block:
        candidates.append(block + ".norm1")
    stage = _last(named, prefix + "stages")
    if stage:
        candidates.append(stage)
    for name in candidates:
        if name in named:
            return name
    return None


def _tensor_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, bool]:
    """``{name: spatial}`` for the modules whose output is one tensor of 3 or more dimensions, in
    the order they finish in one forward pass on zeros of ``input_shape``; ``spatial``: a
    (B, K, h, w) output with ``h * w > 1``. Modules returning lists or tuples are left out."""
    finished: dict[str, bool] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 3:
                finished.pop(name, None)  # a module called twice finishes at its last call
                finished[name] = output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name)))
    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device, dtype=model_dtype(model)))
    finally:
        for h in handles:
            h.remove()
        for m, t in training:
            m.training = t
    return finished


def _outermost_last(finished: list[str], model: nn.Module) -> str:
    """The outermost module that finished together with the last of ``finished`` (in finishing order)."""
    if not finished:
        raise ValueError(
            f"Could not find a layer with a spatial (B,K,h,w) output in {type(model).__name__}; "
            "pass target_layer explicitly."
        )
    last_name = finished[-1]
    outer = last_name
    for name in reversed(finished):
        if last_name.startswith(name + ".") or name == last_name:
            outer = name if name.count(".") < outer.count(".") else outer
        else:
            break
    return outer

"""Models for the app: a small CAM-ready CNN, torchvision architectures, a LightningModule.

* :class:`SmallCNN`: conv blocks -> global average pool -> Linear, so every CAM
  method (including the original CAM) applies. Its convolutional trunk is
  ``features`` (target layer ``features``; inside :class:`LitClassifier` it is
  ``net.features``, and the suffix ``features`` resolves to it).
* :class:`SmallVGG`: the same trunk followed by max-pool and fully connected
  layers (a nonlinear head, as VGG16's), where LIFT-CAM differs from CAM/Grad-CAM.
* :func:`build_model`: torchvision architectures by name, optionally with the
  ImageNet weights (``weights="DEFAULT"``, downloaded when online), with the
  classifier replaced when ``num_classes != 1000``; the segmentation networks of
  :mod:`lightning_cam.seg_models` (``smallseg``, ``fcn_resnet50``, ``lraspp_mobilenet_v3_large``, ...).
* :class:`LitClassifier`: cross-entropy classifier that keeps the network as
  ``self.net``; ``forward`` returns logits; logs ``train/loss``, ``train/acc``,
  ``val/loss``, ``val/acc`` (and ``test/*``). :class:`LitSegmenter` and
  :class:`LitMultiLabel` (:mod:`lightning_cam.lit_tasks`) share its optimizer and scheduler
  (:class:`lightning_cam.lit.LitBase`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_cam.lit import LitBase
from lightning_cam.lit_tasks import LitMultiLabel, LitSegmenter
from lightning_cam.seg_models import SEGMENTATION_MODELS, SmallSeg, segmentation_weights

# Architectures build_model knows, with their usual CAM target layer.
TORCHVISION_MODELS: dict[str, str] = {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "resnet101": "layer4",
    "vgg16": "features.29",
    "vgg16_bn": "features.42",
    "mobilenet_v3_small": "features",
    "mobilenet_v3_large": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
    "densenet121": "features",
}
DEFAULT_TARGET_LAYERS: dict[str, str] = {
    "smallcnn": "features", "smallvgg": "features", "vit_tiny": "encoder.layers.encoder_layer_3.ln_1", **TORCHVISION_MODELS,
    **SEGMENTATION_MODELS,
}
TIMM_PREFIX = "timm/"


def vit_tiny(num_classes: int = 6, image_size: int = 64, patch_size: int = 8, num_layers: int = 4,
             num_heads: int = 4, hidden_dim: int = 128, mlp_dim: int = 256, conv_stem: bool = True) -> nn.Module:
    """A small torchvision ``VisionTransformer`` for the 64 px shapes data (~0.6 M parameters):
    an 8x8 token grid at 64 px (``patch_size`` 8) and a class token, 4 blocks of width 128.

    ``conv_stem=True`` (default) embeds the patches with stride-2 3x3 convolutions
    (``log2(patch_size)`` of them, torchvision's ``conv_stem_configs``; Xiao et al., "Early
    convolutions help transformers see better", NeurIPS 2021) instead of one 8x8 patchify
    convolution: a from-scratch ViT then learns the small shapes data in a few CPU epochs.
    Default CAM layer: ``encoder.layers.encoder_layer_3.ln_1`` (the last block's first norm)."""
    from torchvision.models import VisionTransformer
    from torchvision.models.vision_transformer import ConvStemConfig

    stem = None
    if conv_stem:
        steps = patch_size.bit_length() - 1
        if 2**steps != patch_size:
            raise ValueError(f"conv_stem needs a power-of-two patch_size, got {patch_size}.")
        stem = [ConvStemConfig(out_channels=min(hidden_dim, 16 * 2**i), kernel_size=3, stride=2) for i in range(steps)]
    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                             hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes, conv_stem_configs=stem)


def timm_image_size(name: str) -> int:
    """The input size of timm model ``name`` from its ``pretrained_cfg`` (no download)."""
    import timm

    name = name.removeprefix(TIMM_PREFIX)
    cfg = timm.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is None:
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ValueError(
            f"Unknown timm model {name!r}. Similar names: {', '.join(close) or 'none'} (see timm.list_models()); "
            "e.g. model=timm model.name=vit_tiny_patch16_224"
        )
    return int(cfg.input_size[-1])


def build_timm(name: str, num_classes: int = 1000, pretrained: bool = False, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained, num_classes=...)``; ``img_size=image_size`` for models
    with a fixed input size (ViT, DeiT, Swin, ...) when it differs from the pretrained size."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("timm models need timm: pip install 'lightning-cam[timm]'") from err
    name = name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ValueError(f"Unknown timm model {name!r}. Similar names: {', '.join(close) or 'none'} (see timm.list_models()).")
    cfg = timm.get_pretrained_cfg(name)
    if image_size is not None and cfg is not None and cfg.fixed_input_size and image_size != cfg.input_size[-1]:
        kwargs.setdefault("img_size", image_size)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except Exception as err:  # noqa: BLE001 - make offline downloads understandable
        if pretrained and any(word in str(err).lower() for word in ("connect", "resolve", "offline", "url", "hub")):
            raise RuntimeError(
                f"Could not download the pretrained weights of timm model {name} (offline?): {err}. "
                "Put them in the Hugging Face cache or set model.pretrained=false."
            ) from err
        raise


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """A compact CNN for the embedded dataset (~0.3 M parameters, ~25 MFLOPs at 64x64).

    ``features``: ``len(widths)`` conv-BN-ReLU blocks, a 2x2 max-pool after each
    but the last (feature map of ``image_size / 2**(len(widths)-1)``, 8x8 at
    64x64); then global average pooling and one ``Linear``: exactly the
    architecture the original CAM needs.
    """

    def __init__(self, num_classes: int = 6, in_channels: int = 3, widths: tuple[int, ...] | list[int] = (16, 32, 64, 128, 128), dropout: float = 0.0) -> None:
        super().__init__()
        widths = list(widths)
        blocks = []
        cin = in_channels
        for i, w in enumerate(widths):
            blocks.append(_block(cin, w, pool=i < len(widths) - 2))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)
        self.min_image_size = 2 ** max(0, len(widths) - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(self.dropout(x))


class SmallVGG(nn.Module):
    """A VGG-style CNN for the embedded dataset: a NONLINEAR head after the target layer.

    ``features``: conv-BN-ReLU blocks with a 2x2 max-pool after each but the
    last (8x8 maps at 64x64, like :class:`SmallCNN`); then, as in VGG16 where
    LIFT-CAM's authors explain ``features[-2]``: a 2x2 max-pool,
    adaptive average pooling to 4x4, and fully connected layers
    ``Linear(C*16, hidden) -> ReLU -> Dropout -> Linear(hidden, classes)``.
    After ``features`` the network is not ``GAP -> Linear``, so CAM does not
    apply and LIFT-CAM, Grad-CAM and the Shapley values differ.
    """

    def __init__(
        self, num_classes: int = 6, in_channels: int = 3, widths: tuple[int, ...] | list[int] = (16, 32, 64, 64),
        hidden: int = 128, dropout: float = 0.2,
    ) -> None:
        super().__init__()
        widths = list(widths)
        blocks, cin = [], in_channels
        for i, w in enumerate(widths):
            blocks.append(_block(cin, w, pool=i < len(widths) - 1))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 16, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        self.min_image_size = 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.pool(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    last_name = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name = name
    if last_name is None:
        raise ValueError(f"{type(model).__name__}: no nn.Linear classifier to replace")
    parent_name, _, attr = last_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, attr, new)


def build_model(name: str, num_classes: int = 1000, pretrained: bool = False, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a network by name.

    ``"timm/<name>"`` (or a timm name that is not a torchvision one) -> :func:`build_timm`;
    ``"vit_tiny"`` -> :func:`vit_tiny`; ``image_size`` sets the input size of models that
    need one (ViTs), CNNs ignore it.
    ``"smallcnn"`` -> :class:`SmallCNN`, ``"smallvgg"`` -> :class:`SmallVGG`
    (``kwargs`` go to them); any torchvision
    classification model name (e.g. those in :data:`TORCHVISION_MODELS`) ->
    ``torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)``,
    then its last ``nn.Linear`` is replaced by a fresh one when
    ``num_classes != 1000``. Pretrained weights download into the torch hub
    cache when online (an error says so when offline).
    A segmentation name of :data:`~lightning_cam.seg_models.SEGMENTATION_MODELS` -> :class:`SmallSeg`
    or the torchvision network for ``num_classes`` (random weights unless ``pretrained``:
    :func:`~lightning_cam.seg_models.segmentation_weights`).
    """
    key = name.lower()
    small = {"smallcnn": SmallCNN, "smallvgg": SmallVGG, "smallseg": SmallSeg}
    if key in small:
        if pretrained:
            raise ValueError(f"{key} has no pretrained weights; set model.pretrained=false")
        return small[key](num_classes=num_classes, **kwargs)
    if key == "vit_tiny":
        if pretrained:
            raise ValueError("vit_tiny has no pretrained weights; set model.pretrained=false")
        return vit_tiny(num_classes=num_classes, **({"image_size": image_size} if image_size else {}), **kwargs)
    import torchvision

    available = set(torchvision.models.list_models(module=torchvision.models))
    segmentation = key in SEGMENTATION_MODELS
    if key.startswith(TIMM_PREFIX) or (key not in available and not segmentation and _is_timm_model(name)):
        return build_timm(name, num_classes, pretrained, image_size, **kwargs)
    if key not in available and not segmentation:
        known = ", ".join(["smallcnn", "smallvgg", "vit_tiny", *TORCHVISION_MODELS, *SEGMENTATION_MODELS])
        raise ValueError(
            f"Unknown model {name!r}. Known: {known} (or any torchvision classification model, "
            "or a timm model as timm/<name>)."
        )
    if image_size is not None and key.startswith("vit_") and not pretrained:
        kwargs.setdefault("image_size", image_size)
    if segmentation:
        kwargs = {**segmentation_weights(num_classes, pretrained), **kwargs}
    else:
        kwargs["weights"] = "DEFAULT" if pretrained else None
    try:
        net = torchvision.models.get_model(key, **kwargs)
    except Exception as err:  # noqa: BLE001 - make offline downloads understandable
        if pretrained and ("URL" in type(err).__name__ or "urlopen" in str(err) or "resolve" in str(err).lower()):
            raise RuntimeError(
                f"Could not download the pretrained weights of {key} (offline?): {err}. "
                "Put them in the torch hub cache (~/.cache/torch/hub/checkpoints) or set model.pretrained=false."
            ) from err
        raise
    if num_classes != 1000 and not segmentation:
        _replace_last_linear(net, num_classes)
    return net


def _is_timm_model(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(name))


class LitClassifier(LitBase):
    """Image classifier: cross-entropy, accuracy, configurable optimizer and scheduler.

    Args:
        net: the network (``nn.Module``); stored as ``self.net``.
        num_classes: number of classes (for the accuracy metric).
        lr, weight_decay: optimizer settings.
        optimizer: ``"adamw"`` (default), ``"adam"`` or ``"sgd"`` (momentum ``momentum``, nesterov).
        scheduler: ``"cosine"`` (per-epoch cosine to 0 over ``trainer.max_epochs``),
            ``"onecycle"`` (per step), or ``"none"``.
        label_smoothing: cross-entropy label smoothing.
        compile: wrap ``net`` with ``torch.compile`` in ``setup("fit")``
            (explanations still hook the original module).

    Batches are ``(images, labels)`` or ``(images, labels, masks)``.
    """

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_loss(stage, loss, x.shape[0])
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=stage != "train", batch_size=x.shape[0])
        return loss


__all__ = [
    "DEFAULT_TARGET_LAYERS",
    "SEGMENTATION_MODELS",
    "TORCHVISION_MODELS",
    "LitClassifier",
    "LitMultiLabel",
    "LitSegmenter",
    "SmallCNN",
    "SmallSeg",
    "SmallVGG",
    "build_model",
    "build_timm",
    "timm_image_size",
    "vit_tiny",
]

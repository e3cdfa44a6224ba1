"""SmallCNN, build_model for the torchvision architectures, LitClassifier."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_cam.layers import resolve_layer
from lightning_cam.models import DEFAULT_TARGET_LAYERS, TORCHVISION_MODELS, LitClassifier, SmallCNN, build_model


def test_smallcnn_is_cam_ready():
    net = SmallCNN(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    assert net(x).shape == (2, 5)
    feats = net.features(x)
    assert feats.shape == (2, 128, 8, 8)
    # GAP -> Linear right after the features: the original CAM applies
    assert isinstance(net.avgpool, nn.AdaptiveAvgPool2d) and isinstance(net.classifier, nn.Linear)
    assert net.eval()(torch.randn(1, 3, 8, 8)).shape == (1, 5)  # smallest size
    assert sum(p.numel() for p in net.parameters()) < 500_000


@pytest.mark.parametrize("name", sorted(TORCHVISION_MODELS))
def test_build_model_replaces_classifier_and_has_target_layer(name):
    with torch.device("meta"):  # structure only: cheap for the big ones
        net = build_model(name, num_classes=7, pretrained=False)
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7
    qual, module = resolve_layer(net, DEFAULT_TARGET_LAYERS[name])
    assert qual == DEFAULT_TARGET_LAYERS[name]
    out = net(torch.empty(2, 3, 64, 64, device="meta"))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_build_model_real_forward_and_default_layer(name):
    from lightning_cam.layers import default_target_layer

    torch.manual_seed(0)
    net = build_model(name, num_classes=3).eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert default_target_layer(net) == DEFAULT_TARGET_LAYERS[name]


def test_build_model_keeps_1000_classes_and_rejects_unknown():
    with torch.device("meta"):
        net = build_model("resnet18", num_classes=1000)
    assert net.fc.out_features == 1000
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("resnet9000", 10)
    with pytest.raises(ValueError, match="pretrained"):
        build_model("smallcnn", 10, pretrained=True)


def test_lit_classifier_forward_steps_and_layer_suffix():
    model = LitClassifier(SmallCNN(4, widths=(8, 16, 16)), num_classes=4, lr=1e-2)
    x = torch.randn(6, 3, 16, 16)
    assert model(x).shape == (6, 4)
    assert model.net.features is resolve_layer(model, "features")[1]  # suffix match "net.features"
    batch = (x, torch.randint(0, 4, (6,)), torch.zeros(6, 16, 16, dtype=torch.bool))
    loss = model.training_step(batch, 0)
    assert loss.ndim == 0 and loss.requires_grad
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)


@pytest.mark.parametrize("optimizer,scheduler", [("sgd", "cosine"), ("adam", "none"), ("adamw", "onecycle")])
def test_lit_classifier_fits_a_tiny_problem(optimizer, scheduler):
    pl.seed_everything(0)
    from torch.utils.data import DataLoader, TensorDataset

    y = torch.arange(64) % 2
    x = torch.randn(64, 3, 16, 16)
    x[:, 0] += (2 * y - 1).view(-1, 1, 1).float()  # class = brightness of channel 0
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    model = LitClassifier(SmallCNN(2, widths=(8, 16, 16)), num_classes=2, lr=1e-2, optimizer=optimizer, scheduler=scheduler)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dl, dl)
    m = trainer.callback_metrics
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert key in m
    assert float(m["val/acc"]) > 0.7


def test_lit_classifier_rejects_bad_optimizer():
    with pytest.raises(ValueError):
        LitClassifier(SmallCNN(2), 2, optimizer="lbfgs")
    with pytest.raises(ValueError):
        LitClassifier(SmallCNN(2), 2, scheduler="step")


def test_timm_hrnet_default_layer_is_after_the_branches_are_fused():
    """timm's last ``feature_info`` stage of HRNet (``stage4``) outputs a list of branches: the default
    layer is ``final_layer``, the fused map that feeds the classifier."""
    timm = pytest.importorskip("timm")
    import warnings

    from lightning_cam import LiftCAM, evaluate
    from lightning_cam.layers import default_target_layer

    torch.manual_seed(0)
    net = timm.create_model("hrnet_w18_small", pretrained=False, num_classes=4).eval()
    assert default_target_layer(net) == "final_layer"
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every op of the head has a DeepLIFT rule
        exp = LiftCAM(net).explain(x)
    assert exp.maps.shape == (2, 2, 2) and torch.isfinite(exp.weights).all()
    report = evaluate(net, None, x, methods=["liftcam", "gradcam"], n_steps=4)
    assert set(report.methods) >= {"liftcam", "gradcam"}

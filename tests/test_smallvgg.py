"""The VGG-style model with a nonlinear head, and how the app refuses CAM on it."""

from __future__ import annotations

import pytest
import torch

from lightning_cam import explain_all
from lightning_cam.app import ConfigError, validate_config
from lightning_cam.methods.cam import head_is_gap_linear
from lightning_cam.models import build_model
from tests.test_conf import _offline, make_cfg  # noqa: F401 - fixture


@pytest.mark.parametrize("name,layer,expected", [("smallcnn", "features", True), ("smallvgg", "features", False), ("resnet18", "layer4", True), ("vgg16", "features.29", False)])
def test_head_is_gap_linear(name, layer, expected):
    with torch.device("meta"):
        model = build_model(name, 6)
    assert head_is_gap_linear(model, layer) is expected


def test_smallvgg_liftcam_differs_from_gradcam_and_cam_refuses():
    torch.manual_seed(0)
    model = build_model("smallvgg", 6, widths=(8, 8, 8, 8)).eval()
    x = torch.randn(2, 3, 32, 32)
    exps = explain_all(model, "features", x, methods=["liftcam", "gradcam"])
    assert float(exps["liftcam"].delta.abs().max()) <= 1e-5 * (1 + float(exps["liftcam"].logits.abs().max()))
    mean_activation = model.features(x).mean(dim=(2, 3))
    assert not torch.allclose(exps["liftcam"].weights, exps["gradcam"].weights * mean_activation, rtol=1e-2)
    with pytest.raises(ValueError, match="CAM needs global average pooling"):
        explain_all(model, "features", x, methods=["cam"])


def test_app_refuses_cam_for_smallvgg(tmp_path):
    validate_config(make_cfg(tmp_path, "model=smallvgg", "cam.methods=[liftcam,gradcam]"))
    with pytest.raises(ConfigError, match="cam.methods contains 'cam'.*smallvgg"):
        validate_config(make_cfg(tmp_path, "model=smallvgg", "cam.methods=[liftcam,cam]"))
    validate_config(make_cfg(tmp_path, "cam.methods=[liftcam,cam]"))  # smallcnn: GAP + Linear


def test_callback_fuses_a_list_of_layers_and_runs_the_new_methods(tmp_path):
    """A real Trainer: target_layer=[two layers] is fused; the new methods run at the epoch end."""
    import pytorch_lightning as pl

    from lightning_cam.callback import CAMCallback
    from tests._callback_helpers import LitTiny, ToyDataModule, trainer_kwargs

    pl.seed_everything(0)
    methods = ["gradcam", "eigencam", "gradcamelementwise", "randomcam", "iscam"]
    cb = CAMCallback(target_layer=["features", "layer4"], fusion="mean", methods=methods, num_samples=4, log_images=False, on_error="raise", max_overhead=None,
                     method_kwargs={"iscam": {"num_samples": 2}})
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule())
    assert cb.layer_names == {"features": "net.features", "layer4": "net.layer4"}
    assert not cb.layer_in_key  # fused: one map per method, keys without the layer
    assert cb.num_errors == 0
    for m in methods:
        assert 0.0 <= float(cb.last_scalars[f"cam/{m}/insertion"]) <= 1.0


def test_evaluator_fuses_layers_like_explain_all():
    """evaluate(fusion="max") reports one layer "a+b" whose maps are explain_all's fused maps."""
    from lightning_cam import explain_all
    from lightning_cam.callback import evaluate
    from tests._callback_helpers import LitTiny

    torch.manual_seed(0)
    model = LitTiny().eval()
    x = torch.randn(3, 3, 16, 16)
    report = evaluate(model, ["features", "layer4"], x, methods=["gradcam"], fusion="max", curves=False)
    assert list(report.layers) == ["features+layer4"]
    fused = explain_all(model, ["features", "layer4"], x, methods=["gradcam"], fusion="max")["gradcam"]
    # the same kernels on the same shapes: identical maps
    assert torch.equal(report["gradcam"].maps, fused.maps)
    with pytest.raises(ValueError, match="fusion must be None or one of"):
        evaluate(model, ["features", "layer4"], x, methods=["gradcam"], fusion="sum")

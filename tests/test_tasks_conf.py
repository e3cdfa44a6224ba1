"""The segmentation and multi-label configs compose with Hydra, validate, instantiate and train a step."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from test_conf import TINY, _offline, make_cfg  # noqa: F401 - _offline: W&B offline, Hydra cleared (autouse)
from test_train import run_train

import lightning_cam.app as app
from lightning_cam.app import ConfigError, validate_config
from lightning_cam.layers import resolve_layer
from lightning_cam.models import LitMultiLabel, LitSegmenter


def _one_step(cfg, tmp_path) -> dict[str, float]:
    dm = app.instantiate_datamodule(cfg)
    lit = app.instantiate_model(cfg)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(lit, datamodule=dm)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_segmentation_experiment_composes_and_trains_a_step(tmp_path):
    cfg = make_cfg(tmp_path, "experiment=segmentation", *TINY)
    assert cfg.model.name == "smallseg" and cfg.data.name == "shapes_segmentation" and cfg.data.num_classes == 7
    assert cfg.optimized_metric == "val/iou" == cfg.callbacks.model_checkpoint.monitor
    assert cfg.cam.target_layer == "features"
    validate_config(cfg)
    lit = app.instantiate_model(cfg)
    assert isinstance(lit, LitSegmenter) and resolve_layer(lit, cfg.cam.target_layer)[0] == "net.features"
    metrics = _one_step(cfg, tmp_path)
    assert {"val/iou", "val/acc", "train/loss"} <= set(metrics)


def test_multilabel_experiment_composes_and_trains_a_step(tmp_path):
    cfg = make_cfg(tmp_path, "experiment=multilabel", *TINY)
    assert cfg.data.task == "multilabel" and cfg.data.max_objects == 3 and cfg.optimized_metric == "val/f1"
    validate_config(cfg)
    assert isinstance(app.instantiate_model(cfg), LitMultiLabel)
    metrics = _one_step(cfg, tmp_path)
    assert {"val/f1", "val/map", "val/acc"} <= set(metrics)


@pytest.mark.parametrize("model", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50"])
def test_torchvision_segmentation_models_in_the_experiment(model, tmp_path):
    cfg = make_cfg(tmp_path, "experiment=segmentation", f"model={model}", *TINY[:-1], "model.image_size=64")
    validate_config(cfg)  # meta-device forward, target layer resolves
    with torch.device("meta"):
        lit = app.instantiate_model(cfg)
    assert resolve_layer(lit, cfg.cam.target_layer)[0] == "net." + cfg.model.target_layer


def test_lraspp_trains_a_step(tmp_path):
    cfg = make_cfg(tmp_path, "experiment=segmentation", "model=lraspp_mobilenet_v3_large", *TINY[:-1], "model.image_size=32")
    assert "val/iou" in _one_step(cfg, tmp_path)


@pytest.mark.parametrize(("overrides", "message"), [
    (("model=smallseg",), "is a segmentation network but data.task=classification"),
    (("data=shapes_segmentation",), "data.task=segmentation needs a segmentation network"),
    (("data=shapes_multilabel",), "model.module._target_=lightning_cam.models.LitMultiLabel"),
    (("experiment=multilabel", "model=smallseg"), "is a segmentation network but data.task=multilabel"),
    (("experiment=segmentation", "data.num_classes=8"), "must be in 3..7"),
])
def test_a_model_that_does_not_fit_the_task_fails_fast(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        validate_config(make_cfg(tmp_path, *overrides))


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "metric"), [("segmentation", "val/iou"), ("multilabel", "val/f1")])
def test_train_py_runs_the_experiment(experiment, metric, tmp_path):
    """``python train.py experiment=...`` end to end, without the CAM callback (cam=none)."""
    args = [f"experiment={experiment}", "cam=none", "logger=csv", "data.num_train=64", "data.num_val=32",
            "data.batch_size=32", "model.image_size=32", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    p = run_train(args, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert metric in metrics and f"optimized_metric ({metric})" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "metric"), [("segmentation", "val/iou"), ("multilabel", "val/f1")])
def test_train_py_explains_the_experiment_in_wandb(experiment, metric, tmp_path):
    """``python train.py experiment=...`` with the CAM callback: its maps and scores in the offline W&B run
    (segmentation: the predicted object class over its region; multi-label: one row per positive label)."""
    from wandb_offline import find_run_files, read_run_file

    args = [f"experiment={experiment}", "data.num_train=64", "data.num_val=32", "data.batch_size=32",
            "model.image_size=32", "trainer.max_epochs=1", "cam.num_samples=6", "cam.methods=[liftcam,gradcam]",
            f"hydra.run.dir={tmp_path / 'run'}"]
    p = run_train(args, tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "CAMCallback failed" not in p.stdout + p.stderr
    run = read_run_file(find_run_files(tmp_path / "run")[0])
    keys = run.keys()
    for method in ("liftcam", "gradcam"):
        for score in ("insertion", "deletion", "pointing_game", "energy/object"):
            assert f"cam/{method}/{score}" in keys, sorted(keys)
    assert metric in keys and run.media("images"), "the callback's heatmap grids should be in the W&B run"
    assert "cam/liftcam/completeness_residual" in keys
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    rows = metrics["cam/curve_images"]
    # at least min(8, rows) rows get curves: the 6 images, or, multi-label, more rows than images (1-3 labels each)
    assert rows == 6 if experiment == "segmentation" else rows > 6

"""Every config group composes with Hydra's compose API and instantiates; bad configs fail fast.

Cheap on purpose: tiny image sizes, few images, no download, nothing trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import lightning_cam.app as app
from lightning_cam.app import ConfigError, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    GlobalHydra.instance().clear()


def make_cfg(tmp_path: Path, *overrides: str, hydra_cfg: bool = True) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=hydra_cfg)
    if hydra_cfg:
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.work_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


TINY = ("data.num_train=8", "data.num_val=8", "data.num_test=4", "data.batch_size=4", "model.image_size=32")
# what a model / data config of another task needs beside it (see tests/test_tasks_conf.py)
SEGMENTATION_MODELS = ("smallseg", "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50")
TASK_DATA = {
    "shapes_segmentation": ("model=smallseg",),
    "shapes_multilabel": ("model.module._target_=lightning_cam.models.LitMultiLabel",),
}


def test_default_config(tmp_path):
    cfg = make_cfg(tmp_path)
    assert cfg.model.name == "smallcnn" and cfg.data.name == "shapes"
    assert cfg.cam.target_layer == cfg.model.target_layer == "features"
    assert cfg.data.image_size == cfg.model.image_size == 64
    assert list(cfg.cam.methods)[:2] == ["liftcam", "gradcam"]
    assert cfg.cam.mean == cfg.data.mean
    assert cfg.logger.wandb.mode == "offline"  # ${wandb_mode:auto} with WANDB_MODE=offline
    assert cfg.logger.wandb.save_dir == str(tmp_path)
    assert cfg.trainer.default_root_dir == str(tmp_path)
    assert cfg.callbacks.model_checkpoint.dirpath.startswith(str(tmp_path))
    assert "optuna" not in str(cfg.hydra.sweeper._target_).lower()
    validate_config(cfg)


def test_outputs_default_to_hydra_run_dir():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    raw = OmegaConf.to_container(cfg.paths, resolve=False)
    assert raw["output_dir"] == "${hydra:runtime.output_dir}"
    assert str(cfg.hydra.run.dir).startswith("outputs/train/runs/")
    assert cfg.hydra.job.chdir is False


@pytest.mark.parametrize("model", group_options("model"))
def test_model_configs(model, tmp_path):
    task = ("data=shapes_segmentation",) if model in SEGMENTATION_MODELS else ()
    cfg = make_cfg(tmp_path, f"model={model}", *task)
    assert cfg.model.name == model or model == "timm"  # model=timm takes model.name=<timm name>
    assert (cfg.model.target_layer or model == "timm") and cfg.model.image_size >= cfg.model.min_image_size
    validate_config(cfg)  # meta-device forward at the model's image size, target layer resolves
    if model in ("smallcnn", "resnet18", "mobilenet_v3_small"):
        cfg = make_cfg(tmp_path, f"model={model}", "model.image_size=64")
        lit = app.instantiate_model(cfg)
        from lightning_cam.layers import resolve_layer

        name, _ = resolve_layer(lit, cfg.cam.target_layer)
        assert name == "net." + cfg.model.target_layer
        with torch.no_grad():
            assert lit.eval()(torch.randn(1, 3, 64, 64)).shape == (1, cfg.data.num_classes)


def _fake_imagefolder(root: Path, n_classes: int = 3) -> Path:
    from PIL import Image

    for c in range(n_classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (60 * c, 20 * i, 90)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("data", group_options("data"))
def test_data_configs(data, tmp_path):
    extra = []
    if data == "imagefolder":
        root = _fake_imagefolder(tmp_path / "images")
        extra = [f"data.data_dir={root}", "data.num_classes=3", "data.num_workers=0"]
    tiny = TINY if data.startswith("shapes") else ("data.batch_size=4", "model.image_size=32")
    cfg = make_cfg(tmp_path, f"data={data}", *tiny, *extra, *TASK_DATA.get(data, ()))
    validate_config(cfg)
    dm = app.instantiate_datamodule(cfg)
    assert dm.num_classes == cfg.data.num_classes and dm.image_size == 32
    assert list(dm.mean) == list(cfg.data.mean)
    if data == "cifar10":
        assert dm.download is True and str(dm.data_dir).startswith(str(tmp_path))
        return  # no download in tests
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape[1:] == (3, 32, 32)
    if data in ("shapes", "shapes_segmentation"):
        assert batch[2].shape[1:] == (32, 32)


@pytest.mark.parametrize("cam", group_options("cam"))
def test_cam_configs(cam, tmp_path):
    cfg = make_cfg(tmp_path, f"cam={cam}")
    if cam == "none":
        assert app.instantiate_cam_callback(cfg) is None
        validate_config(cfg)
        return
    validate_config(cfg)
    cb = app.instantiate_cam_callback(cfg)
    from lightning_cam.callback import CAMCallback

    assert isinstance(cb, CAMCallback)
    assert type(cb).__name__ == "CAMCallback"


def test_cam_command_line_overrides(tmp_path):
    cfg = make_cfg(tmp_path, "model=resnet18", "cam.methods=[liftcam,gradcam]", "cam.target_layer=layer3")
    assert list(cfg.cam.methods) == ["liftcam", "gradcam"] and cfg.cam.target_layer == "layer3"
    validate_config(cfg)
    assert make_cfg(tmp_path, "model=vgg16_bn").cam.target_layer == "features.42"


@pytest.mark.parametrize("callbacks", group_options("callbacks"))
def test_callback_configs(callbacks, tmp_path):
    cfg = make_cfg(tmp_path, f"callbacks={callbacks}", "cam=none")
    cbs = app.instantiate_callbacks(cfg)
    names = {type(c).__name__ for c in cbs}
    if callbacks == "none":
        assert not cbs
    else:
        assert {"ModelCheckpoint", "RichProgressBar"} <= names


@pytest.mark.parametrize("logger", group_options("logger"))
def test_logger_configs(logger, tmp_path):
    cfg = make_cfg(tmp_path, f"logger={logger}", "group=g1")
    validate_config(cfg)
    loggers = app.instantiate_loggers(cfg)
    kinds = {type(lg).__name__ for lg in loggers}
    expected = {
        "wandb": {"WandbLogger"},
        "tensorboard": {"TensorBoardLogger"},
        "csv": {"CSVLogger"},
        "mlflow": {"MLFlowLogger"},
        "none": set(),
        "many": {"WandbLogger", "TensorBoardLogger", "CSVLogger"},
    }[logger]
    assert kinds == expected
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            assert lg._wandb_init["mode"] == "offline" and lg._wandb_init["group"] == "g1"
            assert lg.save_dir == str(tmp_path)
        if type(lg).__name__ == "MLFlowLogger":  # one sqlite store for every run under paths.log_dir
            assert lg._tracking_uri == f"sqlite:///{cfg.paths.log_dir}/mlflow.db"
    assert not list(tmp_path.glob("wandb/*run-*"))  # instantiating must not start a W&B run


@pytest.mark.parametrize("trainer", group_options("trainer"))
def test_trainer_configs(trainer, tmp_path):
    extra = ["trainer.accelerator=cpu"]
    if trainer in ("gpu",):
        cfg = make_cfg(tmp_path, f"trainer={trainer}")
        assert cfg.trainer.accelerator == "gpu"
    if trainer == "ddp":
        cfg = make_cfg(tmp_path, "trainer=ddp")
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2
    cfg = make_cfg(tmp_path, f"trainer={trainer}", *extra, "logger=none", "callbacks=none", "cam=none")
    t = app.instantiate_trainer(cfg)
    assert t.max_epochs == cfg.trainer.max_epochs
    if trainer == "ddp":
        assert type(t.strategy).__name__ == "DDPStrategy" and t.num_devices == 2


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_experiment_configs(experiment, tmp_path):
    cfg = make_cfg(tmp_path, f"experiment={experiment}")
    assert cfg.task_name == experiment
    if experiment == "paper":
        assert cfg.model.pretrained is True and cfg.model.image_size == 224 and cfg.train is False
        assert cfg.data.name == "imagefolder" and cfg.data.num_classes == 1000
        assert set(cfg.cam.methods) >= {"liftcam", "gradcam", "gradcam++", "xgradcam", "scorecam", "ablationcam"}
        assert cfg.hydra.sweeper.params.model == "vgg16,resnet50"
        assert cfg.group == "paper"
        with pytest.raises(ConfigError, match="imagefolder needs a folder"):
            validate_config(cfg)
        # with a (fake) ImageNet val folder it validates, evaluation only
        root = _fake_imagefolder(tmp_path / "val", n_classes=4)
        cfg = make_cfg(tmp_path, "experiment=paper", f"data.val_dir={root}", "data.num_classes=4")
        validate_config(cfg)
    else:
        validate_config(cfg)
        if experiment == "arch_compare":
            assert cfg.group == "arch_compare" and "resnet18" in cfg.hydra.sweeper.params.model
        if experiment in ("segmentation", "multilabel"):  # more in tests/test_tasks_conf.py
            assert cfg.data.task == experiment and cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric
        if experiment == "shortcut":
            assert cfg.test is True and cfg.data.shortcut == 1.0 and cfg.data.test_shortcut == 0.0
            dm = app.instantiate_datamodule(cfg)
            assert dm.shortcut == 1.0 and dm.test_shortcut == 0.0
        if experiment == "shortcut_class":  # the marker on circles only, every class's scalars, an alert
            dm = app.instantiate_datamodule(cfg)
            assert dm.shortcut == 1.0 and dm.test_shortcut == 0.0 and dm.shortcut_classes == (0,)
            cam = app.instantiate_cam_callback(cfg)
            assert cam.options.per_class == "all" and cam.options.alert == {"class/circle/energy/border": 0.38}
            assert cam.options.regions == {"border": 0.125, "center": (0.25, 0.25, 0.75, 0.75)}


@pytest.mark.parametrize("search", group_options("hparams_search"))
def test_hparams_search_configs(search, tmp_path):
    cfg = make_cfg(tmp_path, f"hparams_search={search}")
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric == ("cam/liftcam/insertion" if search == "optuna" else "val/acc")
    assert "model.module.lr" in cfg.hydra.sweeper.params
    validate_config(cfg)


@pytest.mark.parametrize("launcher", group_options("hydra/launcher"))
def test_launcher_configs(launcher, tmp_path):
    cfg = make_cfg(tmp_path, f"hydra/launcher={launcher}")
    target = cfg.hydra.launcher._target_
    assert ("Joblib" in target) if launcher.startswith("joblib") else ("submitit" in target.lower())
    if launcher == "slurm":
        assert "SlurmLauncher" in target and cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices


@pytest.mark.parametrize("debug", group_options("debug"))
def test_debug_configs(debug, tmp_path):
    cfg = make_cfg(tmp_path, f"debug={debug}")
    assert cfg.trainer.max_epochs == 1 and "CSVLogger" in cfg.logger.csv._target_
    validate_config(cfg)


# ---------------------------------------------------------------- bad configs
def test_unknown_method_lists_allowed(tmp_path):
    cfg = make_cfg(tmp_path, "cam.methods=[liftcam,gradcamm]")
    with pytest.raises(ConfigError, match=r"Unknown CAM method 'gradcamm'.*Allowed: liftcam, cam, gradcam"):
        validate_config(cfg)


def test_unknown_layer_lists_candidates(tmp_path):
    cfg = make_cfg(tmp_path, "model=resnet18", "cam.target_layer=layer5")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "Unknown target layer 'layer5'" in msg and "layer4 (512x4x4)" in msg and "layer3" in msg


def test_image_too_small(tmp_path):
    with pytest.raises(ConfigError, match="too small for model 'resnet18'"):
        validate_config(make_cfg(tmp_path, "model=resnet18", "model.image_size=16"))  # below min_image_size
    with pytest.raises(ConfigError, match=r"gives a 1x1 map"):
        validate_config(make_cfg(tmp_path, "model=resnet18", "model.image_size=32"))  # layer4 is 1x1
    validate_config(make_cfg(tmp_path, "model=resnet18", "model.image_size=32", "cam.target_layer=layer3"))
    with pytest.raises(ConfigError, match="too small for model 'smallcnn'"):
        validate_config(make_cfg(tmp_path, "model.image_size=4"))


def test_missing_imagefolder_path(tmp_path):
    cfg = make_cfg(tmp_path, "data=imagefolder", f"data.data_dir={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="ImageFolder path not found: data.data_dir="):
        validate_config(cfg)


def test_wandb_online_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    # auto -> offline without credentials
    assert make_cfg(tmp_path).logger.wandb.mode == "offline"
    cfg = make_cfg(tmp_path, "logger.wandb.mode=online")
    with pytest.raises(ConfigError, match=r"no credentials.*logger.wandb.mode=offline"):
        validate_config(cfg)
    # with credentials (netrc from `wandb login`) online is fine and auto becomes online
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    validate_config(make_cfg(tmp_path, "logger.wandb.mode=online"))
    assert make_cfg(tmp_path).logger.wandb.mode == "online"


def test_sweep_metric_needs_the_method(tmp_path):
    with pytest.raises(ConfigError, match="not in cam.methods"):
        validate_config(make_cfg(tmp_path, "optimized_metric=cam/scorecam/insertion"))
    with pytest.raises(ConfigError, match="needs the CAM callback"):
        validate_config(make_cfg(tmp_path, "cam=none", "optimized_metric=cam/liftcam/insertion"))


def test_all_problems_reported_together(tmp_path):
    cfg = make_cfg(tmp_path, "cam.methods=[nope]", "data=imagefolder", "model=resnet18", "cam.target_layer=zzz")
    with pytest.raises(ConfigError, match=r"\(3 problems\)"):
        validate_config(cfg)


def test_timm_model_config_takes_any_timm_name(tmp_path):
    pytest.importorskip("timm")
    cfg = make_cfg(tmp_path, "model=timm", "model.name=deit_tiny_patch16_224")
    assert cfg.model.image_size == 224 and cfg.model.module.net.name == "timm/deit_tiny_patch16_224"
    validate_config(cfg)
    cfg = make_cfg(tmp_path, "model=timm", "model.name=vit_tiny_patch16_224", "model.image_size=32")
    lit = app.instantiate_model(cfg)
    from lightning_cam.layers import default_target_layer

    assert default_target_layer(lit) == "net.blocks.11.norm1"
    with torch.no_grad():
        assert lit.eval()(torch.randn(1, 3, 32, 32)).shape == (1, cfg.data.num_classes)


def test_sweep_comparison_callback_is_configured(tmp_path):
    cfg = make_cfg(tmp_path)
    node = cfg.hydra.callbacks.sweep_comparison
    assert node._target_ == "lightning_cam.app.sweep.SweepComparison" and node.enabled
    from hydra.utils import instantiate

    assert type(instantiate(node)).__name__ == "SweepComparison"


def test_cam_extra_metrics_override(tmp_path):
    cfg = make_cfg(tmp_path, *TINY, "cam.extra_metrics=[road,max_sensitivity]")
    validate_config(cfg)
    assert app.instantiate_cam_callback(cfg).options.extra_metrics == ("road", "max_sensitivity")
    with pytest.raises(Exception, match="unknown extra_metrics entry 'raod'"):
        app.instantiate_cam_callback(make_cfg(tmp_path, *TINY, "cam.extra_metrics=[raod]"))

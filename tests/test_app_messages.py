"""What a newcomer sees: plain-text errors with the user's names and an example, a dataset
that cannot be downloaded, the config tree without silent cuts, no leftovers of a failed config."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_cam.app.rich_utils import print_config_tree, print_error
from lightning_cam.app.runner import remove_run_dir_of_failed_config
from lightning_cam.data import CIFAR10DataModule, DatasetUnavailableError

from test_conf import make_cfg  # noqa: F401  (real Hydra composition)


def _flat(text: str) -> str:
    """Panel/tree output with the box characters and line breaks removed."""
    return "".join(text.replace("│", "").replace("╭", "").replace("╰", "").split())


def test_errors_print_brackets_verbatim(capsys):
    print_error("Unknown CAM method 'x'. Example: cam.methods=[liftcam,gradcam] and [bold]not markup[/bold]")
    err = capsys.readouterr().err
    assert "cam.methods=[liftcam,gradcam]" in _flat(err)
    assert "[bold]notmarkup[/bold]" in _flat(err)


def test_unknown_layer_names_the_users_model_and_gives_an_example(tmp_path):
    from lightning_cam.app import ConfigError, validate_config

    cfg = make_cfg(tmp_path, "model=resnet18", "cam.target_layer=layer5")
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    msg = str(info.value)
    assert "_Holder" not in msg and "(ResNet)" in msg and "Did you mean" in msg
    assert "Example: python train.py model=resnet18 cam.target_layer=layer4" in msg


def test_library_unknown_layer_gives_an_example():
    import torchvision

    from lightning_cam.layers import resolve_layer

    with pytest.raises(ValueError, match=r"for ResNet\..*Example: target_layer='layer4'"):
        resolve_layer(torchvision.models.resnet18(weights=None), "layer5")


@pytest.mark.parametrize(("typo", "meant"), [("liftcma", "'liftcam'"), ("gradcamp", "'gradcam++'"), ("hirescma", "'hirescam'")])
def test_unknown_method_says_did_you_mean(typo, meant):
    from lightning_cam.methods import get_method

    with pytest.raises(ValueError, match=rf"Unknown CAM method '{typo}'\. Did you mean {re.escape(meant)}.*\? Allowed: liftcam"):
        get_method(typo)
    with pytest.raises(ValueError, match=r"'zzz'\. Allowed: "):  # nothing close: no guess
        get_method("zzz")


def test_cifar10_offline_is_a_clear_message(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", no_network)
    empty = tmp_path / "data"
    dm = CIFAR10DataModule(data_dir=str(empty), download=True)
    with pytest.raises(DatasetUnavailableError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "CIFAR-10 is not available" in msg and str(empty.resolve()) in msg
    assert "cifar-10-batches-py" in msg and "tar -xzf cifar-10-python.tar.gz" in msg
    assert "URLError" in msg and "data.data_dir" in msg and "data=shapes" in msg
    # without download: the same message, not torchvision's bare RuntimeError
    with pytest.raises(DatasetUnavailableError, match="could not be downloaded"):
        CIFAR10DataModule(data_dir=str(empty), download=False).prepare_data()


def test_config_tree_never_cuts_long_values(tmp_path, capsys):
    long_path = "/" + "/".join(f"folder_{i:02d}_with_a_long_name" for i in range(12)) + "/2026-11-25_21-45-59"
    cfg = OmegaConf.create({"paths": {"output_dir": long_path}, "trainer": {"default_root_dir": long_path}})
    print_config_tree(cfg, save_to=tmp_path / "config_tree.log")
    saved = (tmp_path / "config_tree.log").read_text()
    assert f"output_dir: {long_path}" in saved and f"default_root_dir: {long_path}" in saved
    assert not any(len(line) > 400 for line in saved.splitlines())  # no padding to the file console's width
    assert long_path.replace("/", "") in _flat(capsys.readouterr().out).replace("/", "")


def test_failed_config_leaves_no_run_folder(tmp_path):
    run = tmp_path / "outputs" / "train" / "runs" / "2026-11-25_21-45-59"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("x: 1\n")
    (run / "train.log").write_text("")
    (tmp_path / "keep.txt").write_text("the user's file")
    assert remove_run_dir_of_failed_config(run, "train", stop_at=tmp_path)
    assert not (tmp_path / "outputs").exists() and (tmp_path / "keep.txt").is_file()
    # a folder with anything else in it is kept
    other = tmp_path / "outputs" / "train" / "runs" / "b"
    (other / "checkpoints").mkdir(parents=True)
    assert not remove_run_dir_of_failed_config(other, "train", stop_at=tmp_path) and other.is_dir()


def test_metrics_json_takes_the_cam_keys_of_one_evaluation():
    """A key the last evaluation did not log (say its images were all non-finite) must not pair an
    older epoch's value with the newer ones: the CAM keys come from the callback's last evaluation."""
    from types import SimpleNamespace

    import torch

    from lightning_cam import CAMCallback
    from lightning_cam.app.runner import _scalar_metrics

    cb = CAMCallback()
    cb.last_scalars, cb.last_epoch = {"cam/liftcam/average_drop": 3.0, "cam/nonfinite_images": 0.0}, 4
    trainer = SimpleNamespace(callbacks=[cb], callback_metrics={
        "val/acc": torch.tensor(0.9), "cam/liftcam/insertion": torch.tensor(0.7),  # from epoch 3
        "cam/liftcam/average_drop": torch.tensor(3.0), "cam/nonfinite_images": torch.tensor(0.0),
    })
    got = _scalar_metrics(trainer)
    assert got == pytest.approx({"val/acc": 0.9, "cam/liftcam/average_drop": 3.0, "cam/nonfinite_images": 0.0,
                                 "cam/epoch": 4.0})

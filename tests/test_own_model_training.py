"""CAMCallback on models as users train them: every Lightning precision, non-tensor outputs,
a diverging (NaN) model, explaining the true label."""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from lightning_cam import CAMCallback
from lightning_cam.outputs import select_scores
from tests._callback_helpers import (  # noqa: F401
    LitTiny,
    TinyNet,
    ToyDataModule,
    ToyShapes,
    one_torch_thread,
    trainer_kwargs,
)

PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _trainer(tmp_path, callback, accelerator="cpu", **kw) -> pl.Trainer:
    kw = dict(dict(max_epochs=1, limit_train_batches=2), **kw)
    return pl.Trainer(**trainer_kwargs(tmp_path, accelerator=accelerator, **kw), callbacks=[callback])


def _cam_scalars(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("cam/")}


@pytest.mark.parametrize("accelerator", DEVICES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_fit_in_every_precision_gives_finite_cam_scores(tmp_path, precision, accelerator) -> None:
    callback = CAMCallback(
        target_layer="layer4", methods=["liftcam", "gradcam", "scorecam"], num_samples=6, on_error="raise",
        max_overhead=None,
    )
    try:
        trainer = _trainer(tmp_path, callback, accelerator=accelerator, precision=precision)
    except (ValueError, RuntimeError) as error:  # Lightning refuses the precision on this accelerator
        pytest.skip(f"{precision} on {accelerator}: {error}")
    trainer.fit(LitTiny(), ToyDataModule(n_train=16, n_val=8))
    scalars = _cam_scalars(trainer)
    for method in ("liftcam", "gradcam", "scorecam"):
        for key in ("insertion", "deletion", "average_drop", "increase_in_confidence", "pointing_game"):
            assert f"cam/{method}/{key}" in scalars, (precision, sorted(scalars))
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    assert not bad, (precision, bad)
    assert scalars["cam/nonfinite_images"] == 0
    assert callback.num_errors == 0


# --------------------------------------------------------------------------- non-tensor outputs
@dataclasses.dataclass
class ImageClassifierOutput:
    """Hugging Face's output convention (transformers' ImageClassifierOutput), without transformers."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class LitWrapped(LitTiny):
    """LitTiny whose forward wraps the logits: HF-style object, dict with "logits", or dict with "scores"."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x):
        logits = self.net(x)
        if self.kind == "hf":
            return ImageClassifierOutput(logits=logits)
        return {"logits": logits} if self.kind == "dict" else {"scores": logits, "aux": logits.sum()}

    def _logits(self, x):
        out = self(x)
        return out.logits if self.kind == "hf" else out["logits" if self.kind == "dict" else "scores"]

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self._logits(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self._logits(batch[0]), batch[1]))


@pytest.mark.parametrize("kind", ["hf", "dict", "scores"])
def test_fit_with_hf_style_and_dict_outputs(tmp_path, kind) -> None:
    transform = partial(select_scores, key="scores") if kind == "scores" else None
    callback = CAMCallback(
        target_layer="layer4", methods=["liftcam", "scorecam"], num_samples=6, on_error="raise", max_overhead=None,
        output_transform=transform,
    )
    trainer = _trainer(tmp_path, callback)
    trainer.fit(LitWrapped(kind), ToyDataModule(n_train=16, n_val=8))
    scalars = _cam_scalars(trainer)
    assert "cam/liftcam/insertion" in scalars and "cam/scorecam/average_drop" in scalars
    assert all(math.isfinite(v) for v in scalars.values()), scalars
    assert scalars["cam/nonfinite_images"] == 0
    # LIFT-CAM's completeness through the wrapped output, at float32 precision: one rounding per term of
    # the K*h*w = 8*8*8 sum (plus the head's few), relative to the size of the logits
    model = trainer.lightning_module
    with torch.no_grad():
        logits = model.net(callback.heldout.images.float())
    tol = (8 * 8 * 8 + 64) * 2.0**-23 * max(1.0, float(logits.abs().max()))
    assert float(callback.last_report["liftcam"].completeness_residual.max()) <= tol


def test_unreadable_output_fails_with_the_option_to_pass(tmp_path) -> None:
    callback = CAMCallback(target_layer="layer4", num_samples=4, on_error="raise", max_overhead=None)
    trainer = _trainer(tmp_path, callback)
    with pytest.raises(RuntimeError, match=r"dict with keys \['scores', 'aux'\].*output_transform="):
        trainer.fit(LitWrapped("scores"), ToyDataModule(n_train=16, n_val=8))
    with pytest.raises(TypeError, match="output_transform must be None or a callable"):
        CAMCallback(output_transform="scores")


# --------------------------------------------------------------------------- a diverging model
class BrightNaNNet(TinyNet):
    """TinyNet whose logits are NaN on images with a pixel above 50 (a diverging model, per image)."""

    def forward(self, x):
        out = super().forward(x)
        bad = x.flatten(1).amax(dim=1) > 50
        return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)


class LitNaN(LitTiny):
    def __init__(self) -> None:
        super().__init__()
        self.net = BrightNaNNet()


def test_nan_model_images_left_out_counted_and_warned_once_per_epoch(tmp_path) -> None:
    data = ToyShapes(8, seed=2)
    images = data.images.clone()
    images[[1, 4], 0, 0, 0] = 100.0
    callback = CAMCallback(
        target_layer="layer4", methods=["liftcam", "gradcam"], images=images, labels=data.labels, masks=data.masks,
        on_error="raise", max_overhead=None,
    )
    trainer = _trainer(tmp_path, callback, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(LitNaN(), ToyDataModule(n_train=16, n_val=8))
    msgs = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert len(msgs) == 2, msgs  # one per evaluation
    assert "2 of 8 held-out images" in msgs[0] and "epoch 0" in msgs[0] and "epoch 1" in msgs[1]
    scalars = _cam_scalars(trainer)
    assert scalars["cam/nonfinite_images"] == 2
    assert all(math.isfinite(v) for v in scalars.values()), scalars
    report = callback.last_report
    assert report.nonfinite.tolist() == [i in (1, 4) for i in range(8)]
    ok = ~report.nonfinite
    for metric in ("insertion", "deletion", "average_drop", "pointing_game"):
        values = getattr(report["liftcam"], metric)
        assert scalars[f"cam/liftcam/{metric}"] == pytest.approx(float(values[ok].double().nanmean()))
    assert not torch.isfinite(report["liftcam"].insertion[~ok]).any()  # per image, the NaN stays visible


# --------------------------------------------------------------------------- explaining the label
def test_target_label_explains_the_label_and_marks_mistakes(tmp_path) -> None:
    from lightning_cam import explain_all
    from lightning_cam.callback import sinks

    data = ToyShapes(6, seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # whatever the model predicts, most of these are mistakes
    callback = CAMCallback(
        target_layer="layer4", methods=["liftcam", "gradcam"], images=data.images, labels=labels, target="label",
        on_error="raise", max_overhead=None, save_png=True,
    )
    model = LitTiny()
    trainer = _trainer(tmp_path, callback, limit_train_batches=1)
    trainer.fit(model, ToyDataModule(n_train=16, n_val=8))
    report = callback.last_report
    assert torch.equal(report.targets, labels)
    wrong = report.misclassified()
    assert bool(wrong.any()), report.predictions
    # the maps are the label's: those of explaining the labels directly, not those of the prediction
    by_label = explain_all(model, "layer4", data.images, methods=["liftcam", "gradcam"], targets=labels)
    by_pred = explain_all(model, "layer4", data.images, methods=["liftcam", "gradcam"])
    for m in ("liftcam", "gradcam"):
        torch.testing.assert_close(report[m].saliency, by_label[m].saliency())
        differs = [not torch.allclose(report[m].saliency[i], by_pred[m].saliency()[i]) for i in range(6) if wrong[i]]
        assert any(differs), m
    probs = by_pred["liftcam"].logits.softmax(1)
    torch.testing.assert_close(report.confidence, probs.gather(1, labels[:, None])[:, 0])  # p(label)
    assert (report.confidence[wrong] < probs.max(1).values[wrong]).all()
    # the table / CSV marks the mistakes and names both classes; the grids show both classes
    rows = list(csv.reader(open(next((tmp_path / "cam").glob("epoch0_scores.csv")))))
    header, body = rows[0], rows[1:]
    assert header[:6] == ["index", "label", "prediction", "misclassified", "explained", "confidence"]
    assert [r[3] == "True" for r in body] == wrong.tolist()
    assert [r[4] for r in body] == [r[1] for r in body]  # the explained class is the label
    media = sinks.Media(report=report, held=callback.heldout, stage="val", prefix="cam", epoch=0, step=0,
                        class_names=["tl", "tr", "bl"], target="label")
    cols = media.column_labels()
    assert all(("WRONG" in c) == bool(w) for c, w in zip(cols, wrong.tolist()))
    assert cols[1].startswith("label 1: tr\npred ")


def test_target_option_checked_and_in_the_app_config(tmp_path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    with pytest.raises(ValueError, match="target must be 'prediction'.*'label'.*built-in.*got 'labels'"):
        CAMCallback(target="labels")
    with pytest.raises(ValueError, match="images were given without labels"):
        CAMCallback(target="label", images=torch.zeros(2, 3, 8, 8))
    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[
            "cam.target=label",
            "cam.output_transform={_target_:lightning_cam.outputs.select_scores,_partial_:true,key:scores}",
        ])
    GlobalHydra.instance().clear()
    assert cfg.cam.target == "label"
    node = {k: v for k, v in cfg.cam.items() if k != "enabled"}
    callback = instantiate(node, mean=None, std=None, target_layer=None)
    assert callback.options.target == "label"
    assert callback.options.output_transform({"scores": 7}) == 7
    from lightning_cam.app import ConfigError, validate_config  # noqa: F401

    with open_dict(cfg):
        cfg.cam.target = "truth"
    from lightning_cam.app.validation import _check_methods

    errors: list[str] = []
    _check_methods(cfg, errors)
    assert any("cam.target must be 'prediction'" in e and "cam.target=label" in e for e in errors), errors
    # a built-in of lightning_cam.targets from the command line: accepted and instantiated
    from lightning_cam.targets import LabelLogit

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["cam.target={_target_:lightning_cam.targets.LabelLogit}"])
    GlobalHydra.instance().clear()
    errors = []
    _check_methods(cfg, errors)
    assert not any("cam.target" in e for e in errors), errors
    node = {k: v for k, v in cfg.cam.items() if k != "enabled"}
    assert isinstance(instantiate(node, mean=None, std=None, target_layer=None).options.target, LabelLogit)


class NaNFromEpoch(TinyNet):
    """TinyNet whose logits are all NaN once ``diverged`` is set (a run that diverges mid-training)."""

    diverged = False

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if self.diverged else out  # NaN, still a function of the activations


class LitDiverging(LitTiny):
    def __init__(self, from_epoch: int) -> None:
        super().__init__()
        self.net = NaNFromEpoch()
        self.from_epoch = from_epoch

    def on_validation_epoch_start(self) -> None:
        self.net.diverged = self.current_epoch >= self.from_epoch


@pytest.mark.parametrize("from_epoch", [0, 2])
def test_a_diverging_model_is_counted_at_every_evaluation_never_an_error(tmp_path, from_epoch) -> None:
    """Logits all NaN from the start, or from epoch 2: every evaluation (the randomisation check at
    the last epoch included) logs nonfinite_images = N and a warning; no traceback, no error counted."""
    callback = CAMCallback(target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=6, n_steps=4,
                           on_error="raise", max_overhead=None)
    trainer = _trainer(tmp_path, callback, max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(LitDiverging(from_epoch), ToyDataModule(n_train=16, n_val=6))
    msgs = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert len(msgs) == 3 - from_epoch, msgs
    assert callback.num_errors == 0 and callback.fit_sanity_runs == 1
    scalars = _cam_scalars(trainer)
    assert scalars["cam/nonfinite_images"] == 6
    assert all(math.isfinite(v) for v in scalars.values()), scalars
    assert "cam/liftcam/insertion" not in callback.last_scalars  # no finite image: no mean, never a NaN scalar
    assert callback.last_scalars["cam/nonfinite_images"] == 6
    assert torch.isnan(callback.last_report["liftcam"].randomization_spearman).all()


def test_infinite_inputs_are_left_out(tmp_path) -> None:
    data = ToyShapes(8, seed=2)
    images = data.images.clone()
    images[3, :, 2, 2] = float("inf")
    callback = CAMCallback(target_layer="layer4", methods=["liftcam"], images=images, labels=data.labels,
                           masks=data.masks, on_error="raise", max_overhead=None, n_steps=4)
    trainer = _trainer(tmp_path, callback, max_epochs=1)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        trainer.fit(LitTiny(), ToyDataModule(n_train=16, n_val=8))
    assert callback.last_report.nonfinite.tolist() == [i == 3 for i in range(8)]
    assert _cam_scalars(trainer)["cam/nonfinite_images"] == 1

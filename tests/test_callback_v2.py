"""CAMCallback v2: the pure evaluator, several layers and callbacks, stage keys, the sinks, the budget,
labelled pictures."""

from __future__ import annotations

import csv
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger

from lightning_cam import CAMCallback, evaluate, viz
from lightning_cam.callback import for_package
from lightning_cam.evaluation import keys as summaries
from lightning_cam.callback.budget import CostBudget
from lightning_cam.evaluation.curves import same_maps
from lightning_cam.metrics import confidence_change, insertion_deletion

from tolerance import EPS32, forward_tol
from _callback_helpers import LitTiny, ToyDataModule, ToyShapes, one_torch_thread, trainer_kwargs  # noqa: F401

EPS = 2.0**-23


# ---------------------------------------------------------------- the evaluator
def test_evaluator_without_a_trainer_on_a_torchvision_model():
    """resnet18 (random weights, 32 px): a typed report; scores equal the metric functions."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 2])
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    methods = ["liftcam", "gradcam", "xgradcam", "ablationcam", "layercam"]
    report = evaluate(model, "layer4", x, labels, masks, methods=methods, n_steps=8, shap_samples=2)

    assert report.methods == methods and report.num_images == 3
    assert report.layers["layer4"].qualified == "layer4" and report.layers["layer4"].channels == 512
    r = report["gradcam"]
    assert r.saliency.shape == (3, 32, 32) and r.insertion_curve.shape == (3, 9) and report.fractions.shape == (9,)
    # LayerCAM has no channel weights: no ShapCAM comparison field at all
    assert report["layercam"].shap_pearson is None
    assert torch.isnan(r.shap_pearson[2]) and not torch.isnan(r.shap_pearson[:2]).any()  # shap_samples=2
    # the logits of the explanation pass are the model's output
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(report.logits, logits, rtol=512 * EPS, atol=512 * EPS)
    assert torch.equal(report.predictions, logits.argmax(1))
    # every per-image score is what the metric functions give for the same maps (one forward pass each)
    ref = insertion_deletion(model, x, r.saliency, n_steps=8)
    conf = confidence_change(model, x, r.saliency)
    # The evaluator batches the metric passes differently (all methods in one call): other kernels,
    # other summation orders. Logits then differ by at most the network's reduction bound at the
    # logits' scale; probabilities and their averages (AUCs) by half of it; Average Drop (percent,
    # divided by Y >= 1 / num_classes) by 100 * num_classes times it.
    prob_tol = forward_tol(model, magnitude=float(logits.abs().max()))
    torch.testing.assert_close(r.insertion, ref.insertion, rtol=0, atol=prob_tol)
    torch.testing.assert_close(r.deletion_curve, ref.deletion_curve, rtol=0, atol=prob_tol)
    torch.testing.assert_close(r.average_drop, conf.drop * 100, rtol=0, atol=100 * 5 * prob_tol)
    # the summary is the mean of the per-image values, keyed cam/<method>/<metric>
    s = report.summary()
    mean = float(r.insertion.double().mean())  # float64 mean of 3 float32 values, as summary() does
    assert s["cam/gradcam/insertion"] == pytest.approx(mean, rel=EPS, abs=0.0)
    assert {f"cam/{m}/average_drop" for m in methods} <= set(s)
    assert "cam/liftcam/completeness_residual" in s and "cam/gradcam/pointing_game" in s
    # GAP + linear head: XGrad-CAM's map equals Grad-CAM's to rounding, so it reuses the curves
    shared = report["xgradcam"].shared_curves
    assert shared.any()
    same = same_maps(report["xgradcam"].saliency, r.saliency, 512)
    assert torch.equal(shared, same)
    assert torch.equal(report["xgradcam"].insertion_curve[shared], r.insertion_curve[shared])
    assert not report["gradcam"].shared_curves.any()


def test_clean_logits_give_the_same_scores():
    torch.manual_seed(0)
    model = LitTiny().eval()
    x = ToyShapes(4, seed=2).images
    sal = torch.rand(4, 16, 16)
    with torch.no_grad():
        logits = model(x)
    a, b = insertion_deletion(model, x, sal, n_steps=4), insertion_deletion(model, x, sal, n_steps=4, clean_logits=logits)
    assert torch.equal(a.insertion_curve, b.insertion_curve) and torch.equal(a.deletion, b.deletion)
    c, d = confidence_change(model, x, sal), confidence_change(model, x, sal, clean_logits=logits)
    assert torch.equal(c.drop, d.drop) and torch.equal(c.increase, d.increase)
    e = confidence_change(model, x, sal, deletion=False)
    assert torch.equal(e.drop, c.drop) and torch.isnan(e.drop_in_deletion).all()
    with pytest.raises(ValueError, match="clean_logits must be the model's output"):
        insertion_deletion(model, x, sal, clean_logits=logits[:2])


def test_evaluator_several_layers_and_summary_keys():
    model = LitTiny().eval()
    ds = ToyShapes(3, seed=1)
    report = evaluate(model, ["layer4", "features.3"], ds.images, methods=["liftcam", "gradcam"], curves=False)
    assert list(report.layers) == ["layer4", "features.3"]
    keys = report.summary("cam_test")
    assert "cam_test/layer4/liftcam/average_drop" in keys and "cam_test/features.3/gradcam/average_drop" in keys
    assert not any(k.endswith("/insertion") for k in keys)  # curves=False
    with pytest.raises(KeyError, match="several layers"):
        report["liftcam"]
    assert report.method("liftcam", "features.3").insertion is None


def test_summaries_name_every_key_with_a_direction():
    names = [m.name for m in summaries.METRICS]
    assert len(names) == len(set(names))
    assert all(m.direction in ("higher", "lower", "none") and m.description for m in summaries.METRICS)
    assert summaries.parse_key("cam/liftcam/insertion") == summaries.ParsedKey("cam", None, "liftcam", "insertion")
    assert summaries.parse_key("cam_test/layer3/gradcam++/deletion").layer == "layer3"
    assert summaries.parse_key("val/acc") is None and summaries.parse_key("cam/callback_seconds") is None
    assert summaries.by_method({"cam/a/insertion": 1.0, "cam_test/a/insertion": 2.0}) == {"a": {"insertion": 1.0}}


# ------------------------------------------------------- layers and callbacks
@pytest.mark.slow
def test_two_callbacks_on_two_layers_with_checkpoint_and_resume(tmp_path):
    dm = ToyDataModule(n_train=16, n_val=24)
    a = CAMCallback(target_layer="layer4", num_samples=5, seed=0, n_steps=4, max_overhead=None)
    b = CAMCallback(target_layer="features.3", methods=["gradcam"], num_samples=4, seed=1, n_steps=4, max_overhead=None)
    assert a.state_key != b.state_key
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="cam/layer4/liftcam/insertion", mode="max", save_last=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[a, b, ckpt], max_epochs=1, enable_checkpointing=True))
    trainer.fit(LitTiny(), datamodule=dm)
    keys = set(trainer.callback_metrics)
    assert {"cam/layer4/liftcam/insertion", "cam/features.3/gradcam/insertion"} <= keys
    assert not any(k.startswith("cam/liftcam/") for k in keys)  # two callbacks: the layer is in every key
    # and each callback's own keys are its own (not one overwriting the other)
    for layer in ("layer4", "features.3"):
        assert {f"cam/{layer}/callback_seconds", f"cam/{layer}/curve_images", f"cam/{layer}/nonfinite_images"} <= keys
    assert "cam/callback_seconds" not in keys
    for cb, layer in ((a, "layer4"), (b, "features.3")):
        key = f"cam/{layer}/callback_seconds"
        assert float(trainer.callback_metrics[key]) == pytest.approx(cb.last_scalars[key], rel=EPS32)  # logged as float32
    assert ckpt.best_model_score is not None
    first_a, first_b = list(a.heldout.indices), list(b.heldout.indices)
    assert first_a != first_b
    state = torch.load(ckpt.last_model_path, weights_only=False)["callbacks"]
    assert state[a.state_key]["indices"] == first_a and state[b.state_key]["indices"] == first_b

    # new callbacks with other seeds: each gets its own held-out set back from the checkpoint
    a2 = CAMCallback(target_layer="layer4", num_samples=5, seed=7, n_steps=4, max_overhead=None)
    b2 = CAMCallback(target_layer="features.3", methods=["gradcam"], num_samples=4, seed=8, n_steps=4, max_overhead=None)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[a2, b2], max_epochs=2))
    trainer.fit(LitTiny(), datamodule=dm, ckpt_path=ckpt.last_model_path)
    assert a2.heldout.indices == first_a and b2.heldout.indices == first_b
    assert {"cam/layer4/liftcam/insertion", "cam/features.3/gradcam/insertion"} <= set(trainer.callback_metrics)


def test_two_callbacks_on_one_layer_keep_their_own_callback_keys(tmp_path):
    """Same layer, other methods: the callback-wide keys add the methods to stay apart."""
    a = CAMCallback(target_layer="layer4", methods=["gradcam"], num_samples=3, n_steps=4, max_overhead=None, log_images=False)
    b = CAMCallback(target_layer="layer4", methods=["liftcam"], num_samples=3, n_steps=4, max_overhead=None, log_images=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[a, b], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=6))
    keys = set(trainer.callback_metrics)
    assert {"cam/layer4:gradcam/callback_seconds", "cam/layer4:liftcam/callback_seconds"} <= keys
    assert {"cam/layer4/gradcam/insertion", "cam/layer4/liftcam/insertion"} <= keys


@pytest.mark.slow
def test_one_callback_two_layers_logs_both_key_sets(tmp_path):
    cb = CAMCallback(target_layer=["layer4", "features.3"], num_samples=3, n_steps=4, max_overhead=None, method_grids=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=6))
    keys = set(trainer.callback_metrics)
    for layer in ("layer4", "features.3"):
        assert {f"cam/{layer}/liftcam/insertion", f"cam/{layer}/liftcam/average_drop"} <= keys
    names = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert "epoch0_layer4_overview.png" in names and "epoch0_features.3_liftcam.png" in names


@pytest.mark.slow
def test_fit_then_test_keys_do_not_collide(tmp_path):
    cb = CAMCallback(target_layer="layer4", num_samples=3, n_steps=4, max_overhead=None)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    model, dm = LitTiny(), ToyDataModule(n_train=8, n_val=6)
    trainer.fit(model, datamodule=dm)
    fit_keys = {k for k in trainer.callback_metrics if "cam" in k}
    assert "cam/liftcam/insertion" in fit_keys and "cam/curve_images" in fit_keys
    (test,) = trainer.test(model, datamodule=dm)
    test_keys = {k for k in test if "cam" in k}
    assert "cam_test/liftcam/insertion" in test_keys and "cam_test/callback_seconds" in test_keys
    assert not fit_keys & test_keys
    assert (tmp_path / "cam" / "epoch0_overview.png").is_file()
    assert (tmp_path / "cam" / f"test_epoch{trainer.current_epoch}_overview.png").is_file()  # media keyed by stage too


# ----------------------------------------------------------------- the sinks
class ImageListLogger(Logger):
    """A Lightning logger that is neither W&B nor TensorBoard but has ``log_image``."""

    def __init__(self):
        super().__init__()
        self.images: list[tuple[str, list, int]] = []
        self.scalars: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    @property
    def name(self):
        return "images"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.scalars.update(metrics)
        self.steps.update(dict.fromkeys(metrics, step))

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


def _dark_fraction(arr: np.ndarray) -> float:
    return float((arr.max(axis=-1) < 100).mean())


@pytest.mark.slow
def test_generic_image_logger_and_csv_png_files_with_labels(tmp_path):
    lg = ImageListLogger()
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    cb = CAMCallback(target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=4, n_steps=4, max_overhead=None)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=[csv_logger, lg], callbacks=[cb], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=6))
    # the generic logger got the labelled overview through log_image, and the scalars
    (key, images, step), (key2, images2, step2) = lg.images  # the overview, then the method-agreement heatmap
    # at the step of the epoch's scalars
    assert key == "cam/overview" and step == lg.steps["cam/liftcam/insertion"] and images[0].dtype == np.uint8
    assert key2 == "cam/agreement" and step2 == step and images2[0].dtype == np.uint8
    assert "cam/liftcam/insertion" in lg.scalars
    # PNG + CSV files under the first logger's log_dir
    cam_dir = Path(csv_logger.log_dir) / "cam"
    png = np.asarray(Image.open(cam_dir / "epoch0_overview.png").convert("RGB"))
    assert np.array_equal(png, images[0])  # the same picture everywhere
    with open(cam_dir / "epoch0_scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and [int(r["index"]) for r in rows] == cb.heldout.indices
    # csv writes repr(float): the same float32 value, read back exactly
    assert float(rows[0]["liftcam_insertion"]) == float(cb.last_report["liftcam"].insertion[0])
    assert rows[0]["prediction"].split(": ")[1] in ("tl", "tr", "bl")


def test_labelled_grid_has_title_row_and_column_labels():
    """16 px images: tiles upscaled to 96 px; text drawn above and left of the tiles (read back from PNG)."""
    torch.manual_seed(0)
    imgs = torch.rand(3, 3, 16, 16)
    rows = [("image", imgs), ("liftcam", imgs.flip(-1))]
    cols = ["label 0: cat\npred 1: dog\nconf 0.93"] * 3
    arr = viz.labelled_grid(rows, cols, title="validation · epoch 3 · layer layer4", min_size=96)
    tiles = torch.cat([viz.upscale(imgs, 96), viz.upscale(imgs.flip(-1), 96)])
    body = viz.to_uint8_hwc(viz._grid(tiles, 3, 2))  # the tiles alone, 16 px upscaled 6x
    h, w = body.shape[:2]
    assert h == 2 * 96 + 3 * 2 and arr.shape[0] > h and arr.shape[1] > w  # room for the text
    top = arr.shape[0] - h
    left = arr.shape[1] - w
    np.testing.assert_array_equal(arr[top:, left:], body)  # tiles unchanged, bottom right
    assert _dark_fraction(arr[: top // 4]) > 0.005  # the title
    for j in range(3):  # each column header has text
        x0 = left + 2 + j * 98
        assert _dark_fraction(arr[top // 4 : top, x0 : x0 + 96]) > 0.005
    for i in range(2):  # each row label
        y0 = top + 2 + i * 98
        assert _dark_fraction(arr[y0 : y0 + 96, :left]) > 0.002
    # the PNG round trip keeps it
    path = viz.save_png(arr, Path(tempfile.mkdtemp()) / "grid.png", compress_level=1)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), arr)


# ------------------------------------------------------------------ the budget
def test_budget_chooses_the_curve_subset_once_from_fixed_seconds():
    """10 % of 100 s of training = 10 s; 4 s already spent; 0.5 s per image -> 12 images of 32."""
    b = CostBudget(max_overhead=0.1)
    k, msg = b.choose(32, train_seconds=100.0, spent_seconds=4.0, seconds_per_image=0.5)
    assert k == 12 == b.curve_images and "insertion/deletion on 12 of 32 held-out images" in msg
    assert "max_overhead=0.1" in msg and "minimum" not in msg
    # never fewer than min(8, N), and it says so; never more than N
    assert CostBudget(0.1).choose(32, 1.0, 4.0, 0.5)[0] == 8
    assert "(the minimum) exceed it" in CostBudget(0.1).choose(32, 1.0, 4.0, 0.5)[1]
    assert CostBudget(0.1).choose(5, 1.0, 4.0, 0.5)[0] == 5
    assert CostBudget(0.1).choose(32, 1e6, 0.0, 0.5)[0] == 32
    assert CostBudget(None).choose(32, 0.0, 100.0, 1.0)[0] == 32
    # the choice is state: it survives a checkpoint
    b2 = CostBudget(0.1)
    b2.load_state_dict(b.state_dict())
    assert b2.curve_images == 12


@pytest.mark.slow
def test_tight_budget_scores_the_curves_at_every_evaluation_on_a_fixed_subset(tmp_path, caplog):
    """Milliseconds of training: the curves still come at every validation epoch, on the minimum
    subset (min(8, N) images), the same images each time, and the log says why."""
    cb = CAMCallback(target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=12, n_steps=4)  # 10 %
    seen = []

    class Record(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                rep = cb.last_report
                seen.append((rep.curve_rows.clone(), float(trainer.callback_metrics["cam/liftcam/insertion"])))

    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb, Record()], max_epochs=3))
    with caplog.at_level(logging.INFO, logger="lightning_cam.callback"):
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=12))
    assert len(seen) == 3 and all(torch.equal(rows, seen[0][0]) for rows, _ in seen)
    assert int(seen[0][0].sum()) == 8 and float(trainer.callback_metrics["cam/curve_images"]) == 8
    assert {"cam/liftcam/deletion", "cam/gradcam/insertion", "cam/liftcam/average_drop"} <= set(trainer.callback_metrics)
    assert caplog.text.count("insertion/deletion on 8 of 12 held-out images") == 1
    # the table rows outside the subset hold NaN, the means use the subset only
    rep = cb.last_report
    ins = rep["liftcam"].insertion
    assert torch.isnan(ins[~rep.curve_rows]).all() and torch.isfinite(ins[rep.curve_rows]).all()
    assert float(trainer.callback_metrics["cam/liftcam/insertion"]) == pytest.approx(float(ins[rep.curve_rows].double().mean()))
    for part in ("explain", "scores", "curves", "randomization", "media", "other"):
        assert f"cam/seconds/{part}" in trainer.callback_metrics
    assert float(trainer.callback_metrics["cam/forwards"]) > 0 and float(trainer.callback_metrics["cam/backwards"]) > 0
    # a 1-epoch fit with a default callback, then trainer.test: insertion/deletion at both
    default = CAMCallback(target_layer="layer4", num_samples=12, n_steps=4)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path / "d", callbacks=[default], max_epochs=1))
    model, dm = LitTiny(), ToyDataModule(n_train=8, n_val=12)
    trainer.fit(model, datamodule=dm)
    assert {"cam/liftcam/insertion", "cam/liftcam/deletion"} <= set(trainer.callback_metrics)
    trainer.test(model, datamodule=dm, verbose=False)
    assert {"cam_test/liftcam/insertion", "cam_test/liftcam/deletion"} <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["cam_test/curve_images"]) == 12  # trainer.test scores every image
    generous = CAMCallback(target_layer="layer4", num_samples=12, n_steps=4, max_overhead=1e6)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path / "g", callbacks=[generous], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=12))
    assert float(trainer.callback_metrics["cam/curve_images"]) == 12


# ------------------------------------------------------ Lightning packages
def test_lightning_packages():
    from lightning_cam.callback._lightning import is_logger

    assert for_package("pytorch_lightning") is CAMCallback
    assert isinstance(CAMCallback(), pl.Callback)
    assert is_logger(CSVLogger("."), "CSVLogger") and not is_logger(ImageListLogger(), "WandbLogger")
    try:
        import lightning.pytorch as lp
    except ImportError:
        with pytest.raises(ImportError, match="pip install"):
            for_package("lightning.pytorch")
    else:  # the unified package: a class Lightning accepts as its own Callback
        assert isinstance(for_package("lightning.pytorch")(), lp.Callback)


def test_docs_key_table_is_the_summaries_table():
    """docs/callback.md quotes summaries.METRICS and CALLBACK_KEYS; they must not drift apart."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "callback.md").read_text()
    for spec in (*summaries.METRICS, *summaries.CALLBACK_KEYS):
        assert f"| `{spec.name}` | {spec.direction} | {spec.description} |" in text, spec.name
    for stage, prefix in summaries.STAGE_PREFIX.items():
        assert f"| `{prefix}` |" in text, stage


def test_only_the_unified_lightning_package(monkeypatch):
    """Without pytorch_lightning the callback builds on lightning.pytorch (simulated: a stand-in module)."""
    import types

    from lightning_cam.callback import _lightning

    fake = types.ModuleType("lightning.pytorch")
    real_import = _lightning.importlib.import_module

    def import_module(name):
        if name == "pytorch_lightning":
            raise ImportError("No module named 'pytorch_lightning'")
        if name == "lightning.pytorch":
            return fake
        return real_import(name)

    monkeypatch.setattr(_lightning.importlib, "import_module", import_module)
    assert _lightning.lightning_package() is fake
    monkeypatch.setattr(_lightning.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    with pytest.raises(ImportError, match="pip install pytorch-lightning"):
        _lightning.lightning_package()


def test_test_stage_after_fit_explains_the_test_split(tmp_path):
    """fit then test on one Trainer: cam/ reads the validation split, cam_test/ the test split."""

    class SplitData(ToyDataModule):
        def setup(self, stage=None):
            super().setup(stage)
            self.test_ds = ToyShapes(12, seed=3, with_masks=self.with_masks)

        def test_dataloader(self):
            return torch.utils.data.DataLoader(self.test_ds, batch_size=self.batch_size)

    dm = SplitData(n_train=16, n_val=12)
    cb = CAMCallback(target_layer="layer4", num_samples=4, n_steps=4, max_overhead=None, log_images=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=dm)
    val_images = cb.heldout.images.clone()
    trainer.test(trainer.lightning_module, datamodule=dm)
    test_held = cb.test_heldout
    assert test_held is not None and torch.equal(cb.heldout.images, val_images)  # the val set is kept
    assert torch.equal(test_held.images, torch.stack([dm.test_ds[i][0] for i in test_held.indices]))
    assert not torch.equal(test_held.images, val_images)


def test_a_fit_that_never_reaches_its_last_epoch_warns_that_the_sanity_check_did_not_run(tmp_path):
    cb = CAMCallback(target_layer="layer4", num_samples=2, n_steps=2, log_images=False)  # check at the last epoch
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=-1, max_steps=2))
    with pytest.warns(RuntimeWarning, match="model-randomisation check never ran"):
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=4))
    cb2 = CAMCallback(target_layer="layer4", num_samples=2, n_steps=2, log_images=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path / "b", callbacks=[cb2], max_epochs=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=4))
    # every_n_epochs=2 with max_epochs=3: the callback's last evaluation (epoch 2 of 3) runs the check
    cb3 = CAMCallback(target_layer="layer4", num_samples=2, n_steps=2, log_images=False, every_n_epochs=2)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path / "c", callbacks=[cb3], max_epochs=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=4))
    assert (cb3.fit_evaluations, cb3.fit_sanity_runs) == (1, 1) and "cam/liftcam/randomization_spearman" in cb3.last_scalars
    assert cb2.fit_sanity_runs == 1  # the last epoch was recognised: the check ran, no warning

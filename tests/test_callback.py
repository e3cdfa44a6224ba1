"""CAMCallback end to end: real Trainer runs (tiny CNN, 16 px images, CPU).

W&B runs are offline; the run file is read back with tests/wandb_offline.py.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_cam import CAMCallback
from lightning_cam.callback import cam_callback, heldout

from _callback_helpers import (
    LitTiny,
    SavingCAMCallback,
    ToyDataModule,
    ToyShapes,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    trainer_kwargs,
)
from tolerance import EPS32, assert_within, forward_tol, scaled_tol
from wandb_offline import read_offline_run

SCALARS = ("insertion", "deletion", "average_drop", "increase_in_confidence", "pointing_game", "seconds")


def _png_is_rgb_uint8(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "RGB", (path, img.mode)
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert arr.std() > 0  # not a blank image
    return arr


@pytest.mark.slow
def test_wandb_offline_run_logs_scalars_grids_table_and_curves(wandb_env):
    tmp_path = wandb_env
    import wandb

    pl.seed_everything(0)
    cb = CAMCallback(
        max_overhead=None, target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=6, max_images=4, shap_samples=2,
        method_grids=True,
    )
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="cam-test")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, callbacks=[cb], max_epochs=2))
    trainer.fit(LitTiny(), datamodule=ToyDataModule())
    wandb.finish()

    run = read_offline_run(tmp_path)
    keys = run.keys()
    for m in ("liftcam", "gradcam"):
        for s in SCALARS:
            assert f"cam/{m}/{s}" in keys, f"cam/{m}/{s}"
        assert f"cam/{m}/grid" in keys
    assert {"cam/liftcam/completeness_residual", "cam/callback_seconds", "cam/gradcam/shap_pearson"} <= keys
    assert {"cam/overview", "cam/table", "cam/class_table", "cam/curves/insertion_table", "cam/curves/deletion_table"} <= keys

    scalar_rows = run.rows_with("cam/liftcam/insertion")
    media_rows = run.rows_with("cam/liftcam/grid")
    assert len(scalar_rows) == 2 and len(media_rows) == 2  # one per epoch
    # media share the x-axis (trainer/global_step) of the epoch's scalars; no step= was forced
    assert [r["trainer/global_step"] for r in media_rows] == [r["trainer/global_step"] for r in scalar_rows]
    assert [r["epoch"] for r in media_rows] == [0, 1]
    # the same value, read back from the run file: at most one float32 rounding on the way
    v = cb.last_scalars["cam/liftcam/insertion"]
    assert run.summary["cam/liftcam/insertion"] == pytest.approx(v, rel=EPS32, abs=0.0)
    assert 0.0 <= scalar_rows[-1]["cam/liftcam/pointing_game"] <= 1.0
    # completeness holds up to the float32 error of the head's reductions at the logits' scale
    net = trainer.lightning_module.net.eval()
    with torch.no_grad():
        logits = net(cb.heldout.images)
    bound = forward_tol(net, magnitude=float(logits.abs().max()), spatial=64)
    assert scalar_rows[-1]["cam/liftcam/completeness_residual"] < bound

    # grids: labelled uint8 PNGs under files/media/images; 16 px images upscaled to 96 px tiles
    grid = media_rows[-1]["cam/liftcam/grid"]
    assert grid["_type"] == "image-file" and grid["format"] == "png"
    arr = _png_is_rgb_uint8(run.media_path(grid))
    assert arr.shape[0] > 2 * 96 and arr.shape[1] > 4 * 96  # image row + overlay row, 4 columns, + labels
    assert len([p for p in run.media("images") if p.suffix == ".png"]) >= 2 * 3  # 2 epochs x (2 grids + overview)
    over = _png_is_rgb_uint8(run.media_path(media_rows[-1]["cam/overview"]))
    assert over.shape[0] > 3 * 96  # images + one row per method

    # the table: one row per held-out image
    table = run.table("cam/table")
    cols = table["columns"]
    # one picture per row: the image, then its overlays side by side, in the order the column names
    assert cols[:5] == ["index", "image | liftcam | gradcam", "label", "prediction", "confidence"]
    assert {"liftcam_insertion", "liftcam_deletion", "gradcam_deletion"} <= set(cols)
    assert len(table["data"]) == 6
    row = dict(zip(cols, table["data"][0]))
    assert row["index"] == cb.heldout.indices[0]
    assert row["label"].split(": ")[1] in ("tl", "tr", "bl")  # class names from the datamodule
    v = float(cb.last_report["liftcam"].insertion[0])
    assert row["liftcam_insertion"] == pytest.approx(v, rel=EPS32, abs=0.0)  # the same float32, serialised
    if "_artifact" in table:  # image cells resolvable in the artifact staging area
        cell = row["image | liftcam | gradcam"]
        assert cell["_type"] == "image-file"
        strip = _png_is_rgb_uint8(run.artifact_file(table, cell["path"]))
        assert strip.shape[1] == 3 * strip.shape[0]  # three square tiles

    # monitoring (issue 9): per-image stability in the table, the agreement heatmap and its table
    assert {"liftcam_stability", "liftcam_stability_first", "gradcam_sparseness", "gradcam_energy_object"} <= set(cols)
    v = float(cb.last_report["liftcam"].stability[0])
    assert row["liftcam_stability"] == pytest.approx(v, rel=EPS32, abs=0.0)  # the same float32, serialised
    assert {"cam/agreement", "cam/agreement_table", "cam/liftcam/stability", "cam/liftcam/randomization_spearman",
            "cam/liftcam/sparseness", "cam/liftcam/complexity", "cam/liftcam/energy/object"} <= keys
    agree = run.table("cam/agreement_table")
    assert agree["columns"] == ["method_a", "method_b", "spearman"] and len(agree["data"]) == 4
    _png_is_rgb_uint8(run.media_path(run.rows_with("cam/agreement")[-1]["cam/agreement"]))

    # the insertion curve chart's data: one line per method, n_steps + 1 points each
    curves = run.table("cam/curves/insertion_table")
    assert curves["columns"] == ["step", "lineKey", "lineVal"]
    assert len(curves["data"]) == 2 * 17 and {r[1] for r in curves["data"]} == {"liftcam", "gradcam"}


@pytest.mark.slow
def test_csv_logger_gets_scalars_and_png_grids_every_n_epochs(tmp_path):
    pl.seed_everything(0)
    cb = CAMCallback(
        max_overhead=None, target_layer="layer4", methods=["liftcam", "hirescam"], num_samples=4, every_n_epochs=2,
        n_steps=8, method_grids=True,
    )
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, callbacks=[cb], max_epochs=3))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16))
    cam_dir = Path(logger.log_dir) / "cam"
    assert sorted(p.name for p in cam_dir.iterdir()) == [
        "epoch1_agreement.png", "epoch1_class_scores.csv", "epoch1_hirescam.png", "epoch1_liftcam.png",
        "epoch1_overview.png", "epoch1_scores.csv",
    ]
    _png_is_rgb_uint8(cam_dir / "epoch1_liftcam.png")
    import csv

    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("cam/liftcam/insertion")]
    assert [int(r["epoch"]) for r in rows] == [1]  # every_n_epochs=2: only after epoch index 1
    assert "cam/hirescam/pointing_game" in rows[0]


@pytest.mark.slow
def test_tensorboard_user_images_and_no_logger(tmp_path):
    ds = ToyShapes(10, seed=7)
    cb = CAMCallback(
        max_overhead=None, target_layer="layer4", images=ds.images, labels=ds.labels, masks=ds.masks, num_samples=5,
        n_steps=8, method_grids=True,
    )
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, callbacks=[cb], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16))
    assert cb.heldout.source == "user" and len(cb.heldout) == 5
    assert torch.equal(cb.heldout.images, ds.images[cb.heldout.indices])
    assert "cam/liftcam/pointing_game" in trainer.callback_metrics
    _png_is_rgb_uint8(Path(logger.log_dir) / "cam" / "epoch0_liftcam.png")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert {"cam/liftcam/grid", "cam/overview"} <= set(acc.Tags()["images"])
    assert "cam/liftcam/insertion" in acc.Tags()["scalars"]

    # no logger at all: PNGs under default_root_dir/cam
    root = tmp_path / "nolog"
    cb2 = CAMCallback(max_overhead=None, target_layer="layer4", num_samples=3, n_steps=8, method_grids=True)
    trainer = pl.Trainer(**trainer_kwargs(root, callbacks=[cb2], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, with_masks=False))
    assert (root / "cam" / "epoch0_liftcam.png").is_file()
    assert "cam/liftcam/pointing_game" not in trainer.callback_metrics  # no masks -> no pointing game


def _train(tmp_path, callback: CAMCallback | None, epochs: int = 3):
    pl.seed_everything(1234)
    model = LitTiny()
    callbacks = [callback] if callback is not None else []
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=callbacks, max_epochs=epochs, num_sanity_val_steps=2))
    trainer.fit(model, datamodule=ToyDataModule(n_train=32, n_val=12))
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return model, rng


@pytest.mark.slow
def test_training_is_bit_identical_with_and_without_the_callback(tmp_path):
    """Shuffled loader, BatchNorm + Dropout, 3 epochs: same weights, buffers and RNG states."""
    ref, ref_rng = _train(tmp_path / "off", None)
    cb = CAMCallback(
        max_overhead=None, target_layer="layer4", methods=["liftcam", "gradcam", "scorecam", "shap"], num_samples=6, shap_samples=2,
        n_steps=8,
    )
    got, got_rng = _train(tmp_path / "on", cb)
    assert cb.last_scalars and cb.num_errors == 0  # it really ran
    ref_state, got_state = ref.state_dict(), got.state_dict()
    assert ref_state.keys() == got_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], got_state[k]), k  # params and BN running stats
    assert all(p.grad is None or torch.equal(p.grad, q.grad) for p, q in zip(ref.parameters(), got.parameters()))
    assert torch.equal(ref_rng[0], got_rng[0]) and np.array_equal(ref_rng[1], got_rng[1]) and ref_rng[2] == got_rng[2]
    assert got.training  # modes restored
    assert all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks for m in got.modules())


@pytest.mark.slow
def test_resume_keeps_the_heldout_set_and_checkpoint_monitor_sees_cam_keys(tmp_path):
    dm = ToyDataModule(n_train=16, n_val=24)
    cb1 = CAMCallback(max_overhead=None, target_layer="layer4", num_samples=5, seed=0, n_steps=8)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="cam/liftcam/insertion", mode="max", save_last=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb1, ckpt], max_epochs=1, enable_checkpointing=True))
    trainer.fit(LitTiny(), datamodule=dm)
    first = list(cb1.heldout.indices)
    assert ckpt.best_model_score is not None  # monitored the callback's key
    state = torch.load(ckpt.last_model_path, weights_only=False)["callbacks"]
    assert any(v.get("indices") == first for v in state.values())

    other_seed = 99
    assert heldout.select_indices(24, 5, other_seed) != first  # so the check below means something
    cb2 = CAMCallback(max_overhead=None, target_layer="layer4", num_samples=5, seed=other_seed, n_steps=8)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb2], max_epochs=2))
    trainer.fit(LitTiny(), datamodule=dm, ckpt_path=ckpt.last_model_path)
    assert cb2.heldout.indices == first
    assert trainer.current_epoch == 2


@pytest.mark.slow
def test_the_curve_subset_survives_a_resume(tmp_path):
    """A tight budget picks min(8, N) = 8 of 12 images; a resumed run (another seed, a generous budget)
    keeps those 8 images, so cam/liftcam/insertion never mixes image sets."""
    dm = ToyDataModule(n_train=16, n_val=24)
    cb1 = CAMCallback(target_layer="layer4", num_samples=12, seed=0, n_steps=4)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb1, ckpt], max_epochs=1, enable_checkpointing=True))
    trainer.fit(LitTiny(), datamodule=dm)
    rows = cb1.last_report.curve_rows.clone()
    assert int(rows.sum()) == 8 == cb1.budget.curve_images
    cb2 = CAMCallback(target_layer="layer4", num_samples=12, seed=7, n_steps=4, max_overhead=1e6)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb2], max_epochs=2))
    trainer.fit(LitTiny(), datamodule=dm, ckpt_path=ckpt.last_model_path)
    assert cb2.heldout.indices == cb1.heldout.indices and torch.equal(cb2.last_report.curve_rows, rows)
    assert float(trainer.callback_metrics["cam/curve_images"]) == 8


@pytest.mark.slow
def test_validate_and_test_under_inference_mode_and_mixed_precision(tmp_path):
    dm = ToyDataModule(n_train=16, n_val=8)
    model = LitTiny()
    cb = CAMCallback(max_overhead=None, target_layer="layer4", methods=["liftcam", "gradcam++", "layercam"], num_samples=4,
                     n_steps=8, method_grids=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb]))  # inference_mode=True by default
    (val,) = trainer.validate(model, datamodule=dm)
    assert cb.num_errors == 0
    assert {f"cam_validate/{m}/insertion" for m in ("liftcam", "gradcam++", "layercam")} <= set(val)
    assert not any(k.startswith("cam/") for k in val)  # stand-alone validation has keys of its own
    (test,) = trainer.test(model, datamodule=dm)
    # validate and test run the same kernels on the same shapes: bitwise equal on one machine
    assert test["cam_test/liftcam/insertion"] == val["cam_validate/liftcam/insertion"]
    assert (tmp_path / "cam" / "validate_epoch0_liftcam.png").is_file()
    assert (tmp_path / "cam" / "test_epoch0_liftcam.png").is_file()
    # autocast is switched off for the explanations and metrics: the same numbers in bf16-mixed
    cb16 = CAMCallback(max_overhead=None, target_layer="layer4", methods=["liftcam", "gradcam++", "layercam"], num_samples=4, n_steps=8)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path / "bf16", callbacks=[cb16], precision="bf16-mixed"))
    (val16,) = trainer.validate(model, datamodule=dm)
    assert cb16.num_errors == 0
    # same float32 kernels and shapes as above (autocast off): bitwise equal on one machine
    assert val16["cam_validate/liftcam/insertion"] == val["cam_validate/liftcam/insertion"]


@pytest.mark.slow
def test_errors_are_reported_not_fatal(tmp_path, monkeypatch, caplog):
    def boom(self, *args, **kwargs):
        raise ZeroDivisionError("boom in the callback")

    monkeypatch.setattr(cam_callback, "evaluate", boom)
    cb = CAMCallback(max_overhead=None, target_layer="layer4", num_samples=2)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=2))
    with caplog.at_level(logging.ERROR, logger="lightning_cam.callback"):
        with pytest.warns(RuntimeWarning, match=r"CAMCallback failed .*epoch 0.*training continues"):
            trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=4))
    assert trainer.current_epoch == 2 and cb.num_errors == 2  # training went on
    assert "Traceback" in caplog.text and "ZeroDivisionError: boom in the callback" in caplog.text
    assert "epoch 1" in caplog.text

    cb = CAMCallback(max_overhead=None, target_layer="layer4", num_samples=2, on_error="raise")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    with pytest.raises(RuntimeError, match="CAMCallback failed") as info:
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=4))
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.slow
def test_media_errors_keep_the_scalars(tmp_path, monkeypatch):
    from lightning_cam import viz

    def bad_grid(*a, **k):
        raise ValueError("grid failed")

    monkeypatch.setattr(viz, "labelled_grid", bad_grid)
    cb = CAMCallback(max_overhead=None, target_layer="layer4", num_samples=2, n_steps=4)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    with pytest.warns(RuntimeWarning, match="logging media"):
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=4))
    assert "cam/liftcam/insertion" in trainer.callback_metrics and cb.num_errors == 1


@pytest.mark.slow
def test_bad_target_layer_fails_at_setup(tmp_path):
    cb = CAMCallback(max_overhead=None, target_layer="layer9")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    with pytest.raises(ValueError, match="Unknown target layer 'layer9'"):
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=4))


@pytest.mark.slow
def test_fast_dev_run_and_default_arguments(tmp_path):
    cb = CAMCallback()  # default layer, LIFT-CAM, 32 samples (capped by the 8 val images)
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", fast_dev_run=True, callbacks=[cb],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=8))
    # tiny training: the 10 % budget affords the minimum curve subset, min(8, N) = 8 images; every score is there
    assert cb.num_errors == 0 and "cam/liftcam/average_drop" in cb.last_scalars
    assert "cam/liftcam/insertion" in cb.last_scalars and cb.last_scalars["cam/curve_images"] == 8
    assert cb.layer_names == {"net.layer4": "net.layer4"} and len(cb.heldout) == 8
    assert not (tmp_path / "cam").exists()  # fast_dev_run writes no media


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    """ddp_spawn on CPU (gloo): each rank explains rows rank::2, gathered results equal one process."""
    kw = dict(max_overhead=None, method_grids=True, target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=7, n_steps=8, shap_samples=3)
    dm = ToyDataModule(n_train=16, n_val=12)
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    pl.seed_everything(0)
    model = LitTiny()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ddp = pl.Trainer(**trainer_kwargs(tmp_path / "ddp", callbacks=[SavingCAMCallback(tmp_path / "ddp", **kw)],
                                      devices=2, strategy="ddp_spawn"))
    ddp.validate(model, datamodule=dm)
    model1 = LitTiny()
    model1.load_state_dict(init)
    one = pl.Trainer(**trainer_kwargs(tmp_path / "one", callbacks=[SavingCAMCallback(tmp_path / "one", **kw)],
                                      ))
    one.validate(model1, datamodule=dm)

    ref = torch.load(tmp_path / "one" / "rank0_epoch0.pt", weights_only=False)
    r0 = torch.load(tmp_path / "ddp" / "rank0_epoch0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "ddp" / "rank1_epoch0.pt", weights_only=False)
    assert r0["indices"] == r1["indices"] == ref["indices"]  # same held-out set on every rank
    # Tolerance: a rank convolves a different batch (images 0,2,4,6 or 1,3,5), so oneDNN may sum in
    # another order. Each float32 layer output then differs by up to fan-in * 2**-23 relative
    # (fan-in 3*3*8 = 72); four layers to the logits: rtol = 4 * 72 * 2**-23 ~ 3.4e-5, carried to
    # softmax scores and their means (absolute, as scores are <= 1).
    tol = 4 * 72 * 2**-23
    for got in (r0, r1):  # every rank holds the full gathered report
        assert got["report"].index.tolist() == list(range(7))
        torch.testing.assert_close(got["report"].predictions, ref["report"].predictions)
        for (_, m, a), (_, _, b) in zip(ref["report"].items(), got["report"].items()):
            for f in ("saliency", "insertion", "deletion", "insertion_curve", "deletion_curve", "average_drop",
                      "completeness_residual", "shap_pearson", "shap_spearman"):
                x, y = getattr(a, f), getattr(b, f)
                if x is None:
                    assert y is None
                    continue
                scale = 100.0 if f == "average_drop" else 1.0  # percent
                torch.testing.assert_close(y, x, atol=tol * scale, rtol=tol, equal_nan=True, msg=f"{m}/{f}")
    for k, v in ref["scalars"].items():  # the scores (each process's own seconds and pass counts differ)
        if "seconds" not in k and k.split("/")[-1] not in ("forwards", "backwards"):
            scale = 100.0 if "average_drop" in k or "increase" in k else 1.0
            assert r0["scalars"][k] == pytest.approx(v, abs=tol * scale) and r1["scalars"][k] == pytest.approx(v, abs=tol * scale)
    # the metrics reached the main process through Lightning's callback_metrics
    key = "cam_validate/liftcam/insertion"
    assert float(ddp.callback_metrics[key]) == pytest.approx(ref["scalars"][key], abs=tol)
    # images: only rank zero wrote PNGs (and the CSV)
    assert sorted(p.name for p in (tmp_path / "ddp" / "cam").iterdir()) == [
        "validate_epoch0_agreement.png", "validate_epoch0_class_scores.csv", "validate_epoch0_gradcam.png",
        "validate_epoch0_liftcam.png", "validate_epoch0_overview.png", "validate_epoch0_scores.csv",
    ]

"""Monitoring in the callback: stability series (and resume), sanity check, named regions, agreement."""

from __future__ import annotations

import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tolerance import sum_tol
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_cam import CAMCallback
from lightning_cam import evaluation as evaluator
from lightning_cam.evaluation.keys import parse_key, region_spec
from lightning_cam.evaluation.regions import MASK_FREE_REGIONS, active, static_masks
from lightning_cam.metrics import model_randomization, region_energy, spearman
from lightning_cam.metrics.monitoring import randomizable_modules

from _callback_helpers import (
    LitTiny,
    ToyDataModule,
    ToyShapes,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    trainer_kwargs,
)


class Recording(CAMCallback):
    """Keeps the scalars of every run."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.history: list[dict[str, float]] = []
        self.maps: list[dict[str, torch.Tensor]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        super().on_validation_epoch_end(trainer, pl_module)
        self.history.append(dict(self.last_scalars))
        self.maps.append({m: r.maps.clone() for m, r in self.last_report.layers["layer4"].methods.items()})


def _cb(**kw):
    base = dict(target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=6, n_steps=4, on_error="raise",
                max_overhead=None, sanity_every_n_epochs=None)
    base.update(kw)
    return Recording(**base)


@pytest.mark.slow
def test_stability_series_continues_after_resume(tmp_path):
    dm = ToyDataModule(n_train=24, n_val=12)
    pl.seed_everything(0)
    full = _cb()
    pl.Trainer(**trainer_kwargs(tmp_path / "a", callbacks=[full], max_epochs=3)).fit(LitTiny(), datamodule=dm)
    assert "cam/liftcam/stability" not in full.history[0] and "cam/liftcam/stability_first" not in full.history[0]
    for h in full.history[1:]:
        for m in ("liftcam", "gradcam"):
            assert -1.0 <= h[f"cam/{m}/stability"] <= 1.0 and -1.0 <= h[f"cam/{m}/stability_first"] <= 1.0
    # at the second evaluation the previous and the first maps are the same maps
    assert full.history[1]["cam/liftcam/stability"] == full.history[1]["cam/liftcam/stability_first"]

    pl.seed_everything(0)
    part = _cb()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    pl.Trainer(**trainer_kwargs(tmp_path / "b", callbacks=[part, ckpt], max_epochs=2, enable_checkpointing=True)).fit(
        LitTiny(), datamodule=dm)
    state = torch.load(ckpt.last_model_path, weights_only=False)["callbacks"]
    (cam_state,) = [v for v in state.values() if "stability" in v]
    assert set(cam_state["stability"]["previous"]["layer4"]) == {"liftcam", "gradcam"}
    assert cam_state["stability"]["previous"]["layer4"]["liftcam"].shape == (6, 8, 8)  # layer resolution

    resumed = _cb()
    pl.Trainer(**trainer_kwargs(tmp_path / "c", callbacks=[resumed], max_epochs=3)).fit(
        LitTiny(), datamodule=dm, ckpt_path=ckpt.last_model_path)
    (after,) = resumed.history
    for m in ("liftcam", "gradcam"):  # the series goes on from the checkpointed first / previous maps
        assert torch.equal(cam_state["stability"]["first"]["layer4"][m], part.maps[0][m])
        assert torch.equal(cam_state["stability"]["previous"]["layer4"][m], part.maps[1][m])
        now = resumed.maps[0][m]
        assert after[f"cam/{m}/stability"] == float(spearman(now, part.maps[1][m]).double().mean())
        assert after[f"cam/{m}/stability_first"] == float(spearman(now, part.maps[0][m]).double().mean())
    # without the state (a fresh callback on the same checkpoint's model) the series would restart
    fresh = _cb()
    fresh.load_state_dict({})
    assert fresh.stability.count == 0 and resumed.stability.count == 3


def _train(tmp_path, cb, epochs=3):
    pl.seed_everything(7)
    model = LitTiny()
    callbacks = [cb] if cb is not None else []
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=callbacks, max_epochs=epochs))
    trainer.fit(model, datamodule=ToyDataModule(n_train=32, n_val=12))
    return model, (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


@pytest.mark.slow
def test_sanity_check_every_epoch_keeps_training_bit_identical(tmp_path):
    ref, ref_rng = _train(tmp_path / "off", None)
    cb = _cb(sanity_every_n_epochs=1, sanity_order="cascading")
    got, got_rng = _train(tmp_path / "on", cb)
    assert len(cb.history) == 3 and all("cam/liftcam/randomization_spearman" in h for h in cb.history)
    n_modules = len(randomizable_modules(got))  # conv, bn, conv, bn, conv, fc
    assert n_modules == 6 and cb.last_report["liftcam"].randomization_cascade.shape == (6, n_modules)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k
    assert torch.equal(ref_rng[0], got_rng[0]) and np.array_equal(ref_rng[1], got_rng[1]) and ref_rng[2] == got_rng[2]


def test_sanity_schedule_default_is_the_last_epoch_only(tmp_path):
    cb = _cb(sanity_every_n_epochs=0)
    pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=2)).fit(LitTiny(), datamodule=ToyDataModule(16, 8))
    assert ["cam/liftcam/randomization_spearman" in h for h in cb.history] == [False, True]
    with pytest.raises(ValueError, match="sanity_order must be one of"):
        CAMCallback(sanity_order="bottom_up")
    with pytest.raises(ValueError, match="sanity_every_n_epochs must be an int >= 0"):
        CAMCallback(sanity_every_n_epochs=-1)


def test_evaluate_randomization_equals_the_pure_function():
    torch.manual_seed(0)
    model = LitTiny().eval()
    x = ToyShapes(5).images
    rep = evaluator.evaluate(model, "layer4", x, methods=["liftcam", "gradcam"], curves=False, randomization="full")

    def explain(mdl, images, targets):
        from lightning_cam import LiftCAM

        return LiftCAM(mdl, "net.layer4").explain(images, targets).maps

    ref = model_randomization(model, x, explain, rep.predictions, seed=42)
    assert torch.equal(rep["liftcam"].randomization_spearman, ref.per_image)


class RegionShapes(ToyShapes):
    """Toy data whose items carry named regions: the object and a 'marker' (the top-left 3x3 pixels)."""

    def __getitem__(self, i):
        marker = torch.zeros_like(self.masks[i])
        marker[:3, :3] = True
        return self.images[i], int(self.labels[i]), {"object": self.masks[i], "marker": marker}


class RegionDM(ToyDataModule):
    def setup(self, stage=None):
        self.train_ds = ToyShapes(self.n_train, seed=1)
        self.val_ds = RegionShapes(self.n_val, seed=2)

    def val_dataloader(self):
        return DataLoader(self.val_ds, batch_size=self.batch_size)


def test_named_regions_energy_sparseness_complexity_and_agreement_png(tmp_path):
    cb = _cb(methods=["liftcam", "gradcam", "layercam"])
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=RegionDM(16, 8))
    held, rep, scalars = cb.heldout, cb.last_report, cb.last_scalars
    assert set(held.regions) == {"object", "marker"} and torch.equal(held.masks, held.regions["object"])
    assert rep.regions == ("object", "marker", "border", "center")  # the data's, then the mask-free ones
    static = static_masks(active(MASK_FREE_REGIONS), len(held), 16, 16)
    for m in ("liftcam", "gradcam", "layercam"):
        sal = rep[m].saliency
        expect = region_energy(sal, {**held.regions, **static})
        for j, region in enumerate(rep.regions):
            e, valid = expect[region]
            assert valid.all()
            key = f"cam/{m}/energy/{region}"
            # both sides are means of the same float32 per-image values; the logged one went through one
            # float32 rounding (a logged scalar) and the images' sums may run in another order
            assert abs(scalars[key] - float(e.double().mean())) <= sum_tol(e.numel() + 1, float(e.abs().max()))
            parsed = parse_key(key)
            assert parsed.method == m and parsed.metric == region_spec(region).name
        # the energy pointing game is the object's energy
        assert scalars[f"cam/{m}/energy/object"] == scalars[f"cam/{m}/energy_pointing_game"]
        assert 0.0 <= scalars[f"cam/{m}/sparseness"] <= 1.0
        assert 0.0 <= scalars[f"cam/{m}/complexity"] <= np.log(16 * 16) + 1e-6
    png = list((tmp_path / "cam").glob("epoch0_agreement.png"))
    assert png and png[0].stat().st_size > 1000
    csv_head = next(iter(open(tmp_path / "cam" / "epoch0_scores.csv"))).strip().split(",")
    assert {"liftcam_energy_marker", "liftcam_sparseness", "gradcam_complexity"} <= set(csv_head)


def test_docs_monitoring_table_is_the_summaries_table():
    """docs/monitoring.md quotes summaries.MONITORING_METRICS and the region specs; they must not drift apart."""
    from pathlib import Path

    from lightning_cam.evaluation import keys as summaries

    text = (Path(__file__).resolve().parents[1] / "docs" / "monitoring.md").read_text()
    for spec in (*summaries.MONITORING_METRICS, summaries.region_spec("object"), summaries.region_spec("marker")):
        assert f"| `{spec.name}` | {spec.direction} | {spec.description} |" in text, spec.name
    assert summaries.parse_key("cam/liftcam/energy/marker") == summaries.ParsedKey("cam", None, "liftcam", "energy/marker")
    assert summaries.parse_key("cam/layer3/liftcam/stability").layer == "layer3"

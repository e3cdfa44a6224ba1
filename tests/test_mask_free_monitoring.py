"""Monitoring that needs no masks: mask-free regions, per-class breakdown, stratified held-out set,
alerts, EarlyStopping on a cam key, and the class-specific shortcut of the shapes data."""

from __future__ import annotations

import io
import types
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_cam import CAMCallback, evaluate
from lightning_cam.app.rich_utils import cam_tables, print_summary
from lightning_cam.callback import heldout
from lightning_cam.data import ShapesDataset
from lightning_cam.evaluation import EvaluationOptions, class_means, summarise
from lightning_cam.evaluation.keys import by_method, parse_key
from lightning_cam.evaluation.regions import MASK_FREE_REGIONS, active, check_regions, region_mask, static_masks
from lightning_cam.metrics import region_energy

from _callback_helpers import LitTiny, ToyDataModule, one_torch_thread, trainer_kwargs  # noqa: F401
from tolerance import sum_tol

S = 16


# ------------------------------------------------------------------ regions
def test_region_masks_cover_the_pixels_whose_centre_is_inside():
    band = region_mask(0.125, S, S)  # 2 px of 16
    assert int(band.sum()) == S * S - 12 * 12 and not bool(band[2:14, 2:14].any())
    centre = region_mask(MASK_FREE_REGIONS["center"], S, S)
    assert int(centre.sum()) == 64 and bool(centre[4:12, 4:12].all())
    box = region_mask((0.0, 0.0, 0.25, 0.5), S, S)  # x (columns) to 1/4, y (rows) to 1/2
    assert box.nonzero().amax(0).tolist() == [7, 3]


def test_region_energy_exact_on_hand_made_maps():
    masks = static_masks({**active(MASK_FREE_REGIONS), "top_left": (0, 0, 0.25, 0.25)}, 4, S, S)
    maps = torch.zeros(4, S, S)
    maps[0, 0, 0] = 1.0  # one corner pixel: all on the border and the top-left box
    maps[1, 4:12, 4:12] = 1.0  # exactly the centre box
    maps[2, 0, 0], maps[2, 8, 8] = 1.0, 3.0  # 1/4 border, 3/4 centre
    maps[3] = 1.0  # uniform: each region's area share
    got = {k: e.tolist() for k, (e, _) in region_energy(maps, masks).items()}
    assert got["border"] == [1.0, 0.0, 0.25, 0.4375]
    assert got["center"] == [0.0, 1.0, 0.75, 0.25]
    assert got["top_left"] == [1.0, 0.0, 0.25, 0.0625]


def _identity_cam_model() -> nn.Module:
    """CAM map = the sum of the input's channels (1x1 identity conv, ReLU, GAP, all-ones linear head)."""
    conv, fc = nn.Conv2d(3, 3, 1, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        fc.weight.fill_(1.0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()


def test_evaluate_logs_border_center_and_boxes_with_their_area():
    maps = torch.zeros(3, S, S)
    maps[0, 0, 0] = 1.0
    maps[1, 4:12, 4:12] = 1.0
    maps[2, 0, 0], maps[2, 8, 8] = 1.0, 3.0
    x = maps[:, None].expand(3, 3, S, S).clone()
    report = evaluate(_identity_cam_model(), "1", x, methods=["cam"], curves=False,
                      regions={"top_left": (0, 0, 0.25, 0.25)})
    assert report.regions == ("border", "center", "top_left")
    assert report["cam"].region_energy.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.25, 0.75, 0.25]]
    s = report.summary()
    energy_tol = sum_tol(S * S + 3)  # float32 shares of S*S pixels (each <= 1), then a mean of three
    assert s["cam/cam/energy/border"] == pytest.approx(1.25 / 3, abs=energy_tol)
    assert s["cam/cam/energy/center"] == pytest.approx(1.75 / 3, abs=energy_tol)
    assert (s["cam/area/border"], s["cam/area/center"], s["cam/area/top_left"]) == (0.4375, 0.25, 0.0625)
    assert parse_key("cam/cam/energy/top_left").metric == "energy/top_left" and parse_key("cam/area/border") is None
    # switched off one by one; None: the defaults
    assert evaluate(_identity_cam_model(), "1", x, methods=["cam"], curves=False, regions={"border": None}).regions == ("center",)
    off = EvaluationOptions(regions={"border": None, "center": None})
    assert evaluate(_identity_cam_model(), "1", x, methods=["cam"], curves=False, options=off).regions == ()
    assert EvaluationOptions(regions=None).regions == MASK_FREE_REGIONS


def test_region_option_merges_defaults_stays_put_and_names_the_option_in_errors():
    merged = check_regions({"top_left": [0, 0, 0.2, 0.2], "border": 0.1, "center": None})
    assert merged == {"border": 0.1, "center": None, "top_left": (0.0, 0.0, 0.2, 0.2)}
    assert check_regions(merged) == merged and active(merged) == {"border": 0.1, "top_left": (0.0, 0.0, 0.2, 0.2)}
    for bad in ({"b": 0.7}, {"b": (0.5, 0, 0.2, 1)}, {"b": "x"}, {"a/b": 0.1}, [0.1]):
        with pytest.raises(ValueError, match=r"CAMCallback: .*regions.*e\.g\. regions="):
            CAMCallback(regions=bad)
    with pytest.raises(ValueError, match="both as masks and as static regions"):
        evaluate(_identity_cam_model(), "1", torch.rand(2, 3, S, S), methods=["cam"], curves=False,
                 regions={"border": torch.ones(2, S, S, dtype=torch.bool)})


# ------------------------------------------------------------ held-out set
def test_held_out_set_is_stratified_by_label_and_restored_as_checkpointed():
    labels = torch.tensor([0] * 90 + [1] * 8 + [2] * 2)
    for seed in range(5):
        for k in (3, 10):
            idx = heldout.select_indices(100, k, seed, labels)
            assert idx == heldout.select_indices(100, k, seed, labels) and len(set(idx)) == k
            assert set(labels[idx].tolist()) == {0, 1, 2}  # every class, the rare one too
    counts = torch.bincount(labels[heldout.select_indices(100, 50, 0, labels)], minlength=3).tolist()
    assert counts[0] >= 40 and counts[2] >= 1  # proportional after the first round

    class Labelled(Dataset):
        targets = labels.tolist()

        def __len__(self):
            return 100

        def __getitem__(self, i):
            return torch.zeros(3, 4, 4), self.targets[i]

    trainer = types.SimpleNamespace(val_dataloaders=DataLoader(Labelled()), world_size=1)
    held = heldout.choose(trainer, "val", None, None, None, 3, 0)
    assert sorted(held.labels.tolist()) == [0, 1, 2]
    restored = heldout.choose(trainer, "val", None, None, None, 3, 0, {"source": "dataset", "indices": [0, 1, 2]})
    assert restored.indices == [0, 1, 2]  # a resumed run keeps its checkpointed indices
    assert heldout.dataset_labels(torch.utils.data.Subset(Labelled(), [95, 99])).tolist() == [1, 2]


# --------------------------------------------------------------- per class
def test_per_class_keys_table_and_summaries(tmp_path):
    cb = CAMCallback(target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=6, n_steps=4, on_error="raise",
                     max_overhead=None, sanity_every_n_epochs=None, per_class=["tl", 2], save_png=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule())
    assert torch.bincount(cb.heldout.labels, minlength=3).tolist() == [2, 2, 2]  # stratified
    means = class_means(cb.last_report)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for cls, name in ((0, "tl"), (2, "bl")):
        for metric in ("insertion", "deletion", "pointing_game", "energy/border", "energy/center", "energy/object"):
            key = f"cam/liftcam/class/{name}/{metric}"
            # the same float32 mean of two images, then logged as float32: at most three roundings
            assert metrics[key] == pytest.approx(means[cls][("layer4", "liftcam")][metric], rel=sum_tol(3))
            assert parse_key(key).class_name == name and parse_key(key).metric == metric
    assert not any("/class/tr/" in k for k in metrics)  # not listed
    # the per-class rows average to the overall mean here (two images per class)
    overall = sum(means[c][("layer4", "liftcam")]["energy/border"] for c in range(3)) / 3
    # a mean of six vs a mean of three means of two (float32, in another order), then logging
    assert metrics["cam/liftcam/energy/border"] == pytest.approx(overall, rel=sum_tol(6 + 3 + 1))
    rows = by_method(metrics)
    assert set(rows) == {"liftcam", "gradcam"} and all("class" not in m for r in rows.values() for m in r)
    tables, specs = cam_tables(metrics, ["liftcam", "gradcam"])
    assert tables and "energy/border" in {s.name for s in specs}
    print_summary(metrics, ["liftcam", "gradcam"], 1.0, {}, con=Console(file=io.StringIO(), width=140))
    lines = (tmp_path / "cam" / "epoch0_class_scores.csv").read_text().splitlines()
    assert lines[0].startswith("class,images,liftcam_") and "liftcam_energy_border" in lines[0]
    assert [line.split(",")[:2] for line in lines[1:]] == [["0: tl", "2"], ["1: tr", "2"], ["2: bl", "2"]]
    # summarise directly: the same keys, any class list
    assert "cam/gradcam/class/1/insertion" in summarise(cb.last_report, per_class=[1])


def test_per_class_names_an_unknown_class(tmp_path):
    cb = CAMCallback(target_layer="layer4", num_samples=3, n_steps=4, on_error="raise", max_overhead=None,
                     sanity_every_n_epochs=None, log_images=False, per_class=["malignant"])
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], max_epochs=1))
    with pytest.raises(RuntimeError, match=r"per_class names 'malignant'.*e\.g\. per_class=\['tl'\]"):
        trainer.fit(LitTiny(), datamodule=ToyDataModule())
    with pytest.raises(ValueError, match="per_class must be 'all' or"):
        CAMCallback(per_class=[])


# ------------------------------------------- alerts and EarlyStopping
class FrameData(pl.LightningDataModule):
    """Images bright on the border band (``border=True``) or in the centre box; everything else 0."""

    def __init__(self, border: bool) -> None:
        super().__init__()
        self.region = 0.125 if border else MASK_FREE_REGIONS["center"]

    def _ds(self):
        x = region_mask(self.region, S, S).float()[None, None].expand(8, 3, S, S).clone()
        return torch.utils.data.TensorDataset(x, torch.arange(8) % 2)

    def train_dataloader(self):
        return DataLoader(self._ds(), batch_size=4)

    def val_dataloader(self):
        return DataLoader(self._ds(), batch_size=4)


class FrozenCAM(pl.LightningModule):
    """:func:`_identity_cam_model`, not trained (lr 0): its CAM map is the image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _identity_cam_model().train()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _frame_run(tmp_path, border: bool, callbacks, **kw):
    extra = kw.pop("trainer", {})
    cam = CAMCallback(target_layer="1", methods=["cam"], num_samples=4, n_steps=4, on_error="raise", max_overhead=None,
                      sanity_every_n_epochs=None, log_images=False, **kw)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cam, *callbacks], max_epochs=3, **extra))
    trainer.fit(FrozenCAM(), datamodule=FrameData(border))
    return trainer, cam


@pytest.mark.parametrize("border", [True, False])
def test_early_stopping_on_a_cam_key_stops_a_run_explained_by_the_border(tmp_path, border):
    diverge = EarlyStopping(monitor="cam/cam/energy/border", mode="min", divergence_threshold=0.4, patience=100)
    trainer, _ = _frame_run(tmp_path, border, [diverge])
    assert float(trainer.callback_metrics["cam/cam/energy/border"]) == (1.0 if border else 0.0)
    assert (trainer.current_epoch, trainer.should_stop) == ((1, True) if border else (3, False))
    # the same with stopping_threshold: "stop as soon as the border holds at least 40 %"
    reached = EarlyStopping(monitor="cam/cam/energy/border", mode="max", stopping_threshold=0.4, patience=100)
    trainer, _ = _frame_run(tmp_path, border, [reached])
    assert trainer.should_stop is border


def test_alert_warns_once_per_method_and_key(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, cam = _frame_run(tmp_path, True, [], alert={"energy/border": 0.4, "energy/center": 0.5})
    alerts = [str(w.message) for w in caught if "CAMCallback alert" in str(w.message)]
    assert len(alerts) == 1 and "cam/cam/energy/border = 1.0000 > 0.4 (epoch 0, validation)" in alerts[0]
    assert cam.alerts.state_dict()["fired"] == ["cam/cam/energy/border"]
    with pytest.raises(ValueError, match=r"alert key 'energy_border' is not a metric.*e\.g\. alert="):
        CAMCallback(alert={"energy_border": 0.4})
    with pytest.raises(ValueError, match=r"alert\['energy/border'\] must be a finite number"):
        CAMCallback(alert={"energy/border": "high"})


@pytest.mark.slow
def test_alert_reaches_the_offline_wandb_summary(wandb_env):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from wandb_offline import read_offline_run

    tmp_path = wandb_env
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="cam-test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _frame_run(tmp_path, True, [], alert={"pointing_game": 0.5, "energy/border": 0.4}, trainer={"logger": logger})
    wandb.finish()
    run = read_offline_run(tmp_path)
    assert run.summary["cam/alerts"] == ["cam/cam/energy/border = 1.0000 > 0.4 (epoch 0, validation)"]
    assert run.summary["cam/cam/energy/border"] == 1.0


# ------------------------------------------------------- class-specific shortcut
def test_shortcut_classes_put_the_marker_on_the_listed_classes_only():
    base = dict(num_samples=60, image_size=32, seed=3)
    clean, every, circles = ShapesDataset(**base), ShapesDataset(**base, shortcut=1.0), ShapesDataset(
        **base, shortcut=1.0, shortcut_classes=["circle"])
    labels = clean.targets
    assert torch.equal(labels, circles.targets) and torch.equal(ShapesDataset(**base, cache=False).targets, labels)
    for i in range(60):
        im, _, regions = circles.raw_regions(i)
        same = every if labels[i] == 0 else clean
        assert torch.equal(im, same.raw(i)[0]) and bool(regions["marker"].any()) == (labels[i] == 0)
    with pytest.raises(ValueError, match=r"data.shortcut_classes lists 7.*e\.g\. data.shortcut_classes=\[0\]"):
        ShapesDataset(**base, shortcut=1.0, shortcut_classes=[7])

"""Segmentation and multi-label: the shapes variants, the networks and the LightningModules (CPU, tiny)."""

from __future__ import annotations

import hashlib

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_cam.data import ShapesDataModule, ShapesDataset, ShapesMultiLabel, ShapesSegmentation
from lightning_cam.models import SEGMENTATION_MODELS, LitClassifier, LitMultiLabel, LitSegmenter, SmallSeg, build_model


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- data
@pytest.mark.parametrize(("kwargs", "digest"), [
    ({}, "663b7b8ba0a22679"),
    ({"image_size": 32, "num_classes": 4, "seed": 3}, "c507998830705a75"),
    ({"shortcut": 0.5, "seed": 1}, "aa826b0c88d4e697"),
])
def test_classification_dataset_is_bit_identical_to_earlier_versions(kwargs, digest):
    ds = ShapesDataset(40, **kwargs)  # digests taken before the renderer was split for the other tasks
    extra = () if ds._markers is None else (ds._markers,)
    assert _digest(ds._images, ds._masks, ds._labels, *extra) == digest


def test_segmentation_items_are_the_classification_images_with_class_maps():
    cls = ShapesDataset(12, image_size=32, seed=5)
    seg = ShapesSegmentation(12, image_size=32, seed=5)
    assert seg.num_classes == 7 and seg.classes[0] == "background" and seg.classes[1:] == cls.classes
    assert torch.equal(seg.targets, cls.targets + 1)
    for i in range(12):
        x, y, m = seg[i]
        xc, label, mc = cls[i]
        assert torch.equal(x, xc) and torch.equal(m, mc)
        assert y.dtype == torch.long and y.shape == (32, 32)
        assert set(y.unique().tolist()) == {0, int(label) + 1} and torch.equal(y > 0, m)


def test_segmentation_augmentation_moves_image_and_map_together():
    seg = ShapesSegmentation(8, image_size=32, seed=2, mean=None, std=None, augment=True)
    torch.manual_seed(0)
    for i in range(8):
        x, y, m = seg[i]
        obj = (x * 255).round()[:, m]  # the object is painted in one colour
        assert torch.equal(y > 0, m) and (obj == obj[:, :1]).all()


def test_segmentation_num_classes_counts_the_background():
    assert ShapesSegmentation(2, image_size=16, num_classes=3).classes == ("background", "circle", "square")
    with pytest.raises(ValueError, match="counts the background"):
        ShapesSegmentation(2, num_classes=8)


def test_multilabel_is_deterministic_cached_or_not():
    a = ShapesMultiLabel(10, image_size=32, seed=7)
    b = ShapesMultiLabel(10, image_size=32, seed=7, cache=False)
    for i in (0, 3, 9):
        xa, ya, ra = a[i]
        xb, yb, rb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and all(torch.equal(ra[k], rb[k]) for k in ra)
    assert not torch.equal(a[0][0], ShapesMultiLabel(1, image_size=32, seed=8)[0][0])


def test_multilabel_labels_match_the_drawn_objects():
    ds = ShapesMultiLabel(120, image_size=32, seed=0, mean=None, std=None)
    counts = []
    for i in range(len(ds)):
        x, y, regions = ds[i]
        assert y.dtype == torch.float32 and y.shape == (6,)
        assert set(regions) == {"object", *ds.classes}
        union = torch.zeros(32, 32, dtype=torch.bool)
        for c, name in enumerate(ds.classes):
            m = regions[name]
            assert bool(m.any()) == bool(y[c])  # a label iff its object is drawn
            if m.any():
                colour = (x * 255).round()[:, m]
                assert (colour == colour[:, :1]).all() and m.sum() >= 8  # one object, one colour
            assert not (union & m).any()  # objects never overlap
            union |= m
        assert torch.equal(union, regions["object"])
        counts.append(int(y.sum()))
    assert set(counts) == {1, 2, 3}


def test_multilabel_options_are_checked():
    with pytest.raises(ValueError, match="max_objects"):
        ShapesMultiLabel(1, num_classes=3, max_objects=4)
    with pytest.raises(ValueError, match="image_size"):
        ShapesMultiLabel(1, image_size=8)


def test_datamodule_tasks_and_their_batches():
    seg = ShapesDataModule(8, 8, 4, image_size=32, num_classes=7, task="segmentation", batch_size=4)
    seg.setup()
    x, y, m = next(iter(seg.train_dataloader()))
    assert seg.classes[0] == "background" and y.shape == (4, 32, 32) and y.dtype == torch.long and m.dtype == torch.bool
    ml = ShapesDataModule(8, 8, 4, image_size=32, task="multilabel", max_objects=2, batch_size=4)
    ml.setup()
    x, y, regions = next(iter(ml.val_dataloader()))
    assert y.shape == (4, 6) and y.sum(1).max() <= 2 and regions["circle"].shape == (4, 32, 32)
    with pytest.raises(ValueError, match="3..7"):
        ShapesDataModule(task="segmentation", num_classes=6 + 2)
    with pytest.raises(ValueError, match="shortcut options are for data.task=classification"):
        ShapesDataModule(task="multilabel", shortcut=0.5)
    with pytest.raises(ValueError, match="data.task must be one of"):
        ShapesDataModule(task="detection")


# ---------------------------------------------------------------- networks
def test_smallseg_is_small_and_returns_input_sized_maps():
    net = SmallSeg(num_classes=7)
    assert 100_000 <= sum(p.numel() for p in net.parameters()) <= 300_000
    out = net(torch.randn(2, 3, 48, 40))
    assert out.shape == (2, 7, 48, 40)
    assert net.features(torch.randn(1, 3, 64, 64)).shape[-2:] == (16, 16)


@pytest.mark.parametrize("name", [n for n in SEGMENTATION_MODELS if not n.endswith("101")])
def test_segmentation_networks_build_without_download_and_have_their_target_layer(name):
    with torch.device("meta"):
        net = build_model(name, num_classes=7)
    out = net.eval()(torch.empty(1, 3, 64, 64, device="meta"))
    scores = out if isinstance(out, torch.Tensor) else out["out"]
    assert scores.shape == (1, 7, 64, 64)
    assert isinstance(net.get_submodule(SEGMENTATION_MODELS[name]), torch.nn.Module)


# ---------------------------------------------------------------- LightningModules
def test_lit_classifier_hyperparameters_and_state_are_unchanged():
    lit = LitClassifier(build_model("smallcnn", 6), 6, lr=0.01)
    assert dict(lit.hparams) == {"num_classes": 6, "lr": 0.01, "weight_decay": 1e-4, "optimizer": "adamw", "momentum": 0.9,
                                 "scheduler": "cosine", "label_smoothing": 0.0, "compile": False}
    assert all(k.startswith("net.") for k in lit.state_dict())


def _fit(lit: pl.LightningModule, dm: ShapesDataModule, tmp_path) -> dict[str, float]:
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(lit, datamodule=dm)
    out = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(lit, datamodule=dm, verbose=False)
    out.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    return out


def test_lit_segmenter_fast_dev_run_logs_iou_and_pixel_accuracy(tmp_path):
    dm = ShapesDataModule(8, 8, 8, image_size=32, num_classes=7, task="segmentation", batch_size=4)
    lit = LitSegmenter(build_model("smallseg", 7), 7)
    m = _fit(lit, dm, tmp_path)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/iou", "test/iou", "test/acc"} <= set(m)
    assert 0.0 <= m["val/iou"] <= 1.0 and 0.0 <= m["val/acc"] <= 1.0
    assert all(k.startswith("net.") for k in lit.state_dict())
    probs = lit.predict_step((torch.randn(2, 3, 32, 32),), 0)
    assert probs.shape == (2, 7, 32, 32) and torch.allclose(probs.sum(1), torch.ones(2, 32, 32))


@pytest.mark.parametrize("name", ["smallseg", "lraspp_mobilenet_v3_large"])
def test_lit_segmenter_reads_torchvision_out_and_traces_with_fx(name):
    lit = LitSegmenter(build_model(name, 7), 7).eval()
    x = torch.randn(1, 3, 32, 32)
    traced = torch.fx.symbolic_trace(lit)  # the engine splits models with torch.fx
    with torch.no_grad():
        assert lit(x).shape == (1, 7, 32, 32) and torch.allclose(traced(x), lit(x))


def test_lit_multilabel_fast_dev_run_logs_f1_map_and_accuracy(tmp_path):
    dm = ShapesDataModule(8, 8, 8, image_size=32, task="multilabel", batch_size=4)
    lit = LitMultiLabel(build_model("smallcnn", 6), 6, label_smoothing=0.1)
    m = _fit(lit, dm, tmp_path)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/f1", "val/map", "test/f1"} <= set(m)
    assert 0.0 <= m["val/f1"] <= 1.0 and 0.0 <= m["val/map"] <= 1.0
    probs = lit.predict_step((torch.randn(2, 3, 32, 32),), 0)
    assert probs.shape == (2, 6) and ((probs > 0) & (probs < 1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "multilabel"])
def test_a_few_epochs_learn_the_task(task, tmp_path):
    """A real (small) fit at 32 px: mean IoU / mAP rise well above chance."""
    pl.seed_everything(0)
    seg = task == "segmentation"
    dm = ShapesDataModule(2000, 200, 8, image_size=32, num_classes=7 if seg else 6, task=task, batch_size=32)
    lit = (LitSegmenter(build_model("smallseg", 7), 7, lr=0.003) if seg
           else LitMultiLabel(build_model("smallcnn", 6), 6, lr=0.003))
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(lit, datamodule=dm)
    score = float(trainer.callback_metrics["val/iou" if seg else "val/map"])
    assert score > (0.3 if seg else 0.6)  # chance: ~0.13 (all background), ~0.33 (label prevalence)


def test_loader_collates_named_regions_of_every_class():
    ds = ShapesMultiLabel(6, image_size=16, seed=1)
    x, y, regions = next(iter(DataLoader(ds, batch_size=6)))
    assert x.shape == (6, 3, 16, 16) and torch.equal(ds.labels_of(ds.render(range(6))[1]), y)
    assert torch.equal(torch.stack([regions[c].flatten(1).any(1) for c in ds.classes], 1).float(), y)

"""CAMCallback's ``target``: prediction, label (classes, segmentation masks, multi-hot labels), a
built-in, a per-image callable; on real Trainers with tiny segmentation / multi-label / 1-logit models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import pytorch_lightning as pl
from lightning_cam import CAMCallback
from lightning_cam.callback import heldout, label_targets
from lightning_cam.targets import LabelLogit, SegmentationClass
from tolerance import forward_tol

IMG = 16


def _squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with one bright square of class 1 or 2 (its colour channel) and the label mask."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 3, IMG, IMG), generator=g) * 0.2
    masks = torch.zeros((n, IMG, IMG), dtype=torch.long)
    for i in range(n):
        c = 1 + i % 2
        y, x = torch.randint(0, IMG - 6, (2,), generator=g).tolist()
        images[i, c, y : y + 6, x : x + 6] += 0.8
        masks[i, y : y + 6, x : x + 6] = c
    return images, masks


class SegData(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.images, self.masks = _squares(n, seed)
        self.classes = ["background", "green", "blue"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.masks[i]


class MultiData(Dataset):
    """Two squares (classes 0..2 by colour channel); multi-hot labels and a region per class."""

    classes = ["red", "green", "blue"]

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand((n, 3, IMG, IMG), generator=g) * 0.2
        self.labels = torch.zeros((n, 3), dtype=torch.long)
        self.regions = {name: torch.zeros((n, IMG, IMG), dtype=torch.bool) for name in self.classes}
        for i in range(n):
            for c, (y, x) in zip(((i % 3), (i + 1) % 3), ((1, 1), (9, 9))):
                self.images[i, c, y : y + 6, x : x + 6] += 0.8
                self.labels[i, c] = 1
                self.regions[self.classes[c]][i, y : y + 6, x : x + 6] = True

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], {k: v[i] for k, v in self.regions.items()}


class Trunk(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, out, 1)


class SegNet(Trunk):
    def forward(self, x):
        return self.head(self.features(x))  # (B, 3, H, W)


class PoolNet(Trunk):
    def forward(self, x):
        return self.head(self.features(x)).mean(dim=(2, 3))  # (B, out)


class Lit(pl.LightningModule):
    def __init__(self, net: nn.Module, loss) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        return self.loss(self(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("val_loss", self.loss(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(tmp_path, module: pl.LightningModule, data: Dataset, **callback) -> CAMCallback:
    options = dict(target_layer="net.features", methods=["liftcam", "gradcam"], max_overhead=None, n_steps=4, log_images=False)
    cb = CAMCallback(**(options | callback))
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", max_epochs=1, callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(data, batch_size=4)
    torch.manual_seed(0)
    trainer.fit(module, loader, loader)
    assert cb.num_errors == 0
    return cb


# --------------------------------------------------------------- held-out labels of every kind
def test_segmentation_labels_give_each_image_its_object_class_and_region():
    images, masks = _squares(4, 0)
    held = heldout.from_user(images, masks, None, num_samples=4, seed=0)
    assert held.labels.tolist() == [1, 2, 1, 2] and held.dense_labels.shape == (4, IMG, IMG)
    assert torch.equal(held.masks, masks != 0)
    target = label_targets.targets_for("label", held, torch.arange(4), multilabel=False)
    assert isinstance(target, SegmentationClass) and torch.equal(target.masks_given, masks != 0)


def test_an_all_background_label_is_class_zero():
    dense = torch.zeros((2, 4, 4), dtype=torch.long)
    dense[1, :2] = 3
    assert label_targets.dense_label_classes(dense).tolist() == [0, 3]


def test_multi_hot_labels_expand_to_one_row_per_positive_label_with_its_own_region():
    data = MultiData(3, 0)
    held = heldout.gather_from_dataset(data, [0, 1, 2])
    assert held.labels is None and held.dense_labels.shape == (3, 3)
    pairs = label_targets.expand_positive_labels(held, data.classes)
    assert len(pairs) == 6 and pairs.images_of.tolist() == [0, 0, 1, 1, 2, 2] and pairs.indices == [0, 0, 1, 1, 2, 2]
    assert set(pairs.regions) == {"object"} and torch.equal(pairs.regions["object"], pairs.masks)
    for row, (image, label) in enumerate(zip(pairs.images_of.tolist(), pairs.labels.tolist())):
        assert data.labels[image, label] == 1
        assert torch.equal(pairs.masks[row], data.regions[data.classes[label]][image])
    target = label_targets.targets_for("label", pairs, torch.arange(6), multilabel=True)
    assert isinstance(target, LabelLogit) and target.classes.tolist() == pairs.labels.tolist()


@pytest.mark.parametrize("bad", ["labels", 3, None])
def test_an_unknown_target_is_refused_with_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="target must be 'prediction'.*Examples: target='label'"):
        CAMCallback(target=bad)


# --------------------------------------------------------------- real Trainers
@pytest.mark.parametrize("target", ["prediction", "label"])
def test_a_segmentation_model_is_explained_and_scored(tmp_path, target):
    module = Lit(SegNet(3), F.cross_entropy)
    cb = _fit(tmp_path, module, SegData(8, 0), target=target)
    scalars = cb.last_scalars
    for method in ("liftcam", "gradcam"):
        assert 0.0 <= scalars[f"cam/{method}/insertion"] <= 1.0 and 0.0 <= scalars[f"cam/{method}/deletion"] <= 1.0
    assert "cam/liftcam/pointing_game" in scalars  # the label's region (or, predicted, the object) is the mask
    explained = cb.last_report.explained
    if target == "label":
        assert explained.tolist() == [1 + i % 2 for i in range(8)]
    else:
        assert set(explained.tolist()) <= {1, 2}  # never the background


def test_multi_hot_labels_explain_every_positive_label(tmp_path):
    module = Lit(PoolNet(3), lambda out, y: F.binary_cross_entropy_with_logits(out, y.float()))
    cb = _fit(tmp_path, module, MultiData(6, 0), target="label", log_images=True, save_png=True)
    report = cb.last_report
    assert report.num_images == 12 and report.explained.tolist() == [c for i in range(6) for c in sorted((i % 3, (i + 1) % 3))]
    assert 0.0 <= cb.last_scalars["cam/liftcam/insertion"] <= 1.0
    assert list(tmp_path.rglob("epoch0_*scores.csv")), "the per-row table (one row per image and label) was written"
    assert report.kind == "multilabel"  # a row is missed when its label's sigmoid is below 0.5, not by top-1
    assert torch.equal(report.misclassified(), report.confidence < 0.5)
    probabilities = torch.sigmoid(report.logits.gather(1, report.explained[:, None])[:, 0])
    # the explanation pass and the scoring pass may batch differently: the forward round-off bound
    torch.testing.assert_close(report.confidence, probabilities, rtol=0, atol=forward_tol(module.net))


def test_a_one_logit_model_and_a_callable_target(tmp_path):
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    data = SegData(8, 1)
    labels = torch.tensor([int(m.max() == 2) for m in data.masks])
    binary = [(data.images[i], int(labels[i])) for i in range(8)]
    loss = lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y.float())  # noqa: E731
    cb = _fit(tmp_path, Lit(PoolNet(1), loss), binary, target="prediction")
    assert "cam/liftcam/insertion" in cb.last_scalars
    negative = _fit(tmp_path, Lit(PoolNet(1), loss), binary, target=BinaryClassifierOutputTarget(0))
    assert negative.last_report.explained.tolist() == [0] * 8  # pytorch-grad-cam's object: the negative side

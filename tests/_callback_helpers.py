"""Tiny CPU models and data for the CAMCallback tests (picklable for ddp_spawn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import pytorch_lightning as pl

IMG = 16
NUM_CLASSES = 3
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class ToyShapes(Dataset):
    """Deterministic toy images: class k = a bright square in quadrant k (+ noise), with masks."""

    def __init__(self, n: int, seed: int = 0, with_masks: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        imgs = torch.rand((n, 3, IMG, IMG), generator=g) * 0.3
        masks = torch.zeros((n, IMG, IMG), dtype=torch.bool)
        half = IMG // 2
        for i, c in enumerate(self.labels.tolist()):
            y0 = (c // 2) * half + 1
            x0 = (c % 2) * half + 1
            imgs[i, c % 3, y0 : y0 + half - 2, x0 : x0 + half - 2] += 0.7
            masks[i, y0 : y0 + half - 2, x0 : x0 + half - 2] = True
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self.images = (imgs.clamp(0, 1) - mean) / std
        self.masks = masks
        self.with_masks = with_masks
        self.classes = ["tl", "tr", "bl"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.with_masks:
            return self.images[i], int(self.labels[i]), self.masks[i]
        return self.images[i], int(self.labels[i])


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.layer4 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        a = self.layer4(self.features(x))
        return self.fc(self.drop(a.mean((2, 3))))


class LitTiny(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.net = TinyNet()
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.log("val_loss", F.cross_entropy(self(x), y), prog_bar=False)

    def test_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class ToyDataModule(pl.LightningDataModule):
    def __init__(self, n_train: int = 48, n_val: int = 24, batch_size: int = 8, with_masks: bool = True) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size, self.with_masks = n_train, n_val, batch_size, with_masks
        self.mean, self.std = MEAN, STD
        self.classes = ["tl", "tr", "bl"]

    def setup(self, stage=None):
        self.train_ds = ToyShapes(self.n_train, seed=1, with_masks=self.with_masks)
        self.val_ds = ToyShapes(self.n_val, seed=2, with_masks=self.with_masks)

    def train_dataloader(self):
        return DataLoader(self.train_ds, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_ds, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.val_ds, batch_size=self.batch_size)


def trainer_kwargs(tmp_path, **kw):
    base = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
    )
    base.update(kw)
    return base


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: 1 intra-op thread is ~10x faster than
    oversubscribed OpenMP threads. Import this fixture into a test module to use it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


from lightning_cam import CAMCallback  # noqa: E402


class SavingCAMCallback(CAMCallback):
    """A CAMCallback that saves each rank's gathered results (for the DDP test)."""

    def __init__(self, out_dir, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = str(out_dir)

    def on_validation_epoch_end(self, trainer, pl_module):
        super().on_validation_epoch_end(trainer, pl_module)
        if self.last_report is not None:
            torch.save(
                {"report": self.last_report, "scalars": self.last_scalars, "indices": self.heldout.indices},
                f"{self.out_dir}/rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt",
            )

"""The shared part of the app's LightningModules: the network, the optimizer and its scheduler.

:class:`LitBase` keeps the network as ``self.net``, checks and stores the optimizer settings,
compiles on request and runs the train / val / test steps through one ``_step(batch, stage)``
that each task implements (:class:`~lightning_cam.models.LitClassifier`,
:class:`~lightning_cam.lit_tasks.LitSegmenter`, :class:`~lightning_cam.lit_tasks.LitMultiLabel`).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


class LitBase(pl.LightningModule):
    """Network, optimizer (``adamw``, ``adam``, ``sgd``) and scheduler (``cosine``, ``onecycle``,
    ``none``) of a task module; saves its arguments but ``net`` as hyper-parameters. Subclasses
    implement ``_step`` and may build their metrics in :meth:`init_metrics`."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        scheduler: str = "cosine",
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.optimizer_name = optimizer.lower()
        self.momentum = float(momentum)
        self.scheduler_name = (scheduler or "none").lower()
        self.label_smoothing = float(label_smoothing)
        self.compile = compile
        if self.optimizer_name not in ("adamw", "adam", "sgd"):
            raise ValueError(f"optimizer must be adamw, adam or sgd, got {optimizer!r}")
        if self.scheduler_name not in ("cosine", "onecycle", "none"):
            raise ValueError(f"scheduler must be cosine, onecycle or none, got {scheduler!r}")
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.init_metrics()

    def init_metrics(self) -> None:
        """Build the task's metric modules (called at the end of ``__init__``)."""

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x)

    def setup(self, stage: str) -> None:
        if self.compile and stage == "fit" and not hasattr(self.net, "_orig_mod"):
            self.net = torch.compile(self.net)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        """``<stage>/loss``: per step and epoch in training, per epoch in evaluation."""
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=stage != "test",
                 sync_dist=stage != "train", batch_size=batch_size)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """What ``predict_step`` returns for the scores: the softmax over dimension 1."""
        return scores.softmax(1)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.probabilities(self(x))

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler_name == "none" or self._trainer is None:
            return opt
        if self.scheduler_name == "onecycle":
            total = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(1, total))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        t_max = max(1, int(self.trainer.max_epochs or 1))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

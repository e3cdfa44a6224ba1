"""LightningModules of the other tasks: semantic segmentation and multi-label classification.

* :class:`LitSegmenter`: per-pixel cross-entropy; logs ``<stage>/loss``, ``<stage>/acc`` (pixel
  accuracy) and, in validation and test, ``<stage>/iou`` (mean IoU over the classes,
  torchmetrics' ``MulticlassJaccardIndex``).
* :class:`LitMultiLabel`: binary cross-entropy with logits; logs ``<stage>/loss``, ``<stage>/acc``
  (label-wise accuracy at logit 0) and, in validation and test, ``<stage>/f1`` (macro F1) and
  ``<stage>/map`` (macro average precision).

Both share :class:`~lightning_cam.lit.LitBase` (network, optimizer, scheduler, compile) with
:class:`~lightning_cam.models.LitClassifier`; their validation and test scores are torchmetrics
metrics accumulated over the epoch (an IoU or an F1 is not a mean of per-batch values).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassJaccardIndex,
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from lightning_cam.lit import LitBase
from lightning_cam.seg_models import segmentation_scores

_EVAL_STAGES = ("val", "test")


class _EpochMetrics(LitBase):
    """A :class:`LitBase` whose validation and test scores are torchmetrics ``metrics()``."""

    def metrics(self) -> dict[str, Metric]:
        raise NotImplementedError

    def init_metrics(self) -> None:
        """One :class:`MetricCollection` of :meth:`metrics` per evaluation stage (``self.stage_metrics[stage]``)."""
        self.stage_metrics = nn.ModuleDict({s: MetricCollection(self.metrics()) for s in _EVAL_STAGES})

    def log_epoch_metrics(self, stage: str, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Update ``stage``'s metrics with a batch; Lightning logs ``<stage>/<name>`` at the epoch end."""
        metrics = self.stage_metrics[stage]
        metrics.update(preds, target)
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name != "acc")


class LitSegmenter(_EpochMetrics):
    """Semantic segmentation: per-pixel cross-entropy, pixel accuracy, mean IoU.

    Args: as :class:`~lightning_cam.models.LitClassifier`; ``num_classes`` counts the background.
    The network returns ``(B, C, H, W)`` scores or torchvision's ``{"out": ...}``; ``forward``
    returns the ``(B, C, H, W)`` tensor. Batches are ``(images, class maps (B, H, W) long, ...)``.
    """

    def metrics(self) -> dict[str, Metric]:
        return {
            "acc": MulticlassAccuracy(self.num_classes, average="micro"),
            "iou": MulticlassJaccardIndex(self.num_classes, average="macro"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return segmentation_scores(self.net(x))

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1].long()
        scores = self(x)
        loss = F.cross_entropy(scores, y, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        self.log_loss(stage, loss, x.shape[0])
        if stage == "train":
            acc = (scores.argmax(1) == y).float().mean()
            self.log("train/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        else:
            self.log_epoch_metrics(stage, scores.argmax(1), y)
        return loss


class LitMultiLabel(_EpochMetrics):
    """Multi-label classification: binary cross-entropy with logits, label accuracy, F1, mAP.

    Args: as :class:`~lightning_cam.models.LitClassifier` (``label_smoothing`` pulls the 0/1
    targets towards 1/2 in training). Batches are ``(images, multi-hot (B, C), ...)``;
    ``predict_step`` returns the sigmoid probabilities.
    """

    def metrics(self) -> dict[str, Metric]:
        n = self.num_classes
        return {
            "acc": MultilabelAccuracy(n),
            "f1": MultilabelF1Score(n, average="macro"),
            "map": MultilabelAveragePrecision(n, average="macro"),
        }

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.sigmoid()

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1].float()
        logits = self(x)
        smooth = self.label_smoothing if stage == "train" else 0.0
        loss = F.binary_cross_entropy_with_logits(logits, y * (1 - smooth) + 0.5 * smooth)
        self.log_loss(stage, loss, x.shape[0])
        if stage == "train":
            acc = ((logits > 0) == (y > 0.5)).float().mean()
            self.log("train/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        else:
            self.log_epoch_metrics(stage, logits, y.round().long())
        return loss

"""CAMCallback on models as users train them: every Lightning precision, non-tensor outputs,
a diverging (NaN) model, explaining the true label."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from lightning_cam import CAMCallback
from tests._callback_helpers import LitTiny, ToyDataModule, one_torch_thread, trainer_kwargs  # noqa: F401

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
        target_layer="layer4", methods=["liftcam", "gradcam", "scorecam"], num_samples=6, on_error="raise"
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
    assert callback.num_errors == 0

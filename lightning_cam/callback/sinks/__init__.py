"""Where the callback's pictures go: one sink per logger kind behind one small protocol.

A sink takes a :class:`~lightning_cam.callback.sinks.media.Media` (the report
of one evaluation, its held-out images, epoch, stage and key prefix; the
labelled grids are rendered once and shared) and writes it:

* :class:`WandbSink` - grids, a per-image table and the mean curves (W&B);
* :class:`TensorBoardSink` - grids as TensorBoard images;
* :class:`MLflowSink` - PNG grids and the scores CSV as artifacts of the MLflow run;
* :class:`FileSink` - PNG grids and a CSV of every per-image score (any logger, or none);
* :class:`ImageLoggerSink` - grids through ``log_image`` of any other Lightning logger.

Scalars do not go through sinks: they are logged with ``pl_module.log`` and
reach every logger, ``ModelCheckpoint`` and the sweepers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lightning_cam.callback._lightning import is_logger
from lightning_cam.callback.sinks.files import FileSink
from lightning_cam.callback.sinks.image_logger import ImageLoggerSink
from lightning_cam.callback.sinks.media import Display, Media
from lightning_cam.callback.sinks.mlflow import MLflowSink
from lightning_cam.callback.sinks.tensorboard_sink import TensorBoardSink
from lightning_cam.callback.sinks.wandb_sink import WandbSink

__all__ = ["Display", "FileSink", "is_logger", "ImageLoggerSink", "Media", "MLflowSink", "Sink", "TensorBoardSink", "WandbSink", "png_dir", "sinks_for"]


@runtime_checkable
class Sink(Protocol):
    """Anything with ``write(media)``; called on rank zero only."""

    def write(self, media: Media) -> None: ...


#: Loggers whose runs keep the pictures and the CSV themselves: no ``cam/`` folder by default.
RUN_STORES = ("WandbLogger", "MLFlowLogger")


def png_dir(trainer: Any, save_png: bool | None) -> str | None:
    """``<log_dir>/cam`` when PNG/CSV files are wanted (``save_png``; None = when no W&B or MLflow
    logger keeps them in its run), else None.

    Call it on every rank: ``trainer.log_dir`` broadcasts under DDP.
    """
    loggers = getattr(trainer, "loggers", None) or []
    in_run = any(is_logger(lg, name) for lg in loggers for name in RUN_STORES)
    if not (save_png if save_png is not None else not in_run):
        return None
    try:
        return f"{trainer.log_dir or trainer.default_root_dir}/cam"
    except Exception:  # noqa: BLE001 - loggers without a log_dir
        return f"{trainer.default_root_dir}/cam"


def sinks_for(loggers: list[Any], png_dir: str | Path | None) -> list[Sink]:
    """One sink per logger that can take images, plus PNG/CSV files under ``png_dir`` (None = no files)."""
    sinks: list[Sink] = []
    for lg in loggers:
        if is_logger(lg, "WandbLogger"):
            sinks.append(WandbSink(lg))
        elif is_logger(lg, "TensorBoardLogger"):
            sinks.append(TensorBoardSink(lg))
        elif is_logger(lg, "MLFlowLogger"):
            sinks.append(MLflowSink(lg))
        elif callable(getattr(lg, "log_image", None)):
            sinks.append(ImageLoggerSink(lg))
    if png_dir is not None:
        sinks.append(FileSink(png_dir))
    return sinks

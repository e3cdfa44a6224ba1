"""Grids as TensorBoard images (tags = the W&B keys, e.g. ``cam/liftcam/grid``, ``cam_test/overview``)."""

from __future__ import annotations

from typing import Any

from lightning_cam.callback.sinks.media import Media

__all__ = ["TensorBoardSink"]


class TensorBoardSink:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write(self, media: Media) -> None:
        writer = self.logger.experiment
        for key, (_, grid, _) in media.grids.items():
            writer.add_image(key, grid, global_step=media.step, dataformats="HWC")

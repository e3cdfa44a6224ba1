"""Grids through ``log_image(key, images, step)`` of any other Lightning logger (Neptune, Comet, your own)."""

from __future__ import annotations

from typing import Any

from lightning_cam.callback.sinks.media import Media

__all__ = ["ImageLoggerSink"]


class ImageLoggerSink:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write(self, media: Media) -> None:
        for key, (_, grid, _) in media.grids.items():
            self.logger.log_image(key=key, images=[grid], step=media.step)

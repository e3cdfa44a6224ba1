"""MLflow: the grids, the agreement plot and the per-image CSV as artifacts of the run (``cam/`` in it)."""

from __future__ import annotations

import tempfile
from typing import Any

from lightning_cam.callback.sinks.files import FileSink
from lightning_cam.callback.sinks.media import Media

__all__ = ["MLflowSink"]


class MLflowSink:
    """Writes what :class:`FileSink` writes (PNG per grid, the scores CSV) into the artifacts of the
    ``MLFlowLogger``'s run, under ``artifact_path`` (any tracking store: file, sqlite, a server)."""

    def __init__(self, logger: Any, artifact_path: str = "cam") -> None:
        self.logger = logger
        self.artifact_path = artifact_path

    def write(self, media: Media) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            FileSink(tmp).write(media)
            self.logger.experiment.log_artifacts(self.logger.run_id, tmp, artifact_path=self.artifact_path)

"""PNG grids and a CSV of every per-image score, written under a folder (``<log_dir>/cam`` by default)."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_cam import viz
from lightning_cam.callback.sinks.media import Media

__all__ = ["FileSink"]


class FileSink:
    """Writes ``<stem>.png`` per grid, ``<stage_>epoch<E>_[<scope>_]scores.csv`` (one row per held-out image)
    and ``..._class_scores.csv`` (one row per class, :meth:`Media.class_table_rows`)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def write(self, media: Media) -> None:
        for stem, grid, _ in media.grids.values():
            viz.save_png(grid, self.directory / f"{stem}.png", compress_level=1)
        for name, (cols, rows) in (("scores", media.table_rows()), ("class_scores", media.class_table_rows())):
            with open(self.directory / f"{media.file_stem(None, name)}.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(cols)
                writer.writerows(rows)

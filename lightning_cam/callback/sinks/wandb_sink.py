"""W&B: labelled grids, a per-image table, a per-class table (``cam/class_table``), the mean insertion / deletion curves and the
method-agreement heatmap (image ``cam/agreement``) with its table (``cam/agreement_table``).

The table and the curve charts come with the evaluations that computed the
curves (all of them without a cost budget).

Logged with ``experiment.log`` together with ``trainer/global_step`` and
``epoch`` (no ``step=``: W&B's x-axis is the trainer's global step, so the
pictures line up with the epoch's scalars).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lightning_cam import viz
from lightning_cam.callback.sinks.media import Media
from lightning_cam.evaluation.keys import row_label

__all__ = ["WandbSink"]


def _mean_curve(r: Any, kind: str) -> list[float]:
    """The mean ``kind`` curve over the finite images whose curves were scored."""
    curves = r.finite_rows(getattr(r, f"{kind}_curve")).double()
    return curves[torch.isfinite(curves).all(1)].mean(0).cpu().tolist()


class WandbSink:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write(self, media: Media) -> None:
        import wandb

        with tempfile.TemporaryDirectory() as tmp:
            # PNGs encoded with fast compression (wandb.Image(array) uses PIL's slow default);
            # W&B copies them into the run when logged
            payload: dict[str, Any] = {
                key: wandb.Image(str(viz.save_png(grid, Path(tmp) / f"{stem}.png", compress_level=1)), caption=caption)
                for key, (stem, grid, caption) in media.grids.items()
            }
            self._log(media, payload, Path(tmp))

    def _log(self, media: Media, payload: dict[str, Any], tmp: Path) -> None:
        import wandb

        if media.report.fractions is not None:  # evaluations with insertion/deletion
            if media.display.table:
                payload[media.key(None, "table")] = self.table(media, tmp)
            if media.display.curves:
                payload.update(self.curves(media))
        if media.display.table:
            cols, rows = media.class_table_rows()
            payload[media.key(None, "class_table")] = wandb.Table(columns=cols, data=rows)
        for layer, (names, matrix) in media.agreement.items():
            table = wandb.Table(columns=["method_a", "method_b", "spearman"])
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    table.add_data(a, b, float(matrix[i, j]))
            payload[media.key(layer, "agreement_table")] = table
        self.logger.experiment.log(dict(payload, **{"trainer/global_step": media.step, "epoch": media.epoch}))

    @staticmethod
    def curves(media: Media) -> dict[str, Any]:
        import wandb

        out: dict[str, Any] = {}
        xs = media.report.fractions.detach().cpu().tolist()
        rows = media.report.curve_rows
        scored = media.report.num_images if rows is None else int(rows.sum())
        for layer, lrep in media.report.layers.items():
            for kind in ("insertion", "deletion"):
                keys = [m for m, r in lrep.methods.items() if getattr(r, f"{kind}_curve") is not None]
                ys = [_mean_curve(lrep.methods[m], kind) for m in keys]
                out[media.key(layer, "curves", kind)] = wandb.plot.line_series(
                    xs=xs, ys=ys, keys=keys, title=f"Mean {kind} curve, {scored} images x {len(xs)} points ({media.title(layer if media.multi_layer else '')})",
                    xname="fraction of pixels " + ("inserted" if kind == "insertion" else "deleted"),
                )
        return out

    @staticmethod
    def table(media: Media, tmp: Path) -> Any:
        """One row per held-out image: index, the image and its overlays side by side in one picture
        (column ``"image | <method> | ..."``), label, prediction, confidence, then the per-image scores.

        One picture per row (not one per method) and fast PNG compression into ``tmp``, which W&B
        copies from: a W&B image costs about a millisecond of bookkeeping, whatever its size."""
        import wandb

        held, d = media.held, media.display
        images = held.images.float()
        h, w = images.shape[-2:]
        scale = min(1.0, d.table_image_size / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))

        def small(x):  # noqa: ANN001, ANN202
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            return viz.upscale(x, min(64, d.table_image_size))

        tiles = {"image": small(viz.denormalize(images, d.mean, d.std))}
        for layer, m, r in media.report.items():
            overlay = viz.overlay(images, r.saliency.detach().float().cpu(), d.alpha, d.colormap, d.mean, d.std)
            tiles[row_label(layer if media.multi_layer else None, m)] = small(overlay)
        strips = torch.cat(list(tiles.values()), dim=-1)  # (N, 3, h, w * (1 + methods))
        score_cols, score_rows = media.table_rows()
        table = wandb.Table(columns=score_cols[:1] + [" | ".join(tiles)] + score_cols[1:])
        for i, row in enumerate(score_rows):
            png = viz.save_png(viz.to_uint8_hwc(strips[i]), tmp / f"table_{i}.png", compress_level=1)
            table.add_data(row[0], wandb.Image(str(png)), *row[1:])
        return table

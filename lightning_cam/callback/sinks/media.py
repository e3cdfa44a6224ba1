"""What the sinks receive: one evaluation's report, images and labels, and its rendered grids."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from torch import Tensor

from lightning_cam import viz
from lightning_cam.evaluation.keys import PER_IMAGE_COLUMNS, row_label
from lightning_cam.evaluation.report import EvaluationReport, class_groups, class_means
from lightning_cam.callback.heldout import HeldOut

__all__ = ["Display", "Media", "STAGE_WORDS"]

STAGE_WORDS = {"val": "validation", "validate": "trainer.validate", "test": "trainer.test"}


def _at(values: Tensor, i: int, j: int | None) -> Tensor:
    return values[i] if j is None else values[i, j]


@dataclass(frozen=True)
class Display:
    """How pictures look: input normalisation to undo, overlay opacity, colour map, sizes and extras
    (``method_grids``: a grid per method besides the overview, which already holds every method)."""

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    alpha: float = 0.5
    colormap: str = "inferno"
    max_images: int = 16
    tile_size: int = 96
    table: bool = True
    curves: bool = True
    table_image_size: int = 128
    method_grids: bool = False


@dataclass
class Media:
    """One evaluation to write: ``report`` (CPU), the ``held`` images, epoch / step / stage and key ``prefix``.

    ``target``: the callback's ``target`` option; with ``"label"`` the grids and
    tables show the explained label next to the prediction and mark the
    misclassified images. ``scope``: see :attr:`scope`.
    """

    report: EvaluationReport
    held: HeldOut
    stage: str
    prefix: str
    epoch: int
    step: int
    display: Display = field(default_factory=Display)
    class_names: Sequence[str] | None = None
    layer_in_key: bool | None = None  # None: when the report has several layers
    target: str = "prediction"
    #: names this callback in every key and file name when several CAMCallbacks share the Trainer
    #: (``CAMCallback.key_scope``: its layers, then ``:`` and its methods when another explains them too)
    scope: str | None = None

    @property
    def multi_layer(self) -> bool:
        """Whether keys, file names and table columns name the layer."""
        return len(self.report.layers) > 1 if self.layer_in_key is None else self.layer_in_key

    def _where(self, layer: str | None) -> list[str]:
        """The key parts naming the callback and the layer: ``[scope, layer]`` (layer: when this
        callback has several), or without a scope ``[layer]`` (when :attr:`multi_layer`)."""
        if self.scope is not None:
            return [self.scope, *([layer] if layer and len(self.report.layers) > 1 else [])]
        return [layer] if layer and self.multi_layer else []

    def key(self, layer: str | None, *parts: str) -> str:
        """``prefix/[scope/][layer/]parts...``; ``layer=None``: a key of the whole callback (its table)."""
        return "/".join([self.prefix, *self._where(layer), *parts])

    def file_stem(self, layer: str | None, name: str) -> str:
        """PNG/CSV name: ``[<stage>_]epoch<E>_[<scope>_][<layer>_]<name>`` (no stage for validation during
        fit; ``/`` and ``:`` of layer and scope names become ``_`` and ``-``)."""
        stage = "" if self.stage == "val" else f"{self.stage}_"
        where = [w.replace("/", "_").replace(":", "-") for w in self._where(layer)]
        return "_".join([f"{stage}epoch{self.epoch}", *where, name])

    def label(self, value: int | None) -> str:
        """``"k: name"`` with class names, else ``"k"``; empty for None."""
        if value is None or value < 0:
            return ""
        if self.class_names and value < len(self.class_names):
            return f"{value}: {self.class_names[value]}"
        return str(value)

    def title(self, layer: str) -> str:
        where = f" · layer {layer}" if layer else ""
        return f"{STAGE_WORDS.get(self.stage, self.stage)} · epoch {self.epoch}{where}"

    @functools.cached_property
    def shown(self) -> int:
        return min(self.display.max_images, len(self.held))

    def misclassified(self) -> list[bool] | None:
        """Per image: prediction != label (None without labels)."""
        labels = self.held.labels
        if labels is None:
            return None
        return [int(p) != int(lab) for p, lab in zip(self.report.predictions.tolist(), list(labels))]

    def column_labels(self) -> list[str]:
        """Per shown image: label, prediction and the confidence in the explained class (three lines).

        With ``target="label"`` the prediction of a misclassified image is marked ``WRONG`` and the
        last line is ``p(label)``: the maps then explain the label, not the prediction.
        """
        k = self.shown
        labels = self.held.labels
        wrong = self.misclassified() if self.target == "label" else None
        out = []
        for i in range(k):
            lab = self.label(None if labels is None else int(labels[i]))
            pred = self.label(int(self.report.predictions[i]))
            conf = float(self.report.confidence[i])
            if wrong is not None:
                out.append(f"label {lab}\npred {pred}{'  WRONG' if wrong[i] else ''}\np(label) {conf:.2f}")
            else:
                out.append(f"label {lab or '?'}\npred {pred}\nconf {conf:.2f}")
        return out

    @functools.cached_property
    def rgb(self) -> Tensor:
        return viz.denormalize(self.held.images[: self.shown].float(), self.display.mean, self.display.std)

    def overlays(self, layer: str, method: str) -> Tensor:
        d = self.display
        sal = self.report.method(method, layer).saliency[: self.shown].detach().float().cpu()
        return viz.overlay(self.held.images[: self.shown].float(), sal, d.alpha, d.colormap, d.mean, d.std)

    @functools.cached_property
    def grids(self) -> dict[str, tuple[str, np.ndarray, str]]:
        """``{key: (file stem, uint8 HWC grid, caption)}``: per layer an overview (and one grid per method).

        Every grid has a title (stage, epoch, layer), a label per row (``image``
        / method name) and per column (label, prediction, confidence), the colour bar of the
        maps, and a red frame round the misclassified images (when the labels are known).
        """
        out: dict[str, tuple[str, np.ndarray, str]] = {}
        cols = self.column_labels()
        size = self.display.tile_size
        wrong = self.misclassified()
        style = {"colorbar": self.display.colormap, "marked": None if wrong is None else wrong[: self.shown]}
        for layer, lrep in self.report.layers.items():
            over = {m: self.overlays(layer, m) for m in lrep.methods}
            lay = layer if self.multi_layer else ""
            title = self.title(lay or lrep.qualified)
            rows = [("image", self.rgb), *over.items()]
            out[self.key(layer, "overview")] = (
                self.file_stem(layer, "overview"),
                viz.labelled_grid(rows, cols, title, min_size=size, **style),
                f"{title}: the images, then one row per method ({', '.join(lrep.methods)})",
            )
            for m, ov in over.items() if self.display.method_grids else ():
                out[self.key(layer, m, "grid")] = (
                    self.file_stem(layer, m),
                    viz.labelled_grid([("image", self.rgb), (m, ov)], cols, f"{m} · {title}", min_size=size, **style),
                    f"{title}: the images, then their {m} overlays",
                )
            if layer in self.agreement:
                names, matrix = self.agreement[layer]
                out[self.key(layer, "agreement")] = (
                    self.file_stem(layer, "agreement"),
                    viz.agreement_heatmap(names, matrix, f"method agreement (mean Spearman) · {title}"),
                    f"{title}: mean pairwise Spearman rank correlation between the methods' maps",
                )
        return out

    @functools.cached_property
    def agreement(self) -> dict[str, tuple[list[str], Tensor]]:
        """Per layer with two or more methods: names and the (M, M) mean pairwise Spearman matrix
        of the maps at layer resolution (:func:`lightning_cam.metrics.method_agreement`)."""
        from lightning_cam.metrics.monitoring import method_agreement

        out = {}
        for layer, lrep in self.report.layers.items():
            maps = {m: r.maps for m, r in lrep.methods.items() if r.maps is not None}
            if len(maps) >= 2:
                out[layer] = method_agreement(maps)
        return out

    def class_table_rows(self) -> tuple[list[str], list[list[object]]]:
        """Per class (by label; the explained class without labels): its number of images, then per
        method the means of :func:`~lightning_cam.evaluation.report.class_means` (the W&B table
        ``cam/class_table`` and ``<stage_>epoch<E>_class_scores.csv``)."""
        means = class_means(self.report)
        groups = class_groups(self.report)
        names = sorted({(layer, m, metric) for per in means.values() for (layer, m), v in per.items() for metric in v},
                       key=lambda t: (list(self.report.layers).index(t[0]), self.report.methods.index(t[1]), t[2]))
        cols = ["class", "images"] + [
            f"{row_label(layer if self.multi_layer else None, m)}_{metric.replace('/', '_')}" for layer, m, metric in names
        ]
        rows = [
            [self.label(cls), int((groups == cls).sum()),
             *[per.get((layer, m), {}).get(metric, float("nan")) for layer, m, metric in names]]
            for cls, per in means.items()
        ]
        return cols, rows

    def table_rows(self) -> tuple[list[str], list[list[object]]]:
        """Per-image scores: columns and rows (no pictures), for the CSV file and the W&B table."""
        rep = self.report
        by_label = self.target == "label"
        wrong = self.misclassified() if by_label else None
        # with target="label": "explained" is the class the maps explain and "confidence" its probability
        cols = ["index", "label", "prediction", *(["misclassified", "explained"] if by_label else []), "confidence"]
        names = []
        for layer, m, r in rep.items():
            name = row_label(layer if self.multi_layer else None, m)
            for k in PER_IMAGE_COLUMNS:
                if getattr(r, k) is not None:
                    names.append((layer, m, k, None))
                    cols.append(f"{name}_{k}")
            if r.region_energy is not None:
                for j, region in enumerate(rep.regions):
                    names.append((layer, m, "region_energy", j))
                    cols.append(f"{name}_energy_{region}")
        src = self.held.indices if self.held.indices is not None else list(range(len(self.held)))
        rows = []
        for i in range(rep.num_images):
            lab = None if self.held.labels is None else int(self.held.labels[i])
            row: list[object] = [int(src[i]), self.label(lab), self.label(int(rep.predictions[i]))]
            if wrong is not None:
                row += [bool(wrong[i]), self.label(int(rep.explained[i]))]
            row.append(float(rep.confidence[i]))
            row += [float(_at(getattr(rep.method(m, layer), k), i, j)) for layer, m, k, j in names]
            rows.append(row)
        return cols, rows



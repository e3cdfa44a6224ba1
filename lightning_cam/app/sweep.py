"""Sweep comparison: a Hydra callback that, at the end of a multirun, compares its jobs.

It reads what every job left on disk (``<job dir>/metrics.json`` written by the app and
``<job dir>/.hydra/overrides.yaml`` written by Hydra), never in-process state, so it works
for any launcher whose jobs write ``metrics.json`` (basic, joblib, submitit/SLURM, ...), and
can be rerun on an old sweep folder: ``python -m lightning_cam.app.sweep <sweep dir>``.

Writes into the sweep directory:

* ``comparison.csv`` - one row per job: job, its overrides (those that differ between jobs), status, ``val/acc``
  (``val/iou`` of segmentation, ``val/f1`` and ``val/map`` of multi-label runs), ``test/...`` (when
  tested) and every final ``cam/*`` score of every method;
* ``comparison.md`` - the same table in Markdown;
* ``comparison.png`` - bar charts comparing the jobs (the model scores and the main CAM scores, one
  bar per method);

and prints the table with rich (transposed: one row per quantity, one column per job).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["JobResult", "SweepComparison", "collect_jobs", "write_comparison"]

# the model's scores of each task (classification: acc; segmentation: iou, acc; multi-label: f1, map, acc)
SCORE_KEYS = ("val/acc", "val/iou", "val/f1", "val/map", "test/acc", "test/iou", "test/f1", "test/map")
HEAD_KEYS = (*SCORE_KEYS[:4], "val/loss", *SCORE_KEYS[4:], "test/loss")
# quantities shown in the chart, in this order, when present (suffix of cam/<method>/...)
CHART_QUANTITIES = (
    "insertion",
    "deletion",
    "pointing_game",
    "energy/object",
    "energy/marker",
    "stability",
    "randomization_spearman",
    "sparseness",
)


@dataclass
class JobResult:
    """One job of a sweep: its folder, its overrides and its final metrics (empty if it wrote none)."""

    name: str
    path: Path
    overrides: list[str]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "ok" if self.metrics else "no metrics.json"


def _job_sort_key(p: Path) -> tuple:
    return tuple((0, int(s)) if s.isdigit() else (1, s) for s in p.parts)


def collect_jobs(sweep_dir: str | Path) -> list[JobResult]:
    """Every job folder under ``sweep_dir`` (a folder holding ``.hydra/overrides.yaml`` or a
    ``metrics.json``), with its overrides and metrics, ordered by job number."""
    root = Path(sweep_dir)
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    dirs |= {p.parent for p in root.rglob("metrics.json")}
    dirs.discard(root)  # the sweep's own .hydra (multirun.yaml) is not a job
    jobs = []
    for d in sorted(dirs, key=lambda p: _job_sort_key(p.relative_to(root))):
        overrides: list[str] = []
        ov = d / ".hydra" / "overrides.yaml"
        if ov.is_file():
            overrides = [str(o) for o in (OmegaConf.load(ov) or [])]
        metrics: dict[str, float] = {}
        mf = d / "metrics.json"
        if mf.is_file():
            try:
                raw = json.loads(mf.read_text())
                metrics = {k: float(v) for k, v in (raw.get("metrics", raw) or {}).items() if _is_number(v)}
            except (OSError, ValueError) as err:
                log.warning("sweep comparison: cannot read %s: %s", mf, err)
        jobs.append(JobResult(str(d.relative_to(root)), d, overrides, metrics))
    return jobs


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _columns(jobs: Sequence[JobResult]) -> list[str]:
    keys = {k for j in jobs for k in j.metrics}
    head = [k for k in HEAD_KEYS if k in keys]
    cam = sorted(k for k in keys if k.startswith("cam/") and k.count("/") >= 2)
    return head + cam


def _fmt(v: float | None) -> str:
    if v is None or math.isnan(v):
        return ""
    a = abs(v)
    return f"{v:.3e}" if a != 0 and (a < 1e-3 or a >= 1e4) else f"{v:.4f}"


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _varying(jobs: Sequence[JobResult]) -> tuple[dict[str, str], list[str]]:
    """Per job the overrides that differ between jobs (the swept ones), and the common ones."""
    per = [{_key(o): o for o in j.overrides} for j in jobs]
    keys = list(dict.fromkeys(k for d in per for k in d))
    same = [k for k in keys if len(jobs) > 1 and all(k in d for d in per) and len({d[k] for d in per}) == 1]
    labels = {j.name: " ".join(o for o in j.overrides if _key(o) not in same) for j in jobs}
    return labels, [per[0][k] for k in same]


def write_comparison(sweep_dir: str | Path, *, print_table: bool = True, chart: bool = True) -> list[JobResult]:
    """Write ``comparison.csv``, ``comparison.md`` (and ``comparison.png``) into ``sweep_dir``
    from its jobs' files; print the table with rich. Returns the jobs."""
    root = Path(sweep_dir)
    jobs = collect_jobs(root)
    if not jobs:
        log.warning("sweep comparison: no job folders found under %s", root)
        return jobs
    cols = _columns(jobs)
    labels, common = _varying(jobs)
    header = ["job", "overrides", "status"] + cols
    rows = [[j.name, labels[j.name], j.status] + [_fmt(j.metrics.get(c)) for c in cols] for j in jobs]
    with open(root / "comparison.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    (root / "comparison.md").write_text(
        f"# Sweep comparison: {root}\n\nOne row per job; final values from each job's metrics.json. "
        f"Overrides shared by every job: `{' '.join(common) or '(none)'}`.\n\n" + "\n".join(md) + "\n"
    )
    if chart and any(j.metrics for j in jobs):
        _chart(jobs, labels, root / "comparison.png")
    if print_table:
        _print(jobs, labels, cols, root)
    return jobs


def _print(jobs: Sequence[JobResult], labels: dict[str, str], cols: Sequence[str], root: Path) -> None:
    from rich.table import Table

    from lightning_cam.app.rich_utils import console

    table = Table(title=f"Sweep comparison ({len(jobs)} jobs)", header_style="bold cyan",
                  caption=f"written to {root}/comparison.{{csv,md,png}}", caption_justify="left")
    table.add_column("quantity", style="bold", no_wrap=True)
    for j in jobs:
        table.add_column(f"{j.name}: {labels[j.name]}", justify="right")
    table.add_row("status", *[j.status for j in jobs])
    for c in cols:
        table.add_row(c, *[_fmt(j.metrics.get(c)) for j in jobs])
    console().print(table)


def _chart(jobs: Sequence[JobResult], job_labels: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = sorted({k.split("/")[1] for j in jobs for k in j.metrics if k.startswith("cam/") and k.count("/") >= 2})
    quantities = [q for q in CHART_QUANTITIES if any(f"cam/{m}/{q}" in j.metrics for m in methods for j in jobs)]
    heads = [k for k in SCORE_KEYS if any(k in j.metrics for j in jobs)]
    panels = ([("model scores" if set(heads) - {"val/acc", "test/acc"} else "accuracy", heads)] if heads else []) + [(q, q) for q in quantities]
    if not panels:
        return
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    labels = [j.name for j in jobs]
    x = range(len(jobs))
    for ax, (title, what) in zip(axes.flat, panels):
        series = [(k, [j.metrics.get(k, math.nan) for j in jobs]) for k in what] if isinstance(what, list) else [
            (m, [j.metrics.get(f"cam/{m}/{what}", math.nan) for j in jobs]) for m in methods
        ]
        width = 0.8 / max(1, len(series))
        for s, (name, vals) in enumerate(series):
            ax.bar([i - 0.4 + width * (s + 0.5) for i in x], vals, width, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, names = axes.flat[min(1, len(panels) - 1)].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8, frameon=False)
    legend = "; ".join(f"{j.name}: {job_labels[j.name]}" for j in jobs)
    fig.suptitle(f"jobs - {legend}"[:160], fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


try:  # Hydra >= 1.1
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


class SweepComparison(_HydraCallback):
    """Hydra callback (``hydra.callbacks``): at the end of a multirun, compare the jobs.

    Configured in ``conf/hydra/default.yaml``; ``enabled: false`` switches it off, ``chart:
    false`` skips the PNG. Failures are logged, never raised (the sweep's results stay).
    """

    def __init__(self, enabled: bool = True, chart: bool = True, print_table: bool = True) -> None:
        self.enabled = bool(enabled)
        self.chart = bool(chart)
        self.print_table = bool(print_table)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            write_comparison(sweep_dir, print_table=self.print_table, chart=self.chart)
        except Exception as err:  # noqa: BLE001 - never lose a finished sweep to a report
            log.warning("sweep comparison failed for %s: %r", sweep_dir, err)


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Compare the jobs of a finished Hydra sweep.")
    parser.add_argument("sweep_dir")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    write_comparison(args.sweep_dir, chart=not args.no_chart)


if __name__ == "__main__":  # pragma: no cover
    _main()


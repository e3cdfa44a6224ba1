"""Rich console output: the config tree, the final metrics table, where things are."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from lightning_cam.evaluation.keys import MetricSpec

#: The headline columns of the CAM table (then one ``E <region>`` per region); every other metric
#: goes into a second table, and all of them into ``metrics.json``.
HEADLINE = ("insertion", "deletion", "average_drop", "increase_in_confidence", "pointing_game", "energy_pointing_game")
#: Short legend entry per metric name (``E <region>`` columns are explained once).
LEGEND = {
    "insertion": "insertion AUC", "deletion": "deletion AUC", "average_drop": "Average Drop",
    "increase_in_confidence": "Increase in Confidence", "pointing_game": "pointing game",
    "energy_pointing_game": "energy pointing game", "completeness_residual": "LIFT-CAM completeness residual",
    "shap_pearson": "Pearson with exact Shapley weights", "shap_spearman": "Spearman with exact Shapley weights",
    "seconds": "seconds per image", "stability": "Spearman with the previous epoch's maps",
    "stability_first": "Spearman with the first epoch's maps",
    "randomization_spearman": "Spearman with the randomised model's maps", "sparseness": "sparseness (Gini)",
    "complexity": "complexity (entropy)",
}
STAGE_TITLES = {"cam": "validation, last evaluated epoch", "cam_validate": "trainer.validate", "cam_test": "trainer.test"}
FIRST_FIELDS = ("data", "model", "cam", "callbacks", "logger", "trainer", "paths", "extras")


def console() -> Console:
    con = Console(soft_wrap=False)
    if not con.is_terminal:  # logs / CI: do not squeeze tables into 80 columns
        con = Console(soft_wrap=False, width=140)
    return con


def print_config_tree(cfg: DictConfig, resolve: bool = True, save_to: str | Path | None = None) -> None:
    """Print the resolved config as a tree (one branch per group)."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in FIRST_FIELDS if f in cfg] + [f for f in cfg if f not in FIRST_FIELDS]
    for f in fields:
        branch = tree.add(f, style="bold yellow", guide_style="dim")
        node = cfg.get(f)
        if isinstance(node, DictConfig):
            try:
                text = OmegaConf.to_yaml(node, resolve=resolve)
            except Exception:  # noqa: BLE001 - e.g. hydra resolvers outside a job
                text = OmegaConf.to_yaml(node, resolve=False)
        else:
            text = str(node)
        # word_wrap: long values (paths) wrap onto the next line instead of being cut off
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default", word_wrap=True))
    console().print(tree)
    if save_to is not None:
        with open(save_to, "w") as fh:  # plain text, wide enough that nothing wraps or is cut
            Console(file=fh, width=100_000, color_system=None, soft_wrap=True).print(tree)


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{v:.2e}"
    return f"{v:.4f}" if a < 10 else f"{v:.2f}"


def _cam_rows(metrics: Mapping[str, float], methods: Sequence[str] | None, prefix: str) -> dict[str, dict[str, float]]:
    """``{"[layer/]method": {metric: value}}`` of ``prefix``, in the order of ``methods``."""
    from lightning_cam.evaluation.keys import by_method

    per = by_method(metrics, (prefix,))
    names = list(methods or [])

    def rank(row: str) -> tuple[int, str]:
        method = row.split("/")[-1]
        return (names.index(method) if method in names else len(names), row)

    return {row: per[row] for row in sorted(per, key=rank)}


def _cam_specs(rows: Mapping[str, Mapping[str, float]]) -> tuple[list[MetricSpec], list[MetricSpec]]:
    """The columns present in ``rows``: the headline ones (then ``E <region>``), and the others."""
    from lightning_cam.evaluation.keys import ALL_METRICS, ENERGY_PREFIX, region_spec

    present = [spec for spec in ALL_METRICS if any(spec.name in v for v in rows.values())]
    regions = sorted({k.split("/", 1)[1] for v in rows.values() for k in v if k.startswith(f"{ENERGY_PREFIX}/")})
    head = [spec for spec in present if spec.name in HEADLINE] + [region_spec(r) for r in regions]
    return head, [spec for spec in present if spec.name not in HEADLINE]


def _metric_table(
    title: str, rows: Mapping[str, Mapping[str, float]], specs: Sequence[MetricSpec], width: int
) -> Table:
    """One row per (layer and) method; the direction arrow under each label (narrow columns); as wide
    as its title (up to ``width``) so that the title stays on one line."""
    table = Table(title=title, header_style="bold cyan", box=box.SIMPLE_HEAD, title_justify="left",
                  show_edge=False, pad_edge=False, min_width=min(len(title), width))
    table.add_column("method", style="bold", no_wrap=True, overflow="fold")
    for spec in specs:
        table.add_column(f"{spec.label}\n{spec.arrow}", justify="right", no_wrap=True)
    for row, values in rows.items():
        table.add_row(row, *[_fmt(values.get(spec.name)) for spec in specs])
    return table


def _fitted(title: str, rows: Mapping[str, Mapping[str, float]], specs: Sequence[MetricSpec], width: int) -> list[Table]:
    """``specs`` split over as many tables as it takes for each to fit ``width`` columns uncut."""
    wide = Console(width=100_000)  # measures the natural width (a narrower console would squeeze the table)
    chunks: list[list[MetricSpec]] = []
    for spec in specs:
        wider = [*chunks[-1], spec] if chunks else [spec]
        if chunks and Measurement.get(wide, wide.options, _metric_table(title, rows, wider, width)).maximum <= width:
            chunks[-1] = wider
        else:
            chunks.append([spec])
    return [_metric_table(title if i == 0 else f"{title}, continued", rows, c, width) for i, c in enumerate(chunks)]


def _in_table_order(specs: Iterable[MetricSpec]) -> list[MetricSpec]:
    """``specs`` in the order of the tables' columns (headline scores, regions, then the others)."""
    from lightning_cam.evaluation.keys import METRIC_NAMES

    def rank(spec: MetricSpec) -> tuple[int, int]:
        if spec.name in HEADLINE:
            return (0, HEADLINE.index(spec.name))
        return (2, METRIC_NAMES.index(spec.name)) if spec.name in METRIC_NAMES else (1, 0)

    return sorted(specs, key=rank)


def legend(specs: Sequence[MetricSpec]) -> str:
    """What the labels of ``specs`` mean (absent columns are not explained)."""
    from lightning_cam.evaluation.keys import ENERGY_PREFIX

    parts = [f"{spec.label}: {LEGEND[spec.name]}" for spec in specs if spec.name in LEGEND]
    if any(spec.name.startswith(f"{ENERGY_PREFIX}/") for spec in specs):
        parts.append("E r: share of the map's energy in region r")
    if any(spec.arrow for spec in specs):
        parts.append("↑/↓: higher/lower is better")
    return "; ".join(parts)


def cam_tables(
    metrics: Mapping[str, float], methods: Sequence[str] | None = None, prefix: str = "cam", width: int = 100
) -> tuple[list[Table], list[MetricSpec]]:
    """The ``<prefix>/[<layer>/]<method>/<metric>`` values as tables that fit ``width`` columns, and their columns.

    One row per (layer and) method. The headline scores (insertion, deletion, AD%, IC%, pointing
    games, region energies) come first; the others (cost, LIFT-CAM completeness, monitoring) in a
    second table. Columns that do not fit move to a continuation table: no number is ever cut.
    """
    rows = _cam_rows(metrics, methods, prefix)
    if not rows:
        return [], []
    head, rest = _cam_specs(rows)
    where = STAGE_TITLES.get(prefix, prefix)
    tables = _fitted(f"CAM faithfulness (held-out set, {where})", rows, head, width) if head else []
    tables += _fitted(f"CAM cost and monitoring ({where})", rows, rest, width) if rest else []
    return tables, [*head, *rest]


def print_summary(
    metrics: Mapping[str, float],
    methods: Sequence[str] | None,
    seconds: float,
    locations: Mapping[str, str | None],
    optimized_metric: str | None = None,
    con: Console | None = None,
) -> None:
    """Final summary: model metrics, the per-method CAM tables and their legend, where the outputs are."""
    con = con or console()
    head = Table(title="Model", header_style="bold cyan")
    head.add_column("metric")
    head.add_column("value", justify="right")
    for k in sorted(metrics):
        if k.endswith(("_step", "_epoch")) or k.count("/") >= 2:
            continue
        head.add_row(k, _fmt(float(metrics[k])))
    head.add_row("wall time (s)", f"{seconds:.1f}")
    if optimized_metric:
        head.add_row(f"optimized_metric ({optimized_metric})", _fmt(metrics.get(optimized_metric)))
    con.print(head)
    shown: dict[str, MetricSpec] = {}
    for prefix in STAGE_TITLES:
        tables, specs = cam_tables(metrics, methods, prefix, con.width)
        for table in tables:
            con.print(table, "")
        shown.update((spec.name, spec) for spec in specs)
    if shown:
        con.print(Text(legend(_in_table_order(shown.values())), style="dim"))
    lines = [f"[bold]{k}:[/bold] {v}" for k, v in locations.items() if v]
    con.print(Panel("\n".join(lines), title="Where things are", border_style="green"))


def print_error(message: str, title: str = "Configuration error") -> None:
    """Print ``message`` verbatim (plain text: brackets such as ``[liftcam,gradcam]`` are not markup)."""
    Console(stderr=True).print(Panel(Text(message), title=Text(title, style="bold red"), border_style="red"))


__all__ = ["cam_tables", "legend", "print_config_tree", "print_error", "print_summary"]

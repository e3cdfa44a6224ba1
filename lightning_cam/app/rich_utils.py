"""Rich console output: the config tree, the final metrics table, where things are."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

LEGEND = (
    "ins/del: insertion/deletion AUC; AD%/IC%: Average Drop / Increase in Confidence; "
    "PG/EPG: (energy) pointing game; Δcompl: LIFT-CAM completeness residual; s/img: seconds per image; "
    "stab/stab₀: Spearman with the previous/first epoch's maps; ρ rand: Spearman with the randomised model's maps; "
    "Gini/H: sparseness/complexity; E r: energy share in region r; ↑/↓: higher/lower is better"
)
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


def cam_table(metrics: Mapping[str, float], methods: Sequence[str] | None = None, prefix: str = "cam") -> Table | None:
    """Table of the ``<prefix>/[<layer>/]<method>/<metric>`` values, one row per (layer and) method.

    Columns follow :data:`lightning_cam.evaluation.keys.ALL_METRICS` (then one per region), with
    their direction arrows.
    """
    from lightning_cam.evaluation.keys import ALL_METRICS, ENERGY_PREFIX, by_method, region_spec

    per = by_method(metrics, (prefix,))
    if not per:
        return None
    names = list(methods or [])
    order = sorted(per, key=lambda r: (names.index(r.split("/")[-1]) if r.split("/")[-1] in names else len(names), r))
    cols = [spec for spec in ALL_METRICS if any(spec.name in v for v in per.values())]
    regions = sorted({k.split("/", 1)[1] for v in per.values() for k in v if k.startswith(f"{ENERGY_PREFIX}/")})
    cols += [region_spec(r) for r in regions]
    what = {"cam": "validation, last evaluated epoch", "cam_test": "trainer.test", "cam_validate": "trainer.validate"}
    table = Table(title=f"CAM faithfulness (held-out set, {what.get(prefix, prefix)})", header_style="bold cyan",
                  caption=LEGEND, caption_justify="left")
    table.add_column("method", style="bold", no_wrap=True)
    for spec in cols:
        table.add_column(f"{spec.label} {spec.arrow}".strip(), justify="right", no_wrap=True)
    for row in order:
        table.add_row(row, *[_fmt(per[row].get(spec.name)) for spec in cols])
    return table


def print_summary(
    metrics: Mapping[str, float],
    methods: Sequence[str] | None,
    seconds: float,
    locations: Mapping[str, str | None],
    optimized_metric: str | None = None,
) -> None:
    """Final summary: model metrics, the per-method CAM table, where the outputs are."""
    con = console()
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
    for prefix in ("cam", "cam_validate", "cam_test"):
        table = cam_table(metrics, methods, prefix)
        if table is not None:
            con.print(table)
    lines = [f"[bold]{k}:[/bold] {v}" for k, v in locations.items() if v]
    con.print(Panel("\n".join(lines), title="Where things are", border_style="green"))


def print_error(message: str, title: str = "Configuration error") -> None:
    """Print ``message`` verbatim (plain text: brackets such as ``[liftcam,gradcam]`` are not markup)."""
    Console(stderr=True).print(Panel(Text(message), title=Text(title, style="bold red"), border_style="red"))


__all__ = ["cam_table", "print_config_tree", "print_error", "print_summary"]

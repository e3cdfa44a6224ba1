"""The app's end-of-run summary: CAM tables that fit the terminal without cutting a number."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from lightning_cam.app.rich_utils import cam_tables, legend, print_summary
from lightning_cam.evaluation.keys import ALL_METRICS

METHODS = ["liftcam", "gradcam", "gradcam++", "ablationcam", "scorecam", "layercam", "eigencam"]


def _metrics(layers: tuple[str, ...] = ("",)) -> dict[str, float]:
    """Every per-method metric of seven methods (two regions), and test scores, as a full run logs them."""
    out = {"val/acc": 0.9375, "val/loss": 0.1234}
    for layer in layers:
        for i, m in enumerate(METHODS):
            row = f"{layer}/{m}" if layer else m
            for spec in ALL_METRICS:
                out[f"cam/{row}/{spec.name}"] = 45.678912 if spec.name == "average_drop" else 0.9412345 - i / 100
            out[f"cam/{row}/energy/object"] = 0.5123456
            out[f"cam/{row}/energy/marker"] = 0.0123456
            out[f"cam_test/{row}/insertion"] = 0.9412345
    return out


def _render(metrics: dict[str, float], width: int) -> str:
    con = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    print_summary(metrics, METHODS, 12.3, {"run dir": "/tmp/run"}, con=con)
    return con.export_text()


@pytest.mark.parametrize("width", [80, 100, 140])
@pytest.mark.parametrize("layers", [("",), ("layer3", "layer4")])
def test_cam_tables_fit_without_cutting_a_number(width, layers):
    text = _render(_metrics(layers), width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    # every method row and every value is printed whole
    assert text.count("45.68") == 7 * len(layers) and "0.9412" in text and "0.5123" in text
    for m in METHODS:
        assert re.search(rf"^{re.escape(f'{layers[-1]}/{m}' if layers[-1] else m)}\s+\d", text, re.M), m


def test_headline_table_first_and_others_apart():
    tables, specs = cam_tables(_metrics(), METHODS, "cam", width=100)
    first = [c.header.split("\n")[0] for c in tables[0].columns]
    assert first == ["method", "ins", "del", "AD%", "IC%", "PG", "EPG", "E marker", "E object"]
    assert "CAM faithfulness" in str(tables[0].title) and len(specs) == len(ALL_METRICS) + 2
    assert any("cost and monitoring" in str(t.title) for t in tables[1:])


def test_legend_explains_only_the_columns_shown():
    metrics = {f"cam/liftcam/{k}": 0.5 for k in ("insertion", "deletion", "average_drop")}
    text = _render(metrics, 100)
    assert "ins: insertion AUC" in text and "AD%: Average Drop" in text
    assert "pointing game" not in text and "Gini" not in text and "region r" not in text
    _, specs = cam_tables(metrics, ["liftcam"], "cam")
    assert legend(specs).endswith("↑/↓: higher/lower is better")

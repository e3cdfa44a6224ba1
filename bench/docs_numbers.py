"""Figures in the docs come from JSON files that a benchmark wrote (``docs/numbers/*.json``).

A page quotes them in a block between ``<!-- numbers:NAME -->`` and ``<!-- /numbers -->``; this
module renders that block from ``docs/numbers/NAME.json``, ``tests/test_docs.py`` checks that each
block equals its rendering, and ``python bench/docs_numbers.py`` rewrites the blocks after a rerun:

    python bench/callback.py --repeats 2 --json docs/numbers/callback_cost_5epochs.json
    python bench/docs_numbers.py          # updates every block in docs/ and README.md
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ROOT / "docs" / "numbers"
BLOCK = re.compile(r"(<!-- numbers:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /numbers -->)", re.S)
PARTS = ("explain", "scores", "curves", "randomization", "media", "other")


def callback_cost(d: dict) -> str:
    """The train.py comparison of ``bench/callback.py --json``: wall times, ratio, per-evaluation parts."""
    evals = d["evaluations"]
    lines = [
        f"`{d['command']}` ({d['date']}, {d['cpus']} CPUs):",
        "",
        "| run | wall times (s) | ratio to `cam=none` |",
        "|---|---|---:|",
        f"| `python train.py cam=none` | {', '.join(f'{t:.1f}' for t in d['wall_none'])} | 1.00 |",
        f"| `python train.py` | {', '.join(f'{t:.1f}' for t in d['wall_default'])} | "
        f"{d['ratio_median']:.3f} (per repeat: {', '.join(f'{r:.3f}' for r in d['ratios'])}) |",
        "",
        f"Each evaluation of the last run, seconds per part (floor ratio = its seconds over its forward passes x "
        f"{d['forward_ms']:.3f} ms, the model passes alone; its backward passes go through the head only, "
        f"not priced; one through the whole model costs {d['backward_ms']:.3f} ms):",
        "",
        "| epoch | total | " + " | ".join(PARTS) + " | forwards | backwards | floor ratio | curve images | `cam/liftcam/insertion` |",
        "|---:|---:|" + "---:|" * len(PARTS) + "---:|---:|---:|---:|---:|",
    ]
    for e in evals:
        lines.append(
            f"| {e['epoch']} | {e['seconds']:.2f} | " + " | ".join(f"{e[p]:.3f}" for p in PARTS)
            + f" | {e['forwards']} | {e['backwards']} | {e['floor_ratio']:.2f} | {e['curve_images']} | {e['liftcam_insertion']:.4f} |"
        )
    total = sum(e["seconds"] for e in evals)
    lines += ["", f"Evaluations: {total:.1f} s in all, a median of {statistics.median(e['seconds'] for e in evals):.2f} s each; "
              f"the rest of the wall-time difference in the last repeat: {d['outside_seconds']:+.1f} s."]
    return "\n".join(lines) + "\n"


RENDERERS = {"callback_cost": callback_cost}


def render(name: str) -> str:
    data = json.loads((NUMBERS / f"{name}.json").read_text())
    kind = next(k for k in RENDERERS if name.startswith(k))
    return RENDERERS[kind](data)


def blocks(text: str) -> list[tuple[str, str]]:
    """``(name, quoted body)`` of every numbers block in ``text``."""
    return [(m.group("name"), m.group("body")) for m in BLOCK.finditer(text)]


def rewrite(path: Path) -> bool:
    text = path.read_text()
    new = BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if rewrite(page):
            print(f"updated {page.relative_to(ROOT)}")

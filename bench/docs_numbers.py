"""Figures in the docs come from JSON files that a benchmark wrote (``docs/numbers/*.json``).

A page quotes them in a block between ``<!-- numbers:NAME -->`` (or ``<!-- numbers:NAME:VIEW -->``,
one of several views of one record) and ``<!-- /numbers -->``; this module renders that block from
``docs/numbers/NAME.json``, ``tests/test_docs.py`` checks that each block equals its rendering, and
``python bench/docs_numbers.py`` rewrites the blocks after a rerun:

    python bench/callback.py --repeats 2 --json docs/numbers/callback_cost_5epochs.json
    python bench/record_run.py shortcut ...     # the train.py runs; the full command is in the JSON
    python bench/docs_numbers.py                # updates every block in docs/ and README.md

Every record names the ``command`` that produced it and its ``date``. Records with
``"kind": "table"`` or ``"kind": "text"`` hold figures of older runs that are too slow to rerun for
every change (or need a machine not at hand): their ``provenance`` says so, and the figures are
stored as printed (strings), so that a rerun replaces the record and the page follows.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ROOT / "docs" / "numbers"
BLOCK = re.compile(r"(<!-- numbers:(?P<name>[\w-]+)(?::(?P<view>[\w-]+))? -->\n)(?P<body>.*?)(<!-- /numbers -->)", re.S)
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


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def recorded(name: str, d: dict) -> str:
    """The provenance line of a ``bench/record_run.py`` record: where, when, how reproducible."""
    return (f"recorded by `python bench/record_run.py {name} ...` (the full command is in "
            f"`docs/numbers/{name}.json`) on {d['date']}, {d['cpus']} CPUs, torch {d['torch']}; "
            f"{d['repeats']} runs of each command on that machine: {d['tolerance']}")


def _m(d: dict, run: str, key: str) -> float | None:
    return d["runs"][run]["metrics"].get(key)


def _hist(d: dict, run: str, key: str) -> list[float]:
    h = d["runs"][run]["history"].get(key, {})
    return [h[e] for e in sorted(h, key=int)]


def shortcut_readme(d: dict) -> str:
    """README: the marked run against the clean run, LIFT-CAM at the last epoch."""
    keys = ["val/acc", "test/acc", "cam/liftcam/pointing_game", "cam/liftcam/energy/object",
            "cam/liftcam/energy/marker", "cam/liftcam/energy/border"]
    rows = [("with the marker", "marked"), ("clean", "clean")]
    lines = [
        "",
        "| (LIFT-CAM, last epoch) | `val/acc` | `test/acc` (no marker) | `pointing_game` | `energy/object` | "
        "`energy/marker` | `energy/border` (no mask needed) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, run in rows:
        lines.append(f"| {label} | " + " | ".join("-" if _m(d, run, k) is None else _f(_m(d, run, k)) for k in keys) + " |")
    lines += [
        "",
        f"*From the two runs' `metrics.json`: `{d['runs']['marked']['command']}` and "
        f"`{d['runs']['clean']['command']}`; {recorded('shortcut', d)}. The border band holds "
        f"{100 * _m(d, 'marked', 'cam/area/border'):.2f} % of the image, so the marked model's maps sit on the "
        "border without any mask saying so ([monitoring](docs/monitoring.md)).*",
    ]
    return "\n".join(lines) + "\n"


def shortcut_monitoring(d: dict) -> str:
    """docs/monitoring.md: what a user sees in the two runs, and the marked run's history."""
    m = "cam/liftcam/"
    rows = [("`val/acc` ↑", "val/acc"), ("`test/acc` ↑ (test split without the marker)", "test/acc"),
            ("`cam/liftcam/pointing_game` ↑ (object)", m + "pointing_game"),
            ("`cam/liftcam/energy/object` ↑", m + "energy/object"), ("`cam/liftcam/energy/marker` ↓", m + "energy/marker"),
            ("`cam/liftcam/stability` (last epoch)", m + "stability"),
            ("`cam/liftcam/randomization_spearman` ↓", m + "randomization_spearman")]
    lines = [
        f"From `{d['runs']['marked']['command']}` and `{d['runs']['clean']['command']}` "
        f"({recorded('shortcut', d)}); each run's `metrics.json`, LIFT-CAM:",
        "",
        "| quantity (`metrics.json`) | marker in train/val (`data.shortcut=1`) | clean (`data.shortcut=0`) |",
        "|---|---|---|",
    ]
    for label, k in rows:
        a, b = _m(d, "marked", k), _m(d, "clean", k)
        lines.append(f"| {label} | {_f(a)} | {'– (no marker)' if b is None and 'marker' in k else _f(b)} |")
    marker, area = _m(d, "marked", m + "energy/marker"), _m(d, "marked", "cam/area/marker")
    lines += [
        "",
        f"Validation accuracy alone says the marked run is the better model; it is not. Its maps put "
        f"{100 * marker:.1f} % of their energy on a marker that covers {100 * area:.1f} % of the image "
        f"({marker / area:.1f} × its area), and the pointing game reads {_f(_m(d, 'marked', m + 'pointing_game'))} "
        f"against the clean run's {_f(_m(d, 'clean', m + 'pointing_game'))}. Without the marker, test accuracy "
        f"falls from {_f(_m(d, 'marked', 'val/acc'), 2)} to {_f(_m(d, 'marked', 'test/acc'), 2)}.",
        "",
        "Over training (the marked run's `csv/metrics.csv`, one value per validation epoch):",
        "",
    ]
    epochs = sorted(d["runs"]["marked"]["history"][m + "energy/marker"], key=int)
    lines += ["| epoch | " + " | ".join(epochs) + " |", "|---|" + "---|" * len(epochs)]
    for q in ("energy/marker", "energy/object", "pointing_game", "stability"):
        h = d["runs"]["marked"]["history"].get(m + q, {})
        lines.append(f"| `{m}{q}` | " + " | ".join(_f(h.get(e)) for e in epochs) + " |")
    lines += [
        "",
        f"(the clean run: pointing game {', '.join(_f(v) for v in _hist(d, 'clean', m + 'pointing_game'))}; "
        f"object energy {', '.join(_f(v) for v in _hist(d, 'clean', m + 'energy/object'))}; "
        f"stability {', '.join(_f(v) for v in _hist(d, 'clean', m + 'stability'))}.)",
    ]
    return "\n".join(lines) + "\n"


METHODS = ("liftcam", "gradcam", "gradcam++", "xgradcam", "layercam", "ablationcam")
NAMES = {"liftcam": "LIFT-CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
         "layercam": "LayerCAM", "ablationcam": "Ablation-CAM"}


def shortcut_randomization(d: dict) -> str:
    """docs/monitoring.md: the randomisation check's Spearman per method, both runs."""
    def per(run):
        return ", ".join(f"{NAMES[k]} {_f(_m(d, run, f'cam/{k}/randomization_spearman'))}" for k in METHODS)
    return (f"`cam/<method>/randomization_spearman` at the last epoch (lower: the map depends more on the "
            f"trained weights), clean run: {per('clean')}; marked run: {per('marked')}.\n")


def shortcut_border(d: dict) -> str:
    """docs/monitoring.md, runs A and B: the border energy, no mask needed."""
    m = "cam/liftcam/"
    others = [k for k in METHODS if k != "liftcam"]

    def rng(run):
        vals = [_m(d, run, f"cam/{k}/energy/border") for k in others]
        return f"{min(vals):.3f}–{max(vals):.3f}"

    cls = [k for k in d["runs"]["marked"]["metrics"] if k.startswith(m + "class/") and k.endswith("/energy/border")]
    cvals = [_m(d, "marked", k) for k in cls]
    a_b, b_b = _m(d, "marked", m + "energy/border"), _m(d, "clean", m + "energy/border")
    area = _m(d, "marked", "cam/area/border")
    lines = [
        "",
        "| quantity (`metrics.json`) | A: `experiment=shortcut` | B: `experiment=shortcut data.shortcut=0` |",
        "|---|---|---|",
        f"| `val/acc` / `test/acc` (test without the marker) | {_f(_m(d, 'marked', 'val/acc'))} / {_f(_m(d, 'marked', 'test/acc'))} | "
        f"{_f(_m(d, 'clean', 'val/acc'))} / {_f(_m(d, 'clean', 'test/acc'))} |",
        f"| `cam/liftcam/energy/border` (`cam/area/border` = {area:.4f}) | **{_f(a_b)}** | {_f(b_b)} |",
        f"| `cam/liftcam/energy/center` (`cam/area/center` = {_m(d, 'marked', 'cam/area/center'):.2f}) | "
        f"{_f(_m(d, 'marked', m + 'energy/center'))} | {_f(_m(d, 'clean', m + 'energy/center'))} |",
        f"| `cam/liftcam/pointing_game` | {_f(_m(d, 'marked', m + 'pointing_game'))} | {_f(_m(d, 'clean', m + 'pointing_game'))} |",
        f"| `energy/border` of the other five methods | {rng('marked')} | {rng('clean')} |",
        "",
        f"LIFT-CAM's border energy goes from {_f(b_b)} to {_f(a_b)} (× {a_b / b_b:.2f}) — found without any mask: "
        f"the clean model's maps put {'less' if b_b < area else 'more'} on the border than evenly spread saliency "
        f"would ({_f(b_b)} {'<' if b_b < area else '>'} {area:.4f}), the marked model's "
        f"{'more' if a_b > area else 'less'}. Every class shows it in A (`cam/liftcam/class/<class>/energy/border` "
        f"{min(cvals):.2f}–{max(cvals):.2f}). {recorded('shortcut', d).capitalize()}.",
    ]
    return "\n".join(lines) + "\n"


def shortcut_class_monitoring(d: dict) -> str:
    """docs/monitoring.md, runs C and D: one class with the marker, the per-class view."""
    m = "cam/liftcam/"
    c, dd = "marked_circle", "clean"
    others = ("square", "triangle", "cross", "ring", "star")

    def cl(run, q):
        return ", ".join(_f(_m(d, run, f"{m}class/{k}/{q}")) for k in others)

    lines = [
        "",
        "| `cam/liftcam/...` | C: `experiment=shortcut_class` | D: `experiment=shortcut_class data.shortcut=0` |",
        "|---|---|---|",
        f"| `energy/border` (mean of all classes) | {_f(_m(d, c, m + 'energy/border'))} | {_f(_m(d, dd, m + 'energy/border'))} |",
        f"| `class/circle/energy/border` (the marked class) | **{_f(_m(d, c, m + 'class/circle/energy/border'))}** | "
        f"{_f(_m(d, dd, m + 'class/circle/energy/border'))} |",
        f"| `class/{{square, triangle, cross, ring, star}}/energy/border` | {cl(c, 'energy/border')} | {cl(dd, 'energy/border')} |",
        f"| `class/circle/pointing_game` | **{_f(_m(d, c, m + 'class/circle/pointing_game'))}** | "
        f"{_f(_m(d, dd, m + 'class/circle/pointing_game'))} |",
        f"| `pointing_game` (mean) | {_f(_m(d, c, m + 'pointing_game'))} | {_f(_m(d, dd, m + 'pointing_game'))} |",
        f"| `val/acc` / `test/acc` (test without the marker) | {_f(_m(d, c, 'val/acc'))} / {_f(_m(d, c, 'test/acc'))} | "
        f"{_f(_m(d, dd, 'val/acc'))} / {_f(_m(d, dd, 'test/acc'))} |",
        "",
        f"From `{d['runs'][c]['command']}` and `{d['runs'][dd]['command']}`; {recorded('shortcut_class', d)}.",
    ]
    return "\n".join(lines) + "\n"


def shortcut_class_alerts(d: dict) -> str:
    """docs/monitoring.md: the circles' border energy over all epochs and methods, both runs."""
    def rng(run):
        vals = [v for k, h in d["runs"][run]["history"].items() if k.endswith("class/circle/energy/border")
                for v in h.values()]
        return min(vals), max(vals)

    (c0, c1), (d0, d1) = rng("marked_circle"), rng("clean")
    return (f"Over all epochs and methods the circles' border energy (`cam/<method>/class/circle/energy/border`, "
            f"from each run's `csv/metrics.csv`) ranged {d0:.3f}–{d1:.3f} in D and {c0:.3f}–{c1:.3f} in C.\n")


def default_run_app(d: dict) -> str:
    """docs/app.md: the default run, its wall time, accuracy and the CAM table."""
    run, none = d["runs"]["default"], d["runs"]["no_callback"]
    mt = run["metrics"]
    same = all(mt[k] == none["metrics"][k] for k in ("val/acc", "train/acc", "train/loss_epoch"))
    lines = [
        f"`{run['command']}` ({recorded('default_run', d)}):",
        "",
        f"* wall time **{run['seconds'][0]:.0f} s** for the fit (`seconds` in `metrics.json`; "
        f"{', '.join(f'{s:.0f}' for s in run['seconds'])} s in the {len(run['seconds'])} runs: timings depend on the "
        f"load), of which the CAM callback took `cam/callback_seconds` {mt['cam/callback_seconds']:.2f} s at the last "
        "epoch (with the randomisation check; six methods, all metrics and W&B media included). The first "
        f"evaluation logged `{run['log_lines'][0]}`;" if run["log_lines"] else "",
        f"* **val/acc {mt['val/acc']:.3f}** (train/acc {mt['train/acc']:.3f}, train loss {mt['train/loss_epoch']:.3f}), "
        + ("identical to" if same else "against") + f" the same run without the callback (`{none['command']}`: "
        f"val/acc {none['metrics']['val/acc']:.3f}, train/acc {none['metrics']['train/acc']:.3f}, train loss "
        f"{none['metrics']['train/loss_epoch']:.3f}; the callback does not disturb training);",
        "* CAM metrics at the last epoch (32 held-out images; insertion/deletion on the budget's curve subset, the "
        "same images at every epoch; ins/del = insertion/deletion AUC, AD/IC = Average Drop / Increase in "
        "Confidence in %, PG = pointing game against the object masks, EPG = energy pointing game, s/img = "
        "explanation time per image on CPU, a timing that depends on the load):",
        "",
        "| method | insertion ↑ | deletion ↓ | AD % ↓ | IC % ↑ | PG ↑ | EPG ↑ | s/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in METHODS:
        g = lambda q: mt.get(f"cam/{k}/{q}")  # noqa: E731
        lines.append(f"| {k} | {g('insertion'):.3f} | {g('deletion'):.3f} | {g('average_drop'):.2f} | "
                     f"{g('increase_in_confidence'):.1f} | {g('pointing_game'):.3f} | {g('energy_pointing_game'):.3f} | "
                     f"{g('seconds'):.4f} |")
    lines += ["", f"LIFT-CAM's completeness residual is {mt['cam/liftcam/completeness_residual']:.1e}."]
    return "\n".join(lines) + "\n"


def table(d: dict) -> str:
    """A table of an older run, stored as printed (``"kind": "table"``)."""
    lines = ["", "| " + " | ".join(d["header"]) + " |", d["separator"]]
    lines += ["| " + " | ".join(row) + " |" for row in d["rows"]]
    return "\n".join(lines) + "\n\n" + provenance(d) + "\n"


def text(d: dict) -> str:
    """Sentences of an older run with its figures as printed (``"kind": "text"``): the template is the
    whole block, its line ends and indentation included, so a block may sit inside a list item."""
    return d["template"].format(**d["values"])


def provenance(d: dict) -> str:
    return f"*`{d['command']}`, {d['date']}: {d['provenance']}.*"


RENDERERS = {
    ("callback_cost", None): callback_cost,
    ("table", None): table,
    ("text", None): text,
    ("shortcut", "readme"): shortcut_readme,
    ("shortcut", "monitoring"): shortcut_monitoring,
    ("shortcut", "border"): shortcut_border,
    ("shortcut", "randomization"): shortcut_randomization,
    ("shortcut_class", "monitoring"): shortcut_class_monitoring,
    ("shortcut_class", "alerts"): shortcut_class_alerts,
    ("default_run", "app"): default_run_app,
}


def record(name: str) -> dict:
    return json.loads((NUMBERS / f"{name}.json").read_text())


def render(name: str, view: str | None = None) -> str:
    data = record(name)
    kind = data.get("kind") or max((k for k, _ in RENDERERS if name == k or name.startswith(k + "_")), key=len)
    return RENDERERS[(kind, view)](data)


def blocks(text: str) -> list[tuple[str, str | None, str]]:
    """``(name, view, quoted body)`` of every numbers block in ``text``."""
    return [(m.group("name"), m.group("view"), m.group("body")) for m in BLOCK.finditer(text)]


def rewrite(path: Path) -> bool:
    text = path.read_text()
    new = BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), m.group("view")) + m.group(5), text)
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if rewrite(page):
            print(f"updated {page.relative_to(ROOT)}")

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
    """The provenance of a ``bench/record_run.py`` record: when, where, how reproducible."""
    return (f"recorded on {d['date']} ({d['cpus']} CPUs, torch {d['torch']}) by `python bench/record_run.py {name}`, "
            f"whose full command is in `docs/numbers/{name}.json`; "
            + (f"{d['repeats']} runs of each command on that machine: {d['tolerance']}, timings aside" if d["repeats"] > 1
               else "one run: its reproducibility was not measured"))


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
        f"From `{d['runs']['marked']['command']}` and `{d['runs']['clean']['command']}`; "
        f"{recorded('shortcut', d)}. Each run's `metrics.json`, LIFT-CAM:",
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
        f"{min(cvals):.2f}–{max(cvals):.2f}). Both runs {recorded('shortcut', d)}.",
    ]
    return "\n".join(lines) + "\n"


def _same_model(val_acc: float) -> str:
    """The default run trains the model of the clean shortcut run (same seed, data and model): say whether the two
    records agree, which checks the default run against a run that was repeated."""
    if not (NUMBERS / "shortcut.json").is_file():
        return ""
    other = record("shortcut")
    clean = other["runs"]["clean"]["metrics"]["val/acc"]
    how = "equal to" if clean == val_acc else f"against {clean:.3f} for"
    return (f", {how} the clean `experiment=shortcut` run's, the same model (same seed and data), whose runs "
            f"repeated {other['tolerance']} ([monitoring](monitoring.md#finding-a-shortcut-experimentshortcut))")


def default_run_app(d: dict) -> str:
    """docs/app.md: the default run, its wall time, accuracy and the CAM table."""
    run = d["runs"]["default"]
    mt = run["metrics"]
    lines = [
        f"`{run['command']}`; {recorded('default_run', d)}:",
        "",
        f"* wall time **{run['seconds'][0]:.0f} s** for the fit (`seconds` in `metrics.json`"
        + (f"; {', '.join(f'{s:.0f}' for s in run['seconds'])} s in the {len(run['seconds'])} runs" if len(run["seconds"]) > 1 else "")
        + f"; timings depend on the load), of which the CAM callback took `cam/callback_seconds` "
        f"{mt['cam/callback_seconds']:.2f} s at the last epoch (with the randomisation check; six methods, all metrics "
        "and W&B media included);",
        f"* **val/acc {mt['val/acc']:.3f}** (train/acc {mt['train/acc']:.3f}, train loss {mt['train/loss_epoch']:.3f})"
        + _same_model(mt["val/acc"]) + "; the callback does not change training by a bit "
        "(`tests/test_callback.py::test_training_is_bit_identical_with_and_without_the_callback`), so `cam=none` "
        "trains the same model;",
        "* CAM metrics at the last epoch (32 held-out images, insertion/deletion on all of them; ins/del = "
        "insertion/deletion AUC, AD/IC = Average Drop / Increase in Confidence in %, PG = pointing game against the "
        "object masks, EPG = energy pointing game, s/img = explanation time per image on CPU, a timing that depends "
        "on the load):",
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


def shortcut_same_images(d: dict) -> str:
    """docs/monitoring.md: both trained models on the same marked images (``bench/shortcut_figure.py --json``)."""
    marked, clean = d["models"]
    a, b = d["same_images"][marked], d["same_images"][clean]
    name = NAMES.get(d["method"], d["method"])
    lines = [
        f"`{d['command']}` ({d['date']}; the kept run folders of `docs/numbers/shortcut.json`), "
        f"{name} on the same {d['images']} marked validation images:",
        "",
        f"| same marked images ({name}) | shortcut model | clean model |",
        "|---|---|---|",
        f"| accuracy | {_f(a['accuracy'])} | {_f(b['accuracy'])} |",
        f"| pointing game ↑ | {_f(a['pointing_game'])} | {_f(b['pointing_game'])} |",
        f"| energy on the object ↑ | {_f(a['energy/object'])} | {_f(b['energy/object'])} |",
        f"| energy on the marker ↓ | **{_f(a['energy/marker'])}** | {_f(b['energy/marker'])} |",
        "",
        f"The marker covers {100 * d['marker_area']:.1f} % of each image: the energy share of a map that ignores it.",
    ]
    return "\n".join(lines) + "\n"


def soak(d: dict) -> str:
    """docs/reliability.md: ``bench/soak.py --json``, the process's memory over many evaluations."""
    marks = list(d["rss_mib"])
    runs = [("RSS (MiB)", d["rss_mib"])] + [(f"RSS (MiB), run of {r['date']} ({r['wall_seconds']:.0f} s)", r["rss_mib"])
                                            for r in d.get("repeats", [])]
    lines = [
        f"`{d['command']} --json docs/numbers/soak.json` on the {d['cpus']}-core CPU machine ({d['date']}, shared "
        f"with other jobs; {d['evaluations']} evaluations in {d['wall_seconds']:.0f} s, {d['errors']} errors):",
        "",
        "| evaluation | " + " | ".join(marks) + " |",
        "|---|" + "---:|" * len(marks),
    ]
    lines += [f"| {label} | " + " | ".join(f"{rss[m]:.1f}" for m in marks) + " |" for label, rss in runs]
    per = d["change_mib"] / (d["change_to"] - d["change_from"])
    spread = max(abs(r["rss_mib"][m] - d["rss_mib"][m]) for r in d.get("repeats", []) for m in marks) if d.get("repeats") else None
    lines += [
        "",
        f"Flat to within the allocator's noise: {d['change_mib']:+.1f} MiB from evaluation {d['change_from']} to "
        f"{d['change_to']} ({per:.2f} MiB per evaluation), against about {d['rss_mib'][marks[0]]:.0f} MiB for the process"
        + (f"; two runs of the command differ by up to {spread:.1f} MiB at one evaluation (the tolerance of these "
           "figures)." if spread is not None else "."),
    ]
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


TASK_SCORES = {"segmentation": (("val/iou", "mean IoU"), ("val/acc", "pixel accuracy")),
               "multilabel": (("val/f1", "macro F1"), ("val/map", "mAP"))}


def task_runs(d: dict) -> str:
    """docs/app.md: the segmentation and multi-label experiments, their task scores and LIFT-CAM against Grad-CAM."""
    lines = [
        f"{recorded('task_runs', d)}.",
        "",
        "| run | task scores (validation) | LIFT-CAM ins ↑ / del ↓ | Grad-CAM ins ↑ / del ↓ | pointing game LIFT-CAM / Grad-CAM | wall |",
        "|---|---|---|---|---|---|",
    ]
    for label, run in d["runs"].items():
        mt = run["metrics"]
        scores = ", ".join(f"{name} {mt[key]:.3f}" for key, name in TASK_SCORES[label] if key in mt)
        lines.append(
            f"| `{run['command']}` | {scores} | {mt['cam/liftcam/insertion']:.3f} / {mt['cam/liftcam/deletion']:.3f} | "
            f"{mt['cam/gradcam/insertion']:.3f} / {mt['cam/gradcam/deletion']:.3f} | "
            f"{mt['cam/liftcam/pointing_game']:.3f} / {mt['cam/gradcam/pointing_game']:.3f} | {run['seconds'][0]:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def provenance(d: dict) -> str:
    return f"*`{d['command']}`, {d['date']}: {d['provenance']}.*"


RENDERERS = {
    ("callback_cost", None): callback_cost,
    ("table", None): table,
    ("soak", None): soak,
    ("shortcut_same_images", None): shortcut_same_images,
    ("text", None): text,
    ("shortcut", "readme"): shortcut_readme,
    ("shortcut", "monitoring"): shortcut_monitoring,
    ("shortcut", "border"): shortcut_border,
    ("shortcut", "randomization"): shortcut_randomization,
    ("default_run", "app"): default_run_app,
    ("task_runs", None): task_runs,
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

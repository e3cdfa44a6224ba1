"""Record the figures of documented ``python train.py`` runs into ``docs/numbers/NAME.json``.

Each ``--run LABEL "OVERRIDES"`` is run ``--repeats`` times, each time as the documented command
``python train.py OVERRIDES`` in a fresh temporary output folder (``LIGHTNING_CAM_LOG_DIR``); the
recorder reads the ``metrics.json`` the app writes into the run folder, keeps the keys matching
``--keys`` and the log lines matching ``--log-lines``, and writes, per run, the values of the first
repeat, every repeat's values, and the largest difference between repeats. The JSON also names the
commands, the date, the machine (CPUs, torch threads, torch version) and the tolerance observed
(``bit-identical`` when every repeat gave the same bits), which the docs quote next to the numbers
(``bench/docs_numbers.py`` renders them; ``tests/test_docs.py`` checks the docs against the JSON).

    python bench/record_run.py shortcut --repeats 2 \\
        --run marked "experiment=shortcut logger=csv seed=42 trainer.deterministic=true" \\
        --run clean "experiment=shortcut logger=csv seed=42 trainer.deterministic=true data.shortcut=0" \\
        --keys "val/acc" "test/acc" "cam/liftcam/(pointing_game|energy/.*)" "cam/area/.*"
    python bench/docs_numbers.py

``--from-run LABEL=DIR`` reads an existing run folder instead of running (no repeat, no tolerance).
Timing keys (``seconds``, ``cam/callback_seconds``, ``.../seconds...``) depend on the load: they are
recorded, but left out of the tolerance.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ROOT / "docs" / "numbers"


def is_timing(key: str) -> bool:
    return key == "seconds" or "seconds" in key.rsplit("/", 1)[-1]


def run_once(overrides: str, keys: list[str], log_patterns: list[str], history: list[str], timeout: float,
             keep: Path | None = None) -> dict:
    """Run ``python train.py OVERRIDES`` in a temporary folder; its metrics, history and log lines
    (the run folder is copied to ``keep`` when given)."""
    with tempfile.TemporaryDirectory(prefix="record_run_") as tmp:
        env = dict(os.environ, LIGHTNING_CAM_LOG_DIR=str(Path(tmp) / "outputs"), WANDB_MODE="offline",
                   WANDB_SILENT="true")
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, str(ROOT / "train.py"), *shlex.split(overrides)]
        p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise SystemExit(f"python train.py {overrides} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        found = sorted(Path(tmp, "outputs").rglob("metrics.json"))
        if len(found) != 1:
            raise SystemExit(f"expected one metrics.json under the run's outputs, found {found}")
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(found[0].parent, keep)
        return read_run(found[0].parent, keys, log_patterns, history)


def read_history(run_dir: Path, patterns: list[str]) -> dict[str, dict[str, float]]:
    """``{key: {epoch: value}}`` of the keys matching ``patterns``, from the run's CSV logger file."""
    if not patterns:
        return {}
    files = sorted(run_dir.rglob("metrics.csv"))
    if not files:
        raise SystemExit(f"--history needs the CSV logger (logger=csv): no metrics.csv under {run_dir}")
    rx = re.compile("|".join(f"(?:{k})" for k in patterns))
    out: dict[str, dict[str, float]] = {}
    with open(files[0], newline="") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if v not in ("", None) and rx.fullmatch(k):
                    out.setdefault(k, {})[str(int(float(row["epoch"])))] = float(v)
    return dict(sorted(out.items()))


def read_run(run_dir: Path, keys: list[str], log_patterns: list[str], history: list[str] = ()) -> dict:
    data = json.loads((run_dir / "metrics.json").read_text())
    pattern = re.compile("|".join(f"(?:{k})" for k in keys)) if keys else None
    metrics = {k: v for k, v in sorted(data["metrics"].items()) if pattern is None or pattern.fullmatch(k)}
    metrics["seconds"] = round(float(data["seconds"]), 1)
    lines = []
    logs = sorted(run_dir.glob("*.log"))
    for pat in log_patterns:
        rx = re.compile(pat)
        for log in logs:
            lines += [line.split(" - ", 1)[-1].strip() for line in log.read_text().splitlines() if rx.search(line)]
    return {"metrics": metrics, "log_lines": lines, "history": read_history(run_dir, list(history))}


def spread(repeats: list[dict]) -> dict[str, float]:
    """Largest |difference| to the first repeat, per key."""
    first = repeats[0]
    return {k: max(abs(r[k] - first[k]) for r in repeats) for k in first if all(k in r for r in repeats)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="writes docs/numbers/NAME.json")
    ap.add_argument("--run", nargs=2, action="append", default=[], metavar=("LABEL", "OVERRIDES"),
                    help="a documented run: its label and its train.py overrides (quote them)")
    ap.add_argument("--from-run", action="append", default=[], metavar="LABEL=DIR",
                    help="read an existing run folder instead of running")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keys", nargs="*", default=[], help="regexes of the metrics.json keys to keep (default all)")
    ap.add_argument("--log-lines", nargs="*", default=[], help="regexes of log lines to keep (first repeat)")
    ap.add_argument("--history", nargs="*", default=[],
                    help="regexes of keys whose value at every epoch is kept, from the CSV logger (logger=csv)")
    ap.add_argument("--keep", type=Path, default=None, help="copy each run's folder (first repeat) to KEEP/LABEL")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.run and not args.from_run:
        ap.error("give at least one --run LABEL OVERRIDES")

    import torch

    record = {
        "command": "python bench/record_run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "repeats": args.repeats,
        "runs": {},
    }
    worst = 0.0
    for label, overrides in args.run:
        reps = []
        for i in range(args.repeats):
            print(f"[{label}] repeat {i + 1}/{args.repeats}: python train.py {overrides}", flush=True)
            keep = args.keep / label if args.keep is not None and i == 0 else None
            reps.append(run_once(overrides, args.keys, args.log_lines, args.history, args.timeout, keep))
        values = [r["metrics"] for r in reps]
        hist = [r["history"] for r in reps]
        diff = spread(values)
        for k in hist[0]:  # the history's differences count as well
            for e, v in hist[0][k].items():
                d = max(abs(h.get(k, {}).get(e, float("nan")) - v) for h in hist)
                diff[f"{k}@{e}"] = d if d == d else float("inf")
        score_diff = {k: v for k, v in diff.items() if not is_timing(k)}
        worst = max([worst, *score_diff.values()])
        record["runs"][label] = {
            "command": f"python train.py {overrides}",
            "metrics": values[0],
            "repeat_metrics": values[1:],
            "max_abs_diff": {k: v for k, v in score_diff.items() if v},
            "seconds": [v["seconds"] for v in values],
            "history": hist[0],
            "log_lines": reps[0]["log_lines"],
        }
    for spec in args.from_run:
        label, _, path = spec.partition("=")
        got = read_run(Path(path), args.keys, args.log_lines, args.history)
        record["runs"][label] = {"command": None, "metrics": got["metrics"], "repeat_metrics": [], "max_abs_diff": {},
                                 "seconds": [got["metrics"]["seconds"]], "history": got["history"],
                                 "log_lines": got["log_lines"]}
    if args.run and args.repeats > 1:
        record["tolerance"] = "bit-identical" if worst == 0 else f"max |difference| between repeats {worst:.3g}"
    else:
        record["tolerance"] = "not measured (one run)"
    out = args.out or NUMBERS / f"{args.name}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out} (tolerance: {record['tolerance']})")
    return record


if __name__ == "__main__":
    main()

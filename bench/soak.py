"""Soak: the process's memory over many CAMCallback evaluations.

Trains a tiny model for ``--evaluations`` epochs (one evaluation each, every default method, the
randomisation check at every evaluation, PNG/CSV files written) and prints the resident set size
(RSS, from /proc/self/statm) after evaluation 1, 10, 50, 100 ... and the last, and the CUDA memory
allocated where a GPU is used. Flat numbers = nothing accumulates per evaluation (reports, hooks,
figures, the stability series beyond its two reference maps).

    python bench/soak.py --evaluations 200
    python bench/soak.py --evaluations 200 --json docs/numbers/soak.json    # the record docs/reliability.md quotes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _callback_helpers import LitTiny, ToyDataModule  # noqa: E402

from lightning_cam import CAMCallback  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cuda = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
        self.rows.append((len(self.rows) + 1, rss_mib(), cuda))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evaluations", type=int, default=200)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here (docs/numbers/soak.json); "
                   "a file of the same command gets this run as a repeat")
    p.add_argument("--fresh", action="store_true", help="with --json: replace the file, do not add a repeat")
    args = p.parse_args()
    torch.set_num_threads(1)
    methods = ["liftcam", "gradcam", "gradcam++", "xgradcam", "layercam", "ablationcam"]
    cam = CAMCallback(target_layer="layer4", methods=methods, num_samples=16, n_steps=8, max_overhead=None,
                      sanity_every_n_epochs=1, save_png=True)
    probe = Probe()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(default_root_dir=tmp, accelerator=args.accelerator, devices=1, max_epochs=args.evaluations,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, callbacks=[cam, probe])
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=16))
    wall = time.perf_counter() - t0
    command = f"python bench/soak.py --evaluations {args.evaluations}" + (
        f" --accelerator {args.accelerator}" if args.accelerator != "cpu" else "")
    print(f"command: {command}")
    print(f"{len(probe.rows)} evaluations in {wall:.0f} s, errors {cam.num_errors}")
    print(f"{'evaluation':>10s}{'RSS MiB':>10s}{'CUDA MiB':>10s}")
    marks = {1, 10, 50, 100, 150, len(probe.rows)}
    for i, rss, cuda in probe.rows:
        if i in marks:
            print(f"{i:10d}{rss:10.1f}{cuda:10.1f}")
    first, last = probe.rows[min(9, len(probe.rows) - 1)], probe.rows[-1]
    print(f"RSS change from evaluation {first[0]} to {last[0]}: {last[1] - first[1]:+.1f} MiB")
    if args.json is not None:
        record = {
            "command": command, "date": dt.date.today().isoformat(), "cpus": os.cpu_count(),
            "torch": torch.__version__.split("+")[0], "evaluations": len(probe.rows), "wall_seconds": round(wall, 1),
            "errors": cam.num_errors,
            "rss_mib": {str(i): round(rss, 1) for i, rss, _ in probe.rows if i in marks},
            "cuda_mib": {str(i): round(c, 1) for i, _, c in probe.rows if i in marks and c == c},
            "change_from": first[0], "change_to": last[0], "change_mib": round(last[1] - first[1], 1),
        }
        # a rerun with the same command is kept beside the first as a repeat: the spread is the tolerance
        old = json.loads(args.json.read_text()) if args.json.is_file() else None
        if old and old.get("command") == command and not args.fresh:
            old.setdefault("repeats", []).append({k: record[k] for k in ("date", "wall_seconds", "errors", "rss_mib")})
            record = old
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Benchmark: what CAMCallback adds to training.

Default: the app's default run, ``python train.py`` against ``python train.py
cam=none``, run alternately (interleaved, so load changes hit both alike) as
subprocesses, with wall times, their ratio, the load average, and per evaluation
of the last run (read back from its offline W&B run): the seconds per part
(``cam/seconds/<part>``), the forward / backward passes it ran, the **floor ratio**
(the evaluation's seconds over the time of those passes alone, timed here on the
same architecture), the curve subset size and ``cam/liftcam/insertion``:

    python bench/callback.py --repeats 2                      # the figure quoted in docs/callback.md
    python bench/callback.py --repeats 1 -- trainer.max_epochs=2   # extra overrides for both runs

``--inprocess`` instead trains the same seeded model twice on the embedded shapes dataset (the app's
default data + SmallCNN at 64x64): once without and once with the callback, and
reports the median epoch wall time of each (epoch = training + validation, as
measured from ``on_train_epoch_start`` to ``on_validation_epoch_end`` of the
last callback) and the callback's own time (``cam/callback_seconds``).

    python bench/callback.py                                  # defaults below, CPU
    python bench/callback.py --methods liftcam gradcam gradcam++ xgradcam layercam ablationcam
    python bench/callback.py --num-train 5000 --epochs 3 --accelerator gpu
    python bench/callback.py --figure docs/callback_grid.png   # README figure (see below)

Defaults: 2000 train / 500 val images of 64x64, batch 64, 3 epochs,
CAMCallback(methods=["liftcam"], num_samples=32, n_steps=16) -- the
callback's own defaults -- logging PNG grids to a temporary folder.
The first epoch (warm-up) is reported separately from the median of the rest.
On a shared machine epoch times are noisy: ``--repeats`` interleaves runs, and
the callback's own time (measured inside the run) is the steadier number.

``--figure PATH`` instead trains with a ``WandbLogger`` in offline mode, reads
the run file back (tests/wandb_offline.py) and draws what the W&B dashboard
shows from the *logged* data: the ``cam/overview`` grid image, the mean
insertion / deletion curve charts and the ``cam/<method>/insertion`` history.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_cam import CAMCallback
from lightning_cam.data import ShapesDataModule
from lightning_cam.models import LitClassifier, build_model


class EpochTimer(pl.Callback):
    """Wall time per epoch, train start -> end of validation (after every other callback)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


class CallbackSeconds(pl.Callback):
    def __init__(self, cam: CAMCallback) -> None:
        self.cam, self.seconds = cam, []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "cam/callback_seconds" in self.cam.last_scalars:
            self.seconds.append(self.cam.last_scalars["cam/callback_seconds"])


def run(args: argparse.Namespace, with_cam: bool) -> dict[str, Any]:
    pl.seed_everything(args.seed, verbose=False)
    dm = ShapesDataModule(
        num_train=args.num_train, num_val=args.num_val, num_test=8, image_size=args.image_size,
        batch_size=args.batch_size, eval_batch_size=256,
    )
    net = build_model(args.model, num_classes=6)
    model = LitClassifier(net=net, num_classes=6)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = []
    cam = None
    if with_cam:
        cam = CAMCallback(
            target_layer=args.target_layer, methods=args.methods, num_samples=args.num_samples,
            n_steps=args.n_steps, mean=dm.mean, std=dm.std, max_overhead=args.max_overhead,
        )
        callbacks.append(cam)
    callbacks.append(timer)  # after the CAM callback: its epoch time includes it
    secs = CallbackSeconds(cam) if cam is not None else None
    if secs is not None:
        callbacks.append(secs)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            default_root_dir=tmp, accelerator=args.accelerator, devices=1, max_epochs=args.epochs,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, callbacks=callbacks,
        )
        trainer.fit(model, datamodule=dm)
    return {
        "epochs": timer.times,
        "cam": secs.seconds if secs is not None else [],
        "scalars": dict(cam.last_scalars) if cam is not None else {},
    }


def figure(args: argparse.Namespace, path: str) -> None:
    """Train with W&B offline and draw a dashboard-like figure from the logged run."""
    import os
    import sys
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import wandb
    from PIL import Image
    from pytorch_lightning.loggers import WandbLogger

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wandb_offline import read_offline_run

    methods = args.methods if args.methods != ["liftcam"] else ["liftcam", "gradcam", "gradcam++", "scorecam"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_DATA_DIR"] = str(Path(tmp) / "data")
        pl.seed_everything(args.seed, verbose=False)
        dm = ShapesDataModule(num_train=args.num_train, num_val=args.num_val, num_test=8,
                              image_size=args.image_size, batch_size=args.batch_size)
        model = LitClassifier(net=build_model(args.model, num_classes=6), num_classes=6, lr=0.003)
        cam = CAMCallback(target_layer=args.target_layer, methods=methods, num_samples=args.num_samples,
                          n_steps=args.n_steps, max_images=8, mean=dm.mean, std=dm.std, max_overhead=None)
        logger = WandbLogger(offline=True, save_dir=tmp, project="lightning-cam-figure")
        trainer = pl.Trainer(default_root_dir=tmp, accelerator=args.accelerator, devices=1, max_epochs=args.epochs,
                             logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[cam])
        trainer.fit(model, datamodule=dm)
        wandb.finish()
        run = read_offline_run(tmp)
        media = run.rows_with("cam/overview")[-1]
        grid = Image.open(run.media_path(media["cam/overview"])).convert("RGB")
        curves = {k: run.table(f"cam/curves/{k}_table") for k in ("insertion", "deletion")}
        history = run.rows_with(f"cam/{methods[0]}/insertion")
        acc = [r.get("val/acc") for r in run.rows_with("val/acc")]

        fig = plt.figure(figsize=(12, 8.6), dpi=110)
        gs = fig.add_gridspec(2, 3, height_ratios=[1.35, 1.0])
        ax = fig.add_subplot(gs[0, :])
        ax.imshow(grid)
        ax.set_xticks([])
        tile = grid.height / (len(methods) + 1)
        ax.set_yticks([tile * (i + 0.5) for i in range(len(methods) + 1)], ["image", *methods])
        ax.set_title(f"cam/overview - epoch {media['epoch']} (held-out images; one overlay row per method)")
        for j, kind in enumerate(("insertion", "deletion")):
            ax = fig.add_subplot(gs[1, j])
            data = curves[kind]["data"]
            for m in methods:
                pts = [(x, y) for x, key, y in data if key == m]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m)
            ax.set_title(f"cam/curves/{kind} (mean over held-out set)")
            ax.set_xlabel(f"fraction of pixels {'inserted' if kind == 'insertion' else 'deleted'}")
            ax.set_ylabel("softmax score of the predicted class")
            ax.legend(fontsize=8)
        ax = fig.add_subplot(gs[1, 2])
        for m in methods:
            rows = run.rows_with(f"cam/{m}/insertion")
            ax.plot([r["trainer/global_step"] for r in rows], [r[f"cam/{m}/insertion"] for r in rows], marker="o", label=m)
        ax.set_title("cam/<method>/insertion per validation")
        ax.set_xlabel("trainer/global_step")
        ax.legend(fontsize=8)
        fig.suptitle(
            f"CAMCallback on W&B (offline run read back): {args.model} on shapes {args.image_size}px, "
            f"{len(history)} epochs, val/acc {acc[-1]:.2f}" if acc and acc[-1] is not None else "CAMCallback on W&B",
            fontsize=11,
        )
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        print(f"wrote {path}")


ROOT = Path(__file__).resolve().parents[1]


def app_run(overrides: list[str], out: Path) -> dict[str, Any]:
    """``python train.py <overrides>`` in ``out``: wall time, load average before and the run's metrics.json."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(ROOT))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={out}", "extras.print_config=false"],
        cwd=str(ROOT), env=env, capture_output=True, text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(overrides)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    record = json.loads((out / "metrics.json").read_text())
    # "seconds": trainer.fit (+ test) alone; the rest of the wall time is start-up, the W&B run's
    # start and finish (media files, tables) and the summary
    return {"wall": wall, "load": load, "metrics": record["metrics"], "fit": record["seconds"]}


PARTS = ("explain", "scores", "curves", "randomization", "media", "other")


def pass_seconds(model: str, image_size: int, metric_batch: int | None = None, explain_batch: int = 64) -> tuple[float, float]:
    """Seconds per image of a plain forward pass (batches of ``metric_batch``, default the metrics'
    batch on this device) and of a backward pass through the model (forward + backward w.r.t. the
    input minus the forward, at ``explain_batch``), on a fresh model of the app's architecture and
    real shapes images (the cost does not depend on the weights, but it does on the inputs:
    random normal inputs run about 1.7x slower on this CPU)."""
    from lightning_cam.evaluation.options import forward_batch_size

    metric_batch = metric_batch or forward_batch_size(torch.device("cpu"))
    net = build_model(model, num_classes=6).eval()
    dm = ShapesDataModule(num_train=8, num_val=max(metric_batch, explain_batch), image_size=image_size)
    dm.setup("fit")
    x = torch.stack([dm.data_val[i][0] for i in range(max(metric_batch, explain_batch))])

    def timed(fn, reps: int = 7) -> float:  # noqa: ANN001
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.no_grad():
        fwd = timed(lambda: net(x[:metric_batch])) / metric_batch
        fwd_explain = timed(lambda: net(x[:explain_batch])) / explain_batch
    xb = x[:explain_batch].clone().requires_grad_(True)
    both = timed(lambda: torch.autograd.grad(net(xb).sum(), xb)) / explain_batch
    return fwd, max(both - fwd_explain, 0.0)


def history(out: Path) -> list[dict[str, float]]:
    """The logged rows of the run's offline W&B run that hold the callback's figures (one per evaluation)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from wandb_offline import read_offline_run

    return read_offline_run(out).rows_with("cam/callback_seconds")


def app_bench(args: argparse.Namespace) -> None:
    rows: list[tuple[float, float, float, float, dict[str, float]]] = []
    evals: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # untimed warm-up: the first run builds the dataset cache that every later run reads
        app_run(["cam=none", "trainer.max_epochs=1", *args.overrides], Path(tmp) / "warmup")
        for i in range(args.repeats):  # interleaved: off, on, off, on ...
            off = app_run(["cam=none", *args.overrides], Path(tmp) / f"off{i}")
            on = app_run(list(args.overrides), Path(tmp) / f"on{i}")
            rows.append((off["wall"], on["wall"], off["load"], on["load"], on["metrics"]))
            evals = history(Path(tmp) / f"on{i}")
            print(f"repeat {i}: cam=none {off['wall']:.1f} s (fit {off['fit']:.1f} s, load {off['load']:.1f}), "
                  f"default {on['wall']:.1f} s (fit {on['fit']:.1f} s, load {on['load']:.1f}), "
                  f"ratio {on['wall'] / off['wall']:.3f}; {len(evals)} evaluations, "
                  f"{sum(r['cam/callback_seconds'] for r in evals):.1f} s in them", flush=True)
        fwd, bwd = pass_seconds(args.model, args.image_size)
    off_t = [r[0] for r in rows]
    on_t = [r[1] for r in rows]
    print(f"\ncommand: python bench/callback.py --repeats {args.repeats}" + (" -- " + " ".join(args.overrides) if args.overrides else ""))
    print(f"{'run':34s}{'wall (s), median':>18s}")
    print(f"{'python train.py cam=none':34s}{statistics.median(off_t):18.1f}")
    print(f"{'python train.py':34s}{statistics.median(on_t):18.1f}")
    print(f"ratio (median of per-repeat ratios): {statistics.median(b / a for a, b in zip(off_t, on_t)):.3f}; "
          f"load average (1 min) at the starts: {', '.join(f'{r[2]:.1f}/{r[3]:.1f}' for r in rows)}; "
          f"{os.cpu_count()} CPUs")
    print(f"\nthe last run's evaluations (seconds per part; floor = its forward passes x {1000 * fwd:.3f} ms, the "
          f"time of the model passes alone; a backward through the whole model costs {1000 * bwd:.3f} ms, the "
          "callback's go through the head only and are not priced):")
    print(f"{'epoch':>5s}{'total':>8s}" + "".join(f"{p:>9s}" for p in PARTS)
          + f"{'fwd':>7s}{'bwd':>6s}{'floor':>7s}{'ratio':>7s}{'images':>7s}{'liftcam ins':>12s}")
    for r in evals:
        floor = r["cam/forwards"] * fwd  # head-only backward passes: not priced (near free on a GAP + linear head)
        print(f"{int(r.get('epoch', -1)):5d}{r['cam/callback_seconds']:8.2f}"
              + "".join(f"{r.get(f'cam/seconds/{p}', 0.0):9.3f}" for p in PARTS)
              + f"{r['cam/forwards']:7.0f}{r['cam/backwards']:6.0f}{floor:7.2f}{r['cam/callback_seconds'] / floor:7.2f}"
              + f"{r.get('cam/curve_images', float('nan')):7.0f}{r.get('cam/liftcam/insertion', float('nan')):12.4f}")
    inside = sum(r["cam/callback_seconds"] for r in evals)
    outside = rows[-1][1] - rows[-1][0] - inside
    print(f"time outside the evaluations (wall difference minus their seconds, last repeat): {outside:+.1f} s")
    if args.json:  # the figures the docs quote (tests/test_docs.py checks them against the page)
        ratios = [b / a for a, b in zip(off_t, on_t)]
        record = {
            "command": "python bench/callback.py --repeats " + str(args.repeats)
            + (" -- " + " ".join(args.overrides) if args.overrides else ""),
            "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
            "wall_none": [round(t, 1) for t in off_t], "wall_default": [round(t, 1) for t in on_t],
            "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
            "forward_ms": round(1000 * fwd, 3), "backward_ms": round(1000 * bwd, 3),
            "evaluations": [
                {"epoch": int(r.get("epoch", -1)), "seconds": round(r["cam/callback_seconds"], 2),
                 **{p: round(r.get(f"cam/seconds/{p}", 0.0), 3) for p in PARTS},
                 "forwards": int(r["cam/forwards"]), "backwards": int(r["cam/backwards"]),
                 "floor_ratio": round(r["cam/callback_seconds"] / (r["cam/forwards"] * fwd), 2),
                 "curve_images": int(r.get("cam/curve_images", 0)),
                 "liftcam_insertion": round(r.get("cam/liftcam/insertion", float("nan")), 4)}
                for r in evals
            ],
            "outside_seconds": round(outside, 1),
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--target-layer", default=None)
    p.add_argument("--methods", nargs="+", default=["liftcam"])
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--n-steps", type=int, default=16)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=500)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="interleaved without/with runs (medians over all)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-overhead", type=float, default=None, help="--inprocess: the callback's budget (default none)")
    p.add_argument("--figure", default=None, help="write the README's dashboard figure here instead of benchmarking")
    p.add_argument("--inprocess", action="store_true", help="per-epoch timing in this process instead of train.py runs")
    p.add_argument("--json", default=None, help="also write the figures of the train.py comparison to this JSON file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for both train.py runs (after --)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.figure:
        figure(args, args.figure)
        return
    if not args.inprocess:
        app_bench(args)
        return

    off: dict[str, Any] = {"epochs": [], "cam": [], "scalars": {}}
    on: dict[str, Any] = {"epochs": [], "cam": [], "scalars": {}}
    firsts: dict[str, list[float]] = {"off": [], "on": [], "cam": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        for name, acc, flag in (("off", off, False), ("on", on, True)):
            r = run(args, with_cam=flag)
            firsts[name].append(r["epochs"][0])
            acc["epochs"] += r["epochs"][1:] or r["epochs"]
            if r["cam"]:
                firsts["cam"].append(r["cam"][0])
                acc["cam"] += r["cam"][1:] or r["cam"]
            acc["scalars"] = r["scalars"]

    med = statistics.median
    t_off, t_on = med(off["epochs"]), med(on["epochs"])
    t_cam = med(on["cam"]) if on["cam"] else float("nan")
    print(
        f"\nmodel={args.model} {args.image_size}px, {args.num_train} train / {args.num_val} val images, "
        f"batch {args.batch_size}, {args.epochs} epochs x {args.repeats} repeats, accelerator={args.accelerator}, "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"CAMCallback(methods={args.methods}, num_samples={args.num_samples}, n_steps={args.n_steps})")
    print(f"{'':28s}{'first epoch':>12s}{'median rest':>12s}")
    print(f"{'epoch without callback (s)':28s}{med(firsts['off']):12.2f}{t_off:12.2f}")
    print(f"{'epoch with callback (s)':28s}{med(firsts['on']):12.2f}{t_on:12.2f}")
    if on["cam"]:
        print(f"{'callback itself (s)':28s}{med(firsts['cam']):12.2f}{t_cam:12.2f}")
    print(f"overhead: {t_on - t_off:+.2f} s per epoch ({100 * (t_on - t_off) / t_off:+.1f} %); "
          f"callback's own time {t_cam:.2f} s = {100 * t_cam / t_off:.1f} % of an epoch")
    per_method = {k: v for k, v in on["scalars"].items() if k.endswith("/seconds")}
    if per_method:
        print("explanation time per image: " + ", ".join(f"{k.split('/')[1]} {1000 * v:.2f} ms" for k, v in per_method.items()))


if __name__ == "__main__":
    main()

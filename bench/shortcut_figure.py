"""The figure and table of docs/monitoring.md from two finished runs of ``experiment=shortcut``.

    python train.py experiment=shortcut                      # -> outputs/shortcut/runs/<A>
    python train.py experiment=shortcut data.shortcut=0      # -> outputs/shortcut/runs/<B>
    python bench/shortcut_figure.py outputs/shortcut/runs/<A> outputs/shortcut/runs/<B> --out docs/shortcut.png

For each run it reads ``metrics.json`` (the numbers) and the best checkpoint. Then both
trained models explain the SAME held-out images of the marked validation split (the
callback's own seeded selection from the shortcut run's data), so the clean model gives the
baseline for the marker region. The picture shows those images with both models' LIFT-CAM
overlays, next to bars of the key numbers. Prints the Markdown tables used in the docs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

KEYS = (
    ("val/acc", "val/acc ↑"),
    ("test/acc", "test/acc (no marker) ↑"),
    ("cam/{m}/pointing_game", "pointing game (object) ↑"),
    ("cam/{m}/energy/object", "energy on object ↑"),
    ("cam/{m}/energy/marker", "energy on marker ↓"),
    ("cam/{m}/stability", "stability ↑"),
    ("cam/{m}/randomization_spearman", "randomisation ρ ↓"),
)


def _load(run_dir: Path):
    from lightning_cam import app

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    model = app.instantiate_model(cfg)
    ckpts = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state)
    return cfg, metrics, model.eval()


HISTORY = ("energy/marker", "energy/object", "pointing_game", "stability")


def _history(run_dir: Path, method: str) -> dict[str, list[float]]:
    """Per validation epoch, ``cam/<method>/<q>`` for q in HISTORY, read back from the run's offline W&B file
    (or, with ``logger=csv``, from the CSV logger's ``metrics.csv``)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wandb_offline import find_run_files, read_run_file

    files = find_run_files(run_dir)
    if not files:  # logger=csv: the CSV logger's history
        import csv

        found = sorted(run_dir.rglob("metrics.csv"))
        if not found:
            return {}
        out = {q: {} for q in HISTORY}
        with open(found[0], newline="") as fh:
            for row in csv.DictReader(fh):
                for q in HISTORY:
                    v = row.get(f"cam/{method}/{q}")
                    if v not in (None, ""):
                        out[q][int(float(row["epoch"]))] = float(v)
        return {q: [h[e] for e in sorted(h)] for q, h in out.items()}
    run = read_run_file(files[-1])
    out: dict[str, list[float]] = {}
    for q in HISTORY:
        key = f"cam/{method}/{q}"
        out[q] = [float(r[key]) for r in run.rows_with(key)]
    return out


def _marked_heldout(cfg):
    from lightning_cam import app
    from lightning_cam.callback import heldout

    dm = app.instantiate_datamodule(cfg)
    dm.setup("fit")
    # the callback's own choice: stratified by class when the dataset knows its labels
    idx = heldout.select_indices(len(dm.data_val), int(cfg.cam.num_samples), int(cfg.cam.seed),
                                 heldout.dataset_labels(dm.data_val))
    return heldout.gather_from_dataset(dm.data_val, idx, int(cfg.cam.seed))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shortcut_run", type=Path)
    p.add_argument("clean_run", type=Path)
    p.add_argument("--method", default="liftcam")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--out", type=Path, default=Path("docs/shortcut.png"))
    p.add_argument("--dpi", type=int, default=144)
    p.add_argument("--json", type=Path, default=None,
                   help="also write the same-images table here (docs/numbers/shortcut_same_images.json)")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_cam import viz

    from lightning_cam.evaluation import evaluate

    runs = {"marker in train/val (data.shortcut=1)": args.shortcut_run, "clean (data.shortcut=0)": args.clean_run}
    loaded = {name: _load(d) for name, d in runs.items()}
    m = args.method
    print("Each run's metrics.json:\n")
    print("| quantity | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for key, label in KEYS:
        vals = [loaded[n][1].get(key.format(m=m)) for n in runs]
        print(f"| `{key.format(m=m)}` ({label}) | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")

    cfg0 = loaded[next(iter(runs))][0]
    held = _marked_heldout(cfg0)
    reports = {
        n: evaluate(model, cfg.cam.target_layer, held.images, held.labels, regions=held.regions, methods=[m],
                    curves=False)
        for n, (cfg, _, model) in loaded.items()
    }
    same = {}
    print(f"\nBoth models on the same {len(held)} marked held-out validation images ({m}):\n")
    print("| quantity | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name in ("accuracy", "pointing_game", "energy/object", "energy/marker"):
        row = []
        for n, rep in reports.items():
            r = rep[m]
            if name == "accuracy":
                v = float((rep.predictions == held.labels.to(rep.predictions.device)).double().mean())
            elif name == "pointing_game":
                v = float(r.pointing_game.double().nanmean())
            else:
                v = float(r.region_energy[:, rep.regions.index(name.split("/")[1])].double().nanmean())
            same.setdefault(n, {})[name] = v
            row.append(f"{v:.3f}")
        print(f"| {name} | " + " | ".join(row) + " |")
    hist = {n: _history(d, m) for n, d in runs.items()}
    print(f"\nPer validation epoch (W&B history of each run, {m}):\n")
    for n, h in hist.items():
        for q, vals in h.items():
            if vals:
                print(f"- {n}, `cam/{m}/{q}`: " + ", ".join(f"{v:.3f}" for v in vals))
    area = float(held.regions["marker"].double().mean())
    print(f"\n(the marker covers {area:.3f} of each image: the energy share of a map that ignores it)")
    if args.json is not None:
        import datetime as dt

        record = {"command": "python bench/shortcut_figure.py <marked run> <clean run> --out docs/shortcut.png --json "
                             f"{args.json}" + (f" --method {m}" if m != "liftcam" else ""),
                  "date": dt.date.today().isoformat(), "method": m, "images": len(held), "marker_area": area,
                  "models": list(runs), "same_images": same}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")

    k = args.images
    from lightning_cam.data import CLASSES

    cfg = cfg0
    rgb = viz.denormalize(held.images[:k], cfg.data.mean, cfg.data.std)
    rows = [("image", rgb)] + [
        (n.split(" (")[0].replace("marker in train/val", "shortcut model").replace("clean", "clean model"),
         viz.overlay(held.images[:k], reports[n][m].saliency[:k].cpu(), 0.5, "inferno", cfg.data.mean, cfg.data.std))
        for n in runs
    ]
    grid = viz.labelled_grid(rows, [CLASSES[int(c)] for c in held.labels[:k]],
                             f"{m} on marked validation images", min_size=96)
    fig, (ax_img, ax, ax_h) = plt.subplots(1, 3, figsize=(14, 3.6), dpi=args.dpi, gridspec_kw={"width_ratios": [2.3, 1, 1]})
    short = next(iter(runs))
    for q, style in (("energy/marker", "-o"), ("energy/object", "-s"), ("pointing_game", "-^")):
        vals = hist[short].get(q) or []
        ax_h.plot(range(len(vals)), vals, style, label=q, markersize=3)
    ax_h.set_title("shortcut run, per epoch", fontsize=8)
    ax_h.set_xlabel("validation epoch", fontsize=7)
    ax_h.tick_params(labelsize=7)
    ax_h.set_ylim(bottom=0)
    ax_h.legend(fontsize=7)
    ax_img.imshow(grid)
    ax_img.axis("off")
    bars = [("val/acc", lambda n: loaded[n][1].get("val/acc")),
            ("test/acc (no marker)", lambda n: loaded[n][1].get("test/acc")),
            ("pointing game", lambda n: same[n]["pointing_game"]),
            ("energy on object", lambda n: same[n]["energy/object"]),
            ("energy on marker", lambda n: same[n]["energy/marker"])]
    width = 0.38
    for i, n in enumerate(runs):
        vals = [f(n) for _, f in bars]
        ax.barh([y + (i - 0.5) * width for y in range(len(bars))], vals, width,
                label=n.split(" (")[0].replace("marker in train/val", "shortcut model").replace("clean", "clean model"))
    ax.set_yticks(range(len(bars)), [b for b, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{m}, same marked val images", fontsize=8)
    fig.tight_layout(w_pad=0.1, h_pad=0.1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    from PIL import Image

    Image.open(args.out).convert("RGB").quantize(colors=192).save(args.out, optimize=True)  # a small PNG
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

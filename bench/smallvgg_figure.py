"""Figure for docs/more-methods.md: every method on the trained smallvgg of a ``train.py`` run.

    python train.py model=smallvgg logger=csv ... hydra.run.dir=RUN     # the run (see docs/more-methods.md)
    python bench/smallvgg_figure.py RUN/checkpoints/last.ckpt --out docs/smallvgg_methods.png
    python bench/smallvgg_figure.py --table RUN/metrics.json  # the run's final metrics as a markdown table

Rows: validation images of the shapes data (seed 1, as the datamodule's
validation split), then one row per method of ``FIGURE`` (the channel-coefficient
methods, overlays of the [0,1] saliency). Also prints, per method, the mean
per-image Pearson correlation of its channel contributions (as in
bench/fidelity.py) with Shapley values sampled by ShapCAM (K = 64 > 12
channels: 256 antithetic permutations).
"""

from __future__ import annotations

import argparse

import torch

from lightning_cam import explain_all
from lightning_cam.data.shapes import SHAPES_MEAN, SHAPES_STD, ShapesDataset
from lightning_cam.models import LitClassifier, build_model
from lightning_cam.viz import comparison_grid, save_png

try:
    from fidelity import _pearson, contributions  # run as python bench/smallvgg_figure.py
except ImportError:  # pragma: no cover - imported as bench.smallvgg_figure
    from bench.fidelity import _pearson, contributions

METHODS = [
    "liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam", "shap",
    "eigencam", "eigengradcam", "gradcamelementwise", "smoothgradcam++", "sscam", "iscam", "randomcam",
]


COLUMNS = [
    ("insertion", "insertion ↑", 3), ("deletion", "deletion ↓", 3), ("average_drop", "avg drop % ↓", 1),
    ("increase_in_confidence", "incr. conf. % ↑", 1), ("pointing_game", "pointing ↑", 3),
    ("energy_pointing_game", "energy PG ↑", 3), ("shap_pearson", "Pearson(coeff., Shapley) ↑", 3), ("seconds", "s / image", 4),
]


def metrics_table(path: str) -> str:
    """Markdown table of the ``cam/<method>/<metric>`` entries of a run's ``metrics.json``."""
    import json

    metrics = json.load(open(path))["metrics"]
    lines = ["| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for method in METHODS:
        values = [metrics.get(f"cam/{method}/{key}") for key, _, _ in COLUMNS]
        lines.append(f"| {method} | " + " | ".join("" if v is None else f"{v:.{digits}f}" for v, (_, _, digits) in zip(values, COLUMNS)) + " |")
    extra = {k: v for k, v in metrics.items() if not k.startswith("cam/") or k.endswith(("completeness_residual", "callback_seconds"))}
    return "\n".join(lines) + "\n\n" + ", ".join(f"{k} = {v:.4g}" for k, v in sorted(extra.items()))


FIGURE = ["liftcam", "gradcam", "gradcam++", "xgradcam", "ablationcam", "shap", "randomcam"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--table", help="print the final metrics of this metrics.json and exit")
    parser.add_argument("--out", default="docs/smallvgg_methods.png")
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    if args.table:
        print(metrics_table(args.table))
        return
    module = LitClassifier(build_model("smallvgg", 6), 6)
    module.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    module.eval()
    data = ShapesDataset(args.images, image_size=64, seed=1)
    x = torch.stack([data[i][0] for i in range(len(data))])
    exps = explain_all(module, "features", x, methods=FIGURE, method_kwargs={"shap": {"num_permutations": 256}})
    grid = comparison_grid(x, {m: e.saliency() for m, e in exps.items()}, mean=SHAPES_MEAN, std=SHAPES_STD)
    save_png(grid, args.out)
    print(f"wrote {args.out}: rows = image, " + ", ".join(FIGURE))
    with torch.no_grad():
        mean_activation = module.net.features(x).mean(dim=(2, 3))
    shapley = exps["shap"].weights
    for name in FIGURE[:-2] + FIGURE[-1:]:
        contribution = contributions(name, exps[name], mean_activation)
        r = _pearson(contribution, shapley)
        print(f"{name}: Pearson of channel contributions with sampled Shapley, mean {float(r.mean()):.3f} "
              f"(per image {[round(float(v), 3) for v in r]})")


if __name__ == "__main__":
    main()

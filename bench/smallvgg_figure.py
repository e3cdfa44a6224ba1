"""Figure for docs/more-methods.md: every method on the trained smallvgg of a ``train.py`` run.

    python train.py model=smallvgg logger=csv ... hydra.run.dir=RUN     # the run (see docs/more-methods.md)
    python bench/smallvgg_figure.py RUN/checkpoints/last.ckpt --out docs/smallvgg_methods.png

Rows: the validation images of the shapes data (seed 1, as the datamodule's
validation split), then one row per method (overlay of the [0,1] saliency).
Also prints, per image, the Pearson correlation of LIFT-CAM's and Grad-CAM's
channel contributions with the sampled Shapley values (K = 64 > 12 channels).
"""

from __future__ import annotations

import argparse

import torch

from lightning_cam import explain_all
from lightning_cam.data.shapes import SHAPES_MEAN, SHAPES_STD, ShapesDataset
from lightning_cam.models import LitClassifier, build_model
from lightning_cam.viz import comparison_grid, save_png

METHODS = [
    "liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam", "shap",
    "eigencam", "eigengradcam", "gradcamelementwise", "smoothgradcam++", "sscam", "iscam", "randomcam",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default="docs/smallvgg_methods.png")
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    module = LitClassifier(build_model("smallvgg", 6), 6)
    module.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    module.eval()
    data = ShapesDataset(args.images, image_size=64, seed=1)
    x = torch.stack([data[i][0] for i in range(len(data))])
    exps = explain_all(module, "features", x, methods=METHODS, method_kwargs={"shap": {"num_permutations": 64}})
    grid = comparison_grid(x, {m: e.saliency() for m, e in exps.items()}, mean=SHAPES_MEAN, std=SHAPES_STD)
    save_png(grid, args.out)
    print(f"wrote {args.out}: rows = image, " + ", ".join(METHODS))
    with torch.no_grad():
        mean_activation = module.net.features(x).mean(dim=(2, 3))
    shapley = exps["shap"].weights
    for name, contribution in (("liftcam", exps["liftcam"].weights), ("gradcam", exps["gradcam"].weights * mean_activation)):
        r = torch.nn.functional.cosine_similarity(contribution - contribution.mean(1, keepdim=True), shapley - shapley.mean(1, keepdim=True))
        print(f"{name}: Pearson with sampled Shapley per image {[round(float(v), 3) for v in r]}")


if __name__ == "__main__":
    main()

"""LIFT-CAM completeness and ShapCAM agreement on a trained ``vit_tiny`` checkpoint.

    python bench/vit_tiny_check.py outputs/train/runs/<run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse

import torch

from lightning_cam import explain_all
from lightning_cam.data import ShapesDataset
from lightning_cam.methods import LiftCAM, ShapCAM
from lightning_cam.methods.base import LayerPass
from lightning_cam.methods.liftcam import exact_score_difference
from lightning_cam.models import LitClassifier, build_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--shap-images", type=int, default=2)
    parser.add_argument("--permutations", type=int, default=64)
    args = parser.parse_args(argv)
    lit = LitClassifier.load_from_checkpoint(args.checkpoint, net=build_model("vit_tiny", 6), map_location="cpu").eval()
    data = ShapesDataset(num_samples=args.images, seed=123)
    x = torch.stack([data[i][0] for i in range(args.images)])
    layer = "encoder.layers.encoder_layer_3.ln_1"
    lift = explain_all(lit, layer, x, methods=["liftcam"])["liftcam"]
    difference = (lift.weights.sum(1) - lift.delta).abs()
    print(f"# vit_tiny {args.checkpoint}, {args.images} held-out shapes images, layer {layer}")
    print(f"LIFT-CAM completeness: |y(A) - y(A')| median {difference.median():.3g}; max |delta| {lift.delta.abs().max():.3g}; "
          f"max |delta| / |y(A) - y(A')| {(lift.delta.abs() / difference).max():.3g}")
    exact = exact_score_difference(LayerPass(lit.net, layer, x))
    y = lift.logits.gather(1, lift.targets[:, None])[:, 0].double()
    print(f"LIFT-CAM sum of phi vs y(A) - y(A') in float64 on the same activations: max relative error "
          f"{((lift.weights.double().sum(1) - exact).abs() / exact.abs()).max():.3g} "
          f"(float32 floor eps |y| / |y(A) - y(A')| up to {(2.0**-23 * y.abs() / exact.abs()).max():.3g})")
    n = args.shap_images
    exps = explain_all(lit, layer, x[:n], methods=[LiftCAM(lit, layer), ShapCAM(lit, layer, num_permutations=args.permutations)])
    a, b = exps["liftcam"].weights, exps["shap"].weights
    corr = [float(torch.corrcoef(torch.stack([a[i], b[i]]))[0, 1]) for i in range(n)]
    print(f"LIFT-CAM vs ShapCAM ({args.permutations} antithetic permutations, K = {a.shape[1]}): Pearson r per image "
          f"{', '.join(f'{c:.3f}' for c in corr)}")


if __name__ == "__main__":
    main()

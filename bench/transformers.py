"""LIFT-CAM through attention: completeness residuals and ShapCAM agreement on transformers.

For each model (random weights, default target layer): the layout the engine read, the map grid,
any operation left without a DeepLIFT rule, and the completeness residual
``|sum_k phi_k - (y_c(A) - y_c(A'))|`` relative to the score difference ``|y_c(A) - y_c(A')|``
and to the largest logit; then the coefficients' own completeness error, ``sum_k phi_k`` against
``y_c(A) - y_c(A')`` evaluated in float64 on the same activations
(:func:`lightning_cam.methods.liftcam.exact_score_difference`), next to the float32 floor
``eps |y_c| / |y_c(A) - y_c(A')|`` that bounds what a float32 head can resolve. Then, on a tiny ViT, the per-image Pearson correlation between
LIFT-CAM's coefficients and sampled Shapley values (ShapCAM, antithetic permutations).

    python bench/transformers.py
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torchvision
from torch import nn

from lightning_cam import explain_all
from lightning_cam.layers import default_target_layer
from lightning_cam.methods import LiftCAM, ShapCAM
from lightning_cam.methods.base import LayerPass
from lightning_cam.methods.liftcam import exact_score_difference


def _timm(name: str, **kwargs):
    import timm

    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


MODELS = {
    "timm vit_tiny_patch16_224 (64 px)": (_timm("vit_tiny_patch16_224", img_size=64), 64),
    "timm deit_tiny_distilled_patch16_224 (64 px)": (_timm("deit_tiny_distilled_patch16_224", img_size=64), 64),
    "timm vit_small_patch16_224 + 4 registers (64 px)": (_timm("vit_small_patch16_224", img_size=64, reg_tokens=4), 64),
    "timm swin_tiny_patch4_window7_224": (_timm("swin_tiny_patch4_window7_224"), 224),
    "torchvision vit_b_16": (lambda: torchvision.models.vit_b_16(num_classes=10), 224),
    "torchvision swin_t": (lambda: torchvision.models.swin_t(num_classes=10), 224),
}


def build(builder) -> nn.Module:
    torch.manual_seed(0)
    model = builder().eval()
    for module in model.modules():  # zero-initialised classifiers give all-zero logits
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    return model


def completeness(batch: int) -> None:
    print("| model | target layer | layout | map | unhandled ops | max rel. residual (/ score diff.) "
          "| max residual / max logit | sum phi vs float64 (/ score diff.) | float32 floor (/ score diff.) |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for label, (builder, size) in MODELS.items():
        model = build(builder)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        layer = default_target_layer(model, (1, 3, size, size))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lift = explain_all(model, layer, x, methods=["liftcam"])["liftcam"]
        unhandled = [str(w.message).split(";")[0] for w in caught if "no DeepLIFT rule" in str(w.message)]
        layer_pass = LayerPass(model, layer, x)
        difference = (lift.weights.sum(1) - lift.delta).abs()
        exact = exact_score_difference(layer_pass)
        y = lift.logits.gather(1, lift.targets[:, None])[:, 0].double()
        print(f"| {label} | {layer} | {layer_pass.layout.name} | {tuple(lift.maps.shape[1:])} | {unhandled or 'none'} | "
              f"{(lift.delta.abs() / difference).max().item():.2e} | "
              f"{(lift.delta.abs().max() / lift.logits.abs().max()).item():.2e} | "
              f"{((lift.weights.double().sum(1) - exact).abs() / exact.abs()).max().item():.2e} | "
              f"{(2.0**-23 * y.abs() / exact.abs()).max().item():.2e} |")


def shapley_agreement(batch: int, permutations: int) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                              depth=4, embed_dim=48, num_heads=3).eval()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = "blocks.3.norm1"
    exps = explain_all(model, layer, x, methods=[LiftCAM(model, layer), ShapCAM(model, layer, num_permutations=permutations)])
    lift, shap = exps["liftcam"].weights, exps["shap"].weights
    corr = torch.stack([torch.corrcoef(torch.stack([lift[i], shap[i]]))[0, 1] for i in range(batch)])
    print(f"\n# tiny timm ViT (4 blocks, width 48, 4x4 patches of 8 px, random weights), layer {layer}, "
          f"K = {lift.shape[1]} players, ShapCAM with {permutations} antithetic permutations, {batch} images")
    print(f"LIFT-CAM vs sampled Shapley coefficients: Pearson r per image mean {corr.mean():.3f}, "
          f"min {corr.min():.3f}; sign agreement {(lift.sign() == shap.sign()).float().mean():.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--permutations", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    completeness(args.batch)
    shapley_agreement(args.batch, args.permutations)


if __name__ == "__main__":
    main()

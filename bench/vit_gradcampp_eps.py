"""Grad-CAM++ on a random timm ViT vs pytorch-grad-cam: the difference is its eps, term by term.

    python bench/vit_gradcampp_eps.py            # vit_tiny_patch16_224, 224 px, blocks.11.norm1, 3 images (~7 s)
    python bench/vit_gradcampp_eps.py --size 64

Prints the gradient agreement, the peer formula with and without its ``1e-6`` on its own
``g``, ``A`` against its weights and ours, the denominators' range, and the per-image
correlation of the saliency maps (ours with ``eps=0`` and ``eps=1e-6``) with its output.
"""

from __future__ import annotations

import argparse

import pytorch_grad_cam as pgc
import timm
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lightning_cam import explain_all


def correlation(p: torch.Tensor, q: torch.Tensor) -> list[float]:
    p, q = p.flatten(1).double(), q.flatten(1).double()
    p, q = p - p.mean(1, keepdim=True), q - q.mean(1, keepdim=True)
    return [round(v, 3) for v in ((p * q).sum(1) / (p.norm(dim=1) * q.norm(dim=1))).tolist()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=args.size).eval()
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    side = args.size // 16

    def tokens(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    ours = explain_all(model, "blocks.11.norm1", x, methods=["gradcam++"])["gradcam++"]
    matched = explain_all(model, "blocks.11.norm1", x, methods=["gradcam++"], method_kwargs={"gradcam++": {"eps": 1e-6}})["gradcam++"]
    layer = model.blocks[11].norm1
    with pgc.GradCAMPlusPlus(model, [layer], reshape_transform=tokens) as cam:
        out = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in ours.targets]))
        a, g = (t.numpy() for t in (cam.activations_and_grads.activations[0], cam.activations_and_grads.gradients[0]))
        weights = torch.from_numpy(cam.get_cam_weights(x, layer, None, a, g))
    a, g = torch.from_numpy(a).double(), torch.from_numpy(g).double()
    total = a.sum(dim=(2, 3), keepdim=True)
    denominator = 2 * g.pow(2) + total * g.pow(3)
    for eps in (0.0, 1e-6):
        formula = (torch.relu(g) * torch.where(g != 0, g.pow(2) / (denominator + eps), torch.zeros_like(g))).sum(dim=(2, 3))
        print(f"their formula, eps={eps:g}: max |. - their weights| {float((formula - weights).abs().max()):.2g}, "
              f"max |. - our weights| {float((formula - ours.weights).abs().max()):.2g} (weights up to {float(weights.abs().max()):.2g})")
    print(f"|g| median {float(g.abs().median()):.2g}, max {float(g.abs().max()):.2g}; share of 2g^2 < 1e-6: "
          f"{float((2 * g.pow(2) < 1e-6).double().mean()):.3f}; negative denominators: {int((denominator < 0).sum())}; "
          f"max |sum(A) g| {float((total * g).abs().max()):.2g}")
    print("saliency correlation with pytorch-grad-cam: eps=0 (ours)", correlation(ours.saliency(), out),
          "eps=1e-6", correlation(matched.saliency(), out))


if __name__ == "__main__":
    main()

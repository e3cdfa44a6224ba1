"""Fidelity benchmark: how close is each method's channel contribution to the EXACT channel Shapley values?

LIFT-CAM's claim (Jung & Oh, ICCV 2021) is that its coefficients estimate the
Shapley values of the feature maps (players: "map k present", absent = 0,
value: the logit ``y_c``) better than other CAMs. On a linear head (GAP + fc)
LIFT-CAM, CAM and Ablation-CAM are all exact, so this benchmark uses heads that
are NOT linear after the target layer (K = 12 channels, so ShapCAM enumerates
all 2^12 coalitions exactly):

* ``vgg-fc``: max-pool -> flatten -> Linear -> ReLU -> Linear (VGG's classifier);
* ``conv-pool-fc``: Conv3x3 -> ReLU -> max-pool -> global average pool -> Linear;
* ``attention``: gated attention pooling, ``a = sigmoid(conv1x1(A))``,
  ``z = mean_ij(a * A)`` -> Linear -> ReLU -> Linear;

each with random weights and trained for a few CPU epochs on the embedded
shapes data. Channel contribution of a method: LIFT-CAM's coefficients
``phi_k`` themselves; Ablation-CAM's ``y_c - y_c(A_k := 0) = w_k y_c``; every
other method ``w_k * mean_ij A_kij`` (for Grad-CAM that is the first-order
Taylor / LIFT-CAM paper's comparison). Per image: Pearson correlation and
cosine similarity with the exact Shapley values; the table shows the mean over
images (higher is better; RandomCAM is the floor).

    python bench/fidelity.py                      # the table in docs/more-methods.md
    python bench/fidelity.py --images 16 --epochs 1 --train 600   # quick check
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from lightning_cam import explain_all
from lightning_cam.data.shapes import ShapesDataset

METHODS = [
    "liftcam", "liftcam-revealcancel", "gradcam", "gradcam++", "xgradcam", "smoothgradcam++",
    "scorecam", "sscam", "iscam", "ablationcam", "randomcam",
]
K = 12


class Net(nn.Module):
    """Conv trunk (``features``: 32x32 -> 8x8 x K) + one of the nonlinear heads."""

    def __init__(self, head: str, classes: int = 6) -> None:
        super().__init__()
        self.head_kind = head
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(24, K, 3, padding=1), nn.ReLU(),
        )
        if head == "vgg-fc":
            self.fc1, self.fc2 = nn.Linear(K * 16, 32), nn.Linear(32, classes)
        elif head == "conv-pool-fc":
            self.conv, self.fc = nn.Conv2d(K, 16, 3, padding=1), nn.Linear(16, classes)
        elif head == "attention":
            self.gate, self.fc1, self.fc2 = nn.Conv2d(K, 1, 1), nn.Linear(K, 32), nn.Linear(32, classes)
        else:
            raise ValueError(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        if self.head_kind == "vgg-fc":
            return self.fc2(torch.relu(self.fc1(F.max_pool2d(a, 2).flatten(1))))
        if self.head_kind == "conv-pool-fc":
            return self.fc(F.max_pool2d(torch.relu(self.conv(a)), 2).mean(dim=(2, 3)))
        z = (torch.sigmoid(self.gate(a)) * a).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(z)))


def train(model: nn.Module, data: ShapesDataset, epochs: int, seed: int) -> float:
    """A few epochs of AdamW; returns the training-set accuracy of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.stack([data[i][1] for i in range(len(data))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    correct = 0
    for _ in range(epochs):
        correct = 0
        for idx in torch.randperm(len(images), generator=generator).split(64):
            logits = model(images[idx])
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == labels[idx]).sum())
    model.eval()
    return correct / len(images)


def contributions(name: str, exp, activation_mean: torch.Tensor) -> torch.Tensor:
    if name.startswith("liftcam") or name == "shap":
        return exp.weights
    if name == "ablationcam":
        return exp.weights * exp.logits.gather(1, exp.targets[:, None])
    return exp.weights * activation_mean


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-300)


def evaluate(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """{method: (mean Pearson, mean cosine, max |completeness residual| or nan)}."""
    names = [m for m in METHODS if m != "liftcam-revealcancel"]
    exps = explain_all(model, "features", x, methods=names + ["shap"], method_kwargs={"shap": {"max_exact_channels": K}})
    exps["liftcam-revealcancel"] = explain_all(
        model, "features", x, methods=["liftcam"], method_kwargs={"liftcam": {"rule": "revealcancel"}}
    )["liftcam"]
    with torch.no_grad():
        activation_mean = model.features(x).mean(dim=(2, 3))
    shapley = exps["shap"].weights
    out = {}
    for name in METHODS:
        c = contributions(name, exps[name], activation_mean)
        delta = exps[name].delta
        out[name] = (
            float(_pearson(c, shapley).mean()), float(_cosine(c, shapley).mean()),
            float("nan") if delta is None else float(delta.abs().max()),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="explained images per model")
    parser.add_argument("--train", type=int, default=2000, help="training images (shapes, 32x32)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set = ShapesDataset(args.train, image_size=32, seed=args.seed)
    test_set = ShapesDataset(args.images, image_size=32, seed=args.seed + 1)
    x = torch.stack([test_set[i][0] for i in range(len(test_set))])
    columns, results = [], {}
    start = time.perf_counter()
    for head in ("vgg-fc", "conv-pool-fc", "attention"):
        for state in ("random", "trained"):
            torch.manual_seed(args.seed)
            model = Net(head)
            label = f"{head} {state}"
            if state == "trained":
                acc = train(model, train_set, args.epochs, args.seed)
                label += f" (train acc {acc:.2f})"
            model.eval()
            columns.append(label)
            results[label] = evaluate(model, x)
    print(f"\n{args.images} images per model, K = {K} channels, exact Shapley over 2^{K} coalitions; "
          f"{time.perf_counter() - start:.0f} s\n")
    for metric, i in (("Pearson correlation with exact Shapley (mean over images)", 0), ("Cosine similarity with exact Shapley", 1)):
        print(f"**{metric}**\n")
        print("| method | " + " | ".join(columns) + " | mean |")
        print("|---|" + "---|" * (len(columns) + 1))
        for name in METHODS:
            values = [results[c][name][i] for c in columns]
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {sum(values) / len(values):.3f} |")
        print()
    residuals = {c: max(results[c][m][2] for m in ("liftcam", "liftcam-revealcancel")) for c in columns}
    print("LIFT-CAM completeness residual max |sum_k phi_k - (y_c(A) - y_c(0))| (both rules): "
          + ", ".join(f"{c.split(' (')[0]}: {v:.1e}" for c, v in residuals.items()))


if __name__ == "__main__":
    main()

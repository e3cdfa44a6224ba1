"""Fidelity benchmark: how close is each method's channel contribution to the EXACT channel Shapley values?

LIFT-CAM's claim (Jung & Oh, ICCV 2021) is that its coefficients estimate the
Shapley values of the feature maps (players: "map k present", absent = 0,
value: the logit ``y_c``) better than other CAMs. On a linear head (GAP + fc)
LIFT-CAM, CAM and Ablation-CAM are all exact, so this benchmark uses heads that
are NOT linear after the target layer (K = 8 channels of 8x8 maps, so ShapCAM
enumerates all 2^8 coalitions exactly):

* ``vgg-fc`` / ``silu-fc`` / ``gelu-fc``: max-pool -> flatten -> Linear -> ReLU / SiLU / GELU -> Linear;
* ``conv-pool-fc``: Conv3x3 -> ReLU -> max-pool -> global average pool -> Linear;
* ``gated``: gated pooling, ``a = sigmoid(conv1x1(A))``, ``z = mean_ij(a * A)`` -> Linear -> ReLU -> Linear;
* ``layernorm``: the 64 positions as tokens -> Linear(K, 32) -> LayerNorm -> mean -> Linear -> GELU -> Linear;
* ``attention``: tokens -> Linear -> a pre-norm transformer block (LayerNorm, 2-head softmax
  self-attention, residual) -> mean -> Linear -> GELU -> Linear;

each with random weights (PyTorch's init), the same weights doubled (``random x2``: further from
linear) and trained for a few CPU epochs on the embedded shapes data. Channel contribution of a
method: LIFT-CAM's coefficients ``phi_k`` themselves (every rule); Ablation-CAM's
``y_c - y_c(A_k := 0) = w_k y_c``; every other method ``w_k * mean_ij A_kij`` (for Grad-CAM the
first-order Taylor / LIFT-CAM paper's comparison). Estimators computed here only: ``deepshap-2``,
Rescale DeepLIFT averaged over an antithetic pair of coalition references (``0 -> A_S -> A`` and
``0 -> A_(not S) -> A``, DeepSHAP-style); ``ig-4``, integrated gradients over the channels' scale
(4 midpoints, the Aumann-Shapley value); ``permutation-2``, exact marginal contributions along
2 antithetic pairs of random channel orders (4 K head passes; unbiased). Per image: Pearson
correlation with the exact Shapley values; the table shows the mean over images (higher is
better; RandomCAM is the floor). Cost: the method's time over the model's forward pass on the same
batch (the trunk here is small, so a head pass is a large share of a forward pass).

    python bench/fidelity.py                      # the table in docs/more-methods.md
    python bench/fidelity.py --images 16 --epochs 1 --train 600   # quick check
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_cam import explain_all
from lightning_cam.data.shapes import ShapesDataset
from lightning_cam.methods.base import LayerPass
from lightning_cam.methods.liftcam import deeplift_coefficients

#: registry methods (``name-rule`` = LiftCAM with that rule)
METHODS = [
    "liftcam", "liftcam-revealcancel", "liftcam-hessian", "liftcam-coalition", "shapleycam", "finercam", "fem", "gradcam", "gradcam++",
    "xgradcam", "smoothgradcam++", "scorecam", "sscam", "iscam", "ablationcam", "randomcam",
]
#: estimators of this benchmark only (not in the registry)
ESTIMATORS = ["deepshap-2", "ig-4", "permutation-2"]
HEADS = ("vgg-fc", "silu-fc", "gelu-fc", "conv-pool-fc", "gated", "layernorm", "attention")
STATES = ("random", "random x2", "trained")
K = 8
D = 32


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
        if head in ("vgg-fc", "silu-fc", "gelu-fc"):
            self.fc1, self.fc2 = nn.Linear(K * 16, D), nn.Linear(D, classes)
        elif head == "conv-pool-fc":
            self.conv, self.fc = nn.Conv2d(K, 16, 3, padding=1), nn.Linear(16, classes)
        elif head == "gated":
            self.gate, self.fc1, self.fc2 = nn.Conv2d(K, 1, 1), nn.Linear(K, D), nn.Linear(D, classes)
        elif head in ("layernorm", "attention"):
            self.proj, self.norm, self.fc1, self.fc2 = nn.Linear(K, D), nn.LayerNorm(D), nn.Linear(D, D), nn.Linear(D, classes)
            if head == "attention":
                self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        else:
            raise ValueError(f"unknown head {head!r}; one of {HEADS}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        kind = self.head_kind
        if kind in ("vgg-fc", "silu-fc", "gelu-fc"):
            act = {"vgg-fc": torch.relu, "silu-fc": F.silu, "gelu-fc": F.gelu}[kind]
            return self.fc2(act(self.fc1(F.max_pool2d(a, 2).flatten(1))))
        if kind == "conv-pool-fc":
            return self.fc(F.max_pool2d(torch.relu(self.conv(a)), 2).mean(dim=(2, 3)))
        if kind == "gated":
            z = (torch.sigmoid(self.gate(a)) * a).mean(dim=(2, 3))
            return self.fc2(torch.relu(self.fc1(z)))
        t = self.proj(a.flatten(2).transpose(1, 2))  # (B, 64, D) tokens
        if kind == "layernorm":
            t = self.norm(t)
        else:
            h = self.norm(t)
            t = t + self.attn(h, h, h, need_weights=False)[0]
        return self.fc2(F.gelu(self.fc1(t.mean(dim=1))))


def head_parameters(model: Net) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if not name.startswith("features.")]


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


def _scores(lp: LayerPass, maps: torch.Tensor) -> torch.Tensor:
    return lp.head(maps, lp.index).gather(1, lp.targets[:, None])[:, 0].float()


def deepshap(lp: LayerPass, pairs: int = 1, seed: int = 0) -> torch.Tensor:
    """Rescale DeepLIFT along ``0 -> A_S -> A`` averaged over ``pairs`` antithetic coalition pairs (S, not S)."""
    a = lp.activation
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(a.shape[:2])
    for _ in range(pairs):
        s = (torch.rand(a.shape[0], a.shape[1], 1, 1, generator=g) < 0.5).to(a.dtype)
        for mask in (s, 1 - s):
            part = a * mask
            total += deeplift_coefficients(lp, actual=part)[0] + deeplift_coefficients(lp, actual=a, reference=part)[0]
    return total / (2 * pairs)


def integrated_gradients(lp: LayerPass, steps: int = 4) -> torch.Tensor:
    """``phi_k = sum_ij A_kij * mean_s dy/dA_kij((s + 1/2) A / steps)`` (Aumann-Shapley, midpoint rule)."""
    a = lp.activation
    grads = torch.zeros_like(a)
    for s in range(steps):
        leaf = (a * (s + 0.5) / steps).requires_grad_(True)
        with torch.enable_grad():
            grads += torch.autograd.grad(_scores(lp, leaf).sum(), leaf)[0]
    return (grads / steps * a).sum(dim=(2, 3))


@torch.no_grad()
def permutation(lp: LayerPass, pairs: int = 2, seed: int = 0) -> torch.Tensor:
    """Exact marginal contributions along ``pairs`` antithetic pairs of random orders (Castro et al. 2009)."""
    a = lp.activation
    k = a.shape[1]
    g = torch.Generator().manual_seed(seed)
    phi = torch.zeros(a.shape[:2])
    for _ in range(pairs):
        order = torch.randperm(k, generator=g)
        for o in (order, order.flip(0)):
            masks = torch.zeros(k + 1, k)
            for i, c in enumerate(o.tolist()):
                masks[i + 1:, c] = 1  # prefix i+1 of the order present
            y = torch.stack([_scores(lp, a * m[None, :, None, None]) for m in masks], dim=1)  # (B, K+1)
            phi[:, o] += (y[:, 1:] - y[:, :-1])
    return phi / (2 * pairs)


ESTIMATOR_FUNCS: dict[str, Callable[[LayerPass], torch.Tensor]] = {
    "deepshap-2": deepshap, "ig-4": integrated_gradients, "permutation-2": permutation,
}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def _explain(model: nn.Module, x: torch.Tensor, name: str):
    """One method alone (its time includes the shared pass), ``liftcam-<rule>`` as LiftCAM(rule=...)."""
    method, _, rule = name.partition("-") if name.startswith("liftcam-") else (name, "", "")
    kwargs = {"liftcam": {"rule": rule}} if rule else {"shap": {"max_exact_channels": K}}
    start = time.perf_counter()
    exp = explain_all(model, "features", x, methods=[method], method_kwargs=kwargs)[method]
    return exp, time.perf_counter() - start


def _forward_seconds(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats


def evaluate(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{method: (mean Pearson with exact Shapley, seconds / forward-pass seconds)}."""
    shapley = _explain(model, x, "shap")[0].weights
    forward = _forward_seconds(model, x)
    with torch.no_grad():
        activation_mean = model.features(x).mean(dim=(2, 3))
    out = {}
    for name in METHODS:
        exp, seconds = _explain(model, x, name)
        out[name] = (float(_pearson(contributions(name, exp, activation_mean), shapley).mean()), seconds / forward)
    for name, func in ESTIMATOR_FUNCS.items():
        start = time.perf_counter()
        phi = func(LayerPass(model, "features", x))
        out[name] = (float(_pearson(phi, shapley).mean()), (time.perf_counter() - start) / forward)
    return out


def build(head: str, state: str, train_set: ShapesDataset, epochs: int, seed: int) -> tuple[Net, str]:
    torch.manual_seed(seed)
    model = Net(head)
    label = f"{head} {state}"
    if state == "random x2":
        with torch.no_grad():
            for p in head_parameters(model):
                p.mul_(2.0)
    elif state == "trained":
        label += f" (acc {train(model, train_set, epochs, seed):.2f})"
    return model.eval(), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="explained images per model")
    parser.add_argument("--train", type=int, default=1000, help="training images (shapes, 32x32)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the table as a docs record (docs/numbers/fidelity.json, bench/docs_numbers.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set = ShapesDataset(args.train, image_size=32, seed=args.seed)
    test_set = ShapesDataset(args.images, image_size=32, seed=args.seed + 1)
    x = torch.stack([test_set[i][0] for i in range(len(test_set))])
    columns, results = [], {}
    start = time.perf_counter()
    for head in args.heads:
        for state in STATES:
            model, label = build(head, state, train_set, args.epochs, args.seed)
            columns.append(label)
            results[label] = evaluate(model, x)
            print(f"  {label}: done at {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\n{args.images} images per model, K = {K} channels, exact Shapley over 2^{K} coalitions; "
          f"{time.perf_counter() - start:.0f} s\n")
    print("**Pearson correlation with exact Shapley (mean over images)**; cost: median over the models of the "
          "method's time / the model's forward pass\n")
    header = ["method", *columns, "mean", "min", "cost"]
    separator = "|---|" + "---|" * (len(columns) + 3)
    print("| " + " | ".join(header) + " |")
    print(separator)
    rows = []
    for name in METHODS + ESTIMATORS:
        values = [results[c][name][0] for c in columns]
        cost = sorted(results[c][name][1] for c in columns)[len(columns) // 2]
        rows.append([name, *(f"{v:.3f}" for v in values), f"{sum(values) / len(values):.3f}", f"{min(values):.3f}",
                     f"{cost:.1f}x"])
        print("| " + " | ".join(rows[-1]) + " |")
    if args.json is not None:
        import datetime as dt
        import json
        import shlex
        import sys

        command = "python bench/fidelity.py " + shlex.join(a for a in sys.argv[1:] if a != str(args.json))
        command = command.replace(" --json", "").rstrip()
        record = {"kind": "table", "command": command, "date": dt.date.today().isoformat(),
                  "provenance": f"written by that command ({os.cpu_count()} CPUs, torch {torch.__version__.split('+')[0]}, "
                                f"{args.threads} thread(s), {time.perf_counter() - start:.0f} s); the cost column is a "
                                "timing that depends on the load",
                  "header": header, "separator": separator, "rows": rows,
                  "pearson": {c: {n: results[c][n][0] for n in METHODS + ESTIMATORS} for c in columns}}
        args.json.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

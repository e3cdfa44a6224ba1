"""Benchmark: lightning-cam insertion+deletion vs the forward-pass bound and torchcam.

The bound is what any implementation must pay: B * 2 * (n_steps + 1) images through the model
in batches of ``--batch-size`` under ``torch.no_grad`` (inputs prepared beforehand, not timed).
The peer is torchcam's ``DeletionInsertionMetric`` with the same number of curve points
(``steps = n_steps``) and batch size, fed the same saliency through a fixed "CAM extractor";
it uses one zero baseline for both curves, so we also time ours with ``insertion_substrate="zeros"``.
Each method runs ``--repeats`` times in rotating order after one warm-up; the table shows medians.

    python bench/metrics.py                      # resnet18, 4 x 3x224x224, step 224*8 (29 points)
    python bench/metrics.py --step 224           # the authors' full setting (225 points)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

from lightning_cam.metrics import insertion_deletion


def _bound(model: torch.nn.Module, n_images: int, batch_size: int, size: int) -> Callable[[], None]:
    full = torch.randn(batch_size, 3, size, size)
    last = n_images % batch_size
    partial = full[:last].clone() if last else None

    def run() -> None:
        with torch.no_grad():
            for _ in range(n_images // batch_size):
                model(full)
            if partial is not None:
                model(partial)

    return run


def _torchcam(model: torch.nn.Module, x: torch.Tensor, sal: torch.Tensor, n_steps: int, batch_size: int):
    try:
        from torchcam.metrics import DeletionInsertionMetric
    except ImportError:
        return None

    class FixedCAM:  # the protocol torchcam's metrics expect from a CAM extractor
        def __init__(self) -> None:
            self.model = model

        def __call__(self, class_idx: Any = None, scores: Any = None, normalized: bool = True, **kw: Any):
            return [sal]

        def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
            return cams[0]

        def _hooks_off(self):
            return contextlib.nullcontext()

    def run() -> None:
        metric = DeletionInsertionMetric(
            FixedCAM(), lambda z: torch.softmax(z, dim=-1), steps=n_steps, batch_size=batch_size
        )
        metric.update(x)
        metric.summary()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="images B")
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--step", type=int, default=224 * 8, help="pixels per step (224 = authors' full setting)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="resnet18", help="torchvision model name (random init)")
    p.add_argument("--no-peer", action="store_true", help="skip torchcam")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    sal = torch.rand(args.batch, args.size, args.size)  # tie-free
    hw = args.size * args.size
    n_steps = math.ceil(hw / args.step)
    n_images = args.batch * 2 * (n_steps + 1)

    runs: dict[str, Callable[[], Any]] = {
        "forward bound": _bound(model, n_images, args.batch_size, args.size),
        "lightning-cam": lambda: insertion_deletion(model, x, sal, step=args.step, batch_size=args.batch_size),
    }
    runs["lightning-cam, zeros for both curves"] = lambda: insertion_deletion(
        model, x, sal, step=args.step, batch_size=args.batch_size, insertion_substrate="zeros"
    )
    peer = None if args.no_peer else _torchcam(model, x, sal, n_steps, args.batch_size)
    if peer is not None:
        runs["torchcam 0.5 DeletionInsertionMetric"] = peer

    runs["forward bound"]()  # warm-up (allocator, kernels), not timed
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate to spread load drift
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)

    # torchcam evaluates B*(2*n_steps - 1) perturbed images + B clean (its two curves share the
    # all-baseline image); we evaluate B*2*n_steps + B clean, or B*(2*n_steps - 1) + B when both
    # curves use the same substrate (the "zeros for both curves" row = torchcam's default protocol).
    evaluated = {
        "forward bound": n_images,
        "lightning-cam": args.batch * (2 * n_steps + 1),
        "lightning-cam, zeros for both curves": args.batch * 2 * n_steps,
        "torchcam 0.5 DeletionInsertionMetric": args.batch * (2 * n_steps - 1) + args.batch,
    }
    bound = statistics.median(times["forward bound"])
    print(
        f"{args.model}, B={args.batch}, {args.size}x{args.size}, step={args.step} -> n_steps={n_steps} "
        f"({n_steps + 1} points), batch_size={args.batch_size}, threads={args.threads}, "
        f"median of {args.repeats} (torch {torch.__version__})"
    )
    print(
        f"| {'method':<38} | {'images':>6} | {'median s':>8} | {'/ bound':>7} | {'/ torchcam':>10} "
        f"| {'min s':>7} | {'min / bound':>11} | all runs (s) |"
    )
    print(f"|{'-' * 40}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 12}|{'-' * 9}|{'-' * 13}|{'-' * 14}|")
    tc_name = "torchcam 0.5 DeletionInsertionMetric"
    tc = statistics.median(times[tc_name]) if peer is not None else None
    bound_min = min(times["forward bound"])
    for name in names:
        t = statistics.median(times[name])
        rel = f"{t / tc:.3f}" if tc else "-"
        runs_s = " ".join(f"{v:.2f}" for v in times[name])
        print(
            f"| {name:<38} | {evaluated[name]:>6} | {t:>8.2f} | {t / bound:>7.3f} | {rel:>10} "
            f"| {min(times[name]):>7.2f} | {min(times[name]) / bound_min:>11.3f} | {runs_s} |"
        )


if __name__ == "__main__":
    main()

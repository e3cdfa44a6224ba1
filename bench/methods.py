"""Benchmark: lightning-cam explanation methods vs a plain forward pass and vs the peers, in ONE run.

For each method: seconds per image and the ratio to a plain ``model(x)`` under ``torch.no_grad``
on the same batch. Ours: every method on its own (``Explainer(model, layer)(x)``: (B,H,W) maps in
[0,1], so upsampling and normalisation are included) and ``explain_all`` with LIFT-CAM + CAM +
Grad-CAM + Grad-CAM++ + XGrad-CAM + HiResCAM + LayerCAM from one shared pass (each result turned
into (B,H,W) saliency too). Peers, same batch, same layer:

* pytorch-grad-cam (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM; ScoreCAM and
  AblationCAM with ``--perturbation``), one object per call as users write it;
* torchcam ``CAM`` for CAM (forward + hooked activation + upsampling);
* "the authors' style LIFT-CAM": per image, a forward pass (hook on the target layer) and
  captum ``DeepLift`` with a zero baseline on the head module (ResNet: avgpool, flatten, fc;
  VGG16: features[30], avgpool, flatten, classifier), as in the LIFT-CAM authors' code.
  The script also prints how far our LIFT-CAM coefficients are from that computation.

"all 7 methods" compares our ``explain_all`` with the SUM of the separate peer calls (authors'
LIFT-CAM + torchcam CAM + the five pytorch-grad-cam methods): every peer needs its own pass.

Timing: one warm-up call of everything, then ``--repeats`` rounds in which every entry runs
once (rotating order, so machine-load drift hits all entries alike); the table shows medians.

    python bench/methods.py                                   # resnet50, 16 x 3x224x224, random weights
    python bench/methods.py --model vgg16                     # target features.29
    python bench/methods.py --batch 2 --size 64 --repeats 2   # quick check
    python bench/methods.py --model resnet18 --batch 2 --size 64 --repeats 2 --methods gradcam shapleycam finercam fem kpcacam fullgrad
    python bench/methods.py --perturbation --perturbation-model resnet18 --perturbation-batch 1
    python bench/methods.py --model vit_b_16                  # ViT: tokens (B, 197, 768), pytorch-grad-cam
                                                              # with its reshape_transform as the peer

Vision transformers (torchvision ``vit_*``, ``swin_*``): the target layer is the engine's default
(``encoder.layers[-1].ln_1`` for ViT, pytorch-grad-cam's usual choice); CAM and the authors'
LIFT-CAM (captum on a head module) do not apply, so their rows are ours only.
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's perturbation loops print progress bars
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_cam import explain_all, get_method
from lightning_cam.maps import normalize_maps
from lightning_cam.methods.base import LayerPass
from lightning_cam.methods.liftcam import exact_score_difference

OURS = ["liftcam", "cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
NEWER = ["shapleycam", "finercam", "fem", "kpcacam", "fullgrad"]  # single rows on request (--methods), not in "all"
LABELS = {
    "liftcam": "LIFT-CAM", "cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM",
    "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM",
    "shapleycam": "ShapleyCAM", "finercam": "FinerCAM", "fem": "FEM", "kpcacam": "KPCA-CAM", "fullgrad": "FullGrad",
}
PGC = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM",
    "shapleycam": "ShapleyCAM", "finercam": "FinerCAM", "fem": "FEM", "kpcacam": "KPCA_CAM", "fullgrad": "FullGrad",
}
LAYERS = {"resnet": "layer4", "vgg": "features.29"}
TRANSFORMERS = ("vit_", "swin_")


# ----------------------------------------------------------------------------- set-up


def build(name: str, device: torch.device, seed: int = 0) -> nn.Module:
    """A torchvision classifier with random weights (no download), eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval().to(device)
    for module in model.modules():  # torchvision zero-initialises ViT's head: all logits would be 0
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    return model


def target_layer(name: str, model: nn.Module | None = None) -> str:
    for prefix, layer in LAYERS.items():
        if name.startswith(prefix):
            return layer
    if name.startswith(TRANSFORMERS) and model is not None:
        from lightning_cam.layers import default_target_layer

        return default_target_layer(model)
    raise SystemExit(f"--model {name}: only resnet*, vgg*, vit_* and swin_* have a known target layer here.")


def reshape_transform(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> Callable | None:
    """pytorch-grad-cam's reshape_transform for a token / channels-last layer (None for CNNs)."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(x[:1])
    handle.remove()
    out = captured[0]
    if out.dim() == 4 and out.shape[-1] == out.shape[-2]:
        return None
    if out.dim() == 4:  # (B, h, w, C), Swin
        return lambda t: t.permute(0, 3, 1, 2)
    side = int(math.isqrt(out.shape[1] - 1))  # (B, 1 + h*w, C), ViT: pytorch-grad-cam's vit_example.py

    def vit(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:, :].reshape(t.size(0), side, side, t.size(2)).transpose(2, 3).transpose(1, 2)

    return vit


def authors_head(model: nn.Module, name: str) -> nn.Module:
    """The module after the target layer, as the LIFT-CAM authors build it for captum."""
    if name.startswith("resnet"):
        return nn.Sequential(model.avgpool, nn.Flatten(1), model.fc).eval()
    return nn.Sequential(model.features[30], model.avgpool, nn.Flatten(1), model.classifier).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- the timed entries


def plain_forward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return run


def ours_single(model: nn.Module, layer: str, method: str, x: torch.Tensor, **kwargs) -> Callable[[], object]:
    explainer = get_method(method)(model, layer, **kwargs)
    return lambda: explainer(x)


def ours_all(model: nn.Module, layer: str, methods: list[str], x: torch.Tensor) -> Callable[[], object]:
    def run() -> dict:
        exps = explain_all(model, layer, x, methods=methods)
        return {name: exp.saliency(x.shape[-2:]) for name, exp in exps.items()}

    return run


def peer_pgc(model: nn.Module, layer: nn.Module, method: str, x: torch.Tensor, batch_size: int | None = None,
             reshape: Callable | None = None) -> Callable[[], object] | None:
    try:
        import pytorch_grad_cam
    except ImportError:
        return None
    cls = getattr(pytorch_grad_cam, PGC[method])

    def run():
        kwargs = {"batch_size": batch_size} if method == "ablationcam" and batch_size else {}
        with cls(model=model, target_layers=[layer], reshape_transform=reshape, **kwargs) as cam:
            if method == "scorecam" and batch_size:
                cam.batch_size = batch_size  # its get_cam_weights reads self.batch_size (default 16)
            return cam(input_tensor=x, targets=None)

    return run


def peer_torchcam_cam(model: nn.Module, layer: str, x: torch.Tensor) -> Callable[[], object] | None:
    try:
        from torchcam.methods import CAM
    except ImportError:
        return None
    fc = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(fc) != 1:
        return None

    def run() -> torch.Tensor:
        with CAM(model, target_layer=layer, fc_layer=fc[0]) as extractor:
            with torch.no_grad():
                out = model(x)
            maps = extractor(class_idx=out.argmax(1).tolist())[0]
        return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    return run


def peer_authors_liftcam(model: nn.Module, layer: nn.Module, head: nn.Module, x: torch.Tensor) -> Callable[[], object] | None:
    """Per image: forward with a hook on L, then captum DeepLift (zero baseline) on the head."""
    try:
        from captum.attr import DeepLift
    except ImportError:
        return None

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        deeplift = DeepLift(head)
        maps, coefficients = [], []
        for i in range(x.shape[0]):
            captured: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda m, inp, out: captured.append(out.detach().clone()))
            try:
                with torch.no_grad():
                    logits = model(x[i : i + 1])
            finally:
                handle.remove()
            activation = captured[0]
            attributions = deeplift.attribute(activation, baselines=torch.zeros_like(activation), target=int(logits.argmax(1)))
            phi = attributions.sum(dim=(2, 3)).detach()
            coefficients.append(phi)
            maps.append(torch.relu((phi[:, :, None, None] * activation).sum(1)))
        maps_ = normalize_maps(torch.cat(maps), tuple(x.shape[-2:]))
        return maps_, torch.cat(coefficients)

    return run


def measure(
    entries: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: set[str] | None = None,
) -> dict[str, float]:
    """Median wall seconds of each entry over ``repeats`` rotating rounds, after one warm-up call
    of the entries in ``warmup`` (default: all)."""
    times: dict[str, list[float]] = {name: [] for name in entries}
    names = list(entries)
    for name in names:
        if warmup is None or name in warmup:
            entries[name]()
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            entries[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# ----------------------------------------------------------------------------- report


def row(label: str, ours: float | None, peer: float | None, forward: float, batch: int, peer_name: str = "") -> str:
    def cell(seconds: float | None) -> tuple[str, str]:
        if seconds is None:
            return "n/a", "n/a"
        return f"{seconds / batch:.4f}", f"{seconds / forward:.2f}x"

    o, p = cell(ours), cell(peer)
    return f"| {label} | {o[0]} | {o[1]} | {p[0]} | {p[1]} | {(peer_name if peer is not None else '') or '-'} |"


def header() -> list[str]:
    return [
        "| method | ours s/img | ratio to forward | peer s/img | peer ratio | peer |",
        "|---|---:|---:|---:|---:|---|",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", help="torchvision resnet* or vgg* (random weights)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", default=OURS, choices=OURS + NEWER,
                        help=f"single-method rows to time (also: {' '.join(NEWER)})")
    parser.add_argument("--no-peers", action="store_true", help="time only lightning-cam")
    parser.add_argument("--perturbation", action="store_true", help="also time Score-CAM and Ablation-CAM (expensive)")
    parser.add_argument("--perturbation-model", default="resnet18")
    parser.add_argument("--perturbation-batch", type=int, default=1)
    parser.add_argument("--perturbation-size", type=int, default=None, help="default: --size")
    parser.add_argument("--perturbation-chunk", type=int, default=64, help="masked/ablated images per forward (ours and peers)")
    parser.add_argument("--perturbation-repeats", type=int, default=1)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    model = build(args.model, device)
    layer_name = target_layer(args.model, model)
    layer = model.get_submodule(layer_name)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    transformer = args.model.startswith(TRANSFORMERS)
    reshape = reshape_transform(model, layer, x) if transformer else None

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"# {args.model} (random weights), target {layer_name}, batch {args.batch}, {args.size}x{args.size}, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
    )

    no_cam = args.model.startswith(("vgg", *TRANSFORMERS))  # no GAP+fc right after the layer
    methods = [m for m in args.methods if not (m == "cam" and no_cam)]
    all_methods = [m for m in OURS if not (m == "cam" and no_cam)]
    entries: dict[str, Callable[[], object]] = {"forward": plain_forward(model, x)}
    for method in methods:
        entries[f"ours:{method}"] = ours_single(model, layer_name, method, x)
    entries["ours:all"] = ours_all(model, layer_name, all_methods, x)
    authors = None
    if not args.no_peers:
        for method in dict.fromkeys(all_methods + methods):
            if method == "liftcam":
                authors = None if transformer else peer_authors_liftcam(model, layer, authors_head(model, args.model), x)
                peer = authors
            elif method == "cam":
                peer = peer_torchcam_cam(model, layer_name, x)
            else:
                peer = peer_pgc(model, layer, method, x, reshape=reshape)
            if peer is not None:
                entries[f"peer:{method}"] = peer

    # Sanity: our batched LIFT-CAM vs the authors' per-image captum computation.
    if authors is not None:
        _, phi_authors = authors()
        phi_ours = explain_all(model, layer_name, x, methods=["liftcam"])["liftcam"].weights
        diff = (phi_ours - phi_authors).abs().max().item()
        print(f"# LIFT-CAM coefficients vs the authors' captum DeepLift: max |diff| {diff:.3g} "
              f"(max |phi| {phi_authors.abs().max().item():.3g})")

    if transformer:
        lift = explain_all(model, layer_name, x, methods=["liftcam"])["liftcam"]
        difference = lift.weights.sum(1) - lift.delta
        print(f"# LIFT-CAM completeness through attention: max |delta| {lift.delta.abs().max().item():.3g}, "
              f"max |delta| / |y(A) - y(0)| {(lift.delta.abs() / difference.abs()).max().item():.3g}, "
              f"max |delta| / max |logit| {(lift.delta.abs().max() / lift.logits.abs().max()).item():.3g}")
        # The float32 y(A) - y(0) is itself rounded at eps |y|: against the float64 head on the same
        # activations, the coefficients' own error shows.
        exact = exact_score_difference(LayerPass(model, layer_name, x))
        y = lift.logits.gather(1, lift.targets[:, None])[:, 0].double()
        print(f"# LIFT-CAM sum of phi vs y(A) - y(0) in float64 on the same activations: max relative error "
              f"{((lift.weights.double().sum(1) - exact).abs() / exact.abs()).max().item():.3g} "
              f"(float32 floor eps |y| / |y(A) - y(0)| up to {(2.0**-23 * y.abs() / exact.abs()).max().item():.3g})")

    seconds = measure(entries, args.repeats, device)
    forward, batch = seconds["forward"], args.batch
    peer_names = {"liftcam": "authors' style (captum DeepLift per image)", "cam": "torchcam CAM"}
    lines = header()
    lines.append(row("plain forward (no_grad)", forward, None, forward, batch))
    for method in methods:
        lines.append(row(LABELS[method], seconds[f"ours:{method}"], seconds.get(f"peer:{method}"), forward, batch,
                         peer_names.get(method, f"pytorch-grad-cam {PGC.get(method, '')}")))
    peer_parts = [seconds.get(f"peer:{m}") for m in all_methods if not (transformer and m == "liftcam")]
    peer_all = None if args.no_peers or any(p is None for p in peer_parts) else sum(peer_parts)
    label = " + ".join(LABELS[m] for m in all_methods)
    lines.append(row(f"all {len(all_methods)} ({label})", seconds["ours:all"], peer_all, forward, batch,
                     "sum of the separate pytorch-grad-cam calls (no LIFT-CAM peer)" if transformer else "sum of the separate peer calls"))
    print("\n".join(lines))
    single = [seconds[f"ours:{m}"] / forward for m in methods]
    print(
        f"\ntargets: single methods <= 1.2x forward (worst here {max(single):.2f}x: "
        f"{'met' if max(single) <= 1.2 else 'NOT met'}); all from one pass <= 1.5x "
        f"({seconds['ours:all'] / forward:.2f}x: {'met' if seconds['ours:all'] / forward <= 1.5 else 'NOT met'})"
    )

    if args.perturbation:
        perturbation(args, device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\n# load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")


def perturbation(args: argparse.Namespace, device: torch.device) -> None:
    """Score-CAM and Ablation-CAM on a smaller setting: K extra passes per image."""
    name = args.perturbation_model
    size = args.perturbation_size or args.size
    model = build(name, device)
    layer_name = target_layer(name)
    layer = model.get_submodule(layer_name)
    x = torch.randn(args.perturbation_batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    chunk = args.perturbation_chunk
    entries: dict[str, Callable[[], object]] = {"forward": plain_forward(model, x)}
    entries["ours:scorecam"] = ours_single(model, layer_name, "scorecam", x, batch_size=chunk)
    entries["ours:ablationcam"] = ours_single(model, layer_name, "ablationcam", x, batch_size=chunk)
    if not args.no_peers:
        for method in ("scorecam", "ablationcam"):
            peer = peer_pgc(model, layer, method, x, batch_size=chunk)
            if peer is not None:
                entries[f"peer:{method}"] = peer
    # Reference cost: the K masked images through the whole model, in chunks (what Score-CAM must pay).
    with torch.no_grad():
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
        model(x[:1])
        handle.remove()
    channels = captured[0].shape[1]
    masked = torch.randn(min(chunk, channels * x.shape[0]), 3, size, size, generator=torch.Generator().manual_seed(2)).to(device)
    full, rest = divmod(channels * x.shape[0], masked.shape[0])

    def k_forwards() -> None:
        with torch.no_grad():
            for _ in range(full):
                model(masked)
            if rest:
                model(masked[:rest])

    entries["bound:k-forwards"] = k_forwards
    # The expensive entries run --perturbation-repeats times without warm-up; the plain forward
    # (the ratios' denominator) gets a warm-up and --repeats runs of its own.
    seconds = measure(entries, args.perturbation_repeats, device, warmup={"ours:ablationcam"})
    seconds["forward"] = measure({"forward": entries["forward"]}, max(args.repeats, 3), device)["forward"]
    forward, batch = seconds["forward"], x.shape[0]
    print(f"\n# perturbation methods: {name} (random weights), target {layer_name} (K = {channels}), "
          f"batch {batch}, {size}x{size}, chunk {chunk} images per forward (ours and pytorch-grad-cam), "
          f"{args.perturbation_repeats} repeat(s), no warm-up except the plain forward and our Ablation-CAM")
    lines = header()
    lines.append(row("plain forward (no_grad)", forward, None, forward, batch))
    lines.append(row(f"K = {channels} forwards of the whole model (Score-CAM's floor)", seconds["bound:k-forwards"], None, forward, batch))
    for method in ("scorecam", "ablationcam"):
        lines.append(row(LABELS[method], seconds[f"ours:{method}"], seconds.get(f"peer:{method}"), forward, batch,
                         f"pytorch-grad-cam {PGC[method]}"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

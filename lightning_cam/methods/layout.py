"""From a target layer's raw output to the (B, C, h, w) maps every method works on, and back.

CNN layers give (B, C, h, w) already. Transformers do not: ViT-style blocks give
tokens (B, N, C) with N = P prefix tokens (class, distillation, registers) + h*w
patch tokens in row-major order; timm's Swin stages are channels-last (B, h, w, C);
some layers are (B, C, N). :func:`infer_layout` recognises these from the output
shape, the input size and the model (timm's ``num_prefix_tokens``, the class /
distillation / register token parameters, the patch size, timm's ``output_fmt``)
and returns a :class:`Layout`:

* ``to_maps(raw)`` -> (B, C, h, w): the patch tokens only (prefix tokens are not
  part of the map);
* ``to_raw(maps, rows)`` -> the raw layout again, for the part of the network after
  the layer: patch entries from ``maps``, every other entry (prefix tokens) from
  the actual activation of images ``rows``.

So methods that re-evaluate the head on other activations (LIFT-CAM's reference
``A' = 0``, Ablation-CAM, ShapCAM) change the patch tokens only; prefix tokens keep
their actual values, like the values computed before the layer. LIFT-CAM's
completeness then reads ``sum_k phi_k = y_c(A) - y_c(A_patches := 0)``.

A user ``reshape`` callable (like pytorch-grad-cam's ``reshape_transform``) maps
raw -> (B, C, h, w) for anything unusual; it must only select and rearrange
entries, which is checked, so that its inverse is known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lightning_cam.outputs import accumulation_dtype

__all__ = ["Layout", "infer_layout", "Reshape"]

Reshape = Callable[[torch.Tensor], torch.Tensor]
_PREFIX_TOKEN_PARAMS = ("cls_token", "class_token", "dist_token", "reg_token", "register_tokens")


@dataclass
class Layout:
    """How a layer's raw output maps to (B, C, h, w): ``index`` selects the map entries
    from each flattened raw row (``None``: the raw output is already (B, C, h, w))."""

    name: str
    raw_shape: tuple[int, ...]  # one row, without the batch dimension
    map_shape: tuple[int, int, int]  # (C, h, w)
    index: torch.Tensor | None = None
    base: torch.Tensor | None = None  # the actual raw activation (float), source of the other entries

    def to_maps(self, raw: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return raw
        return raw.flatten(1)[:, self.index].view(raw.shape[0], *self.map_shape)

    def to_raw(self, maps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return maps
        base = self.base[rows].flatten(1).to(maps.dtype)
        return base.index_copy(1, self.index, maps.flatten(1)).view(maps.shape[0], *self.raw_shape)


def infer_layout(
    model: nn.Module, layer_name: str, raw: object, input_size: tuple[int, int], reshape: Reshape | None = None,
) -> Layout:
    """The :class:`Layout` of ``raw`` (the output of ``layer_name`` for images of ``input_size``)."""
    if not isinstance(raw, torch.Tensor):
        raise ValueError(
            f"Target layer {layer_name!r} returns {type(raw).__name__}, not a tensor; choose a layer that "
            "outputs a feature map or tokens (e.g. a block, or a block's first norm)."
        )
    if reshape is not None:
        layout = _custom_layout(raw, reshape, layer_name)
    elif raw.dim() == 4:
        layout = _four_d(model, layer_name, raw, input_size)
    elif raw.dim() == 3:
        layout = _tokens(model, layer_name, raw, input_size)
    else:
        raise ValueError(_explain(layer_name, raw, input_size, "it has no spatial dimensions" if raw.dim() < 3 else "it has more than 3 non-batch dimensions"))
    if layout.index is not None:
        layout.base = raw.detach().to(accumulation_dtype(raw.dtype))
    return layout


# ------------------------------------------------------------------------------ 4-D


def _four_d(model: nn.Module, layer_name: str, raw: torch.Tensor, size: tuple[int, int]) -> Layout:
    _, d1, d2, d3 = raw.shape
    nchw, nhwc = _plausible_grid(d2, d3, size), _plausible_grid(d1, d2, size)
    channels_last = nhwc and (not nchw or _channels_last_hint(model, layer_name, d3))
    if not channels_last:
        return Layout("BCHW", tuple(raw.shape[1:]), (d1, d2, d3))
    index = torch.arange(d1 * d2 * d3, device=raw.device).view(d1, d2, d3).permute(2, 0, 1).reshape(-1)
    return Layout("BHWC", tuple(raw.shape[1:]), (d3, d1, d2), index)


def _channels_last_hint(model: nn.Module, layer_name: str, channels: int) -> bool:
    """timm's ``output_fmt == "NHWC"`` (Swin), or a layer that ends in a LayerNorm/Linear over its last dim."""
    if any(getattr(m, "output_fmt", None) == "NHWC" for m in model.modules()):
        return True
    layer = model.get_submodule(layer_name)
    last = [m for m in layer.modules() if isinstance(m, (nn.LayerNorm, nn.Linear, nn.Conv2d, nn.BatchNorm2d))]
    if not last or "2d" in type(last[-1]).__name__.lower():
        return False
    size = last[-1].normalized_shape[-1] if isinstance(last[-1], nn.LayerNorm) else getattr(last[-1], "out_features", None)
    return size == channels


# ------------------------------------------------------------------------------ tokens


def _tokens(model: nn.Module, layer_name: str, raw: torch.Tensor, size: tuple[int, int]) -> Layout:
    _, d1, d2 = raw.shape
    prefix = prefix_tokens(model)
    patch = _patch_size(model)
    options: list = []
    # The hinted prefix first; 0 when it does not fit (CaiT adds its class token after the blocks).
    hinted = prefix
    for prefix in dict.fromkeys((hinted, 0)):  # the prefix that fits is used below
        for tokens_dim, count, channels in ((1, d1, d2), (2, d2, d1)):
            grid = _token_grid(count - prefix, size, patch)
            if grid is not None:
                options.append((tokens_dim, channels, grid))
        if options:
            break
    if len(options) != 1:
        what = "no" if not options else "more than one"
        tried = f"{hinted} or 0" if hinted else "0"
        raise ValueError(_explain(
            layer_name, raw, input_size=size,
            why=f"with {tried} prefix token(s) there is {what} way to read it as tokens on a grid",
        ))
    tokens_dim, channels, (h, w) = options[0]
    if tokens_dim == 1:  # (B, N, C): entry (n, c) at n * C + c
        grid = (torch.arange(h * w, device=raw.device) + prefix) * channels
        index = (grid[None, :] + torch.arange(channels, device=raw.device)[:, None]).reshape(-1)
        name = "BNC"
    else:  # (B, C, N): entry (c, n) at c * N + n
        index = (torch.arange(channels, device=raw.device)[:, None] * d2 + prefix + torch.arange(h * w, device=raw.device)).reshape(-1)
        name = "BCN"
    return Layout(f"{name} ({prefix} prefix)" if prefix else name, tuple(raw.shape[1:]), (channels, h, w), index)


def prefix_tokens(model: nn.Module) -> int:
    """Prefix tokens before the patch tokens: timm's ``num_prefix_tokens``, else the number of
    class / distillation / register token parameters (torchvision's ``class_token``), else 0."""
    for module in model.modules():
        value = getattr(module, "num_prefix_tokens", None)
        if isinstance(value, int):
            return value
    count = 0
    for module in model.modules():
        for attr in _PREFIX_TOKEN_PARAMS:
            token = getattr(module, attr, None)
            if isinstance(token, torch.Tensor) and token.dim() >= 2:
                count += int(token.shape[-2])
    return count


def _patch_size(model: nn.Module) -> tuple[int, int] | None:
    for module in model.modules():
        value = getattr(module, "patch_size", None)
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return (value[0], value[1])
    return None


def _token_grid(count: int, size: tuple[int, int], patch: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (h, w) grid of ``count`` patch tokens for an input of ``size``: the patch grid when
    the patch size fits; else the one factorisation with a common stride (exact strides first)."""
    if count < 1:
        return None
    if patch is not None and (size[0] // patch[0]) * (size[1] // patch[1]) == count:
        return size[0] // patch[0], size[1] // patch[1]
    pairs = [(h, count // h) for h in range(1, count + 1) if count % h == 0 and _plausible_grid(h, count // h, size)]
    exact = [(h, w) for h, w in pairs if size[0] % h == 0 and size[1] % w == 0 and size[0] // h == size[1] // w]
    for group in (exact, pairs):
        if len(group) == 1:
            return group[0]
    return None


def _plausible_grid(h: int, w: int, size: tuple[int, int]) -> bool:
    """(h, w) is the grid of some stride ``s`` over ``size`` (``h`` in {floor, ceil}(H/s), same for w)."""
    if h > size[0] or w > size[1]:
        return False
    for s in range(1, max(size) + 1):
        if h in (size[0] // s, -(-size[0] // s)) and w in (size[1] // s, -(-size[1] // s)):
            return True
    return False


# ------------------------------------------------------------------------------ user reshape


def _custom_layout(raw: torch.Tensor, reshape: Reshape, layer_name: str) -> Layout:
    """``reshape`` applied to the entry numbers of one row tells which entry goes where."""
    if not callable(reshape):
        raise TypeError(f"reshape must be a callable (B, ...) -> (B, C, h, w), got {reshape!r}.")
    numbers = torch.arange(raw[:1].numel(), device=raw.device, dtype=torch.float64).view(raw[:1].shape)
    mapped = reshape(numbers)
    if not isinstance(mapped, torch.Tensor) or mapped.dim() != 4 or mapped.shape[0] != 1:
        got = tuple(mapped.shape) if isinstance(mapped, torch.Tensor) else type(mapped).__name__
        raise ValueError(f"reshape must return a (B, C, h, w) tensor; for a {tuple(raw[:1].shape)} input it returned {got}.")
    index = mapped.reshape(-1)
    valid = bool((index == index.round()).all()) and index.unique().numel() == index.numel()
    valid = valid and index.numel() > 0 and 0 <= float(index.min()) and float(index.max()) < numbers.numel()
    index = index.long()
    if not valid or not torch.equal(reshape(raw[:1].detach().float()).reshape(-1), raw[:1].detach().float().reshape(-1)[index]):
        raise ValueError(
            f"reshape for layer {layer_name!r} must only select and rearrange entries of the layer's output "
            "(slicing, reshape, permute, transpose), so that the maps can be put back for the layers after it; "
            "e.g. reshape=lambda t: t[:, 1:].reshape(t.shape[0], 14, 14, -1).permute(0, 3, 1, 2)."
        )
    return Layout("custom reshape", tuple(raw.shape[1:]), tuple(mapped.shape[1:]), index)


def _explain(layer_name: str, raw: torch.Tensor, input_size: tuple[int, int], why: str) -> str:
    return (
        f"Cannot turn the output of target layer {layer_name!r} (shape {tuple(raw.shape)}, for "
        f"{input_size[0]}x{input_size[1]} images) into (B, C, h, w) maps: {why}. Known layouts: "
        "(B, C, h, w); channels-last (B, h, w, C); tokens (B, N, C) or (B, C, N) with N = prefix tokens "
        "(class/distillation/register, read from timm's num_prefix_tokens or the token parameters) + h*w "
        "patch tokens. Pass reshape= (a callable like pytorch-grad-cam's reshape_transform), e.g. "
        "LiftCAM(model, layer, reshape=lambda t: t[:, 1:].reshape(t.shape[0], 14, 14, -1).permute(0, 3, 1, 2)), "
        "or choose another layer."
    )

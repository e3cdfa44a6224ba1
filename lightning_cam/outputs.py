"""Read class scores from whatever a model's ``forward`` returns.

Understood by default (in this order):

* a tensor ``(B, num_classes)``;
* a tuple or list: its first element (e.g. ``(logits, aux)``);
* a mapping with a ``"logits"`` key (``{"logits": ..., "features": ...}``);
* an object with a ``.logits`` attribute (Hugging Face's
  ``ImageClassifierOutput`` and every ``ModelOutput`` with logits).

Anything else needs ``output_transform=``: a callable ``output -> (B, C)``
tensor, e.g. ``lambda out: out["scores"]`` or ``partial(select_scores,
key="scores")``; from a Hydra config::

    output_transform:
      _target_: lightning_cam.outputs.select_scores
      _partial_: true
      key: scores
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["OutputTransform", "accumulation_dtype", "check_output_transform", "float_logits", "logits_of", "select_scores"]

OutputTransform = Callable[[Any], Tensor]

_HELP = (
    "Pass output_transform=<callable returning the (B, num_classes) scores>, "
    "e.g. output_transform=lambda out: out[\"scores\"], or from a Hydra config "
    "{_target_: lightning_cam.outputs.select_scores, _partial_: true, key: scores}"
)


def check_output_transform(transform: object, owner: str = "output_transform") -> OutputTransform | None:
    """``transform`` if it is None or callable; a clear TypeError otherwise."""
    if transform is None or callable(transform):
        return transform  # type: ignore[return-value]
    raise TypeError(
        f"{owner} must be None or a callable mapping the model's output to (B, num_classes) scores, "
        f"got {type(transform).__name__} ({transform!r}). Example: output_transform=lambda out: out[\"scores\"]; "
        "from Hydra: {_target_: lightning_cam.outputs.select_scores, _partial_: true, key: scores}."
    )


def select_scores(output: Any, key: Union[str, int]) -> Any:
    """``output[key]`` for a mapping, tuple or list, else ``getattr(output, key)``.

    Meant for ``output_transform=partial(select_scores, key=...)`` (or Hydra's ``_partial_``).
    """
    if isinstance(output, Mapping) or (isinstance(key, int) and isinstance(output, (tuple, list))):
        try:
            return output[key]
        except (KeyError, IndexError):
            available = list(output) if isinstance(output, Mapping) else f"indices 0..{len(output) - 1}"
            raise KeyError(f"select_scores: the model's output has no {key!r}; available: {available}") from None
    if isinstance(key, str) and hasattr(output, key):
        return getattr(output, key)
    raise KeyError(f"select_scores: cannot take {key!r} from a model output of type {type(output).__name__}")


def _default(out: object) -> object:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    if isinstance(out, Mapping):
        return out["logits"] if "logits" in out else out.get("out")
    return getattr(out, "logits", None)


def logits_of(out: object, output_transform: OutputTransform | None = None) -> Tensor:
    """The ``(B, num_classes)`` class scores in a model output (see the module docstring).

    The tensor keeps its dtype and autograd graph; callers cast to float32.
    """
    scores = output_transform(out) if output_transform is not None else _default(out)
    if isinstance(scores, Tensor) and scores.dim() in (1, 2, 4) and scores.is_floating_point():
        return scores
    got = _describe(out)
    if output_transform is not None:
        raise ValueError(
            f"output_transform returned {_describe(scores)} for a model output of {got}; it must return "
            "the class scores as a floating tensor of shape (B, num_classes)."
        )
    if isinstance(scores, Tensor):
        raise ValueError(
            f"The model must return class scores of shape (B, num_classes); it returned {got}. {_HELP}."
        )
    raise ValueError(
        f"Cannot find class scores in the model's output of type {type(out).__name__} ({got}). Understood: "
        "a (B, num_classes) tensor, a tuple/list (first element), a dict with 'logits', an object with "
        f"a .logits attribute. {_HELP}."
    )


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {list(value)[:10]}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)} items"
    return type(value).__name__


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision and float32 models, float64 for float64 models."""
    return torch.promote_types(dtype, torch.float32)


def float_logits(out: object, output_transform: OutputTransform | None = None) -> Tensor:
    """:func:`logits_of` in at least float32 (half-precision scores are accumulated in float32;
    a float64 model keeps float64)."""
    logits = logits_of(out, output_transform)
    return logits.to(accumulation_dtype(logits.dtype))

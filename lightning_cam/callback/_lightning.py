"""Which Lightning package the callback builds on.

The project depends on ``pytorch_lightning``; when only the unified
``lightning`` package is installed, ``lightning.pytorch`` is used instead.
Lightning checks ``isinstance(callback, Callback)`` against *its own*
``Callback`` class, so a ``CAMCallback`` built on ``pytorch_lightning`` is
refused by a ``lightning.pytorch.Trainer`` (and the other way round) when both
packages are installed: :func:`callback_base` picks the package, and
``lightning_cam.callback.for_package("lightning.pytorch")`` builds the class
for the other one.

Logger classes are recognised by name (``WandbLogger``, ``TensorBoardLogger``
...) along the MRO, so ``pytorch_lightning.loggers`` (which imports optional
logger back-ends) is never imported here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["PACKAGES", "is_logger", "lightning_package"]

PACKAGES = ("pytorch_lightning", "lightning.pytorch")


def lightning_package(name: str | None = None) -> ModuleType:
    """``pytorch_lightning`` (preferred) or ``lightning.pytorch``, or the package ``name``."""
    names = (name,) if name else PACKAGES
    errors = []
    for n in names:
        try:
            return importlib.import_module(n)
        except ImportError as err:
            errors.append(f"{n}: {err}")
    raise ImportError(
        "CAMCallback needs PyTorch Lightning: pip install pytorch-lightning (or lightning). " + "; ".join(errors)
    )


def is_logger(logger: Any, class_name: str) -> bool:
    """Whether ``logger`` is (a subclass of) Lightning's logger class ``class_name``, from either package."""
    return any(
        c.__name__ == class_name and c.__module__.split(".")[0] in ("pytorch_lightning", "lightning")
        for c in type(logger).__mro__
    )

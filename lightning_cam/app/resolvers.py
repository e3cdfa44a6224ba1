"""OmegaConf resolvers used by conf/ and the W&B credential check."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import OmegaConf

WANDB_MODES = ("online", "offline", "disabled", "shared")


def wandb_has_credentials() -> bool:
    """True when W&B can log online: ``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path(os.environ.get("HOME", str(Path.home()))) / ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def wandb_mode(mode: str | None = "auto") -> str:
    """Resolve a W&B mode. ``auto``: ``$WANDB_MODE`` if set, else online with credentials, else offline."""
    mode = "auto" if mode is None else str(mode).strip().lower()
    if mode == "dryrun":
        return "offline"
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return "offline" if env == "dryrun" else env
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return "online" if wandb_has_credentials() else "offline"


def register_resolvers() -> None:
    """Register ``${wandb_mode:...}`` and ``${timm_image_size:<timm name>}`` (idempotent)."""
    if not OmegaConf.has_resolver("wandb_mode"):
        OmegaConf.register_new_resolver("wandb_mode", wandb_mode)
    if not OmegaConf.has_resolver("timm_image_size"):
        from lightning_cam.models import timm_image_size

        OmegaConf.register_new_resolver("timm_image_size", timm_image_size)

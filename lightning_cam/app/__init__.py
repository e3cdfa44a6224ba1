"""The Hydra training app behind ``train.py``: config checks, instantiation, rich output.

Importing this package registers the OmegaConf resolvers the configs use
(``${wandb_mode:auto}``).
"""

from lightning_cam.app.resolvers import register_resolvers, wandb_has_credentials, wandb_mode
from lightning_cam.app.runner import (
    instantiate_callbacks,
    instantiate_cam_callback,
    instantiate_datamodule,
    instantiate_loggers,
    instantiate_model,
    instantiate_trainer,
    resolve_group,
    run,
)
from lightning_cam.app.validation import ConfigError, validate_config

register_resolvers()

__all__ = [
    "ConfigError",
    "instantiate_callbacks",
    "instantiate_cam_callback",
    "instantiate_datamodule",
    "instantiate_loggers",
    "instantiate_model",
    "instantiate_trainer",
    "register_resolvers",
    "resolve_group",
    "run",
    "validate_config",
    "wandb_has_credentials",
    "wandb_mode",
]

"""The body of ``train.py``: validate, instantiate, fit / validate, summarise, finish W&B."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from lightning_cam.app import rich_utils
from lightning_cam.app.validation import ConfigError, cam_enabled, validate_config

log = logging.getLogger(__name__)

# config keys that describe a node but are not constructor arguments
_META_KEYS = ("name", "enabled")


def _instantiate(node: DictConfig | dict, drop: tuple[str, ...] = _META_KEYS, **kwargs: Any) -> Any:
    cfg = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    for k in drop:
        cfg.pop(k, None)
    return hydra.utils.instantiate(cfg, **kwargs)


def instantiate_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return _instantiate(cfg.data)


def instantiate_model(cfg: DictConfig) -> pl.LightningModule:
    """The LitClassifier of ``cfg.model.module`` (its ``net`` built by ``build_model``)."""
    return _instantiate(cfg.model.module)


def instantiate_cam_callback(cfg: DictConfig) -> pl.Callback | None:
    if not cam_enabled(cfg):
        return None
    from lightning_cam.callback.summaries import CURVE_METRICS, parse_key

    node = OmegaConf.to_container(cfg.cam, resolve=True)
    key = parse_key(str(cfg.get("optimized_metric") or ""))
    if key is not None and key.metric in CURVE_METRICS and node.get("max_overhead") is not None:
        # a sweep optimising insertion/deletion needs them at every validation
        log.info("optimized_metric=%s: the CAM callback computes the curves at every validation "
                 "(cam.max_overhead=%s ignored)", cfg.optimized_metric, node["max_overhead"])
        node["max_overhead"] = None
    return _instantiate(node)


def instantiate_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """``cfg.callbacks`` (each entry with a ``_target_``) + the CAM callback."""
    out: list[pl.Callback] = []
    for _, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and node.get("_target_"):
            out.append(_instantiate(node, drop=()))
    cam = instantiate_cam_callback(cfg)
    if cam is not None:
        out.append(cam)
    return out


def instantiate_loggers(cfg: DictConfig) -> list[Any]:
    out = []
    for _, node in (cfg.get("logger") or {}).items():
        if isinstance(node, DictConfig) and node.get("_target_"):
            out.append(_instantiate(node, drop=()))
    return out


def instantiate_trainer(cfg: DictConfig, callbacks: list | None = None, loggers: list | None = None) -> pl.Trainer:
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    if node.get("sync_batchnorm") and str(node.get("accelerator", "")).lower() == "cpu":
        # SyncBatchNorm needs GPU modules; DDP on CPU (gloo) keeps per-process BN statistics
        log.info("trainer.sync_batchnorm disabled: it needs GPUs (accelerator=cpu)")
        node["sync_batchnorm"] = False
    return _instantiate(node, drop=(), callbacks=callbacks or [], logger=loggers or False)


def resolve_group(cfg: DictConfig) -> str | None:
    """W&B group: ``cfg.group``; else ``<task_name>-<sweep folder>`` in a multirun; else None."""
    group = cfg.get("group")
    if group:
        return str(group)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:
                return f"{cfg.get('task_name', 'train')}-{Path(hc.runtime.output_dir).parent.name}"
    except Exception:  # noqa: BLE001 - outside Hydra (tests, compose API)
        pass
    return None


def _ignore_warnings() -> None:
    for pattern in (
        r".*does not have many workers.*",
        r".*The number of training batches.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*sync_dist=True.*",
        r".*LeafSpec.*",
        r".*litlogger.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda rec: "litlogger" not in rec.getMessage()
    )


def _wandb_run_dir() -> str | None:
    try:
        import wandb

        if wandb.run is not None:
            return str(Path(wandb.run.dir).parent)
    except Exception:  # noqa: BLE001
        pass
    return None


def _finish_wandb(exit_code: int = 0) -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
    except Exception as err:  # noqa: BLE001
        log.warning("wandb.finish() failed: %s", err)


def _grid_dir(output_dir: Path, wandb_dir: str | None) -> str | None:
    if wandb_dir:
        media = Path(wandb_dir) / "files" / "media" / "images"
        if media.is_dir():
            return f"{media} (and in the W&B run's media panel)"
    pngs = sorted(output_dir.rglob("*.png"), key=lambda p: p.stat().st_mtime)
    return str(pngs[-1].parent) if pngs else None


def _scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    out = {}
    for k, v in trainer.callback_metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def run(cfg: DictConfig) -> float | None:
    """Validate ``cfg``, train (or evaluate) with the CAM callback, print the summary.

    Returns the value of ``cfg.optimized_metric`` (for Hydra sweepers) or None.
    Raises :class:`ConfigError` before anything heavy when the config cannot work.
    """
    validate_config(cfg)
    if cfg.get("extras", {}).get("enforce_tags") and not cfg.get("tags"):
        raise ConfigError("extras.enforce_tags is on but no tags were given: add tags=[my_tag]")
    if cfg.get("extras", {}).get("ignore_warnings"):
        _ignore_warnings()

    output_dir = Path(cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.group = resolve_group(cfg)
    if cfg.get("extras", {}).get("print_config") and rank_zero_only.rank == 0:
        rich_utils.print_config_tree(cfg, save_to=output_dir / "config_tree.log")

    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)

    datamodule = instantiate_datamodule(cfg)
    model = instantiate_model(cfg)
    callbacks = instantiate_callbacks(cfg)
    loggers = instantiate_loggers(cfg)
    trainer = instantiate_trainer(cfg, callbacks, loggers)

    hparams = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(hparams)

    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    exit_code = 1
    wandb_dir = None
    try:
        if cfg.get("train", True):
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        else:
            trainer.validate(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_scalar_metrics(trainer))
        if cfg.get("test"):
            ckpt = None
            cb = trainer.checkpoint_callback
            if cfg.get("train", True) and cb is not None and getattr(cb, "best_model_path", ""):
                ckpt = cb.best_model_path
            trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt)
            # test scores have keys of their own (test/..., cam_test/...): validation's are kept
            metrics.update({k: v for k, v in _scalar_metrics(trainer).items() if k.startswith(("test/", "cam_test/"))})
        exit_code = 0
    finally:
        seconds = time.perf_counter() - t0
        wandb_dir = _wandb_run_dir()
        if trainer.is_global_zero and exit_code == 0:
            metrics_file = output_dir / "metrics.json"
            metrics_file.write_text(json.dumps({"metrics": metrics, "seconds": seconds}, indent=2, sort_keys=True))
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
            locations = {
                "run dir": str(output_dir),
                "W&B run dir": wandb_dir,
                "W&B sync (offline run)": f"wandb sync {wandb_dir}" if wandb_dir and "offline-run" in wandb_dir else None,
                "heatmap grids": _grid_dir(output_dir, wandb_dir),
                "final metrics": str(metrics_file),
                "best checkpoint": best or None,
                "log file": str(output_dir / f"{cfg.get('task_name', 'train')}.log"),
            }
            methods = list(cfg.cam.methods) if cam_enabled(cfg) else []
            rich_utils.print_summary(metrics, methods, seconds, locations, cfg.get("optimized_metric"))
        _finish_wandb(exit_code)

    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(str(name))
    if value is None:
        log.warning("optimized_metric %r was not logged; available: %s", name, sorted(metrics))
        return float("nan")
    return float(value) if math.isfinite(value) else float("nan")


__all__ = [
    "ConfigError",
    "instantiate_callbacks",
    "instantiate_cam_callback",
    "instantiate_datamodule",
    "instantiate_loggers",
    "instantiate_model",
    "instantiate_trainer",
    "resolve_group",
    "run",
]

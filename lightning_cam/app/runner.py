"""The body of ``train.py``: validate, instantiate, fit / validate, summarise, finish W&B."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities import rank_zero_only

from lightning_cam.callback.cam_callback import CAMCallbackMixin
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
    """The LightningModule of ``cfg.model.module`` (LitClassifier, LitSegmenter or LitMultiLabel;
    its ``net`` built by ``build_model``)."""
    return _instantiate(cfg.model.module)


def instantiate_cam_callback(cfg: DictConfig) -> pl.Callback | None:
    if not cam_enabled(cfg):
        return None
    from lightning_cam.evaluation.keys import CURVE_METRICS, parse_key

    node = OmegaConf.to_container(cfg.cam, resolve=True)
    key = parse_key(str(cfg.get("optimized_metric") or ""))
    if key is not None and key.metric in CURVE_METRICS and node.get("max_overhead") is not None:
        # a sweep optimising insertion/deletion scores them on every held-out image, the same in every job
        log.info("optimized_metric=%s: the CAM callback scores the curves on every held-out image "
                 "(cam.max_overhead=%s ignored: every job of a sweep scores the same images)", cfg.optimized_metric, node["max_overhead"])
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


_WANDB_RUN_DIR = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-([A-Za-z0-9]+)$")


def wandb_run_id_of(ckpt_path: str | Path) -> str | None:
    """The W&B run id of the run that wrote ``ckpt_path``: the app keeps checkpoints in
    ``<run dir>/checkpoints/`` and W&B runs in ``<run dir>/wandb/[offline-]run-<date>_<time>-<id>``
    (the newest one); None when there is none."""
    run_dir = Path(ckpt_path).resolve().parent.parent
    found = [
        (d.stat().st_mtime, m.group(1))
        for d in (run_dir / "wandb").glob("*run-*")
        if d.is_dir() and (m := _WANDB_RUN_DIR.match(d.name))
    ]
    return max(found)[1] if found else None


def resume_wandb_run(cfg: DictConfig) -> None:
    """Training resumed from ``ckpt_path`` logs into the W&B run that wrote the checkpoint (same id,
    ``resume="allow"``), so one training stays one W&B run; says so, or why it cannot."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not cfg.get("train", True):
        return
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig) or "WandbLogger" not in str(node.get("_target_", "")) or node.get("id"):
            continue
        run_id = wandb_run_id_of(ckpt)
        if run_id is None:
            log.warning("ckpt_path=%s: no W&B run next to it (<run dir>/wandb/*run-*); a new W&B run is opened. "
                        "To continue a run, pass its id: logger.wandb.id=<id>", ckpt)
            return
        with open_dict(node):
            node.id, node.resume = run_id, "allow"
        log.info("Resuming W&B run %s (the run that wrote %s)", run_id, ckpt)


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
    if "enable_model_summary" not in node and any(isinstance(c, ModelSummary) for c in callbacks or []):
        # the configured summary callback runs anyway; this only skips Lightning's default one
        # and its "Trainer already configured with model summary callbacks" notice
        node["enable_model_summary"] = False
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
    """``extras.ignore_warnings``: Lightning's advice that does not apply to small CPU runs."""
    for pattern in (
        r".*does not have many workers.*",
        r".*The number of training batches.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*sync_dist=True.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _no_litlogger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def _quiet_library_notices() -> None:
    """Notices that are not warnings about this run, silenced one by one at their source.

    * Lightning's advertisement for ``litlogger`` (an INFO record of its rank-zero logger, no flag);
    * Lightning's own use of torch's deprecated ``LeafSpec`` (pytorch_lightning/utilities/_pytree.py),
      matched by message AND module so that the same deprecation elsewhere still shows.
    """
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _no_litlogger_tip not in rank_zero.filters:  # once per process (multiruns call run() per job)
        rank_zero.addFilter(_no_litlogger_tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*",
                            module=r"pytorch_lightning\.utilities\._pytree")


# W&B locations that default to the user's home (cache, artifact staging) or the working
# directory (downloaded artifacts); a run keeps them in its own directory unless the user set them.
WANDB_DIR_VARS = {"WANDB_DIR": "", "WANDB_CACHE_DIR": "wandb/cache", "WANDB_DATA_DIR": "wandb/data",
                  "WANDB_ARTIFACT_DIR": "wandb/artifacts"}
_USER_WANDB_VARS = frozenset(k for k in WANDB_DIR_VARS if os.environ.get(k))


def keep_wandb_in(output_dir: Path) -> dict[str, str]:
    """Point W&B's directories into ``output_dir`` (those the user did not set); returns what was set."""
    out = {}
    for var, sub in WANDB_DIR_VARS.items():
        if var in _USER_WANDB_VARS:
            continue
        path = output_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = out[var] = str(path)
    return out


def route_logs_to_hydra() -> None:
    """Let Lightning's log records reach Hydra's handlers (console + ``<run dir>/<task_name>.log``).

    Lightning gives its loggers their own console handler and ``propagate=False`` when it is
    imported before logging is configured, which is the case under ``train.py``: its records
    never reach Hydra's job log file. Warnings go to the log file too (``logging.captureWarnings``).
    """
    if not logging.getLogger().handlers:  # not under Hydra: leave Lightning's own set-up alone
        return
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        lg.propagate = True
    logging.captureWarnings(True)


def remove_run_dir_of_failed_config(output_dir: Path, task_name: str, stop_at: Path | None = None) -> bool:
    """Delete a run directory that holds nothing but what Hydra wrote before the config failed
    (``.hydra/``, the job log, the config tree), and the folders above it that became empty."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return False
    hydra_only = {".hydra", f"{task_name}.log", "config_tree.log"}
    if any(p.name not in hydra_only for p in output_dir.iterdir()):
        return False
    shutil.rmtree(output_dir, ignore_errors=True)
    stop = Path(stop_at).resolve() if stop_at else Path.cwd().resolve()
    parent = output_dir.resolve().parent
    while parent != stop and stop in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


def log_error_to_job_file(title: str, message: str) -> None:
    """Write an error the console shows in a box into the job log file (``<run dir>/<task_name>.log``) too."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, f"{title}: {message}", None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


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


def _mlflow_run(loggers: list[Any]) -> str | None:
    """Where an ``MLFlowLogger``'s run is and how to look at it (its artifacts hold the CAM pictures)."""
    from lightning_cam.callback._lightning import is_logger

    for lg in loggers:
        if is_logger(lg, "MLFlowLogger"):
            uri = getattr(lg, "_tracking_uri", None) or "the default tracking URI"
            name = getattr(lg, "_experiment_name", None) or lg.name
            return f"run {lg.run_id} of experiment {name!r}, grids and CSV in its artifacts cam/ (mlflow ui --backend-store-uri {uri})"
    return None


def _sel_image_size(cfg: DictConfig) -> int | None:
    size = OmegaConf.select(cfg, "data.image_size", default=None) or OmegaConf.select(cfg, "model.image_size", default=None)
    return int(size) if size else None


def _log_file(output_dir: Path, cfg: DictConfig) -> str | None:
    """The job log file, when Hydra's job logging wrote one that is not empty."""
    path = output_dir / f"{cfg.get('task_name', 'train')}.log"
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.flush()
    return str(path) if path.is_file() and path.stat().st_size > 0 else None


def _scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """``trainer.callback_metrics`` as floats, the CAM keys from one evaluation only: Lightning keeps
    a key's last value, so a key that a later evaluation did not log (its images were all
    non-finite, it failed) would pair an older epoch with newer ones. The keys of the stage prefix
    of each CAM callback's last evaluation are replaced by that evaluation's, and
    ``<prefix>/epoch`` says which epoch it was."""
    out = {}
    for k, v in trainer.callback_metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    cams = [cb for cb in trainer.callbacks if isinstance(cb, CAMCallbackMixin) and cb.last_scalars]
    for prefix in {k.split("/", 1)[0] for cb in cams for k in cb.last_scalars}:
        out = {k: v for k, v in out.items() if not k.startswith(prefix + "/")}
        for cb in cams:
            last = {k: v for k, v in cb.last_scalars.items() if k.startswith(prefix + "/")}
            if last:
                out.update(last)
                out[f"{prefix}/epoch"] = float(cb.last_epoch)
    return out


def run(cfg: DictConfig) -> float | None:
    """Validate ``cfg``, train (or evaluate) with the CAM callback, print the summary.

    ``trainer.validate`` / ``trainer.test`` run with ``verbose=False``: the summary prints their
    scores (Lightning's own table would cut the ``cam_test/...`` keys).

    Returns the value of ``cfg.optimized_metric`` (for Hydra sweepers) or None.
    Raises :class:`ConfigError` before anything heavy when the config cannot work, and
    :class:`~lightning_cam.data.DatasetUnavailableError` (from the datamodule's ``prepare_data``,
    called first on rank zero) before the config tree, the loggers and the W&B run.
    """
    validate_config(cfg)
    if cfg.get("extras", {}).get("enforce_tags") and not cfg.get("tags"):
        raise ConfigError("extras.enforce_tags is on but no tags were given: add tags=[my_tag]")
    route_logs_to_hydra()
    _quiet_library_notices()
    if cfg.get("extras", {}).get("ignore_warnings"):
        _ignore_warnings()

    datamodule = instantiate_datamodule(cfg)
    if rank_zero_only.rank == 0:  # a missing dataset fails here, before the W&B run and the config tree
        datamodule.prepare_data()

    output_dir = Path(cfg.paths.output_dir)
    if any("WandbLogger" in str(node.get("_target_", "")) for node in (cfg.get("logger") or {}).values()
           if isinstance(node, DictConfig)):
        keep_wandb_in(output_dir)
    log.info("Run directory: %s", output_dir)
    with open_dict(cfg):
        cfg.group = resolve_group(cfg)
    if cfg.get("extras", {}).get("print_config") and rank_zero_only.rank == 0:
        rich_utils.print_config_tree(cfg, save_to=output_dir / "config_tree.log")

    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)

    model = instantiate_model(cfg)
    size = _sel_image_size(cfg)
    if size and getattr(model, "example_input_array", None) is None:
        # lets Lightning's model summary compute FLOPs and sizes instead of printing "Total FLOPs: 0"
        model.example_input_array = torch.zeros(1, 3, size, size)
    callbacks = instantiate_callbacks(cfg)
    resume_wandb_run(cfg)
    loggers = instantiate_loggers(cfg)
    for lg in loggers:  # WandbLogger always passes the deprecated anonymous=None, which W&B warns about
        init = getattr(lg, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous", "unset") is None:
            init.pop("anonymous")
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
            trainer.validate(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), verbose=False)
        metrics.update(_scalar_metrics(trainer))
        if cfg.get("test"):
            ckpt = None
            cb = trainer.checkpoint_callback
            if cfg.get("train", True) and cb is not None and getattr(cb, "best_model_path", ""):
                ckpt = cb.best_model_path
            trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
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
                "MLflow run": _mlflow_run(loggers),
                "heatmap grids": _grid_dir(output_dir, wandb_dir),
                "final metrics": str(metrics_file),
                "best checkpoint": best or None,
                "log file": _log_file(output_dir, cfg),
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
    "keep_wandb_in",
    "log_error_to_job_file",
    "remove_run_dir_of_failed_config",
    "route_logs_to_hydra",
    "instantiate_callbacks",
    "instantiate_cam_callback",
    "instantiate_datamodule",
    "instantiate_loggers",
    "instantiate_model",
    "instantiate_trainer",
    "resolve_group",
    "run",
]

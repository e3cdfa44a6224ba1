"""``CAMCallback``: explain a fixed held-out set at validation epoch ends and log it.

Add it to any ``Trainer``::

    from lightning_cam import CAMCallback
    trainer = Trainer(logger=WandbLogger(project="demo"), callbacks=[
        CAMCallback(target_layer="layer4", methods=["liftcam", "gradcam", "scorecam"])])

Each time it runs (every ``every_n_epochs`` validation epochs during ``fit``,
and on every ``trainer.validate`` / ``trainer.test``; never in the sanity
check) it

1. picks, once, a fixed seeded held-out set (``num_samples`` images indexed
   directly from the validation dataset, or the ``images`` you pass),
2. explains this rank's share of it with every method from one shared forward
   pass (:func:`lightning_cam.explain_all`) on the LightningModule itself,
3. scores the maps (insertion / deletion AUC, Average Drop, Increase in
   Confidence, pointing game when masks exist, LIFT-CAM's completeness
   residual, optional agreement with ShapCAM's coefficients),
4. gathers the per-image results from all ranks (so the numbers equal a
   single-process run), logs the means with ``pl_module.log`` (every logger,
   ``ModelCheckpoint(monitor="cam/liftcam/insertion")``, sweepers) and, on rank
   zero, images: W&B grids, a table and curve charts, or PNG files for other
   loggers.

It never disturbs training: RNG states (torch CPU/CUDA, numpy, python) are
restored, no dataloader is iterated, module modes / grads / BN statistics /
hooks / autocast are handled by the engine, and errors are reported with
their traceback while training goes on (``on_error="warn"``).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # the project targets pytorch_lightning; support the unified package too
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl  # type: ignore[no-redef]
    from lightning.pytorch.callbacks import Callback  # type: ignore[no-redef]

from lightning_cam import heldout as _heldout
from lightning_cam import viz

__all__ = ["CAMCallback", "METRIC_KEYS"]

log = logging.getLogger(__name__)

#: Per-method scalar keys logged as ``cam/<method>/<key>``.
METRIC_KEYS = (
    "insertion",
    "deletion",
    "average_drop",
    "increase_in_confidence",
    "pointing_game",
    "energy_pointing_game",
    "seconds",
    "shap_pearson",
    "shap_spearman",
)
ON_ERROR = ("warn", "raise")
DEFAULT_N_STEPS = 16  # 17 points per curve unless step / n_steps are given


def _method_names() -> list[str]:
    from lightning_cam.methods import METHODS

    return list(METHODS.keys()) if isinstance(METHODS, dict) else list(METHODS)


def _canonical(name: Any) -> str | None:
    """Registry name of ``name`` (aliases such as ``"gradcampp"`` accepted), None if unknown."""
    from lightning_cam.methods import get_method

    try:
        return get_method(name).name
    except (TypeError, ValueError):
        return None


def _logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning gives to epoch-end ``self.log`` values (so media line up with scalars)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except Exception:  # private attribute: fall back to the public counter
        return int(trainer.global_step)


def _as_floats(name: str, value: Any) -> tuple[float, ...] | None:
    """``mean`` / ``std`` as a tuple of floats (accepts numbers, sequences, tensors, OmegaConf lists)."""
    if value is None:
        return None
    try:
        vals = (
            tuple(float(v) for v in value.flatten().tolist())
            if isinstance(value, Tensor)
            else (float(value),)
            if isinstance(value, (int, float))
            else tuple(float(v) for v in value)
        )
    except (TypeError, ValueError):
        raise ValueError(f"CAMCallback: {name} must be a number or a sequence of numbers, got {value!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"CAMCallback: {name} must be finite numbers, got {value!r}")
    return vals


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"CAMCallback: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of (B, K) tensors (NaN where a row is constant)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    out = (a * b).sum(1) / den
    return torch.where(den > 0, out, torch.full_like(out, float("nan"))).float()


def _ranks(x: Tensor) -> Tensor:
    """Average ranks along dim 1 (ties share their mean rank), as Spearman needs."""
    x = x.double()
    order = x.argsort(dim=1, stable=True)
    ranks = torch.empty_like(x)
    ranks.scatter_(1, order, torch.arange(x.shape[1], dtype=x.dtype, device=x.device).expand_as(x).contiguous())
    # average the ranks of ties
    out = torch.empty_like(ranks)
    for i in range(x.shape[0]):
        _, inverse = torch.unique(x[i], return_inverse=True)
        sums = torch.zeros(int(inverse.max()) + 1, dtype=x.dtype, device=x.device).index_add_(0, inverse, ranks[i])
        counts = torch.bincount(inverse).to(x.dtype)
        out[i] = (sums / counts)[inverse]
    return out


def _spearman(a: Tensor, b: Tensor) -> Tensor:
    return _pearson(_ranks(a), _ranks(b))


class CAMCallback(Callback):
    """Explain a fixed held-out set with CAM methods at validation epoch ends.

    Args:
        target_layer: layer to explain (dotted name, unique suffix such as
            ``"layer4"`` for ``net.layer4``, or the module); ``None`` = the
            engine's default for the architecture.
        methods: registry names (``liftcam``, ``cam``, ``gradcam``,
            ``gradcam++``, ``xgradcam``, ``hirescam``, ``layercam``,
            ``scorecam``, ``ablationcam``, ``shap``).
        num_samples: size of the held-out set.
        every_n_epochs: run on validation epochs ``E`` with ``(E + 1) % n == 0``.
        images, labels, masks: explicit held-out tensors ``(N, C, H, W)``,
            ``(N,)``, ``(N, H, W)`` (a seeded subset of ``num_samples`` is used
            when ``N`` is larger). Default: drawn from the validation dataset.
        seed: seed of the held-out selection (and of any sampling inside).
        step, n_steps: insertion/deletion granularity (pixels per step, or
            number of steps); default ``n_steps=16`` (17 points per curve).
        metric_batch_size: forward batch size of the metrics.
        shap_samples: number of held-out images on which each method's channel
            weights are compared with ShapCAM's (Pearson / Spearman); 0 = off.
        log_images: log grids / tables / charts (W&B) or PNG files (others).
        max_images: images per grid.
        mean, std: the input normalisation, undone for display; default: the
            datamodule's ``mean`` / ``std`` attributes, else per-image min-max.
        colormap: a matplotlib colormap (perceptual ``inferno`` by default).
        on_error: ``"warn"`` (log the traceback, keep training) or ``"raise"``.
        explain_batch_size: images per explanation batch.
        alpha: overlay opacity of the colour map.
        log_table, log_curves: W&B table / insertion-deletion charts.
        save_png: write grids as PNG files under ``<log_dir>/cam/``; ``None``
            = only when no ``WandbLogger`` is attached.
        table_image_size: longest side of the images in the W&B table.
        class_names: names for the table's label / prediction columns;
            default: the datamodule's or dataset's ``classes``.
        method_kwargs: constructor options per method, passed to
            :func:`~lightning_cam.explain_all`, e.g. ``{"scorecam": {"batch_size": 64}}``.
    """

    def __init__(
        self,
        target_layer: str | nn.Module | None = None,
        methods: Sequence[str] | str = ("liftcam",),
        num_samples: int = 32,
        every_n_epochs: int = 1,
        images: Tensor | None = None,
        labels: Tensor | Sequence[int] | None = None,
        masks: Tensor | None = None,
        seed: int = 0,
        step: int | None = None,
        n_steps: int | None = None,
        metric_batch_size: int = 256,
        shap_samples: int = 0,
        log_images: bool = True,
        max_images: int = 16,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        colormap: str = "inferno",
        on_error: str = "warn",
        *,
        explain_batch_size: int = 64,
        alpha: float = 0.5,
        log_table: bool = True,
        log_curves: bool = True,
        save_png: bool | None = None,
        table_image_size: int = 128,
        class_names: Sequence[str] | None = None,
        method_kwargs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        # --- validate everything early, with messages that say what is allowed
        if isinstance(methods, str):
            methods = [methods]
        methods = list(methods)
        if not methods:
            raise ValueError("CAMCallback: methods is empty; pass at least one, e.g. methods=['liftcam']")
        allowed = _method_names()
        unknown = [m for m in methods if _canonical(m) is None]
        if unknown:
            raise ValueError(f"CAMCallback: unknown method(s) {unknown}; allowed: {allowed}")
        methods = [_canonical(m) for m in methods]
        if len(set(methods)) != len(methods):
            raise ValueError(f"CAMCallback: duplicate methods in {methods}")
        if on_error not in ON_ERROR:
            raise ValueError(f"CAMCallback: on_error must be one of {ON_ERROR}, got {on_error!r}")
        if isinstance(target_layer, Sequence) and not isinstance(target_layer, str):
            target_layer = list(target_layer)  # several layers: their maps are fused (explain_all)
        if target_layer is not None and not isinstance(target_layer, (str, nn.Module, list)):
            raise TypeError(
                f"CAMCallback: target_layer must be None, a dotted name, an nn.Module or a list of them "
                f"(e.g. ['layer3', 'layer4']), got {target_layer!r}"
            )
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.every_n_epochs = _check_int("every_n_epochs", every_n_epochs, 1)
        self.seed = _check_int("seed", seed, 0)
        if step is not None and n_steps is not None:
            raise ValueError("CAMCallback: give step or n_steps, not both")
        self.step = None if step is None else _check_int("step", step, 1)
        self.n_steps = None if n_steps is None else _check_int("n_steps", n_steps, 1)
        self.metric_batch_size = _check_int("metric_batch_size", metric_batch_size, 1)
        self.explain_batch_size = _check_int("explain_batch_size", explain_batch_size, 1)
        self.shap_samples = _check_int("shap_samples", shap_samples, 0)
        self.max_images = _check_int("max_images", max_images, 1)
        self.table_image_size = _check_int("table_image_size", table_image_size, 8)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"CAMCallback: alpha must be in [0, 1], got {alpha!r}")
        viz.colormap_lut(colormap)  # raises ValueError listing examples
        mean, std = _as_floats("mean", mean), _as_floats("std", std)
        if std is not None and min(std) <= 0:
            raise ValueError(f"CAMCallback: std must be > 0, got {std!r}")
        if images is None and (labels is not None or masks is not None):
            raise ValueError("CAMCallback: labels/masks were given without images")
        if images is not None:
            imgs = images if isinstance(images, Tensor) else torch.stack(list(images))
            if imgs.dim() not in (3, 4) or imgs.shape[0] == 0:
                raise ValueError(f"CAMCallback: images must be (N, C, H, W), got shape {tuple(imgs.shape)}")
            if labels is not None and len(labels) != imgs.shape[0]:
                raise ValueError(f"CAMCallback: {len(labels)} labels for {imgs.shape[0]} images")
            if masks is not None:
                if len(masks) != imgs.shape[0]:
                    raise ValueError(f"CAMCallback: {len(masks)} masks for {imgs.shape[0]} images")
                if tuple(masks[0].shape[-2:]) != tuple(imgs.shape[-2:]):
                    raise ValueError(
                        f"CAMCallback: masks are {tuple(masks[0].shape[-2:])} but images are {tuple(imgs.shape[-2:])}"
                    )
            images = imgs

        self.target_layer = target_layer
        self.methods = methods
        self.images, self.labels, self.masks = images, labels, masks
        self.log_images = bool(log_images)
        self.mean, self.std = mean, std
        self.colormap = colormap
        self.on_error = on_error
        self.alpha = float(alpha)
        self.log_table, self.log_curves = bool(log_table), bool(log_curves)
        self.save_png = save_png
        self.class_names = None if class_names is None else list(class_names)
        self.method_kwargs = {(_canonical(k) or k): dict(v) for k, v in (method_kwargs or {}).items()}

        self._held: _heldout.HeldOut | None = None
        self._restored: dict[str, Any] | None = None
        self._layer_name: str | None = None
        #: per-image results of the last run (global order, CPU tensors), and its scalars
        self.last_results: dict[str, Tensor] | None = None
        self.last_scalars: dict[str, float] = {}
        #: number of failed runs (errors reported with on_error="warn")
        self.num_errors = 0

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Configuration errors surface at once, whatever on_error says.
        from lightning_cam.layers import default_target_layer, resolve_layer

        layer = self.target_layer if self.target_layer is not None else default_target_layer(pl_module)
        if isinstance(layer, list):  # several layers, fused by explain_all
            self._layer_name = [resolve_layer(pl_module, one)[0] for one in layer]
        else:
            self._layer_name, _ = resolve_layer(pl_module, layer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self._run(trainer, pl_module, "val" if fitting else "validate")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "test")

    def state_dict(self) -> dict[str, Any]:
        held = self._held
        if held is None:
            return dict(self._restored or {})
        state: dict[str, Any] = {
            "version": 1,
            "source": held.source,
            "indices": held.indices,
            "dataset_len": held.dataset_len,
            "seed": self.seed,
            "num_samples": self.num_samples,
        }
        if held.source == "loader":  # no indices to re-read: keep the tensors
            state.update(images=held.images, labels=held.labels, masks=held.masks)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None
        self._held = None

    @property
    def heldout(self) -> _heldout.HeldOut | None:
        """The held-out set (None until the first run)."""
        return self._held

    # ------------------------------------------------------------ the work
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        start = time.perf_counter()
        rank, world = trainer.global_rank, trainer.world_size
        device = pl_module.device
        local: dict[str, Tensor] | None = None
        error: str | None = None
        exc: BaseException | None = None
        try:
            with _heldout.preserved_rng(self.seed, devices=[device]), torch.inference_mode(False):
                held = self._ensure_heldout(trainer, stage)
                local = self._compute_local(pl_module, held, rank, world)
        except Exception as e:  # reported below, after every rank agrees
            error, exc = traceback.format_exc(), e

        # Every rank takes part in this collective, failed or not: a failure on
        # one rank must not leave the others waiting in all_gather.
        failed = self._any_failed(trainer, pl_module, local is None, world)
        if failed:
            self._report(trainer, stage, error or "another rank failed (see its log)", exc)
            return
        try:
            with torch.inference_mode(False):
                results = self._gather(pl_module, local, world, len(self._held))
                scalars = self._summarise(results)
        except Exception as e:
            self._report(trainer, stage, traceback.format_exc(), e)
            return
        self.last_results = {k: v.detach().cpu() for k, v in results.items()}
        # identical on every rank (computed from the gathered results): no sync
        for key, value in scalars.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)

        media = self.log_images and not trainer.fast_dev_run
        wandb_loggers, tb_loggers = self._loggers(trainer)
        save_png = self.save_png if self.save_png is not None else not wandb_loggers
        log_dir = None
        if media and save_png:
            try:  # trainer.log_dir broadcasts: every rank must call it
                log_dir = trainer.log_dir or trainer.default_root_dir
            except Exception:
                log_dir = trainer.default_root_dir
        if media and trainer.is_global_zero:
            try:
                self._log_media(trainer, stage, results, scalars, wandb_loggers, tb_loggers, log_dir)
            except Exception as e:
                self._report(trainer, stage, traceback.format_exc(), e, during="logging media")
        seconds = time.perf_counter() - start
        self.last_scalars = dict(scalars, **{"cam/callback_seconds": seconds})
        pl_module.log("cam/callback_seconds", seconds, on_step=False, on_epoch=True, sync_dist=False)

    def _any_failed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, failed: bool, world: int) -> bool:
        if world <= 1:
            return failed
        flag = torch.tensor([1.0 if failed else 0.0], device=pl_module.device)
        total = trainer.strategy.reduce(flag, reduce_op="sum")
        return bool(total.item() > 0)

    def _report(
        self,
        trainer: pl.Trainer,
        stage: str,
        error: str,
        exc: BaseException | None,
        during: str = "explaining the held-out set",
    ) -> None:
        self.num_errors += 1
        msg = (
            f"CAMCallback failed while {during} (stage {stage}, epoch {trainer.current_epoch}, "
            f"global step {trainer.global_step}, rank {trainer.global_rank})"
        )
        if self.on_error == "raise":
            if exc is not None:
                raise RuntimeError(f"{msg}: {exc}") from exc
            raise RuntimeError(f"{msg}: {error}")
        full = f"{msg}; training continues (on_error='warn'):\n{error}"
        log.error(full)
        warnings.warn(full, RuntimeWarning, stacklevel=2)

    # ----------------------------------------------------------- held-out set
    def _ensure_heldout(self, trainer: pl.Trainer, stage: str) -> _heldout.HeldOut:
        if self._held is not None:
            return self._held
        restored = self._restored or {}
        if self.images is not None:
            held = _heldout.from_user(self.images, self.labels, self.masks, self.num_samples, self.seed)
        else:
            order = ("test_dataloaders", "val_dataloaders") if stage == "test" else ("val_dataloaders", "test_dataloaders")
            loader = dataset = None
            for attr in order:
                try:
                    loader, dataset = _heldout.dataset_of(getattr(trainer, attr, None))
                except Exception:
                    loader, dataset = None, None
                if loader is not None:
                    break
            if loader is None:
                raise RuntimeError(
                    "CAMCallback found no images to explain: give the Trainer validation data "
                    "(val_dataloaders / a datamodule with val_dataloader) or pass images=... to CAMCallback"
                )
            if _heldout.is_map_style(dataset):
                n = len(dataset)
                indices = restored.get("indices") if restored.get("source") == "dataset" else None
                if indices is not None and (not indices or max(indices) >= n):
                    warnings.warn(
                        f"CAMCallback: the restored held-out indices do not fit the dataset of size {n}; "
                        "choosing a new held-out set",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    indices = None
                if indices is None:
                    indices = _heldout.select_indices(n, self.num_samples, self.seed)
                held = _heldout.gather_from_dataset(dataset, indices, self.seed)
            elif restored.get("source") == "loader" and restored.get("images") is not None:
                held = _heldout.HeldOut(
                    restored["images"], restored.get("labels"), restored.get("masks"), None, "loader", None
                )
            else:
                held = _heldout.gather_from_loader(loader, self.num_samples, self.seed)
                # an iterable dataset may be sharded per rank: take rank zero's images everywhere
                if trainer.world_size > 1:
                    held = trainer.strategy.broadcast(held, src=0)
        if self.class_names is None:
            dm = getattr(trainer, "datamodule", None)
            names = getattr(dm, "classes", None)
            if names is None and self.images is None:
                _, ds = _heldout.dataset_of(getattr(trainer, "val_dataloaders", None))
                names = getattr(ds, "classes", None)
            if isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names):
                self.class_names = list(names)
        if self.mean is None and self.std is None:
            dm = getattr(trainer, "datamodule", None)
            self._display_stats = (getattr(dm, "mean", None), getattr(dm, "std", None))
        else:
            self._display_stats = (self.mean, self.std)
        self._held = held
        return held

    # ------------------------------------------------------ local computation
    def _steps(self, hw: int) -> dict[str, int]:
        if self.step is not None:
            return {"step": self.step}
        return {"n_steps": min(self.n_steps or DEFAULT_N_STEPS, hw)}

    def _compute_local(
        self, pl_module: pl.LightningModule, held: _heldout.HeldOut, rank: int, world: int
    ) -> dict[str, Tensor]:
        """Explain and score images ``rank::world`` of the held-out set.

        Returns per-image tensors padded to ``ceil(N / world)`` rows, plus
        per-rank ``seconds/<method>`` and ``count`` tensors of shape (1,).
        """
        from lightning_cam.methods import explain_all
        from lightning_cam.metrics import confidence_change, insertion_deletion, pointing_game

        if self._layer_name is None:  # setup() not called (e.g. manual use)
            self.setup(pl_module.trainer, pl_module, "fit")
        n = len(held)
        idx = list(range(rank, n, world))
        count = len(idx)
        m_pad = max(1, math.ceil(n / world))
        if not idx:  # more ranks than images: compute a dummy row, marked invalid
            idx = [0]
        device = pl_module.device
        h, w = held.images.shape[-2:]
        steps = self._steps(h * w)
        per: dict[str, list[Tensor]] = defaultdict(list)
        seconds: dict[str, float] = defaultdict(float)
        for s in range(0, len(idx), self.explain_batch_size):
            rows = torch.tensor(idx[s : s + self.explain_batch_size])
            xb = held.images[rows].to(device)
            exps = explain_all(
                pl_module, self._layer_name, xb, methods=self.methods, method_kwargs=self.method_kwargs
            )
            first = exps[self.methods[0]]
            targets = first.targets
            probs = torch.softmax(first.logits.float(), dim=1)
            per["index"].append(rows.to(device))
            per["prediction"].append(targets)
            per["confidence"].append(probs.gather(1, targets[:, None])[:, 0])
            mb = None if held.masks is None else held.masks[rows].to(device)

            shap_weights = None
            shap_rows = rows < self.shap_samples
            if self.shap_samples and bool(shap_rows.any()):
                if "shap" in exps:
                    shap_weights = exps["shap"].weights
                else:
                    sel = shap_rows.to(device)
                    ws = explain_all(
                        pl_module, self._layer_name, xb[sel], methods=["shap"], targets=targets[sel],
                        method_kwargs=self.method_kwargs,
                    )["shap"].weights
                    shap_weights = torch.zeros((xb.shape[0], ws.shape[1]), device=device, dtype=ws.dtype)
                    shap_weights[sel] = ws

            for m in self.methods:
                e = exps[m]
                seconds[m] += float(e.seconds)
                sal = e.saliency((h, w))
                per[f"{m}/saliency"].append(sal)
                r = insertion_deletion(
                    pl_module, xb, sal, targets=targets, batch_size=self.metric_batch_size, **steps
                )
                per[f"{m}/insertion"].append(r.insertion)
                per[f"{m}/deletion"].append(r.deletion)
                per[f"{m}/insertion_curve"].append(r.insertion_curve)
                per[f"{m}/deletion_curve"].append(r.deletion_curve)
                per[f"{m}/fractions"] = [r.fractions[None]]
                c = confidence_change(pl_module, xb, sal, targets=targets, batch_size=self.metric_batch_size)
                per[f"{m}/drop"].append(c.drop)
                per[f"{m}/increase"].append(c.increase.float())
                if mb is not None:
                    p = pointing_game(sal, mb)
                    per[f"{m}/hit"].append(p.hits.float())
                    per[f"{m}/energy"].append(p.energy.float())
                    per[f"{m}/mask_valid"].append(p.valid.float())
                if e.delta is not None:
                    per[f"{m}/delta"].append(e.delta.float())
                if shap_weights is not None and e.weights is not None and m != "shap":
                    nan = torch.full((xb.shape[0],), float("nan"), device=device)
                    sel = shap_rows.to(device)
                    ws, wm = shap_weights.float(), e.weights.float()
                    if ws.shape == wm.shape:
                        per[f"{m}/shap_pearson"].append(torch.where(sel, _pearson(wm, ws), nan))
                        per[f"{m}/shap_spearman"].append(torch.where(sel, _spearman(wm, ws), nan))
                elif self.shap_samples and e.weights is not None and m != "shap":
                    nan = torch.full((xb.shape[0],), float("nan"), device=device)
                    per[f"{m}/shap_pearson"].append(nan)
                    per[f"{m}/shap_spearman"].append(nan)

        out: dict[str, Tensor] = {}
        for key, chunks in per.items():
            t = torch.cat(chunks).to(device)
            if key.endswith("/fractions"):
                out[key] = t  # (1, T), identical everywhere
                continue
            if t.dtype == torch.bool:
                t = t.float()
            if t.shape[0] < m_pad:
                pad = torch.zeros((m_pad - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=device)
                t = torch.cat([t, pad])
            out[key] = t
        out["count"] = torch.tensor([float(count)], device=device)
        for m in self.methods:
            out[f"{m}/seconds"] = torch.tensor([seconds[m] if count else 0.0], device=device)
        return out

    # ------------------------------------------------------------- gathering
    def _gather(self, pl_module: pl.LightningModule, local: dict[str, Tensor], world: int, n: int) -> dict[str, Tensor]:
        """All ranks' results in global held-out order (rank r held rows r, r+W, ...)."""
        if world <= 1:
            res = {}
            for k, v in local.items():
                if k.endswith("/fractions"):
                    res[k] = v[0]
                elif k == "count" or k.endswith("/seconds"):
                    res[k] = v
                else:
                    res[k] = v[:n]
            return res
        keys = sorted(local)  # identical order on every rank
        gathered = pl_module.all_gather({k: local[k].contiguous() for k in keys})
        res = {}
        for k in keys:
            g = gathered[k]  # (W, m_pad, ...) or (W, 1)
            if k.endswith("/fractions"):
                res[k] = g[0, 0]
            elif k == "count" or k.endswith("/seconds"):
                res[k] = g.reshape(-1)
            else:
                res[k] = g.transpose(0, 1).reshape(-1, *g.shape[2:])[:n]
        return res

    def _summarise(self, results: dict[str, Tensor]) -> dict[str, float]:
        scalars: dict[str, float] = {}
        total = float(results["count"].sum())
        for m in self.methods:
            pre = f"cam/{m}/"
            scalars[pre + "insertion"] = float(results[f"{m}/insertion"].double().mean())
            scalars[pre + "deletion"] = float(results[f"{m}/deletion"].double().mean())
            scalars[pre + "average_drop"] = float(results[f"{m}/drop"].double().mean()) * 100.0
            scalars[pre + "increase_in_confidence"] = float(results[f"{m}/increase"].double().mean()) * 100.0
            if f"{m}/hit" in results:
                valid = results[f"{m}/mask_valid"] > 0
                if bool(valid.any()):
                    scalars[pre + "pointing_game"] = float(results[f"{m}/hit"][valid].double().mean())
                    scalars[pre + "energy_pointing_game"] = float(results[f"{m}/energy"][valid].double().mean())
            scalars[pre + "seconds"] = float(results[f"{m}/seconds"].sum()) / max(total, 1.0)
            if f"{m}/delta" in results:
                scalars[pre + "completeness_residual"] = float(results[f"{m}/delta"].double().abs().mean())
            for corr in ("shap_pearson", "shap_spearman"):
                v = results.get(f"{m}/{corr}")
                if v is not None:
                    v = v[~torch.isnan(v)]
                    if v.numel():
                        scalars[pre + corr] = float(v.double().mean())
        return scalars

    # --------------------------------------------------------------- logging
    @staticmethod
    def _loggers(trainer: pl.Trainer) -> tuple[list[Any], list[Any]]:
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        loggers = list(getattr(trainer, "loggers", []) or [])
        return (
            [lg for lg in loggers if isinstance(lg, WandbLogger)],
            [lg for lg in loggers if isinstance(lg, TensorBoardLogger)],
        )

    def _label(self, value: int | None) -> str:
        if value is None or value < 0:
            return ""
        if self.class_names and value < len(self.class_names):
            return f"{value}: {self.class_names[value]}"
        return str(value)

    def _log_media(
        self,
        trainer: pl.Trainer,
        stage: str,
        results: dict[str, Tensor],
        scalars: dict[str, float],
        wandb_loggers: list[Any],
        tb_loggers: list[Any],
        log_dir: str | None,
    ) -> None:
        held = self._held
        assert held is not None
        mean, std = getattr(self, "_display_stats", (self.mean, self.std))
        k = min(self.max_images, len(held))
        images = held.images[:k].float()
        maps = {m: results[f"{m}/saliency"][:k].detach().float().cpu() for m in self.methods}
        grids = {
            m: viz.to_uint8_hwc(
                viz.overlay_grid(images, maps[m], alpha=self.alpha, colormap=self.colormap, mean=mean, std=std)
            )
            for m in self.methods
        }
        overview = viz.to_uint8_hwc(
            viz.comparison_grid(images, maps, alpha=self.alpha, colormap=self.colormap, mean=mean, std=std)
        )
        epoch, step = trainer.current_epoch, _logging_step(trainer)
        prefix = "" if stage == "val" else f"{stage}_"

        if wandb_loggers:
            payload = self._wandb_payload(trainer, stage, results, grids, overview, mean, std)
            for lg in wandb_loggers:
                # no step=: W&B's x-axis is trainer/global_step (WandbLogger's define_metric)
                lg.experiment.log(dict(payload, **{"trainer/global_step": step, "epoch": epoch}))
        for lg in tb_loggers:
            for m, g in grids.items():
                lg.experiment.add_image(f"cam/{prefix}{m}", g, global_step=step, dataformats="HWC")
            lg.experiment.add_image(f"cam/{prefix}overview", overview, global_step=step, dataformats="HWC")
        if log_dir is not None:
            out = Path(log_dir) / "cam"
            for m, g in grids.items():
                viz.save_png(g, out / f"{prefix}epoch{epoch}_{m}.png")
            viz.save_png(overview, out / f"{prefix}epoch{epoch}_overview.png")

    def _wandb_payload(
        self,
        trainer: pl.Trainer,
        stage: str,
        results: dict[str, Tensor],
        grids: dict[str, Any],
        overview: Any,
        mean: Any,
        std: Any,
    ) -> dict[str, Any]:
        import wandb

        held = self._held
        assert held is not None
        epoch = trainer.current_epoch
        base = "cam" if stage == "val" else f"cam_{stage}"
        payload: dict[str, Any] = {}
        for m, g in grids.items():
            payload[f"{base}/{m}/grid"] = wandb.Image(
                g, caption=f"epoch {epoch}: rows of images, then their {m} overlays"
            )
        payload[f"{base}/overview"] = wandb.Image(
            overview, caption=f"epoch {epoch}: images, then one row per method ({', '.join(self.methods)})"
        )
        if self.log_table:
            payload[f"{base}/table"] = self._wandb_table(results, mean, std)
        if self.log_curves:
            for kind in ("insertion", "deletion"):
                xs = results[f"{self.methods[0]}/fractions"].detach().cpu().tolist()
                ys = [results[f"{m}/{kind}_curve"].double().mean(0).cpu().tolist() for m in self.methods]
                payload[f"{base}/curves/{kind}"] = wandb.plot.line_series(
                    xs=xs,
                    ys=ys,
                    keys=list(self.methods),
                    title=f"Mean {kind} curve (epoch {epoch})",
                    xname="fraction of pixels " + ("inserted" if kind == "insertion" else "deleted"),
                )
        return payload

    def _wandb_table(self, results: dict[str, Tensor], mean: Any, std: Any) -> Any:
        import wandb

        held = self._held
        assert held is not None
        n = len(held)
        images = held.images.float()
        h, w = images.shape[-2:]
        scale = min(1.0, self.table_image_size / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))

        def small(x: Tensor) -> Tensor:
            """Shrink big images to table_image_size; blow tiny ones up to >= 64 px (nearest)."""
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            return viz._upscale(x, min(64, self.table_image_size))

        rgb = small(viz.denormalize(images, mean, std))
        overlays = {
            m: small(
                viz.overlay(images, results[f"{m}/saliency"].detach().float().cpu(), self.alpha, self.colormap, mean, std)
            )
            for m in self.methods
        }
        columns = ["index", "image", "label", "prediction", "confidence"]
        for m in self.methods:
            columns += [f"{m}", f"{m}_insertion", f"{m}_deletion"]
        table = wandb.Table(columns=columns)
        pred = results["prediction"].cpu().tolist()
        conf = results["confidence"].cpu().tolist()
        src = held.indices if held.indices is not None else list(range(n))
        for i in range(n):
            label = None if held.labels is None else int(held.labels[i])
            row: list[Any] = [
                int(src[i]),
                wandb.Image(viz.to_uint8_hwc(rgb[i])),
                self._label(label),
                self._label(int(pred[i])),
                float(conf[i]),
            ]
            for m in self.methods:
                row += [
                    wandb.Image(viz.to_uint8_hwc(overlays[m][i])),
                    float(results[f"{m}/insertion"][i]),
                    float(results[f"{m}/deletion"][i]),
                ]
            table.add_data(*row)
        return table

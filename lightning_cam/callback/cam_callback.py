"""``CAMCallback``: hooks and state; the work is held-out set -> evaluate -> gather -> log -> sinks.

Each run (every ``every_n_epochs`` validation epochs during ``fit``, every
``trainer.validate`` / ``trainer.test``; never in the sanity check):

1. :mod:`~lightning_cam.callback.heldout` picks the fixed, seeded held-out set once;
2. :func:`~lightning_cam.callback.evaluator.evaluate` explains and scores this
   rank's share of it (:mod:`~lightning_cam.callback.distributed`);
3. the shares are gathered, so every rank holds the single-process report;
4. :mod:`~lightning_cam.callback.summaries` turns it into scalars, logged with
   ``pl_module.log`` (every logger, ``ModelCheckpoint``, sweepers);
5. on rank zero, the :mod:`~lightning_cam.callback.sinks` write the pictures.

:mod:`~lightning_cam.callback.budget` keeps the cost under ``max_overhead``.
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.callback import distributed, evaluator, heldout, sinks
from lightning_cam.callback._lightning import lightning_package
from lightning_cam.callback.arguments import check_display, check_options
from lightning_cam.callback.budget import CostBudget
from lightning_cam.callback.stability import StabilityTracker
from lightning_cam.callback.sinks.media import STAGE_WORDS
from lightning_cam.callback.summaries import CURVE_METRICS, STAGE_PREFIX, callback_key, parse_key, summarise

__all__ = ["CAMCallback", "CAMCallbackMixin", "for_package"]

log = logging.getLogger("lightning_cam.callback")


def _logging_step(trainer: Any) -> int:
    """The step Lightning gives to epoch-end ``self.log`` values (so media line up with scalars)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except Exception:  # private attribute: fall back to the public counter
        return int(trainer.global_step)


class CAMCallbackMixin:
    """The callback's behaviour; :class:`CAMCallback` adds Lightning's ``Callback`` base class.

    Args:
        target_layer: layer to explain (dotted name, unique suffix such as
            ``"layer4"``, or the module), ``None`` = the model's default, or a
            list of layers: keys then read ``cam/<layer>/<method>/<metric>``.
        methods: registry names (``liftcam``, ``cam``, ``gradcam``,
            ``gradcam++``, ``xgradcam``, ``hirescam``, ``layercam``,
            ``scorecam``, ``ablationcam``, ``shap``).
        num_samples: size of the held-out set.
        every_n_epochs: run on validation epochs ``E`` with ``(E + 1) % n == 0``.
        images, labels, masks: explicit held-out tensors ``(N, C, H, W)``,
            ``(N,)``, ``(N, H, W)`` (a seeded subset of ``num_samples`` when
            ``N`` is larger). Default: drawn from the validation dataset.
        seed: seed of the held-out selection.
        step, n_steps: insertion/deletion granularity; default ``n_steps=16``.
        metric_batch_size: forward batch size of the metrics.
        shap_samples: compare each method's channel weights with ShapCAM's on
            this many held-out images (Pearson / Spearman); 0 = off.
        log_images: log pictures through the sinks (W&B, TensorBoard, PNG/CSV, ``log_image``).
        max_images: images per grid.
        mean, std: the input normalisation, undone for display; default: the
            datamodule's ``mean`` / ``std``, else per-image min-max.
        colormap: a matplotlib colormap (``inferno`` by default).
        on_error: ``"warn"`` (log the traceback, keep training) or ``"raise"``.
        max_overhead: cost budget as a fraction of the training time (0.10 =
            10 %); over it, the insertion/deletion curves are computed every
            k-th evaluation (see :mod:`~lightning_cam.callback.budget`). None = no budget.
        explain_batch_size: images per explanation batch.
        alpha: overlay opacity.
        log_table, log_curves: W&B per-image table / mean curve charts.
        method_grids: also a grid per method (``cam/<method>/grid``); the
            overview (``cam/overview``) always shows every method.
        save_png: write PNG grids and a CSV of per-image scores under
            ``<log_dir>/cam/``; ``None`` = only when no ``WandbLogger`` is attached.
        table_image_size: longest side of the images in the W&B table.
        class_names: names for labels / predictions; default: the datamodule's
            or dataset's ``classes``.
        method_kwargs: constructor options per method, e.g. ``{"scorecam": {"batch_size": 64}}``.
        sanity_every_n_epochs: the model-parameter randomisation check (Adebayo et al. 2018):
            every n-th validation epoch and at the last one; 0 (default) = at the last validation
            epoch of ``fit`` only; ``None`` = never. Also on ``trainer.validate`` / ``test``
            unless None. Logs ``cam/<method>/randomization_spearman`` (low = the method depends
            on the model). The model, its RNG streams and training are untouched.
        sanity_order: ``"full"`` (every parameter re-initialised at once) or ``"cascading"``
            (from the output layer down, one explanation pass per layer; the logged value is
            the last, fully random, step).
        sanity_seed: seed of the re-initialisation (Quantus' ``MPRT`` default, 42).
        target: ``"prediction"`` (default) explains and scores each image's
            predicted class; ``"label"`` its true label (needs labels): the
            grids and the table then mark the misclassified images.
        output_transform: callable reading the (B, num_classes) scores from
            the model's output when ``forward`` returns something other than a
            tensor, a tuple/list (first element), a dict with ``"logits"`` or an
            object with ``.logits`` (see :mod:`lightning_cam.outputs`).
        fusion: with a list ``target_layer``: ``None`` (default) explains and logs
            every layer on its own (``cam/<layer>/<method>/...``); ``"mean"``
            (pytorch-grad-cam) or ``"max"`` (torchcam's ``fuse_cams``) fuses the
            layers' maps into one per method, logged as ``cam/<method>/...``.

    Every evaluation also logs ``sparseness`` / ``complexity`` per method, the share of the
    map's energy in every named region of the held-out masks (``energy/<region>``), and from
    the second evaluation of ``fit`` on, ``stability`` / ``stability_first`` (Spearman with
    the previous / first evaluation's maps; kept in the checkpoint so a resumed run continues).
    Images whose logits, map or scores are not finite (a diverging model) are
    left out of the means; ``cam/nonfinite_images`` counts them and one
    warning per evaluation names the epoch.
    """

    def __init__(
        self,
        target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
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
        max_overhead: float | None = 0.10,
        *,
        explain_batch_size: int = 64,
        alpha: float = 0.5,
        log_table: bool = True,
        log_curves: bool = True,
        method_grids: bool = False,
        save_png: bool | None = None,
        table_image_size: int = 128,
        class_names: Sequence[str] | None = None,
        method_kwargs: dict[str, dict[str, Any]] | None = None,
        sanity_every_n_epochs: int | None = 0,
        sanity_order: str = "full",
        sanity_seed: int = 42,
        target: str = "prediction",
        output_transform: Callable[[Any], Tensor] | None = None,
        fusion: str | None = None,
    ) -> None:
        super().__init__()
        self.options = check_options(
            target_layer=target_layer, methods=methods, num_samples=num_samples, every_n_epochs=every_n_epochs,
            seed=seed, step=step, n_steps=n_steps, metric_batch_size=metric_batch_size,
            explain_batch_size=explain_batch_size, shap_samples=shap_samples, on_error=on_error,
            max_overhead=max_overhead, method_kwargs=method_kwargs, images=images, labels=labels, masks=masks,
            sanity_every_n_epochs=sanity_every_n_epochs, sanity_order=sanity_order, sanity_seed=sanity_seed,
            target=target, output_transform=output_transform, fusion=fusion,
        )
        self.display = check_display(
            mean=mean, std=std, alpha=alpha, colormap=colormap, max_images=max_images, log_table=log_table,
            log_curves=log_curves, table_image_size=table_image_size, method_grids=method_grids,
        )
        self.log_images = bool(log_images)
        self.save_png = save_png
        self.class_names = None if class_names is None else list(class_names)
        self.budget = CostBudget(self.options.max_overhead)
        self.stability = StabilityTracker()
        self.layer_names: dict[str, str] = {}  # name the user gave -> qualified module name
        #: keys read <prefix>/<layer>/<method>/<metric> (several layers or several CAMCallbacks)
        self.layer_in_key = self.options.multi_layer
        self.key_scope: str | None = None
        self._held: heldout.HeldOut | None = None
        #: trainer.test explains images of the test split (its own seeded set, not checkpointed)
        self._held_test: heldout.HeldOut | None = None
        self._fit_evaluations = self._fit_sanity_runs = 0  # for the warning at the end of fit
        self._restored: dict[str, Any] | None = None
        self._display_stats: tuple[Any, Any] = (self.display.mean, self.display.std)
        self._train_mark: float | None = None
        self._budget_exempt = False
        #: the report of the last run (all images, CPU) and its logged scalars
        self.last_report: evaluator.EvaluationReport | None = None
        self.last_scalars: dict[str, float] = {}
        #: number of failed runs (errors reported with on_error="warn")
        self.num_errors = 0

    @property
    def methods(self) -> list[str]:
        return self.options.methods

    @property
    def heldout(self) -> heldout.HeldOut | None:
        """The held-out set (None until the first run)."""
        return self._held

    @property
    def state_key(self) -> str:
        layers = [
            layer if isinstance(layer, str) else "default" if layer is None else type(layer).__name__
            for layer in self.options.target_layers
        ]
        # layers and methods only: a resumed run may change seed / num_samples and keeps its held-out set
        extra = {} if self.options.fusion is None else {"fusion": self.options.fusion}
        return self._generate_state_key(target_layer=layers, methods=self.methods, **extra)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # configuration errors surface at once, whatever on_error says
        self.layer_names = evaluator.layer_names(pl_module, self.options.target_layers)
        # several layers, or several CAMCallbacks in this Trainer: the layer goes into the keys
        others = [cb for cb in getattr(trainer, "callbacks", None) or [] if isinstance(cb, CAMCallbackMixin) and cb is not self]
        self.layer_in_key = self.options.multi_layer or bool(others)
        #: names this callback's callback-wide keys (callback_seconds, curve_every, nonfinite_images) when it
        #: shares the Trainer: its layers, and its methods too where another CAMCallback explains the same layers
        self.key_scope = None
        if others:
            layers = "+".join(self.layer_names)
            same = any("+".join(evaluator.layer_names(pl_module, cb.options.target_layers)) == layers for cb in others)
            self.key_scope = f"{layers}:{'+'.join(self.methods)}" if same else layers
        monitored = {str(getattr(cb, "monitor", "") or "") for cb in getattr(trainer, "callbacks", None) or []}
        keys = [parse_key(k) for k in monitored]
        self._budget_exempt = any(k is not None and k.prefix == "cam" and k.metric in CURVE_METRICS for k in keys)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._train_mark = time.perf_counter()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._train_mark is not None and not trainer.sanity_checking:
            self.budget.add_training_time(time.perf_counter() - self._train_mark)
        self._train_mark = None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._train_mark = time.perf_counter()  # training resumes (mid-epoch validation)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._train_mark = None

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        # The check runs at the last validation epoch; a run ended by max_steps / max_time or by
        # EarlyStopping (which decides after this callback's hook) never reaches one it can recognise.
        never = self.options.sanity_every_n_epochs is not None and self._fit_evaluations and not self._fit_sanity_runs
        if never and trainer.is_global_zero:
            warnings.warn(
                "CAMCallback: the model-randomisation check never ran in this fit: it runs at the last "
                "validation epoch, which this run did not reach by max_epochs (max_steps / max_time or "
                "EarlyStopping ended it). Set sanity_every_n_epochs=N to run it every N epochs, or call "
                "trainer.validate(...) after fit, which always runs it.",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and (trainer.current_epoch + 1) % self.options.every_n_epochs != 0:
            return
        self._run(trainer, pl_module, "val" if fitting else "validate")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._run(trainer, pl_module, "test")

    def state_dict(self) -> dict[str, Any]:
        held = self._held
        if held is None:
            return dict(self._restored or {})
        state: dict[str, Any] = {
            "version": 2,
            "source": held.source,
            "indices": held.indices,
            "dataset_len": held.dataset_len,
            "seed": self.options.seed,
            "num_samples": self.options.num_samples,
            "budget": self.budget.state_dict(),
            "stability": self.stability.state_dict(),
        }
        if held.source == "loader":  # no indices to re-read: keep the tensors
            state.update(images=held.images, labels=held.labels, masks=held.masks, regions=held.regions)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None
        self._held = None
        if state_dict and "budget" in state_dict:
            self.budget.load_state_dict(state_dict["budget"])
        self.stability.load_state_dict((state_dict or {}).get("stability"))

    # ------------------------------------------------------------ the work
    def _sanity_due(self, trainer: Any, stage: str) -> bool:
        every = self.options.sanity_every_n_epochs
        if every is None:
            return False
        if stage != "val":
            return True
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs
        return last or bool(trainer.should_stop) or (every > 0 and (trainer.current_epoch + 1) % every == 0)

    def _evaluate_share(self, pl_module: Any, held: heldout.HeldOut, rank: int, world: int, sanity: bool = False):
        """Explain and score (all but the curves) this rank's rows ``rank::world`` of the held-out set;
        with ``sanity``, the randomisation check too."""
        rows, count = distributed.shard_rows(len(held), rank, world)
        idx = torch.tensor(rows)
        opts = self.options
        targets = None
        if opts.target == "label":
            if held.labels is None:
                raise ValueError(
                    "CAMCallback(target='label') explains the true labels, but the held-out set has none (the "
                    "validation dataset yields no labels); pass images=... and labels=..., or target='prediction'"
                )
            targets = torch.as_tensor(held.labels)[idx]
        report = evaluator.evaluate(
            pl_module, opts.target_layers, held.images[idx],
            labels=None if held.labels is None else held.labels[idx],
            masks=None if held.masks is None else held.masks[idx],
            methods=opts.methods, curves=False, shap_on=(idx < opts.shap_samples) if opts.shap_samples else None,
            batch_size=opts.explain_batch_size, metric_batch_size=opts.metric_batch_size,
            method_kwargs=opts.method_kwargs, targets=targets, output_transform=opts.output_transform,
            regions=None if held.regions is None else {k: v[idx] for k, v in held.regions.items()},
            randomization=opts.sanity_order if sanity else None, randomization_seed=opts.sanity_seed,
            fusion=opts.fusion,
        )
        if count == 0:  # the dummy row explains nothing: zero seconds
            report = replace(report, layers={
                n: replace(lr, methods={m: replace(r, seconds=0.0) for m, r in lr.methods.items()})
                for n, lr in report.layers.items()
            })
        return replace(report, index=idx.to(report.predictions.device)), count

    def _curve_estimate(self, local: evaluator.EvaluationReport) -> float:
        """Seconds the curves would take: their forward passes x this evaluation's time per forward pass."""
        per_forward = local.timing["scores"] / max(local.timing["forwards"], 1.0)
        return per_forward * evaluator.curve_forwards(local, **self.options.curve_steps())

    def _curves_due(self, trainer: Any, stage: str, spent: float, local: evaluator.EvaluationReport) -> bool:
        """Curves at every trainer.validate / test, and during fit when the budget affords them (rank zero decides)."""
        if stage != "val" or self._budget_exempt:
            return True
        due = self.budget.curves_due(spent, self._curve_estimate(local))
        if trainer.world_size > 1:
            due = bool(trainer.strategy.broadcast(due, src=0))
        return due

    def _run(self, trainer: Any, pl_module: Any, stage: str) -> None:
        start = time.perf_counter()
        rank, world, strategy, device = trainer.global_rank, trainer.world_size, trainer.strategy, pl_module.device
        prefix = STAGE_PREFIX[stage]
        sanity = self._sanity_due(trainer, stage)
        if stage == "val":
            self._fit_evaluations += 1
            self._fit_sanity_runs += int(sanity)
        if stage == "val":
            self.budget.credit()
        local = error = exc = None
        count, idx = 0, None
        with heldout.preserved_rng(self.options.seed, devices=[device]), torch.inference_mode(False):
            try:
                held = self._ensure_heldout(trainer, stage)
                local, count = self._evaluate_share(pl_module, held, rank, world, sanity)
            except Exception as e:  # reported below, after every rank agrees
                error, exc = traceback.format_exc(), e
            # every rank takes part in these collectives, failed or not
            if distributed.any_rank(strategy, local is None, device, world):
                self._report(trainer, stage, error or "another rank failed (see its log)", exc)
                return
            curves = self._curves_due(trainer, stage, time.perf_counter() - start, local)
            if curves:
                try:
                    local = evaluator.add_curves(
                        local, pl_module, held.images[local.index.cpu()], batch_size=self.options.explain_batch_size,
                        metric_batch_size=self.options.metric_batch_size, output_transform=self.options.output_transform,
                        **self.options.curve_steps(),
                    )
                except Exception as e:
                    error, exc, local = traceback.format_exc(), e, None
                if distributed.any_rank(strategy, local is None, device, world):
                    self._report(trainer, stage, error or "another rank failed (see its log)", exc)
                    return
            try:
                report = distributed.gather_report(strategy, local, count, len(held), world).to("cpu")
                if stage == "val":  # the series follows training; validate/test runs do not advance it
                    self.stability.update(report)
                scalars = summarise(report, prefix, layer_in_key=self.layer_in_key, scope=self.key_scope)
            except Exception as e:
                self._report(trainer, stage, traceback.format_exc(), e)
                return
        self.last_report = report
        self._warn_nonfinite(trainer, stage, prefix, report)
        for key, value in scalars.items():  # identical on every rank (from the gathered report): no sync
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)
        self._write_media(trainer, stage, prefix, report, held)
        seconds = time.perf_counter() - start
        extra = {callback_key(prefix, "callback_seconds", self.key_scope): seconds}
        if stage == "val":
            curve_seconds = local.timing.get("curves") if curves else None
            msg = self.budget.debit(seconds, curve_seconds, self._curve_estimate(local))
            if world > 1:  # rank zero's account everywhere (timings differ per rank)
                state = strategy.broadcast(self.budget.state_dict(), src=0)
                self.budget.load_state_dict(state)
                msg = msg if trainer.is_global_zero else None
            if msg:
                log.info(msg)
            extra[callback_key(prefix, "curve_every", self.key_scope)] = float(self.budget.curve_every)
        for key, value in extra.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)
        self.last_scalars = dict(scalars, **extra)

    def _write_media(
        self, trainer: Any, stage: str, prefix: str, report: evaluator.EvaluationReport, held: heldout.HeldOut
    ) -> None:
        if not self.log_images or trainer.fast_dev_run:
            return
        loggers = list(getattr(trainer, "loggers", []) or [])
        png_dir = sinks.png_dir(trainer, self.save_png)  # every rank: trainer.log_dir broadcasts
        if not trainer.is_global_zero:
            return
        mean, std = self._display_stats
        media = sinks.Media(
            report=report, held=held, stage=stage, prefix=prefix, epoch=trainer.current_epoch,
            step=_logging_step(trainer), display=replace(self.display, mean=mean, std=std),
            class_names=self.class_names, layer_in_key=self.layer_in_key, target=self.options.target, scope=self.key_scope,
        )
        for sink in sinks.sinks_for(loggers, png_dir):
            try:
                sink.write(media)
            except Exception as e:
                self._report(trainer, stage, traceback.format_exc(), e, during=f"logging media ({type(sink).__name__})")

    def _warn_nonfinite(self, trainer: Any, stage: str, prefix: str, report: evaluator.EvaluationReport) -> None:
        """One warning per evaluation when images were left out for non-finite logits, maps or scores."""
        bad = report.nonfinite
        if not bool(bad.any()) or not trainer.is_global_zero:
            return
        per = {
            (f"{layer}/{m}" if len(report.layers) > 1 else m): int((~r.finite.bool()).sum())
            for layer, m, r in report.items() if r.finite is not None and not bool(r.finite.all())
        }
        where = [int(i) for i in bad.nonzero().flatten()[:10]]
        msg = (
            f"CAMCallback: {int(bad.sum())} of {report.num_images} held-out images have non-finite logits, maps "
            f"or scores at epoch {trainer.current_epoch} ({STAGE_WORDS.get(stage, stage)}), per method {per} "
            f"(held-out positions {where}); they are left out of the {prefix}/* means and counted in "
            f"{callback_key(prefix, 'nonfinite_images', self.key_scope)}. The model may be diverging (check the loss and the learning rate)."
        )
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def _report(self, trainer: Any, stage: str, error: str, exc: BaseException | None,
                during: str = "explaining the held-out set") -> None:
        self.num_errors += 1
        msg = (
            f"CAMCallback failed while {during} (stage {stage}, epoch {trainer.current_epoch}, "
            f"global step {trainer.global_step}, rank {trainer.global_rank})"
        )
        if self.options.on_error == "raise":
            raise RuntimeError(f"{msg}: {exc if exc is not None else error}") from exc
        full = f"{msg}; training continues (on_error='warn'):\n{error}"
        log.error(full)
        warnings.warn(full, RuntimeWarning, stacklevel=2)

    # ----------------------------------------------------------- held-out set
    def _ensure_heldout(self, trainer: Any, stage: str) -> heldout.HeldOut:
        """The fixed held-out set: from the validation split (checkpointed), or for ``trainer.test``
        from the test split (its own seeded set); ``images=`` serves every stage."""
        opts = self.options
        test_split = stage == "test" and opts.images is None
        held = self._held_test if test_split else self._held
        if held is None:
            restored = None if test_split else self._restored
            held = heldout.choose(
                trainer, stage, opts.images, opts.labels, opts.masks, opts.num_samples, opts.seed, restored
            )
            if test_split:
                self._held_test = held
            else:
                self._held = held
            if self.class_names is None:
                self.class_names = heldout.class_names(trainer, from_dataset=opts.images is None)
            if self.display.mean is None and self.display.std is None:
                dm = getattr(trainer, "datamodule", None)
                self._display_stats = (getattr(dm, "mean", None), getattr(dm, "std", None))
        return held


_pl = lightning_package()
_CLASSES: dict[str, type] = {}


def for_package(package: str) -> type:
    """``CAMCallback`` built on ``<package>.Callback`` (``"pytorch_lightning"`` or ``"lightning.pytorch"``).

    Lightning checks callbacks against its own ``Callback`` class: with both
    packages installed, a ``lightning.pytorch.Trainer`` needs
    ``for_package("lightning.pytorch")(...)``.
    """
    if package not in _CLASSES:
        base = lightning_package(package).Callback
        _CLASSES[package] = type("CAMCallback", (CAMCallbackMixin, base), {
            "__doc__": CAMCallbackMixin.__doc__, "__module__": __name__, "__qualname__": "CAMCallback",
        })
    return _CLASSES[package]


class CAMCallback(CAMCallbackMixin, _pl.Callback):  # type: ignore[misc,name-defined]
    __doc__ = CAMCallbackMixin.__doc__


_CLASSES[_pl.__name__] = CAMCallback

"""``CAMCallback``: hooks and state; the work is held-out set -> evaluate -> gather -> log -> sinks.

Each run (every ``every_n_epochs`` validation epochs during ``fit``, every
``trainer.validate`` / ``trainer.test``; never in the sanity check):

1. :mod:`~lightning_cam.callback.heldout` picks the fixed, seeded held-out set once;
2. :func:`~lightning_cam.evaluation.evaluate` explains and scores this
   rank's share of it (:mod:`~lightning_cam.callback.distributed`);
3. the insertion / deletion curves of the shared seeded subset of the held-out set, whose size
   :mod:`~lightning_cam.callback.budget` chooses once to keep the cost near ``max_overhead``;
4. the shares are gathered, so every rank holds the single-process report;
5. :func:`~lightning_cam.evaluation.summarise` turns it into scalars, logged with
   ``pl_module.log`` (every logger, ``ModelCheckpoint``, sweepers), with the seconds per part;
6. on rank zero, the :mod:`~lightning_cam.callback.sinks` write the pictures.
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from typing_extensions import override

from lightning_cam.callback import distributed, heldout, label_targets, sinks
from lightning_cam.callback.alerts import AlertTracker
from lightning_cam.callback._lightning import lightning_package
from lightning_cam.callback.budget import CostBudget
from lightning_cam.callback.options import CallbackOptions, callback_signature
from lightning_cam.callback.sinks.media import STAGE_WORDS
from lightning_cam.callback.stability import StabilityTracker
from lightning_cam.evaluation import (
    EvaluationReport,
    add_curves,
    add_randomization,
    curve_subset,
    evaluate,
    layer_names,
    report_layers,
    summarise,
)
from lightning_cam.evaluation.keys import STAGE_PREFIX, callback_key, row_label
from lightning_cam.evaluation.report import class_groups

__all__ = ["CAMCallback", "CAMCallbackMixin", "for_package"]

log = logging.getLogger("lightning_cam.callback")


def _logging_step(trainer: Any) -> int:
    """The step Lightning gives to epoch-end ``self.log`` values (so media line up with scalars)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except Exception:  # private attribute: fall back to the public counter
        return int(trainer.global_step)


@dataclass
class _Run:
    """One evaluation in progress: its Trainer, module and stage, and what each step hands on."""

    trainer: Any
    pl_module: Any
    stage: str
    start: float
    sanity: bool
    train_seconds: float
    held: heldout.HeldOut | None = None
    rows: list[int] = field(default_factory=list)
    count: int = 0
    local: EvaluationReport | None = None
    curve_start: float = 0.0


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
        metric_batch_size: forward batch size of the metrics (None: 32 on a CPU, 256 on a GPU).
        shap_samples: compare each method's channel weights with ShapCAM's on
            this many held-out images (Pearson / Spearman); 0 = off.
        extra_metrics: opt-in metrics, e.g. ``("road", "max_sensitivity")`` (names of
            :data:`~lightning_cam.evaluation.keys.EXTRA_METRICS`; docs/metrics.md), logged as
            ``cam/<method>/<metric>``.
        log_images: log pictures through the sinks (W&B, TensorBoard, PNG/CSV, ``log_image``).
        max_images: images per grid.
        mean, std: the input normalisation, undone for display; default: the
            datamodule's ``mean`` / ``std``, else per-image min-max.
        colormap: a matplotlib colormap (``inferno`` by default).
        on_error: ``"warn"`` (log the traceback, keep training) or ``"raise"``.
        max_overhead: cost budget as a fraction of the training time (0.10 =
            10 %): the insertion/deletion curves come at every evaluation, on a fixed
            seeded subset of the held-out images whose size (at least ``min(8, N)``) is chosen
            at the first evaluation to fit it (see :mod:`~lightning_cam.callback.budget`).
            None = every image.
        explain_batch_size: images per explanation batch.
        alpha: overlay opacity.
        log_table, log_curves: W&B per-image table / mean curve charts.
        method_grids: also a grid per method (``cam/<method>/grid``); the
            overview (``cam/overview``) always shows every method.
        save_png: write PNG grids and a CSV of per-image scores under
            ``<log_dir>/cam/``; ``None`` = only when no ``WandbLogger`` / ``MLFlowLogger`` is attached.
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
        target: what is explained and scored (:mod:`lightning_cam.targets`). ``"prediction"``
            (default): the model's own prediction (top-1 class; the predicted side of a 1-logit
            model; a segmentation model's most frequent predicted non-background class over its
            predicted region). ``"label"``: the true labels (the grids and the table then mark the
            misclassified images): a class per image, a segmentation mask per image (its object's
            class over the labelled region), or multi-hot labels (one row per positive label,
            explained as that label's logit). A built-in such as ``LabelLogit()`` or
            ``BinaryLogit(0)`` (bound to each evaluation's images), or a callable taking one image's
            output, pytorch-grad-cam style (``ClassifierOutputTarget(3)``), applied to every image.
        output_transform: callable reading the (B, num_classes) scores from
            the model's output when ``forward`` returns something other than a
            tensor, a tuple/list (first element), a dict with ``"logits"`` or an
            object with ``.logits`` (see :mod:`lightning_cam.outputs`).
        regions: mask-free regions scored on every held-out set, masks or not: ``{name: box}``
            with a box ``(x0, y0, x1, y1)`` in relative coordinates or a border width, added to the
            default ``border`` band (1/8 of the side) and ``center`` (the middle half of each side);
            None: just those; a ``None`` value switches one off. Logged as ``cam/<method>/energy/<name>``, the area share as
            ``cam/area/<name>`` (see :mod:`lightning_cam.evaluation.regions`).
        per_class: classes (names or indices) whose means of the region energies, pointing game
            and insertion / deletion are logged as ``cam/<method>/class/<name>/<metric>``, or
            ``"all"``; None (default) = only the W&B / CSV per-class table (``cam/class_table``).
            Images are grouped by label (the explained class when there are no labels).
        alert: ``{metric: threshold}``, e.g. ``{"energy/border": 0.4}``: warn once per method and
            key when a score crosses the threshold (above it; below it for higher-is-better
            metrics), in the console and in the W&B summary (``cam/alerts``); see
            :mod:`lightning_cam.callback.alerts`.
        fusion: with a list ``target_layer``: ``None`` (default) explains and logs
            every layer on its own (``cam/<layer>/<method>/...``); ``"mean"``
            (pytorch-grad-cam) or ``"max"`` (torchcam's ``fuse_cams``) fuses the
            layers' maps into one per method, logged as ``cam/<method>/...``.

    Every evaluation also logs its seconds per part (``<prefix>/seconds/{explain,scores,curves,
    randomization,media,other}``), the image passes it ran (``forwards``, ``backwards``) and the
    size of the curve subset (``curve_images``). It logs ``sparseness`` / ``complexity`` per method, the share of the
    map's energy in every named region of the held-out masks (``energy/<region>``), and from
    the second evaluation of ``fit`` on, ``stability`` / ``stability_first`` (Spearman with
    the previous / first evaluation's maps; kept in the checkpoint so a resumed run continues).
    Images whose logits, map or scores are not finite (a diverging model) are
    left out of the means; ``cam/nonfinite_images`` counts them and one
    warning per evaluation names the epoch.
    """

    def __init__(self, target_layer: Any = None, methods: Any = ("liftcam",), **options: Any) -> None:
        super().__init__()
        #: every option, checked (:class:`~lightning_cam.callback.options.CallbackOptions`)
        self.options = CallbackOptions(target_layer=target_layer, methods=methods, **options)
        self.budget = CostBudget(self.options.max_overhead)
        self.stability = StabilityTracker()
        self.layer_names: dict[str, str] = {}  # name the user gave -> qualified module name
        #: keys read <prefix>/<layer>/<method>/<metric> (several layers or several CAMCallbacks)
        self.layer_in_key = self.options.multi_layer
        self.key_scope: str | None = None
        self.class_names = self.options.class_names
        self._held: dict[str, heldout.HeldOut] = {}  # "fit": the checkpointed set; "test": the test split's
        self.fit_evaluations = self.fit_sanity_runs = 0  # for the warning at the end of fit
        self._restored: dict[str, Any] | None = None
        self._datamodule_stats: tuple[Any, Any] = (None, None)
        self._train_mark: float | None = None
        #: the report of the last run (all images, CPU) and its logged scalars
        self.last_report: EvaluationReport | None = None
        self.last_scalars: dict[str, float] = {}
        #: the epoch of the last evaluation whose scalars were logged
        self.last_epoch: int | None = None
        #: number of failed runs (errors reported with on_error="warn")
        self.num_errors = 0
        #: the alert thresholds and the keys that have warned (checkpointed)
        self.alerts = AlertTracker(dict(self.options.alert or {}))

    __init__.__signature__ = callback_signature()  # type: ignore[attr-defined]

    @property
    def methods(self) -> list[str]:
        return list(self.options.methods)

    @property
    def heldout(self) -> heldout.HeldOut | None:
        """The held-out set of the validation runs (None until the first run)."""
        return self._held.get("fit")

    @property
    def test_heldout(self) -> heldout.HeldOut | None:
        """The held-out set ``trainer.test`` explains: its own seeded set of the test split (not
        checkpointed), or the user's ``images``; None until the first test run."""
        return self._held.get("test")

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
    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # configuration errors surface at once, whatever on_error says
        self.layer_names = layer_names(pl_module, self.options.target_layers)
        # several layers, or several CAMCallbacks in this Trainer: the layer goes into the keys
        others = [cb for cb in getattr(trainer, "callbacks", None) or [] if isinstance(cb, CAMCallbackMixin) and cb is not self]
        self.layer_in_key = self.options.multi_layer or bool(others)
        #: names this callback's callback-wide keys (callback_seconds, seconds/*, nonfinite_images ...) when it
        #: shares the Trainer: its layers, and its methods too where another CAMCallback explains the same layers
        self.key_scope = None
        if others:
            layers = "+".join(self.layer_names)
            same = any("+".join(layer_names(pl_module, cb.options.target_layers)) == layers for cb in others)
            self.key_scope = f"{layers}:{'+'.join(self.methods)}" if same else layers

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._train_mark = time.perf_counter()

    @override
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._train_mark is not None and not trainer.sanity_checking:
            self.budget.add_training_time(time.perf_counter() - self._train_mark)
        self._train_mark = None

    @override
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._train_mark = time.perf_counter()  # training resumes (mid-epoch validation)

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._train_mark = None

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        # The check runs at the last epoch the callback evaluates; a run ended by max_steps / max_time or by
        # EarlyStopping (which decides after this callback's hook) never reaches one it can recognise.
        never = self.options.sanity_every_n_epochs is not None and self.fit_evaluations and not self.fit_sanity_runs
        if never and trainer.is_global_zero:
            warnings.warn(
                "CAMCallback: the model-randomisation check never ran in this fit: it runs at the last "
                "epoch the callback evaluates before max_epochs, and this run stopped before it (max_steps, "
                "max_time or EarlyStopping ended it). Set sanity_every_n_epochs=N to run it every N epochs, or call "
                "trainer.validate(...) after fit, which always runs it.",
                RuntimeWarning,
                stacklevel=2,
            )

    @override
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and (trainer.current_epoch + 1) % self.options.every_n_epochs != 0:
            return
        self._run(trainer, pl_module, "val" if fitting else "validate")

    @override
    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._run(trainer, pl_module, "test")

    @override
    def state_dict(self) -> dict[str, Any]:
        """The held-out set (indices, or the tensors of an iterated loader), the budget's choice and
        the stability series; :meth:`load_state_dict` reads back every key."""
        held = self.heldout
        if held is None:
            return dict(self._restored or {})
        state: dict[str, Any] = {
            "source": held.source,
            "indices": held.indices,
            "budget": self.budget.state_dict(),
            "stability": self.stability.state_dict(),
            "alerts": self.alerts.state_dict(),
        }
        if held.source == "loader":  # no indices to re-read: keep the tensors
            state.update(images=held.images, labels=held.labels, masks=held.masks, regions=held.regions,
                         dense_labels=held.dense_labels)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None
        self._held.pop("fit", None)
        self.budget.load_state_dict((state_dict or {}).get("budget"))
        self.stability.load_state_dict((state_dict or {}).get("stability"))
        self.alerts.load_state_dict((state_dict or {}).get("alerts"))

    # ------------------------------------------------------------ the work
    def _sanity_due(self, trainer: Any, stage: str) -> bool:
        every = self.options.sanity_every_n_epochs
        if every is None:
            return False
        if stage != "val":
            return True
        # the last epoch this callback evaluates: no later epoch (E + 1) % every_n_epochs == 0 before max_epochs
        later = trainer.current_epoch + 1 + self.options.every_n_epochs
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and later > trainer.max_epochs
        return last or bool(trainer.should_stop) or (every > 0 and (trainer.current_epoch + 1) % every == 0)

    def _evaluate_share(self, run: _Run) -> EvaluationReport:
        """Explain and score (all but the curves and the randomisation check) this rank's held-out rows."""
        held, idx, opts = run.held, torch.tensor(run.rows), self.options
        targets = label_targets.targets_for(opts.target, held, idx, multilabel=held.images_of is not None)
        report = evaluate(
            run.pl_module, self.options.target_layers, held.images[idx],
            labels=None if held.labels is None else held.labels[idx],
            masks=None if held.masks is None else held.masks[idx],
            targets=targets, shap_on=(idx < opts.shap_samples) if opts.shap_samples else None,
            regions=None if held.regions is None else {k: v[idx] for k, v in held.regions.items()},
            options=opts.evaluation_for_run(False, curve_rows=False),
        )
        return replace(report, index=idx.to(report.predictions.device))

    def _randomization(self, run: _Run, local: EvaluationReport) -> EvaluationReport:
        """The model-randomisation check of this rank's rows (when due)."""
        images = run.held.images[local.index.cpu()]
        layers = report_layers(run.pl_module, self.options.target_layers, images[:1], self.options.fusion)
        return add_randomization(local, run.pl_module, layers, images, self.options.evaluation_for_run(True))

    def _add_curves(self, run: _Run, local: EvaluationReport, subset: torch.Tensor) -> EvaluationReport:
        """Curves for this rank's rows of the held-out ``subset`` ((N,) bool, global positions)."""
        positions = local.index.cpu()
        opts = self.options.evaluation_for_run(False)
        return add_curves(local, run.pl_module, run.held.images[positions], opts, rows=subset[positions])

    def _curve_subset_size(self, run: _Run) -> int | None:
        """The size of the curve subset: every image for validate / test and without a budget, else the
        budget's choice (None at the first evaluation of fit, before it is made)."""
        if self.budget.curve_images is None:  # the first evaluation of this run: its seed names the subset
            self.budget.curve_seed = self.options.seed
        n = len(run.held)
        return n if run.stage != "val" or self.options.max_overhead is None else self.budget.curve_images

    def _choose_curve_subset(self, run: _Run, seconds_per_image: float) -> int:
        """The budget's choice from this evaluation's measurements (rank zero's, broadcast)."""
        trainer = run.trainer
        k, msg = self.budget.choose(len(run.held), run.train_seconds, run.curve_start - run.start, seconds_per_image)
        if trainer.world_size > 1:  # rank zero's choice everywhere (timings differ per rank)
            k = int(trainer.strategy.broadcast(k, src=0))
            self.budget.curve_images = k
        if trainer.is_global_zero:
            log.info(msg)
        return k

    def _agreed(self, run: _Run, during: str, work: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``work`` on this rank; then every rank learns whether any rank failed (a collective every
        rank reaches, failed or not), and a failure is reported on every rank. Returns (ok, result)."""
        result = error = exc = None
        try:
            result = work()
        except Exception as e:  # reported below, after every rank agrees
            error, exc = traceback.format_exc(), e
        if distributed.any_rank(run.trainer.strategy, exc is not None, run.trainer.world_size):
            self._report_error(run.trainer, run.stage, error or "another rank failed (see its log)", exc, during=during)
            return False, None
        return True, result

    def _run(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """One evaluation: held-out set -> explain and score -> randomisation check -> curves -> gather ->
        scalars -> media. Each step's failure is agreed by every rank before the next collective."""
        run = _Run(trainer, pl_module, stage, start=time.perf_counter(), sanity=self._sanity_due(trainer, stage),
                   train_seconds=self.budget.take_training_time() if stage == "val" else 0.0)
        if stage == "val":
            self.fit_evaluations += 1
            self.fit_sanity_runs += int(run.sanity)
        with heldout.preserved_rng(self.options.seed, devices=[pl_module.device]), torch.inference_mode(False):
            report = self._compute(run)
        if report is None:
            return
        prefix = STAGE_PREFIX[stage]
        ok, scalars = self._agreed(run, "summarising the scores", lambda: self._summarise(run, report, prefix))
        if not ok:
            return
        self.last_report = report
        self._warn_nonfinite(trainer, stage, prefix, report)
        media_start = time.perf_counter()
        errors = self._write_media(run, prefix, report)
        media = time.perf_counter() - media_start
        scalars.update(self._seconds(prefix, run.local.timing, media, time.perf_counter() - run.start))
        for key, value in scalars.items():  # identical on every rank (from the gathered report) but the seconds
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)
        self.last_scalars, self.last_epoch = scalars, trainer.current_epoch
        self._alert(run, prefix, scalars)
        # a sink failed on rank zero: every rank learns it before anyone raises (on_error="raise")
        if distributed.any_rank(trainer.strategy, bool(errors), trainer.world_size):
            for during, error, exc in errors or [("logging media", "rank zero failed (see its log)", None)]:
                self._report_error(trainer, stage, error, exc, during=during)

    def _compute(self, run: _Run) -> EvaluationReport | None:
        """This rank's share, explained and scored, then the gathered report (CPU); None after a failure."""
        trainer = run.trainer
        ok, _ = self._agreed(run, "reading the held-out set", lambda: self._read_heldout(run))
        ok = ok and self._step(run, "explaining the held-out set", lambda: self._evaluate_share(run))
        if ok and run.sanity:
            ok = self._step(run, "running the randomisation check", lambda: self._randomization(run, run.local))
        if not ok:
            return None
        run.curve_start = time.perf_counter()
        k = self._curve_subset_size(run)
        n, seed = len(run.held), self.budget.curve_seed
        low = curve_subset(n, self.budget.floor(n) if k is None else k, seed)
        if not self._step(run, "scoring the insertion/deletion curves", lambda: self._add_curves(run, run.local, low)):
            return None
        if k is None:  # the first evaluation of fit: time the smallest subset, then choose
            scored = int(low[run.local.index.cpu()][: run.count].sum())
            k = self._choose_curve_subset(run, (time.perf_counter() - run.curve_start) / max(1, scored))
            extra = curve_subset(n, k, seed) & ~low
            if bool(extra.any()) and not self._step(
                run, "scoring the insertion/deletion curves", lambda: self._add_curves(run, run.local, extra)
            ):
                return None
        ok, padded = self._agreed(run, "gathering the ranks' results", lambda: self._share(run))
        if not ok:
            return None
        return distributed.gather_padded(trainer.strategy, padded, run.local, len(run.held), trainer.world_size).to("cpu")

    def _step(self, run: _Run, during: str, work: Callable[[], EvaluationReport]) -> bool:
        """An agreed step that updates this rank's report."""
        ok, local = self._agreed(run, during, work)
        if ok:
            run.local = local
        return ok

    def _read_heldout(self, run: _Run) -> None:
        run.held = label_targets.explained_rows(self.options.target, self._ensure_heldout(run.trainer, run.stage),
                                                self.class_names)
        run.rows, run.count = distributed.shard_rows(len(run.held), run.trainer.global_rank, run.trainer.world_size)

    def _share(self, run: _Run) -> EvaluationReport:
        """This rank's report padded to the gathered shape (a dummy row explains nothing: zero seconds)."""
        local = run.local if run.count else distributed.zero_seconds(run.local)
        return distributed.pad_share(local, len(run.held), run.trainer.world_size)

    def _summarise(self, run: _Run, report: EvaluationReport, prefix: str) -> dict[str, float]:
        if run.stage == "val":  # the series follows training; validate/test runs do not advance it
            self.stability.update(report)
        return summarise(report, prefix, layer_in_key=self.layer_in_key, scope=self.key_scope,
                         per_class=self._per_class(report), class_names=self.class_names)

    def _per_class(self, report: EvaluationReport) -> list[int] | None:
        """The class indices of the ``per_class`` option (``"all"``: every class, named or present)."""
        wanted, names = self.options.per_class, self.class_names
        if wanted is None:
            return None
        if wanted == "all":
            return list(range(len(names))) if names else sorted(set(class_groups(report).tolist()))
        out = []
        for c in wanted:
            if isinstance(c, str) and not (names and c in names):
                raise ValueError(
                    f"CAMCallback: per_class names {c!r}, which is not a class of this data ({names or 'no class names'}); "
                    f"e.g. per_class={[names[0]] if names else [0]} or per_class='all' (or pass class_names=...)"
                )
            out.append(names.index(c) if isinstance(c, str) else int(c))
        return out

    def _alert(self, run: _Run, prefix: str, scalars: dict[str, float]) -> None:
        """Warn once per key that crosses its ``alert`` threshold: console, and the W&B summary (rank zero)."""
        alerts = self.alerts.check(scalars, prefix)
        trainer = run.trainer
        if not alerts or not trainer.is_global_zero:
            return
        when = f"epoch {trainer.current_epoch}, {STAGE_WORDS.get(run.stage, run.stage)}"
        self.alerts.messages += [a.message(when) for a in alerts]
        msg = f"CAMCallback alert (alert={self.options.alert}): " + "; ".join(a.message(when) for a in alerts)
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        for lg in getattr(trainer, "loggers", None) or []:
            if sinks.is_logger(lg, "WandbLogger"):
                lg.experiment.summary[callback_key("cam", "alerts", self.key_scope)] = list(self.alerts.messages)

    def _seconds(self, prefix: str, timing: dict[str, float], media: float, total: float) -> dict[str, float]:
        """The evaluation's seconds per part (this process's) and the image passes it ran."""
        parts = {part: float(timing.get(part, 0.0)) for part in ("explain", "scores", "curves", "randomization")}
        parts["media"] = media
        parts["other"] = max(0.0, total - sum(parts.values()))
        key = lambda name: callback_key(prefix, name, self.key_scope)  # noqa: E731
        out = {key("callback_seconds"): total, **{key(f"seconds/{p}"): v for p, v in parts.items()}}
        out[key("forwards")] = float(timing.get("forwards", 0.0))
        out[key("backwards")] = float(timing.get("backwards", 0.0))
        return out

    def _sinks(self, trainer: Any) -> list[Any]:
        """The sinks of this Trainer's loggers (and PNG/CSV files); call on every rank (``log_dir`` broadcasts)."""
        loggers = list(getattr(trainer, "loggers", []) or [])
        return sinks.sinks_for(loggers, sinks.png_dir(trainer, self.options.save_png))

    def _write_media(self, run: _Run, prefix: str, report: EvaluationReport) -> list[tuple[str, str, Exception]]:
        """Pictures and tables through every sink (rank zero); the failures as (what, traceback, error)."""
        trainer = run.trainer
        if not self.options.log_images or trainer.fast_dev_run:
            return []
        targets = self._sinks(trainer)
        if not trainer.is_global_zero:
            return []
        media = sinks.Media(
            report=report, held=run.held, stage=run.stage, prefix=prefix, epoch=trainer.current_epoch,
            step=_logging_step(trainer), display=self.options.display(*self._datamodule_stats),
            class_names=self.class_names, layer_in_key=self.layer_in_key, target=self.options.target,
            scope=self.key_scope,
        )
        errors = []
        for sink in targets:
            try:
                sink.write(media)
            except Exception as e:
                errors.append((f"logging media ({type(sink).__name__})", traceback.format_exc(), e))
        return errors

    def _warn_nonfinite(self, trainer: Any, stage: str, prefix: str, report: EvaluationReport) -> None:
        """One warning per evaluation when images were left out for non-finite logits, maps or scores."""
        bad = report.nonfinite
        if not bool(bad.any()) or not trainer.is_global_zero:
            return
        per = {
            row_label(layer if len(report.layers) > 1 else None, m): int((~r.finite.bool()).sum())
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

    def _report_error(self, trainer: Any, stage: str, error: str, exc: BaseException | None,
                      during: str = "explaining the held-out set") -> None:
        """Count a failed run; raise (``on_error="raise"``) or log the traceback and go on."""
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
        which = "test" if stage == "test" and opts.images is None else "fit"
        held = self._held.get(which)
        if held is None:
            restored = None if which == "test" else self._restored
            held = heldout.choose(trainer, stage, opts.images, opts.labels, opts.masks, opts.num_samples, opts.seed, restored)
            self._held[which] = held
            if self.class_names is None:
                self.class_names = heldout.class_names(trainer, from_dataset=opts.images is None)
            dm = getattr(trainer, "datamodule", None)
            self._datamodule_stats = (getattr(dm, "mean", None), getattr(dm, "std", None))
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

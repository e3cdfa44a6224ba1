"""The CAM callback as a package a newcomer reads from the file tree.

* :mod:`.cam_callback` - :class:`CAMCallback`: Lightning hooks and state only;
* :mod:`.options` - :class:`~lightning_cam.callback.options.CallbackOptions`, declared and checked once;
* :mod:`.heldout` - the fixed, seeded held-out set (never disturbs training);
* :mod:`.distributed` - rank sharding and gathering with the strategy's primitives;
* :mod:`.budget` - the cost budget (``max_overhead``): the size of the curve subset;
* :mod:`.stability` - the stability series over training;
* :mod:`.sinks` - pictures per logger kind (W&B, TensorBoard, PNG/CSV files, ``log_image``).

The pure evaluator the callback runs, :func:`lightning_cam.evaluation.evaluate`, and its report
live in :mod:`lightning_cam.evaluation` (importable without Lightning).
"""

from lightning_cam.callback.cam_callback import CAMCallback, for_package
from lightning_cam.evaluation import METRICS, STAGE_PREFIX, EvaluationReport, LayerReport, MethodReport, evaluate, metric_key

__all__ = [
    "CAMCallback",
    "EvaluationReport",
    "LayerReport",
    "METRICS",
    "MethodReport",
    "STAGE_PREFIX",
    "evaluate",
    "for_package",
    "metric_key",
]

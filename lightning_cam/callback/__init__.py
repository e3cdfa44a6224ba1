"""The CAM callback as a package a newcomer reads from the file tree.

* :mod:`.cam_callback` - :class:`CAMCallback`: Lightning hooks and state only;
* :mod:`.arguments` - the options, checked once;
* :mod:`.heldout` - the fixed, seeded held-out set (never disturbs training);
* :mod:`.evaluator` - :func:`evaluate`, the pure core: model + layer(s) +
  images -> :class:`EvaluationReport` (usable without a Trainer);
* :mod:`.summaries` - the one place naming the metric keys (and their directions);
* :mod:`.distributed` - rank sharding and gathering with the strategy's primitives;
* :mod:`.budget` - the cost budget (``max_overhead``);
* :mod:`.sinks` - pictures per logger kind (W&B, TensorBoard, PNG/CSV files, ``log_image``).
"""

from lightning_cam.callback.cam_callback import CAMCallback, for_package
from lightning_cam.callback.evaluator import EvaluationReport, LayerReport, MethodReport, evaluate
from lightning_cam.callback.summaries import METRICS, STAGE_PREFIX, metric_key

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

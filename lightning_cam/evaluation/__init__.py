"""Score explanations: model + layer(s) + images -> :class:`EvaluationReport`, without Lightning.

* :mod:`.options` - :class:`EvaluationOptions`, declared and checked once;
* :mod:`.keys` - the metric table and the logged key names;
* :mod:`.regions` - the mask-free regions (border band, centre, static boxes);
* :mod:`.report` - the report dataclasses and :func:`summarise` (report -> scalars);
* :mod:`.scoring` - explain and score batch by batch;
* :mod:`.curves` - the insertion / deletion curves (plan, subset, run);
* :mod:`.core` - :func:`evaluate`, the pipeline.
"""

from lightning_cam.evaluation.core import add_randomization, evaluate, layer_names, report_layers
from lightning_cam.evaluation.curves import add_curves, curve_forwards, curve_subset
from lightning_cam.evaluation.keys import METRIC_TABLE, METRICS, STAGE_PREFIX, metric_key
from lightning_cam.evaluation.options import EvaluationOptions
from lightning_cam.evaluation.report import EvaluationReport, LayerReport, MethodReport, class_means, map_tensors, summarise

__all__ = [
    "EvaluationOptions",
    "EvaluationReport",
    "LayerReport",
    "METRICS",
    "METRIC_TABLE",
    "MethodReport",
    "STAGE_PREFIX",
    "add_curves",
    "add_randomization",
    "class_means",
    "curve_forwards",
    "curve_subset",
    "evaluate",
    "layer_names",
    "map_tensors",
    "metric_key",
    "report_layers",
    "summarise",
]

"""The golden report: evaluate() on a fixed seeded model and held-out set gives the pinned scores.

``tests/golden/report.json`` was written by ``python tests/test_golden_report.py`` before the
evaluator moved to ``lightning_cam/evaluation`` and checked bit for bit after it on the same
machine. Elsewhere (another summation order, thread count, CPU) the scores move by rounding only:
logits by at most the network's reduction bound (``tolerance.forward_tol`` at the measured
magnitude), softmax scores, AUCs and map statistics by at most that (probabilities move by at
most half the logit change), Average Drop / Increase in Confidence percentages by 100 x
num_classes times it (they divide by Y >= 1 / num_classes). Two scores are discrete per image:
the pointing game (where the map's maximum is) and Increase in Confidence (whether O > Y); a
rounding-level near tie on another machine can flip one image, so their means may move by one
image's share (1/N of their range) and no more.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import NonlinearHead, TinyCNN  # noqa: E402
from tolerance import forward_tol, magnitude  # noqa: E402

from lightning_cam import evaluate  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "report.json"
METHODS = ["liftcam", "gradcam", "gradcam++", "xgradcam", "layercam", "ablationcam"]


def _case(cls: type) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    torch.manual_seed(1)
    model = cls().eval()
    x = torch.randn(6, 3, 16, 16)
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[:, 4:10, 3:12] = True
    marker = torch.zeros(6, 16, 16, dtype=torch.bool)
    marker[:, :3, :3] = True
    kw = dict(methods=METHODS, n_steps=8, batch_size=4, metric_batch_size=16, regions={"object": masks, "marker": marker},
              randomization="cascading", shap_samples=3, labels=torch.arange(6) % 3)
    return model, x, kw


def _scores(cls: type) -> dict[str, float]:
    model, x, kw = _case(cls)
    summary = evaluate(model, "features", x, **kw).summary()
    return {k: v for k, v in summary.items() if "seconds" not in k}


def test_golden_report_scores():
    golden = json.loads(GOLDEN.read_text())
    for cls in (TinyCNN, NonlinearHead):
        model, x, _ = _case(cls)
        got, want = _scores(cls), golden[cls.__name__]
        assert set(want) <= set(got), f"{cls.__name__}: keys missing: {set(want) - set(got)}"
        tol = forward_tol(model, magnitude(model, x))
        classes = 5 if cls is TinyCNN else 3
        n = x.shape[0]
        for key, value in want.items():
            scale = 100.0 * classes if ("average_drop" in key or "increase" in key) else 1.0
            bound = tol * scale
            if key.endswith(("/pointing_game", "/increase_in_confidence")):  # one image may flip
                bound = (100.0 if "increase" in key else 1.0) / n + tol * scale
            assert math.isclose(got[key], value, rel_tol=0.0, abs_tol=max(bound, 1e-12)), (
                f"{cls.__name__} {key}: {got[key]!r} != golden {value!r} (tolerance {bound:.2e})"
            )


if __name__ == "__main__":  # rewrite the golden file (only for a deliberate change of the scores)
    GOLDEN.write_text(json.dumps({cls.__name__: _scores(cls) for cls in (TinyCNN, NonlinearHead)}, indent=1, sort_keys=True))
    print(f"wrote {GOLDEN}")

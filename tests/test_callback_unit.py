"""CAMCallback without a Trainer loop: argument checks, statistics, rank sharding and gathering."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from lightning_cam import CAMCallback, heldout
from lightning_cam.callback import _pearson, _spearman

from tolerance import assert_within, forward_tol, scaled_tol, sum_tol
from _callback_helpers import LitTiny, ToyShapes, one_torch_thread  # noqa: F401


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"methods": ["liftcam", "nope"]}, r"unknown method\(s\) \['nope'\]; allowed: \[.*'gradcam'"),
        ({"methods": []}, "methods is empty"),
        ({"methods": ["gradcam", "GradCAM"]}, "duplicate"),
        ({"on_error": "ignore"}, r"on_error must be one of \('warn', 'raise'\)"),
        ({"num_samples": 0}, "num_samples must be an int >= 1"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"step": 4, "n_steps": 4}, "step or n_steps"),
        ({"colormap": "nope"}, "unknown colormap"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be > 0"),
        ({"labels": [1, 2]}, "without images"),
        ({"images": torch.rand(3, 3, 8, 8), "labels": [1, 2]}, "2 labels for 3 images"),
        ({"images": torch.rand(3, 3, 8, 8), "masks": torch.zeros(3, 4, 4)}, "masks are"),
        ({"alpha": 2}, "alpha"),
    ],
)
def test_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CAMCallback(**kwargs)


def test_method_aliases_are_canonical():
    cb = CAMCallback(methods=["LiftCAM", "gradcampp", "shapcam"])
    assert cb.methods == ["liftcam", "gradcam++", "shap"]
    assert CAMCallback(methods="gradcam").methods == ["gradcam"]


def test_unknown_target_layer_lists_candidates():
    cb = CAMCallback(target_layer="layer9")
    with pytest.raises(ValueError, match="Unknown target layer 'layer9'.*(Candidate|Did you mean)"):
        cb.setup(None, LitTiny(), "fit")
    cb = CAMCallback(target_layer="layer4")
    cb.setup(None, LitTiny(), "fit")
    assert cb._layer_name == "net.layer4"


def test_correlations_match_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 9, generator=g)
    b = a + 0.5 * torch.randn(4, 9, generator=g)
    b[1, :3] = b[1, 3]  # ties
    # float32 vs scipy's float64: four chained 9-term reductions (mean, centred products, two norms)
    # on O(1) values; ranks (spearman) are small integers, exact in float32
    tol = 4 * sum_tol(9)
    for i in range(4):
        assert math.isclose(float(_pearson(a, b)[i]), stats.pearsonr(a[i], b[i])[0], abs_tol=tol)
        assert math.isclose(float(_spearman(a, b)[i]), stats.spearmanr(a[i], b[i])[0], abs_tol=tol)
    assert torch.isnan(_pearson(torch.ones(1, 3), a[:1, :3])).all()


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_results_gather_to_the_single_process_ones(world):
    """Rank r explains rows r::W; padding + all_gather + reordering reproduce world=1 exactly."""
    torch.manual_seed(0)
    model = LitTiny().eval()
    ds = ToyShapes(7, seed=3)
    held = heldout.gather_from_dataset(ds, list(range(7)))
    cb = CAMCallback(
        target_layer="layer4", methods=["liftcam", "gradcam"], shap_samples=3, explain_batch_size=2, n_steps=8
    )
    cb.setup(None, model, "fit")
    cb._held = held
    single = cb._gather(model, cb._compute_local(model, held, 0, 1), 1, len(held))
    locals_ = [cb._compute_local(model, held, r, world) for r in range(world)]
    assert len({tuple(sorted(loc)) for loc in locals_}) == 1  # same keys on every rank
    assert len({loc["liftcam/insertion"].shape for loc in locals_}) == 1  # padded to equal sizes

    class FakeModule:  # what LightningModule.all_gather returns under DDP: (W, ...) stacks
        @staticmethod
        def all_gather(data):
            return {k: torch.stack([loc[k] for loc in locals_]) for k in data}

    multi = cb._gather(FakeModule(), locals_[0], world, len(held))
    # a shard runs other batch sizes than one process: other summation orders (tests/tolerance.py)
    rel = forward_tol(model.net, spatial=64)
    for key, value in single.items():
        if key == "count":
            assert float(multi[key].sum()) == float(value.sum())  # small integers: exact
        elif key.endswith("/seconds"):
            assert float(multi[key].sum()) >= 0  # wall time: no equality to expect
        else:
            assert_within(multi[key], value, rel, what=key)
    s1, s2 = cb._summarise(single), cb._summarise(multi)
    assert set(s1) == set(s2)
    for k in s1:
        if not k.endswith("/seconds"):
            assert s2[k] == pytest.approx(s1[k], abs=scaled_tol(rel, s1[k])), k
    assert {"cam/liftcam/pointing_game", "cam/liftcam/completeness_residual", "cam/gradcam/shap_pearson"} <= set(s1)
    with torch.no_grad():
        logits = model(held.images)
    assert s1["cam/liftcam/completeness_residual"] < forward_tol(model.net, float(logits.abs().max()), spatial=64)
    # LIFT-CAM is exact SHAP on this GAP+linear head: perfect coefficient agreement; two vectors equal
    # within a relative rel have a Pearson correlation within ~rel of 1 (plus its own 8-term sums)
    assert s1["cam/liftcam/shap_pearson"] == pytest.approx(1.0, abs=rel + 4 * sum_tol(8))


def test_more_ranks_than_images():
    model = LitTiny().eval()
    held = heldout.gather_from_dataset(ToyShapes(2, seed=3), [0, 1])
    cb = CAMCallback(target_layer="layer4", n_steps=4)
    cb.setup(None, model, "fit")
    loc = cb._compute_local(model, held, 3, 4)  # rank 3 of 4 has no image
    assert float(loc["count"]) == 0 and loc["liftcam/insertion"].shape == (1,)


def test_state_dict_roundtrip():
    cb = CAMCallback()
    assert cb.state_dict() == {}
    cb._held = heldout.HeldOut(torch.zeros(2, 3, 4, 4), None, None, [3, 8], "dataset", 10)
    state = cb.state_dict()
    assert state["indices"] == [3, 8] and state["source"] == "dataset" and "images" not in state
    cb2 = CAMCallback(seed=5)
    cb2.load_state_dict(state)
    assert cb2.state_dict()["indices"] == [3, 8]

"""CAMCallback without a Trainer loop: argument checks, statistics, rank sharding and gathering."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from lightning_cam import CAMCallback
from lightning_cam.callback import distributed, evaluate, heldout
from lightning_cam.metrics.monitoring import row_pearson, row_spearman

from tolerance import assert_within, forward_tol, scaled_tol, sum_tol
from _callback_helpers import LitTiny, ToyShapes, one_torch_thread  # noqa: F401


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"methods": ["liftcam", "nope"]}, r"CAMCallback: Unknown CAM method 'nope'\. Allowed: .*gradcam"),
        ({"methods": ["liftcma"]}, r"Unknown CAM method 'liftcma'\. Did you mean 'liftcam'\?"),
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
    assert cb.layer_names == {"layer4": "net.layer4"}


def test_correlations_match_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 9, generator=g)
    b = a + 0.5 * torch.randn(4, 9, generator=g)
    b[1, :3] = b[1, 3]  # ties
    pear, spear = row_pearson(a, b), row_spearman(a, b)
    # float32 vs scipy's float64: four chained 9-term reductions (mean, centred products, two norms)
    # on O(1) values; ranks (spearman) are small integers, exact in float32
    tol = 4 * sum_tol(9)
    for i in range(4):
        assert math.isclose(float(pear[i]), stats.pearsonr(a[i], b[i])[0], abs_tol=tol)
        assert math.isclose(float(spear[i]), stats.spearmanr(a[i], b[i])[0], abs_tol=tol)
    pear, spear = row_pearson(torch.ones(1, 3), a[:1, :3]), row_spearman(torch.ones(1, 3), a[:1, :3])  # a constant row has no correlation
    assert torch.isnan(pear).all() and torch.isnan(spear).all()


class FakeStrategy:
    """What a DDP strategy does for ``world`` ranks whose local reports are ``locals_``: all_gather
    stacks (W, ...) tensors in the order of the calls, reduce sums."""

    def __init__(self, locals_):
        self.locals_, self.calls = locals_, {}

    def all_gather(self, t):
        from lightning_cam.evaluation import map_tensors

        n = self.calls.setdefault("n", 0)
        self.calls["n"] = n + 1
        outs = []
        for loc, count in self.locals_:  # the n-th gathered tensor of every rank
            got = []
            map_tensors(distributed.pad_rows(loc, t.shape[0]), lambda x: got.append(x) or x)
            g = [x for x in got if x is not loc.fractions and x.ndim > 0]
            outs.append(g[n].to(t.dtype) if t.dtype == torch.uint8 and g[n].dtype == torch.bool else g[n])
        return torch.stack(outs)

    def reduce(self, t, reduce_op="sum"):
        return sum(torch.tensor([r.seconds for _, _, r in loc.items()], dtype=torch.float64) for loc, _ in self.locals_)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_results_gather_to_the_single_process_ones(world):
    """Rank r explains rows r::W; padding + all_gather + reordering reproduce world=1 exactly."""
    torch.manual_seed(0)
    model = LitTiny().eval()
    ds = ToyShapes(7, seed=3)
    kw = dict(methods=["liftcam", "gradcam"], batch_size=2, n_steps=8)
    single = evaluate(model, "layer4", ds.images, ds.labels, ds.masks, shap_samples=3, **kw)
    locals_ = []
    for r in range(world):
        rows, count = distributed.shard_rows(7, r, world)
        idx = torch.tensor(rows)
        loc = evaluate(model, "layer4", ds.images[idx], ds.labels[idx], ds.masks[idx], shap_on=idx < 3, **kw)
        locals_.append((loc, count))
    multi = distributed.gather_report(FakeStrategy(locals_), locals_[0][0], locals_[0][1], 7, world)
    # a shard runs other batch sizes than one process: other summation orders (tests/tolerance.py)
    rel = forward_tol(model.net, spatial=64)
    for (layer, m, r1), (_, _, r2) in zip(single.items(), multi.items()):
        for f in ("saliency", "insertion", "deletion", "insertion_curve", "average_drop", "pointing_game",
                  "energy_pointing_game", "shap_pearson"):
            a, b = getattr(r1, f), getattr(r2, f)
            if a is None:
                assert b is None, (m, f)
                continue
            assert_within(b, a, rel, what=f"{m}/{f}")
        assert r2.seconds > 0
    torch.testing.assert_close(multi.predictions, single.predictions)
    s1, s2 = single.summary(), multi.summary()
    assert set(s1) == set(s2)
    for k in s1:
        if not k.endswith("/seconds"):
            assert s2[k] == pytest.approx(s1[k], abs=scaled_tol(rel, s1[k])), k
    assert {"cam/liftcam/pointing_game", "cam/liftcam/completeness_residual", "cam/gradcam/shap_pearson"} <= set(s1)
    with torch.no_grad():
        logits = model(ds.images)
    assert s1["cam/liftcam/completeness_residual"] < forward_tol(model.net, float(logits.abs().max()), spatial=64)
    # LIFT-CAM is exact SHAP on this GAP+linear head: perfect coefficient agreement; two vectors equal
    # within a relative rel have a Pearson correlation within ~rel of 1 (plus its own 8-term sums)
    assert s1["cam/liftcam/shap_pearson"] == pytest.approx(1.0, abs=rel + 4 * sum_tol(8))


def test_more_ranks_than_images():
    rows, count = distributed.shard_rows(2, 3, 4)  # rank 3 of 4 has no image: one dummy row
    assert rows == [0] and count == 0


def test_state_dict_roundtrip():
    """What load_state_dict reads is what state_dict writes (before the first run, the restored state)."""
    cb = CAMCallback()
    assert cb.state_dict() == {}
    state = {"source": "dataset", "indices": [3, 8], "budget": {"curve_images": 5}, "stability": {"count": 2}}
    cb2 = CAMCallback(seed=5)
    cb2.load_state_dict(state)
    assert cb2.state_dict() == state and cb2.budget.curve_images == 5 and cb2.stability.count == 2


class _Stream(torch.utils.data.IterableDataset):
    """An iterable validation set; ``broken`` makes reading it fail on this rank."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken

    def __iter__(self):
        if self.broken:
            raise OSError("shard unreadable")
        for i in range(8):
            yield torch.full((3, 8, 8), float(i)), i % 2


class _Rank:
    """What heldout.choose needs of a Trainer on one rank of two: loaders, world size, a broadcast
    that returns rank zero's object (``from_rank_zero``; on rank zero itself, its own)."""

    def __init__(self, broken: bool, from_rank_zero=None, rank: int = 1) -> None:
        self.val_dataloaders = torch.utils.data.DataLoader(_Stream(broken), batch_size=4)
        self.world_size, self.global_rank, self.broadcasts = 2, rank, 0
        self.strategy = self
        self._sent = from_rank_zero

    def broadcast(self, obj, src=0):
        self.broadcasts += 1
        return obj if self.global_rank == 0 else self._sent


def test_iterable_heldout_reaches_the_broadcast_on_every_rank():
    """A rank whose loader fails still joins rank zero's broadcast (else rank zero waits forever)
    and takes rank zero's images; when rank zero's reading fails, every rank gets a clear error."""
    zero = _Rank(broken=False, rank=0)
    sent = heldout.choose(zero, "val", None, None, None, 4, 0)
    assert zero.broadcasts == 1 and sent.images.shape == (4, 3, 8, 8)
    one = _Rank(broken=True, from_rank_zero=sent)
    got = heldout.choose(one, "val", None, None, None, 4, 0)
    assert one.broadcasts == 1 and torch.equal(got.images, sent.images)
    failed_zero = _Rank(broken=True, rank=0)
    with pytest.raises(RuntimeError, match="rank 0: OSError: shard unreadable"):
        heldout.choose(failed_zero, "val", None, None, None, 4, 0)
    assert failed_zero.broadcasts == 1
    other = _Rank(broken=False, from_rank_zero=None)
    with pytest.raises(RuntimeError, match="see rank 0's log"):
        heldout.choose(other, "val", None, None, None, 4, 0)
    assert other.broadcasts == 1

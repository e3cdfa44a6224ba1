"""torchmetrics classes: accumulation == one-shot computation, and sum-reduction sync semantics."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torchmetrics.utilities.data import dim_zero_sum

from tolerance import assert_within, forward_tol, magnitude, sum_tol
from lightning_cam.metrics import (
    ConfidenceChange,
    InsertionDeletion,
    PointingGame,
    confidence_change,
    insertion_deletion,
    pointing_game,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 7),
    ).eval()  # fmt: skip


def _data(seed: int = 0, b: int = 9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    sal = torch.rand(b, 4, 4, generator=g)
    masks = torch.rand(b, 16, 16, generator=g) > 0.7
    masks[2] = False  # one empty mask
    return x, sal, masks


def _rel(net: nn.Module, x: torch.Tensor) -> float:
    """Accumulated batches vs one shot run other batch sizes (other kernels): the logit bound of
    tests/tolerance.py; probabilities move by half of it, and Average Drop divides by Y, the
    top-1 probability, which is at least 1/7 (7 classes), so 7 times the probability bound."""
    logit = forward_tol(net, magnitude(net, torch.full_like(x[:1], float(x.abs().max()))), spatial=64)
    return 7 * logit / 2 + sum_tol(x.shape[0])


REL = _rel(_net(), _data()[0])  # every test below uses _net() and _data() of 9 images


def _close(a: dict, b: dict, rel: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert_within(a[k], b[k], rel, what=k)  # percentages scale the bound by their size


def _one_shot(net, x, sal, masks):
    r = insertion_deletion(net, x, sal, step=32)
    c = confidence_change(net, x, sal)
    p = pointing_game(sal, masks, tolerance=1)
    return (
        {"insertion": r.insertion.mean(), "deletion": r.deletion.mean(), "nonfinite": 0},
        {
            "average_drop": c.average_drop,
            "increase_in_confidence": c.increase_in_confidence,
            "average_drop_in_deletion": c.average_drop_in_deletion,
            "nonfinite": 0,
        },
        {"pointing_game": p.accuracy, "energy": p.mean_energy, "excluded": int((~p.valid).sum())},
    )


def _metrics(net):
    return InsertionDeletion(net, step=32), ConfidenceChange(net), PointingGame(tolerance=1)


def test_accumulating_three_batches_equals_one_shot():
    net = _net()
    x, sal, masks = _data()
    ref = _one_shot(net, x, sal, masks)
    ins_del, conf, point = _metrics(net)
    for sl in (slice(0, 2), slice(2, 7), slice(7, 9)):
        ins_del.update(x[sl], sal[sl])
        conf.update(x[sl], sal[sl])
        point.update(sal[sl], masks[sl])
    _close(ins_del.compute(), ref[0], REL)
    _close(conf.compute(), ref[1], REL)
    _close(point.compute(), ref[2], REL)
    assert int(point.total) == 8 and int(point.excluded) == 1


def test_update_with_precomputed_results_and_forward():
    net = _net()
    x, sal, masks = _data()
    m = InsertionDeletion()
    m.update(insertion_deletion(net, x[:4], sal[:4], step=32))
    batch_value = m(insertion_deletion(net, x[4:], sal[4:], step=32))  # forward: value of this batch
    r_all = insertion_deletion(net, x, sal, step=32)
    r_last = insertion_deletion(net, x[4:], sal[4:], step=32)
    rel = _rel(net, x)
    assert_within(batch_value["insertion"], r_last.insertion.mean(), rel, what="insertion")
    assert_within(m.compute()["deletion"], r_all.deletion.mean(), rel, what="deletion")
    with pytest.raises(ValueError, match="without a model"):
        InsertionDeletion().update(x, sal)


def test_model_is_not_a_submodule():
    net = _net()
    m = InsertionDeletion(net)
    assert list(m.children()) == [] and all("weight" not in k for k in m.state_dict())
    assert sum(1 for _ in m.parameters()) == 0


def test_empty_metrics_compute_zero_not_nan():
    for m in (InsertionDeletion(), ConfidenceChange(), PointingGame()):
        with pytest.warns(UserWarning):
            out = m.compute()
        assert all(torch.isfinite(torch.as_tensor(v).float()) for v in out.values())


def _split_states(net):
    """Two 'ranks' with different data and batch sizes, plus the one-shot reference over both."""
    x, sal, masks = _data(b=9)
    ranks = []
    for sl in (slice(0, 3), slice(3, 9)):
        ms = _metrics(net)
        ms[0].update(x[sl], sal[sl])
        ms[1].update(x[sl], sal[sl])
        ms[2].update(sal[sl], masks[sl])
        ranks.append(ms)
    return ranks, _one_shot(net, x, sal, masks)


def test_sync_sums_states_across_processes():
    """Emulate DDP: a gather function returning every rank's copy of each state, in state order;
    the metrics reduce with ``dist_reduce_fx="sum"``, so the synced result is the global mean
    over all images (not the mean of the per-rank means: ranks hold 3 and 6 images)."""
    net = _net()
    ranks, ref = _split_states(net)
    for k in range(3):
        m0, m1 = ranks[0][k], ranks[1][k]
        local = {name: v.clone() for name, v in m0.metric_state.items()}

        def gather(t, group=None, _m1=m1, _order=list(m0.metric_state)):
            # called once per state, in state order; find which state this is by identity
            name = next(n for n in _order if getattr(m0, n) is t)
            return [t, getattr(_m1, name)]

        m0.dist_sync_fn = gather
        m0.distributed_available_fn = lambda: True
        _close(m0.compute(), ref[k], REL)  # compute() syncs (sums), then restores the local states
        for name, v in m0.metric_state.items():
            assert torch.equal(v, local[name]), name
        assert all(fx is dim_zero_sum for fx in m0._reductions.values())  # dist_reduce_fx='sum'
    # (the synced value equals the one-shot mean over all 9 images above; on this data the mean of the
    # per-rank means is within the round-off bound of it, so no inequality is asserted here)
    # merge_state uses the same reductions
    ranks, ref = _split_states(net)
    for k in range(3):
        ranks[0][k].merge_state(ranks[1][k])
        _close(ranks[0][k].compute(), ref[k], REL)


def _ddp_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = _net()
        x, sal, masks = _data(b=9)
        sl = slice(0, 3) if rank == 0 else slice(3, 9)
        ms = _metrics(net)
        ms[0].update(x[sl], sal[sl])
        ms[1].update(x[sl], sal[sl])
        ms[2].update(sal[sl], masks[sl])
        out = [{k: float(v) for k, v in m.compute().items()} for m in ms]
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_real_gloo_ddp_sync(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = str(tmp_path / "init")
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, init_file, queue)) for r in range(2)]
    env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
    assert all(p.exitcode == 0 for p in procs)
    net = _net()
    ref = _one_shot(net, *_data(b=9))
    for rank in (0, 1):
        for k in range(3):
            _close(results[rank][k], ref[k], REL)

"""The fault matrix: a failure on one rank at every step of an evaluation, under real DDP (2 CPU
processes, gloo). In every case every rank returns (the test has a timeout), every rank reports and
counts the error, training goes on with ``on_error="warn"`` and the next evaluation works; with
``on_error="raise"`` every rank stops.

A subclass of the callback injects the failure through the one place every step goes through
(``CAMCallbackMixin._agreed``) and through the sinks (``CAMCallbackMixin._sinks``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from _callback_helpers import LitTiny, ToyDataModule, ToyShapes, one_torch_thread, trainer_kwargs  # noqa: F401
from lightning_cam import CAMCallback

#: (epoch, step that fails, rank that fails), one evaluation each; the last epoch has no failure
STEPS = [
    "reading the held-out set",
    "explaining the held-out set",
    "running the randomisation check",
    "scoring the insertion/deletion curves",
    "gathering the ranks' results",
    "summarising the scores",
    "logging media",
]
PLAN = {epoch: (step, epoch % 2) for epoch, step in enumerate(STEPS)}


class BrokenSink:
    def write(self, media) -> None:  # noqa: ANN001
        raise OSError("disk full (injected)")


class FaultyCAMCallback(CAMCallback):
    """Fails at ``plan[epoch] = (step, rank)``; writes each rank's count of reported errors."""

    def __init__(self, out_dir: str, plan: dict[int, tuple[str, int]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_dir, self.plan, self.logged_epochs = out_dir, plan, []

    def _due(self, trainer, step: str) -> bool:  # noqa: ANN001
        return self.plan.get(trainer.current_epoch) == (step, trainer.global_rank)

    def _agreed(self, run, during, work):  # noqa: ANN001
        if self._due(run.trainer, during):
            def work():  # noqa: ANN202
                raise RuntimeError(f"injected failure while {during} on rank {run.trainer.global_rank}")
        return super()._agreed(run, during, work)

    def _sinks(self, trainer):  # noqa: ANN001
        found = super()._sinks(trainer)
        return [BrokenSink(), *found] if self._due(trainer, "logging media") else found

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        before = self.last_scalars
        super().on_validation_epoch_end(trainer, pl_module)
        if self.last_scalars is not before:  # a new evaluation's scalars were logged
            self.logged_epochs.append(trainer.current_epoch)

    def on_fit_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        super().on_fit_end(trainer, pl_module)
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"errors": self.num_errors, "logged": self.logged_epochs, "epoch": trainer.current_epoch})
        )


def _callback(tmp_path: Path, plan: dict, **kw) -> FaultyCAMCallback:
    return FaultyCAMCallback(
        str(tmp_path), plan, target_layer="layer4", methods=["liftcam", "gradcam"], num_samples=6, n_steps=4,
        max_overhead=None, sanity_every_n_epochs=1, save_png=True, **kw,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failure_at_any_step_on_one_rank_is_reported_everywhere_and_training_goes_on(tmp_path):
    cb = _callback(tmp_path, PLAN)
    epochs = len(STEPS) + 1
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], devices=2, strategy="ddp_spawn", max_epochs=epochs))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=8))  # warnings stay in the rank processes
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # one error per failing step, counted on both ranks; training reached its last epoch
        assert got["errors"] == len(STEPS) and got["epoch"] == epochs, got
        # the steps before the scalars failed: nothing logged then; media fail after the scalars;
        # the evaluation after the last failure works
        assert got["logged"] == [STEPS.index("logging media"), epochs - 1], got
    assert (tmp_path / "cam" / f"epoch{epochs - 1}_overview.png").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("step", ["explaining the held-out set", "logging media"])
def test_on_error_raise_stops_every_rank(tmp_path, step):
    """The failing rank's error stops the run; the other rank raises too instead of waiting."""
    cb = _callback(tmp_path, {0: (step, 1 if step != "logging media" else 0)}, on_error="raise")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], devices=2, strategy="ddp_spawn", max_epochs=2))
    with pytest.raises(Exception, match="CAMCallback failed"):  # the spawned rank's RuntimeError
        trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=16, n_val=8))
    assert not (tmp_path / "rank0.json").exists() and not (tmp_path / "rank1.json").exists()


class StreamOfShapes(torch.utils.data.IterableDataset):
    """An iterable validation set (no indices: the held-out set is read by iterating). On
    ``broken_rank``, its second iteration fails: Lightning's validation loop reads it first, the
    callback's held-out reading second."""

    def __init__(self, n: int, broken_rank: int | None) -> None:
        self.data, self.broken_rank, self.iterations = ToyShapes(n, seed=2), broken_rank, 0

    def __iter__(self):
        import torch.distributed as dist

        self.iterations += 1
        if self.iterations == 2 and dist.is_initialized() and dist.get_rank() == self.broken_rank:
            raise OSError("shard unreadable (injected)")
        yield from (self.data[i] for i in range(len(self.data)))


class StreamModule(ToyDataModule):
    def __init__(self, broken_rank: int) -> None:
        super().__init__(n_train=16, n_val=8)
        self.broken_rank = broken_rank

    def setup(self, stage=None):
        super().setup(stage)
        self.stream = StreamOfShapes(self.n_val, self.broken_rank)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.stream, batch_size=4)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broken_rank, errors, logged", [(1, 0, [0, 1]), (0, 1, [1])])
def test_an_iterable_heldout_set_unreadable_on_one_rank(tmp_path, broken_rank, errors, logged):
    """Reading an iterable held-out set fails on one rank at the first evaluation. Rank one's
    failure costs nothing (rank zero's images serve both ranks, broadcast); rank zero's is an error
    on both ranks, and the next evaluation reads the set again and works."""
    cb = _callback(tmp_path, {})
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], devices=2, strategy="ddp_spawn", max_epochs=2))
    trainer.fit(LitTiny(), datamodule=StreamModule(broken_rank))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["errors"] == errors and got["logged"] == logged, got

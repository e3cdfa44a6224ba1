"""The sinks: every picture, table and file of a CAMCallback is its own when several share a Trainer;
MLflow runs hold the callback's pictures and CSV as artifacts."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from lightning_cam import CAMCallback

from _callback_helpers import LitTiny, ToyDataModule, one_torch_thread, trainer_kwargs  # noqa: F401
from wandb_offline import read_offline_run

SCOPES = ("layer4:gradcam+hirescam", "layer4:liftcam+hirescam")


def _two_callbacks(**kw) -> list[CAMCallback]:
    """Two CAMCallbacks on one layer, with other methods."""
    opts = dict(target_layer="layer4", num_samples=4, n_steps=4, max_overhead=None, max_images=4, **kw)
    return [CAMCallback(methods=["gradcam", "hirescam"], **opts), CAMCallback(methods=["liftcam", "hirescam"], **opts)]


@pytest.mark.slow
def test_two_callbacks_on_one_layer_keep_their_pictures_and_tables_apart_in_wandb(tmp_path, monkeypatch):
    import wandb

    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="cam-test")
    a, b = _two_callbacks(save_png=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=logger, callbacks=[a, b], max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=6))
    wandb.finish()
    assert (a.key_scope, b.key_scope) == SCOPES

    run = read_offline_run(tmp_path)
    keys = run.keys()
    for scope, method in zip(SCOPES, ("gradcam", "liftcam")):
        assert {f"cam/{scope}/overview", f"cam/{scope}/table", f"cam/{scope}/agreement",
                f"cam/{scope}/curves/insertion_table", f"cam/{scope}/agreement_table"} <= keys, sorted(keys)
        assert f"{method}_insertion" in " ".join(run.table(f"cam/{scope}/table")["columns"])
    assert not {"cam/overview", "cam/table", "cam/layer4/overview"} & keys
    # the PNG and CSV files of both callbacks, side by side
    names = {p.name for p in tmp_path.rglob("epoch0_*")}
    for scope in ("layer4-gradcam+hirescam", "layer4-liftcam+hirescam"):
        assert {f"epoch0_{scope}_overview.png", f"epoch0_{scope}_agreement.png", f"epoch0_{scope}_scores.csv"} <= names, names


@pytest.mark.slow
def test_mlflow_run_holds_grids_agreement_and_csv_as_artifacts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLFlowLogger(experiment_name="cam", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))
    callbacks = _two_callbacks()
    trainer = pl.Trainer(**trainer_kwargs(work, logger=logger, callbacks=callbacks, max_epochs=1))
    trainer.fit(LitTiny(), datamodule=ToyDataModule(n_train=8, n_val=6))

    client = MlflowClient(tracking_uri=uri)
    names = {f.path.removeprefix("cam/") for f in client.list_artifacts(logger.run_id, "cam")}
    for scope in ("layer4-gradcam+hirescam", "layer4-liftcam+hirescam"):
        assert {f"epoch0_{scope}_overview.png", f"epoch0_{scope}_agreement.png", f"epoch0_{scope}_scores.csv"} <= names, names
    csv_file = client.download_artifacts(logger.run_id, "cam/epoch0_layer4-liftcam+hirescam_scores.csv", str(tmp_path))
    header = open(csv_file).readline()
    assert "liftcam_insertion" in header and "gradcam" not in header
    assert "cam/layer4/liftcam/insertion" in client.get_run(logger.run_id).data.metrics
    assert not list(work.rglob("*.png")) and not list(work.rglob("*.csv"))  # nothing in the working directory

"""Sweep comparison: the Hydra callback's files from job folders, and from a real multirun."""

from __future__ import annotations

import csv
import json

import pytest
from omegaconf import OmegaConf

from lightning_cam.app.sweep import SweepComparison, collect_jobs, write_comparison
from test_train import TINY, _out, run_train


def _job(root, name, overrides, metrics):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps({"metrics": metrics, "seconds": 1.0}))


def test_comparison_files_from_job_folders(tmp_path, capsys):
    (tmp_path / ".hydra").mkdir()  # the sweep's own folder: not a job
    (tmp_path / ".hydra" / "multirun.yaml").write_text("{}")
    _job(tmp_path, "0", ["model=a"], {"val/acc": 0.5, "cam/liftcam/insertion": 0.7, "cam/liftcam/energy/marker": 0.2,
                                       "train/loss": 1.0})
    _job(tmp_path, "1", ["model=b"], {"val/acc": 0.9, "cam/gradcam/insertion": 0.6})
    _job(tmp_path, "10", ["model=c"], None)  # a failed job: listed, no numbers
    jobs = collect_jobs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1", "10"]
    SweepComparison().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert [r["overrides"] for r in rows] == ["model=a", "model=b", "model=c"]
    assert list(rows[0]) == ["job", "overrides", "status", "val/acc", "cam/gradcam/insertion",
                             "cam/liftcam/energy/marker", "cam/liftcam/insertion"]
    assert rows[0]["cam/liftcam/insertion"] == "0.7000" and rows[1]["cam/liftcam/insertion"] == ""
    assert rows[2]["status"] == "no metrics.json" and rows[1]["val/acc"] == "0.9000"
    md = (tmp_path / "comparison.md").read_text()
    assert "| 1 | model=b | ok | 0.9000 | 0.6000 |  |  |" in md
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "Sweep comparison (3 jobs)" in out and "cam/liftcam/energy/marker" in out


def test_disabled_callback_writes_nothing(tmp_path):
    _job(tmp_path, "0", ["model=a"], {"val/acc": 0.5})
    SweepComparison(enabled=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert not (tmp_path / "comparison.csv").exists()


@pytest.mark.slow
def test_real_two_job_multirun_writes_comparison(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_train(
        ["-m", "seed=1,2", *TINY, "data.num_train=64", "data.num_val=16",
         "cam.num_samples=4", f"hydra.sweep.dir={sweep}", "callbacks=none", "logger=none"],
        cwd=tmp_path,
    )
    assert p.returncode == 0, _out(p)[-4000:]
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [r["overrides"] for r in rows] == ["seed=1", "seed=2"] and [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        assert 0.0 <= float(r["val/acc"]) <= 1.0
        for m in ("liftcam", "gradcam"):
            assert 0.0 <= float(r[f"cam/{m}/insertion"]) <= 1.0
    assert (sweep / "comparison.md").read_text().count("\n| ") == 3  # header + 2 jobs (separator starts "|-")
    assert (sweep / "comparison.png").stat().st_size > 1000
    assert "Sweep comparison (2 jobs)" in _out(p)

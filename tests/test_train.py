"""End to end: real ``python train.py`` runs (subprocesses, tiny settings, CPU, W&B offline).

* one run -> a W&B offline run holding the callback's cam/* keys and its images,
  outputs only in the Hydra run dir, a summary printed;
* a 2-architecture multirun -> two separate, finished, grouped W&B runs;
* a 2-process DDP run on CPU (gloo);
* bad configs -> the documented error, before training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wandb_offline import find_run_files, iter_records, read_run_file

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train.py")
# tiny but real: 96 train / 32 val images at 32 px, 1 epoch, 8 held-out images
TINY = [
    "data.num_train=96",
    "data.num_val=32",
    "data.batch_size=32",
    "model.image_size=32",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "cam.num_samples=8",
    "cam.n_steps=8",
    "cam.max_overhead=null",  # every held-out image (the 10 % budget would score the minimum, 8 of them)
    "cam.methods=[liftcam,gradcam]",
]


def run_train(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1",
              "PYTHONPATH": str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")})
    if env:
        e.update(env)
        for k, v in env.items():
            if v is None:
                e.pop(k)
    return subprocess.run([sys.executable, TRAIN, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def _out(p: subprocess.CompletedProcess) -> str:
    return p.stdout + "\n" + p.stderr


def run_info(path: Path) -> dict:
    """Run id, group and whether the run finished (exit record) of a .wandb file."""
    info = {"id": None, "group": None, "exit": False, "exit_code": None}
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info["id"], info["group"] = rec.run.run_id, rec.run.run_group
        elif kind == "exit":
            info["exit"], info["exit_code"] = True, rec.exit.exit_code
    return info


def _snapshot(root: Path) -> set[str]:
    skip = {".git", ".pytest_cache", "__pycache__"}
    return {str(p.relative_to(root)) for p in root.rglob("*") if not (set(p.relative_to(root).parts) & skip)}


@pytest.mark.slow
def test_single_run_logs_cam_keys_to_wandb_offline(tmp_path):
    before = _snapshot(ROOT)
    p = run_train([*TINY, "cam.methods=[liftcam,gradcam,gradcam++]"], cwd=tmp_path)
    assert p.returncode == 0, _out(p)[-4000:]
    out = _out(p)
    # everything under <cwd>/outputs/train/runs/<time>: Hydra's run dir
    run_dirs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    assert "Where things are" in out and str(run_dir) in out.replace("\n", "").replace("│", "").replace(" ", "") or str(run_dir) in out
    assert "CAM faithfulness" in out and "liftcam" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert "val/acc" in metrics and "cam/liftcam/insertion" in metrics
    assert (run_dir / ".hydra" / "config.yaml").exists() and list((run_dir / "checkpoints").glob("*.ckpt"))

    files = find_run_files(run_dir)
    assert len(files) == 1
    run = read_run_file(files[0])
    keys = run.keys()
    for method in ("liftcam", "gradcam", "gradcam++"):
        for metric in ("insertion", "deletion", "average_drop", "increase_in_confidence", "pointing_game", "seconds"):
            assert f"cam/{method}/{metric}" in keys, sorted(keys)
    assert "cam/liftcam/completeness_residual" in keys and "val/acc" in keys and "train/loss_epoch" in keys
    assert run.media("images"), "the callback's heatmap grids should be in the W&B run"
    assert run.config.get("model", {}).get("name") == "smallcnn"  # resolved Hydra config logged
    info = run_info(files[0])
    assert info["exit"] and info["exit_code"] == 0
    # nothing written into the source tree (other processes may touch it, so look for run outputs)
    new = _snapshot(ROOT) - before
    suspicious = {"outputs", "multirun", "wandb", "lightning_logs", "checkpoints", "cam", "csv", "tensorboard"}
    assert not [n for n in new if set(Path(n).parts) & suspicious or n.endswith((".ckpt", ".wandb", ".png"))], new


@pytest.mark.slow
def test_multirun_two_architectures_two_finished_grouped_runs(tmp_path):
    p = run_train(
        ["-m", "model=smallcnn,resnet18", *TINY, "model.image_size=64", "data.num_train=64", "data.num_val=16",
         "cam.num_samples=4", "cam.methods=[liftcam]", "cam.max_overhead=null", f"hydra.sweep.dir={tmp_path / 'sweep'}", "callbacks=none"],
        cwd=tmp_path,
    )
    assert p.returncode == 0, _out(p)[-4000:]
    files = find_run_files(tmp_path / "sweep")
    assert len(files) == 2, files
    infos = [run_info(f) for f in files]
    assert all(i["exit"] and i["exit_code"] == 0 for i in infos), infos  # each job called wandb.finish()
    assert infos[0]["id"] != infos[1]["id"]
    assert infos[0]["group"] == infos[1]["group"] == "train-sweep"
    names = sorted(read_run_file(f).config["model"]["name"] for f in files)
    assert names == ["resnet18", "smallcnn"]
    for f in files:
        assert "cam/liftcam/insertion" in read_run_file(f).keys()
    assert {d.name for d in (tmp_path / "sweep").iterdir() if d.is_dir()} >= {"0", "1"}


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    p = run_train(
        ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *TINY, "cam.max_overhead=0.1",
         "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert p.returncode == 0, _out(p)[-4000:]
    files = find_run_files(tmp_path / "run")
    assert len(files) == 1  # only rank zero logs
    run = read_run_file(files[0])
    assert "cam/liftcam/average_drop" in run.keys() and "val/acc" in run.keys()
    # insertion/deletion at both validation epochs under the budget, on rank zero's chosen subset
    assert len(run.rows_with("cam/liftcam/insertion")) == 2
    assert run_info(files[0])["exit"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["cam/liftcam/average_drop"] <= 100.0
    # the budget's choice comes from rank zero (broadcast): both ranks took part, nothing hung,
    # and the subset size is logged (a whole number of images)
    assert metrics["cam/curve_images"] >= 1 and float(metrics["cam/curve_images"]).is_integer()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,env,message",
    [
        (["cam.methods=[liftcam,gradcamm]"], {}, "Unknown CAM method 'gradcamm'"),
        (["model=resnet18", "cam.target_layer=layer5"], {}, "Unknown target layer 'layer5'"),
        (["data=imagefolder", "data.data_dir=/nonexistent/imagenet"], {}, "ImageFolder path not found"),
        (["logger.wandb.mode=online"], {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": "{tmp}", "NETRC": "{tmp}/.netrc"},
         "logger.wandb.mode=offline"),
    ],
    ids=["method", "layer", "imagefolder", "wandb-online"],
)
def test_bad_configs_fail_before_training(tmp_path, args, env, message):
    env = {k: (v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in env.items()}
    p = run_train([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, timeout=120)
    out = _out(p)
    assert p.returncode == 2, out[-3000:]
    assert "Configuration error" in out and message in " ".join(out.replace("│", " ").split()), out[-3000:]
    assert not (tmp_path / "run").exists()  # a failed config leaves no run folder behind


@pytest.mark.slow
def test_missing_dataset_fails_first_and_leaves_no_wandb_run(tmp_path):
    """data=cifar10 without the files (offline): the error box comes before the config tree and any
    W&B line, no W&B run is started, and the job log holds the error."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the user's file keeps the run folder")  # so that train.log can be read
    p = run_train(["data=cifar10", f"data.data_dir={tmp_path / 'nodata'}", "data.download=false",
                   "extras.print_config=true", f"hydra.run.dir={run}"], cwd=tmp_path, timeout=120)
    out = _out(p)
    assert p.returncode == 2, out[-3000:]
    assert "Dataset not available" in out and "CIFAR-10 is not available" in out
    assert "CONFIG" not in out and "wandb" not in out.lower().replace("wandb_", ""), out[-3000:]
    assert not (run / "wandb").exists() and not list(run.rglob("*.wandb"))
    assert "CIFAR-10 is not available" in (run / "train.log").read_text()


@pytest.mark.slow
def test_fit_then_test_two_layers_metrics_json_keeps_both_stages(tmp_path):
    """cam.target_layer as a list; test=true: validation (cam/...) and test (cam_test/...) scores both kept."""
    p = run_train([*TINY, "cam.methods=[liftcam]", "cam.target_layer=[features.3,features]", "test=true",
                   "logger=csv", "data.num_test=16"], cwd=tmp_path)
    assert p.returncode == 0, _out(p)[-4000:]
    run_dir = next((tmp_path / "outputs" / "train" / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for layer in ("features.3", "features"):
        assert f"cam/{layer}/liftcam/insertion" in metrics and f"cam_test/{layer}/liftcam/insertion" in metrics
    assert "trainer.test" in _out(p)  # the summary prints the test scores' table too


@pytest.mark.slow
def test_everything_in_the_run_dir_log_file_and_no_library_noise(tmp_path):
    """HOME is an empty folder: a real run writes nothing there (W&B cache, data, artifact staging
    go to the run directory), nothing in the working directory outside the run directory,
    train.log holds the run's log, and the known library notices are gone."""
    home, cwd, mpl = tmp_path / "home", tmp_path / "cwd", tmp_path / "mpl"
    for d in (home, cwd, mpl):
        d.mkdir()
    # MPLCONFIGDIR: matplotlib's font cache is the user's, built once by any matplotlib import
    env = {"HOME": str(home), "MPLCONFIGDIR": str(mpl), "XDG_CACHE_HOME": None, "XDG_CONFIG_HOME": None,
           "XDG_DATA_HOME": None, "WANDB_DIR": None, "WANDB_CACHE_DIR": None, "WANDB_DATA_DIR": None,
           "WANDB_ARTIFACT_DIR": None, "WANDB_CONFIG_DIR": None}
    p = run_train([*TINY, "data.num_train=32", "data.num_val=16", "cam.num_samples=4"], cwd=cwd, env=env)
    out = _out(p)
    assert p.returncode == 0, out[-4000:]
    assert sorted(str(x.relative_to(home)) for x in home.rglob("*")) == []
    (run_dir,) = (cwd / "outputs" / "train" / "runs").iterdir()
    assert [x.name for x in cwd.iterdir()] == ["outputs"]
    assert find_run_files(run_dir) and (run_dir / "wandb" / "data").is_dir()
    log = (run_dir / "train.log").read_text()
    assert "Run directory:" in log and "max_epochs=1" in log  # ours and Lightning's records
    assert "log file" in out
    assert "Total FLOPs" in out  # the model summary is still printed, with its FLOPs computed
    for noise in ("anonymous setting has no effect", "Total FLOPs: 0", "litlogger", "LeafSpec", "already configured"):
        assert noise not in out, noise


@pytest.mark.slow
def test_cifar10_without_network_says_what_to_do(tmp_path):
    """A download that cannot happen (an unreachable proxy: never touches the network) ends with
    the dataset message and exit status 2, not a urllib traceback."""
    dead = "http://127.0.0.1:9"  # the discard port: connection refused
    env = {"https_proxy": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "HTTP_PROXY": dead,
           "no_proxy": None, "NO_PROXY": None}
    data_dir = tmp_path / "empty"
    p = run_train(["data=cifar10", f"paths.data_dir={data_dir}", "data.num_workers=0", "model.image_size=32",
                   "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, timeout=300)
    out = _out(p)
    flat = " ".join(out.replace("│", " ").split())
    assert p.returncode == 2, out[-3000:]
    assert "Dataset not available" in out and "CIFAR-10 is not available" in flat, out[-3000:]
    assert str(data_dir) in flat.replace(" ", "") or str(data_dir) in flat
    assert "Traceback" not in out and "data=shapes" in flat


@pytest.mark.slow
def test_killed_run_resumes_the_same_wandb_run(tmp_path):
    """SIGKILL after the first checkpoint, then ``ckpt_path=.../last.ckpt``: the same W&B run id
    (resume allowed), no step logged twice, the same held-out set and the stability series and
    curve subset continue."""
    import signal
    import time

    import torch

    first_dir = tmp_path / "first"
    # a fresh shell, as a user's: not the W&B service this test process may have started for the
    # in-process W&B tests (a shared service still holds the killed run's id)
    service = {k: None for k in os.environ if k.startswith(("WANDB_SERVICE", "_WANDB"))}
    e = {k: v for k, v in os.environ.items() if k not in service}
    e.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [a for a in TINY if not a.startswith("trainer.max_epochs")]
    proc = subprocess.Popen([sys.executable, TRAIN, *args, "trainer.max_epochs=40", f"hydra.run.dir={first_dir}"],
                            cwd=tmp_path, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = first_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint file be complete
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # W&B's service process notices its parent's death by itself and releases the run id; a user
    # resuming seconds later finds it gone (under load it takes a moment: wait for it, as they would)
    for _ in range(300):
        alive = subprocess.run(["pgrep", "-f", f"wandb-core.*--pid {proc.pid}"], capture_output=True).returncode == 0
        if not alive:
            break
        time.sleep(0.1)
    assert last.exists(), "no checkpoint before the kill"
    ckpt = torch.load(last, weights_only=False, map_location="cpu")
    epoch = int(ckpt["epoch"])
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("CAMCallback"))
    first_run = find_run_files(first_dir)
    assert len(first_run) == 1
    before = read_run_file(first_run[0])
    first_id = run_info(first_run[0])["id"]

    second_dir = tmp_path / "second"
    p = run_train([*args, f"trainer.max_epochs={epoch + 2}", f"ckpt_path={last}", f"hydra.run.dir={second_dir}"],
                  cwd=tmp_path, env=service)
    assert p.returncode == 0, _out(p)[-4000:]
    second_run = find_run_files(second_dir)
    assert len(second_run) == 1 and run_info(second_run[0])["id"] == first_id, "a new W&B run was opened"
    after = read_run_file(second_run[0])
    # nothing up to the checkpoint is logged again (an evaluation the killed run logged after its last
    # checkpoint is redone, as every metric of that epoch is: W&B then shows the redone value)
    steps_before = {r["trainer/global_step"] for r in before.rows_with("cam/liftcam/insertion")}
    steps_after = {r["trainer/global_step"] for r in after.rows_with("cam/liftcam/insertion")}
    done = {s for s in steps_before if s <= int(ckpt["global_step"])}
    assert done and steps_after and min(steps_after) > max(done)
    # the callback's state came back: its first resumed evaluation already has a stability series
    assert "cam/liftcam/stability_first" in after.rows_with("cam/liftcam/insertion")[0]
    resumed = torch.load(second_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    state2 = next(v for k, v in resumed["callbacks"].items() if k.startswith("CAMCallback"))
    assert state2["indices"] == state["indices"] and state2["budget"] == state["budget"]

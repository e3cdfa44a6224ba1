"""Train (or evaluate) a classifier with the CAM callback; configured by Hydra (conf/).

    python train.py                                   # SmallCNN on the embedded shapes data, CPU, W&B offline
    python train.py model=resnet18 trainer=gpu        # swap any config group
    python train.py cam.methods=[liftcam,gradcam] cam.target_layer=layer3
    python train.py -m model=resnet18,mobilenet_v3_small,convnext_tiny   # one W&B run per model, grouped

See conf/train.yaml for every group and README.md for sweeps, DDP and SLURM.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from lightning_cam.app import ConfigError, run
from lightning_cam.app.rich_utils import print_error
from lightning_cam.app.runner import log_error_to_job_file, remove_run_dir_of_failed_config
from lightning_cam.data import DatasetUnavailableError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except (ConfigError, DatasetUnavailableError) as err:
        from hydra.core.hydra_config import HydraConfig

        title = "Configuration error" if isinstance(err, ConfigError) else "Dataset not available"
        print_error(str(err), title=title)
        log_error_to_job_file(title, str(err))
        hc = HydraConfig.get()
        remove_run_dir_of_failed_config(hc.runtime.output_dir, cfg.get("task_name", "train"), hc.runtime.cwd)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Entry point: compose the config, build one job, run it. ``python run.py job=extract ...``"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    job = hydra.utils.instantiate(cfg.job, _convert_="all")
    status = int(job.run())
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # In a sweep the process hosts other jobs too: report failure without exiting.
        if status:
            raise RuntimeError(f"job exited with status {status}")
        return status
    raise SystemExit(status)


if __name__ == "__main__":
    main()

"""Entry point: compose the config, build one job, run it. ``python run.py job=extract ...``"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    job = hydra.utils.instantiate(cfg.job, _convert_="all")
    raise SystemExit(job.run())


if __name__ == "__main__":
    main()

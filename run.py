"""Entry point: compose the config, build one job, run it. ``python run.py job=extract ...``"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

from cache import ShardLockedError
from extract.encoders import EncoderLoadError
from jobs import signals
from jobs.config import check_keys  # importing jobs registers the settings nodes conf/ names

# What a wrong path, setting or checkpoint raises: reported as one line, not a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # incl. StoreMismatchError, AnnotationError
    FileNotFoundError,
    EncoderLoadError,
    ShardLockedError,
)


def user_error(e: BaseException) -> BaseException | None:
    """The user-facing error behind ``e`` (unwrapping Hydra's instantiation wrapper), if any."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e if isinstance(e, USER_ERRORS) else None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    signals.install()  # a signal commits what is buffered, prints one line, exits 128+N
    try:
        check_keys(cfg)
        job = hydra.utils.instantiate(cfg.job, _convert_="all")
        status = int(job.run())
    except signals.StopRequested as stop:
        signals.exit_stopped(stop)
    except Exception as e:
        err = user_error(e)
        if err is None or multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    if multirun:
        # In a sweep the process hosts other jobs too: report failure without exiting.
        if status:
            raise RuntimeError(f"job exited with status {status}")
        return status
    raise SystemExit(status)


if __name__ == "__main__":
    main()

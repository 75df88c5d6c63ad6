"""Entry point: compose the config, build one job, run it. ``python run.py job=extract ...``"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cache import ShardFencedError, ShardLockedError, StorageError
from extract.encoders import EncoderLoadError
from jobs.config import check_keys  # importing jobs registers the settings nodes conf/ names
from jobs.launch import signals

# What a wrong path, setting or checkpoint raises: reported as one line, not a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # incl. StoreMismatchError, AnnotationError
    FileNotFoundError,
    EncoderLoadError,
    ShardLockedError,
    ShardFencedError,  # another writer took the shard over: this one stopped
    StorageError,  # wrong credentials, no bucket, unreachable endpoint, no conditional writes
    OmegaConfBaseException,  # a missing required value (store=), a failed interpolation
)


def user_error(e: BaseException) -> BaseException | None:
    """The user-facing error behind ``e`` (unwrapping Hydra's instantiation wrapper), if any."""
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e if isinstance(e, USER_ERRORS) else None


# Hydra's own errors (composition, overrides, a missing value) reach __main__ as exceptions, so
# they share the one error path below; the user's HYDRA_FULL_ERROR=1 still shows tracebacks.
FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"

# What Hydra and OmegaConf raise for a wrong command line: one line too.
CLI_ERRORS: tuple[type[Exception], ...] = (HydraException, OmegaConfBaseException)


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
        if err is None or multirun or FULL_ERROR:
            raise
        fail(err)
    if multirun:
        # In a sweep the process hosts other jobs too: report failure without exiting.
        if status:
            raise RuntimeError(f"job exited with status {status}")
        return status
    raise SystemExit(status)


def fail(err: BaseException) -> NoReturn:
    """The CLI's one error path: one ``error:`` line, exit 2."""
    text = " ".join(str(err).split(" Config search path:")[0].split()) or type(err).__name__
    print(f"error: {text}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; we report (or re-raise if FULL_ERROR)
    try:
        main()
    except CLI_ERRORS as e:
        if FULL_ERROR or isinstance(e, InstantiationException):  # a bug, not a command line
            raise
        fail(e)

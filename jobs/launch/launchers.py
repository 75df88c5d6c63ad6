"""Launchers only schedule: ``run`` calls ``fn(shard, shard_count)`` for the given shards and
``run_ranks`` calls ``fn(rank, world_size)`` on all ranks at once (torch.distributed).

``run`` returns the results in shard order, ``None`` for a shard whose worker was lost (what it
committed stays in the store; rerunning finishes it), or ``None`` instead of the list when the
launcher only submitted (SLURM ``wait=false``). The local launcher is the default: in-process for
one worker, a process pool for several.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from jobs.launch import signals

R = TypeVar("R")


class Launcher(Protocol):
    @property
    def shard_count(self) -> int:
        """How many shards a job splits its work into with this launcher."""
        ...

    def run(
        self, fn: Callable[[int, int], R], shard_count: int, shards: Sequence[int] | None = None
    ) -> list[R | None] | None:
        """Run ``fn(shard, shard_count)`` for each shard (default: all ``shard_count``); the
        results in shard order, or ``None`` when the shards were only submitted."""
        ...

    def run_ranks(self, fn: Callable[[int, int], R], world_size: int) -> R | None:
        """Run ``fn(rank, world_size)`` on ``world_size`` ranks at once (torch.distributed);
        rank 0's result, or ``None`` when only submitted."""
        ...


@dataclass
class LocalLauncher:
    """Run shards on this machine. ``shards=None`` means one shard per worker."""

    workers: int = 1
    shards: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"launcher.workers must be >= 1, got {self.workers}")
        if self.shards is not None and self.shards < 1:
            raise ValueError(f"launcher.shards must be >= 1, got {self.shards}")

    @property
    def shard_count(self) -> int:
        return self.shards or self.workers

    def run(
        self, fn: Callable[[int, int], R], shard_count: int, shards: Sequence[int] | None = None
    ) -> list[R | None]:
        ids = list(range(shard_count) if shards is None else shards)
        if self.workers == 1 or len(ids) <= 1:
            return [fn(i, shard_count) for i in ids]
        with _worker_pool(self.workers) as ex:
            futures = [ex.submit(fn, i, shard_count) for i in ids]
            try:
                return [f.result() for f in futures]
            except signals.StopRequested as stop:
                raise _stop_workers(ex, futures, stop) from None

    def run_ranks(self, fn: Callable[[int, int], R], world_size: int) -> R | None:
        if world_size == 1:
            return fn(0, 1)
        # Rendezvous on this machine: spawned ranks inherit the environment, which is restored
        # afterwards so nothing launched later (e.g. an sbatch) sees this run's address.
        saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        try:
            with _worker_pool(world_size) as ex:
                futures = [ex.submit(fn, rank, world_size) for rank in range(world_size)]
                try:
                    results = [f.result() for f in futures]
                except signals.StopRequested as stop:
                    raise _stop_workers(ex, futures, stop) from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return results[0]


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes that stop on signals like the driver, and when the driver dies (so none
    is left orphaned holding a shard lock). spawn: forking a process that holds torch threads and
    open decoders is unsafe."""
    return ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=signals.worker_init,
        initargs=(os.getpid(),),
    )


def _stop_workers(
    ex: ProcessPoolExecutor, futures: list[Future[Any]], stop: signals.StopRequested
) -> signals.StopRequested:
    """Pass the driver's stop to its workers, wait for their commits; the stop with their
    committed frames added."""
    for f in futures:
        f.cancel()  # not started: nothing to commit
    for pid in list(getattr(ex, "_processes", {}) or {}):
        try:
            os.kill(pid, stop.signum)
        except ProcessLookupError:
            pass
    wait_futures(futures)
    for f in futures:
        err = None if f.cancelled() else f.exception()
        if isinstance(err, signals.StopRequested):
            stop.frames += err.frames
    return stop


def free_port() -> int:
    """A TCP port free on this machine right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

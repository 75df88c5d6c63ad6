"""Launchers run ``fn(shard, shard_count)`` once per shard and return the results in order.

The local launcher is the default: in-process for one worker, a process pool for several.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R")


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

    def run(self, fn: Callable[[int, int], R], shard_count: int) -> list[R]:
        if self.workers == 1 or shard_count == 1:
            return [fn(i, shard_count) for i in range(shard_count)]
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn: forking a process that holds torch threads and open decoders is unsafe.
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as ex:
            futures = [ex.submit(fn, i, shard_count) for i in range(shard_count)]
            return [f.result() for f in futures]

    def describe(self) -> dict[str, Any]:
        return {"launcher": "local", "workers": self.workers, "shards": self.shard_count}

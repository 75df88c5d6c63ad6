"""Run shards as Ray tasks on an embedded Ray or an existing cluster (``launcher=ray``).

The launcher only schedules. How extraction spreads decode and encode over the cluster (encoder
actors, decode tasks) is the extract job's choice, in jobs/extract_ray.py. See docs/ray.md.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")

INSTALL_HINT = "pip install 'ray==2.60.0'"
DEFAULT_SHARDS = 2  # shards when neither launcher.shards nor the job says how many


def import_ray() -> Any:
    """Import Ray on first use (it is a heavy import), naming the install command if missing."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"launcher=ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


_REMOTE: dict[Callable[..., Any], Any] = {}


def remote(fn: Callable[..., Any]) -> Any:
    """``ray.remote(fn)``, made once per process (each one is exported to the cluster)."""
    cached = _REMOTE.get(fn)
    if cached is None:
        cached = _REMOTE[fn] = import_ray().remote(fn)
    return cached


def cause_of(err: Exception) -> Exception:
    """The exception a remote task raised, without Ray's wrapper and its remote traceback."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


def _call_shard(fn: Callable[[int, int], R], shard: int, shard_count: int) -> R:
    return fn(shard, shard_count)


CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once, naming ``launcher.address``, when nothing listens at ``host:port`` (Ray
    itself retries an unreachable GCS for minutes). ``auto`` and ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"launcher.address={address}: expected host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ValueError(
            f"launcher.address={address}: no Ray cluster reachable there within "
            f"{timeout_s:g} s ({e}); start one (`ray start --head`) or use launcher.address=null"
        ) from None


@dataclass
class RayLauncher:
    """Run ``fn(shard, shard_count)`` as one Ray task per shard.

    ``address``: ``None`` starts Ray in this process for the run (``num_cpus`` caps it),
    ``"auto"`` joins the cluster this node belongs to, ``"host:port"`` or ``"ray://host:port"``
    a given one. ``shards=None`` lets the job choose (``DEFAULT_SHARDS`` if it does not).
    Shard tasks hold ``shard_num_cpus`` each and are retried ``max_retries`` times when their
    worker or node dies.
    """

    address: str | None = None
    shards: int | None = None
    num_cpus: int | None = None
    max_retries: int = 3
    shard_num_cpus: float = 0

    def __post_init__(self) -> None:
        for name in ("shards", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"launcher.{name} must be >= 1 or null, got {value}")
        if self.max_retries < 0:
            raise ValueError(f"launcher.max_retries must be >= 0, got {self.max_retries}")
        if self.shard_num_cpus < 0:
            raise ValueError(f"launcher.shard_num_cpus must be >= 0, got {self.shard_num_cpus}")

    @property
    def shard_count(self) -> int:
        """How many shards the work is split into (fixed by config, not by the cluster)."""
        return self.shards or DEFAULT_SHARDS

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """Ray, connected for the block: a Ray already initialised (a test, a notebook, an outer
        session) is used and left running; an embedded one started here is shut down at the end;
        a joined cluster stays connected."""
        ray = import_ray()
        if ray.is_initialized():
            yield ray
            return
        if self.address is not None:
            if self.num_cpus is not None:
                log.warning("launcher.num_cpus is ignored when joining a cluster (address set)")
            check_reachable(self.address)
            ray.init(address=self.address, logging_level=logging.WARNING)
            yield ray
            return
        # "local" starts a fresh instance even if a cluster is running on this node.
        ray.init(
            address="local",
            num_cpus=self.num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        try:
            yield ray
        finally:
            ray.shutdown()

    def run(
        self,
        fn: Callable[[int, int], R],
        shard_count: int,
        shards: Sequence[int] | None = None,
        *,
        concurrency: int | None = None,
    ) -> list[R | None]:
        """Run ``fn(shard, shard_count)`` for each shard as a Ray task; results in shard order.

        At most ``concurrency`` tasks run at once (default: one per CPU of the cluster). A task
        whose worker or node dies is retried up to ``max_retries`` times; one still lost after
        that gives ``None``. An exception raised by ``fn`` is re-raised once every shard has
        finished.
        """
        ids = list(range(shard_count) if shards is None else shards)
        if not ids:
            return []
        with self.session() as ray:
            if concurrency is None:
                concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))
            return self._schedule(ray, fn, shard_count, ids, min(len(ids), concurrency))

    def _schedule(
        self, ray: Any, fn: Callable[[int, int], R], shard_count: int, ids: list[int], window: int
    ) -> list[R | None]:
        """Keep ``window`` shard tasks running until every shard has an outcome."""
        task = remote(_call_shard)
        fn_ref = ray.put(fn)  # shipped once, not once per shard
        log.info("%d shard(s), %d at a time", len(ids), window)
        todo = collections.deque(ids)
        running: dict[Any, int] = {}
        results: dict[int, R | None] = {}
        error: Exception | None = None
        while todo or running:
            while todo and len(running) < window:
                i = todo.popleft()
                ref = task.options(
                    num_cpus=self.shard_num_cpus,
                    max_retries=self.max_retries,
                    retry_exceptions=False,  # an error raised by fn would only happen again
                    name=f"shard-{i}-of-{shard_count}",
                ).remote(fn_ref, i, shard_count)
                running[ref] = i
            ready, _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ready[0])
            results[i], raised = self._outcome(ray, ready[0], i, shard_count)
            error = error or raised
        if error is not None:
            raise error
        return [results[i] for i in ids]

    def _outcome(
        self, ray: Any, ref: Any, shard: int, shard_count: int
    ) -> tuple[Any, Exception | None]:
        """A finished task's result, or ``None`` and what it raised (``None`` too if lost)."""
        try:
            return ray.get(ref), None
        except ray.exceptions.RayTaskError as e:
            log.error("shard %d/%d raised: %s", shard, shard_count, cause_of(e))
            return None, cause_of(e)
        except ray.exceptions.RayError as e:
            log.error(
                "shard %d/%d lost after %d retries (%s); what it committed is kept, "
                "rerun the same command to finish it",
                shard,
                shard_count,
                self.max_retries,
                type(e).__name__,
            )
            return None, None

    def run_ranks(self, fn: Callable[[int, int], R], world_size: int) -> R | None:
        """Not supported: training ranks need a gang-scheduled torch.distributed rendezvous.

        ``launcher=ray`` runs ``job=extract`` only; raising here says so instead of starting a
        cluster for nothing.
        """
        raise NotImplementedError(
            "launcher=ray runs job=extract only; train with launcher=local or launcher=slurm"
        )


__all__ = ["RayLauncher", "cause_of", "import_ray", "remote"]

"""SLURM launcher: one submitit job array, one task per shard, requeued on preemption.

A task is a pure function of its shard index that writes only its own shard and commits as it
goes, so a requeued (or rerun) task continues from what the store already holds. The store's
journals are the index: there is nothing to merge after the array, and ``job=status`` reads
them (plus the array's SLURM states) while tasks run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# This module is imported only when launcher=slurm is chosen, so the import is lazy already.
import submitit

from cache import record_launch

R = TypeVar("R")


class ShardTask(submitit.helpers.Checkpointable):
    """``fn(shard, shard_count)`` as a checkpointable submitit callable.

    On preemption or time-out submitit calls ``checkpoint()`` and requeues the same call; the
    shard then skips what it already committed (an external ``scontrol requeue`` restarts it
    the same way, from the store).
    """

    def __init__(self, fn: Callable[[int, int], Any], shard_count: int) -> None:
        self.fn = fn
        self.shard_count = shard_count

    def __call__(self, shard: int) -> Any:
        return self.fn(shard, self.shard_count)


class RankTask(submitit.helpers.Checkpointable):
    """``fn(rank, world_size)`` in each task of a multi-task SLURM job (torch.distributed env
    exported by submitit); requeued on preemption, when ``fn`` resumes from its checkpoints."""

    def __init__(self, fn: Callable[[int, int], Any]) -> None:
        self.fn = fn

    def __call__(self) -> Any:
        # overwrite: sbatch copies the submitting shell's environment, which may hold another
        # run's MASTER_ADDR/PORT; this job's own rendezvous must win.
        env = submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
        return self.fn(env.rank, env.world_size)


@dataclass
class SlurmLauncher:
    """Submit shards as a SLURM job array through submitit (``launcher=slurm``).

    Every sbatch setting users need is a field; ``additional_parameters`` passes anything else
    (e.g. ``{"reservation": "x"}``) and ``setup`` adds shell lines before the task starts (module
    loads, env vars). ``wait=False`` submits and returns at once (``run`` and ``run_ranks`` then
    return ``None``). Each array is recorded in ``folder`` and, with ``store``, registered in that
    store, where ``job=status`` finds it.
    """

    folder: str
    store: str | None = None
    shards: int = 8
    array_parallelism: int = 64
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gres: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 4
    mem_gb: float = 16
    timeout_min: int = 240
    max_requeues: int = 3
    job_name: str = "streamfeat"
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    wait: bool = True
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"launcher.shards must be >= 1, got {self.shards}")
        if shutil.which("sbatch") is None:
            raise RuntimeError(
                "launcher=slurm needs SLURM's sbatch on PATH (none found); on a single machine "
                "see scripts/slurm/up.sh, or use launcher=local"
            )

    @property
    def shard_count(self) -> int:
        return self.shards

    def executor(self) -> Any:
        ex = submitit.AutoExecutor(
            folder=Path(self.folder) / "%j",
            cluster="slurm",
            slurm_max_num_timeout=self.max_requeues,
        )
        params: dict[str, Any] = {
            "name": self.job_name,
            "timeout_min": self.timeout_min,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_additional_parameters": dict(self.additional_parameters),
            "slurm_setup": list(self.setup),
        }
        optional = {
            "slurm_partition": self.partition,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
            "slurm_gres": self.gres,
            "slurm_gpus_per_task": self.gpus_per_task or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        ex.update_parameters(**params)
        return ex

    def run(
        self, fn: Callable[[int, int], R], shard_count: int, shards: Sequence[int] | None = None
    ) -> list[R | None] | None:
        """Submit one array over ``shards``; wait and return the results, or return ``None`` at
        once with ``wait=False``."""
        ids = list(range(shard_count) if shards is None else shards)
        if not ids:
            return [] if self.wait else None
        jobs = self.executor().map_array(ShardTask(fn, shard_count), ids)
        record = {
            "launcher": "slurm",
            "submitted_at": time.time(),
            "array_job_id": jobs[0].job_id.split("_")[0],
            "jobs": {str(shard): job.job_id for shard, job in zip(ids, jobs, strict=True)},
            "shard_count": shard_count,
        }
        try:
            record_launch(self.folder, record, store=self.store)
        except OSError as e:  # the array runs anyway; only job=status will not show its states
            print(f"slurm: could not record the launch ({e})", file=sys.stderr)
        print(
            f"slurm: submitted array {record['array_job_id']} ({len(ids)} task(s)); "
            f"logs in {self.folder}",
            file=sys.stderr,
        )
        if not self.wait:
            return None
        results: list[R | None] = []
        for shard, job in zip(ids, jobs, strict=True):
            try:
                results.append(job.result())
            except Exception as e:  # noqa: BLE001 - a lost task is reported, the rest go on
                print(
                    f"slurm: shard {shard} (job {job.job_id}) did not finish: {e}", file=sys.stderr
                )
                results.append(None)
        return results

    def run_ranks(self, fn: Callable[[int, int], R], world_size: int) -> R | None:
        """One SLURM job with ``world_size`` tasks (one per rank, ``gpus_per_task`` each)."""
        ex = self.executor()
        ex.update_parameters(tasks_per_node=world_size, slurm_array_parallelism=1)
        job = ex.submit(RankTask(fn))
        print(f"slurm: submitted job {job.job_id} ({world_size} rank(s))", file=sys.stderr)
        if not self.wait:
            return None
        return job.results()[0]  # type: ignore[no-any-return]


def slurm_states(launches: Iterable[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The latest SLURM job id and state of each shard in ``launches`` (oldest first, as
    ``cache.read_launches`` gives them), via sacct."""
    latest: dict[int, str] = {}
    for launch in launches:
        if launch.get("launcher", "slurm") == "slurm":
            for shard, job_id in launch["jobs"].items():
                latest[int(shard)] = job_id
    states = {job_id: "UNKNOWN" for job_id in latest.values()}
    if shutil.which("sacct") and states:
        arrays = sorted({j.split("_")[0] for j in states})
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        for row in out.splitlines():
            job_id, _, state = row.partition("|")
            if job_id in states:
                states[job_id] = state.split()[0] if state else "UNKNOWN"
    return {shard: {"job_id": j, "state": states[j]} for shard, j in latest.items()}

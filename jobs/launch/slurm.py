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
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

# This module is imported only when launcher=slurm is chosen, so the import is lazy already.
import submitit

from cache import is_url, load_index, read_launches, record_launch, store_exists
from jobs.launch import signals
from jobs.launch import slurm_cluster as cluster

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
        # SIGTERM (scancel, preemption; SIGKILL follows after KillWait) and SIGUSR2 (the time
        # limit is near) make the shard commit what it holds and stop; submitit's own handler
        # then runs (it requeues on SIGUSR2). A stop is never recorded as a video failure.
        signals.install()
        try:
            return self.fn(shard, self.shard_count)
        except signals.StopRequested as stop:
            signals.exit_stopped(stop)


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
    loads, env vars). ``gpus_per_task``, ``cpus_per_task``, ``mem_gb`` and ``timeout_min``
    left null are derived from the partition (``cluster.derived``: one GPU per task where the
    nodes have GPUs, with its share of a node's CPUs and memory); a request no node of it can
    run is refused before submission.
    ``wait=False`` submits and returns at once (``run`` and ``run_ranks`` then return ``None``).
    While waiting, the driver polls the array every ``poll_s`` seconds and prints its states.
    Each array is recorded in ``folder`` and, with ``store``, registered in that store, where
    ``job=status`` finds it and a rerun attaches to it while it still runs.
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
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None
    max_requeues: int = 3
    job_name: str = "streamfeat"
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    wait: bool = True
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"launcher.shards must be >= 1, got {self.shards}")
        self.folder = local_folder(self.folder, self.store)
        if self.poll_s <= 0:
            raise ValueError(f"launcher.poll_s must be > 0, got {self.poll_s}")
        if shutil.which("sbatch") is None:
            raise RuntimeError(
                "launcher=slurm needs SLURM's sbatch on PATH (none found); on a single machine "
                "see scripts/slurm/up.sh, or use launcher=local"
            )

    @property
    def shard_count(self) -> int:
        return self.shards

    def request(self, tasks: int = 1) -> cluster.Request:
        """What each task asks for, checked against the partition (ValueError if no node of it
        can ever run it; nulls derived from it). GPUs asked for through ``gres`` count too.
        ``tasks``: tasks sharing one node (the ranks of ``run_ranks``)."""
        req = cluster.fit(
            self.partition,
            cpus=self.cpus_per_task,
            mem_gb=self.mem_gb,
            timeout_min=self.timeout_min,
            gpus=self.gpus_per_task,
            gres=self.gres,
            key="launcher",
            tasks=tasks,
        )
        check_signal_delay(req.timeout_min, "launcher.timeout_min")
        return req

    def executor(self, tasks: int = 1) -> Any:
        req = self.request(tasks)
        cpus, mem_gb, timeout_min = req.cpus, req.mem_gb, req.timeout_min
        ex = submitit.AutoExecutor(
            folder=Path(self.folder) / "%j",
            cluster="slurm",
            slurm_max_num_timeout=self.max_requeues,
        )
        params: dict[str, Any] = {
            "name": self.job_name,
            "timeout_min": timeout_min,
            "cpus_per_task": cpus,
            "mem_gb": mem_gb,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_additional_parameters": dict(self.additional_parameters),
            "slurm_setup": list(self.setup),
            "slurm_signal_delay_s": signal_delay_s(timeout_min),
        }
        optional = {
            "slurm_partition": self.partition,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
            "slurm_gres": self.gres,
            # GPUs go through gres when it is set, else as --gpus-per-task
            "slurm_gpus_per_task": (req.gpus or None) if self.gres is None else None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        ex.update_parameters(**params)
        return ex

    def run(
        self, fn: Callable[[int, int], R], shard_count: int, shards: Sequence[int] | None = None
    ) -> list[R | None] | None:
        """Submit one array over ``shards`` (or attach to a live one that covers them); wait
        and return the results (``None`` for a task that did not finish), or return ``None`` at
        once with ``wait=False``."""
        ids = list(range(shard_count) if shards is None else shards)
        if not ids:
            return [] if self.wait else None
        live = self._live_launch(ids, shard_count)
        if live is not None:
            array_id, jobs = live
        else:
            array_id, jobs = self._submit(fn, shard_count, ids)
        if not self.wait:
            return None
        return Watch(self, array_id, jobs, ids).wait()

    def _submit(
        self, fn: Callable[[int, int], Any], shard_count: int, ids: list[int]
    ) -> tuple[str, dict[int, Any]]:
        ex = self.executor()
        try:
            jobs = ex.map_array(ShardTask(fn, shard_count), ids)
        except submitit.core.utils.FailedJobError as e:
            raise ValueError(f"sbatch refused the array: {sbatch_reason(str(e))}") from None
        array_id = jobs[0].job_id.split("_")[0]
        record = {
            "launcher": "slurm",
            "submitted_at": time.time(),
            "array_job_id": array_id,
            "jobs": {str(shard): job.job_id for shard, job in zip(ids, jobs, strict=True)},
            "shard_count": shard_count,
            "folder": str(Path(self.folder).absolute()),
        }
        try:
            record_launch(self.folder, record, store=self.store)
        except OSError as e:  # the array runs anyway; only job=status will not show its states
            print(f"slurm: could not record the launch ({e})", file=sys.stderr)
        print(
            f"slurm: submitted array {array_id} ({len(ids)} task(s)); logs in {self.folder}",
            file=sys.stderr,
        )
        return array_id, dict(zip(ids, jobs, strict=True))

    def _live_launch(self, ids: list[int], shard_count: int) -> tuple[str, dict[int, Any]] | None:
        """The latest array of this store that covers ``ids`` and still has tasks queued."""
        if self.store is None:
            return None
        launches = [
            r
            for r in read_launches(self.store)
            if r.get("launcher", "slurm") == "slurm" and r.get("shard_count") == shard_count
        ]
        if not launches or not set(map(str, ids)) <= set(launches[-1]["jobs"]):
            return None
        last = launches[-1]
        if not cluster.in_queue(list(last["jobs"].values())):
            return None
        folder = Path(last.get("folder", self.folder)) / "%j"
        jobs: dict[int, Any] = {i: submitit.SlurmJob(folder, last["jobs"][str(i)]) for i in ids}
        array_id = str(last["array_job_id"])
        print(
            f"slurm: array {array_id} still runs these shards: attaching to it instead of "
            f"submitting a duplicate (`scancel {array_id}` stops it)",
            file=sys.stderr,
        )
        return array_id, jobs

    def run_ranks(self, fn: Callable[[int, int], R], world_size: int) -> R | None:
        """One SLURM job with ``world_size`` tasks (one per rank, ``gpus_per_task`` each)."""
        ex = self.executor(tasks=world_size)
        ex.update_parameters(tasks_per_node=world_size, slurm_array_parallelism=1)
        try:
            job = ex.submit(RankTask(fn))
        except submitit.core.utils.FailedJobError as e:
            raise ValueError(f"sbatch refused the job: {sbatch_reason(str(e))}") from None
        print(f"slurm: submitted job {job.job_id} ({world_size} rank(s))", file=sys.stderr)
        if not self.wait:
            return None
        result = Watch(self, str(job.job_id), {0: job}, [0], what="job").wait()[0]
        if result is None:  # its state and the end of its log are printed above
            print(f"error: SLURM job {job.job_id} did not finish", file=sys.stderr)
            raise SystemExit(1)
        return result  # type: ignore[no-any-return]


DEFAULT_FOLDER = "logs/slurm"  # under the store (conf/launcher/slurm.yaml)
URL_STORE_FOLDER = Path("outputs") / "slurm"  # under the working directory, for a bucket store


def local_folder(folder: str, store: str | None) -> str:
    """Where submitit's pickles, logs and the launch records go: a folder the nodes share.

    The default, ``STORE/logs/slurm``, is no folder when the store is a URL: such a store's
    folder is ``outputs/slurm/BUCKET/PREFIX`` under the working directory (registered in the
    bucket, so ``job=status`` finds it from anywhere on the same file system). A URL given
    as the folder itself is refused: SLURM tasks read their pickles from a file system.
    """
    if not is_url(folder):
        return folder
    if store is not None and is_url(store) and folder == f"{store.rstrip('/')}/{DEFAULT_FOLDER}":
        scheme, _, rest = store.rstrip("/").partition("://")
        return str(Path(URL_STORE_FOLDER, scheme, *rest.split("/")).absolute())
    raise ValueError(
        f"launcher.folder={folder}: must be a folder on a file system the SLURM nodes share "
        "(submitit's pickles and logs), not a URL"
    )


class Driver(Protocol):
    """What a :class:`Watch` needs of whoever submitted: how often to poll, the store to read
    frames/s from (if any) and where the logs are."""

    poll_s: float
    store: str | None
    folder: str


class Watch:
    """The driver's wait on an array: one squeue (and sacct) call per ``poll_s`` for the whole
    array; prints state changes with pending reasons, done/total and frames/s; fails fast on a
    pending reason that never clears; returns as soon as every task has ended."""

    HEARTBEAT_S = 30.0
    LOG_LINES = 5

    def __init__(
        self,
        launcher: Driver,
        array_id: str,
        jobs: dict[int, Any],
        ids: list[int],
        what: str = "array",
        key: str = "launcher",
        unit: str = "shard",
    ):
        self.launcher, self.array_id, self.jobs, self.ids = launcher, array_id, jobs, ids
        # "array" (shards: frames/s from the store), "job" (training ranks) or "sweep array"
        self.what, self.key, self.unit = what, key, unit
        self.started = time.time()

    def wait(self) -> list[Any]:
        last_line, last_print = "", 0.0
        try:
            while True:
                states = self.states()
                self.fail_if_stuck(states)
                line = self.describe(states)
                now = time.monotonic()
                if line != last_line or now - last_print >= self.HEARTBEAT_S:
                    print(
                        f"slurm: {self.what} {self.array_id}: {line}{self.rate()}", file=sys.stderr
                    )
                    last_line, last_print = line, now
                if all(s["state"] in cluster.ENDED_STATES for s in states.values()):
                    return self.collect(states)
                time.sleep(self.launcher.poll_s)
        except (KeyboardInterrupt, signals.StopRequested) as e:
            status = e.exit_status if isinstance(e, signals.StopRequested) else 130
            store = self.launcher.store or "STORE"
            print(
                f"\nslurm: detached; {self.what} {self.array_id} still runs: "
                f"`scancel {self.array_id}` stops it, "
                + (
                    f"`python run.py job=status store={store}` follows it"
                    if self.what == "array"
                    else f"its logs are in {self.launcher.folder}"
                ),
                file=sys.stderr,
            )
            raise SystemExit(status) from None

    def states(self) -> dict[int, dict[str, Any]]:
        """Each shard's state (a task gone from the queue with its result written has ended;
        one that sacct does not know yet stays PENDING until it does)."""
        found = cluster.array_states([j.job_id for j in self.jobs.values()])
        out = {}
        for shard, job in self.jobs.items():
            st = found.get(job.job_id, {"state": "PENDING", "reason": "", "queued": False})
            if not st.get("queued") and st["state"] not in cluster.ENDED_STATES:
                outcome = self.outcome(job)  # sacct lags squeue: the result file says it ended
                if outcome is not None:
                    st = {**st, "state": "COMPLETED" if outcome[0] == "success" else "FAILED"}
            out[shard] = st
        return out

    def describe(self, states: dict[int, dict[str, Any]]) -> str:
        done = sum(s["state"] == "COMPLETED" for s in states.values())
        counts = Counter(
            s["state"] + (f" ({s['reason']})" if s.get("reason") not in (None, "", "None") else "")
            for s in states.values()
            if s["state"] != "COMPLETED"
        )
        parts = [f"{n} {what}" for what, n in sorted(counts.items())]
        return f"{done}/{len(states)} done" + (", " + ", ".join(parts) if parts else "")

    def rate(self) -> str:
        """Frames committed to the store since this array's wait began, per second."""
        store = self.launcher.store
        if self.what != "array" or store is None:
            return ""
        try:  # a folder or a bucket alike
            if not store_exists(store):
                return ""
            entries = load_index(store).videos.values()
        except Exception:  # noqa: BLE001 - a store mid-write or an unreachable bucket must
            return ""  # not stop the driver
        recent = [
            e for e in entries if e.status == "done" and e.record["committed_at"] >= self.started
        ]
        frames = sum(int(e.record["num_frames"]) for e in recent)
        elapsed = time.time() - self.started
        return f"; {frames} frames, {frames / elapsed:.1f} frames/s" if elapsed > 0 else ""

    def fail_if_stuck(self, states: dict[int, dict[str, Any]]) -> None:
        for st in states.values():
            reason = str(st.get("reason") or "").split(",")[0]
            if st["state"] == "PENDING" and reason in cluster.NEVER_CLEARS:
                subprocess.run(["scancel", self.array_id], capture_output=True, timeout=30)
                keys = cluster.NEVER_CLEARS[reason]
                raise ValueError(
                    f"{self.what} {self.array_id} can never start ({reason}); change "
                    f"{self.key}.{keys}. The {self.what} was cancelled."
                )

    def collect(self, states: dict[int, dict[str, Any]]) -> list[Any]:
        """Results in shard order (``None`` for a task that failed), after a per-state summary
        and the last lines of each failed task's log."""
        counts = Counter(s["state"] for s in states.values())
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f"slurm: {self.what} {self.array_id} ended: {summary}", file=sys.stderr)
        results = []
        for shard in self.ids:
            job, state = self.jobs[shard], states[shard]["state"]
            outcome = self.outcome(job) if state == "COMPLETED" else None
            if outcome is not None and outcome[0] == "success":
                results.append(outcome[1])
                continue
            results.append(None)
            print(
                f"slurm: {self.unit} {shard} (job {job.job_id}) {state}; "
                f"end of {job.paths.stderr}:",
                file=sys.stderr,
            )
            for ln in tail(job.paths.stderr, self.LOG_LINES):
                print(f"    {ln}", file=sys.stderr)
        return results

    @staticmethod
    def outcome(job: Any) -> tuple[str, Any] | None:
        try:
            return submitit.core.utils.pickle_load(job.paths.result_pickle)  # type: ignore[no-any-return]
        except (OSError, EOFError):
            return None


def tail(path: Path, n: int) -> list[str]:
    """The last ``n`` non-empty lines of a log ([] if there is none)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ["(no log)"]
    return [ln for ln in lines if ln.strip()][-n:]


def sbatch_reason(message: str) -> str:
    """SLURM's own line in a FailedJobError (``sbatch: error: ...``), else its last line."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln and "sbatch" in ln]
    return errors[-1] if errors else (lines[-1] if lines else message)


def signal_delay_s(timeout_min: int) -> int:
    """Seconds before the time limit at which SLURM signals a task (submitit's 90 s, scaled
    down to a quarter of a short limit), so the task can commit and requeue in time."""
    return int(min(90, timeout_min * 60 // 4))


def check_signal_delay(timeout_min: int, key: str) -> None:
    if timeout_min < 1:
        raise ValueError(f"{key}={timeout_min}: must be >= 1 minute")


def slurm_states(launches: Iterable[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The latest SLURM job id, state and pending reason of each shard of the current layout
    (the latest launch's shard count) in ``launches`` (oldest first, as ``cache.read_launches``
    gives them): one squeue call for the queued tasks, one sacct call for the others."""
    launches = [r for r in launches if r.get("launcher", "slurm") == "slurm"]
    if not launches:
        return {}
    count = launches[-1].get("shard_count")
    latest: dict[int, str] = {}
    for launch in launches:
        if launch.get("shard_count") == count:
            for shard, job_id in launch["jobs"].items():
                latest[int(shard)] = job_id
    found = cluster.array_states(list(latest.values()))
    out = {}
    for shard, job_id in latest.items():
        st = found.get(job_id, {})
        out[shard] = {"job_id": job_id, "state": st.get("state", "UNKNOWN")}
        if st.get("reason") not in (None, "", "None"):
            out[shard]["reason"] = st["reason"]
    return out

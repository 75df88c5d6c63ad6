"""What the SLURM cluster offers and where an array stands, from scontrol, squeue and sacct.

Used before submitting (``preflight``: a request that can never run is refused with the key to
change), by the driver while it waits (``array_states``: one squeue call for the whole array, one
sacct call for the tasks that left the queue) and by ``job=status``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

# Pending reasons that will not clear by waiting, and the setting to change.
NEVER_CLEARS = {
    "PartitionConfig": "cpus_per_task, mem_gb or gpus_per_task",
    "PartitionTimeLimit": "timeout_min",
    "PartitionNodeLimit": "partition",
    "ReqNodeNotAvail": "constraint or additional_parameters (nodelist/exclude)",
    "BadConstraints": "constraint",
    "InvalidAccount": "account",
    "InvalidQOS": "qos",
    "QOSMaxWallDurationPerJobLimit": "timeout_min",
    "AssocMaxWallDurationPerJobLimit": "timeout_min",
    "QOSMaxCpuPerJobLimit": "cpus_per_task",
    "QOSMaxMemoryPerJob": "mem_gb",
}
FAILED_STATES: tuple[str, ...] = ("CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
FAILED_STATES += ("BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED")
ENDED_STATES = ("COMPLETED", *FAILED_STATES)


def _run(cmd: list[str]) -> str:
    """stdout of ``cmd`` ('' when it fails: e.g. squeue of an array that left the queue)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return r.stdout if r.returncode == 0 else ""


def _fields(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def _minutes(limit: str) -> float:
    """A SLURM time limit (``UNLIMITED``, ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in minutes."""
    if limit in ("UNLIMITED", "INFINITE", "NONE", ""):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        minutes = float(parts[0])
    else:
        parts = [0] * (3 - len(parts)) + parts
        minutes = parts[0] * 60 + parts[1] + parts[2] / 60
    return minutes + (int(days) * 1440 if days else 0)


@dataclass(frozen=True)
class Partition:
    """The most one task can get on a partition's nodes."""

    name: str
    cpus: int
    mem_gb: float
    gpus: int
    max_time_min: float


def partitions() -> dict[str, dict[str, str]]:
    """Every partition's ``scontrol show partition`` fields, by name."""
    out = _run(["scontrol", "show", "partition", "-o"])
    parts = [_fields(line) for line in out.splitlines() if line.strip()]
    return {p["PartitionName"]: p for p in parts if "PartitionName" in p}


def partition(name: str | None, key: str = "launcher") -> Partition:
    """The partition ``name`` (the default one when ``None``); ValueError if there is none."""
    parts = partitions()
    if name is None:
        name = next((n for n, p in parts.items() if p.get("Default") == "YES"), None)
        if name is None:
            raise ValueError(f"{key}.partition is null and the cluster has no default partition")
    if name not in parts:
        raise ValueError(
            f"{key}.partition={name}: no such partition; the cluster has: "
            + (", ".join(sorted(parts)) or "none")
        )
    p = parts[name]
    out = _run(["scontrol", "show", "node", "-o", p["Nodes"]])
    nodes = [n for n in map(_fields, out.splitlines()) if "NodeName" in n]
    cpus = max((int(n.get("CPUTot", 0)) for n in nodes), default=0)
    mem_mb = max((int(n.get("RealMemory", 0)) for n in nodes), default=0)
    gpus = max((_gpus(n.get("Gres", "")) for n in nodes), default=0)
    if p.get("MaxCPUsPerNode", "UNLIMITED").isdigit():
        cpus = min(cpus, int(p["MaxCPUsPerNode"]))
    if p.get("MaxMemPerNode", "UNLIMITED").isdigit():
        mem_mb = min(mem_mb, int(p["MaxMemPerNode"]))
    return Partition(name, cpus, mem_mb / 1024, gpus, _minutes(p.get("MaxTime", "UNLIMITED")))


def _gpus(gres: str) -> int:
    """GPUs in a node's Gres (``gpu:a100:4(S:0-1),shard:8`` -> 4)."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item)
        total += int(m.group(1)) if m else 0
    return total


def preflight(
    part: Partition,
    *,
    cpus: int,
    mem_gb: float,
    gpus: int,
    timeout_min: float,
    key: str,
    tasks: int = 1,
) -> None:
    """Refuse a request no node of ``part`` can ever run (ValueError naming ``key.*``).
    ``tasks`` tasks share one node (training ranks): CPUs and GPUs count per task, memory
    (``--mem``) per node."""
    where = f"partition {part.name}"
    times = f" x {tasks} ranks" if tasks > 1 else ""
    if cpus * tasks > part.cpus:
        raise ValueError(
            f"{key}.cpus_per_task={cpus}{times}: {where} has at most {part.cpus} CPUs per node"
        )
    if mem_gb > part.mem_gb:
        raise ValueError(
            f"{key}.mem_gb={mem_gb:g}: {where} has at most {part.mem_gb:.1f} GB per node"
        )
    if gpus * tasks > part.gpus:
        offers = f"at most {part.gpus} GPUs per node" if part.gpus else "no GPUs (no gpu GRES)"
        raise ValueError(f"{key}.gpus_per_task={gpus}{times}: {where} has {offers}")
    if timeout_min > part.max_time_min:
        raise ValueError(
            f"{key}.timeout_min={timeout_min:g}: {where} allows at most "
            f"{part.max_time_min:g} min (MaxTime)"
        )


@dataclass(frozen=True)
class Request:
    """What one task asks for."""

    cpus: int
    mem_gb: float
    gpus: int
    timeout_min: int


def derived(
    part: Partition,
    cpus: int | None,
    mem_gb: float | None,
    timeout_min: int | None,
    gpus: int | None = None,
    tasks: int = 1,
) -> Request:
    """Requests left null, derived from the partition. GPUs: one per task where its nodes have
    GPUs, else none. A GPU task gets its GPUs' share of a node's CPUs and memory (an 8-GPU,
    104-core node: 13 cores per one-GPU task, which decode for its encoder); a CPU task up to 4
    CPUs and 16 GB. Time: up to 4 hours, within the partition's MaxTime. ``tasks`` tasks on
    one node (training ranks) split the CPUs; memory is per node."""
    if gpus is None:
        gpus = 1 if part.gpus else 0
    share = min(1.0, gpus / part.gpus) if gpus and part.gpus else 0.0
    node_share = min(1.0, share * tasks)
    return Request(
        cpus=(
            cpus
            if cpus is not None
            else max(1, int(part.cpus * share) or min(4, part.cpus // tasks))
        ),
        mem_gb=(
            mem_gb
            if mem_gb is not None
            else float(int(part.mem_gb * node_share) or min(16.0, float(int(part.mem_gb))))
        ),
        gpus=gpus,
        timeout_min=timeout_min if timeout_min is not None else int(min(240, part.max_time_min)),
    )


def fit(
    name: str | None,
    *,
    cpus: int | None,
    mem_gb: float | None,
    timeout_min: int | None,
    gpus: int | None,
    gres: str | None,
    key: str,
    tasks: int = 1,
) -> Request:
    """The request for partition ``name``: nulls derived from it (GPUs asked for through
    ``gres`` count when ``gpus`` is null), then checked (``preflight``) so that a request no node
    can ever run is refused naming ``key.*``."""
    part = partition(name, key=key)
    if gpus is None and gres:
        gpus = gres_gpus(gres)
    req = derived(part, cpus, mem_gb, timeout_min, gpus, tasks=tasks)
    preflight(
        part,
        cpus=req.cpus,
        mem_gb=req.mem_gb,
        gpus=req.gpus,
        timeout_min=req.timeout_min,
        key=key,
        tasks=tasks,
    )
    return req


def expand(job_id: str) -> list[str]:
    """``32_[0-2,5%2]`` -> ``32_0 32_1 32_2 32_5`` (sacct lists a pending array as one row)."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    ids: list[str] = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def array_states(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """State and pending reason of each job (``ARRAY_TASK`` ids) in one squeue call for their
    arrays, plus one sacct call for those no longer queued. Unknown jobs are left out."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays or shutil.which("squeue") is None:
        return {}
    wanted, states = set(job_ids), {}
    out = _run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T|%r"])
    for row in out.splitlines():
        job_id, state, reason = [*row.split("|"), "", ""][:3]
        if job_id in wanted:
            states[job_id] = {"state": state, "reason": reason, "queued": True}
    gone = wanted - set(states)
    if gone and shutil.which("sacct"):
        out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)])
        for row in out.splitlines():
            job_id, _, state = row.partition("|")
            for j in expand(job_id):
                if j in gone:
                    states[j] = {"state": state.split()[0] if state else "UNKNOWN", "queued": False}
    return states


def in_queue(job_ids: list[str]) -> bool:
    """Whether any of the jobs is still pending or running."""
    return any(s.get("queued") for s in array_states(job_ids).values())


def gres_gpus(gres: str | None) -> int:
    """GPUs asked for in ``launcher.gres`` (``gpu:a100:2`` -> 2)."""
    return _gpus(gres) if gres else 0

"""Unit tests of the SLURM driver's own logic (no cluster: squeue's answers are given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.launch import slurm_cluster as cluster
from jobs.launch.slurm import Watch


def test_array_rows_expand_to_tasks() -> None:
    assert cluster.expand("32_[0-1%2]") == ["32_0", "32_1"]
    assert cluster.expand("7_[0,3-5]") == ["7_0", "7_3", "7_4", "7_5"]
    assert cluster.expand("7_2") == ["7_2"]


def test_time_limits_and_gres_parse() -> None:
    assert cluster._minutes("10") == 10 and cluster._minutes("1-00:30:00") == 1470
    assert cluster._minutes("UNLIMITED") == float("inf")
    assert cluster._gpus("gpu:a100:4(S:0-1),shard:8") == 4 and cluster._gpus("(null)") == 0


class FakeJob:
    def __init__(self, job_id: str, folder: Path) -> None:
        self.job_id = job_id
        self.paths = type("P", (), {"result_pickle": folder / "none.pkl", "stderr": folder / "x"})


def test_a_reason_that_never_clears_fails_fast_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = {"9_0": {"state": "PENDING", "reason": "PartitionTimeLimit", "queued": True}}
    monkeypatch.setattr(cluster, "array_states", lambda ids: rows)
    cancelled: list[Any] = []
    monkeypatch.setattr("jobs.launch.slurm.subprocess.run", lambda cmd, **kw: cancelled.append(cmd))
    launcher = type("L", (), {"store": None, "poll_s": 0.01})()
    watch = Watch(launcher, "9", {0: FakeJob("9_0", tmp_path)}, [0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"PartitionTimeLimit.*launcher\.timeout_min"):
        watch.wait()
    assert cancelled == [["scancel", "9"]]


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({"cpus": 64}, "launcher.cpus_per_task=64: partition p has at most 2 CPUs per node"),
        ({"mem_gb": 500}, "launcher.mem_gb=500: partition p has at most 21.0 GB per node"),
        ({"gpus": 1}, "launcher.gpus_per_task=1: partition p has no GPUs"),
        ({"timeout_min": 60}, "launcher.timeout_min=60: partition p allows at most 10 min"),
    ],
)
def test_preflight_names_the_key_and_what_the_partition_offers(
    request_: dict[str, Any], says: str
) -> None:
    part = cluster.Partition("p", cpus=2, mem_gb=21.0, gpus=0, max_time_min=10)
    fits = {"cpus": 1, "mem_gb": 2.0, "gpus": 0, "timeout_min": 5}
    cluster.preflight(part, **fits, key="launcher")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=says):
        cluster.preflight(part, **{**fits, **request_}, key="launcher")  # type: ignore[arg-type]
    assert cluster.derived(part, None, None, None) == cluster.Request(2, 16.0, 0, 10)


def test_a_gpu_task_gets_its_share_of_the_node() -> None:
    """Nulls derived on a GPU partition: one GPU, and that GPU's share of the node's cores (to
    decode for it) and memory; on a CPU partition (or gpus_per_task=0): up to 4 CPUs, 16 GB."""
    node = cluster.Partition("gpu", cpus=104, mem_gb=2000.0, gpus=8, max_time_min=float("inf"))
    assert cluster.derived(node, None, None, None) == cluster.Request(13, 250.0, 1, 240)
    assert cluster.derived(node, None, None, None, 2) == cluster.Request(26, 500.0, 2, 240)
    assert cluster.derived(node, None, None, None, 0) == cluster.Request(4, 16.0, 0, 240)
    assert cluster.derived(node, 8, 64.0, 30, 1) == cluster.Request(8, 64.0, 1, 30)
    cpu = cluster.Partition("cpu", cpus=2, mem_gb=21.0, gpus=0, max_time_min=10)
    assert cluster.derived(cpu, None, None, None) == cluster.Request(2, 16.0, 0, 10)
    # Training ranks share one node: 4 one-GPU ranks get 4 GPUs' share of the node's memory.
    assert cluster.derived(node, None, None, None, tasks=4) == cluster.Request(13, 1000.0, 1, 240)
    assert cluster.derived(cpu, None, None, None, tasks=2) == cluster.Request(1, 16.0, 0, 10)


def test_preflight_counts_every_rank_on_the_node() -> None:
    node = cluster.Partition("gpu", cpus=16, mem_gb=100.0, gpus=2, max_time_min=60)
    cluster.preflight(node, cpus=8, mem_gb=50, gpus=1, timeout_min=30, key="launcher", tasks=2)
    with pytest.raises(ValueError, match=r"gpus_per_task=1 x 4 ranks: partition gpu has at most 2"):
        cluster.preflight(node, cpus=2, mem_gb=50, gpus=1, timeout_min=30, key="launcher", tasks=4)
    with pytest.raises(
        ValueError, match=r"cpus_per_task=8 x 3 ranks: partition gpu has at most 16"
    ):
        cluster.preflight(node, cpus=8, mem_gb=50, gpus=0, timeout_min=30, key="launcher", tasks=3)


def test_status_lists_only_the_current_layout_with_pending_reasons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.status import _with_slurm_states

    old = {"launcher": "slurm", "submitted_at": 1.0, "shard_count": 4, "array_job_id": "5"}
    old["jobs"] = {str(i): f"5_{i}" for i in range(4)}  # type: ignore[assignment]
    new = {"launcher": "slurm", "submitted_at": 2.0, "shard_count": 2, "array_job_id": "6"}
    new["jobs"] = {"0": "6_0", "1": "6_1"}  # type: ignore[assignment]
    rows = {
        "6_0": {"state": "PENDING", "reason": "Resources", "queued": True},
        "6_1": {"state": "RUNNING", "reason": "None", "queued": True},
    }
    monkeypatch.setattr(cluster, "array_states", lambda ids: rows)
    shards = {i: {"done": 0, "failed": 0, "frames": 0} for i in range(4)}  # ghosts 2 and 3
    out = _with_slurm_states(shards, [old, new])
    assert sorted(out) == [0, 1]
    assert out[0]["slurm"] == {"job_id": "6_0", "state": "PENDING", "reason": "Resources"}
    assert out[1]["slurm"] == {"job_id": "6_1", "state": "RUNNING"}


def test_a_bucket_store_keeps_its_launch_folder_on_the_file_system(tmp_path: Path) -> None:
    """The default folder (``STORE/logs/slurm``) of a store on object storage is a local one
    under the working directory; a URL named as the folder is refused."""
    from jobs.launch.slurm import local_folder

    store = "s3://bucket/feats/x.zarr"
    assert local_folder(f"{store}/logs/slurm", store) == str(
        Path.cwd() / "outputs" / "slurm" / "s3" / "bucket" / "feats" / "x.zarr"
    )
    assert local_folder(str(tmp_path / "logs"), store) == str(tmp_path / "logs")
    assert local_folder("out.zarr/logs/slurm", "out.zarr") == "out.zarr/logs/slurm"
    with pytest.raises(ValueError, match=r"launcher.folder=s3://bucket/logs: must be a folder"):
        local_folder("s3://bucket/logs", store)

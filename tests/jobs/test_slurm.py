"""Extraction on a REAL SLURM (slurmctld + slurmd + slurmdbd on localhost) through submitit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cache import load_index, open_store, read_journal, read_launches
from tests.jobs.cli import ROOT, make_videos, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]

N_LONG = 24
SLURM = [
    "launcher=slurm",
    "launcher.partition=debug",
    "launcher.cpus_per_task=1",
    "launcher.mem_gb=2",
]


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def done_count(store: Path) -> int:
    return len(load_index(store).videos) if (store / "zarr.json").exists() else 0


def task_job_id(store: Path) -> str:
    return str(read_launches(store)[-1]["jobs"]["0"])


def slurm_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    ).stdout.strip()
    return out or "GONE"


def long_run(tmp_path: Path, tiny_siglip: Path, seconds: float = 20.0) -> tuple[Path, list[str]]:
    """One shard over videos long enough that the task cannot finish within SLURM's KillWait
    (5 s) after a requeue or scancel (submitit ignores the SIGTERM that comes first)."""
    videos = tmp_path / "videos"
    make_videos(videos, N_LONG, seconds)
    store = tmp_path / "out.zarr"
    args = [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        *SLURM,
        "launcher.shards=1",
        "job.commit_interval_s=0",
        "job.batch_frames=2",
    ]
    return store, args


def test_array_extraction_with_a_failing_video(tmp_path: Path, tiny_siglip: Path) -> None:
    videos = tmp_path / "videos"
    make_videos(videos, 4, 1.5)
    (videos / "empty.mp4").write_bytes(b"")
    store = tmp_path / "out.zarr"
    r = run_cli(
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        *SLURM,
        "launcher.shards=2",
        hydra_dir=tmp_path / "h",
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert "4 done, 0 skipped (already complete), 1 failed" in r.stdout, r.stdout
    assert "FAILED empty: " in r.stdout and "empty file (0 bytes)" in r.stdout
    assert "slurm: submitted array" in r.stderr
    s = open_store(store)
    assert {e.shard for e in s.index.videos.values()} == {0, 1}
    for i in range(4):
        assert s.read(f"v{i}")[0].shape == (3, 10, 64)
    st = run_cli("job=status", f"store={store}", hydra_dir=tmp_path / "h")
    assert "4 done, 1 failed" in st.stdout and "SLURM job" in st.stdout, st.stdout
    v = run_cli("job=verify", f"store={store}", hydra_dir=tmp_path / "h")
    assert v.returncode == 0, v.stdout


def upload(folder: Path, bucket: str, prefix: str) -> str:
    """Every file of ``folder`` to ``bucket/prefix/``; that prefix's URL."""
    import boto3

    client, name = boto3.client("s3"), bucket.removeprefix("s3://")
    for p in sorted(folder.iterdir()):
        client.upload_file(str(p), name, f"{prefix}/{p.name}")
    return f"{bucket}/{prefix}/"


def test_array_extraction_from_a_bucket_into_a_bucket(
    tmp_path: Path, tiny_siglip: Path, s3_bucket: str
) -> None:
    """videos= and store= on object storage: the tasks get the endpoint and keys from the
    submitting environment, fetch their videos to node-local scratch and commit to the bucket;
    the driver's frames/s reads the bucket; status and verify read it; the store equals a
    local-launcher run's."""
    videos = upload(make_videos(tmp_path / "videos", 3, 1.5), s3_bucket, "vids")
    store, scratch = f"{s3_bucket}/x.zarr", tmp_path / "scratch"
    common = [
        "job=extract",
        f"videos={videos}",
        f"encoder.pretrained={tiny_siglip}",
        "job.batching=fixed",  # batches do not depend on timing: tokens equal bit for bit
        "job.progress=false",
        f"job.remote.scratch_dir={scratch}",
        "launcher.shards=2",
    ]
    r = run_cli(
        *common, f"store={store}", *SLURM, f"launcher.folder={tmp_path / 'logs'}",
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "3 done, 0 skipped (already complete), 0 failed" in r.stdout, r.stdout
    assert f"store: {store}" in r.stdout
    assert re.search(r"slurm: array \d+: 2/2 done; 9 frames, [\d.]+ frames/s", r.stderr), r.stderr
    launches = read_launches(store)  # registered in the bucket, kept in the folder
    assert len(launches) == 1 and sorted(launches[0]["jobs"]) == ["0", "1"], launches
    assert launches[0]["folder"] == str(tmp_path / "logs")
    assert scratch.is_dir() and not any(scratch.iterdir())  # every copy removed
    ref = run_cli(*common, f"store={tmp_path / 'local.zarr'}", hydra_dir=tmp_path / "h2")
    assert ref.returncode == 0 and "3 done" in ref.stdout, ref.stderr[-3000:]
    s, want = open_store(store), open_store(tmp_path / "local.zarr")
    assert s.video_ids(status="done") == want.video_ids(status="done") == ["v0", "v1", "v2"]
    assert {e.shard for e in s.index.videos.values()} == {0, 1}
    for vid in s.video_ids():
        (tb, pb), (ta, pa) = s.read(vid), want.read(vid)
        assert tb.shape == (3, 10, 64)
        np.testing.assert_array_equal(tb, ta)
        np.testing.assert_array_equal(pb, pa)
        assert s.info(vid)["source_path"] == f"{videos}{vid}.mp4"
    st = run_cli("job=status", f"store={store}", hydra_dir=tmp_path / "h3")
    assert st.returncode == 0 and "3 done, 0 failed" in st.stdout, st.stdout + st.stderr[-2000:]
    for shard, job_id in launches[0]["jobs"].items():
        assert re.search(rf"shard +{shard}: .*SLURM job {job_id} ", st.stdout), st.stdout
    v = run_cli("job=verify", f"store={store}", hydra_dir=tmp_path / "h4")
    assert v.returncode == 0 and "verify: OK" in v.stdout, v.stdout + v.stderr[-2000:]
    assert "3 done videos, 9 frames checked" in v.stdout, v.stdout


def test_status_shows_slurm_states_with_the_launcher_folder_elsewhere(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    from jobs.status import store_status

    videos, store, folder = tmp_path / "videos", tmp_path / "out.zarr", tmp_path / "slurm-logs"
    make_videos(videos, 2, 1.0)
    r = run_cli(
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        *SLURM,
        "launcher.shards=2",
        f"launcher.folder={folder}",
        hydra_dir=tmp_path / "h",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (folder / "launches.jsonl").is_file() and not (store / "logs").exists()
    launches = read_launches(store)
    assert len(launches) == 1 and launches[0] == json.loads((folder / "launches.jsonl").read_text())
    jobs = {int(shard): job_id for shard, job_id in launches[0]["jobs"].items()}
    assert sorted(jobs) == [0, 1] and task_job_id(store) == jobs[0]

    def states() -> dict[int, dict[str, str]]:
        return {k: v["slurm"] for k, v in store_status(store)["shards"].items() if "slurm" in v}

    # sacct may show a task as COMPLETING for a moment after its result is in.
    want = {shard: {"job_id": job_id, "state": "COMPLETED"} for shard, job_id in jobs.items()}
    wait_for(lambda: states() == want, 120, "sacct to show every shard COMPLETED")
    st = run_cli("job=status", f"store={store}", hydra_dir=tmp_path / "h")
    assert st.returncode == 0 and "2 done, 0 failed" in st.stdout, st.stdout + st.stderr[-2000:]
    for shard, job_id in jobs.items():
        assert f"shard {shard:5d}: 1 done, 0 failed" in st.stdout, st.stdout
        assert f"idle, SLURM job {job_id} COMPLETED" in st.stdout, st.stdout
    js = run_cli("job=status", f"store={store}", "job.json=true", hydra_dir=tmp_path / "h")
    shards = json.loads(js.stdout)["shards"]
    assert {int(k): v["slurm"] for k, v in shards.items()} == want


def test_requeued_task_continues_without_redoing_done_videos(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    store, args = long_run(tmp_path, tiny_siglip, seconds=10.0)
    r = run_cli(*args, "launcher.wait=false", hydra_dir=tmp_path / "h")
    assert r.returncode == 0 and "job=status" in r.stdout, r.stderr[-2000:]
    job_id = task_job_id(store)
    wait_for(lambda: done_count(store) >= 2, 180, "2 videos done")
    before = {v: e.record["attempt"] for v, e in load_index(store).videos.items()}
    assert len(before) < N_LONG, "the task finished before it could be requeued"
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # A requeued job is held back ~2 min by SLURM; let it start again at once.
    wait_for(
        lambda: (
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True
            ).returncode
            == 0
            and slurm_state(job_id) in ("PENDING", "RUNNING", "CONFIGURING", "GONE")
        ),
        60,
        "requeued job to be schedulable",
    )
    wait_for(lambda: done_count(store) == N_LONG and slurm_state(job_id) == "GONE", 240, "all done")
    after = load_index(store)
    assert all(after.videos[v].record["attempt"] == a for v, a in before.items())
    records = read_journal(store / "index" / "shard-00000.jsonl")
    assert sum(r["kind"] == "run" for r in records) >= 2  # the task really ran twice
    done_lines = Counter(r["video_id"] for r in records if r["kind"] == "video")
    assert set(done_lines.values()) == {1}, done_lines  # no video was redone
    v = run_cli("job=verify", f"store={store}", hydra_dir=tmp_path / "h2")
    assert v.returncode == 0, v.stdout


def test_scancel_then_rerun_completes_only_the_rest(tmp_path: Path, tiny_siglip: Path) -> None:
    store, args = long_run(tmp_path, tiny_siglip, seconds=10.0)
    r = run_cli(*args, "launcher.wait=false", hydra_dir=tmp_path / "h")
    assert r.returncode == 0, r.stderr[-2000:]
    job_id = task_job_id(store)
    wait_for(lambda: done_count(store) >= 2, 180, "2 videos done")
    subprocess.run(["scancel", job_id], check=True)
    wait_for(lambda: slurm_state(job_id) == "GONE", 60, "cancelled job to leave the queue")
    before = {v: e.record["attempt"] for v, e in load_index(store).videos.items()}
    assert 2 <= len(before) < N_LONG
    r2 = run_cli(*args, hydra_dir=tmp_path / "h2")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"{N_LONG - len(before)} done, {len(before)} skipped" in r2.stdout, r2.stdout
    after = load_index(store)
    assert all(after.videos[v].record["attempt"] == a for v, a in before.items())
    assert len(after.videos) == N_LONG


def test_hydra_sweep_on_slurm(tmp_path: Path, tiny_siglip: Path) -> None:
    videos = tmp_path / "videos"
    make_videos(videos, 2, 1.0)
    r = run_cli(
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "job=extract",
        f"videos={videos}",
        f"encoder.pretrained={tiny_siglip}",
        "store=${hydra:sweep.dir}/pool${encoder.pool}.zarr",
        "encoder.pool=1,3",
        "job.batching=fixed",  # same batches in both runs, so the CLS tokens match bit for bit
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "job.progress=false",
        hydra_dir=tmp_path / "h",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    one, three = (
        open_store(tmp_path / "sweep" / "pool1.zarr"),
        open_store(tmp_path / "sweep" / "pool3.zarr"),
    )
    assert one.read("v0")[0].shape == (2, 2, 64) and three.read("v0")[0].shape == (2, 10, 64)
    # The CLS token does not depend on the pooling.
    np.testing.assert_array_equal(one.read("v1")[0][:, 0], three.read("v1")[0][:, 0])
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # it went through submitit


def extract_args(tmp_path: Path, tiny_siglip: Path, n: int, *extra: str) -> tuple[Path, list[str]]:
    videos, store = tmp_path / "videos", tmp_path / "out.zarr"
    make_videos(videos, n, 1.0)
    args = [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        *SLURM,
        *extra,
    ]
    return store, args


def queued() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("launcher.cpus_per_task=64", "launcher.cpus_per_task=64: partition debug has at most 2"),
        # The same check for the other keys; slow only because each case starts run.py.
        pytest.param(
            "launcher.mem_gb=500",
            "launcher.mem_gb=500: partition debug has at most",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "launcher.gpus_per_task=1",
            "launcher.gpus_per_task=1: partition debug has no GPUs",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "launcher.partition=nosuch",
            "launcher.partition=nosuch: no such partition",
            marks=pytest.mark.slow,
        ),
        ("launcher.partition=short", "launcher.timeout_min=60: partition short allows at most 10"),
    ],
)
def test_impossible_request_is_refused_before_submission(
    tmp_path: Path, tiny_siglip: Path, override: str, says: str
) -> None:
    store, args = extract_args(tmp_path, tiny_siglip, 1, "launcher.timeout_min=60")
    before = queued()
    r = run_cli(*args, override, hydra_dir=tmp_path / "h")
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "submitted array" not in r.stderr
    # Nothing new in the queue (a job of an earlier test may have left it meanwhile).
    assert not queued() - before and not read_launches(store)


def test_sbatch_rejection_is_one_line_with_exit_2(tmp_path: Path, tiny_siglip: Path) -> None:
    _, args = extract_args(tmp_path, tiny_siglip, 1)
    r = run_cli(
        *args, "+launcher.additional_parameters.nodelist=nosuchnode", hydra_dir=tmp_path / "h"
    )
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "sbatch refused the array" in errors[0], r.stderr[-3000:]
    assert "node" in errors[0].lower() and "Traceback" not in r.stderr


@pytest.fixture
def busy_node() -> Iterator[str]:
    """A job holding every CPU of the node, so arrays submitted meanwhile pend (Resources)."""
    hold = ["-p", "debug", "-c", "2", "--mem=100M", "--output=/dev/null", "--wrap", "sleep 600"]
    out = subprocess.run(
        ["sbatch", "--parsable", *hold],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wait_for(lambda: slurm_state(out) == "RUNNING", 60, "the blocking job to run")
    yield out
    subprocess.run(["scancel", out])


def start_driver_until_pending(
    tmp_path: Path, args: list[str]
) -> tuple[subprocess.Popen[str], str]:
    """Start a waiting driver; its stderr up to the first line that shows a pending reason."""
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path / 'h'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "PENDING (" in line:
            break
    return proc, "".join(lines)


def test_pending_array_shows_its_reason_and_a_cancel_returns_in_seconds(
    tmp_path: Path, tiny_siglip: Path, busy_node: str
) -> None:
    _, args = extract_args(tmp_path, tiny_siglip, 16, "launcher.shards=16", "launcher.poll_s=0.5")
    proc, pending = start_driver_until_pending(tmp_path, args)
    try:
        assert proc.stderr is not None
        assert "0/16 done, 16 PENDING (" in pending, pending
        array = pending.split("submitted array ")[1].split()[0]
        t0 = time.monotonic()
        subprocess.run(["scancel", array], check=True)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    assert took < 15, f"the driver took {took:.1f} s to return after scancel"
    assert proc.returncode != 0
    assert f"array {array} ended: 16 CANCELLED" in rest, rest[-3000:]


def test_status_right_after_submission_then_a_rerun_attaches(
    tmp_path: Path, tiny_siglip: Path, busy_node: str
) -> None:
    store, args = extract_args(tmp_path, tiny_siglip, 2, "launcher.shards=2", "launcher.poll_s=0.5")
    r = run_cli(*args, "launcher.wait=false", hydra_dir=tmp_path / "h")
    assert r.returncode == 0 and "job=status" in r.stdout, r.stderr[-3000:]
    array = read_launches(store)[-1]["array_job_id"]
    st = run_cli("job=status", f"store={store}", hydra_dir=tmp_path / "h")
    assert st.returncode == 0, st.stdout + st.stderr[-2000:]
    for shard in (0, 1):
        assert f"shard {shard:5d}: 0 done" in st.stdout, st.stdout
        assert f"SLURM job {array}_{shard} PENDING (" in st.stdout, st.stdout
    # A rerun while the array is queued attaches to it; freeing the node lets it finish.
    subprocess.run(["scancel", busy_node], check=True)
    r2 = run_cli(*args, hydra_dir=tmp_path / "h2")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"array {array} still runs these shards: attaching" in r2.stderr, r2.stderr[-3000:]
    assert "submitted array" not in r2.stderr and len(read_launches(store)) == 1
    assert f"array {array} ended: 2 COMPLETED" in r2.stderr
    assert "2 done, 0 skipped" in r2.stdout, r2.stdout


def task_log(store: Path) -> str:
    folder = store / "logs" / "slurm"
    return "\n".join(p.read_text(errors="replace") for p in folder.glob("*/*_log.*"))


def test_scancel_of_a_running_task_commits_its_frames(tmp_path: Path, tiny_siglip: Path) -> None:
    # A minute of video each: decoding only what is sampled, 20 s videos finished in ~15 s.
    store, args = long_run(tmp_path, tiny_siglip, seconds=60.0)
    # Nothing would be committed before the end of the shard without the signal.
    r = run_cli(
        *args, "job.commit_interval_s=3600", "launcher.wait=false", hydra_dir=tmp_path / "h"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    job_id = task_job_id(store)
    wait_for(lambda: (store / "zarr.json").exists(), 240, "the task to start writing")
    time.sleep(5)  # encoding (the model loaded before the store existed), nothing committed yet
    subprocess.run(["scancel", job_id], check=True)
    wait_for(lambda: slurm_state(job_id) == "GONE", 60, "cancelled job to leave the queue")
    index = load_index(store)
    committed = sum(int(e.record["num_frames"]) for e in index.videos.values())
    committed += sum(p.frames for p in index.partial.values())
    assert committed > 0, task_log(store)[-3000:]
    assert not [e for e in index.videos.values() if e.status == "failed"]
    assert "interrupted: committed" in task_log(store), task_log(store)[-3000:]


def test_time_limit_marks_no_good_video_failed(tmp_path: Path, tiny_siglip: Path) -> None:
    # Minutes of work: every source frame is sampled (30 FPS), so short videos suffice.
    store, args = long_run(tmp_path, tiny_siglip, seconds=10.0)
    r = run_cli(
        *args,
        "job.decode.fps=30",
        "launcher.timeout_min=1",
        "launcher.max_requeues=0",
        hydra_dir=tmp_path / "h",
    )
    assert r.returncode == 1, r.stderr[-3000:]  # the shard did not finish
    # SLURM may send the time-limit signal up to a minute early, i.e. at once here: the task
    # stops through the signal mechanism, committing what it has, and records no failure.
    assert "interrupted: committed" in task_log(store), task_log(store)[-3000:]
    index = load_index(store)
    assert not [e for e in index.videos.values() if e.status == "failed"]
    assert "UncompletedJobError" not in r.stdout and "ended: 1 FAILED" in r.stderr, r.stderr
    st = run_cli("job=status", f"store={store}", hydra_dir=tmp_path / "h2")
    lines = [ln.strip() for ln in st.stdout.splitlines()]
    assert not [ln for ln in lines if ln.startswith("FAILED")], st.stdout
    assert " 0 failed;" in st.stdout, st.stdout


def test_sweep_validates_points_first_and_reports_every_outcome(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    videos = tmp_path / "videos"
    make_videos(videos, 1, 1.0)
    common = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "job=extract",
        f"encoder.pretrained={tiny_siglip}",
        "store=${hydra:sweep.dir}/${hydra:job.num}.zarr",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "job.progress=false",
    ]
    bad = run_cli(*common, f"videos={videos}", "job.decode.fps=-1,2", hydra_dir=tmp_path / "h")
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "job.decode.fps=-1: invalid: ValueError" in bad.stderr, bad.stderr[-3000:]
    assert "nothing submitted" in bad.stderr and not (tmp_path / "sweep" / ".submitit").exists()
    # Defaults (cpus/mem null) are derived from the 2-CPU partition; one point fails at run time.
    r = run_cli(*common, f"videos={videos},{tmp_path / 'nosuch'}", hydra_dir=tmp_path / "h2")
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"videos={videos}: ok" in r.stderr, r.stderr[-3000:]
    assert "nosuch: FAILED: FileNotFoundError" in r.stderr, r.stderr[-3000:]
    assert "sweep: 1 ok, 1 failed" in r.stderr
    assert re.search(r"slurm: sweep array \d+: \d/2 done", r.stderr), r.stderr[-3000:]


def test_a_cancelled_sweep_point_is_reported_and_the_others_finish(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    """The sweep's driver watches its array as launcher=slurm does: a point whose task is
    cancelled is reported failed within a poll, and the other point's outcome is shown."""
    short, long = tmp_path / "short", tmp_path / "long"
    make_videos(short, 1, 1.0)
    make_videos(long, N_LONG, 20.0)
    cmd = [
        sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=slurm",
        "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2", "job=extract", f"encoder.pretrained={tiny_siglip}",
        f"videos={short},{long}", "store=${hydra:sweep.dir}/${hydra:job.num}.zarr",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", "job.progress=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if m := re.search(r"sweep: submitted array (\d+)", line):
            array = m.group(1)
            break
    else:
        raise AssertionError("".join(lines))
    wait_for(lambda: slurm_state(f"{array}_1") == "RUNNING", 60, "the long point to run")
    subprocess.run(["scancel", f"{array}_1"], check=True)
    t0 = time.monotonic()
    out = "".join(lines) + proc.stderr.read()  # to the end: the driver has exited
    assert proc.wait(timeout=30) == 1, out[-3000:]
    assert time.monotonic() - t0 < 60, "the driver did not notice the cancel within a minute"
    points = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("sweep: #")}
    assert f"videos={short} " in points["#0"] and points["#0"].endswith(": ok"), out[-3000:]
    assert f"videos={long} " in points["#1"], out[-3000:]
    assert f"FAILED: RuntimeError: its SLURM task {array}_1 ended" in points["#1"], out[-3000:]
    assert "sweep: 1 ok, 1 failed" in out and "Traceback" not in out, out[-3000:]
    assert f"point 1 (job {array}_1) CANCELLED" in out, out[-3000:]  # with the end of its log


def test_ctrl_c_detaches_and_the_array_runs_on(
    tmp_path: Path, tiny_siglip: Path, busy_node: str
) -> None:
    _, args = extract_args(tmp_path, tiny_siglip, 1, "launcher.shards=1", "launcher.poll_s=0.5")
    proc, pending = start_driver_until_pending(tmp_path, args)
    try:
        assert proc.stderr is not None
        array = pending.split("submitted array ")[1].split()[0]
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=30)
        assert proc.returncode == 130, rest
        assert f"detached; array {array} still runs: `scancel {array}`" in rest, rest
        assert "job=status" in rest and "Traceback" not in rest, rest
        assert slurm_state(array) == "PENDING"  # the array runs on
    finally:
        proc.kill()
        subprocess.run(["scancel", array])


def readme_slurm_example() -> list[str]:
    """The launcher settings of the README's SLURM row, as written there."""
    text = (ROOT / "README.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| SLURM array |"))
    found = re.search(r"`([^`]*launcher=slurm[^`]*)`", row)
    assert found, row
    return found.group(1).split()


def test_the_readme_cluster_example_runs_as_written(tmp_path: Path, tiny_siglip: Path) -> None:
    """The README's SLURM example, apart from its partition name, runs on the test cluster, and
    the task gets every CPU of the (GPU-less) node to decode with."""
    example = readme_slurm_example()
    assert "launcher.partition=gpu" in example, example
    args = ["launcher.partition=debug" if a == "launcher.partition=gpu" else a for a in example]
    videos = tmp_path / "videos"
    make_videos(videos, 1, 1.5)
    store = tmp_path / "out.zarr"
    r = run_cli(
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        *args,
        hydra_dir=tmp_path / "h",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 done, 0 skipped (already complete), 0 failed" in r.stdout, r.stdout
    cpus = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "AllocCPUS", "-j", task_job_id(store)],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert cpus and cpus[0] == str(os.cpu_count()), cpus

"""``job=extract store=s3://...`` end to end against moto's S3 server on 127.0.0.1: the local
launcher, a kill -9 and its rerun (which waits for the lease to lapse, saying so), job=status
and job=verify on the bucket, the storage errors that stop a run before any work, and the
README's object-storage row (videos and store in a bucket, launcher=ray) as written."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cache import load_index, open_store, store_exists
from tests.jobs.cli import ROOT, make_videos, run_cli


def test_extract_to_s3_kill_9_rerun_status_verify(
    tmp_path: Path, tiny_siglip: Path, s3_bucket: str
) -> None:
    videos = make_videos(tmp_path / "videos", 5, 2.0)
    store = f"{s3_bucket}/out.zarr"
    args = [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        "job.commit_interval_s=0",
        "job.batch_frames=2",
        "job.progress=false",
        "job.lease_ttl_s=2",
    ]
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path / 'h'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if store_exists(store) and len(load_index(store).videos) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {v: e.record["attempt"] for v, e in load_index(store).videos.items()}
    assert 2 <= len(done_before) < 5, done_before
    r = run_cli(*args, hydra_dir=tmp_path / "h2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "waiting up to 2 s for the lease" in r.stderr, r.stderr[-3000:]  # said, then taken
    assert f"{5 - len(done_before)} done, {len(done_before)} skipped" in r.stdout, r.stdout
    assert f"store: {store}" in r.stdout
    after = load_index(store)
    assert sorted(after.videos) == [f"v{i}" for i in range(5)]
    assert all(after.videos[v].record["attempt"] == a for v, a in done_before.items())
    s = open_store(store)  # training, eval and streaming reads open the URL the same way
    for vid in s.video_ids():
        tok, pts = s.read(vid)
        assert tok.shape[0] == len(pts) == s.info(vid)["num_frames"] == 4
        assert np.isfinite(tok).all()
    st = run_cli("job=status", f"store={store}", hydra_dir=tmp_path / "h3")
    assert st.returncode == 0 and "5 done, 0 failed" in st.stdout, st.stdout + st.stderr
    v = run_cli("job=verify", f"store={store}", hydra_dir=tmp_path / "h4")
    assert v.returncode == 0 and "verify: OK" in v.stdout, v.stdout + v.stderr
    assert "5 done videos, 20 frames checked" in v.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def auth_server() -> Iterator[str]:
    """A second moto server that checks credentials (none it knows), in its own process."""
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _refused(tmp_path: Path, store: str, endpoint: str | None = None) -> str:
    videos = make_videos(tmp_path / "videos", 1, 0.5)
    with pytest.MonkeyPatch.context() as mp:
        if endpoint:
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
        r = _run(videos, store, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: store=") and "Traceback" not in r.stderr, r.stderr
    return first


def _run(videos: Path, store: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        "encoder.pretrained=/nonexistent/never-loaded",  # loading it would be another error
        hydra_dir=tmp_path / "h",
    )


def test_storage_errors_are_one_line_before_any_work(
    tmp_path: Path, s3_bucket: str, auth_server: str
) -> None:
    missing = _refused(tmp_path / "a", "s3://no-such-bucket-here/x.zarr")
    assert "the bucket does not exist" in missing
    dead = _refused(tmp_path / "b", f"{s3_bucket}/x.zarr", f"http://127.0.0.1:{_free_port()}")
    assert "cannot reach http://127.0.0.1:" in dead and "AWS_ENDPOINT_URL" in dead
    denied = _refused(tmp_path / "c", f"{s3_bucket}/x.zarr", auth_server)
    assert "access denied" in denied and "AWS_ACCESS_KEY_ID" in denied


@pytest.mark.slow  # a Ray cluster's start-up: about 1-2 min on 2 busy cores
def test_ray_shard_writers_share_nothing_but_the_bucket(
    tmp_path: Path, tiny_siglip: Path, s3_bucket: str
) -> None:
    """launcher=ray with its default design (decode tasks, encoder actors): shard writers run in
    Ray workers and commit to the bucket; the store reads back whole."""
    import logging

    import ray

    from cache.objectlog import read_records
    from cache.storage import open_storage
    from extract.encoders import SiglipConfig
    from extract.samples import make_video
    from jobs.extract import ExtractJob
    from jobs.launch.ray_launcher import RayLauncher

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_video(videos / f"v{i}.mp4", seconds=1.0, width=64, height=48)
    store = f"{s3_bucket}/ray.zarr"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        summary = ExtractJob(
            videos=str(videos),
            store=store,
            encoder=SiglipConfig(pretrained=str(tiny_siglip)),
            launcher=RayLauncher(shards=2),
            progress=False,
        ).execute()
    finally:
        ray.shutdown()
    assert summary is not None and summary["done"] == 3 and not summary["failed"], summary
    journals = read_records(open_storage(store)).values()
    runs = [r for records in journals for r in records if r["kind"] == "run"]
    assert len(runs) == 2 and all(r["pid"] != os.getpid() for r in runs)  # Ray workers wrote
    s = open_store(store)
    assert s.video_ids(status="done") == ["v0", "v1", "v2"]
    assert all(s.read(v)[0].shape[0] == 2 for v in s.video_ids())


def readme_object_storage_row() -> str:
    """The command of the README cluster table's object-storage row, as written there."""
    text = (ROOT / "README.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| object storage"))
    found = re.search(r"`([^`]*python run\.py[^`]*)`", row)
    assert found, row
    return found.group(1)


def test_the_readme_object_storage_row_runs_as_written(
    tmp_path: Path, tiny_siglip: Path, s3_server: str
) -> None:
    """The README's command against the test server: only its port is this server's, the
    environment has no other AWS_* setting, and the test adds its tiny encoder, a scratch
    folder to look into and a Hydra folder. launcher=ray with job.ray set (decode tasks and
    encoder actors): the videos and the store share nothing but the bucket."""
    import boto3

    from jobs.verify import verify_store

    words = shlex.split(readme_object_storage_row())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    while "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the command
        key, _, value = words.pop(0).partition("=")
        env[key] = value.replace("http://127.0.0.1:5000", s3_server)
    assert env["AWS_ENDPOINT_URL"] == s3_server and words[:2] == ["python", "run.py"], words
    args = dict(w.partition("=")[::2] for w in words[2:])
    assert args["launcher"] == "ray" and "job.ray" not in args, args  # the default Ray design
    videos, store = args["videos"], args["store"]
    bucket, prefix = videos.removeprefix("s3://").split("/", 1)
    client = boto3.client("s3")  # the fixture's endpoint and keys
    client.create_bucket(Bucket=bucket)
    local = make_videos(tmp_path / "videos", 3, 1.5)
    for p in sorted(local.iterdir()):
        client.upload_file(str(p), bucket, f"{prefix}{p.name}")
    scratch = tmp_path / "scratch"
    cmd = [
        sys.executable, str(ROOT / "run.py"), *words[2:],
        f"encoder.pretrained={tiny_siglip}", f"job.remote.scratch_dir={scratch}",
        "job.progress=false", f"hydra.run.dir={tmp_path / 'h'}",
    ]  # fmt: skip
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "3 done, 0 skipped (already complete), 0 failed" in r.stdout, r.stdout
    assert "RayLauncher" in r.stderr and f"store: {store}" in r.stdout, r.stderr[-3000:]
    assert scratch.is_dir() and not any(scratch.iterdir())  # every node copy removed
    s = open_store(store)
    assert s.video_ids(status="done") == ["v0", "v1", "v2"]
    for vid in s.video_ids():
        assert s.info(vid)["source_path"] == f"{videos}{vid}.mp4"
        assert s.read(vid)[0].shape == (3, 10, 64)
    report = verify_store(store)
    assert report["problems"] == {} and report["checked"] == 3, report
    print(f"README object-storage command: {took:.1f} s")

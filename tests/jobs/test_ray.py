"""The Ray launcher and extraction's Ray design on a real local Ray (2 CPUs): end to end through
run.py, worker and actor deaths mid-run, and the decode window's backpressure."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from cache import StoreLayout, load_index, open_store  # noqa: E402
from extract.encoders import SiglipConfig  # noqa: E402
from extract.pipeline import DecodeOptions, OpenedVideo, VideoTask  # noqa: E402
from extract.samples import make_video, read_indices  # noqa: E402
from jobs.extract import ExtractJob, ExtractSpec, ShardResult, run_shard  # noqa: E402
from jobs.extract_ray import RayExtraction, RaySource, decode_range  # noqa: E402
from jobs.launch.ray_launcher import RayLauncher  # noqa: E402
from jobs.verify import verify_store  # noqa: E402
from tests.jobs.cli import ROOT, run_cli  # noqa: E402


def test_cli_ray_matches_local_bit_for_bit(tmp_path: Path, tiny_siglip: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        make_video(videos / f"v{i}.mp4", seconds=1.0 + 0.5 * i, width=64 + 16 * i, height=48)
    (videos / "bad.mp4").write_bytes(b"")
    common = [
        "job=extract",
        f"videos={videos}",
        f"encoder.pretrained={tiny_siglip}",
        "job.batch_frames=4",
        "job.batching=fixed",
        "job.progress=false",
    ]
    # Same shard count and fixed batching on both sides: the tiny SigLIP on CPU is not
    # batch-invariant (a frame's tokens move by ~6e-7 with the batch it is encoded in), so the
    # batches must not depend on timing, and shards decide the batches.
    # The two runs overlap: the Ray one mostly waits on process start-up.
    with ThreadPoolExecutor(1) as pool:
        local_run = pool.submit(
            run_cli,
            *common,
            f"store={tmp_path / 'local.zarr'}",
            "launcher.shards=2",
            hydra_dir=tmp_path / "h1",
        )
        t0 = time.perf_counter()
        remote = run_cli(
            *common,
            f"store={tmp_path / 'ray.zarr'}",
            "launcher=ray",
            "launcher.num_cpus=2",
            hydra_dir=tmp_path / "h2",
        )
        took = time.perf_counter() - t0
        local = local_run.result()
    assert local.returncode == 1, local.stderr[-3000:]
    assert remote.returncode == 1, remote.stdout[-3000:] + remote.stderr[-3000:]
    for out in (local.stdout, remote.stdout):
        assert "4 done, 0 skipped (already complete), 1 failed, 0 not processed" in out, out
    assert "RayLauncher" in remote.stderr and "Traceback" not in remote.stderr, remote.stderr
    a, b = open_store(tmp_path / "local.zarr"), open_store(tmp_path / "ray.zarr")
    assert a.video_ids(status="done") == b.video_ids(status="done") == [f"v{i}" for i in range(4)]
    assert {e.shard for e in b.index.videos.values()} == {0, 1}
    why = b.info("bad")["error"]
    assert why.startswith("empty file (0 bytes):") and why == a.info("bad")["error"], why
    assert f"FAILED bad: {videos / 'bad.mp4'}: empty file (0 bytes)" in remote.stdout
    for vid in a.video_ids(status="done"):
        (ta, pa), (tb, pb) = a.read(vid), b.read(vid)
        assert len(ta) == a.info(vid)["num_frames"] > 0
        np.testing.assert_array_equal(tb, ta)  # bit-identical tokens
        np.testing.assert_array_equal(pb, pa)
        ia, ib = a.info(vid), b.info(vid)
        for key in ("num_frames", "width", "height", "begin_seconds", "end_seconds", "codec"):
            assert ia[key] == ib[key], (vid, key)
    print(f"ray CLI run: {took:.1f} s")


def test_missing_ray_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from jobs.launch.ray_launcher import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'ray=="):
        import_ray()
    with pytest.raises(ImportError, match="launcher=ray needs Ray"):
        RayLauncher().run(lambda shard, n: shard, 1)


def test_launcher_protocol_and_config() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from jobs.launch.launchers import Launcher

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["launcher=ray", "job.ray.encoder_actors=3", "store=y", "videos=x"])
    launcher: Launcher = instantiate(cfg.launcher)
    assert isinstance(launcher, RayLauncher) and launcher.address is None
    assert launcher.run(lambda shard, n: shard, 0) == []  # a list, not None: Ray always waits
    job = instantiate(cfg.job, _convert_="all")
    assert isinstance(job.spec.ray, RayExtraction) and job.spec.ray.encoder_actors == 3
    assert job._shard_count() == 6  # two shards per encoder actor unless launcher.shards is set
    assert launcher.shard_count == 2  # what a job without a Ray design gets
    with pytest.raises(NotImplementedError, match="job=extract only"):
        launcher.run_ranks(lambda rank, n: rank, 2)
    with pytest.raises(ValueError, match="decode_num_cpus must be > 0"):
        RayExtraction(decode_num_cpus=0)


# -- in-process Ray --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(s3_server: str) -> Iterator[Any]:
    """One local Ray for the tests below; launchers find it running and leave it up. Its
    workers get the environment of its start, so the test S3 server's endpoint and keys are
    set first (as a real cluster's nodes have theirs)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _spec(store: Path, videos: list[Path], model: Path) -> ExtractSpec:
    return ExtractSpec(
        store=str(store),
        videos=tuple(VideoTask(p.stem, p) for p in videos),
        encoder=SiglipConfig(pretrained=str(model)),
        decode=DecodeOptions(fps=2.0, frames_per_call=2),
        # One frame per encoder call: tokens then do not depend on how frames were batched, so
        # a shard resumed mid-video must reproduce the uninterrupted run bit for bit.
        batch_frames=1,
        # commit every 2 frames: a death mid-video leaves a resumable part
        layout=functools.partial(
            StoreLayout, dtype="float16", chunk_frames=2, file_frames=2, segment_frames=2
        ),
        commit_interval_s=0.0,
        retry_failed=True,
        encode_threads=None,
        progress=False,
    )


@dataclass(frozen=True)
class DyingSource:
    """Wraps a source: while decoding ``video_id`` it kills the encoder actor (Ray restarts it),
    waits until some of the video's frames are committed, then kills its own worker process.
    Only the first attempt dies: ``marker`` records the death and the partial attempt id."""

    inner: RaySource
    video_id: str
    store: str
    marker: str
    actor: Any

    def __call__(self, task: VideoTask, size: int) -> OpenedVideo:
        video = self.inner(task, size)
        if task.video_id != self.video_id or os.path.exists(self.marker):
            return video
        return _DyingVideo(video, self)


class _DyingVideo:
    def __init__(self, video: OpenedVideo, src: DyingSource) -> None:
        self.video = video
        self.src = src
        self.record = video.record

    def chunks(self, start_frame: int) -> Iterator[Any]:
        for k, item in enumerate(self.video.chunks(start_frame)):
            if k == 1:
                import ray as ray_

                ray_.kill(self.src.actor, no_restart=False)
                Path(self.src.marker + ".actor").write_text("killed")
            if k == 2:
                deadline = time.monotonic() + 120
                partial = None
                while time.monotonic() < deadline:
                    partial = load_index(Path(self.src.store)).partial.get(self.src.video_id)
                    if partial is not None and partial.frames > 0:
                        break
                    time.sleep(0.05)
                Path(self.src.marker).write_text(
                    json.dumps({"pid": os.getpid(), "attempt": partial and partial.attempt})
                )
                os._exit(1)  # the worker dies as if OOM-killed or its node went away
            yield item


def test_worker_and_actor_deaths_lose_and_duplicate_nothing(
    tmp_path: Path, tiny_siglip: Path, ray_cluster: Any
) -> None:
    (tmp_path / "videos").mkdir()
    paths = [
        make_video(tmp_path / "videos" / f"v{i}.mp4", seconds=3.0, width=64, height=48).path
        for i in range(3)
    ]
    store = tmp_path / "ray.zarr"
    spec = _spec(store, paths, tiny_siglip)
    ref = _spec(tmp_path / "ref.zarr", paths, tiny_siglip)
    for shard in range(2):  # the uninterrupted reference, decoded and encoded in this process
        run_shard(ref, shard, 2)

    launcher, design = RayLauncher(shards=2, max_retries=2), RayExtraction(max_in_flight=2)
    # shard 0 holds v0 then v2: v0 is done before the death, v2 dies part-way.
    marker = str(tmp_path / "died")
    with design.start(launcher, spec) as remote_parts:
        actor = remote_parts["encoder"].actors[0]
        source = DyingSource(remote_parts["source"], "v2", str(store), marker, actor)
        fn = functools.partial(run_shard, spec, encoder=remote_parts["encoder"], source=source)
        t0 = time.perf_counter()
        window = design.concurrent_shards(launcher)
        results = launcher.run(fn, design.shard_count(launcher), concurrency=window)
        print(f"run with a worker and an actor death: {time.perf_counter() - t0:.1f} s")

    died = json.loads(Path(marker).read_text())
    assert Path(marker + ".actor").exists()
    assert died["attempt"], "the first attempt committed part of v2 before dying"
    assert all(isinstance(r, ShardResult) for r in results), results
    r0 = results[0]
    assert isinstance(r0, ShardResult)
    assert (r0.assigned, r0.skipped, r0.done, r0.failed) == (2, 1, 1, 0)  # v0 kept, v2 resumed
    journal = (store / "index" / "shard-00000.jsonl").read_text().splitlines()
    runs = [r for r in map(json.loads, journal) if r["kind"] == "run"]
    assert len(runs) == 2 and runs[0]["pid"] == died["pid"] != runs[1]["pid"]

    report = verify_store(store)
    assert report["problems"] == {} and report["checked"] == 3, report
    s, want = open_store(store), open_store(ref.store)
    assert s.video_ids(status="done") == [f"v{i}" for i in range(3)]
    assert s.info("v2")["attempt"] == died["attempt"]  # resumed, not started over
    for vid in s.video_ids():
        info = s.info(vid)
        spans = sorted(tuple(p["frames"]) for p in info["pieces"])
        covered = [f for lo, hi in spans for f in range(lo, hi)]
        assert covered == list(range(info["num_frames"])), (vid, spans)  # no gap, no overlap
        (tb, pb), (ta, pa) = s.read(vid), want.read(vid)
        assert len(tb) == info["num_frames"] == want.info(vid)["num_frames"] == 6
        np.testing.assert_array_equal(tb, ta)
        np.testing.assert_array_equal(pb, pa)
    # The design killed its actors at the end; the Ray it did not start is still up.
    assert ray.is_initialized()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.meta.remote(), timeout=60)


def _dies_on_shard_1(attempts: str, shard: int, shard_count: int) -> int:
    with open(attempts, "a") as f:
        f.write(f"{shard}\n")
    if shard == 1:
        os._exit(1)
    return shard * 10


def test_shard_lost_after_retries_gives_none(tmp_path: Path, ray_cluster: Any) -> None:
    attempts = tmp_path / "attempts"
    launcher = RayLauncher(max_retries=1)
    results = launcher.run(functools.partial(_dies_on_shard_1, str(attempts)), 3)
    assert results == [0, None, 20]
    assert sorted(attempts.read_text().split()) == ["0", "1", "1", "2"]  # 1 try + 1 retry


def test_without_a_ray_design_shard_tasks_decode_and_encode_themselves(
    tmp_path: Path, tiny_siglip: Path, ray_cluster: Any
) -> None:
    """``job.ray=null``: each shard task runs the whole pipeline in its own Ray worker (no
    actors, no decode tasks) and the store is the same as with local shards."""
    from jobs.launch.launchers import LocalLauncher

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_video(videos / f"v{i}.mp4", seconds=1.0 + 0.5 * i, width=64, height=48)

    def job(store: str, launcher: Any, **kw: Any) -> ExtractJob:
        return ExtractJob(
            videos=str(videos),
            store=str(tmp_path / store),
            encoder=SiglipConfig(pretrained=str(tiny_siglip)),
            launcher=launcher,
            batch_frames=1,  # tokens independent of batching
            progress=False,
            **kw,
        )

    remote = job("ray.zarr", RayLauncher(shards=2), ray=None).execute()
    local = job("local.zarr", LocalLauncher(shards=2)).execute()
    assert remote is not None and local is not None
    assert remote["done"] == local["done"] == 3 and not remote["failed"], remote
    assert sorted(r["shard"] for r in remote["shards"]) == [0, 1]
    for shard in range(2):
        journal = tmp_path / "ray.zarr" / "index" / f"shard-{shard:05d}.jsonl"
        runs = [r for r in map(json.loads, journal.read_text().splitlines()) if r["kind"] == "run"]
        assert runs and all(r["pid"] != os.getpid() for r in runs)  # written by a Ray worker
    a, b = open_store(tmp_path / "local.zarr"), open_store(tmp_path / "ray.zarr")
    assert a.video_ids(status="done") == b.video_ids(status="done") == ["v0", "v1", "v2"]
    for vid in a.video_ids():
        np.testing.assert_array_equal(b.read(vid)[0], a.read(vid)[0])


# -- videos on object storage ------------------------------------------------------------------


def logged_paths(log: str, path: str, size: int, opts: DecodeOptions, lo: int, hi: int) -> Any:
    """``decode_range`` that first notes which file (path, inode, mtime) the task read."""
    st = os.stat(path)
    with open(log, "a") as f:  # one short O_APPEND write per task: never torn
        f.write(json.dumps([path, st.st_ino, st.st_mtime_ns, lo]) + "\n")
    return decode_range(path, size, opts, lo, hi)


def test_decode_tasks_fetch_remote_videos_to_their_node(
    tmp_path: Path, tiny_siglip: Path, s3_bucket: str, ray_cluster: Any
) -> None:
    """``job.ray`` set and videos on S3, store on S3: probe and decode tasks fetch each video to
    their node's scratch (one copy per video and node, shared by its tasks), a source replaced
    after listing fails alone with its reason, every copy is removed when its video ends and
    the run's scratch at the end, and the tokens equal in-process shards' bit for bit."""
    import boto3

    from extract.remote import RemoteOptions
    from jobs.inputs import resolve_inputs

    client, name = boto3.client("s3"), s3_bucket.removeprefix("s3://")
    for i in range(3):  # 8 s, a keyframe a second: pieces of 4 sampled frames
        v = make_video(tmp_path / f"v{i}.mp4", seconds=8.0, width=64, height=48, gop=30)
        client.upload_file(str(v.path), name, f"in/v{i}.mp4")
    tasks = resolve_inputs(f"{s3_bucket}/in/").tasks
    old = client.head_object(Bucket=name, Key="in/v1.mp4")["ETag"]
    other = make_video(tmp_path / "other.mp4", seconds=2.0, width=96, height=48).path
    client.upload_file(str(other), name, "in/v1.mp4")  # replaced after the listing
    new = client.head_object(Bucket=name, Key="in/v1.mp4")["ETag"]
    scratch = tmp_path / "scratch"

    def spec_at(store: str) -> ExtractSpec:
        return replace(
            _spec(Path(store), [], tiny_siglip),
            store=store,
            videos=tuple(tasks),
            decode=DecodeOptions(fps=2.0, frames_per_call=2, workers=2, piece_frames=4),
            remote=RemoteOptions(scratch_dir=str(scratch)),
        )

    spec, ref = spec_at(f"{s3_bucket}/ray.zarr"), spec_at(str(tmp_path / "ref.zarr"))
    for shard in range(2):  # the reference: in-process decode (the shard's own prefetch)
        run_shard(ref, shard, 2)
    log = tmp_path / "decoded.jsonl"
    launcher, design = RayLauncher(shards=2), RayExtraction(max_in_flight=2)
    with design.start(launcher, spec) as parts:
        source = replace(parts["source"], decode_fn=functools.partial(logged_paths, str(log)))
        fn = functools.partial(run_shard, spec, encoder=parts["encoder"], source=source)
        results = launcher.run(fn, 2, concurrency=design.concurrent_shards(launcher))
        run_dir = scratch / source.scratch
        # each video's copy went when the video ended; only the (empty) lock files are left
        assert run_dir.is_dir() and {p.suffix for p in run_dir.iterdir()} == {".lock"}
    assert not run_dir.exists() and not list(scratch.iterdir())  # the run's scratch is gone
    # shard 0 has v0 and v2, shard 1 v1 (remote videos have no duration to balance shards by)
    assert [(r.done, r.failed) for r in results if isinstance(r, ShardResult)] == [(2, 0), (0, 1)]
    s, want = open_store(spec.store), open_store(ref.store)
    assert s.video_ids(status="failed") == want.video_ids(status="failed") == ["v1"]
    why = f"source changed during download: ETag {old} then {new}; a rerun takes the new one"
    assert s.info("v1")["error"] == want.info("v1")["error"] == why
    assert s.video_ids(status="done") == want.video_ids(status="done") == ["v0", "v2"]
    for vid in ("v0", "v2"):
        (tb, pb), (ta, pa) = s.read(vid), want.read(vid)
        assert len(tb) == s.info(vid)["num_frames"] == 16
        np.testing.assert_array_equal(tb, ta)
        np.testing.assert_array_equal(pb, pa)
        assert s.info(vid)["source"] == want.info(vid)["source"]  # {size, etag, url}
        assert s.info(vid)["source_path"] == f"{s3_bucket}/in/{vid}.mp4"
    reads = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(lo for *_, lo in reads) == sorted([*range(0, 16, 2)] * 2)  # 8 tasks a video
    copies = {(path, ino, mtime) for path, ino, mtime, _ in reads}
    assert len(copies) == 2, copies  # one download per video: every task read that one file
    assert all(Path(path).parent == run_dir for path, *_ in copies)


# -- decode backpressure ---------------------------------------------------------------------


def logged_decode(
    path: str, size: int, opts: DecodeOptions, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """``decode_range`` that first notes, next to the video, that the task for ``lo`` started."""
    with open(path + ".starts", "a") as f:  # one short O_APPEND write per task: never torn
        f.write(f"{lo}\n")
    return decode_range(path, size, opts, lo, hi)


def _starts(path: Path) -> list[int]:
    log = Path(str(path) + ".starts")
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def failing_decode(
    path: str, size: int, opts: DecodeOptions, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    if lo >= 2:
        raise ValueError(f"decoding failed at frame {lo}: simulated")
    return decode_range(path, size, opts, lo, hi)


def test_decode_window_never_exceeds_max_in_flight(tmp_path: Path, ray_cluster: Any) -> None:
    # Square 64 px frames at the output size: no resize, so each frame's drawn index is readable.
    path = make_video(tmp_path / "sq.mp4", seconds=4.0, fps=30, width=64, height=64).path
    window = 2
    # 0.5 CPU per decode task: Ray could run 4 at once, so only the window can hold them back.
    src = RaySource(
        DecodeOptions(fps=2.0, frames_per_call=1),
        decode_num_cpus=0.5,
        max_in_flight=window,
        decode_fn=logged_decode,
    )
    video = src(VideoTask("sq", path), 64)
    n = video.record["num_frames"]
    assert n == 8
    chunks = video.chunks(0)
    for consumed in range(1, n + 1):
        frames, pts = next(chunks)
        assert read_indices(frames) == [15 * (consumed - 1)]
        assert pts[0] == pytest.approx((consumed - 1) / 2)
        assert len(video.in_flight) <= window
        # Stall like a slow encoder: decoding runs ahead, but never past the window.
        expected = min(consumed + window, n)
        deadline = time.monotonic() + 60
        while len(_starts(path)) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # time for any task beyond the window to start, were one submitted
        started = _starts(path)
        assert sorted(started) == list(range(expected)), (consumed, started)
    assert next(chunks, None) is None
    assert video.submitted == n and video.peak_in_flight == window and not video.in_flight
    # Resume mid-video: decoding starts at the given frame.
    rest = RaySource(DecodeOptions(fps=2.0, frames_per_call=2))(VideoTask("sq", path), 64)
    assert [read_indices(f) for f, _ in rest.chunks(5)] == [[75, 90], [105]]


def test_decode_errors_surface_as_value_errors_with_the_reason(
    tmp_path: Path, ray_cluster: Any
) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    src = RaySource(DecodeOptions(fps=2.0, frames_per_call=1), max_in_flight=2)
    with pytest.raises(ValueError, match=r"^empty file \(0 bytes\): .*empty\.mp4$"):
        src(VideoTask("empty", empty), 64)
    path = make_video(tmp_path / "ok.mp4", seconds=3.0, width=64, height=64).path
    video = RaySource(
        DecodeOptions(fps=2.0, frames_per_call=1), max_in_flight=2, decode_fn=failing_decode
    )(VideoTask("ok", path), 64)
    got = []
    with pytest.raises(ValueError) as err:
        for frames, _ in video.chunks(0):
            got.append(read_indices(frames)[0])
    assert str(err.value) == "decoding failed at frame 2: simulated"  # no Ray traceback text
    assert got == [0, 15] and not video.in_flight


# -- the sbatch script ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_script_starts_ray_and_runs_the_driver(
    tmp_path: Path, tiny_siglip: Path, slurm: None
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        make_video(videos / f"v{i}.mp4", seconds=1.0 + i, width=64, height=48)
    store = tmp_path / "out.zarr"
    cmd = [
        "sbatch",
        "--wait",
        "--nodes=1",  # one node here: the head only; more nodes add `ray start --address` steps
        f"--cpus-per-task={min(2, os.cpu_count() or 1)}",
        "--mem=8G",
        "--time=15",
        f"--output={tmp_path}/ray-%j.out",
        str(ROOT / "scripts" / "ray_on_slurm.sbatch"),
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        "job.progress=false",
        f"hydra.run.dir={tmp_path / 'h'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = "\n".join(p.read_text() for p in tmp_path.glob("ray-*.out"))
    assert r.returncode == 0, r.stdout + r.stderr + log[-5000:]
    assert "ray: 1 node(s) up" in log and "RayLauncher" in log, log[-5000:]
    assert "2 done, 0 skipped (already complete), 0 failed" in log, log[-5000:]
    assert verify_store(store)["checked"] == 2

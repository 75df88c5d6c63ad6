from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cache import load_index, open_store
from extract.frames import sample_times
from extract.samples import make_bad_inputs, make_video
from extract.tiny import TINY_CLIP
from tests.jobs.cli import ROOT, make_videos, run_cli


def good_videos(d: Path) -> dict[str, object]:
    for sub in ("ntsc", "phone", "web"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    return {
        "ntsc/odd": make_video(
            d / "ntsc" / "odd.mp4",
            seconds=3.1,
            fps="30000/1001",
            width=97,
            height=61,
            pix_fmt="yuv444p",
        ),
        "phone/rotated": make_video(
            d / "phone" / "rotated.mp4", seconds=2.0, width=96, height=160, rotation=90
        ),
        "web/clip": make_video(d / "web" / "clip.webm", seconds=1.4, fps=24, codec="vp9"),
    }


def test_extract_end_to_end_with_bad_inputs(tmp_path: Path, tiny_siglip: Path) -> None:
    world_tmp = tmp_path
    videos = world_tmp / "videos"
    good = good_videos(videos)
    bad = make_bad_inputs(videos / "bad")
    # Root reads chmod-000 files, so that case is tested where privileges can be dropped
    # (tests/extract/test_frames.py); here it would simply be read.
    bad.pop("unreadable").unlink()
    model = world_tmp / "model"
    shutil.copytree(tiny_siglip, model)
    store = world_tmp / "out.zarr"
    listing = world_tmp / "list.txt"
    # A listed file outside job.videos_root has no id: it fails alone, named by its path.
    outside = world_tmp / "elsewhere" / "stray.mp4"
    outside.parent.mkdir()
    make_video(outside, seconds=1.0)
    paths = [*sorted(p for p in videos.rglob("*") if p.is_file()), bad["missing"], outside]
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    args = [
        "job=extract",
        f"videos={listing}",
        f"job.videos_root={videos}",
        f"store={store}",
        f"encoder.pretrained={model}",
        "job.batch_frames=4",
    ]
    r = run_cli(*args, hydra_dir=world_tmp / "hydra")
    assert r.returncode == 1, r.stderr[-3000:]
    out = r.stdout
    assert "3 done, 0 skipped (already complete), 7 failed" in out, out
    stray = [ln for ln in out.splitlines() if ln.startswith(f"  FAILED {outside}")]
    assert len(stray) == 1 and "is not under the input root" in stray[0], out
    s = open_store(store)
    assert set(s.video_ids(status="done")) == set(good)
    reasons = {vid: s.info(vid)["error"] for vid in s.video_ids(status="failed")}
    assert "empty file (0 bytes)" in reasons["bad/zero_bytes"]
    assert "missing path" in reasons["bad/missing"]
    assert "cannot open as a video" in reasons["bad/text_as_mp4"]
    assert "cannot open as a video" in reasons["bad/truncated"]
    assert "no video stream" in reasons["bad/audio_only"]
    assert "truncated or damaged: the header lists 60 frames" in reasons["bad/fails_midway"]
    for vid, why in reasons.items():
        assert f"FAILED {vid}: " in out and str(s.info(vid)["source_path"]) in out, vid
        assert why
    for vid, video in good.items():
        info = s.info(vid)
        tok, pts = s.read(vid)
        want = sample_times(info["begin_seconds"], info["end_seconds"], 2.0)
        assert tok.shape == (len(want), 10, 64) and tok.dtype == np.float16
        assert np.isfinite(tok).all()
        src = np.array(video.pts_seconds)  # type: ignore[attr-defined]
        np.testing.assert_allclose(pts, [src[src <= t + 1e-9][-1] for t in want], atol=1e-3)
        assert info["num_frames"] == len(want) and info["fps"] == 2.0
    rotated = s.info("phone/rotated")  # display (upright) dims, rotation recorded
    assert (rotated["width"], rotated["height"], abs(rotated["rotation"])) == (96, 160, 90)
    assert s.attrs["features"]["encoder"]["pretrained"] == str(model)
    assert s.attrs["provenance"]["versions"]["torchcodec"]

    # Rerun: nothing done again; failed ones are retried and fail again.
    r2 = run_cli(*args, hydra_dir=world_tmp / "hydra")
    assert "0 done, 3 skipped (already complete)" in r2.stdout, r2.stdout
    for vid in good:
        assert open_store(store).info(vid)["attempt"] == s.info(vid)["attempt"]

    st = run_cli("job=status", f"store={store}", hydra_dir=world_tmp / "hydra")
    assert "3 done, 6 failed" in st.stdout and "FAILED bad/zero_bytes: empty file" in st.stdout
    assert st.returncode == 1
    v = run_cli("job=verify", f"store={store}", hydra_dir=world_tmp / "hydra")
    assert v.returncode == 0 and "verify: OK" in v.stdout, v.stdout + v.stderr


def test_clip_encoder_and_two_workers_match_one(
    tmp_path: Path, tiny_clip: tuple[Path, Path]
) -> None:
    cfg_path, ckpt = tiny_clip
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        make_video(videos / f"v{i}.mp4", seconds=1.0 + 0.5 * i, width=64 + 16 * i, height=48)
    common = [
        "job=extract",
        f"videos={videos}",
        "encoder=clip",
        f"encoder.model={TINY_CLIP}",
        f"encoder.pretrained={ckpt}",
        f"encoder.model_config={cfg_path}",
        "job.batching=fixed",  # batches independent of timing: bit-identical tokens
        "job.progress=false",
    ]
    one = run_cli(*common, f"store={tmp_path / 'one.zarr'}", hydra_dir=tmp_path / "h1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(
        *common, f"store={tmp_path / 'two.zarr'}", "launcher.workers=2", hydra_dir=tmp_path / "h2"
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = open_store(tmp_path / "one.zarr"), open_store(tmp_path / "two.zarr")
    assert a.video_ids() == b.video_ids() == [f"v{i}" for i in range(4)]
    assert {e.shard for e in b.index.videos.values()} == {0, 1}
    for vid in a.video_ids():
        np.testing.assert_array_equal(a.read(vid)[0], b.read(vid)[0])  # bit-identical
        assert a.read(vid)[0].shape[1:] == (10, 64)


def test_kill_9_then_rerun_does_only_what_is_missing(tmp_path: Path, tiny_siglip: Path) -> None:
    videos = make_videos(tmp_path / "videos", 8, 4.0)
    store = tmp_path / "out.zarr"
    args = [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        "job.commit_interval_s=0",
        "job.batch_frames=2",
        "job.progress=false",
    ]
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (store / "zarr.json").exists() and len(load_index(store).videos) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = load_index(store)
    done_before = {v: e.record["attempt"] for v, e in first.videos.items()}
    assert 2 <= len(done_before) < 8, done_before
    s = open_store(store)
    for vid in done_before:  # whatever is indexed after the kill is whole
        assert s.read(vid)[0].shape[0] == s.info(vid)["num_frames"] == 8
    r = run_cli(*args, hydra_dir=tmp_path / "h2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{8 - len(done_before)} done, {len(done_before)} skipped" in r.stdout, r.stdout
    after = load_index(store)
    assert sorted(after.videos) == [f"v{i}" for i in range(8)]
    assert all(after.videos[v].record["attempt"] == a for v, a in done_before.items())
    v = run_cli("job=verify", f"store={store}", hydra_dir=tmp_path / "h3")
    assert v.returncode == 0, v.stdout


def test_empty_input_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = run_cli(
        "job=extract",
        f"videos={tmp_path / 'empty'}",
        f"store={tmp_path / 's'}",
        hydra_dir=tmp_path / "h",
    )
    assert r.returncode == 2 and "matched no videos" in r.stderr
    # A usage error is one line naming the problem, not a traceback.
    assert r.stderr.startswith(f"error: videos='{tmp_path / 'empty'}' matched no videos")
    assert "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "override", ["job.bogus=1", "+job.bogus=1", "encoder.nope=2", "+encoder.nope=2"]
)
def test_unknown_config_keys_are_errors(tmp_path: Path, override: str) -> None:
    r = run_cli(
        "job=extract", "videos=x", f"store={tmp_path / 's'}", override, hydra_dir=tmp_path / "h"
    )
    assert r.returncode != 0
    assert override.lstrip("+").split("=")[0].split(".")[-1] in r.stderr, r.stderr[-2000:]


def test_a_video_start_records_its_source_fingerprint_with_the_stream_duration(
    tmp_path: Path,
) -> None:
    """Issue 14: size, mtime and stream duration are journalled when a video starts, and a
    resume against a re-cut source of another duration restarts the video, naming why."""
    from cache import ShardWriter, StoreLayout, init_store, read_journal
    from extract.pipeline import VideoTask
    from jobs.extract import _FingerprintedSink

    src = tmp_path / "a.mp4"
    make_video(src, seconds=3.0, width=64, height=48)
    root = tmp_path / "s.zarr"
    init_store(root, layout=StoreLayout(1, 4), features={"encoder": "test"}, provenance={})
    tokens, pts = np.zeros((2, 1, 4), np.float16), np.array([0.0, 0.5])
    with ShardWriter(root, 0, commit_interval_s=0) as w:
        sink = _FingerprintedSink(w, [VideoTask("a", src)])
        assert sink.start("a") == 0
        sink.write("a", tokens, pts)
    starts = [
        r for r in read_journal(root / "index" / "shard-00000.jsonl") if r.get("kind") == "start"
    ]
    source = starts[-1]["source"]
    assert source["size"] == src.stat().st_size and "mtime_ns" in source
    assert source["duration_seconds"] == pytest.approx(3.0, abs=0.1)
    make_video(src, seconds=2.0, width=64, height=48)  # re-cut: another duration
    with ShardWriter(root, 0, commit_interval_s=0) as w:
        sink = _FingerprintedSink(w, [VideoTask("a", src)])
        assert sink.start("a") == 0  # restarted, not resumed from the old file's frames
        assert "duration_seconds" in w.restarted["a"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB filesystem of its own (tmpfs), to fill up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_gives_one_line_and_the_summary(
    tmp_path: Path, tiny_siglip: Path, small_disk: Path
) -> None:
    videos = make_videos(tmp_path / "videos", 3, 2.0)
    store = small_disk / "out.zarr"
    args = [
        "job=extract",
        f"store={store}",
        f"encoder.pretrained={tiny_siglip}",
        "job.batch_frames=4",
    ]
    first = run_cli(*args, f"videos={videos / 'v0.mp4'}", hydra_dir=tmp_path / "h1")
    assert first.returncode == 0, first.stderr[-3000:]
    filler = fill(small_disk)

    full = run_cli(*args, f"videos={videos}", hydra_dir=tmp_path / "h2")
    assert full.returncode == 1, full.stderr[-3000:]
    errors = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], full.stderr[-3000:]
    assert "rerun the same command" in errors[0]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "extract summary: 3 videos: 0 done, 1 skipped" in full.stdout, full.stdout
    assert "NOT PROCESSED v1" in full.stdout and "NOT PROCESSED v2" in full.stdout
    assert not list(store.glob("shards/*/.staging-*")), "a half-written segment was left"
    v = run_cli("job=verify", f"store={store}", hydra_dir=tmp_path / "h3")
    assert v.returncode == 0 and "verify: OK" in v.stdout, v.stdout + v.stderr

    filler.unlink()  # space again: the rerun does only what is missing
    again = run_cli(*args, f"videos={videos}", hydra_dir=tmp_path / "h4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 done, 1 skipped (already complete), 0 failed" in again.stdout, again.stdout
    index = load_index(store)
    want = len(sample_times(0.0, 2.0, 2.0))
    assert all(index.videos[f"v{i}"].record["num_frames"] == want for i in range(3))

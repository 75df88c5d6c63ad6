"""One video split into pieces across decoders: the same bits, in order, kill-safe; shards
balanced by duration; longest videos first."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cache import load_index, open_store
from extract.encoders import SiglipConfig, build_encoder
from extract.frames import DecodeOptions, FrameReader
from extract.pipeline import ExtractPipeline, VideoTask, _End, _Frames, _Pieces
from extract.samples import GeneratedVideo, make_decode_kinds, make_video
from jobs.assign import longest_first, shard_videos, with_durations
from tests.extract.test_parallel import TokenSink
from tests.jobs.cli import ROOT, run_cli

KINDS = ["h264_bpyramid", "h264_open_gop", "h264_no_bframes", "hevc", "vp9", "vfr"]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GeneratedVideo]:
    # a keyframe every 10 frames, so 3 s give several pieces
    return make_decode_kinds(tmp_path_factory.mktemp("kinds"), gop=10)


@pytest.mark.parametrize("name", KINDS)
def test_pieces_are_bit_identical_to_one_pass(kinds: dict[str, GeneratedVideo], name: str) -> None:
    path = kinds[name].path
    opts = DecodeOptions(fps=7.0, frames_per_call=4)
    ref = FrameReader(path, size=64, decode=DecodeOptions(fps=7.0, skip=False))
    ref_chunks = list(ref.native_chunks())
    ref_frames = torch.cat([f for f, _ in ref_chunks])
    ref_pts = np.concatenate([p for _, p in ref_chunks])
    reader = FrameReader(path, size=64, decode=opts)
    counts = set()
    for piece_frames, start in ((2, 0), (5, 0), (2, 4), (0, 0)):
        pieces = reader.pieces(piece_frames, start)
        counts.add(len(pieces))
        assert pieces[0][0] == start and pieces[-1][1] == reader.num_frames
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
        # each piece decoded by its own pass, in reverse order (as other threads could)
        got = {lo: list(reader.native_chunks(lo, hi)) for lo, hi in reversed(pieces)}
        chunks = [c for lo, _ in pieces for c in got[lo]]
        frames = torch.cat([f for f, _ in chunks])
        pts = np.concatenate([p for _, p in chunks])
        assert np.array_equal(pts, ref_pts[start:])
        assert torch.equal(frames, ref_frames[start:])
    assert max(counts) >= 3  # the file was really cut


def test_a_video_end_is_queued_before_its_owner_sees_it_finished() -> None:
    """With fixed batching the owner of a video puts its next item in the same queue once the
    video is finished; the end, put by whichever decoder ended the last piece (a helper), must
    already be there (else the encoder reads the owner's next item first: "decode thread K
    ended early", about one run in three before this was fixed)."""
    queued: list[object] = []

    def put(item: object) -> bool:
        time.sleep(0.01)  # a put takes time (a full queue): the owner must not overtake it
        queued.append(item)
        return True

    opened = SimpleNamespace(record={"num_frames": 4})
    video = _Pieces(VideoTask("v", Path("v.mp4")), opened, [(0, 2), (2, 4)], put, 2)  # type: ignore[arg-type]
    assert video.claim() == 0 and video.claim(helper=True) == 1
    frames = _Frames("v", torch.zeros(2, 3, 4, 4), np.zeros(2), opened.record)
    video.emit(1, frames, threading.Event())  # the helper's piece waits behind the head
    video.emit(0, frames, threading.Event())
    assert video.end(0) is False
    helper = threading.Thread(target=video.end, args=(1,))
    helper.start()
    video.wait_finished(threading.Event())
    queued.append("owner's next item")
    helper.join()
    assert [type(x).__name__ for x in queued] == ["_Frames", "_Frames", "_End", "str"]
    assert isinstance(queued[2], _End) and queued[2].video_id == "v"


@pytest.mark.parametrize("batching", ["fixed", "dynamic"])
def test_pipeline_tokens_identical_across_piece_counts(
    kinds: dict[str, GeneratedVideo], tiny_siglip: Path, batching: str
) -> None:
    tasks = [VideoTask(n, kinds[n].path) for n in ("h264_bpyramid", "vp9", "vfr")]
    encoder = build_encoder(SiglipConfig(pretrained=str(tiny_siglip)))
    got = {}
    for workers, piece_frames in ((1, 0), (3, 2), (4, 3)):
        sink = TokenSink()
        pipe = ExtractPipeline(
            encoder, sink, batch_frames=5 if batching == "fixed" else 1, batching=batching,  # type: ignore[arg-type]
            decode=DecodeOptions(fps=7.0, frames_per_call=2, workers=workers,
                                 piece_frames=piece_frames),
        )  # fmt: skip
        pipe.run(tasks)
        got[(workers, piece_frames)] = {v: np.concatenate(t) for v, t in sink.tokens.items()}
    first = got[(1, 0)]
    for other in got.values():
        assert other.keys() == first.keys()
        for vid in first:
            np.testing.assert_array_equal(other[vid], first[vid])


def test_one_video_keeps_every_decoder_busy(tmp_path: Path, tiny_siglip: Path) -> None:
    v = make_video(tmp_path / "long.mp4", seconds=6, width=64, height=48, gop=15)
    encoder = build_encoder(SiglipConfig(pretrained=str(tiny_siglip)))
    seen: list[str] = []
    sink = TokenSink()
    pipe = ExtractPipeline(encoder, sink, batch_frames=4, batching="fixed",
                           decode=DecodeOptions(fps=5.0, frames_per_call=2, workers=3,
                                                piece_frames=4))  # fmt: skip
    threads = set()
    real = pipe._timed_chunks

    def slow(chunks):  # type: ignore[no-untyped-def]
        for item in chunks:  # as a real decoder takes time, the idle ones get to help
            time.sleep(0.05)
            yield item

    def spy(video_id, chunks):  # type: ignore[no-untyped-def]
        import threading

        threads.add(threading.get_ident())
        seen.append(video_id)
        return real(video_id, slow(chunks))

    pipe._timed_chunks = spy  # type: ignore[method-assign]
    pipe.run([VideoTask("long", v.path)])
    assert len(threads) >= 2  # pieces of the one video went to more than one decoder
    assert sum(len(t) for t in sink.tokens["long"]) == 30


def test_kill_9_mid_video_with_pieces_then_rerun_equals_a_clean_run(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    vdir = tmp_path / "videos"
    vdir.mkdir()
    make_video(vdir / "long.mp4", seconds=12.0, width=64, height=48, gop=15)
    make_video(vdir / "short.mp4", seconds=2.0, width=64, height=48)
    args = [
        "job=extract", f"videos={vdir}", f"encoder.pretrained={tiny_siglip}",
        "job.commit_interval_s=0", "job.batch_frames=1", "job.batching=fixed",
        "job.decode.workers=3", "job.decode.frames_per_call=2", "job.decode.fps=4",
        "job.decode.piece_frames=4", "job.progress=false",
    ]  # fmt: skip
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"store={store}",
           f"hydra.run.dir={tmp_path / 'h'}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (store / "zarr.json").exists():
            part = load_index(store).partial.get("long")
            if part is not None and part.frames >= 6:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    index = load_index(store)
    assert "long" not in index.videos or index.videos["long"].status != "done"  # mid-video
    again = run_cli(*args, f"store={store}", hydra_dir=tmp_path / "h2")
    assert again.returncode == 0, again.stderr[-3000:]
    clean = tmp_path / "clean.zarr"
    r = run_cli(*args, f"store={clean}", hydra_dir=tmp_path / "h3")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = open_store(store), open_store(clean)
    assert a.video_ids() == b.video_ids() == ["long", "short"]
    for vid in a.video_ids():
        for x, y in zip(a.read(vid), b.read(vid), strict=True):
            np.testing.assert_array_equal(x, y)


def _tasks(durations: list[float | None]) -> list[VideoTask]:
    return [
        VideoTask(f"v{i:03d}", Path(f"/x/v{i:03d}.mp4"), duration_seconds=d)
        for i, d in enumerate(durations)
    ]


def test_shards_are_balanced_by_duration_and_stable() -> None:
    rng = np.random.default_rng(0)
    durations = [float(x) for x in rng.lognormal(6.0, 1.2, size=400)]
    videos = _tasks(durations)
    shards = [shard_videos(videos, s, 8) for s in range(8)]
    ids = [v.video_id for s in shards for v in s]
    assert sorted(ids) == [v.video_id for v in videos]  # every video in exactly one shard
    totals = [sum(v.duration_seconds or 0 for v in s) for s in shards]
    assert max(totals) - min(totals) <= max(durations)  # within one video (LPT)
    by_count = [sum(v.duration_seconds or 0 for v in videos[s::8]) for s in range(8)]
    assert max(totals) - min(totals) < (max(by_count) - min(by_count)) / 4
    # a rerun (the same list, e.g. rebuilt in another process) gives the same shards
    again = _tasks(list(durations))
    assert [shard_videos(again, s, 8) for s in range(8)] == shards
    # shards keep input order; without durations the rule of older stores: by count
    assert all(s == sorted(s, key=lambda v: v.video_id) for s in shards)
    plain = _tasks([None] * 10)
    assert shard_videos(plain, 1, 3) == plain[1::3]


def test_longest_first_from_the_header(tmp_path: Path) -> None:
    tasks = [
        VideoTask(f"v{s}", make_video(tmp_path / f"v{s}.mp4", seconds=s, width=32, height=32).path)
        for s in (1, 3, 2)
    ]
    tasks.append(VideoTask("missing", tmp_path / "missing.mp4"))
    ordered = longest_first(with_durations(tasks))
    assert [t.video_id for t in ordered] == ["v3", "v2", "v1", "missing"]
    assert ordered[0].duration_seconds == pytest.approx(3.0, abs=0.05)

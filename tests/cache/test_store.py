from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache import (
    ShardLockedError,
    ShardWriter,
    StoreLayout,
    StoreMismatchError,
    init_store,
    load_index,
    open_store,
    read_journal,
)

D, N = 6, 10  # tiny dims keep these tests fast


def make_store(root: Any, **layout: int | str) -> Any:
    lay = StoreLayout(tokens_per_frame=N, dim=D, **layout)  # type: ignore[arg-type]
    init_store(root, layout=lay, features={"encoder": "test"}, provenance={})
    return root


def frames(video: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic tokens: value = video * 64 + frame (exact in float16), so mix-ups show."""
    idx = np.arange(start, start + n, dtype=np.float32)
    tok = (video * 64 + idx)[:, None, None] + np.zeros((n, N, D), np.float32)
    return tok.astype(np.float16), idx / 2.0


def write_video(w: ShardWriter, video: int, n: int, step: int = 7) -> None:
    vid = f"v{video}"
    start = w.start(vid)
    for lo in range(start, n, step):
        t, p = frames(video, lo, min(step, n - lo))
        w.write(vid, t, p)
    w.finish(vid, {"num_frames": n, "source_path": f"/x/{vid}.mp4", "fps": 2.0})


def test_round_trip_windows_across_segments(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr", chunk_frames=4, file_frames=8, segment_frames=16)
    with ShardWriter(root, 0) as w:
        for v, n in [(1, 3), (2, 40), (3, 1), (4, 17)]:
            write_video(w, v, n)
    s = open_store(root)
    assert s.video_ids() == ["v1", "v2", "v3", "v4"]
    assert len(s.info("v2")["pieces"]) > 1  # 40 frames span several 16-frame segments
    for v, n in [(1, 3), (2, 40), (3, 1), (4, 17)]:
        tok, pts = s.read(f"v{v}")
        want_t, want_p = frames(v, 0, n)
        np.testing.assert_array_equal(tok, want_t)
        np.testing.assert_array_equal(pts, want_p)
        assert tok.dtype == np.float16 and tok.shape == (n, N, D)
    tok, pts = s.read("v2", 13, 35)
    np.testing.assert_array_equal(tok, frames(2, 13, 22)[0])
    assert s.read("v2", 38, 100)[0].shape[0] == 2
    assert s.read("v2", 5, 5)[0].shape == (0, N, D)
    assert s.info("v1")["status"] == "done" and s.info("v1")["error"] is None


def test_files_grow_with_frames_not_videos(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr", segment_frames=4096)
    with ShardWriter(root, 0, commit_interval_s=1e9) as w:
        for v in range(300):
            write_video(w, v, 3)
    files = sum(len(f) for _, _, f in os.walk(root))
    assert files < 20, files  # 300 videos, one segment
    assert open_store(root).read("v299")[0][0, 0, 0] == 299 * 64


def test_failed_videos_are_indexed_with_reason_and_drop_buffered_frames(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr")
    with ShardWriter(root, 0) as w:
        w.start("bad")
        w.write("bad", *frames(9, 0, 5))
        w.fail("bad", {"source_path": "/x/bad.mp4"}, "decoding failed at 2.0 s")
        write_video(w, 1, 4)
    s = open_store(root)
    assert s.video_ids() == ["bad", "v1"]
    assert s.video_ids(status="failed") == ["bad"]
    info = s.info("bad")
    assert (info["status"], info["error"], info["num_frames"]) == (
        "failed",
        "decoding failed at 2.0 s",
        0,
    )
    with pytest.raises(ValueError, match="failed"):
        s.read("bad")
    assert s.info("v1")["pieces"][0]["rows"] == [0, 4]  # the failed video's frames were dropped


def test_bfloat16_round_trip(tmp_path: Path) -> None:
    import torch

    root = make_store(tmp_path / "s.zarr", dtype="bfloat16")
    x = torch.randn(5, N, D) * 1e6  # beyond float16's range: bfloat16 keeps it
    bits = x.to(torch.bfloat16).view(torch.uint16).numpy()
    with ShardWriter(root, 0) as w:
        w.start("a")
        w.write("a", bits, np.arange(5) / 2)
        w.finish("a", {"num_frames": 5})
    tok, _ = open_store(root).read("a")
    assert tok.dtype == np.float32
    np.testing.assert_array_equal(tok, x.to(torch.bfloat16).float().numpy())


def test_mismatched_features_are_refused(store_root: str | Path) -> None:
    root = make_store(store_root)
    lay = StoreLayout(tokens_per_frame=N, dim=D)
    with pytest.raises(StoreMismatchError, match="store has 'test', run has 'other'"):
        init_store(root, layout=lay, features={"encoder": "other"}, provenance={})
    with pytest.raises(StoreMismatchError, match="dim"):
        init_store(root, layout=StoreLayout(N, D + 1), features={"encoder": "test"}, provenance={})


def test_one_writer_per_shard(store_root: str | Path) -> None:
    root = make_store(store_root)
    # On object storage the second writer sees the live writer renew its lease and gives up.
    with ShardWriter(root, 0, lease_ttl_s=1.0):
        with pytest.raises(ShardLockedError, match="one writer per shard"):
            ShardWriter(root, 0)
        with ShardWriter(root, 1) as other:  # other shards are independent
            write_video(other, 1, 2)
    assert open_store(root).video_ids() == ["v1"]


def test_readable_by_tensorstore(tmp_path: Path) -> None:
    import tensorstore as ts

    root = make_store(tmp_path / "s.zarr", chunk_frames=4, file_frames=8, segment_frames=16)
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 5)
        write_video(w, 2, 30)
    s = open_store(root)
    for vid in ("v1", "v2"):
        parts = []
        for piece in s.info(vid)["pieces"]:
            arr = ts.open(
                {
                    "driver": "zarr3",
                    "kvstore": {"driver": "file", "path": str(root / piece["array"])},
                }
            ).result()
            lo, hi = piece["rows"]
            parts.append(arr[lo:hi].read().result())
        np.testing.assert_array_equal(np.concatenate(parts), s.read(vid)[0])
    meta = json.loads((root / "zarr.json").read_text())
    assert meta["node_type"] == "group" and meta["attributes"]["streamfeat"]["layout"]["dim"] == D
    # The format's name for frames per file stays "shard_frames" (StoreLayout.file_frames).
    assert meta["attributes"]["streamfeat"]["layout"]["shard_frames"] == 8


def test_torn_journal_tail_and_orphans_are_ignored_then_repaired(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr")
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 3)
    journal = root / "index" / "shard-00000.jsonl"
    with open(journal, "ab") as f:
        f.write(b'{"kind":"video","video_id":"v2","status":"do')  # killed mid-write
    (root / "shards" / "00000" / "seg-000007").mkdir()  # renamed but never journalled
    (root / "shards" / "00000" / ".staging-seg-000008-x").mkdir()
    assert open_store(root).video_ids() == ["v1"]
    with ShardWriter(root, 0) as w:
        write_video(w, 2, 3)
    assert open_store(root).video_ids() == ["v1", "v2"]
    names = sorted(p.name for p in (root / "shards" / "00000").iterdir() if p.name != ".lock")
    assert names == ["seg-000000", "seg-000001", "zarr.json"]
    assert all(isinstance(r, dict) for r in read_journal(journal))


def _writer_process(root: str, n_videos: int, frames_per_video: int) -> None:
    with ShardWriter(root, 0, commit_interval_s=0.0, lease_ttl_s=1.0) as w:
        for v in range(n_videos):
            write_video(w, v, frames_per_video, step=3)
            time.sleep(0.01)


def test_kill_9_never_leaves_a_partial_video_done(store_root: str | Path) -> None:
    """SIGKILL a writer at several moments; whatever the index says is done must read back whole.
    (On object storage each rerun first waits for the killed writer's lease to lapse.)"""
    root = make_store(store_root, chunk_frames=2, file_frames=4, segment_frames=8)
    ctx = mp.get_context("spawn")
    seen_done: list[int] = []

    def done_lines() -> int:
        return len(load_index(root).videos)

    # Kill once the writer has made progress (a spawned process may take seconds to start on
    # a busy machine), then after a few different extra delays: different moments of a write.
    for delay in (0.0, 0.13, 0.31):
        before = done_lines()
        p = ctx.Process(target=_writer_process, args=(str(root), 400, 11))
        p.start()
        deadline = time.monotonic() + 120
        while done_lines() <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        p.kill()  # SIGKILL
        p.join()
        s = open_store(root)
        done = s.video_ids(status="done")
        seen_done.append(len(done))
        for vid in done:
            tok, pts = s.read(vid)
            want = frames(int(vid[1:]), 0, 11)
            np.testing.assert_array_equal(tok, want[0])
            np.testing.assert_array_equal(pts, want[1])
    assert 0 < seen_done[0] <= seen_done[-1] < 400


def test_resume_mid_video_continues_from_committed_frames(store_root: str | Path) -> None:
    root = make_store(store_root, segment_frames=8)
    w = ShardWriter(root, 0)
    assert w.start("long") == 0
    for lo in range(0, 20, 4):  # 20 frames: two 8-frame segments committed, 4 buffered
        w.write("long", *frames(5, lo, 4))
    w.abort()  # killed: the buffered 4 frames are lost, the committed 16 are not
    idx = load_index(root)
    assert "long" not in idx.videos and idx.partial["long"].frames == 16
    with ShardWriter(root, 0) as w2:
        start = w2.start("long")
        assert start == 16
        for lo in range(start, 30, 4):
            w2.write("long", *frames(5, lo, min(4, 30 - lo)))
        w2.finish("long", {"num_frames": 30})
    tok, pts = open_store(root).read("long")
    np.testing.assert_array_equal(tok, frames(5, 0, 30)[0])
    np.testing.assert_array_equal(pts, frames(5, 0, 30)[1])

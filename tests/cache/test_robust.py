"""Findings of issue 14 on real files: changed sources, commit interval, creation races."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from cache import (
    ShardWriter,
    StoreLayout,
    StoreMismatchError,
    fingerprint,
    init_store,
    load_index,
    open_store,
)
from tests.cache.test_store import D, N, frames, make_store


def test_a_changed_source_restarts_its_video_and_says_why(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr", segment_frames=8)
    src = tmp_path / "v.mp4"
    src.write_bytes(b"a" * 5000)
    w = ShardWriter(root, 0)
    w.start("v", source=fingerprint(src))
    for lo in range(0, 16, 4):  # two segments committed
        w.write("v", *frames(1, lo, 4))
    w.abort()
    assert load_index(root).partial["v"].frames == 16
    src.write_bytes(b"b" * 5000)  # same length, other content
    with ShardWriter(root, 0) as w:
        assert w.start("v", source=fingerprint(src)) == 0  # not resumed from the old file
        assert "source changed" in w.restarted["v"] and "crc32c_ends" in w.restarted["v"]
        for lo in range(0, 20, 4):
            w.write("v", *frames(2, lo, 4))
        w.finish("v", {"num_frames": 20})
    np.testing.assert_array_equal(open_store(root).read("v")[0], frames(2, 0, 20)[0])


def test_a_shorter_replacement_fails_one_video_not_the_shard(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr", segment_frames=8)
    w = ShardWriter(root, 0)
    w.start("v")  # no fingerprint (as a store made before them)
    for lo in range(0, 16, 4):
        w.write("v", *frames(1, lo, 4))
    w.abort()
    with ShardWriter(root, 0) as w:
        start = w.start("v")
        assert start == 16
        w.finish("v", {"num_frames": 6})  # the new file has 6 frames only
        w.start("other")
        w.write("other", *frames(3, 0, 2))
        w.finish("other", {"num_frames": 2})
    s = open_store(root)
    assert s.video_ids(status="done") == ["other"]
    assert "record says 6 frames, wrote 16" in s.info("v")["error"]
    with ShardWriter(root, 0) as w:
        assert w.start("v") == 0  # the failed attempt is not resumed: the rerun restarts it


def test_commit_interval_holds_inside_a_long_video(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr", segment_frames=4096)
    w = ShardWriter(root, 0, commit_interval_s=0.2)
    w.start("long")
    t0 = time.monotonic()
    for lo in range(0, 40, 2):
        w.write("long", *frames(1, lo, 2))
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    w.abort()  # killed: only frames written in the last interval may be lost
    committed = load_index(root).partial["long"].frames
    assert committed >= 40 - 2 * (0.2 / 0.05 + 1), (committed, elapsed)
    assert len(list((root / "shards/00000").glob("seg-*"))) >= 3


def _create(root: str, dim: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        init_store(
            root,
            layout=StoreLayout(tokens_per_frame=N, dim=dim),
            features={"encoder": "test", "dim": dim},
            provenance={},
        )
        out.put("ok")
    except StoreMismatchError:
        out.put("refused")
    except Exception as e:  # noqa: BLE001 - any other error is what this test looks for
        out.put(f"{type(e).__name__}: {e}")


@pytest.mark.parametrize("same", [True, False])
def test_two_processes_creating_one_store(store_root: str | Path, same: bool) -> None:
    # On object storage: creation is create-if-absent (a smoke test: moto does not lock);
    # spawned, as a forked child would inherit the parent's obstore runtime.
    remote = isinstance(store_root, str)
    ctx = mp.get_context("spawn" if remote else "fork")
    for trial in range(2 if remote else 8):
        root = f"{store_root}{trial}"
        out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        procs = [
            ctx.Process(target=_create, args=(root, D if same else D + i, out)) for i in (0, 1)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = sorted(out.get(timeout=5) for _ in procs)
        assert got == (["ok", "ok"] if same else ["ok", "refused"]), got

"""The two backends of the commit protocol keep the same contract (cache/shardlog.py): one
holder per shard, a commit is all or nothing, a discarded segment is never read, marks are
journalled, and the local backend's files are format 1's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cache import ShardLockedError, ShardWriter, load_index, mark_damaged, open_store
from cache.shardlog import FileShardLog, ObjectShardLog, shard_log
from tests.cache.test_store import frames, make_store, write_video


def _run() -> dict[str, Any]:
    return {"kind": "run", "run_id": "r", "provenance": {}}


def test_the_backend_follows_the_location(store_root: str | Path) -> None:
    want = ObjectShardLog if isinstance(store_root, str) else FileShardLog
    assert isinstance(shard_log(store_root, 0), want)
    assert isinstance(shard_log(f"file://{Path('/tmp/x.zarr')}", 0), FileShardLog)


def test_one_holder_per_shard_and_held_reads_it(store_root: str | Path) -> None:
    root = make_store(store_root)
    a, b = shard_log(root, 0), shard_log(root, 0)
    assert not a.held()
    a.open(_run())
    assert a.held() and b.held()
    with pytest.raises(ShardLockedError, match="one writer per shard"):
        b.take()
    other = shard_log(root, 1)  # another shard is free
    other.take()
    other.release()
    a.release()
    a.release()  # idempotent
    assert not b.held()
    with b.hold():  # released: the next one takes it at once
        assert b.held()
    assert not b.held()


def test_a_published_segment_counts_only_once_committed(store_root: str | Path) -> None:
    root = make_store(store_root, chunk_frames=4, file_frames=8, segment_frames=1000)
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 5)
        w.start("v2")
        w.write("v2", *frames(2, 0, 3))
        log = w._log
        calls: list[str] = []
        real = log.commit

        def refused(records: list[dict[str, Any]]) -> None:
            calls.append(records[0]["segment"])
            raise OSError("journal write refused")

        log.commit = refused  # type: ignore[method-assign]
        with pytest.raises(OSError, match="refused"):
            w.commit()  # published, not committed: discarded, frames kept buffered
        log.commit = real  # type: ignore[method-assign]
        w.finish("v2", {"num_frames": 3, "fps": 2.0})
    idx = load_index(root)
    assert {v: e.status for v, e in idx.videos.items()} == {"v1": "done", "v2": "done"}
    # One segment of the 8 frames: the refused one was discarded (on disk its folder is gone
    # and its name reused; on object storage its unique name is never indexed).
    assert [r["frames"] for r in idx.segments.values()] == [8]
    if isinstance(root, str):
        assert calls[0] not in {seg for _, seg in idx.segments}
    s = open_store(root)
    tok, _ = s.read("v2")
    assert tok[:, 0, 0].tolist() == frames(2, 0, 3)[0][:, 0, 0].tolist()


def test_marks_are_journalled_by_either_backend(store_root: str | Path) -> None:
    root = make_store(store_root)
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 4)
    attempt = load_index(root).videos["v1"].record["attempt"]
    mark_damaged(root, 0, {"v1": attempt}, "test")
    assert load_index(root).videos["v1"].status == "damaged"


def test_the_local_backend_writes_format_1(tmp_path: Path) -> None:
    """Journal lines appended to one file, a lock file, a renamed segment folder: the layout
    every store made before this backend existed has, so old stores and new ones are alike."""
    root = make_store(tmp_path / "s.zarr", segment_frames=1000)
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 4)
    journal = Path(root) / "index" / "shard-00000.jsonl"
    kinds = [json.loads(line)["kind"] for line in journal.read_text().splitlines()]
    assert kinds == ["run", "segment", "piece", "video"]
    shard = Path(root) / "shards" / "00000"
    assert (shard / ".lock").is_file()
    assert sorted(p.name for p in shard.iterdir() if p.is_dir()) == ["seg-000000"]

"""The store on object storage (moto's S3 server on 127.0.0.1): the commit protocol's
guarantees, proved by sequenced tests (moto checks a condition, then stores, without a lock)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cache import ShardWriter, StoreLayout, init_store, load_index, open_store
from cache.objectlog import Lease
from cache.shardlog import ObjectShardLog
from cache.storage import LocalStorage, Storage, Version, open_storage
from tests.cache.test_store import D, N, frames, write_video


def make(root: str | Path, **layout: int | str) -> str | Path:
    lay = StoreLayout(tokens_per_frame=N, dim=D, **layout)  # type: ignore[arg-type]
    init_store(root, layout=lay, features={"encoder": "test"}, provenance={})
    return root


def test_round_trip(store_root: str | Path) -> None:
    root = make(store_root, chunk_frames=4, file_frames=8, segment_frames=16)
    with ShardWriter(root, 0) as w:
        for v, n in [(1, 3), (2, 40)]:
            write_video(w, v, n)
    s = open_store(root)
    assert s.video_ids() == ["v1", "v2"]
    np.testing.assert_array_equal(s.read("v2", 13, 35)[0], frames(2, 13, 22)[0])
    assert load_index(root).videos["v1"].status == "done"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend of the storage interface (one suite for both, like zarr's store tests)."""
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    return open_storage(f"{request.getfixturevalue('s3_bucket')}/p")


def test_the_five_operations(storage: Storage) -> None:
    v1 = storage.create("a/b.json", b"1")
    assert v1 is not None
    assert storage.create("a/b.json", b"2") is None  # create-if-absent refuses
    assert storage.get("a/b.json") == (b"1", v1)
    v2 = storage.replace("a/b.json", b"3", v1)
    assert v2 is not None and v2 != v1
    assert storage.replace("a/b.json", b"4", v1) is None  # replace-if-unchanged refuses
    assert storage.get("a/b.json") == (b"3", v2)
    assert storage.replace("a/none.json", b"5", v2) is None
    storage.put("a/c/d", b"x")
    assert storage.list("a/") == ["a/b.json", "a/c/d"]
    assert storage.list("nothing/") == []
    storage.delete("a/b.json")
    storage.delete("a/b.json")  # already gone: no error
    assert storage.get("a/b.json") is None and storage.list("a/") == ["a/c/d"]


class _NoConditions(LocalStorage):
    """A server that ignores If-None-Match and If-Match (writes whatever it is sent)."""

    def create(self, key: str, data: bytes) -> Version | None:
        self.put(key, data)
        return Version("x")


def test_a_server_without_conditional_writes_is_refused(tmp_path: Path) -> None:
    from cache.storage import StorageError, check_conditional_writes

    with pytest.raises(StorageError, match="does not honour conditional writes"):
        check_conditional_writes(_NoConditions(tmp_path))
    check_conditional_writes(LocalStorage(tmp_path))  # the real thing passes


def _lease(w: ShardWriter) -> Lease:
    """The lease a writer on object storage holds."""
    assert isinstance(w._log, ObjectShardLog) and w._log._lease is not None
    return w._log._lease


def _stall(w: ShardWriter) -> None:
    """Freeze a writer's lease as a stopped process would (its heartbeat stops, nothing is
    released): what SIGSTOP or a long GC pause does to it."""
    lease = _lease(w)
    lease._stop.set()
    if lease._thread is not None:
        lease._thread.join()


def test_a_lapsed_lease_is_taken_over_after_its_ttl_saying_so(
    s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    root = make(f"{s3_bucket}/s.zarr", segment_frames=8)
    a = ShardWriter(root, 0, lease_ttl_s=1.0)
    _stall(a)  # as if killed with -9: the lease stays, unreleased
    t0 = time.monotonic()
    with ShardWriter(root, 0, lease_ttl_s=1.0) as b:
        write_video(b, 1, 3)
    assert time.monotonic() - t0 >= 1.0  # waited the lease's ttl on its own clock
    said = capsys.readouterr().err
    assert "waiting up to 1 s for the lease" in said and "job.break_lease" in said
    assert "lapsed; taking it over" in said
    # job.break_lease=true takes a held lease at once.
    c = ShardWriter(root, 0, lease_ttl_s=60.0)
    _stall(c)
    t0 = time.monotonic()
    with ShardWriter(root, 0, break_lease=True) as d:
        write_video(d, 2, 3)
    assert time.monotonic() - t0 < 5
    assert open_store(root).video_ids() == ["v1", "v2"]


@pytest.mark.parametrize("knows", [True, False])
def test_a_fenced_writer_never_commits(s3_bucket: str, knows: bool) -> None:
    """Sequenced: A stalls past its lease, B takes the shard over and commits, A resumes.
    ``knows``: A's heartbeat already saw the lease taken; else only the refused
    create-if-absent of its next journal record stops it (the fence itself)."""
    from cache.objectlog import ShardFencedError

    root = make(f"{s3_bucket}/s.zarr", segment_frames=8)
    a = ShardWriter(root, 0, lease_ttl_s=1.0)
    write_video(a, 1, 10)
    a.commit()  # v1 committed whole
    a.start("v9")
    a.write("v9", *frames(9, 0, 3))
    _stall(a)
    with ShardWriter(root, 0, lease_ttl_s=1.0) as b:
        write_video(b, 2, 5)
    if knows:
        assert not _lease(a).renew() and _lease(a).lost
    with pytest.raises(ShardFencedError, match="took this shard over|lost its lease"):
        a.finish("v9", {"num_frames": 3})
        a.commit()
    a.abort()
    s = open_store(root)
    assert s.video_ids() == ["v1", "v2"]  # v1's committed frames came back whole; v9 never
    np.testing.assert_array_equal(s.read("v1")[0], frames(1, 0, 10)[0])
    # What A wrote after it lost the shard is garbage: the next holder removes it.
    storage = open_storage(root)
    with ShardWriter(root, 0) as c:
        pass
    segs = {k.split("/")[2] for k in storage.list("shards/00000/") if k.count("/") >= 3}
    assert segs == {seg for (_, seg) in load_index(root).segments}, c.repairs


def test_unreferenced_segments_are_removed_by_the_next_holder(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cache.objectlog import RecordLog

    root = make(f"{s3_bucket}/s.zarr", segment_frames=8)
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 3)
    w = ShardWriter(root, 0)

    def killed(self: RecordLog, records: list) -> None:  # type: ignore[type-arg]
        raise KeyboardInterrupt  # killed between writing the segment and its record

    monkeypatch.setattr(RecordLog, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        write_video(w, 2, 9)
    monkeypatch.undo()
    _lease(w).release()
    storage = open_storage(root)
    segs = {k.split("/")[2] for k in storage.list("shards/00000/") if k.count("/") >= 3}
    assert len(segs) == 2  # one committed, one written under its own prefix, never committed
    assert open_store(root).video_ids() == ["v1"]  # a reader never sees it
    with ShardWriter(root, 0) as w2:
        assert any("deleted unreferenced segment" in m for m in w2.repairs), w2.repairs
        write_video(w2, 2, 9)
    s = open_store(root)
    assert s.video_ids() == ["v1", "v2"]
    np.testing.assert_array_equal(s.read("v2")[0], frames(2, 0, 9)[0])


def test_a_missing_segment_file_is_an_error_not_zeros(s3_bucket: str) -> None:
    from cache import MissingDataError

    root = make(f"{s3_bucket}/s.zarr", chunk_frames=2, file_frames=4, segment_frames=8)
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 8)
    storage = open_storage(root)
    (chunk,) = [k for k in storage.list("shards/00000/") if k.endswith("tokens/c/1/0/0")]
    storage.delete(chunk)
    with pytest.raises(MissingDataError, match="tokens/c/1/0/0"):
        open_store(root).read("v1")


def _zombie(root: str, folder: str) -> None:
    from cache.objectlog import ShardFencedError

    w = ShardWriter(root, 0, lease_ttl_s=1.0, commit_interval_s=1e9)
    write_video(w, 1, 8)
    w.commit()
    write_video(w, 9, 3)  # buffered: committed only when it resumes, if ever
    (Path(folder) / "ready").touch()
    while not (Path(folder) / "go").exists():
        time.sleep(0.02)
    try:
        w.commit()
        outcome = "committed"
    except ShardFencedError:
        outcome = "fenced"
    w.abort()
    (Path(folder) / "outcome").write_text(outcome)


def test_a_writer_stopped_past_its_lease_is_fenced(s3_bucket: str, tmp_path: Path) -> None:
    """SIGSTOP a writer past its lease's ttl, let another take the shard and commit, SIGCONT
    it: its commit is refused and the store equals a clean run's."""
    import multiprocessing as mp
    import os
    import signal

    root = str(make(f"{s3_bucket}/s.zarr", segment_frames=8))
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_zombie, args=(root, str(tmp_path)))
    p.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.pid is not None
    os.kill(p.pid, signal.SIGSTOP)
    try:
        with ShardWriter(root, 0) as b:  # waits for the stopped writer's lease to lapse
            write_video(b, 2, 5)
    finally:
        os.kill(p.pid, signal.SIGCONT)
    (tmp_path / "go").touch()
    p.join(60)
    assert (tmp_path / "outcome").read_text() == "fenced"
    s = open_store(root)
    assert s.video_ids() == ["v1", "v2"]
    for v, n in [(1, 8), (2, 5)]:
        np.testing.assert_array_equal(s.read(f"v{v}")[0], frames(v, 0, n)[0])


def test_launch_records_of_a_bucket_store_are_found_from_the_bucket(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cache import launch_folders, read_launches, record_launch

    monkeypatch.chdir(tmp_path)
    store = f"{s3_bucket}/s.zarr"
    folder = tmp_path / "logs" / "slurm"
    record_launch(folder, {"job_id": "7", "submitted_at": 1.0}, store=store)
    record_launch(folder, {"job_id": "8", "submitted_at": 2.0}, store=store)  # registered once
    assert launch_folders(store) == [folder]
    assert [r["job_id"] for r in read_launches(store)] == ["7", "8"]
    assert len(open_storage(store).list("launch_folders/")) == 1
    assert not any(tmp_path.glob("s3*"))  # no local folder named after the URL


class _Counting(Storage):
    """A storage that counts the objects fetched (and can show one stale list)."""

    def __init__(self, inner: Storage, stale: list[str] | None = None) -> None:
        self.inner, self.url, self.gets, self.lists, self.stale = inner, inner.url, 0, 0, stale

    def create(self, key: str, data: bytes) -> Version | None:
        return self.inner.create(key, data)

    def replace(self, key: str, data: bytes, version: Version) -> Version | None:
        return self.inner.replace(key, data, version)

    def get(self, key: str) -> tuple[bytes, Version] | None:
        self.gets += 1
        return self.inner.get(key)

    def list(self, prefix: str) -> list[str]:
        self.lists += 1
        if self.stale is not None:  # listed before a newer checkpoint replaced this one
            keys, self.stale = self.inner.list(prefix) + self.stale, None
            return sorted(keys)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def zarr_store(self, prefix: str, *, read_only: bool) -> object:
        return self.inner.zarr_store(prefix, read_only=read_only)


def _all_records(storage: Storage) -> dict[int, list[dict]]:  # type: ignore[type-arg]
    """Every record of every shard, checkpoints ignored: the truth a checkpoint must equal."""
    from cache.objectlog import _number, _records_of

    out = {}
    for shard in (0, 1):
        keys = {n: k for k in storage.list(f"index/shard-{shard:05d}/")
                if (n := _number(k)) is not None}  # fmt: skip
        out[shard] = _records_of(storage, keys, max(keys))
    return out


def test_checkpoints_keep_the_journal_and_cut_the_reads(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease holder checkpoints its journal every CHECKPOINT_RECORDS records (keeping the
    latest two); a reader then fetches the latest checkpoint and the records after it, and
    reads exactly what all the records say. A damaged checkpoint is read around; one deleted
    between the list and the read (a newer one replaced it) makes the reader list again."""
    import cache.shardlog
    from cache.objectlog import checkpoint_key, read_journals, read_records

    monkeypatch.setattr(cache.shardlog, "CHECKPOINT_RECORDS", 4)
    root = str(make(f"{s3_bucket}/s.zarr", segment_frames=1000))
    for shard in (0, 1):
        with ShardWriter(root, shard) as w:
            for v in range(9):
                write_video(w, 10 * shard + v, 3)
                w.commit()  # one record per video
        with ShardWriter(root, shard) as w:  # a second run continues the checkpoints
            for v in range(9, 12):
                write_video(w, 10 * shard + v, 3)
                w.commit()
    storage = open_storage(root)
    truth = _all_records(storage)
    assert len(truth[0]) == 2 + 12 * 3  # two runs; segment, piece, video per video
    ckpts = [k for k in storage.list("index/shard-00000/") if "checkpoint-" in k]
    assert len(ckpts) == 2  # the latest two: older ones deleted
    counting = _Counting(storage)
    journals = read_journals(counting)
    assert {s: j.records for s, j in journals.items()} == truth
    objects = sum(1 for k in storage.list("index/") if "checkpoint-" not in k)
    assert objects == 2 * (2 + 12)  # per shard: two runs' records, one per video
    # Checkpoints after records 4, 8 and 12: a reader gets the last and records 13 and 14.
    assert [k.rsplit("/", 1)[1] for k in ckpts] == [
        "checkpoint-0000000008.json", "checkpoint-0000000012.json"]  # fmt: skip
    assert counting.gets == 2 * 3, counting.gets
    assert load_index(root).videos.keys() == {f"v{10 * s + v}" for s in (0, 1) for v in range(12)}

    # A damaged checkpoint: the records it covers are read instead (they are never deleted).
    storage.put(ckpts[-1], b"not json")
    with caplog.at_level("WARNING"):
        assert read_records(storage) == truth
    assert "damaged record skipped" in caplog.text

    # Listed, then deleted by the holder before the read: list again.
    storage.delete(ckpts[-1])  # (the damaged one; checkpoint 8 stays)
    stale = _Counting(storage, stale=[checkpoint_key(0, 14)])  # listed, gone since
    assert read_records(stale) == truth
    assert stale.lists == 2


def test_a_dead_endpoint_whose_port_holds_403_is_not_access_denied() -> None:
    """The unreachable endpoint's text names its port: one like 40312 once read as HTTP 403
    (the CLI test picks a free port at random); so could a key or a bucket name holding 403."""
    from cache.storage import describe_error

    dead = Exception("Generic S3 error: error sending request for url (http://127.0.0.1:40312/b/k)")
    assert "cannot reach" in describe_error("s3://b/x.zarr", "read", "k", dead)
    forbidden = Exception("Generic S3 error: Client error with status 403 Forbidden: <Error/>")
    assert "access denied" in describe_error("s3://b/x.zarr", "read", "k", forbidden)
    for key in ("a403f", "v-403", "x/403/y", "4031"):
        other = Exception(f"Generic S3 error: Client error with status 404 Not Found: {key}")
        assert "access denied" not in describe_error("s3://b/x.zarr", "read", "k", other)

"""What ``job=verify`` detects, on real stores (each row of docs/cache.md's table has a test)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cache import (
    DamagedDataError,
    JournalDamageWarning,
    MissingDataError,
    ShardWriter,
    fingerprint,
    load_index,
    open_store,
)
from jobs.status import format_status, store_status
from jobs.verify import VerifyJob, rebuild_index, verify_store
from tests.cache.test_store import D, N, frames, make_store, write_video

SEG0 = Path("shards/00000/seg-000000")


def small_store(root: Path, videos: int = 3, n: int = 20) -> Path:
    make_store(root, chunk_frames=4, file_frames=8, segment_frames=4096)
    with ShardWriter(root, 0, commit_interval_s=1e9) as w:
        for v in range(videos):
            write_video(w, v, n)
    return root


def problems(root: Path) -> dict[str, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JournalDamageWarning)
        return verify_store(root)["problems"]


def test_a_sound_store_verifies_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = small_store(tmp_path / "s.zarr")
    assert problems(root) == {}
    assert VerifyJob(store=str(root)).run() == 0
    assert "verify: OK" in capsys.readouterr().out


@pytest.mark.parametrize("lost", ["tokens/c/1/0/0", "pts/c/0"])
def test_a_missing_chunk_file_is_an_error_never_zeros(tmp_path: Path, lost: str) -> None:
    root = small_store(tmp_path / "s.zarr")
    (root / SEG0 / lost).unlink()
    with pytest.raises(MissingDataError, match="missing chunk file"):
        open_store(root).read("v1")
    found = problems(root)
    assert set(found) == {"v0", "v1", "v2"}  # all three live in the segment
    assert any("missing chunk file" in p for p in found["v1"])


def test_a_flipped_bit_in_the_data_is_caught(tmp_path: Path) -> None:
    root = small_store(tmp_path / "s.zarr")
    f = root / SEG0 / "tokens/c/0/0/0"
    data = bytearray(f.read_bytes())
    data[100] ^= 0x04  # inside the first chunk's data, not the shard index
    f.write_bytes(bytes(data))
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        open_store(root).read("v0")
    assert any("checksum" in p.lower() or "crc" in p.lower() for p in problems(root)["v0"])


def test_edited_array_metadata_is_caught(tmp_path: Path) -> None:
    root = small_store(tmp_path / "s.zarr")
    meta_path = root / SEG0 / "tokens/zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["data_type"] = "int16"
    meta_path.write_text(json.dumps(meta))
    assert any("metadata: dtype" in p for p in problems(root)["v0"])
    meta["data_type"], meta["shape"][1] = "float16", 9
    meta_path.write_text(json.dumps(meta))
    assert any("metadata: tokens" in p for p in problems(root)["v0"])


def test_a_damaged_journal_line_costs_one_video_and_is_repaired(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr", segment_frames=4096)
    for v in range(3):  # one commit per video: its lines are its own
        with ShardWriter(root, 0) as w:
            write_video(w, v, 5)
    journal = root / "index/shard-00000.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if '"video_id":"v1"' in line and "piece" in line)
    lines[k] = lines[k][:25] + "\x00garbage\n"
    journal.write_text("".join(lines))
    with pytest.warns(JournalDamageWarning):
        from cache import read_journal

        read_journal(journal)
    s = open_store(root)  # readers skip it: the other videos stay readable
    assert s.video_ids() == ["v0", "v2"]
    found = problems(root)
    assert any("line" in p and "damaged" in p for p in found["<index>"])
    with ShardWriter(root, 0) as w:  # the next writer drops the line; only v1 is to redo
        assert any("dropped" in m for m in w.repairs)
        write_video(w, 1, 5)
    s = open_store(root)
    assert s.video_ids() == ["v0", "v1", "v2"] and problems(root) == {}
    np.testing.assert_array_equal(s.read("v1")[0], frames(1, 0, 5)[0])


def test_a_failed_append_leaves_the_journal_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: os.write writes half the line, then ENOSPC; the next commit must not glue."""
    root = make_store(tmp_path / "s.zarr")
    w = ShardWriter(root, 0)
    write_video(w, 0, 5)
    journal = root / "index/shard-00000.jsonl"
    before = journal.read_bytes()
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(OSError, match="No space"):
        w.commit()
    monkeypatch.setattr(os, "write", real_write)
    assert journal.read_bytes() == before
    w.close()  # the retry appends whole records
    s = open_store(root)
    assert s.video_ids() == ["v0"] and problems(root) == {}
    np.testing.assert_array_equal(s.read("v0")[0], frames(0, 0, 5)[0])


def test_a_lost_journal_is_reported_and_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = small_store(tmp_path / "s.zarr")
    want = open_store(root).read("v2")
    (root / "index/shard-00000.jsonl").unlink()
    found = problems(root)
    assert any("no journal names" in p for p in found["<index>"])
    assert VerifyJob(store=str(root), rebuild_index=True).run() == 0
    assert "re-indexed segment seg-000000" in capsys.readouterr().out
    s = open_store(root)
    assert s.video_ids(status="done") == ["v0", "v1", "v2"]
    np.testing.assert_array_equal(s.read("v2")[0], want[0])


def test_unindexed_segments_are_adopted_not_deleted(tmp_path: Path) -> None:
    root = small_store(tmp_path / "s.zarr")
    journal = root / "index/shard-00000.jsonl"
    kept = [line for line in journal.read_text().splitlines(keepends=True) if "run" in line[:20]]
    journal.write_text("".join(kept))  # as if killed between rename and journal
    assert any("no journal names" in p for p in problems(root)["<index>"])
    with ShardWriter(root, 0) as w:
        assert any("re-indexed" in m for m in w.repairs)
    assert (root / SEG0).is_dir() and open_store(root).video_ids() == ["v0", "v1", "v2"]


def test_a_changed_source_is_reported(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr")
    src = tmp_path / "a.mp4"
    src.write_bytes(b"x" * 1000)
    with ShardWriter(root, 0) as w:
        w.start("a", source=fingerprint(src))
        w.write("a", *frames(0, 0, 3))
        w.finish("a", {"num_frames": 3, "source_path": str(src)})
    assert problems(root) == {}
    src.write_bytes(b"y" * 1000)  # same length, other content
    assert any("source changed" in p for p in problems(root)["a"])


def test_mark_damaged_makes_the_next_extract_redo_exactly_those(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_store(tmp_path / "s.zarr", chunk_frames=4, file_frames=8)
    for v in range(3):
        with ShardWriter(root, 0) as w:
            write_video(w, v, 8)
    seg1 = root / "shards/00000/seg-000001"
    (seg1 / "tokens/c/0/0/0").unlink()  # v1's only file
    assert VerifyJob(store=str(root), mark_damaged=True).run() == 1
    assert "marked 1 damaged video(s); the next job=extract redoes exactly those: v1" in (
        capsys.readouterr().out
    )
    assert open_store(root).video_ids(status="done") == ["v0", "v2"]
    with ShardWriter(root, 0) as w:
        write_video(w, 1, 8)
    assert open_store(root).video_ids(status="done") == ["v0", "v1", "v2"]
    np.testing.assert_array_equal(open_store(root).read("v1")[0], frames(1, 0, 8)[0])


def test_stores_without_checksums_are_read_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = small_store(tmp_path / "s.zarr")
    journal = root / "index/shard-00000.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    for r in records:  # as the segment lines of a store made before checksums
        if r["kind"] == "segment":
            r.pop("crc32c"), r.pop("shape"), r.pop("dtype")
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert VerifyJob(store=str(root)).run() == 0
    out = capsys.readouterr().out
    assert "1 segment(s) not checksummed" in out and "verify: OK" in out
    assert load_index(root).videos["v1"].status == "done"


def test_settings_are_checked_before_skipping_a_done_store(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    """A rerun of a finished store with other settings is one error naming the setting."""
    from extract.samples import make_video
    from tests.jobs.cli import make_videos, run_cli

    videos = make_videos(tmp_path / "videos", 2, 1.0)
    store = tmp_path / "out.zarr"
    args = ["job=extract", f"videos={videos}", f"store={store}",
            f"encoder.pretrained={tiny_siglip}", "job.progress=false"]  # fmt: skip
    r = run_cli(*args, hydra_dir=tmp_path / "h")
    assert r.returncode == 0, r.stderr[-2000:]
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    on_gpu = json.loads(json.dumps(meta))  # as if the store was begun on a GPU (auto: bf16)
    on_gpu["attributes"]["streamfeat"]["features"]["compute"] = {
        "device": "cuda",
        "autocast": "bfloat16",
    }
    for override, name in [
        ("encoder.pool=2", "encoder.pool"),
        ("job.decode.fps=1", "fps"),
        ("job.layout.dtype=bfloat16", "dtype"),
        ("", "compute.autocast"),
    ]:
        if not override:
            meta_path.write_text(json.dumps(on_gpu))
        r = run_cli(*args, *([override] if override else []), hydra_dir=tmp_path / "h")
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(err) == 1 and f"other settings: {name}:" in err[0], (
            override,
            r.stdout,
            r.stderr[-2000:],
        )
    meta_path.write_text(json.dumps(meta))
    # A source replaced after extraction is reported by status and verify.
    make_video(videos / "v1.mp4", seconds=1.0, width=64, height=48, fps=24)
    st = run_cli("job=status", f"store={store}", hydra_dir=tmp_path / "h")
    assert st.returncode == 1 and "SOURCE CHANGED v1: source changed" in st.stdout, st.stdout
    assert any("source changed" in p for p in problems(store)["v1"])


def test_a_shard_writer_rereads_the_index_once_it_holds_the_lock(
    tmp_path: Path, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run finishes a video between this run's look at the index and its lock: the
    video is not extracted again."""
    import jobs.extract as extract
    from extract.encoders import SiglipConfig
    from extract.frames import DecodeOptions
    from extract.pipeline import VideoTask
    from extract.samples import make_video

    for i in (0, 1):
        make_video(tmp_path / f"v{i}.mp4", seconds=1.0, width=64, height=48)
    spec = extract.ExtractSpec(
        store=str(tmp_path / "s.zarr"),
        videos=tuple(VideoTask(f"v{i}", tmp_path / f"v{i}.mp4") for i in (0, 1)),
        encoder=SiglipConfig(pretrained=str(tiny_siglip)),
        decode=DecodeOptions(fps=2.0),
        progress=False,
    )
    real_init = extract.init_store
    other: dict[str, str] = {}

    def init_then_other_run_finishes_v0(*args: object, **kwargs: object) -> object:
        out = real_init(*args, **kwargs)  # type: ignore[arg-type]
        with ShardWriter(spec.store, 0) as w:  # the other run, done just before our lock
            lay = w.layout
            w.start("v0")
            w.write("v0", np.zeros((2, lay.tokens_per_frame, lay.dim), np.float16), np.arange(2.0))
            w.finish("v0", {"num_frames": 2})
        other["attempt"] = load_index(Path(spec.store)).videos["v0"].record["attempt"]
        return out

    monkeypatch.setattr(extract, "init_store", init_then_other_run_finishes_v0)
    result = extract.run_shard(spec, 0, 1)
    index = load_index(Path(spec.store))
    assert index.videos["v0"].record["attempt"] == other["attempt"]  # not redone
    assert index.videos["v1"].status == "done" and result.done == 1


def test_all_fill_value_frames_are_written_not_taken_for_missing(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr", chunk_frames=4, file_frames=8)
    with ShardWriter(root, 0) as w:
        w.start("zeros")
        w.write("zeros", np.zeros((9, 10, 6), np.float16), np.zeros(9))
        w.finish("zeros", {"num_frames": 9})
    assert open_store(root).read("zeros")[0].shape == (9, 10, 6)
    assert problems(root) == {}


# -- issue 22: repair never deletes committed data; damaged means visible ----------------------


def _lose_journal(root: Path) -> None:
    (root / "index/shard-00000.jsonl").unlink()


def test_rebuild_keeps_a_segment_missing_its_pts_and_marks_its_videos(tmp_path: Path) -> None:
    """The reported bug, with the command users run: a lost journal, a segment without its small
    pts file. `job=verify job.rebuild_index=true` deleted the whole segment (three videos'
    intact tokens) and said OK; now it keeps it, names the damage and marks the videos."""
    from tests.jobs.cli import run_cli

    root = small_store(tmp_path / "s.zarr")
    want = {v: open_store(root).read(v)[0] for v in ("v0", "v1", "v2")}
    _lose_journal(root)
    (root / SEG0 / "pts/c/0").unlink()
    tokens = sorted((root / SEG0 / "tokens").rglob("*"))
    r = run_cli("job=verify", f"store={root}", "job.rebuild_index=true", hydra_dir=tmp_path / "h")
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert "missing chunk file" in r.stdout and "marked to redo: v0, v1, v2" in r.stdout
    assert "verify: OK" not in r.stdout
    assert sorted((root / SEG0 / "tokens").rglob("*")) == tokens  # nothing deleted
    s = open_store(root)
    assert s.video_ids(status="damaged") == ["v0", "v1", "v2"] and not s.index.partial
    assert "missing chunk file" in s.info("v1")["error"]
    # The rerun (a writer's start-up adopts nothing more, deletes nothing) redoes the three.
    with ShardWriter(root, 0, commit_interval_s=1e9) as w:
        assert not any("deleted" in m for m in w.repairs)
        for v in range(3):
            write_video(w, v, 20)
    s = open_store(root)
    assert s.video_ids(status="done") == ["v0", "v1", "v2"]
    for vid, tok in want.items():
        np.testing.assert_array_equal(s.read(vid)[0], tok)
    r2 = verify_store(root)
    assert r2["problems"] == {} and any("missing chunk file" in n for n in r2["notes"])
    assert (root / SEG0 / "tokens").is_dir()  # kept: it is never deleted behind the user


def test_an_extract_start_up_keeps_a_damaged_unjournalled_segment(tmp_path: Path) -> None:
    root = small_store(tmp_path / "s.zarr")
    _lose_journal(root)
    (root / SEG0 / "pts/c/0").unlink()
    with ShardWriter(root, 0) as w:  # what job=extract does first
        assert any("marked to redo" in m for m in w.repairs), w.repairs
    assert (root / SEG0 / "tokens/c/0/0/0").is_file()
    assert open_store(root).video_ids(status="damaged") == ["v0", "v1", "v2"]


def test_segment_attributes_are_compared_with_the_journal(tmp_path: Path) -> None:
    """Swapped segment_start lines read another video's rows: caught, for those two only."""
    root = small_store(tmp_path / "s.zarr")
    journal = root / "index/shard-00000.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    p0, p1 = (r for r in records if r["kind"] == "piece" and r["video_id"] in ("v0", "v1"))
    p0["segment_start"], p1["segment_start"] = p1["segment_start"], p0["segment_start"]
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    found = problems(root)
    assert set(found) == {"v0", "v1"}, found
    assert all("attributes disagree with the journal" in p for p in found["v0"])


@pytest.mark.parametrize("swap", ["tokens-in-a-segment", "tokens-across", "pts-across"])
def test_a_file_swapped_with_one_of_the_same_size_is_caught_when_read(
    tmp_path: Path, swap: str
) -> None:
    root = make_store(tmp_path / "s.zarr", chunk_frames=4, file_frames=8)
    for v in range(2):  # two segments of 24 frames: three full files each
        with ShardWriter(root, 0) as w:
            tok, pts = frames(v, 0, 24)
            w.start(f"v{v}")
            w.write(f"v{v}", tok, pts + 100 * v)  # pts differ too
            w.finish(f"v{v}", {"num_frames": 24})
    seg1 = root / "shards/00000/seg-000001"
    a, b = {
        "tokens-in-a-segment": (root / SEG0 / "tokens/c/1/0/0", root / SEG0 / "tokens/c/2/0/0"),
        "tokens-across": (root / SEG0 / "tokens/c/1/0/0", seg1 / "tokens/c/1/0/0"),
        "pts-across": (root / SEG0 / "pts/c/0", seg1 / "pts/c/0"),
    }[swap]
    assert a.stat().st_size == b.stat().st_size
    tmp = a.with_name("x")
    a.rename(tmp), b.rename(a), tmp.rename(b)
    with pytest.raises(DamagedDataError, match="not the data written there"):
        open_store(root).read("v0")
    with pytest.raises(DamagedDataError):
        open_store(root).read("v0", 9, 12)  # a window inside the swapped file
    assert swap == "pts-across" or len(open_store(root).read("v0", 0, 8)[0]) == 8  # untouched
    assert "v0" in problems(root)


@pytest.mark.parametrize("other", ["width", "tokens_per_frame", "dtype", "encoder"])
def test_rebuild_refuses_a_segment_of_another_layout(tmp_path: Path, other: str) -> None:
    from cache import StoreLayout, init_store

    root = small_store(tmp_path / "s.zarr", videos=1)
    lay = {
        "width": StoreLayout(N, D + 1),
        "tokens_per_frame": StoreLayout(N + 1, D),
        "dtype": StoreLayout(N, D, dtype="bfloat16"),
        "encoder": StoreLayout(N, D),
    }[other]
    foreign = tmp_path / "other.zarr"
    encoder = "other" if other == "encoder" else "test"
    init_store(foreign, layout=lay, features={"encoder": encoder}, provenance={})
    with ShardWriter(foreign, 0) as w:
        t = np.zeros(
            (3, lay.tokens_per_frame, lay.dim), np.uint16 if other == "dtype" else np.float16
        )
        w.start("alien")
        w.write("alien", t, np.arange(3.0))
        w.finish("alien", {"num_frames": 3})
    shutil.copytree(foreign / "shards/00000/seg-000000", root / "shards/00000/seg-000009")
    found = problems(root)["<index>"]
    assert any("seg-000009: segment of another layout" in p for p in found), found
    messages = rebuild_index(root)
    assert any("refused segment seg-000009" in m for m in messages), messages
    assert "alien" not in load_index(root).videos
    assert (root / "shards/00000/seg-000009/tokens").is_dir()  # refused, not deleted
    with ShardWriter(root, 0) as w:  # the next writer leaves it too, and numbers past it
        write_video(w, 5, 3)
    assert (root / "shards/00000/seg-000010").is_dir()


def test_a_stray_folder_in_shards_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = small_store(tmp_path / "s.zarr", videos=1)
    shutil.copytree(root / "shards/00000", root / "shards/00000.bak")
    (root / "shards/notes").mkdir()
    (root / "shards/00000/seg-000000.old").mkdir()
    assert VerifyJob(store=str(root), rebuild_index=True).run() == 1
    out = capsys.readouterr().out
    for name in ("shards/00000.bak", "shards/notes", "shards/00000/seg-000000.old"):
        assert name in out, out
    assert open_store(root).video_ids(status="done") == ["v0"]


def _busy_writer(root: str, videos: int) -> None:
    with ShardWriter(root, 0, commit_interval_s=0.0) as w:
        for v in range(videos):
            write_video(w, v, 6, step=2)


def test_verify_while_a_writer_commits_reports_no_false_problems(tmp_path: Path) -> None:
    """A writer process commits every few milliseconds (rename, then journal) while verify and
    a rebuild run again and again: no problem is reported and nothing is touched."""
    import multiprocessing as mp

    root = make_store(tmp_path / "s.zarr", chunk_frames=2, file_frames=4, segment_frames=8)
    p = mp.get_context("spawn").Process(target=_busy_writer, args=(str(root), 100000))
    p.start()
    try:
        deadline = time.monotonic() + 120
        while not (root / "index/shard-00000.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        rounds, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 3:
            assert problems(root) == {}
            rounds += 1
        assert all("skipped, a writer is running" in m for m in rebuild_index(root))
        assert problems(root) == {} and p.is_alive() and rounds >= 2
    finally:
        p.kill()  # SIGKILL
        p.join()
    assert problems(root) == {} or set(problems(root)) == {"<index>"}  # a kill may leave one


def test_damaged_videos_are_visible_in_status_and_info_and_survive_a_rebuild(
    tmp_path: Path,
) -> None:
    """After `job=verify job.mark_damaged=true`, `job=status` lists the damaged video and exits
    non-zero, `info` says damaged (no KeyError), and a lost journal's rebuild keeps the mark
    (a flipped bit is found only by verify's checksum: the mark is all that remembers it)."""
    from tests.jobs.cli import run_cli

    root = make_store(tmp_path / "s.zarr", chunk_frames=4, file_frames=8)
    for v in range(3):
        with ShardWriter(root, 0) as w:
            write_video(w, v, 8)
    f = root / "shards/00000/seg-000001/tokens/c/0/0/0"
    data = bytearray(f.read_bytes())
    data[100] ^= 0x04
    f.write_bytes(bytes(data))
    r = run_cli("job=verify", f"store={root}", "job.mark_damaged=true", hydra_dir=tmp_path / "h")
    assert r.returncode == 1 and "marked 1 damaged video(s)" in r.stdout, r.stdout
    st = run_cli("job=status", f"store={root}", "job.json=true", hydra_dir=tmp_path / "h")
    assert st.returncode == 1, st.stdout + st.stderr[-2000:]
    assert json.loads(st.stdout)["damaged"]["v1"].startswith("shard 0 seg-000001: unreadable")
    assert "DAMAGED v1: shard 0 seg-000001" in format_status(store_status(root))
    info = open_store(root).info("v1")
    assert info["status"] == "damaged" and "checksum" in info["error"]
    _lose_journal(root)
    VerifyJob(store=str(root), rebuild_index=True).run()
    s = open_store(root)
    assert s.video_ids(status="damaged") == ["v1"] and s.video_ids(status="done") == ["v0", "v2"]
    assert "1 damaged" in format_status(store_status(root))
    with ShardWriter(root, 0) as w:  # the rerun redoes it
        write_video(w, 1, 8)
    assert open_store(root).video_ids(status="done") == ["v0", "v1", "v2"]
    assert store_status(root)["damaged"] == {} and problems(root) == {}

"""What ``job=verify`` detects, on real stores (each row of docs/cache.md's table has a test)."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from cache import MissingDataError, ShardWriter, fingerprint, load_index, open_store
from cache.journal import JournalDamageWarning
from jobs.verify import VerifyJob, verify_store
from tests.cache.test_store import frames, make_store, write_video

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

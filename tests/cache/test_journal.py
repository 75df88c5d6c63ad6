"""Reading journals: the bulk parse and the line-by-line fallback agree; damage is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache.journal import JournalDamageWarning, append_records, build_index, read_journal

RECORDS = [
    {"kind": "segment", "segment": "seg-000000", "frames": 5},
    {"kind": "piece", "video_id": "a/b", "attempt": "x", "segment": "seg-000000",
     "segment_start": 0, "video_start": 0, "frames": 5, "note": "comma, and \\n inside"},
    {"kind": "video", "video_id": "a/b", "attempt": "x", "status": "done", "num_frames": 5,
     "committed_at": 1.0, "source_path": "/v/ünïcode, [1].mp4"},
]  # fmt: skip


def test_records_round_trip_with_a_torn_tail_ignored(tmp_path: Path) -> None:
    path = tmp_path / "shard-00000.jsonl"
    assert read_journal(path) == []
    append_records(path, RECORDS)
    assert read_journal(path) == RECORDS
    with open(path, "ab") as f:
        f.write(b'{"kind":"video","video_id":"c","sta')  # a writer killed mid-line
    assert read_journal(path) == RECORDS
    index = build_index({0: read_journal(path)})
    assert index.videos["a/b"].status == "done" and index.videos["a/b"].pieces[0].frames == 5


def test_blank_lines_are_skipped_and_a_damaged_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "shard-00000.jsonl"
    lines = [json.dumps(r) for r in RECORDS]
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n" + lines[2] + "\n")
    assert read_journal(path) == RECORDS  # the line-by-line path
    # One damaged line costs that line only: skipped with a warning that names it.
    path.write_text(lines[0] + "\n" + lines[1][:30] + "\n" + lines[2] + "\n")
    damaged: list[str] = []
    with pytest.warns(JournalDamageWarning, match="shard-00000.jsonl line 2: damaged"):
        assert read_journal(path, damaged) == [RECORDS[0], RECORDS[2]]
    assert len(damaged) == 1 and "line 2" in damaged[0]
    path.write_text(lines[0] + "\n" + "[1, 2]\n" + lines[2] + "\n")  # JSON, but not a record
    with pytest.warns(JournalDamageWarning, match="line 2"):
        assert read_journal(path) == [RECORDS[0], RECORDS[2]]

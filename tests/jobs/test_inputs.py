"""One odd input never sinks the run: odd names, collisions, symlinks, unreadable folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from cache import validate_video_id
from jobs.inputs import resolve_videos


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_odd_names_get_valid_distinct_ids(tmp_path: Path) -> None:
    names = ["good.mp4", "..mp4", "A.mp4", "A.MP4", "é" * 120 + ".mp4"]
    for n in names:
        touch(tmp_path / n)
    tasks = resolve_videos(str(tmp_path))
    assert sorted(t.path.name for t in tasks) == sorted(names)  # every file kept
    ids = [t.video_id for t in tasks]
    assert len(set(ids)) == len(ids) and "good" in ids
    for vid in ids:
        assert validate_video_id(vid) == vid and len(vid) <= 100
    again = [t.video_id for t in resolve_videos(str(tmp_path))]
    assert again == ids  # stable


def test_list_naming_one_file_twice_is_one_input(tmp_path: Path) -> None:
    touch(tmp_path / "sub" / "r1.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\n  sub/r1.mp4  \nsub/../sub/r1.mp4\n")
    assert [t.video_id for t in resolve_videos(str(listing))] == [
        "r1"
    ]  # ids relative to the common parent


def test_folder_and_glob_agree_on_symlinks_and_loops_end(tmp_path: Path) -> None:
    touch(tmp_path / "real" / "a.mp4")
    top = tmp_path / "top"
    touch(top / "b.mp4")
    os.symlink(tmp_path / "real", top / "linked")
    os.symlink(top, top / "loop")  # a loop back to the top
    folder = {t.video_id for t in resolve_videos(str(top))}
    assert {"b", "linked/a"} <= folder
    globbed = {t.video_id for t in resolve_videos(str(top / "*" / "*.mp4"))}
    assert "linked/a" in {f"linked/{v}" for v in globbed} | globbed


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_subfolder_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "ok.mp4")
    locked = tmp_path / "locked"
    touch(locked / "x.mp4")
    locked.chmod(0)
    try:
        with caplog.at_level(logging.WARNING):
            tasks = resolve_videos(str(tmp_path))
    finally:
        locked.chmod(0o755)
    assert [t.video_id for t in tasks] == ["ok"]
    assert "locked" in caplog.text


def test_recursive_glob_through_a_symlink_loop_does_not_crash(tmp_path: Path) -> None:
    top = tmp_path / "top"
    touch(top / "b.mp4")
    os.symlink(top, top / "loop")
    try:
        tasks = resolve_videos(str(top / "**" / "*.mp4"))
    except ValueError as e:  # one line, naming the glob
        assert "cannot expand the glob" in str(e)
    else:
        assert "b" in {t.video_id for t in tasks}

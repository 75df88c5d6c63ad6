"""One odd input never sinks the run: odd names, collisions, symlinks, unreadable folders."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cache import validate_video_id
from extract.pipeline import VideoTask
from extract.samples import unprivileged
from jobs.inputs import glob_files, resolve_inputs


def resolve_videos(videos: str) -> list[VideoTask]:
    return resolve_inputs(videos).tasks


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


def test_recursive_glob_through_a_symlink_loop_ends(tmp_path: Path) -> None:
    """The glob walks as a folder does: each folder once, so the loop ends and ``b`` is found
    once (through the loop it would also be ``loop/b``, ``loop/loop/b``, ...)."""
    top = tmp_path / "top"
    touch(top / "b.mp4")
    os.symlink(top, top / "loop")
    tasks = resolve_videos(str(top / "**" / "*.mp4"))
    assert [t.video_id for t in tasks] == ["b"]


def test_a_file_without_an_id_is_rejected_by_path(tmp_path: Path) -> None:
    touch(tmp_path / "root" / "a.mp4")
    stray = touch(tmp_path / "other" / "b.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("root/a.mp4\nother/b.mp4\n")
    found = resolve_inputs(str(listing), root=str(tmp_path / "root"))
    assert [t.video_id for t in found.tasks] == ["a"]
    assert list(found.rejected) == [str(stray)]
    assert "not under the input root" in found.rejected[str(stray)]


@pytest.mark.parametrize("mode", ["folder", "glob"])
def test_both_modes_warn_about_a_folder_they_cannot_read(
    caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    # Root reads every folder, so the walk runs as nobody (``unprivileged``), in a folder nobody
    # may enter (pytest's own tmp folders are 0700).
    top = Path(tempfile.mkdtemp(prefix="streamfeat-unreadable-"))
    locked = top / "locked"
    try:
        top.chmod(0o755)
        touch(top / "ok.mp4")
        touch(locked / "x.mp4")
        locked.chmod(0)
        arg = str(top) if mode == "folder" else str(top / "**" / "*.mp4")
        with caplog.at_level(logging.WARNING), unprivileged():
            tasks = resolve_videos(arg)
    finally:
        locked.chmod(0o755)
        shutil.rmtree(top)
    assert [t.video_id for t in tasks] == ["ok"]
    assert f"skipped {locked}: Permission denied" in caplog.text


def test_glob_mode_matches_what_glob_matches(tmp_path: Path) -> None:
    """The walk that replaces ``glob.glob`` (so that it warns and ends symlink loops) keeps its
    rules: ``*`` stays in one folder and skips dot files, ``**`` spans folders but not hidden
    ones, ``?`` and ``[..]`` match one character."""
    for name in [
        "a.mp4",
        "b.mkv",
        ".hidden.mp4",
        "s/c.mp4",
        "s/t/d.mp4",
        "s/.h/e.mp4",
        ".dot/f.mp4",
        "x1.mp4",
        "x22.mp4",
    ]:
        touch(tmp_path / name)
    for pattern in ["*.mp4", "**/*.mp4", "s/*.mp4", "s/**/*.mp4", "*/*.mp4", "x?.mp4", "[ab].*"]:
        spec = str(tmp_path / pattern)
        want = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        got = sorted(glob_files(spec, tmp_path))
        assert got == want, pattern

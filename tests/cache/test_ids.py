from __future__ import annotations

from pathlib import Path

import pytest

from cache import validate_video_id, video_id_for


def test_ids_are_relative_paths_without_extension(tmp_path: Path) -> None:
    assert video_id_for(tmp_path / "a" / "b.mp4", tmp_path) == "a/b"
    assert video_id_for(tmp_path / "clip.v2.mkv", tmp_path) == "clip.v2"


def test_odd_characters_are_escaped(tmp_path: Path) -> None:
    vid = video_id_for(tmp_path / "my video (1)" / "été%.mp4", tmp_path)
    assert vid == "my%20video%20%281%29/%C3%A9t%C3%A9%25"
    assert validate_video_id(vid) == vid


@pytest.mark.parametrize("path", ["../outside.mp4", "a/../../x.mp4", "/etc/passwd.mp4"])
def test_paths_escaping_the_root_are_rejected(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="not under the input root"):
        video_id_for(root / path if not path.startswith("/") else path, root)


@pytest.mark.parametrize(
    "bad", ["", "/abs", "a/../b", "a//b", "./a", "a/.", "a b", "a\\b", "x" * 600]
)
def test_validate_rejects_unsafe_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_video_id(bad)

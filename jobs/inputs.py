"""Turning the ``videos=`` argument into (video id, path) pairs."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from cache import video_id_for
from extract.pipeline import VideoTask

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".flv",
        ".wmv",
        ".3gp",
    }
)


def resolve_videos(videos: str, root: str | None = None) -> list[VideoTask]:
    """Expand ``videos`` (a directory, a text file of paths, or a glob) into sorted inputs.

    Ids are paths relative to ``root``: by default the directory itself, the glob's fixed
    prefix, or the common parent of the listed paths (set ``root`` for ids that stay stable when
    a list grows). Listed paths that do not exist are kept: extraction records them as failed.
    """
    spec = os.path.expanduser(str(videos))
    p = Path(spec)
    if glob.has_magic(spec):
        paths = [Path(x) for x in glob.glob(spec, recursive=True) if Path(x).is_file()]
        default_root = Path(_glob_prefix(spec))
    elif p.is_dir():
        paths = [x for x in p.rglob("*") if x.suffix.lower() in VIDEO_EXTENSIONS and x.is_file()]
        default_root = p
    elif p.is_file() and p.suffix.lower() not in VIDEO_EXTENSIONS:
        lines = [ln.strip() for ln in p.read_text().splitlines()]
        paths = [
            (Path(ln) if os.path.isabs(ln) else p.parent / ln)
            for ln in lines
            if ln and not ln.startswith("#")
        ]
        default_root = (
            Path(os.path.commonpath([os.path.abspath(x.parent) for x in paths]))
            if paths
            else p.parent
        )
    elif p.is_file():
        paths, default_root = [p], p.parent
    else:
        raise FileNotFoundError(
            f"videos={videos!r} is not a directory, a list file or a glob that exists"
        )
    if not paths:
        raise ValueError(
            f"videos={videos!r} matched no videos "
            f"(extensions: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    base = Path(root).expanduser() if root else default_root
    out: dict[str, VideoTask] = {}
    for path in sorted(set(paths)):
        vid = video_id_for(path, base)
        if vid in out:
            raise ValueError(
                f"two inputs map to video id {vid!r}: {out[vid].path} and {path} "
                "(ids drop the extension); rename one or split the inputs"
            )
        out[vid] = VideoTask(vid, path)
    return [out[k] for k in sorted(out)]


def _glob_prefix(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."

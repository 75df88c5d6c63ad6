"""Turning the ``videos=`` argument into (video id, path) pairs."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

from cache import video_id_for
from cache.ids import escape_part
from extract.pipeline import VideoTask

log = logging.getLogger(__name__)

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
        try:
            paths = [Path(x) for x in glob.glob(spec, recursive=True) if Path(x).is_file()]
        except OSError as e:  # e.g. too many levels of symbolic links
            raise ValueError(f"videos={videos!r}: cannot expand the glob: {e}") from None
        default_root = Path(_glob_prefix(spec))
    elif p.is_dir():
        paths = [x for x in walk_files(p) if x.suffix.lower() in VIDEO_EXTENSIONS]
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
    return assign_ids(sorted({Path(os.path.normpath(x)) for x in paths}), base)


def assign_ids(paths: list[Path], base: Path) -> list[VideoTask]:
    """Ids for ``paths``: a path whose id cannot be made is skipped with a warning naming it;
    paths whose ids collide (``A.mp4`` and ``A.MP4``) keep their extension in their ids."""
    ids: dict[Path, str] = {}
    for path in paths:
        try:
            ids[path] = video_id_for(path, base)
        except ValueError as e:
            log.warning("skipped %s: %s", path, e)
    by_id: dict[str, list[Path]] = {}
    for path, vid in ids.items():
        by_id.setdefault(vid, []).append(path)
    out: dict[str, VideoTask] = {}
    for vid, group in by_id.items():
        if len(group) == 1:
            out[vid] = VideoTask(vid, group[0])
            continue
        log.warning("inputs share video id %r; their ids keep the extension: %s", vid, group)
        for path in group:
            full = f"{vid}{escape_part(path.suffix)}"
            if full in out or full in by_id:
                log.warning("skipped %s: its id %r is taken", path, full)
                continue
            out[full] = VideoTask(full, path)
    return [out[k] for k in sorted(out)]


def walk_files(top: Path) -> list[Path]:
    """Files under ``top``, following symlinked folders as a ``**`` glob does (each folder once,
    so a symlink loop ends) and warning about a folder it cannot read."""
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []

    def warn(e: OSError) -> None:
        log.warning("skipped %s: %s", e.filename, e.strerror)

    for dirpath, dirnames, filenames in os.walk(top, onerror=warn, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        out += [Path(dirpath, f) for f in filenames if os.path.isfile(os.path.join(dirpath, f))]
    return out


def _glob_prefix(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."

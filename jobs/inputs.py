"""Turning the ``videos=`` argument into (video id, path) pairs."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from cache import video_id_for
from cache.ids import escape_part
from extract.pipeline import VideoTask
from extract.remote import (
    RemoteObject,
    RemoteOptions,
    head_objects,
    is_url,
    list_objects,
    pseudo_path,
    read_text,
)

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


@dataclass(frozen=True)
class Inputs:
    """What ``videos=`` names: the videos to extract, and the files that cannot be (their path ->
    why), which a run reports as failed without stopping."""

    tasks: list[VideoTask]
    rejected: dict[str, str] = field(default_factory=dict)


def resolve_inputs(
    videos: str, root: str | None = None, remote: RemoteOptions | None = None
) -> Inputs:
    """Expand ``videos`` (a directory, a text file of paths, or a glob) into sorted inputs.

    Ids are paths relative to ``root``: by default the directory itself, the glob's fixed
    prefix, or the common parent of the listed paths (set ``root`` for ids that stay stable when
    a list grows). Listed paths that do not exist are kept: extraction records them as failed.
    A folder and a glob are walked the same way: symlinked folders are followed (each folder
    once), and a folder that cannot be read is skipped with a warning naming it. A FIFO, socket
    or device (named by a list, found in a folder or matched by a glob) is rejected with its
    kind before anything opens it: reading one could block the run for ever.

    Object storage (``remote``: how to reach it): ``videos=s3://bucket/prefix/`` is listed
    recursively by extension (ids: keys relative to the prefix, as for a folder); a list file
    (local or on storage) may name ``s3://``, ``gs://``, ``az://`` or ``https://`` objects,
    each asked for its size and ETag now. Refused credentials, a missing bucket or an
    unreachable endpoint raise :class:`extract.remote.RemoteAccessError` before any work; a
    listed object that does not exist is rejected with the reason.
    """
    spec = str(videos) if is_url(videos) else os.path.expanduser(str(videos))
    p = Path(spec)
    if is_url(spec) or any(is_url(ln) for ln in _list_lines(p)):
        return _remote_inputs(spec, root, remote or RemoteOptions())
    if glob.has_magic(spec):
        default_root = Path(_glob_prefix(spec))
        paths = glob_files(spec, default_root)
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
    elif (kind := special_kind(p)) is not None:
        raise ValueError(
            f"videos={videos!r} is {kind}, not a video, a folder, a list file or a glob"
        )
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
    unique = sorted({Path(os.path.normpath(x)) for x in paths})
    special = {}
    for path in unique:
        if (kind := special_kind(path)) is not None:
            log.warning("cannot extract %s: %s", path, f"not a regular file: {kind}")
            special[str(path)] = f"not a regular file: {kind} (skipped unopened)"
    found = assign_ids([x for x in unique if str(x) not in special], base)
    return Inputs(found.tasks, {**found.rejected, **special})


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists but is not a regular file (``"a FIFO (named pipe)"``, a
    socket, a device, a folder), from ``stat`` alone (opening a FIFO blocks until a writer comes);
    ``None`` for a regular file or a path that cannot be stat'ed (extraction says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for is_kind, kind in _SPECIAL_KINDS if is_kind(mode)), None)


def assign_ids(paths: list[Path], base: Path) -> Inputs:
    """Ids for ``paths``. A path whose id cannot be made is rejected with the reason (the run
    reports it as failed); paths whose ids collide (``A.mp4`` and ``A.MP4``) keep their
    extension in their ids."""
    ids: dict[Path, str] = {}
    rejected: dict[str, str] = {}

    def reject(path: Path, why: str) -> None:
        log.warning("cannot extract %s: %s", path, why)
        rejected[str(path)] = why

    for path in paths:
        try:
            ids[path] = video_id_for(path, base)
        except ValueError as e:
            reject(path, f"no usable video id: {e}")
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
                reject(path, f"its video id {full!r} is taken by another input")
                continue
            out[full] = VideoTask(full, path)
    return Inputs([out[k] for k in sorted(out)], rejected)


def glob_files(pattern: str, prefix: Path) -> list[Path]:
    """Files matching ``pattern`` (``glob`` rules: ``**`` spans folders, ``*`` does not match a
    leading dot), found by the same walk as a folder so both modes skip and warn alike."""
    want = list(Path(pattern).parts[len(prefix.parts) :])
    n = len(prefix.parts)
    depth = None if "**" in want else len(want) - 1  # folders below the prefix worth entering
    return [path for path in walk_files(prefix, depth) if _match(want, list(path.parts[n:]))]


def _match(want: list[str], parts: list[str]) -> bool:
    """Whether path ``parts`` match pattern ``want``, part by part, as ``glob`` would."""
    if not want:
        return not parts
    if want[0] == "**":  # zero or more folders, none of them hidden
        for i in range(len(parts) + 1):
            if i and parts[i - 1].startswith("."):
                return False
            if _match(want[1:], parts[i:]):
                return True
        return False
    if not parts or (parts[0].startswith(".") and not want[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], want[0]) and _match(want[1:], parts[1:])


def walk_files(top: Path, max_depth: int | None = None) -> list[Path]:
    """Files under ``top`` (at most ``max_depth`` folders down), following symlinked folders as
    a ``**`` glob does (each folder once, so a symlink loop ends) and warning about a folder it
    cannot read. FIFOs, sockets and devices are listed too (the caller rejects them, saying
    why); broken symlinks are not."""
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []
    base = len(Path(top).parts)

    def warn(e: OSError) -> None:
        log.warning("skipped %s: %s", e.filename, e.strerror)

    for dirpath, dirnames, filenames in os.walk(top, onerror=warn, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        if max_depth is not None and len(Path(dirpath).parts) - base >= max_depth:
            dirnames[:] = []
        out += [Path(dirpath, f) for f in filenames if os.path.exists(os.path.join(dirpath, f))]
    return out


def _list_lines(p: Path) -> list[str]:
    """The entries of list file ``p`` (none when ``p`` is not one)."""
    if not (p.suffix.lower() not in VIDEO_EXTENSIONS and p.is_file()):
        return []
    lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _remote_inputs(spec: str, root: str | None, opts: RemoteOptions) -> Inputs:
    """Inputs when ``videos=`` is on object storage or a list naming objects there."""
    suffix = Path(spec.rstrip("/")).suffix.lower() if is_url(spec) else ""
    if is_url(spec) and (not suffix or spec.endswith("/")):  # a folder: list it
        objects: dict[Path, RemoteObject | str] = {
            pseudo_path(o.url): o for o in list_objects(spec, VIDEO_EXTENSIONS, opts)
        }
        default_root = pseudo_path(spec.rstrip("/"))
    else:
        if is_url(spec) and suffix in VIDEO_EXTENSIONS:
            lines, parent = [spec], pseudo_path(spec).parent
        elif is_url(spec):  # a list file on storage
            lines = [ln.strip() for ln in read_text(spec, opts).splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith("#")]
            parent = pseudo_path(spec).parent
        else:
            lines, parent = _list_lines(Path(spec)), Path(spec).parent
        urls = list(dict.fromkeys(ln for ln in lines if is_url(ln)))
        objects = {pseudo_path(u): o for u, o in head_objects(urls, opts).items()}
        for ln in lines:
            if not is_url(ln):
                local = Path(ln) if os.path.isabs(ln) else parent / ln
                objects[Path(os.path.normpath(local))] = ""  # a local file
        parents = [os.path.abspath(x.parent) for x in objects]
        default_root = Path(os.path.commonpath(parents)) if parents else parent
    if not objects:
        raise ValueError(
            f"videos={spec!r} matched no videos (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    base = default_root
    if root:
        base = pseudo_path(root) if is_url(root) else Path(root).expanduser()
    rejected = {_name(p, o): o for p, o in objects.items() if isinstance(o, str) and o}
    found = assign_ids(
        sorted(p for p, o in objects.items() if not isinstance(o, str) or not o), base
    )
    tasks = []
    for t in found.tasks:
        obj = objects[t.path]
        tasks.append(
            replace(t, path=Path(obj.url), remote=obj) if isinstance(obj, RemoteObject) else t
        )
    for k, why in found.rejected.items():
        rejected[_name(Path(k), objects.get(Path(k)))] = why
    return Inputs(tasks, rejected)


def _name(path: Path, obj: RemoteObject | str | None) -> str:
    """How a rejected input is named: its URL, or its local path."""
    if isinstance(obj, RemoteObject):
        return obj.url
    parts = path.parts  # a pseudo path /<scheme>/<netloc>/<key>
    if isinstance(obj, str) and obj and len(parts) > 2:
        return f"{parts[1]}://{'/'.join(parts[2:])}"
    return str(path)


def _glob_prefix(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."

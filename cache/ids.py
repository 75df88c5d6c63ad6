"""Stable, path-safe video ids.

A video id is the video's path relative to the input root, without its extension, with ``/``
separators. Ids are used as keys in the index and never as file names, but they are still kept to a
conservative alphabet so that they can be used safely anywhere (file names, URLs, shell).
"""

from __future__ import annotations

import os.path
import re
from pathlib import Path, PurePosixPath

# Characters kept as they are; everything else is %XX-escaped (UTF-8 bytes), like a URL path.
_SAFE = re.compile(r"[A-Za-z0-9._\-]")
MAX_ID_CHARS = 512
MAX_PART_CHARS = 96  # a longer escaped name becomes a readable prefix plus a hash of the whole


def escape_part(part: str) -> str:
    """``part`` in the id alphabet (%XX-escaped UTF-8)."""
    if part in (".", ".."):  # a legal file name ("..mp4" has stem "."): escaped, not refused
        return part.replace(".", "%2E")
    out = []
    for ch in part:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def validate_video_id(video_id: str) -> str:
    """Return ``video_id`` if it is a safe id, else raise ``ValueError`` saying why.

    Safe means: non-empty, relative, no ``.``/``..``/empty components, only ``[A-Za-z0-9._-%/]``.
    """
    if not video_id or len(video_id) > MAX_ID_CHARS:
        raise ValueError(f"video id must have 1..{MAX_ID_CHARS} characters, got {video_id!r}")
    if video_id.startswith("/"):
        raise ValueError(f"video id must be relative, got {video_id!r}")
    for part in video_id.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"video id has an empty, '.' or '..' component: {video_id!r}")
        if not all(_SAFE.fullmatch(ch) or ch == "%" for ch in part):
            raise ValueError(f"video id has characters outside [A-Za-z0-9._-%/]: {video_id!r}")
    return video_id


def video_id_for(path: str | Path, root: str | Path) -> str:
    """Derive the id of ``path`` from its location under ``root``.

    The id is ``path`` relative to ``root``, extension removed, each component %-escaped. A path
    that is not under ``root`` (after resolving ``..`` and symlinked roots) is rejected, so an id
    can never point outside the tree it came from.
    """
    p = Path(path).absolute()
    r = Path(root).absolute()
    try:
        rel = PurePosixPath(Path(_normpath(p)).relative_to(_normpath(r)).as_posix())
    except ValueError:
        raise ValueError(f"video {str(path)!r} is not under the input root {str(root)!r}") from None
    parts = list(rel.parts)
    if not parts:
        raise ValueError(f"video path {str(path)!r} is the input root itself")
    stem = PurePosixPath(parts[-1]).stem or parts[-1]
    parts[-1] = stem
    return validate_video_id("/".join(_shorten(escape_part(part)) for part in parts))


def _shorten(part: str) -> str:
    """A stable short form of a long escaped name: its first characters and a hash of it."""
    if len(part) <= MAX_PART_CHARS:
        return part
    import hashlib

    digest = hashlib.sha256(part.encode()).hexdigest()[:16]
    head = part[: MAX_PART_CHARS - 18]
    cut = head.rfind("%", len(head) - 2)  # do not split a %XX escape
    return f"{head[:cut] if cut >= 0 else head}--{digest}"


def _normpath(p: Path) -> str:
    # Lexical normalisation (resolve ``..``) without following symlinks of the file itself.
    return os.path.normpath(str(p))

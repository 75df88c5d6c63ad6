"""Per-shard journals and the index built from them.

Each shard has one append-only JSON-lines journal, written only by that shard's writer; a video is
done only when its ``done`` line and the pieces that cover its frames are all committed. The
record kinds and the rules are specified in docs/cache.md.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cache.layout import journal_paths
from cache.layout import shard_of_journal as shard_of_journal  # also imported from here

log = logging.getLogger(__name__)


class Piece(NamedTuple):
    """A contiguous run of one video's frames inside one segment (a tuple: fast to build)."""

    shard: int
    segment: str
    segment_start: int
    video_start: int
    frames: int


@dataclass
class VideoEntry:
    """The resolved index entry of one video: its final record and where its frames are."""

    video_id: str
    shard: int
    record: dict[str, Any]
    pieces: list[Piece] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``done``, ``failed``, or ``damaged`` (its done attempt was marked damaged by
        ``job=verify``: nothing to read, the next extract redoes it)."""
        return str(self.record["status"])


@dataclass
class Partial:
    """Frames of an unfinished attempt that are already committed (used to resume mid-video)."""

    video_id: str
    shard: int
    attempt: str
    pieces: list[Piece]
    source: dict[str, Any] | None = None  # the source's fingerprint when the attempt began

    @property
    def frames(self) -> int:
        return _contiguous_frames(self.pieces)


@dataclass
class Index:
    videos: dict[str, VideoEntry]
    partial: dict[str, Partial]
    runs: dict[str, dict[str, Any]]
    problems: list[str]
    # every journalled segment record by (shard, segment name): frames, shape, checksums
    segments: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)  # journal lines skipped as damaged


def read_journal(path: Path, damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """Read one journal, ignoring a torn (unterminated or unparsable) final line.

    A damaged line elsewhere costs that line only: it is skipped with a warning and named in
    ``damaged`` (when given) as ``"PATH line N: ..."``; the next writer of the shard drops it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    # What follows the last newline is either empty or a torn write.
    body = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace")
    try:  # all lines at once: several times faster than a json.loads per line
        records: list[dict[str, Any]] = json.loads("[" + body[:-1].replace("\n", ",") + "]")
        if len(records) == body.count("\n") and all(_is_record(r) for r in records):
            return records
    except json.JSONDecodeError:
        pass  # a blank or damaged line: go line by line to skip blanks and name the damage
    records = []
    for number, line in enumerate(body.split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not _is_record(record):
            msg = f"{path} line {number}: damaged record skipped: {line[:120]!r}"
            warnings.warn(msg, JournalDamageWarning, stacklevel=2)
            if damaged is not None:
                damaged.append(msg)
            continue
        records.append(record)
    return records


class JournalDamageWarning(UserWarning):
    """A journal line that is not a record was skipped (it costs only what it described)."""


def _is_record(r: object) -> bool:
    return isinstance(r, dict)


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records all-or-nothing: one write, then fsync. If the write fails part-way (a full
    disk), the journal is cut back to its size before, so no half line stays to glue onto the
    next append; a kill mid-write leaves at most a torn tail, cut by the next writer."""
    if not records:
        return
    payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(payload)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            os.fsync(fd)
            raise
    finally:
        os.close(fd)


def repair_tail(path: Path) -> None:
    """Cut a torn final line off a journal before appending to it."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


def _by_start(p: Piece) -> int:
    return p.video_start


def _contiguous_frames(pieces: list[Piece], *, ordered: bool = False) -> int:
    """Frames covered from 0 without a gap by ``pieces`` (``ordered``: already by video_start)."""
    end = 0
    for p in pieces if ordered else sorted(pieces, key=_by_start):
        if p.video_start != end:
            break
        end += p.frames
    return end


class _Collected(NamedTuple):
    """Journal records of every shard, grouped for resolving (see ``build_index``)."""

    runs: dict[str, dict[str, Any]]
    pieces: dict[tuple[str, str], list[Piece]]  # by (video_id, attempt)
    piece_shard: dict[tuple[str, str], int]
    finals: dict[str, list[tuple[int, dict[str, Any]]]]  # video_id -> [(shard, video line)]
    problems: list[str]
    segments: dict[tuple[int, str], dict[str, Any]]
    sources: dict[tuple[str, str], dict[str, Any]]  # by (video_id, attempt)
    damaged: dict[tuple[str, str], dict[str, Any]]  # (video_id, attempt) -> its damage mark


def _collect(journals: dict[int, list[dict[str, Any]]]) -> _Collected:
    """Group every shard's records by kind; a piece in an undeclared segment is a problem."""
    c = _Collected({}, defaultdict(list), {}, defaultdict(list), [], {}, {}, {})
    for shard, records in sorted(journals.items()):
        for r in records:
            if r.get("kind") == "segment" and isinstance(r.get("segment"), str):
                c.segments[(shard, r["segment"])] = r
        seen: set[tuple[str, int]] = set()
        for r in records:
            try:
                _collect_one(c, shard, r, seen)
            except (KeyError, TypeError, ValueError):
                c.problems.append(f"shard {shard}: damaged {r.get('kind')} record skipped")
    return c


def _collect_one(c: _Collected, shard: int, r: dict[str, Any], seen: set[tuple[str, int]]) -> None:
    kind = r["kind"]
    if kind == "run":
        c.runs[r["run_id"]] = r
    elif kind == "piece":
        if (shard, r["segment"]) not in c.segments:
            c.problems.append(f"shard {shard}: piece in undeclared segment {r['segment']}")
            return
        if (r["segment"], r["segment_start"]) in seen:
            return  # journalled twice (a segment adopted again): the same rows
        seen.add((r["segment"], r["segment_start"]))
        key = (r["video_id"], r["attempt"])
        c.pieces[key].append(
            Piece(shard, r["segment"], int(r["segment_start"]), int(r["video_start"]),
                  int(r["frames"]))
        )  # fmt: skip
        c.piece_shard[key] = shard
    elif kind == "damaged":
        c.damaged[(str(r["video_id"]), str(r["attempt"]))] = r
    elif kind == "start":
        c.sources[(r["video_id"], r["attempt"])] = r["source"]
    elif kind == "video":
        str(r["video_id"]), str(r["status"]), float(r["committed_at"])  # damaged if missing
        c.finals[r["video_id"]].append((shard, r))


def _choose(
    video_id: str,
    candidates: list[tuple[int, dict[str, Any]]],
    pieces: dict[tuple[str, str], list[Piece]],
    problems: list[str],
    damaged: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> VideoEntry | None:
    """The newest done record whose frames are all committed and that is not marked damaged,
    else the newest of a damaged done record (status ``damaged``) and a failure."""
    damaged = damaged or {}
    if len(candidates) > 1:
        candidates.sort(key=lambda c: c[1]["committed_at"], reverse=True)
    marked: tuple[int, dict[str, Any], dict[str, Any]] | None = None
    for shard, r in candidates:
        if r["status"] != "done":
            continue
        mark = damaged.get((video_id, r["attempt"]))
        if mark is not None:
            marked = marked or (shard, r, mark)
            continue
        ps = pieces.get((video_id, r["attempt"]), [])
        if len(ps) > 1:
            ps.sort(key=_by_start)
        if _contiguous_frames(ps, ordered=True) == r["num_frames"] == sum(p.frames for p in ps):
            return VideoEntry(video_id, shard, r, ps)
        problems.append(f"{video_id}: done record without its frames (attempt {r['attempt']})")
    failed = [c for c in candidates if c[1]["status"] == "failed"]
    newest_failed = max(failed, key=lambda c: c[1]["committed_at"]) if failed else None
    if marked is not None and (
        newest_failed is None or marked[1]["committed_at"] >= newest_failed[1]["committed_at"]
    ):
        shard, r, mark = marked
        why = mark.get("why") or "marked damaged"
        record = {**r, "status": "damaged", "error": f"damaged: {why}", "damaged": mark}
        return VideoEntry(video_id, shard, record, [])
    if newest_failed is not None:
        shard, r = newest_failed
        return VideoEntry(video_id, shard, r, [])
    return None


def build_index(journals: dict[int, list[dict[str, Any]]]) -> Index:
    """Resolve journal records of every shard into one index (rules in docs/cache.md)."""
    c = _collect(journals)
    videos: dict[str, VideoEntry] = {}
    finished_attempts = set()
    for video_id, candidates in c.finals.items():
        for _, r in candidates:
            finished_attempts.add((video_id, r["attempt"]))
        chosen = _choose(video_id, candidates, c.pieces, c.problems, c.damaged)
        if chosen is not None:
            videos[video_id] = chosen

    partial: dict[str, Partial] = {}
    for (video_id, attempt), ps in c.pieces.items():
        if (video_id, attempt) in finished_attempts or (video_id, attempt) in c.damaged:
            continue  # a damaged attempt is not resumed from: its video restarts
        entry = videos.get(video_id)
        if entry is not None and entry.status == "done":
            continue
        shard = c.piece_shard[(video_id, attempt)]
        cand = Partial(video_id, shard, attempt, ps, c.sources.get((video_id, attempt)))
        if video_id not in partial or cand.frames > partial[video_id].frames:
            partial[video_id] = cand
    return Index(videos, partial, c.runs, c.problems, c.segments)


def load_index(root: str | Path) -> Index:
    """Read every shard journal under ``root/index`` and resolve them into one index (on
    object storage: each shard's latest checkpoint and the records after it, one list and
    concurrent reads)."""
    from cache.storage import is_url

    # Building millions of small dicts and tuples would trigger repeated full garbage collections
    # (none of them cyclic garbage): pausing the collector makes this about 2x faster.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if is_url(root):
            from cache.objectlog import read_records
            from cache.storage import open_storage

            return build_index(read_records(open_storage(root)))
        root = Path(root)
        damaged: list[str] = []
        with warnings.catch_warnings():  # named once in the index, not warned per reader
            warnings.simplefilter("ignore", JournalDamageWarning)
            journals = {shard: read_journal(p, damaged) for shard, p in journal_paths(root).items()}
        index = build_index(journals)
        index.damaged = damaged
        index.problems[:0] = damaged
        if damaged:
            log.warning("%d damaged journal line(s) skipped: %s", len(damaged), damaged[0])
        return index
    finally:
        if was_enabled:
            gc.enable()

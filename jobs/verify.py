"""``job=verify``: check every committed segment and every done video against the index.

What it detects (each backed by a test in tests/jobs/test_verify.py): a missing chunk or shard
file, a flipped bit (crc32c per chunk and per segment), a file swapped with another, array
metadata that differs from the index, segment attributes that differ from the journal, a
damaged or torn journal line, a lost journal, segments no journal names (and of those, ones of
another layout), stray entries in ``shards/``, videos marked damaged and not yet redone, and a
source file changed since its video was extracted. Nothing is ever deleted that a journal line
or a segment's attributes say was committed (docs/cache.md).
"""

from __future__ import annotations

import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cache import (
    JournalDamageWarning,
    ShardLockedError,
    adopt_segments,
    check_segment,
    fingerprint,
    holding_shard,
    is_url,
    journal_path,
    journal_paths,
    layout_mismatch,
    mark_damaged,
    open_storage,
    open_store,
    piece_mismatches,
    read_journal,
    segment_attrs,
    shard_dir,
    shard_folders,
    shard_locked,
    stray_entries,
    unindexed_segments,
)
from cache.objectlog import collect_garbage, read_records, segment_names
from cache.reader import check_object_segment
from extract.remote import remote_changed
from jobs.extract import expected_frames

NOT_CHECKSUMMED = "not checksummed"


def _check_video(s: Any, vid: str, window_frames: int) -> list[str]:
    """Frame count = index = sampling rule, readable, finite values, pts non-decreasing."""
    info = s.info(vid)
    issues: list[str] = []
    n = int(info["num_frames"])
    try:
        if "begin_seconds" in info:
            want = expected_frames(info)
            if want != n:
                issues.append(f"index has {n} frames, the sampling rule gives {want}")
        got, last_pts = 0, -np.inf
        for lo in range(0, n, window_frames):
            toks, pts = s.read(vid, lo, lo + window_frames)
            got += len(toks)
            if len(pts) != len(toks):
                issues.append(f"{len(toks)} token rows but {len(pts)} pts at frame {lo}")
            if not np.isfinite(toks).all():
                issues.append(f"non-finite token values in frames {lo}..{lo + len(toks)}")
            if len(pts) and (pts[0] < last_pts or np.any(np.diff(pts) < 0)):
                issues.append(f"pts_seconds decrease near frame {lo}")
            last_pts = pts[-1] if len(pts) else last_pts
        if got != n:
            issues.append(f"read {got} frames, index says {n}")
    except Exception as e:  # noqa: BLE001 - any read error is a finding, not a crash
        issues.append(f"unreadable: {type(e).__name__}: {e}")
    return issues


def source_changed(record: dict[str, Any], *, content: bool = True) -> str | None:
    """Why a done video's source differs from when it was extracted (None: same or unknown).
    ``content=False`` compares size and mtime only (a stat, no read: for ``job=status``)."""
    old, path = record.get("source"), record.get("source_path")
    if isinstance(old, dict) and "etag" in old:  # on object storage: asked there (not by status)
        return remote_changed(old) if content else None
    if not old or not path or not Path(path).is_file():
        return None
    new = fingerprint(path, content=content)
    diff = [k for k in new if k in old and old[k] != new[k]]
    return f"source changed since extraction ({', '.join(diff)})" if diff else None


def _journal_pieces(root: Path) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Every piece line of every journal, by (shard, segment)."""
    out: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    with warnings.catch_warnings():  # damaged lines are named once, by the index
        warnings.simplefilter("ignore", JournalDamageWarning)
        for shard, path in journal_paths(root).items():
            for r in read_journal(path):
                if r.get("kind") == "piece" and isinstance(r.get("segment"), str):
                    out[(shard, r["segment"])].append(r)
    return out


def _journalled(root: Path, shard: int) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JournalDamageWarning)
        records = read_journal(journal_path(root, shard))
    return {r["segment"] for r in records if r.get("kind") == "segment" and "segment" in r}


def _unindexed(s: Any) -> list[str]:
    """Segment folders no journal names, each with what it is. Shards with a live writer are
    left out (its commit renames a segment into place just before journalling it), and the
    journals are read again after listing, so a running extract shows no false problems."""
    found = unindexed_segments(s.root, set(s.index.segments))
    live = {shard for shard in {sh for sh, _ in found} if shard_locked(s.root, shard)}
    now = {shard: _journalled(s.root, shard) for shard in {sh for sh, _ in found} - live}
    out = []
    for shard, seg in found:
        if shard in live or seg in now[shard]:
            continue
        path = shard_dir(s.root, shard) / seg
        attrs = segment_attrs(path)
        if attrs is None:
            what = (
                "segment folder no journal names, without readable attributes: what it holds "
                "is unknown (job=verify job.rebuild_index=true deletes it only if it holds no "
                "data; else restore its zarr.json or move it out)"
            )
        elif why := layout_mismatch(path, attrs, s.attrs):
            what = (
                f"segment of another layout ({why}): not this store's, job.rebuild_index=true "
                "refuses it; move it out of the store"
            )
        else:
            what = (
                "segment no journal names (lost or damaged journal; "
                "job=verify job.rebuild_index=true re-indexes it)"
            )
        out.append(f"shard {shard} {seg}: {what}")
    return out


def verify_store(
    store: str | Path, *, window_frames: int = 1024, segments: bool = True
) -> dict[str, Any]:
    """Every committed segment (files, metadata, attributes against the journal, checksum) and
    every done video (frames, values, pts, source) checked; ``problems`` by video id
    (``<index>`` for the store). Damage in a segment that no index entry reads any more (its
    videos were redone) is a ``note``, not a problem: the segment is kept."""
    s = open_store(store)
    problems: dict[str, list[str]] = defaultdict(list)
    notes: list[str] = []
    unchecked = 0
    if segments:
        users: dict[tuple[int, str], set[str]] = defaultdict(set)
        for vid, e in s.index.videos.items():
            for p in e.pieces if e.status == "done" else []:
                users[(p.shard, p.segment)].add(vid)
        for vid, part in s.index.partial.items():  # a resume would build on these frames
            for p in part.pieces:
                users[(p.shard, p.segment)].add(vid)
        root = s.root  # a folder, or a URL (object storage: records are whole and immutable)
        pieces = {} if isinstance(root, str) else _journal_pieces(root)
        for (shard, seg), rec in sorted(s.index.segments.items()):
            if isinstance(root, str):
                issues = check_object_segment(root, shard, seg, rec, s.layout)
                for vid in sorted(users[(shard, seg)]):
                    problems[vid] += [f"shard {shard} {seg}: {i}" for i in issues]
                if not users[(shard, seg)]:
                    notes += [f"shard {shard} {seg}: {i} (no indexed video reads this)"
                              for i in issues]  # fmt: skip
                continue
            path = shard_dir(root, shard) / seg
            issues = []
            for issue in check_segment(path, rec, s.layout):
                if issue.startswith(NOT_CHECKSUMMED):
                    unchecked += 1
                else:
                    issues.append(issue)
            where, readers = f"shard {shard} {seg}", users[(shard, seg)]
            for vid in sorted(readers):
                problems[vid] += [f"{where}: {i}" for i in issues]
            unread = [] if readers else issues
            for vid, why in piece_mismatches(path, pieces.get((shard, seg), [])).items():
                if vid in readers:
                    problems[vid].append(f"{where}: {why}")
                else:
                    unread.append(why)
            notes += [
                f"{where}: {i} (no indexed video reads this: its videos were redone or "
                "failed; the folder is kept)"
                for i in unread
            ]
    checked = frames = 0
    for vid in s.video_ids(status="done"):
        issues = _check_video(s, vid, window_frames)
        changed = source_changed(s.index.videos[vid].record)
        problems[vid] += issues + ([changed] if changed else [])
        checked += 1
        frames += int(s.index.videos[vid].record["num_frames"])
    for vid in s.video_ids(status="damaged"):
        why = s.index.videos[vid].record["damaged"].get("why")
        problems[vid].append(f"marked damaged ({why}); the next job=extract redoes it")
    problems["<index>"] += s.index.problems
    if isinstance(s.root, str):
        notes += _unreferenced(s)
    else:
        problems["<index>"] += _unindexed(s)
    for stray in [] if isinstance(s.root, str) else stray_entries(s.root):
        top = stray.parent.name == "shards"
        problems["<index>"].append(
            f"stray {stray.relative_to(s.root)}: not a {'shard' if top else 'segment'} (readers "
            f"and writers ignore what is in {'shards/' if top else 'a shard folder'} under "
            "another name); move it out of the store"
        )
    return {
        "store": s.root if isinstance(s.root, str) else str(Path(store).absolute()),
        "checked": checked,
        "frames": frames,
        "unchecksummed_segments": unchecked,
        "problems": {k: v for k, v in problems.items() if v},
        "notes": notes,
    }


def _unreferenced(s: Any) -> list[str]:
    """Segments on object storage that no record names: a writer stopped or fenced between
    writing one and committing it. Never read; the shard's next writer (or
    job.rebuild_index=true) removes them."""
    storage = open_storage(s.root)
    out = []
    for key in sorted(
        {"/".join(k.split("/")[:3]) for k in storage.list("shards/") if k.count("/") >= 3}
    ):
        _, shard, seg = key.split("/")
        if seg.startswith("seg-") and (int(shard), seg) not in s.index.segments:
            out.append(
                f"shard {int(shard)} {seg}: written but never committed (no record names it): "
                "ignored; its shard's next writer, or job.rebuild_index=true, removes it"
            )
    return sorted(set(out))


def mark_damaged_videos(
    store: str | Path, problems: dict[str, list[str]]
) -> tuple[list[str], list[int]]:
    """Journal the done (and in-progress) videos with problems as damaged, so the next
    extract redoes them; returns the marked video ids and the shards left unmarked because a
    writer holds them."""
    s = open_store(store)
    by_shard: dict[int, dict[str, str]] = defaultdict(dict)
    for vid in problems:
        e = s.index.videos.get(vid)
        part = s.index.partial.get(vid)
        if e is not None and e.status == "done":
            by_shard[e.shard][vid] = str(e.record["attempt"])
        elif part is not None:
            by_shard[part.shard][vid] = part.attempt
    marked: list[str] = []
    busy: list[int] = []
    for shard, attempts in sorted(by_shard.items()):
        try:
            mark_damaged(s.root, shard, attempts, {v: problems[v][0] for v in attempts})
        except ShardLockedError:
            busy.append(shard)
            continue
        marked += attempts
    return sorted(marked), busy


def rebuild_index(store: str | Path) -> list[str]:
    """Re-index every shard from its segments' attributes (each shard's lock held); a stray
    entry in ``shards/`` is named and left alone, a shard with a live writer is skipped (the
    writer re-indexed it when it started). On object storage, journal records are immutable and
    never torn: what is to do is removing segments no record names, under each shard's lease."""
    if is_url(store):
        return _collect_object_garbage(str(store))
    root = Path(store)
    folders, strays = shard_folders(root)
    messages = [
        f"ignored {p.relative_to(root)}: not a shard folder (a stray: move it out of the store)"
        for p in strays
    ]
    for shard in folders:
        try:
            with holding_shard(root, shard):
                messages += adopt_segments(root, shard)
        except ShardLockedError:
            messages.append(f"shard {shard}: skipped, a writer is running on it")
    return messages


def _collect_object_garbage(url: str) -> list[str]:
    storage = open_storage(url)
    journals = read_records(storage)
    shards = {int(k.split("/")[1]) for k in storage.list("shards/") if k.count("/") >= 3}
    messages: list[str] = []
    for shard in sorted(shards | set(journals)):
        try:
            with holding_shard(url, shard):
                records = read_records(storage).get(shard, [])
                messages += collect_garbage(storage, shard, segment_names(records))
        except ShardLockedError:
            messages.append(f"shard {shard}: skipped, a writer is running on it")
    return messages


class VerifyJob:
    """``python run.py job=verify store=...``; exit status 1 if any problem was found.

    ``rebuild_index``: first re-index segments that no journal names (and drop damaged journal
    lines); ``mark_damaged``: journal the videos found damaged so the next extract redoes them.
    """

    def __init__(
        self,
        *,
        store: str,
        window_frames: int = 1024,
        mark_damaged: bool = False,
        rebuild_index: bool = False,
    ) -> None:
        self.store = store
        self.window_frames = window_frames
        self.mark_damaged = mark_damaged
        self.rebuild_index = rebuild_index

    def run(self) -> int:
        if self.rebuild_index:
            for m in rebuild_index(self.store) or ["nothing to re-index"]:
                print(f"verify: rebuild: {m}")
        r = verify_store(self.store, window_frames=self.window_frames)
        print(f"verify: {r['checked']} done videos, {r['frames']} frames checked in {r['store']}")
        if r["unchecksummed_segments"]:
            print(
                f"verify: {r['unchecksummed_segments']} segment(s) not checksummed (written "
                "before checksums): read and checked, but bit flips there cannot be detected"
            )
        for vid, issues in sorted(r["problems"].items()):
            for issue in issues:
                print(f"  PROBLEM {vid}: {issue}")
        for note in r["notes"]:
            print(f"  NOTE {note}")
        print("verify: OK" if not r["problems"] else f"verify: {len(r['problems'])} with problems")
        if self.mark_damaged and r["problems"]:
            marked, busy = mark_damaged_videos(self.store, r["problems"])
            if marked:
                print(
                    f"verify: marked {len(marked)} damaged video(s); the next job=extract "
                    f"redoes exactly those: {', '.join(marked)}"
                )
            if busy:
                print(
                    f"verify: shard(s) {', '.join(map(str, busy))} are being written: their "
                    "damaged videos were not marked; rerun job=verify job.mark_damaged=true "
                    "once the writer has ended"
                )
        sys.stdout.flush()
        return 1 if r["problems"] else 0

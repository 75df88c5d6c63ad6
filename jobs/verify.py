"""``job=verify``: check every committed segment and every done video against the index.

What it detects (each backed by a test in tests/jobs/test_verify.py): a missing chunk or shard
file, a flipped bit (crc32c per chunk and per segment), array metadata that differs from the
index, a damaged or torn journal line, a lost journal, segments no journal names, and a source
file changed since its video was extracted.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cache import (
    adopt_segments,
    check_segment,
    fingerprint,
    holding_shard,
    mark_damaged,
    open_store,
    shard_dir,
    unindexed_segments,
)
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
    if not old or not path or not Path(path).is_file():
        return None
    new = fingerprint(path, content=content)
    diff = [k for k in new if k in old and old[k] != new[k]]
    return f"source changed since extraction ({', '.join(diff)})" if diff else None


def verify_store(
    store: str | Path, *, window_frames: int = 1024, segments: bool = True
) -> dict[str, Any]:
    """Every committed segment (files, metadata, checksum) and every done video (frames,
    values, pts, source) checked; ``problems`` by video id (``<index>`` for the store)."""
    s = open_store(store)
    problems: dict[str, list[str]] = defaultdict(list)
    unchecked = 0
    if segments:
        users = defaultdict(set)
        for vid in s.video_ids(status="done"):
            for p in s.index.videos[vid].pieces:
                users[(p.shard, p.segment)].add(vid)
        for (shard, seg), rec in sorted(s.index.segments.items()):
            for issue in check_segment(shard_dir(s.root, shard) / seg, rec, s.layout):
                if issue.startswith(NOT_CHECKSUMMED):
                    unchecked += 1
                    continue
                for vid in sorted(users[(shard, seg)]) or ["<index>"]:
                    problems[vid].append(f"shard {shard} {seg}: {issue}")
    checked = frames = 0
    for vid in s.video_ids(status="done"):
        issues = _check_video(s, vid, window_frames)
        changed = source_changed(s.index.videos[vid].record)
        problems[vid] += issues + ([changed] if changed else [])
        checked += 1
        frames += int(s.index.videos[vid].record["num_frames"])
    problems["<index>"] += s.index.problems
    for shard, seg in unindexed_segments(s.root, set(s.index.segments)):
        problems["<index>"].append(
            f"shard {shard} {seg}: segment no journal names (lost or damaged journal; "
            "job=verify job.rebuild_index=true re-indexes it)"
        )
    return {
        "store": str(Path(store).absolute()),
        "checked": checked,
        "frames": frames,
        "unchecksummed_segments": unchecked,
        "problems": {k: v for k, v in problems.items() if v},
    }


def mark_damaged_videos(store: str | Path, problems: dict[str, list[str]]) -> list[str]:
    """Journal the done videos with problems as damaged, so the next extract redoes them."""
    s = open_store(store)
    by_shard: dict[int, dict[str, str]] = defaultdict(dict)
    for vid in problems:
        e = s.index.videos.get(vid)
        if e is not None and e.status == "done":
            by_shard[e.shard][vid] = str(e.record["attempt"])
    for shard, attempts in by_shard.items():
        mark_damaged(s.root, shard, attempts, "job=verify found problems")
    return sorted(v for a in by_shard.values() for v in a)


def rebuild_index(store: str | Path) -> list[str]:
    """Re-index every shard from its segments' attributes (each shard's lock held)."""
    root = Path(store)
    messages = []
    for folder in sorted((root / "shards").glob("[0-9]*")):
        shard = int(folder.name)
        with holding_shard(root, shard):
            messages += adopt_segments(root, shard)
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
        print("verify: OK" if not r["problems"] else f"verify: {len(r['problems'])} with problems")
        if self.mark_damaged and r["problems"]:
            marked = mark_damaged_videos(self.store, r["problems"])
            print(
                f"verify: marked {len(marked)} damaged video(s); the next job=extract redoes "
                f"exactly those: {', '.join(marked)}"
            )
        sys.stdout.flush()
        return 1 if r["problems"] else 0

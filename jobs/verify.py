"""``job=verify``: re-read every done video and check it against its index record."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cache import open_store
from jobs.extract import expected_frames


def verify_store(store: str | Path, *, window_frames: int = 1024) -> dict[str, Any]:
    """Check each done video: readable, frame count = index = sampling rule, finite values,
    pts non-decreasing. Reads in windows so memory stays bounded on long videos."""
    s = open_store(store)
    problems: dict[str, list[str]] = {}
    checked = frames = 0
    for vid in s.video_ids(status="done"):
        info = s.info(vid)
        issues: list[str] = []
        n = int(info["num_frames"])
        try:
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
        checked += 1
        frames += n
        if issues:
            problems[vid] = issues
    for p in s.index.problems:
        problems.setdefault("<index>", []).append(p)
    return {
        "store": str(Path(store).absolute()),
        "checked": checked,
        "frames": frames,
        "problems": problems,
    }


class VerifyJob:
    """``python run.py job=verify store=...``; exit status 1 if any problem was found."""

    def __init__(self, *, store: str, window_frames: int = 1024) -> None:
        self.store = store
        self.window_frames = window_frames

    def run(self) -> int:
        r = verify_store(self.store, window_frames=self.window_frames)
        print(f"verify: {r['checked']} done videos, {r['frames']} frames checked in {r['store']}")
        for vid, issues in sorted(r["problems"].items()):
            for issue in issues:
                print(f"  PROBLEM {vid}: {issue}")
        print("verify: OK" if not r["problems"] else f"verify: {len(r['problems'])} with problems")
        sys.stdout.flush()
        return 1 if r["problems"] else 0

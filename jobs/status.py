"""``job=status``: what a store holds, what failed and why, what is still in progress."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cache import (
    is_url,
    journal_paths,
    load_index,
    open_storage,
    read_journal,
    read_launches,
    read_store_attrs,
    shard_locked,
    store_exists,
)
from cache.objectlog import read_records


def store_status(store: str | Path) -> dict[str, Any]:
    """Counts per status and per shard, failures with reasons, videos mid-way; before the first
    writer started, only the launched shards and their SLURM states."""
    remote = is_url(store)
    root: str | Path = str(store).rstrip("/") if remote else Path(store)
    launches = read_launches(root)  # in launchers' folders, registered in the store
    if launches and not store_exists(root):
        return launched_status(root, launches)
    attrs = read_store_attrs(root)
    index = load_index(root)
    by_status = Counter(e.status for e in index.videos.values())
    frames = sum(int(e.record["num_frames"]) for e in index.videos.values() if e.status == "done")
    shards: dict[int, dict[str, Any]] = {}
    for e in index.videos.values():
        s = shards.setdefault(e.shard, {"done": 0, "failed": 0, "frames": 0})
        s[e.status] = s.get(e.status, 0) + 1  # done, failed or damaged
        s["frames"] += int(e.record.get("num_frames", 0)) if e.status == "done" else 0
    for shard, records in _journals(root).items():
        runs = [r for r in records if r.get("kind") == "run"]
        if runs:
            s = shards.setdefault(shard, {"done": 0, "failed": 0, "frames": 0})
            s["last_run_started_at"] = runs[-1]["started_at"]
            s["runs"] = len(runs)
        s = shards.setdefault(shard, {"done": 0, "failed": 0, "frames": 0})
        s["writing"] = shard_locked(root, shard)
    if launches:
        shards = _with_slurm_states(shards, launches)
    return {
        "store": root if isinstance(root, str) else str(root.absolute()),
        "frames_per_second": _current_rate(index, shards, launches),
        "rates": work_rates([e.record for e in index.videos.values() if e.status == "done"]),
        "features": attrs["features"],
        "videos": len(index.videos),
        "done": by_status.get("done", 0),
        "failed": by_status.get("failed", 0),
        "frames": frames,
        "in_progress": {v: p.frames for v, p in index.partial.items()},
        "failures": {
            v: str(e.record.get("error")) for v, e in index.videos.items() if e.status == "failed"
        },
        # Marked damaged by job=verify job.mark_damaged=true: not readable, redone next extract.
        "damaged": {
            v: str(e.record["damaged"].get("why"))
            for v, e in index.videos.items()
            if e.status == "damaged"
        },
        "shards": shards,
        "problems": index.problems,
        "source_changed": _sources_changed(index),
    }


def _sources_changed(index: Any) -> dict[str, str]:
    """Done videos whose source file changed since they were extracted."""
    from jobs.verify import source_changed

    out = {}
    for vid, e in index.videos.items():
        if e.status == "done" and (why := source_changed(e.record, content=False)):
            out[vid] = why
    return out


def work_rates(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Decode and encode frames/s from the seconds the pipeline recorded per video, and which
    of the two bounds the run (decode: all decoders together)."""
    timed = [r for r in records if "decode_seconds" in r and "encode_seconds" in r]
    if not timed:
        return None
    frames = sum(int(r["num_frames"]) for r in timed)
    dec = sum(float(r["decode_seconds"]) for r in timed)
    enc = sum(float(r["encode_seconds"]) for r in timed)
    workers = max(int(r.get("decode_workers", 1)) for r in timed)
    per_decoder = frames / dec if dec > 0 else None
    encode = frames / enc if enc > 0 else None
    bound = None
    if per_decoder and encode:
        bound = "decode" if per_decoder * workers < encode else "encode"
    return {"decode_fps_per_decoder": per_decoder and round(per_decoder, 2),
            "decode_workers": workers, "encode_fps": encode and round(encode, 2),
            "bound": bound}  # fmt: skip


def _with_slurm_states(
    shards: dict[int, dict[str, Any]], launches: list[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """``shards`` with each one's SLURM job and state, for the current layout's shards only (a
    rerun with fewer shards leaves the older, larger layout's out)."""
    from jobs.launch.slurm import slurm_states

    count = launches[-1].get("shard_count")
    if count is not None:
        shards = {k: v for k, v in shards.items() if k < int(count)}
    for shard, st in slurm_states(launches).items():
        shards.setdefault(shard, {"done": 0, "failed": 0, "frames": 0})["slurm"] = st
    return shards


def _current_rate(index: Any, shards: dict[int, dict[str, Any]], launches: list[Any]) -> Any:
    """Frames/s of the current run: from its start (its submission, else the earliest of the
    shards' latest starts) to its last commit; earlier runs' frames are not counted."""
    starts = [s["last_run_started_at"] for s in shards.values() if "last_run_started_at" in s]
    start = float(launches[-1]["submitted_at"]) if launches else min(starts, default=None)
    if start is None:
        return None
    done = [
        e.record
        for e in index.videos.values()
        if e.status == "done" and e.record["committed_at"] >= start
    ]
    elapsed = max((r["committed_at"] for r in done), default=start) - start
    frames = sum(int(r["num_frames"]) for r in done)
    return round(frames / elapsed, 2) if elapsed > 0 else None


def _journals(root: str | Path) -> dict[int, list[dict[str, Any]]]:
    """Every shard's journal records: its journal file, or its numbered records on object
    storage."""
    if isinstance(root, str):
        return read_records(open_storage(root))
    return {shard: read_journal(path) for shard, path in journal_paths(root).items()}


def launched_status(root: str | Path, launches: list[dict[str, Any]]) -> dict[str, Any]:
    """Status of a store whose tasks were submitted but none has started writing yet."""
    shards = _with_slurm_states({}, launches)
    return {
        "store": root if isinstance(root, str) else str(root.absolute()),
        "frames_per_second": None,
        "features": None,
        "videos": 0,
        "done": 0,
        "failed": 0,
        "frames": 0,
        "in_progress": {},
        "failures": {},
        "damaged": {},
        "shards": shards,
        "problems": [],
        "source_changed": {},
    }


def _damaged_count(s: dict[str, Any]) -> str:
    return f", {len(s['damaged'])} damaged" if s.get("damaged") else ""


def format_status(s: dict[str, Any]) -> str:
    f = s["features"]
    try:
        features = (
            f"features: {f['encoder']['type']} {f['weights']} @ {f['fps']} fps, "
            f"{f['tokens_per_frame']} x {f['dim']} {f['dtype']}"
            if f is not None
            else "features: (no task has started writing yet)"
        )
    except (KeyError, TypeError):  # a store made by other code: its features as recorded
        features = f"features: {json.dumps(f, default=str)}"
    lines = [
        f"store: {s['store']}",
        features,
        f"videos: {s['videos']} indexed: {s['done']} done, {s['failed']} failed"
        f"{_damaged_count(s)}; "
        f"{s['frames']} frames ({s['frames_per_second']} frames/s from the current run's start "
        f"to its last commit); {len(s['in_progress'])} in progress",
    ]
    r = s.get("rates")
    if r:
        lines.append(
            f"rates: decode {r['decode_fps_per_decoder']} frames/s per decoder x "
            f"{r['decode_workers']} decoders, encode {r['encode_fps']} frames/s: "
            f"{r['bound']}-bound"
        )
    now = time.time()
    for shard, st in sorted(s["shards"].items()):
        age = (
            f", last run {now - st['last_run_started_at']:.0f} s ago"
            if "last_run_started_at" in st
            else ""
        )
        state = "writing" if st.get("writing") else "idle"
        if "slurm" in st:
            sl = st["slurm"]
            why = f" ({sl['reason']})" if sl.get("reason") not in (None, "", "None") else ""
            state += f", SLURM job {sl['job_id']} {sl['state']}{why}"
        damaged = f", {st['damaged']} damaged" if st.get("damaged") else ""
        lines.append(
            f"  shard {shard:5d}: {st['done']} done, {st['failed']} failed{damaged}, "
            f"{st['frames']} frames, {state}{age}"
        )
    for vid, frames in sorted(s["in_progress"].items()):
        lines.append(f"  IN PROGRESS {vid}: {frames} frames committed")
    for vid, why in sorted(s["failures"].items()):
        lines.append(f"  FAILED {vid}: {why}")
    for vid, why in sorted(s.get("damaged", {}).items()):
        lines.append(f"  DAMAGED {vid}: {why} (not readable; the next job=extract redoes it)")
    for vid, why in sorted(s.get("source_changed", {}).items()):
        lines.append(f"  SOURCE CHANGED {vid}: {why} (its features are of the old file)")
    for p in s["problems"]:
        lines.append(f"  PROBLEM {p}")
    return "\n".join(lines)


class StatusJob:
    """``python run.py job=status store=...`` (``json=true`` prints machine-readable JSON);
    exit status 1 if any video failed, is marked damaged, or has a changed source, or the
    index has problems."""

    def __init__(self, *, store: str, json: bool = False) -> None:
        self.store = store
        self.as_json = json

    def run(self) -> int:
        s = store_status(self.store)
        print(json.dumps(s, indent=1, default=str) if self.as_json else format_status(s))
        return 1 if s["failed"] or s["problems"] or s["source_changed"] or s["damaged"] else 0

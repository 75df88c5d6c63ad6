"""Which videos a shard extracts, and in what order: balanced by duration, longest first.

A run over many GPUs ends when its slowest task's last video ends. Shards therefore get equal
total duration (not equal counts), and each task starts its longest videos first, so that what
is left at the end is short, or is one long video that its idle decoders split into pieces
(``extract.pipeline``). Durations come from the files' headers (no decoding); the assignment is a
pure function of the input list (ids, durations), so a rerun gives every shard the same videos.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Literal

from extract.frames import stream_duration
from extract.pipeline import VideoTask

Assignment = Literal["duration", "count"]
HEADER_THREADS = 8  # header reads wait on the file system (a network one, on a cluster)


def with_durations(tasks: Sequence[VideoTask]) -> list[VideoTask]:
    """``tasks`` with ``duration_seconds`` read from each file's header where it is missing
    (``None`` stays for a file that cannot be opened, its decoder says why later, and for a
    video on object storage)."""
    # A video on object storage has no local header before its download: its duration stays
    # unknown (counted as 0 when balancing).
    missing = [t for t in tasks if t.duration_seconds is None and t.remote is None]
    if not missing:
        return list(tasks)
    with ThreadPoolExecutor(min(HEADER_THREADS, len(missing))) as ex:
        found = dict(zip(missing, ex.map(lambda t: stream_duration(t.path), missing), strict=True))
    return [replace(t, duration_seconds=found[t]) if t in found else t for t in tasks]


def assignment_of(videos: Sequence[VideoTask]) -> Assignment:
    """``duration`` when the list carries durations, else ``count`` (the rule of stores made
    before shards were balanced, kept for them so their videos stay in their shards)."""
    return "duration" if any(v.duration_seconds is not None for v in videos) else "count"


def shard_videos(videos: Sequence[VideoTask], shard: int, shard_count: int) -> list[VideoTask]:
    """The videos of shard ``shard`` of ``shard_count``, in input order.

    With durations: longest first, each video to the shard with the least total duration so
    far (ties: fewer videos, then the lower index; an unknown duration counts as 0), which keeps
    every shard within one video of the mean. Without any: ``videos[shard::shard_count]``.
    """
    if assignment_of(videos) == "count":
        return list(videos[shard::shard_count])
    order = sorted(range(len(videos)), key=lambda i: (-(videos[i].duration_seconds or 0.0), i))
    heap = [(0.0, 0, s) for s in range(shard_count)]
    mine = []
    for i in order:
        total, count, s = heapq.heappop(heap)
        if s == shard:
            mine.append(i)
        heapq.heappush(heap, (total + (videos[i].duration_seconds or 0.0), count + 1, s))
    return [videos[i] for i in sorted(mine)]


def longest_first(tasks: Sequence[VideoTask]) -> list[VideoTask]:
    """``tasks`` in decreasing duration (ties and unknown durations keep their order)."""
    return sorted(tasks, key=lambda t: -(t.duration_seconds or 0.0))


__all__ = ["Assignment", "assignment_of", "longest_first", "shard_videos", "with_durations"]

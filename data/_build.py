"""Shared by the annotation readers: turns on the frame grid -> :class:`StreamSample` windows, and
the tally of skipped entries logged once per file."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from data.types import Role, StreamSample, TimedTurn


class SlotTurn(NamedTuple):
    """A turn on the frame grid, before it becomes a :class:`TimedTurn`."""

    slot: int  # frame-grid index: time = slot / fps
    role: Role
    text: str
    learn: bool


class Tally:
    """Counts of skipped or adjusted entries by reason; logged once per file on ``log``."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def report(self, path: Path, what: str, samples: list[StreamSample]) -> None:
        videos = len({s.video_id for s in samples})
        skipped = "; ".join(f"{n} {reason}" for reason, n in self.counts.most_common()) or "none"
        self.log.info(
            "%s: %d %s samples from %d videos; skipped or adjusted: %s",
            path,
            len(samples),
            what,
            videos,
            skipped,
        )


def add_turn(turns: list[SlotTurn], turn: SlotTurn, tally: Tally, replaced: str) -> None:
    """Append ``turn``; one on the same frame as the last replaces it (counted as ``replaced``)."""
    if turns and turns[-1].slot == turn.slot:
        turns[-1] = turn
        tally.add(replaced)
    else:
        turns.append(turn)


def windows(
    *,
    base_id: str,
    video_id: str,
    start_slot: int,
    stop_slot: int,
    turns: list[SlotTurn],
    instruction: str | None,
    window_frames: int,
    fps: float,
    system: str,
    tally: Tally,
    what: str,
) -> list[StreamSample]:
    """Split ``[start_slot, stop_slot)`` into consecutive windows of at most ``window_frames``;
    each gets ``instruction`` (a user turn) at its first frame and the turns inside it. Windows
    without a learned turn are dropped."""
    samples = []
    for w, lo in enumerate(range(start_slot, stop_slot, window_frames)):
        hi = min(lo + window_frames, stop_slot)
        inside = [t for t in turns if lo <= t.slot < hi]
        if not any(t.learn for t in inside):
            tally.add(f"{window_frames}-frame windows without any {what}")
            continue
        if instruction is not None:
            inside.insert(0, SlotTurn(lo, "user", instruction, False))
        samples.append(make_sample(f"{base_id}/{w}", video_id, lo, hi, inside, fps, system))
    return samples


def make_sample(
    sample_id: str,
    video_id: str,
    start_slot: int,
    stop_slot: int,
    turns: list[SlotTurn],
    fps: float,
    system: str,
) -> StreamSample:
    """The sample of frame-grid slots ``[start_slot, stop_slot)``, with times in seconds."""
    return StreamSample(
        sample_id=sample_id,
        video_id=video_id,
        start_seconds=start_slot / fps,
        stop_seconds=stop_slot / fps,
        turns=tuple(TimedTurn(t.role, t.text, t.slot / fps, t.learn) for t in turns),
        system=system,
    )

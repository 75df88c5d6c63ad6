"""COIN (``COIN.json``) -> step streams or task questions, after VideoLLM-online's ``data/coin/``.
Where the rules come from: docs/data.md."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from data._build import SlotTurn, Tally, add_turn, make_sample, windows
from data._parse import (
    as_list,
    as_number,
    as_object,
    as_string,
    at,
    check_choice,
    check_rate,
    describe,
    get_field,
    load_json,
)
from data.align import ceil_slot
from data.types import LIVE_SYSTEM_PROMPT, AnnotationError, StreamSample

log = logging.getLogger(__name__)

#: COIN task recognition question (``data/coin/benchmarks.py``, ``COINTask``).
COIN_TASK_QUESTION = (
    "What is the overall activity in the video? Format your answer concisely. No extra text output."
)
#: COIN step-stream instructions: our own wording (the reference has per-step clips, no stream).
COIN_STEP_INSTRUCTIONS: dict[str, str] = {
    "start": "Please tell me each step of the activity in real time, as soon as it begins.",
    "end": "Please tell me each step of the activity in real time, as soon as it is done.",
}
# The reference's fixes of two COIN step labels (``data/coin/coin.py``).
_COIN_STEP_FIXES = {
    "process (crop, fold) paper": "crop and fold paper",
    "try to press gun head, spray residual old grease": (
        "try to press gun head to spray residual old grease"
    ),
}
# The reference's acronym joins after splitting a COIN class at capitals (``data/coin/coin.py``).
_COIN_ACRONYMS = (
    (" t v", " TV"),
    (" c d", " CD"),
    ("s i m", "SIM"),
    ("n b a", "NBA"),
    ("s s d", "SSD"),
    ("r j45", "RJ45"),
)


def coin_task_text(cls: str) -> str:
    """A COIN class as the reference's answer: ``"PutOnHair"`` -> ``"Put on hair."``,
    ``"ReplaceSIMCard"`` -> ``"Replace sim card."`` (words split at capitals, the reference's
    acronym joins, then ``str.capitalize``, which lower-cases the acronyms again)."""
    out = "".join(f" {ch.lower()}" if ch.isupper() else ch for ch in cls)
    for letters, acronym in _COIN_ACRONYMS:
        out = out.replace(letters, acronym)
    return out.strip().capitalize() + "."


def coin_step_text(label: str) -> str:
    """A COIN step label as the reference's answer: its two label fixes, ``str.capitalize``, a
    final ``.`` (``"pour the water"`` -> ``"Pour the water."``)."""
    return _COIN_STEP_FIXES.get(label, label).capitalize() + "."


def read_coin(
    path: str | Path,
    *,
    subset: Literal["training", "testing"] | None,
    fps: float = 2.0,
    window_frames: int = 1200,
    mode: Literal["step", "task"] = "step",
    step_time: Literal["start", "end"] = "start",
    system: str = LIVE_SYSTEM_PROMPT,
) -> list[StreamSample]:
    """COIN videos (``COIN.json``: ``{"database": {video_id: {"class", "subset", "start", "end",
    "duration", "annotation": [{"segment": [start_s, end_s], "label"}]}}}``) as streams.

    The window is the video's ``[start, end]`` when both are given, else ``[0, duration]``:
    from the frame at ``ceil(start)`` to the frame at ``ceil(end)`` (as the reference's COIN
    benchmarks; with only ``duration``, to the last frame before it). ``subset`` keeps only
    ``"training"`` or ``"testing"`` videos (None keeps all).

    ``mode="step"``: a step stream, split into windows of at most ``window_frames`` frames, each
    opening with an unlearned :data:`COIN_STEP_INSTRUCTIONS` user turn (our wording). Every step
    label (:func:`coin_step_text`) is a learned assistant turn at the frame-grid ceil of the
    segment's start (``step_time="start"``, the default: the paper's COIN stream "should remind
    the user when an action starts") or end (``"end"``: the reference's step recognition answers
    after the segment's frames). Times are clamped into the window; a step on the same frame as
    the previous one replaces it.

    ``mode="task"``: :data:`COIN_TASK_QUESTION` (the reference's wording) as an unlearned user turn
    at the first frame, answered by the class (:func:`coin_task_text`) at the last frame. A video
    longer than ``window_frames`` keeps its first ``window_frames`` frames and is answered at the
    last of them (the reference would cut the answer off).
    """
    check_rate(fps, window_frames)
    check_choice("subset", subset, ("training", "testing", None))
    check_choice("mode", mode, ("step", "task"))
    check_choice("step_time", step_time, ("start", "end"))
    path = Path(path)
    top = as_object(load_json(path), path, "top level")
    database = as_object(get_field(top, "database", path, "top level"), path, "database")
    tally = Tally(log)
    samples: list[StreamSample] = []
    for video_id, entry in database.items():
        where = at("database", video_id)
        entry = as_object(entry, path, where)
        video_subset = as_string(get_field(entry, "subset", path, where), path, where + ".subset")
        if subset is not None and video_subset != subset:
            tally.add(f"videos not in subset {subset!r}")
            continue
        video = _CoinVideo(video_id, entry, path, where, *_coin_window(entry, path, where, fps))
        if mode == "task":
            samples.append(_task_sample(video, fps, window_frames, system, tally))
        else:
            samples += _step_samples(video, fps, window_frames, step_time, system, tally)
    tally.report(path, f"COIN {mode}", samples)
    return samples


@dataclass(frozen=True)
class _CoinVideo:
    """One ``database`` entry, where it is in the file, and its first and last frame-grid slot."""

    video_id: str
    entry: dict[str, Any]
    path: Path
    where: str
    start_slot: int
    last_slot: int


def _coin_window(entry: dict[str, Any], path: Path, where: str, fps: float) -> tuple[int, int]:
    """First and last frame-grid slot of a COIN video's window."""
    if "start" in entry and "end" in entry:
        start = as_number(entry["start"], path, where + ".start")
        end = as_number(entry["end"], path, where + ".end")
        if not 0 <= start <= end:
            raise AnnotationError(f"{path}: {where}: need 0 <= start <= end, got [{start}, {end}]")
        return ceil_slot(start, fps), ceil_slot(end, fps)
    if "duration" not in entry:
        raise AnnotationError(
            f"{path}: {where}: needs 'start' and 'end' or 'duration' for its window"
            f" (keys present: {sorted(entry)[:12]})"
        )
    duration = as_number(entry["duration"], path, where + ".duration")
    if not duration > 0:
        raise AnnotationError(f"{path}: {where}.duration: must be > 0, got {duration}")
    return 0, max(0, ceil_slot(duration, fps) - 1)


def _task_sample(
    video: _CoinVideo, fps: float, window_frames: int, system: str, tally: Tally
) -> StreamSample:
    """The task question at the first frame, answered by the class at the last one."""
    path, where = video.path, video.where
    cls = as_string(get_field(video.entry, "class", path, where), path, where + ".class")
    start_slot, answer_slot = video.start_slot, video.last_slot
    if answer_slot - start_slot + 1 > window_frames:
        answer_slot = start_slot + window_frames - 1
        tally.add(f"videos over {window_frames} frames answered at frame {window_frames}")
    turns = [
        SlotTurn(start_slot, "user", COIN_TASK_QUESTION, False),
        SlotTurn(answer_slot, "assistant", coin_task_text(cls), True),
    ]
    video_id = video.video_id
    return make_sample(
        f"{video_id}/task", video_id, start_slot, answer_slot + 1, turns, fps, system
    )


def _step_samples(
    video: _CoinVideo,
    fps: float,
    window_frames: int,
    step_time: Literal["start", "end"],
    system: str,
    tally: Tally,
) -> list[StreamSample]:
    """The step stream of one video, in windows of at most ``window_frames``."""
    steps = _steps(video, fps, step_time)
    turns: list[SlotTurn] = []
    for step in sorted(steps, key=lambda s: s.slot):
        add_turn(
            turns,
            step._replace(text=coin_step_text(step.text)),
            tally,
            "steps replaced by a later one on the same frame",
        )
    if not turns:
        tally.add("videos without steps")
        return []
    return windows(
        base_id=f"{video.video_id}/step",
        video_id=video.video_id,
        start_slot=video.start_slot,
        stop_slot=video.last_slot + 1,
        turns=turns,
        instruction=COIN_STEP_INSTRUCTIONS[step_time],
        window_frames=window_frames,
        fps=fps,
        system=system,
        tally=tally,
        what="step",
    )


def _steps(video: _CoinVideo, fps: float, step_time: str) -> list[SlotTurn]:
    """The video's step labels (raw) at the ceil of their segment's start or end, in the window."""
    path, where = video.path, video.where
    steps: list[SlotTurn] = []
    w_ann = where + ".annotation"
    for i, step in enumerate(
        as_list(get_field(video.entry, "annotation", path, where), path, w_ann)
    ):
        w = at(w_ann, i)
        step = as_object(step, path, w)
        segment = get_field(step, "segment", path, w)
        if not (isinstance(segment, list) and len(segment) == 2):
            raise AnnotationError(
                f"{path}: {w}.segment: expected [start_s, end_s], got {describe(segment)}"
            )
        seg_start, seg_end = (as_number(s, path, f"{w}.segment") for s in segment)
        if seg_start > seg_end:
            raise AnnotationError(f"{path}: {w}.segment: start > end in {segment}")
        label = as_string(get_field(step, "label", path, w), path, w + ".label")
        slot = ceil_slot(seg_start if step_time == "start" else seg_end, fps)
        slot = min(max(slot, video.start_slot), video.last_slot)
        steps.append(SlotTurn(slot, "assistant", label, True))
    return steps

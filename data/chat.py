"""VideoLLM-online's chat data (``data/ego4d/livechat.py``'s files) -> timed samples."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from data._build import SlotTurn, Tally, make_sample
from data._parse import (
    as_list,
    as_number,
    as_object,
    as_string,
    at,
    check_rate,
    describe,
    get_field,
    load_records,
)
from data.align import ceil_slot, floor_slot
from data.types import LIVE_SYSTEM_PROMPT, ROLES, AnnotationError, StreamSample

log = logging.getLogger(__name__)

#: Keys naming a chat sample's video, in the order they are looked up. VideoLLM-online's files
#: (``goalstep_livechat_trainval_filtered_21k.json``) use ``video_uid``; the others are common.
CHAT_VIDEO_KEYS = ("video_uid", "video_id", "video")


def read_chat(
    path: str | Path,
    *,
    fps: float = 2.0,
    window_frames: int = 1200,
    system: str = LIVE_SYSTEM_PROMPT,
) -> list[StreamSample]:
    """VideoLLM-online chat samples (a JSON list, or JSON lines for a ``.jsonl`` path).

    Each sample: the video under one of :data:`CHAT_VIDEO_KEYS`, a ``conversation`` of turns
    ``{"role": "user" | "assistant", "content": str, "time": seconds, "learn": bool (optional)}``
    and optional ``start``/``end`` seconds. ``learn`` defaults to True for assistant and False for
    user turns. User times are rounded down and assistant times up to the frame grid, and never
    before the previous turn's (the reference clamps the same way); an assistant turn on the same
    frame as a preceding assistant turn replaces it; a turn whose time goes backwards ends the
    conversation there (as in the reference); empty turns and turns outside ``[start, end]`` are
    skipped. The window runs from the frame at ``ceil(start)`` (default 0) to the frame at
    ``ceil(end)`` (default: the last turn's frame). A window over ``window_frames`` frames is cut
    to its first ``window_frames`` and the later turns dropped, as the reference does: later
    windows would start in the middle of a dialogue. Samples without a learned turn are skipped.
    Sample ids are ``"{video}/{index in the file}"``.
    """
    check_rate(fps, window_frames)
    path = Path(path)
    tally = Tally(log)
    samples: list[StreamSample] = []
    for index, (where, record) in enumerate(load_records(path)):
        record = as_object(record, path, where)
        key = next((k for k in CHAT_VIDEO_KEYS if k in record), None)
        if key is None:
            raise AnnotationError(
                f"{path}: {where}: no video key; expected one of {CHAT_VIDEO_KEYS}"
                f" (keys present: {sorted(record)[:12]})"
            )
        video_id = as_string(record[key], path, at(where, key))
        window = _chat_window(record, path, where)
        start_slot = 0 if window is None else ceil_slot(window[0], fps)
        w_conv = where + ".conversation"
        conversation = as_list(get_field(record, "conversation", path, where), path, w_conv)
        turns = _chat_turns(conversation, path, w_conv, fps, window, start_slot, tally)
        if not turns:
            tally.add("samples without usable turns")
            continue
        last_slot = turns[-1].slot if window is None else max(ceil_slot(window[1], fps), start_slot)
        stop_slot = last_slot + 1
        if stop_slot - start_slot > window_frames:
            stop_slot = start_slot + window_frames
            kept = [t for t in turns if t.slot < stop_slot]
            tally.add(f"turns after the first {window_frames} frames", len(turns) - len(kept))
            turns = kept
        if not any(t.learn for t in turns):
            tally.add("samples without a learned turn")
            continue
        samples.append(
            make_sample(f"{video_id}/{index}", video_id, start_slot, stop_slot, turns, fps, system)
        )
    tally.report(path, "chat", samples)
    return samples


def _chat_window(record: dict[str, Any], path: Path, where: str) -> tuple[float, float] | None:
    """The sample's ``(start, end)`` seconds, or None when it gives neither."""
    if "start" not in record and "end" not in record:
        return None
    start = as_number(get_field(record, "start", path, where), path, where + ".start")
    end = as_number(get_field(record, "end", path, where), path, where + ".end")
    if not 0 <= start <= end:
        raise AnnotationError(f"{path}: {where}: need 0 <= start <= end, got [{start}, {end}]")
    return start, end


def _chat_turns(
    conversation: list[Any],
    path: Path,
    where: str,
    fps: float,
    window: tuple[float, float] | None,
    start_slot: int,
    tally: Tally,
) -> list[SlotTurn]:
    turns: list[SlotTurn] = []
    last_time = -math.inf
    for j, turn in enumerate(conversation):
        w = at(where, j)
        turn = as_object(turn, path, w)
        role = get_field(turn, "role", path, w)
        if role not in ROLES:
            raise AnnotationError(f"{path}: {w}.role: {role!r} is not one of {ROLES}")
        content = as_string(get_field(turn, "content", path, w), path, w + ".content")
        time = as_number(get_field(turn, "time", path, w), path, w + ".time")
        learn = turn.get("learn", role == "assistant")
        if not isinstance(learn, bool):
            raise AnnotationError(
                f"{path}: {w}.learn: expected true or false, got {describe(learn)}"
            )
        if time < last_time:
            tally.add("turns dropped after a turn whose time goes backwards", len(conversation) - j)
            break
        last_time = time
        if not content.strip():
            tally.add("empty turns")
            continue
        if window is not None and not window[0] <= time <= window[1]:
            tally.add("turns outside the sample's [start, end]")
            continue
        slot = floor_slot(time, fps) if role == "user" else ceil_slot(time, fps)
        slot = max(slot, turns[-1].slot if turns else 0, start_slot)
        new = SlotTurn(slot, role, content, learn)
        if (
            role == "assistant"
            and turns
            and turns[-1].role == "assistant"
            and turns[-1].slot == slot
        ):
            turns[-1] = new
            tally.add("assistant turns replaced by a later one on the same frame")
        else:
            turns.append(new)
    return turns

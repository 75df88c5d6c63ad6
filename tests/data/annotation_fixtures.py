"""Small annotation files in the real schemas users have, with the edge cases the readers handle.

Each ``*_file`` function writes one file and returns its path; the tests hold the hand-written
expectations. Times are chosen off the 2 FPS grid on purpose (e.g. 0.83 s must become 1.0 s).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data import LIVE_SYSTEM_PROMPT, StreamSample, TimedTurn

# Realistic-looking Ego4D video uids and annotation uids (Ego4D uses UUIDs).
EGO4D_A = "0a0f3c6e-8c1b-4b62-9a7c-4d0b2f1e7a11"
EGO4D_B = "1b2d4e6f-0a1c-4e3b-8d5f-6a7b8c9d0e22"
EGO4D_REDACTED = "2c3e5f70-1b2d-4f4c-9e60-7b8c9d0e1f33"
EGO4D_LONG = "3d4f6081-2c3e-4051-a071-8c9d0e1f2a44"
PASS_1_UID = "a1111111-0000-4000-8000-000000000001"
PASS_2_UID = "a2222222-0000-4000-8000-000000000002"

SOURCE_FPS = 30.0  # Ego4D videos are 30 fps; timestamp_frame is counted at that rate


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


# --- Ego4D narrations -------------------------------------------------------------------------


def narration(time_seconds: float, text: str, annotation_uid: str) -> dict[str, Any]:
    """One entry of ``narration_pass_N.narrations`` as Ego4D's narration files have it."""
    return {
        "timestamp_sec": time_seconds,
        "timestamp_frame": round(time_seconds * SOURCE_FPS),
        "narration_text": text,
        "annotation_uid": annotation_uid,
    }


def narration_pass(
    annotation_uid: str, items: Sequence[tuple[float, str]], *, duration_seconds: float = 300.0
) -> dict[str, Any]:
    """A ``narration_pass_N`` object: the narrations plus a summary (which readers ignore)."""
    return {
        "narrations": [narration(t, text, annotation_uid) for t, text in items],
        "summaries": [
            {
                "start_sec": 0.0,
                "end_sec": duration_seconds,
                "start_frame": 0,
                "end_frame": round(duration_seconds * SOURCE_FPS),
                "summary_text": "#Summary C prepared food in the kitchen.",
                "annotation_uid": annotation_uid,
            }
        ],
    }


#: Pass 1 of video A, in file order (not sorted by time): off-grid times, a repeated text,
#: "#unsure" alone and inside a text, a one-word text, two narrations on one frame.
EGO4D_A_PASS_1 = [
    (0.83, "#C C picks up the knife"),
    (1.2, "#C C cuts the onion with the knife"),
    (1.4, "#C C cuts the onion with the knife"),  # repeats the previous text: dropped
    (2.1, "#unsure"),  # nothing left but "." : under 2 words
    (2.6, "#C C"),  # "C." : under 2 words
    (3.05, "#C C puts #unsure in the pan"),  # tag stripped (reference) or dropped (unsure="drop")
    (5.0, "#c c washes the plate."),  # exactly on the grid; listed before earlier narrations
    (4.2, "#O X opens the fridge"),  # ceil(8.4) = 9 -> 4.5 s ...
    (4.4, "#C C stirs the soup"),  # ... ceil(8.8) = 9 too: replaces the previous one
]
EGO4D_A_PASS_2 = [(0.0, "#C C looks around"), (0.26, "#C C walks to the sink")]
#: Video B has only pass 2.
EGO4D_B_PASS_2 = [(10.2, "#C C opens the door"), (12.0, "#C C closes the door")]


def ego4d_narrations_file(directory: Path) -> Path:
    """``narration.json`` layout: ``{video_uid: {"status", "narration_pass_1", ...}}``."""
    return write_json(
        directory / "narration.json",
        {
            EGO4D_A: {
                "status": "complete",
                "narration_pass_1": narration_pass(PASS_1_UID, EGO4D_A_PASS_1),
                "narration_pass_2": narration_pass(PASS_2_UID, EGO4D_A_PASS_2),
            },
            EGO4D_B: {
                "status": "complete",
                "narration_pass_2": narration_pass(PASS_2_UID, EGO4D_B_PASS_2),
            },
            EGO4D_REDACTED: {"status": "redacted"},  # no pass at all
        },
    )


def ego4d_redacted_file(directory: Path) -> Path:
    """The same narrations in ``all_narrations_redacted.json``'s layout: ``{"videos": {uid:
    {"narrations": [{"time", "text", "_annotation_uid"}], "summaries": [...]}}}``."""
    videos: dict[str, Any] = {}
    for uid, passes in (
        (EGO4D_A, [(PASS_1_UID, EGO4D_A_PASS_1), (PASS_2_UID, EGO4D_A_PASS_2)]),
        (EGO4D_B, [(PASS_2_UID, EGO4D_B_PASS_2)]),
    ):
        narrations = [
            {
                "time": t,
                "text": text,
                "_annotation_uid": ann,
                "_unmapped_timestamp": t,
            }
            for ann, items in passes
            for t, text in items
        ]
        videos[uid] = {"narrations": narrations, "summaries": []}
    return write_json(directory / "all_narrations_redacted.json", {"videos": videos})


def ego4d_stream_file(directory: Path) -> Path:
    """VideoLLM-online's ``narration_stream_{split}.json`` layout: ``{uid: {annotation_uid:
    [{"time", "text"}]}}`` (its texts are already cleaned)."""
    return write_json(
        directory / "refined_narration_stream_train.json",
        {
            EGO4D_B: {
                PASS_2_UID: [
                    {"time": 10.2, "text": "You open the door."},
                    {"time": 12.0, "text": "You close the door."},
                ]
            }
        },
    )


#: A pass spanning 1900 s: longer than 1,200 frames at 2 FPS, with a 625 s gap without narration.
EGO4D_LONG_PASS_1 = [
    (10.0, "#C C enters the garage"),
    (500.0, "#C C picks up a wrench"),
    (650.0, "#C C tightens the bolt"),
    (1900.25, "#C C closes the garage door"),
]


def ego4d_long_file(directory: Path) -> Path:
    return write_json(
        directory / "narration_long.json",
        {
            EGO4D_LONG: {
                "narration_pass_1": narration_pass(
                    PASS_1_UID, EGO4D_LONG_PASS_1, duration_seconds=1905.0
                )
            }
        },
    )


def ego4d_benchmark_file(path: Path, key: str, video_uids: Sequence[str]) -> Path:
    """An Ego4D benchmark file (``goalstep_val.json``: ``videos``, ``fho_lta_val.json``:
    ``clips``, ``fho_sta_val.json``: ``annotations``) listing items with a ``video_uid``."""
    items = [
        {"video_uid": uid, "clip_uid": f"clip-{i}", "video_start_sec": 0.0, "video_end_sec": 480.0}
        for i, uid in enumerate(video_uids)
    ]
    return write_json(path, {"version": "v2", "date": "2023-01-01", key: items})


# --- COIN -------------------------------------------------------------------------------------

COIN_SANDWICH = "-2Aqx2Xm-b8"
COIN_SIM = "0b_9tFNMMbM"
COIN_PAPER = "zW3sHNmfjE4"


def coin_step(step_id: str, start_seconds: float, end_seconds: float, label: str) -> dict[str, Any]:
    return {"id": step_id, "segment": [start_seconds, end_seconds], "label": label}


def coin_video(
    video_id: str,
    cls: str,
    recipe_type: int,
    subset: str,
    steps: Sequence[dict[str, Any]],
    *,
    start: float | None,
    end: float | None,
    duration: float | None,
) -> dict[str, Any]:
    """One ``database`` entry of ``COIN.json`` (``start``/``end``/``duration`` only if given)."""
    entry: dict[str, Any] = {
        "recipe_type": recipe_type,
        "class": cls,
        "subset": subset,
        "video_url": f"https://www.youtube.com/embed/{video_id}",
        "annotation": list(steps),
    }
    for key, value in (("start", start), ("end", end), ("duration", duration)):
        if value is not None:
            entry[key] = value
    return entry


def coin_file(directory: Path) -> Path:
    """Three videos: a training sandwich (start/end given, off-grid), a testing SIM card
    replacement, and a training video with only ``duration`` and a label the reference fixes."""
    database = {
        COIN_SANDWICH: coin_video(
            COIN_SANDWICH,
            "MakeSandwich",
            105,
            "training",
            [
                coin_step("1", 12.4, 20.9, "cut bread"),
                coin_step("2", 21.3, 40.0, "spread butter"),
                coin_step("3", 40.2, 58.2, "put the ingredients together"),
            ],
            start=12.4,
            end=58.2,
            duration=73.56,
        ),
        COIN_SIM: coin_video(
            COIN_SIM,
            "ReplaceSIMCard",
            77,
            "testing",
            [
                coin_step("1", 1.0, 4.0, "take out the old card"),
                coin_step("2", 4.0, 9.75, "insert the new card"),
            ],
            start=0.0,
            end=10.0,
            duration=12.0,
        ),
        COIN_PAPER: coin_video(
            COIN_PAPER,
            "MakePaperWindMill",
            31,
            "training",
            [coin_step("1", 3.1, 9.0, "process (crop, fold) paper")],
            start=None,
            end=None,
            duration=30.3,
        ),
    }
    return write_json(directory / "COIN.json", {"database": database})


# --- VideoLLM-online chat ---------------------------------------------------------------------


def chat_turn(role: str, content: str, time_seconds: float, learn: bool | None = None) -> dict:
    turn: dict[str, Any] = {"role": role, "content": content, "time": time_seconds}
    if learn is not None:
        turn["learn"] = learn
    return turn


def chat_samples() -> list[dict[str, Any]]:
    """Three samples using the three video key variants, with off-grid times, an explicit
    ``learn``, a ``start``/``end`` window, two replies on one frame and time going backwards."""
    return [
        {
            "video_uid": "grp-1",
            "conversation": [
                chat_turn("user", "What am I doing right now?", 6.3),
                chat_turn("assistant", "You're slicing tomatoes.", 6.3),
                chat_turn("assistant", "You've finished slicing the tomatoes.", 135.9),
                chat_turn("user", "Is the pepper important?", 149.5),
                chat_turn("assistant", "Yes, it enhances the flavor.", 149.5, learn=False),
            ],
        },
        {
            "video": "grp-2",
            "start": 10.0,
            "end": 20.0,
            "conversation": [
                chat_turn("user", "Help me cook noodles.", 5.0),  # before start: skipped
                chat_turn("user", "What next?", 10.2),
                chat_turn("assistant", "Boil the water.", 10.2),
                chat_turn("assistant", "Boil the water now.", 10.4),  # same frame: replaces
                chat_turn("assistant", "  ", 12.0),  # empty: skipped
                chat_turn("assistant", "Add the noodles.", 19.9),
            ],
        },
        {
            "video_id": "grp-3",
            "conversation": [
                chat_turn("user", "What do you see?", 2.0),
                chat_turn("assistant", "A kitchen.", 3.1),
                chat_turn("user", "And before?", 1.0),  # backwards: ends the conversation
                chat_turn("assistant", "A hallway.", 1.5),
            ],
        },
    ]


def chat_file(directory: Path, *, jsonl: bool = False) -> Path:
    samples = chat_samples()
    if not jsonl:
        return write_json(directory / "livechat.json", samples)
    path = directory / "livechat.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return path


# --- Expected samples -------------------------------------------------------------------------


def user(text: str, t: float) -> TimedTurn:
    return TimedTurn("user", text, t, learn=False)


def bot(text: str, t: float, learn: bool = True) -> TimedTurn:
    return TimedTurn("assistant", text, t, learn=learn)


def sample(
    sample_id: str, video_id: str, start: float, stop: float, *turns: TimedTurn
) -> StreamSample:
    return StreamSample(sample_id, video_id, start, stop, tuple(turns), LIVE_SYSTEM_PROMPT)
